"""A student made from its teacher: k of its layers, optionally narrower, embeddings and task head copied."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from transformers import PreTrainedModel

from .. import directory, importance, surgery
from ..errors import UserError


@dataclass
class StudentShape:
    """Which teacher layers the student keeps and how wide it is (None: as wide as the teacher)."""

    layers: list[int]
    heads: int | None = None
    ffn: int | None = None
    hidden: int | None = None
    init: Literal["teacher", "fresh"] = "teacher"  # teacher: sliced from the teacher by importance; fresh: new


def select_layers(num_teacher: int, k: int | None = None, selection: Literal["even", "first"] = "even",
                  explicit: list[int] | None = None) -> list[int]:
    """Teacher layer indices for the student: an explicit list, the first k, or k evenly spaced from first to last."""
    if explicit:
        bad = [i for i in explicit if not 0 <= i < num_teacher]
        if bad:
            raise UserError(f"layer index {bad[0]} is out of range: the teacher has layers 0..{num_teacher - 1}")
        if sorted(set(explicit)) != list(explicit):
            raise UserError(f"student layers {explicit} must be increasing and distinct, as in 0 4 8 11")
        return list(explicit)
    if k is None:
        raise UserError("say how many layers the student keeps (--student-layers K) or which (--layers i j ...)")
    if not 1 <= k <= num_teacher:
        raise UserError(f"--student-layers {k} is out of range: the teacher has {num_teacher} layers, "
                        f"give 1..{num_teacher}")
    if selection == "first":
        return list(range(k))
    if k == 1:
        return [num_teacher - 1]
    return [round(i * (num_teacher - 1) / (k - 1)) for i in range(k)]


def build_student(teacher: PreTrainedModel, shape: StudentShape, seed: int = 0) -> PreTrainedModel:
    """A student with the chosen teacher layers, bit for bit, narrowed to the requested width by importance."""
    t_shapes = surgery.layer_shapes(teacher)
    t_hidden = teacher.config.hidden_size
    picked = [t_shapes["heads"][i] for i in shape.layers], [t_shapes["ffn"][i] for i in shape.layers]
    heads = shape.heads or min(picked[0])
    ffn = shape.ffn or min(picked[1])
    hidden = shape.hidden or t_hidden
    for name, want, have in (("heads", heads, min(picked[0])), ("ffn", ffn, min(picked[1])),
                             ("hidden", hidden, t_hidden)):
        if want > have:
            raise UserError(f"a student with {name} {want} is wider than its teacher ({have}): give at most {have}")
        if want < 1:
            raise UserError(f"student {name} must be at least 1, got {want}")
    narrowed = _narrowed(teacher, shape.layers, heads, ffn, hidden)

    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers, config.hidden_size, config.intermediate_size = len(shape.layers), hidden, ffn
    config.num_attention_heads = heads if hidden % heads == 0 else 1  # the real head shape lives in SHAPES_KEY
    student_shapes = {"head_size": t_shapes["head_size"], "heads": [heads] * len(shape.layers),
                      "ffn": [ffn] * len(shape.layers)}
    torch.manual_seed(seed)  # fresh layers and the shapes' placeholders
    student = type(teacher)(config)
    if heads * t_shapes["head_size"] != hidden or hasattr(teacher.config, directory.SHAPES_KEY):
        surgery.resize_layers(student, student_shapes)
        setattr(student.config, directory.SHAPES_KEY, student_shapes)
    state = narrowed.state_dict()
    if shape.init == "fresh":
        state = {k: v for k, v in state.items() if ".encoder.layer." not in k}
    student.load_state_dict(state, strict=shape.init == "teacher")
    return student.eval()


def _narrowed(teacher: PreTrainedModel, layers: list[int], heads: int, ffn: int, hidden: int) -> PreTrainedModel:
    """A copy of the teacher with only the chosen layers, cut to the student's width by weight magnitude."""
    head_scores, ffn_scores = importance.magnitude_scores(teacher)
    teacher_layers = teacher.base_model.encoder.layer
    shared = {id(layer): layer for i, layer in enumerate(teacher_layers) if i not in layers}  # not copied, dropped
    model = copy.deepcopy(teacher, memo=shared)
    model.base_model.encoder.layer = nn.ModuleList(model.base_model.encoder.layer[i] for i in layers)
    model.config.num_hidden_layers = len(layers)
    surgery.keep(model, heads=[importance.keep_indices([head_scores[i]], keep=[heads])[0] for i in layers],
                 ffn=[importance.keep_indices([ffn_scores[i]], keep=[ffn])[0] for i in layers],
                 hidden=importance.hidden_ranking(teacher)[:hidden].sort().values)
    return model


def check_student(student: PreTrainedModel, student_tokenizer: object, teacher: PreTrainedModel,
                  teacher_tokenizer: object, where: str | Path) -> None:
    """Refuse a student that cannot learn from this teacher: other tokenizer, other head, wider than the teacher."""
    if student_tokenizer.get_vocab() != teacher_tokenizer.get_vocab():
        raise UserError(f"the student {where} has a different tokenizer from its teacher: distillation compares "
                        "outputs token by token, so give a student with the teacher's tokenizer (or build one "
                        "with --student-layers)")
    if directory.task_of(student.config) != directory.task_of(teacher.config) or \
            student.config.num_labels != teacher.config.num_labels:
        raise UserError(f"the student {where} has a different task head from its teacher: give a student for the "
                        "same task and labels")
    s, t = surgery.layer_shapes(student), surgery.layer_shapes(teacher)
    if student.config.hidden_size > teacher.config.hidden_size or max(s["heads"]) > max(t["heads"]) or \
            max(s["ffn"]) > max(t["ffn"]) or len(s["ffn"]) > len(t["ffn"]):
        raise UserError(f"the student {where} is wider or deeper than its teacher: give a smaller student")

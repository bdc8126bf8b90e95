"""A student made from its teacher: k of its layers, optionally narrower, embeddings and task head copied."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel

from .. import modeling
from ..errors import UserError
from ..prune import importance

SELECTIONS = ("even", "first")
INITS = ("teacher", "fresh")


@dataclass
class StudentShape:
    """Which teacher layers the student keeps and how wide it is (None: as wide as the teacher)."""

    layers: list[int]
    heads: int | None = None
    ffn: int | None = None
    hidden: int | None = None
    init: str = "teacher"  # teacher: weights sliced from the teacher by importance; fresh: new encoder layers


def select_layers(num_teacher: int, k: int | None = None, selection: str = "even",
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
    if selection != "even":
        raise UserError(f"unknown layer selection {selection!r}: choose {' or '.join(SELECTIONS)}")
    if k == 1:
        return [num_teacher - 1]
    return [round(i * (num_teacher - 1) / (k - 1)) for i in range(k)]


def build_student(teacher: PreTrainedModel, shape: StudentShape, seed: int = 0) -> PreTrainedModel:
    """A student with the chosen teacher layers, bit for bit, narrowed to the requested width by importance."""
    if shape.init not in INITS:
        raise UserError(f"unknown student init {shape.init!r}: choose {' or '.join(INITS)}")
    t_shapes = modeling.layer_shapes(teacher)
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

    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers, config.hidden_size, config.intermediate_size = len(shape.layers), hidden, ffn
    config.num_attention_heads = heads if hidden % heads == 0 else 1  # the real head shape lives in SHAPES_KEY
    student_shapes = {"head_size": t_shapes["head_size"], "heads": [heads] * len(shape.layers),
                      "ffn": [ffn] * len(shape.layers)}
    torch.manual_seed(seed)  # fresh layers and the shapes' placeholders
    student = type(teacher)(config)
    if heads * t_shapes["head_size"] != hidden or hasattr(teacher.config, modeling.SHAPES_KEY):
        modeling.resize_layers(student, student_shapes)
        setattr(student.config, modeling.SHAPES_KEY, student_shapes)

    head_scores, ffn_scores = importance.magnitude_scores(teacher)
    keep = {
        "h": hidden_ranking(teacher)[:hidden].sort().values,
        "a": [_head_channels(importance.keep_indices([head_scores[i]], keep=[heads])[0], t_shapes["head_size"])
              for i in shape.layers],
        "f": [importance.keep_indices([ffn_scores[i]], keep=[ffn])[0] for i in shape.layers],
    }
    teacher_state = dict(teacher.named_parameters())
    state = {}
    for name, param in student.named_parameters():
        source, layer = _teacher_name(name, shape.layers)
        if shape.init == "fresh" and layer is not None:
            continue
        value = teacher_state[source]
        for dim, axis in enumerate(_axes(name)):
            index = keep[axis] if axis == "h" else keep[axis][layer] if axis else None
            if index is not None and value.shape[dim] != len(index):
                value = value.index_select(dim, index)
        if value.shape != param.shape:
            raise UserError(f"cannot slice teacher weight {source} {tuple(value.shape)} into {tuple(param.shape)}")
        state[name] = value.detach().clone()
    student.load_state_dict(state, strict=False)
    return student.eval()


def check_student(student: PreTrainedModel, student_tokenizer: object, teacher: PreTrainedModel,
                  teacher_tokenizer: object, where: str | Path) -> None:
    """Refuse a student that cannot learn from this teacher: other tokenizer, other head, wider than the teacher."""
    if student_tokenizer.get_vocab() != teacher_tokenizer.get_vocab():
        raise UserError(f"the student {where} has a different tokenizer from its teacher: distillation compares "
                        "outputs token by token, so give a student with the teacher's tokenizer (or build one "
                        "with --student-layers)")
    if modeling.task_of(student.config) != modeling.task_of(teacher.config) or \
            student.config.num_labels != teacher.config.num_labels:
        raise UserError(f"the student {where} has a different task head from its teacher: give a student for the "
                        "same task and labels")
    s, t = modeling.layer_shapes(student), modeling.layer_shapes(teacher)
    if student.config.hidden_size > teacher.config.hidden_size or max(s["heads"]) > max(t["heads"]) or \
            max(s["ffn"]) > max(t["ffn"]) or len(s["ffn"]) > len(t["ffn"]):
        raise UserError(f"the student {where} is wider or deeper than its teacher: give a smaller student")


@torch.no_grad()
def hidden_ranking(model: PreTrainedModel) -> torch.Tensor:
    """Hidden dimensions from most to least important: summed |gain| of every LayerNorm on the residual stream."""
    gains = [m.weight.abs() for name, m in model.base_model.named_modules()
             if isinstance(m, torch.nn.LayerNorm)]
    return torch.stack(gains).sum(0).argsort(descending=True)


def _head_channels(heads: torch.Tensor, head_size: int) -> torch.Tensor:
    """Channel indices of the kept heads in a [heads * head_size] projection."""
    return (heads[:, None] * head_size + torch.arange(head_size)).flatten()


def _teacher_name(name: str, layers: list[int]) -> tuple[str, int | None]:
    """The teacher parameter a student parameter comes from, and the student layer it sits in (None outside)."""
    parts = name.split(".")
    if "layer" in parts and parts[parts.index("layer") - 1] == "encoder":
        i = parts.index("layer") + 1
        layer = int(parts[i])
        parts[i] = str(layers[layer])
        return ".".join(parts), layer
    return name, None


def _axes(name: str) -> tuple[str, ...]:
    """What each dimension of a parameter indexes: h hidden, a attention channels, f FFN neurons, '' kept whole."""
    weight = name.endswith("weight")
    if "LayerNorm" in name:
        return ("h",)
    if "embeddings." in name:
        return ("", "h")
    if any(f"attention.self.{p}." in name for p in ("query", "key", "value")):
        return ("a", "h") if weight else ("a",)
    if "attention.output.dense" in name:
        return ("h", "a") if weight else ("h",)
    if "intermediate.dense" in name:
        return ("f", "h") if weight else ("f",)
    if "classifier.dense" in name:  # the sequence head's hidden-to-hidden layer
        return ("h", "h") if weight else ("h",)
    if "output.dense" in name:
        return ("h", "f") if weight else ("h",)
    return ("", "h") if weight else ("",)  # classifier.out_proj, token classifier, qa_outputs

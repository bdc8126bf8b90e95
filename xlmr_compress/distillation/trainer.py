"""The distill stage: a student learns from a fine-tuned teacher on transformers.Trainer (checkpoints, --resume,
mixed precision, gradient accumulation, early stopping and torchrun/accelerate come with it)."""
from __future__ import annotations

import os
import shutil
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel

from .. import directory, runtime, shard
from ..configs import DistillConfig
from ..data import UNKNOWN_LANGUAGE, DataConfig, TaskData, collator, encode
from ..errors import UserError
from ..options import check_choices
from ..surgery import layer_shapes
from ..train import (
    TaskTrainer,
    as_task_data,
    early_stopping,
    eval_split_of,
    prepare_checkpoints,
    run_settings,
    save_trained,
    training_arguments,
)
from . import losses
from .augment import augment, ignored_labels
from .losses import LossWeights
from .student import StudentShape, build_student, check_student, select_layers

TARGETS = ("labels", "start_positions", "end_positions")
PROJECTION = "distill_projection"  # student submodule during training only: checkpoints and --resume keep it
LAST = runtime.FIRST_HIDDEN  # the teacher cache's copy of the last hidden state at the first token


def distill(src: str | Path, out: str | Path, config: DistillConfig | None = None,
            data: TaskData | DataConfig | str | None = None) -> Path:
    """Train a smaller student from a fine-tuned teacher directory (src); write it with both models' metrics."""
    config = config or DistillConfig()
    check_choices(config)
    config.check()
    if config.shard:
        shard.check_launch()
    weights = losses.loss_weights(config.preset, config.losses, config.temperature)
    task_data = as_task_data(data)
    if "train" not in task_data.splits:
        raise UserError("the data has no train split: give a directory with a train file")
    directory.check_output(out, config.overwrite)
    if config.cache_teacher and weights.cosine and task_data.task != "sequence-classification":
        raise UserError("--cache-teacher keeps the last hidden state of the first token only, which a sequence "
                        "classifier reads: for this task drop --cache-teacher or the cosine loss")
    if config.augment and task_data.task == "question-answering":
        raise UserError("--augment noises plain texts, and a question and its context would lose their answer: use "
                        "it for sequence or token classification")
    unlabeled = read_unlabeled(config.unlabeled, task_data) if config.unlabeled else None
    teacher_model, tokenizer = load_teacher(src, task_data)
    student, layers = make_student(teacher_model, tokenizer, config)
    if config.freeze_embeddings:
        student.get_input_embeddings().weight.requires_grad_(False)
    widths = student.config.hidden_size, teacher_model.config.hidden_size
    if (weights.hidden or weights.embedding or weights.cosine) and widths[0] != widths[1]:
        student.add_module(PROJECTION, nn.Linear(*widths))
    if weights.attention:
        for model in (student, teacher_model):
            model.set_attn_implementation("eager")  # only eager attention returns its probabilities

    labels = directory.label_names_of(teacher_model.config, task_data.task) or None
    train = encode(task_data, "train", tokenizer, config.max_length, config.stride, label_names=labels)
    if config.augment:
        train = datasets.concatenate_datasets([train, augment(train, config.augment, config.max_length, config.seed)])
    if unlabeled is not None:
        train = datasets.concatenate_datasets(
            [train, encode_unlabeled(unlabeled, task_data.task, tokenizer, config, labels)])
    train = train.add_column("row", list(range(len(train))))
    eval_split = eval_split_of(task_data, config.eval_split)
    eval_features = encode(task_data, eval_split, tokenizer, config.max_length, config.stride, label_names=labels)
    checkpoints, last = prepare_checkpoints(out, config.resume, run_settings(src, config, task_data))
    args = training_arguments(checkpoints, config, task_data.task)
    if config.shard:
        shard.shard_frozen(teacher_model)
    cache = None
    if config.cache_teacher and config.shard:  # the sharded teacher runs on every rank at once; the main one writes
        cache = teacher_outputs(teacher_model, tokenizer, train, checkpoints / "teacher-outputs", args.device,
                                write=args.process_index == 0, hidden=bool(weights.cosine))
    elif config.cache_teacher:
        with args.main_process_first(local=False, desc="teacher outputs"):
            cache = teacher_outputs(teacher_model, tokenizer, train, checkpoints / "teacher-outputs", args.device,
                                    hidden=bool(weights.cosine))
    trainer = DistillTrainer(
        model=student.train(), args=args, train_dataset=train, eval_dataset=eval_features,
        data_collator=RowCollator(collator(task_data.task, tokenizer)), processing_class=tokenizer,
        callbacks=early_stopping(config.early_stopping), task_data=task_data, eval_split=eval_split,
        max_length=config.max_length, stride=config.stride, head_learning_rate=config.head_learning_rate,
        teacher=teacher_model, weights=weights, layers=layers, cache=cache,
    )
    if config.shard:
        shard.check_sharded(trainer)
    trainer.train(resume_from_checkpoint=last)
    student, extra = shard.finish(trainer, teacher=teacher_model) if config.shard else (trainer.model, {})
    if config.shard or trainer.is_world_process_zero():  # a sharded teacher evaluates on every rank at once
        extra["teacher"] = teacher_summary(src, teacher_model, tokenizer, task_data, config)
    if trainer.is_world_process_zero():
        if hasattr(student, PROJECTION):
            delattr(student, PROJECTION)
        if weights.attention:
            student.set_attn_implementation("sdpa")
        extra.update({"student_layers": layers, "shapes": layer_shapes(student),
                      "hidden_size": student.config.hidden_size, "losses": asdict(weights)})
        options = {**asdict(config), "teacher": str(src), "data": getattr(data, "path", str(data))}
        save_trained(student, tokenizer, task_data, out, "distill", options, src, config, extra)
        shutil.rmtree(checkpoints, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()  # every process returns once the student is written
    return Path(out)


class DistillTrainer(TaskTrainer):
    """A TaskTrainer whose loss compares the student with a frozen teacher (run live, or read from a disk cache)."""

    def __init__(self, *args: Any, teacher: PreTrainedModel, weights: LossWeights, layers: list[int],
                 cache: dict[str, np.ndarray] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.teacher = teacher.eval().requires_grad_(False).to(self.args.device)
        self.weights, self.layers, self.cache = weights, layers, cache
        self.task = self.task_data.task
        self.parts: dict[str, list[float]] = defaultdict(list)
        self.captured: dict[str, dict[str, torch.Tensor]] = {"student": {}, "teacher": {}}
        if weights.relations:
            for side, model in (("student", self.model), ("teacher", self.teacher)):
                attention = model.base_model.encoder.layer[-1].attention.self
                for name in ("query", "key", "value"):
                    getattr(attention, name).register_forward_hook(self._capture(side, name))

    def _capture(self, side: str, name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            self.captured[side][name] = output
        return hook

    def compute_loss(self, model: nn.Module, inputs: dict, return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        rows = inputs.pop("row")
        targets = {k: inputs.pop(k) for k in TARGETS if k in inputs}
        w = self.weights
        internals = {"output_hidden_states": bool(w.hidden or w.embedding or w.cosine),
                     "output_attentions": bool(w.attention)}
        student = model(**inputs, **internals)
        teacher = None
        if w.needs_teacher():
            teacher = self._cached(rows, inputs["input_ids"].shape[1]) if self.cache is not None else None
            if teacher is None:
                with torch.no_grad():
                    teacher = self.teacher(**inputs, **internals)
        parts = self._losses(model, student, teacher, inputs["attention_mask"], targets)
        loss = sum(getattr(w, name) * value for name, value in parts.items())
        for name, value in parts.items():
            self.parts[name].append(float(value.detach()))
        return (loss, student) if return_outputs else loss

    def _losses(self, model: nn.Module, student: Any, teacher: Any, mask: torch.Tensor,
                targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each active loss, unweighted."""
        w, parts = self.weights, {}
        names = directory.OUTPUTS[self.task]
        if w.soft:
            soft = [self._logits(student[n], teacher[n], mask) for n in names]
            parts["soft"] = torch.stack([losses.soft_target_loss(s, t, w.temperature, m) for s, t, m in soft]).mean()
        if w.hard:
            gold = targets.get("labels"), targets.get("start_positions"), targets.get("end_positions")
            pairs = zip(names, gold[1:], strict=True) if self.task == "question-answering" else [(names[0], gold[0])]
            parts["hard"] = torch.stack([losses.hard_label_loss(student[n], y) for n, y in pairs]).mean()
        projection = getattr(self.accelerator.unwrap_model(model), PROJECTION, None)
        if w.hidden:
            parts["hidden"] = losses.hidden_mse(list(student.hidden_states[1:]),
                                                [teacher.hidden_states[i + 1] for i in self.layers], mask, projection)
        if w.embedding:
            parts["embedding"] = losses.embedding_mse(student.hidden_states[0], teacher.hidden_states[0], mask,
                                                      projection)
        if w.attention:
            parts["attention"] = losses.attention_kl(list(student.attentions),
                                                     [teacher.attentions[i] for i in self.layers], mask)
        if w.relations:
            s, t = (tuple(self.captured[side][k] for k in ("query", "key", "value")) for side in ("student", "teacher"))
            heads = losses.relation_heads(s[0].shape[-1], t[0].shape[-1], self.teacher.config.num_attention_heads)
            parts["relations"] = losses.relation_kl(s, t, mask, heads)
        if w.cosine:
            token_level = self.task != "sequence-classification"
            parts["cosine"] = losses.cosine_loss(self._head_input(student), self._head_input(teacher),
                                                 mask if token_level else None, projection)
        return parts

    def _head_input(self, outputs: Any) -> torch.Tensor:
        """The last hidden states the task head reads: the first token's for sequence classification (as the teacher
        cache keeps them), every token's otherwise."""
        if LAST in outputs:
            return outputs[LAST]
        last = outputs.hidden_states[-1]
        return last[:, 0] if self.task == "sequence-classification" else last

    def _logits(self, student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Student and teacher logits with the rows that count: tokens for NER, padding excluded from QA spans."""
        if self.task == "token-classification":
            return student, teacher, mask
        if self.task == "question-answering":
            pad = ~mask.bool()
            return student.masked_fill(pad, losses.NEG), teacher.masked_fill(pad, losses.NEG), None
        return student, teacher, None

    def _cached(self, rows: torch.Tensor, width: int) -> dict[str, torch.Tensor]:
        """The teacher's outputs for these training rows, read from the disk cache and cut to the batch width."""
        index = rows.cpu().numpy()
        out = {}
        for name, array in self.cache.items():
            value = torch.from_numpy(np.ascontiguousarray(array[index])).to(self.args.device)
            out[name] = value if self.task == "sequence-classification" else value[:, :width]
        return out

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Add each loss's mean since the last log to the training logs."""
        if "loss" in logs:
            logs.update({f"loss_{name}": round(sum(v) / len(v), 4) for name, v in self.parts.items() if v})
            self.parts.clear()
        super().log(logs, *args, **kwargs)


class RowCollator:
    """Pads a batch with the task's collator and keeps each example's row (its index in the teacher cache)."""

    def __init__(self, pad: Any) -> None:
        self.pad = pad

    def __call__(self, features: list[dict]) -> dict:
        batch = self.pad(features)
        batch["row"] = torch.tensor([f["row"] for f in features])
        return batch


def load_teacher(teacher: str | Path, task_data: TaskData) -> tuple[PreTrainedModel, Any]:
    """The teacher and its tokenizer, refusing a bare encoder and a head for other labels."""
    if directory.task_of(directory.load_config(teacher)) is None:
        raise UserError(f"the teacher {teacher} has no task head: fine-tune it on the task first "
                        "(xlmr-compress finetune), then distil the fine-tuned model")
    return directory.load(teacher, task_data.task, label_names=task_data.label_names or None)


def make_student(teacher: PreTrainedModel, tokenizer: Any, config: DistillConfig
                 ) -> tuple[PreTrainedModel, list[int]]:
    """The student (built from the teacher, or the user's directory) and the teacher layer each of its layers
    learns from."""
    num_teacher = teacher.config.num_hidden_layers
    if config.student:
        if config.student_layers or config.layers:
            raise UserError("give either --student (a model directory) or --student-layers/--layers, not both")
        student, student_tokenizer = directory.load(config.student, directory.task_of(teacher.config))
        check_student(student, student_tokenizer, teacher, tokenizer, config.student)
        return student, select_layers(num_teacher, student.config.num_hidden_layers)
    layers = select_layers(num_teacher, config.student_layers, config.layer_selection, config.layers)
    shape = StudentShape(layers, config.student_heads, config.student_ffn, config.student_hidden, config.student_init)
    return build_student(teacher, shape, config.seed), layers


def read_unlabeled(path: str | Path, task_data: TaskData) -> list[str]:
    """Texts of an unlabelled file, one a line, for the teacher to label."""
    if task_data.task == "question-answering":
        raise UserError("--unlabeled takes plain text, which has no question and context: use it for "
                        "sequence or token classification")
    file = Path(path).expanduser()
    texts = [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise UserError(f"unlabelled text file {file} is empty: give one text a line")
    return texts


def encode_unlabeled(texts: list[str], task: str, tokenizer: Any, config: DistillConfig, labels: list[str]
                     ) -> datasets.Dataset:
    """Features of unlabelled texts with every label -100, so only the teacher's outputs teach them."""
    if task == "token-classification":  # NER models read words: split the text on whitespace
        rows = {"tokens": [t.split() for t in texts], "tags": [[0] * len(t.split()) for t in texts]}
    else:
        rows = {"text": texts, "label": [0] * len(texts)}
    rows["language"] = [UNKNOWN_LANGUAGE] * len(texts)
    data = TaskData(task, labels, datasets.DatasetDict({"unlabeled": datasets.Dataset.from_dict(rows)}))
    features = encode(data, "unlabeled", tokenizer, config.max_length, config.stride)
    ignored = ignored_labels(features["input_ids"][:], token_level=task != "sequence-classification")
    return features.remove_columns("labels").add_column("labels", ignored).cast(features.features)


def teacher_outputs(teacher: PreTrainedModel, tokenizer: Any, features: datasets.Dataset, folder: Path,
                    device: Any, write: bool = True, hidden: bool = False) -> dict[str, np.ndarray]:
    """The teacher's outputs (`hidden`: and last hidden state at the first token) for every training row, computed
    once into .npy files and memory-mapped after (`write=False`: a process that computes them beside the writer keeps
    its copy in memory)."""
    names = directory.OUTPUTS[directory.task_of(teacher.config)] + ((LAST,) if hidden else ())
    files = {name: folder / f"{name}.npy" for name in names}
    if not all(f.is_file() and np.load(f, mmap_mode="r").shape[0] == len(features) for f in files.values()):
        folder.mkdir(parents=True, exist_ok=True)
        outputs = runtime.predict(runtime.Predictor.from_torch(teacher, tokenizer, str(device), first_hidden=hidden),
                                  features)
        if not write:
            return outputs
        for name, file in files.items():
            tmp = file.with_suffix(".tmp.npy")
            np.save(tmp, outputs[name])
            os.replace(tmp, file)
    return {name: np.load(file, mmap_mode="r") for name, file in files.items()}


def teacher_summary(teacher_dir: str | Path, teacher: PreTrainedModel, tokenizer: Any, task_data: TaskData,
                    config: DistillConfig) -> dict:
    """The teacher's size and its metrics on the test split (else validation), beside the student's."""
    split = "test" if "test" in task_data.splits else eval_split_of(task_data, config.eval_split)
    predictor = runtime.Predictor.from_torch(teacher, tokenizer, str(teacher.device))
    metrics = runtime.evaluate(predictor, task_data, split, max_length=config.max_length, stride=config.stride)
    return {"path": str(Path(teacher_dir).resolve()), "parameters": directory.count_parameters(teacher),
            "bytes_on_disk": directory.size_on_disk(teacher_dir), "layers": teacher.config.num_hidden_layers,
            "hidden_size": teacher.config.hidden_size, split: metrics}

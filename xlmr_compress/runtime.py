"""One predictor over model directories, so evaluation and benchmarks measure every variant through the same path."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from . import data as data_mod
from . import metrics, modeling
from .errors import UserError

OUTPUTS = {
    "sequence-classification": ("logits",),
    "token-classification": ("logits",),
    "question-answering": ("start_logits", "end_logits"),
}


@dataclass
class Predictor:
    """Runs batches of `input_ids`/`attention_mask` arrays through a model and returns its output arrays by name."""

    run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
    tokenizer: Any
    task: str
    label_names: list[str]
    backend: str
    model: Any = None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.run(batch)

    @classmethod
    def load(cls, model_dir: str | Path, device: str = "cpu", threads: int | None = None, **options: Any) -> "Predictor":
        """A predictor for a torch (model.safetensors) or ONNX (model.onnx) model directory."""
        path = Path(model_dir)
        if (path / "model.onnx").is_file() and not (path / "model.safetensors").is_file():
            from .export.onnx import onnx_predictor

            return onnx_predictor(path, device=device, threads=threads, **options)
        if threads:
            torch.set_num_threads(threads)
        model, tokenizer = modeling.load(model_dir, **options)
        return cls.from_torch(model, tokenizer, device)

    @classmethod
    def from_torch(cls, model: Any, tokenizer: Any, device: str = "cpu") -> "Predictor":
        """Wrap an in-memory torch model (used during training, before anything is saved)."""
        check_device(device)
        task = modeling.task_of(model.config) or _task_of_instance(model)
        names = OUTPUTS[task]
        model = model.to(device).eval()

        @torch.inference_mode()
        def run(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            inputs = {k: torch.as_tensor(np.asarray(v)).to(device) for k, v in batch.items()}
            out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
            return {n: out[n].float().cpu().numpy() for n in names}

        return cls(run, tokenizer, task, label_names_of(model.config, task), "torch", model)


def _task_of_instance(model: Any) -> str:
    for suffix, task in modeling.HEAD_SUFFIX.items():
        if type(model).__name__.endswith(suffix):
            return task
    raise UserError(f"{type(model).__name__} has no task head: fine-tune it for a task first")


def label_names_of(config: Any, task: str) -> list[str]:
    """The head's label names in index order ([] for QA)."""
    if task == "question-answering":
        return []
    return [config.id2label[i] for i in range(config.num_labels)]


def check_device(device: str) -> None:
    """Refuse a device this machine does not have, with the fix."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {device!r} requested but this machine has no CUDA GPU: use --device cpu")
    if not device.startswith(("cpu", "cuda")):
        raise UserError(f"unknown device {device!r}: use cpu or cuda[:N]")


def predict(predictor: Predictor, features: Any, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Outputs for every feature, computed in length-sorted batches and returned in the features' order."""
    collate = data_mod.collator(predictor.task, predictor.tokenizer)
    order = np.argsort(np.asarray(features["length"]), kind="stable")
    inputs = features.select_columns(["input_ids", "attention_mask"])
    width = int(max(features["length"])) if len(features) else 0
    chunks: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(order), batch_size):
        rows = [inputs[int(i)] for i in order[start:start + batch_size]]
        batch = collate(rows)
        out = predictor({k: batch[k].numpy() for k in ("input_ids", "attention_mask")})
        for name, value in out.items():
            if value.ndim >= 2 and predictor.task != "sequence-classification":
                value = np.pad(value, [(0, 0), (0, width - value.shape[1])] + [(0, 0)] * (value.ndim - 2))
            chunks.setdefault(name, []).append(value)
    result = {}
    for name, parts in chunks.items():
        stacked = np.concatenate(parts)
        result[name] = np.empty_like(stacked)
        result[name][order] = stacked
    return result


def evaluate(
    model: str | Path | Predictor,
    data: "data_mod.TaskData | data_mod.DataConfig | str",
    split: str = "test",
    batch_size: int = 64,
    max_length: int = 128,
    stride: int = 32,
    device: str = "cpu",
    features: Any = None,
) -> dict:
    """Task metrics of a model on one split, overall and per language (`features`: that split already encoded)."""
    predictor = model if isinstance(model, Predictor) else Predictor.load(model, device=device)
    task_data = data if isinstance(data, data_mod.TaskData) else data_mod.load_data(data)
    if task_data.task != predictor.task:
        raise UserError(f"the data is for {task_data.task} but the model has a {predictor.task} head: "
                        "evaluate on data of the model's task")
    labels = predictor.label_names or None
    if features is None:
        features = data_mod.encode(task_data, split, predictor.tokenizer, max_length, stride, label_names=labels)
    outputs = predict(predictor, features, batch_size)
    predictions = data_mod.decode(task_data, split, features, outputs, label_names=labels)
    result = metrics.compute_metrics(task_data.task, predictions, data_mod.references_of(task_data, split),
                                     list(task_data.splits[split]["language"]), task_data.label_names)
    result["split"], result["examples"] = split, len(task_data.splits[split])
    return result

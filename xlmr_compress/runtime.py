"""One predictor over model directories, so evaluation and benchmarks measure every variant through the same path."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import data as data_mod
from . import directory, metrics
from .console import progress
from .errors import UserError

PACK_ABOVE = 0.1  # share of a batch's token slots that is padding, above which packing pays for its copies
FIRST_HIDDEN = "first_hidden"  # output name of the last layer's state at the first token (Predictor.from_torch)


@dataclass
class Predictor:
    """Runs batches of `input_ids`/`attention_mask` arrays through a model and returns its output arrays by name."""

    run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
    tokenizer: Any
    task: str
    label_names: list[str]
    backend: str
    model: Any = None
    packed: bool = False  # batches over PACK_ABOVE padding run as one row of real tokens (attention.packed_forward)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.run(batch)

    @classmethod
    def load(cls, model_dir: str | Path, device: str = "cpu", threads: int | None = None, provider: str | None = None,
             info: directory.ModelInfo | None = None, pack: bool = False, **options: Any) -> Predictor:
        """A predictor for any model directory kind (torch, pruned, torch int8, ONNX); `info` as in directory.load;
        `pack`: torch models skip the padding of a batch everywhere but in attention (ONNX graphs take it padded)."""
        info = info or directory.inspect(model_dir)
        if info.is_onnx:
            model, tokenizer = directory.load(model_dir, info=info, device=device, threads=threads, provider=provider)
            return cls(model, tokenizer, model.task, info.label_names, "onnx", model)
        if provider:
            raise UserError(f"--provider {provider} applies to ONNX models, but {model_dir} holds torch weights: "
                            "export it first (xlmr-compress export) or drop --provider")
        if threads:
            torch.set_num_threads(threads)
        model, tokenizer = directory.load(model_dir, info=info, **options)
        return cls.from_torch(model, tokenizer, device, pack)

    @classmethod
    def from_torch(cls, model: Any, tokenizer: Any, device: str = "cpu", pack: bool = False,
                   first_hidden: bool = False) -> Predictor:
        """Wrap an in-memory torch model (used during training, before anything is saved); `first_hidden` adds the
        output FIRST_HIDDEN, the last layer's state at the first token (a distillation target)."""
        check_device(device)
        task = directory.task_of(model)
        if task is None:
            raise UserError(f"{type(model).__name__} has no task head: fine-tune it for a task first")
        names = directory.OUTPUTS[task]
        model = model.to(device).eval()
        if pack:
            from . import attention  # transformers' attention registry: only torch models that pack need it

            if model.config._attn_implementation not in (attention.NAME, attention.PACKED):
                model.set_attn_implementation(attention.PACKED)

        @torch.inference_mode()
        def run(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            ids, mask = (torch.as_tensor(np.asarray(batch[k])).to(device) for k in ("input_ids", "attention_mask"))
            if pack and not first_hidden and len(ids) > 1 and int(mask.sum()) < (1 - PACK_ABOVE) * mask.numel():
                out = attention.packed_forward(model, ids, mask)
            else:
                out = model(input_ids=ids, attention_mask=mask, output_hidden_states=first_hidden)
            result = {n: out[n].float().cpu().numpy() for n in names}
            if first_hidden:
                result[FIRST_HIDDEN] = out.hidden_states[-1][:, 0].float().cpu().numpy()
            return result

        return cls(run, tokenizer, task, directory.label_names_of(model.config, task), "torch", model, pack)


def check_device(device: str) -> None:
    """Refuse a device this machine does not have, with the fix."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {device!r} requested but this machine has no CUDA GPU: use --device cpu")
    if not device.startswith(("cpu", "cuda")):
        raise UserError(f"unknown device {device!r}: use cpu or cuda[:N]")


def predict(predictor: Predictor, features: Any, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Outputs for every feature, computed in length-sorted batches and returned in the features' order."""
    collate = data_mod.collator(predictor.task, predictor.tokenizer)
    lengths = np.asarray(features["length"][:])
    order = np.argsort(lengths, kind="stable")
    inputs = features.select_columns(["input_ids", "attention_mask"])
    width = int(lengths.max()) if len(features) else 0
    chunks: dict[str, list[np.ndarray]] = {}
    for start in progress(range(0, len(order), batch_size), desc="predicting", unit="batch", leave=False):
        columns = inputs[order[start:start + batch_size].tolist()]
        batch = collate([dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)])
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
    data: data_mod.TaskData | data_mod.DataConfig | str,
    split: str = "test",
    batch_size: int = 64,
    max_length: int = 128,
    stride: int = 32,
    device: str = "cpu",
    features: Any = None,
) -> dict:
    """Task metrics of a model on one split, overall and per language (`features`: that split already encoded)."""
    task_data = data if isinstance(data, data_mod.TaskData) else data_mod.load_data(data)
    predictions = predictions_of(model, task_data, split, batch_size, max_length, stride, device, features)
    result = metrics.compute_metrics(task_data.task, predictions, data_mod.references_of(task_data, split),
                                     task_data.splits[split]["language"][:], task_data.label_names)
    result["split"], result["examples"] = split, len(task_data.splits[split])
    return result


def predictions_of(model: str | Path | Predictor, task_data: data_mod.TaskData, split: str = "test",
                   batch_size: int = 64, max_length: int = 128, stride: int = 32, device: str = "cpu",
                   features: Any = None) -> list:
    """A model's prediction per example of one split: class index, tags per word (NER) or answer text (QA)."""
    predictor = model if isinstance(model, Predictor) else Predictor.load(model, device=device)
    if task_data.task != predictor.task:
        raise UserError(f"the data is for {task_data.task} but the model has a {predictor.task} head: "
                        "evaluate on data of the model's task")
    labels = predictor.label_names or None
    if features is None:
        features = data_mod.encode(task_data, split, predictor.tokenizer, max_length, stride, label_names=labels)
    return data_mod.decode(task_data, split, features, predict(predictor, features, batch_size), label_names=labels)

"""One predictor over model directories, so evaluation and benchmarks measure every variant through the same path."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import data as data_mod
from . import metrics, modeling
from .errors import UserError

PRECISION_KEY = "xlmr_compress.precision"  # ONNX metadata written by export: "fp32" or "fp16" (fp16 needs a GPU)
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
    def load(cls, model_dir: str | Path, device: str = "cpu", threads: int | None = None, provider: str | None = None,
             **options: Any) -> Predictor:
        """A predictor for a torch (model.safetensors) or ONNX (model.onnx) model directory."""
        path = Path(model_dir)
        if (path / "model.onnx").is_file() and not (path / "model.safetensors").is_file():
            return cls.from_onnx(path, device, threads, provider)
        if provider:
            raise UserError(f"--provider {provider} applies to ONNX models, but {path} holds torch weights: "
                            "export it first (xlmr-compress export) or drop --provider")
        if threads:
            torch.set_num_threads(threads)
        model, tokenizer = modeling.load(model_dir, **options)
        return cls.from_torch(model, tokenizer, device)

    @classmethod
    def from_torch(cls, model: Any, tokenizer: Any, device: str = "cpu") -> Predictor:
        """Wrap an in-memory torch model (used during training, before anything is saved)."""
        check_device(device)
        task = modeling.task_of(model.config) or task_of_instance(model)
        names = OUTPUTS[task]
        model = model.to(device).eval()

        @torch.inference_mode()
        def run(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            inputs = {k: torch.as_tensor(np.asarray(v)).to(device) for k, v in batch.items()}
            out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
            return {n: out[n].float().cpu().numpy() for n in names}

        return cls(run, tokenizer, task, label_names_of(model.config, task), "torch", model)

    @classmethod
    def from_onnx(cls, model_dir: str | Path, device: str = "cpu", threads: int | None = None,
                  provider: str | None = None) -> Predictor:
        """An ONNX Runtime session over an ONNX directory (model.onnx, config.json, tokenizer), checked against its
        config."""
        import onnxruntime as ort

        path = Path(model_dir)
        config = modeling.load_config(path)
        task = modeling.task_of(config)
        if task is None:
            raise UserError(f"{path}/config.json names no task head (architectures): re-export the model")
        tokenizer = modeling.load_tokenizer(path)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        try:
            session = ort.InferenceSession(str(path / "model.onnx"), options,
                                           providers=onnx_providers(device, provider))
        except Exception as e:  # noqa: BLE001  onnxruntime's Fail, InvalidProtobuf, ... derive from Exception alone
            raise UserError(f"onnxruntime cannot load {path / 'model.onnx'} ({str(e).splitlines()[0][:200]}): "
                            "re-export the model") from None
        check_onnx(session, config, task, path, device)
        names = list(OUTPUTS[task])
        extra = {i.name for i in session.get_inputs()} - {"input_ids", "attention_mask"}

        def run(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            feed = {k: np.asarray(batch[k], dtype=np.int64) for k in ("input_ids", "attention_mask")}
            feed.update({k: np.zeros_like(feed["input_ids"]) for k in extra})  # token_type_ids of other exporters
            return {n: o.astype(np.float32, copy=False) for n, o in zip(names, session.run(names, feed), strict=True)}

        return cls(run, tokenizer, task, label_names_of(config, task), "onnx", session)


def onnx_providers(device: str = "cpu", provider: str | None = None) -> list:
    """ONNX Runtime execution providers for a device (or an explicit provider), with CPU as the fallback."""
    import onnxruntime as ort

    if not device.startswith(("cpu", "cuda")):
        raise UserError(f"unknown device {device!r}: use cpu or cuda[:N]")
    provider = provider or ("CUDAExecutionProvider" if device.startswith("cuda") else "CPUExecutionProvider")
    available = ort.get_available_providers()
    if provider not in available:
        raise UserError(f"ONNX Runtime provider {provider} is not available in this onnxruntime build (it has "
                        f"{', '.join(available)}): install onnxruntime-gpu for CUDA, or use --device cpu")
    if provider == "CUDAExecutionProvider":
        return [(provider, {"device_id": int(device.partition(":")[2] or 0)}), "CPUExecutionProvider"]
    return list(dict.fromkeys([provider, "CPUExecutionProvider"]))


def check_onnx(session: Any, config: Any, task: str, path: Path, device: str = "cpu") -> None:
    """Refuse an ONNX graph whose inputs, outputs or label count do not match config.json, or fp16 on CPU."""
    inputs = {i.name for i in session.get_inputs()}
    outputs = {o.name: o.shape for o in session.get_outputs()}
    where = f"{path / 'model.onnx'} does not match {path / 'config.json'}"
    if not {"input_ids", "attention_mask"} <= inputs or not inputs <= {"input_ids", "attention_mask", "token_type_ids"}:
        raise UserError(f"{where}: its inputs are {sorted(inputs)}, expected input_ids and attention_mask; re-export")
    missing = [n for n in OUTPUTS[task] if n not in outputs]
    if missing:
        raise UserError(f"{where}: config says {task} but the graph lacks output {missing[0]} (it has "
                        f"{sorted(outputs)}); re-export the model or restore its config.json")
    width = outputs[OUTPUTS[task][0]][-1]
    if task != "question-answering" and isinstance(width, int) and width != config.num_labels:
        raise UserError(f"{where}: the graph has {width} labels, config.json {config.num_labels}; re-export the model "
                        "or restore its config.json")
    precision = session.get_modelmeta().custom_metadata_map.get(PRECISION_KEY)
    if precision == "fp16" and "CUDAExecutionProvider" not in session.get_providers():
        raise UserError(f"{path} is an fp16 graph, which runs on GPU only: use --device cuda with onnxruntime-gpu, "
                        "or export in fp32 and quantize to int8 for CPU")


def task_of_instance(model: Any) -> str:
    """The task of a torch model from its head class, when config.architectures does not say."""
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
    lengths = np.asarray(features["length"][:])
    order = np.argsort(lengths, kind="stable")
    inputs = features.select_columns(["input_ids", "attention_mask"])
    width = int(lengths.max()) if len(features) else 0
    chunks: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(order), batch_size):
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
                                     task_data.splits[split]["language"][:], task_data.label_names)
    result["split"], result["examples"] = split, len(task_data.splits[split])
    return result

"""The ONNX directory kind: an ONNX Runtime session over model.onnx, checked against config.json at load."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from ..directory import ONNX_FILE, OUTPUTS, ModelInfo, register
from ..errors import UserError


class OnnxModel:
    """An ONNX Runtime session with the transformers config it was exported from: `model(batch) -> outputs`."""

    def __init__(self, session: ort.InferenceSession, config: Any, task: str) -> None:
        self.session, self.config, self.task = session, config, task
        self.output_names = list(OUTPUTS[task])
        self.extra_inputs = {i.name for i in session.get_inputs()} - {"input_ids", "attention_mask"}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {k: np.asarray(batch[k], dtype=np.int64) for k in ("input_ids", "attention_mask")}
        feed.update({k: np.zeros_like(feed["input_ids"]) for k in self.extra_inputs})  # other exporters' token types
        outputs = self.session.run(self.output_names, feed)
        return {n: o.astype(np.float32, copy=False) for n, o in zip(self.output_names, outputs, strict=True)}


def providers(device: str = "cpu", provider: str | None = None) -> list:
    """ONNX Runtime execution providers for a device (or an explicit provider), with CPU as the fallback."""
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


@register("onnx")
def load_onnx(info: ModelInfo, task: str, label_names: list[str] | None = None, device: str = "cpu",
              threads: int | None = None, provider: str | None = None, **_: Any) -> OnnxModel:
    """A session over an ONNX directory, refused when its graph and config.json disagree."""
    if info.task is None:
        raise UserError(f"{info.path}/config.json names no task head (architectures): re-export the model")
    options = ort.SessionOptions()
    # idle intra-op threads that spin take the cores from whatever runs next (in the bench: a torch model, 2x slower)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    try:
        session = ort.InferenceSession(str(info.path / ONNX_FILE), options, providers=providers(device, provider))
    except Exception as e:  # noqa: BLE001  onnxruntime's Fail, InvalidProtobuf, ... derive from Exception alone
        raise UserError(f"onnxruntime cannot load {info.path / ONNX_FILE} ({str(e).splitlines()[0][:200]}): "
                        "re-export the model") from None
    check_graph(session, info)
    return OnnxModel(session, info.config, task)


def check_graph(session: ort.InferenceSession, info: ModelInfo) -> None:
    """Refuse an ONNX graph whose inputs, outputs or label count do not match config.json, or fp16 on CPU."""
    inputs = {i.name for i in session.get_inputs()}
    outputs = {o.name: o.shape for o in session.get_outputs()}
    where = f"{info.path / ONNX_FILE} does not match {info.path / 'config.json'}"
    if not {"input_ids", "attention_mask"} <= inputs or not inputs <= {"input_ids", "attention_mask", "token_type_ids"}:
        raise UserError(f"{where}: its inputs are {sorted(inputs)}, expected input_ids and attention_mask; re-export")
    missing = [n for n in OUTPUTS[info.task] if n not in outputs]
    if missing:
        raise UserError(f"{where}: config says {info.task} but the graph lacks output {missing[0]} (it has "
                        f"{sorted(outputs)}); re-export the model or restore its config.json")
    width = outputs[OUTPUTS[info.task][0]][-1]
    if info.task != "question-answering" and isinstance(width, int) and width != info.config.num_labels:
        raise UserError(f"{where}: the graph has {width} labels, config.json {info.config.num_labels}; re-export the "
                        "model or restore its config.json")
    if info.precision == "fp16" and "CUDAExecutionProvider" not in session.get_providers():
        raise UserError(f"{Path(info.path)} is an fp16 graph, which runs on GPU only: use --device cuda with "
                        "onnxruntime-gpu, or export in fp32 and quantize to int8 for CPU")

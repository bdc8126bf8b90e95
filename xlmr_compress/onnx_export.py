"""Export a model directory to ONNX, checked against the torch model, optionally fused for ONNX Runtime or in fp16.

The TorchScript exporter (`dynamo=False`) on the eager attention path is the one whose graph ONNX Runtime's BERT
optimiser turns into fused Attention nodes (measured here: sdpa attention or the dynamo exporter get no Attention
fusion). The output directory keeps the layout optimum's `ORTModelFor*` classes read: model.onnx (+ model.onnx_data
over 2 GB), config.json and the tokenizer files.
"""
from __future__ import annotations

import shutil
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
import torch

from . import directory, runtime
from .configs import ExportConfig
from .directory import ONNX_DATA as DATA_FILE
from .directory import ONNX_FILE
from .errors import UserError
from .surgery import layer_shapes

PROTOBUF_LIMIT = 2 * 1024**3 - 64 * 1024**2  # bytes above which weights go to DATA_FILE (protobuf caps at 2 GB)
MIN_OPSET = 18
DEFAULT_TOLERANCE = {"fp32": 1e-3, "fp16": 5e-2}

# Real-looking check inputs: several languages and scripts, very different lengths, so the batch is mostly padding.
SAMPLE_TEXTS = [
    "The new museum opens on Monday.",
    "Le gouvernement a annoncé une réforme des retraites, qui sera débattue au parlement dès la semaine prochaine.",
    "Die Mannschaft gewann das Spiel.",
    "东京是日本的首都，也是世界上人口最多的城市之一。",
    "ok",
    "El río atraviesa la ciudad de norte a sur y divide los barrios antiguos de los nuevos. " * 4,
]
SAMPLE_QUESTIONS = ["When does the museum open?", "Qui débattra la réforme ?", "Wer gewann?", "东京是哪里的首都？",
                    "ok?", "¿Qué divide el río?"]


def export(src: str | Path, out: str | Path, config: ExportConfig | None = None, data: object = None) -> Path:
    """Export a torch model directory to an ONNX directory and refuse it if its outputs drift from torch's
    (`data` is unused: the check runs on a built-in multilingual batch)."""
    config = config or ExportConfig()
    check_config(config)
    directory.check_output(out, config.overwrite)
    kind = directory.inspect(src).kind
    if kind not in ("torch", "torch-pruned"):
        raise UserError(f"{src} is a {kind} directory, which does not export: export the fp32 torch model it came "
                        "from, then quantize the ONNX model (xlmr-compress quantize)")
    model, tokenizer = directory.load(src, attn_implementation="eager")
    model = model.float()  # fp16/bf16 checkpoints export in fp32 (--fp16 makes an fp16 graph for GPUs)
    with directory.atomic_output(out, config.overwrite) as tmp:
        write_onnx(model, tmp, config.opset)
        fused = optimize(tmp, model, config.fp16) if config.optimize else {}
        if config.fp16 and not config.optimize:
            to_fp16(tmp)
        model.config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        diff = parity(tmp, model, tokenizer, config)
        directory.record_stage(tmp, "export-onnx", asdict(config), parent=src,
                               metrics={"max_abs_diff": diff, "fused_operators": fused}, model=model)
    return Path(out).resolve()


def check_config(config: ExportConfig) -> None:
    """Refuse options that cannot work here before any work starts."""
    if config.opset < MIN_OPSET:
        raise UserError(f"opset {config.opset} is too old: use --opset {MIN_OPSET} or newer")
    runtime.check_device(config.device)
    if config.fp16 and not config.device.startswith("cuda"):
        raise UserError("fp16 ONNX models run on GPU only (ONNX Runtime's CPU kernels are fp32/int8): "
                        "pass --device cuda on a machine with onnxruntime-gpu, or quantize to int8 for CPU")
    if config.fp16:
        from .formats.onnx import providers

        providers(config.device)


def write_onnx(model: torch.nn.Module, out_dir: Path, opset: int) -> Path:
    """torch.onnx.export with dynamic batch and sequence axes; weights over 2 GB go to model.onnx_data."""
    task = directory.task_of(model)
    outputs = directory.OUTPUTS[task]
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}}
    for name in outputs:
        axes[name] = {0: "batch"} if task == "sequence-classification" else {0: "batch", 1: "sequence"}
    # A padded example, so the traced graph keeps the padding mask (transformers drops an all-ones mask).
    ids = torch.tensor([[0, 5, 6, 7, 2], [0, 5, 2, 1, 1]]).clamp(max=model.config.vocab_size - 1)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    scratch = out_dir / ".export"
    scratch.mkdir()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*aten::index operator of advanced indexing.*")
        torch.onnx.export(model, (ids, mask), str(scratch / ONNX_FILE), input_names=["input_ids", "attention_mask"],
                          output_names=list(outputs), dynamic_axes=axes, opset_version=opset, dynamo=False)
    save(onnx.load(str(scratch / ONNX_FILE)), out_dir / ONNX_FILE, precision="fp32")
    shutil.rmtree(scratch)
    return out_dir / ONNX_FILE


def save(proto: onnx.ModelProto, path: Path, precision: str | None = None) -> Path:
    """Write a graph, its weights in DATA_FILE beside it when they pass protobuf's 2 GB limit."""
    if precision:
        onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props},
                                            directory.PRECISION_KEY: precision})
    if any(n.domain == "com.microsoft" for n in proto.graph.node) and \
            not any(o.domain == "com.microsoft" for o in proto.opset_import):
        proto.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))  # fused ONNX Runtime operators
    for stale in (path, path.with_name(DATA_FILE)):
        stale.unlink(missing_ok=True)
    weights = sum(_tensor_bytes(t) for t in proto.graph.initializer)
    if weights > PROTOBUF_LIMIT:
        onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=DATA_FILE, size_threshold=1024)
    else:
        onnx.save_model(proto, str(path))
    return path


def _tensor_bytes(tensor: onnx.TensorProto) -> int:
    if tensor.HasField("raw_data"):
        return len(tensor.raw_data)
    return int(np.prod(tensor.dims)) * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def optimize(out_dir: Path, model: torch.nn.Module, fp16: bool = False) -> dict[str, int]:
    """Fuse attention, LayerNorm and GELU with ONNX Runtime's BERT optimiser; returns the fused operator counts."""
    from onnxruntime.transformers.optimizer import optimize_model

    shapes = layer_shapes(model)
    heads = set(shapes["heads"])
    # Attention fusion needs one head count for the whole graph, and ORT's fused Attention computes wrong outputs when
    # the heads are narrower than the hidden size (pruned heads). Those graphs keep attention unfused (0 = detect,
    # which fails on them and leaves plain MatMul/Softmax); LayerNorm and GELU are fused either way.
    num_heads = heads.pop() if len(heads) == 1 else 0
    if num_heads * shapes["head_size"] != model.config.hidden_size:
        num_heads = 0
    hidden = num_heads * shapes["head_size"]
    path = out_dir / ONNX_FILE
    optimized = optimize_model(str(path), model_type="bert", num_heads=num_heads, hidden_size=hidden, opt_level=0,
                               use_gpu=fp16)
    if fp16:
        optimized.convert_float_to_float16(keep_io_types=True)
    optimized.topological_sort()
    save(optimized.model, path, precision="fp16" if fp16 else "fp32")
    return {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}


def to_fp16(out_dir: Path) -> None:
    """Convert an ONNX directory's weights and compute to fp16, keeping fp32 inputs/outputs."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    path = out_dir / ONNX_FILE
    save(convert_float_to_float16(onnx.load(str(path)), keep_io_types=True), path, precision="fp16")


def sample_batch(tokenizer: object, task: str, max_length: int = 128) -> dict[str, np.ndarray]:
    """A padded batch of multilingual inputs of mixed lengths, tokenised by the model's own tokenizer."""
    if task == "question-answering":
        enc = tokenizer(SAMPLE_QUESTIONS, SAMPLE_TEXTS, truncation="only_second", max_length=max_length,
                        padding=True, return_tensors="np")
    else:
        enc = tokenizer(SAMPLE_TEXTS, truncation=True, max_length=max_length, padding=True, return_tensors="np")
    return {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64)}


def max_abs_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray], mask: np.ndarray) -> float:
    """Largest absolute difference between two predictors' outputs, over real (non-padding) positions only."""
    worst = 0.0
    for name, value in a.items():
        diff = np.abs(value.astype(np.float64) - b[name].astype(np.float64))
        if diff.ndim >= 2 and diff.shape[:2] == mask.shape:
            diff = diff[mask.astype(bool)]
        worst = max(worst, float(diff.max()))
    return worst


def parity(onnx_dir: Path, model: torch.nn.Module, tokenizer: object, config: ExportConfig) -> float:
    """Max abs diff of the ONNX outputs against torch on a padded multilingual batch; raises above the tolerance."""
    tolerance = (config.tolerance if config.tolerance is not None
                 else DEFAULT_TOLERANCE["fp16" if config.fp16 else "fp32"])
    exported = runtime.Predictor.load(onnx_dir, device=config.device)
    batch = sample_batch(tokenizer, exported.task)
    reference = runtime.Predictor.from_torch(model, tokenizer)(batch)
    diff = max_abs_diff(exported(batch), reference, batch["attention_mask"])
    if not diff <= tolerance:
        raise UserError(f"the exported graph's outputs differ from the torch model's by {diff:.3g} (> tolerance "
                        f"{tolerance:g}): nothing written; try without --optimize, or report the model's shapes")
    return diff

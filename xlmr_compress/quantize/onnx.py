"""int8 with ONNX Runtime: dynamic (weights int8, activations quantized per batch) or static (QDQ, activation ranges
calibrated on task data), with an accuracy check against the fp32 model and a per-node error report that says which
nodes to keep in fp32 when int8 hurts. `quantize` is also the one entry point for the torch-side modes."""
from __future__ import annotations

import shutil
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx

from .. import artifact, modeling, runtime
from .. import data as data_mod
from ..errors import UserError
from ..export import onnx as export
from ..metrics import MAIN_METRIC
from . import smooth as smooth_mod
from . import torch as torch_quant

ONNX_MODES = ("dynamic", "static")
MODES = ONNX_MODES + tuple(torch_quant.DTYPES)
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
REPORTED_NODES = 8


@dataclass
class QuantizeConfig:
    """How to quantize, what data calibrates it, and when to warn about the accuracy it costs."""

    mode: str = "dynamic"  # dynamic | static (ONNX Runtime int8); torch-int8 | torch-fp16 | torch-bf16 (PyTorch)
    per_channel: bool = True  # one int8 scale per output channel of each weight (about 5x less error)
    quantize_embeddings: bool = True  # int8 word/position tables: most of XLM-R's file size
    exclude_nodes: list[str] | None = None  # ONNX node names kept in fp32 (the warning lists the worst ones)
    smooth_alpha: float | None = None  # SmoothQuant strength (0.5 is usual) with ranges from calibration data
    optimize: bool = False  # fuse attention/LayerNorm/GELU before quantizing (input: a torch directory)
    calibration_method: str = "minmax"  # static: minmax | entropy | percentile
    calibration_split: str = "train"
    calibration_size: int = 128  # examples used to calibrate
    eval_split: str | None = "test"  # accuracy check against the source model (None, or no data: skipped)
    max_drop: float = 0.01  # warn when the main metric falls by more (0.01 = 1 point)
    max_length: int = 128
    batch_size: int = 32
    overwrite: bool = False


def quantize(model_dir: str | Path, out_dir: str | Path, config: QuantizeConfig | None = None,
             data: data_mod.TaskData | data_mod.DataConfig | str | None = None) -> Path:
    """Quantize a torch or ONNX model directory; with data, calibrate (static) and check accuracy on it."""
    config = config or QuantizeConfig()
    check_config(config, data)
    artifact.check_output(out_dir, config.overwrite)
    task_data = None if data is None else data if isinstance(data, data_mod.TaskData) else data_mod.load_data(data)
    source = Path(model_dir)
    with artifact.atomic_output(out_dir, config.overwrite) as tmp:
        graph = None
        if config.mode in torch_quant.DTYPES:
            reference = source
            torch_quant.write_quantized(source, tmp, config.mode)
        else:
            reference = fp32_onnx(source, tmp / ".fp32", config.optimize)
            graph = write_int8(reference, tmp, config, task_data)
        measured = compare(reference, tmp, graph)
        worst = [name for name, _ in measured.get("node_errors", [])[:3]]
        if task_data is not None and config.eval_split:
            measured.update(accuracy_check(source, tmp, task_data, config, worst))
        if reference != source:
            shutil.rmtree(reference)
        artifact.record_stage(tmp, "quantize", asdict(config), parent=source, metrics=measured)
    return Path(out_dir).resolve()


def write_int8(fp32: Path, out: Path, config: QuantizeConfig,
               task_data: data_mod.TaskData | None) -> onnx.ModelProto:
    """Write the int8 ONNX directory (graph, config, tokenizer) of an fp32 ONNX directory; return the fp32 graph that
    was quantized (smoothed when asked)."""
    predictor = runtime.Predictor.load(fp32)
    graph = _load(fp32)
    needs_ranges = config.mode == "static" or config.smooth_alpha is not None
    batches = calibration_batches(predictor, task_data, config) if needs_ranges else []
    if config.smooth_alpha is not None:
        graph, smoothed = smooth_mod.smooth(graph, batches, config.smooth_alpha, out / ".taps")
        print(f"[quantize] SmoothQuant (alpha {config.smooth_alpha}): {smoothed} activations smoothed")
    quantized = onnx.ModelProto()
    quantized.CopyFrom(graph)  # ORT's quantizer edits the graph it is given
    if config.mode == "dynamic":
        quantize_dynamic(quantized, out, config, _large(fp32))
    else:
        quantize_static(quantized, out, config, batches, _large(fp32))
    modeling.load_config(fp32).save_pretrained(out)
    predictor.tokenizer.save_pretrained(out)
    return graph


def check_config(config: QuantizeConfig, data: object) -> None:
    """Refuse impossible options before any work starts."""
    if config.mode not in MODES:
        raise UserError(f"unknown quantization mode {config.mode!r}: choose one of {', '.join(MODES)}")
    if config.calibration_method not in CALIBRATION_METHODS:
        raise UserError(f"unknown calibration method {config.calibration_method!r}: choose one of "
                        f"{', '.join(CALIBRATION_METHODS)}")
    if config.mode == "static" and data is None:
        raise UserError("static quantization calibrates activation ranges on data: pass --data (a slice of the "
                        "task's training data), or use --mode dynamic")
    if config.smooth_alpha is not None:
        if config.mode not in ONNX_MODES:
            raise UserError(f"--smooth-alpha applies to ONNX Runtime int8 (--mode dynamic or static), not "
                            f"{config.mode}")
        if data is None:
            raise UserError("SmoothQuant measures activation ranges on data: pass --data (a slice of the task's "
                            "training data), or leave out --smooth-alpha")
        if not 0 < config.smooth_alpha < 1:
            raise UserError(f"--smooth-alpha {config.smooth_alpha} is out of range: give a value between 0 and 1 "
                            "(0.5 is usual)")
    if config.calibration_size < 1 or config.batch_size < 1:
        raise UserError("--calibration-size and --batch-size must be at least 1")


def fp32_onnx(model_dir: Path, scratch: Path, optimize: bool) -> Path:
    """An fp32 ONNX directory to quantize: an ONNX input itself, or an export of a torch one into `scratch`."""
    if (model_dir / export.ONNX_FILE).is_file() and not (model_dir / "model.safetensors").is_file():
        if optimize:
            raise UserError(f"{model_dir} is already ONNX: --optimize applies when exporting; export the torch "
                            "model with --optimize, or quantize the torch directory with --optimize")
        precision = runtime.Predictor.load(model_dir).model.get_modelmeta().custom_metadata_map.get(
            runtime.PRECISION_KEY, "fp32")
        if precision != "fp32":
            raise UserError(f"{model_dir} is already {precision}: quantize the fp32 export it came from")
        return model_dir
    return export.export_onnx(model_dir, scratch, export.ExportConfig(optimize=optimize))


def op_types(config: QuantizeConfig) -> list[str]:
    """Operators to quantize: weight MatMuls (and fused Attention), and the embedding Gathers when asked."""
    ops = ["MatMul", "Attention"] if config.mode == "dynamic" else ["MatMul"]
    return ops + ["Gather"] if config.quantize_embeddings else ops


def quantize_dynamic(graph: onnx.ModelProto, out: Path, config: QuantizeConfig, large: bool) -> Path:
    """ORT dynamic int8: int8 weights, activations quantized on the fly from each batch's range."""
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic

    path = out / export.ONNX_FILE
    ort_quantize_dynamic(graph, str(path), op_types_to_quantize=op_types(config),
                         per_channel=config.per_channel, weight_type=QuantType.QInt8,
                         nodes_to_exclude=config.exclude_nodes or [], use_external_data_format=large,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, "MatMulConstBOnly": True})
    return _mark_int8(path)


def quantize_static(graph: onnx.ModelProto, out: Path, config: QuantizeConfig, batches: list[dict[str, np.ndarray]],
                    large: bool) -> Path:
    """ORT static int8 in QDQ format, activation ranges calibrated on task batches (MinMax, entropy, percentile)."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[config.calibration_method]
    path = out / export.ONNX_FILE
    ort_quantize_static(graph, str(path), Reader(), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=op_types(config), per_channel=config.per_channel,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=config.exclude_nodes or [], use_external_data_format=large,
                        calibrate_method=method,
                        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, "MatMulConstBOnly": True})
    return _mark_int8(path)


def _load(onnx_dir: Path) -> onnx.ModelProto:
    # Given a ModelProto, ORT's quantizer skips ONNX shape inference, which fails on fused com.microsoft operators.
    return onnx.load(str(onnx_dir / export.ONNX_FILE))


def _large(onnx_dir: Path) -> bool:
    return (onnx_dir / export.DATA_FILE).is_file()


def _mark_int8(path: Path) -> Path:
    """Record the precision in the graph's metadata and keep the optimum-style external data name."""
    proto = onnx.load(str(path))
    for stale in path.parent.glob(f"{path.name}.data"):  # ORT's external data name; save() writes DATA_FILE
        stale.unlink()
    return export.save(proto, path, precision="int8")


def calibration_batches(predictor: runtime.Predictor, task_data: data_mod.TaskData | None,
                        config: QuantizeConfig) -> list[dict[str, np.ndarray]]:
    """Equal-shape input batches from `calibration_size` examples of the calibration split, each language in its
    share (ORT's histogram calibrators stack the batches)."""
    split = task_data.split(config.calibration_split)
    if len(split) == 0:
        raise UserError(f"the calibration split {config.calibration_split!r} is empty: give data with examples "
                        "there, or choose another --calibration-split")
    subset = data_mod.TaskData(task_data.task, task_data.label_names,
                               {"calibration": data_mod.subsample(split, config.calibration_size, seed=0)})
    features = data_mod.encode(subset, "calibration", predictor.tokenizer, config.max_length,
                               label_names=predictor.label_names or None)
    width, size = max(features["length"]), min(config.batch_size, len(features))
    pad = predictor.tokenizer.pad_token_id
    batches = []
    for start in range(0, len(features) - size + 1, size):  # equal batches: a remainder is left out
        rows = features[start:start + size]
        ids = np.full((size, width), pad, dtype=np.int64)
        mask = np.zeros_like(ids)
        for i, row in enumerate(rows["input_ids"]):
            ids[i, :len(row)], mask[i, :len(row)] = row, 1
        batches.append({"input_ids": ids, "attention_mask": mask})
    return batches


def compare(reference: Path, quantized: Path, graph: onnx.ModelProto | None = None) -> dict:
    """Size and output error of a quantized directory against its reference on the padded multilingual check batch;
    given the fp32 graph that was quantized, also its nodes whose int8 error is largest (the ones to keep in fp32 if
    accuracy suffers)."""
    ref = runtime.Predictor.load(reference)
    batch = export.sample_batch(ref.tokenizer, ref.task)
    out = runtime.Predictor.load(quantized)(batch)
    measured = {"reference_bytes": artifact.size_on_disk(reference),
                "size_ratio": artifact.size_on_disk(quantized) / artifact.size_on_disk(reference),
                "max_abs_diff": export.max_abs_diff(out, ref(batch), batch["attention_mask"])}
    if graph is not None:
        measured["node_errors"] = node_errors(graph, [batch], quantized / ".taps")[:REPORTED_NODES]
    return measured


def node_errors(graph: onnx.ModelProto, batches: list[dict[str, np.ndarray]],
                scratch: Path) -> list[tuple[str, float]]:
    """Relative output error int8 alone would give each weight MatMul (per-channel int8 weights, per-batch int8
    activations), worst first: outlier activations, the usual cause of XLM-R int8 collapses, show up here."""
    weights = {t.name: t for t in graph.graph.initializer}
    nodes = smooth_mod.weight_matmuls(graph)
    runs = smooth_mod.tap(graph, list(dict.fromkeys(n.input[0] for n in nodes)), batches, scratch)
    errors = []
    for node in nodes:
        w = onnx.numpy_helper.to_array(weights[node.input[1]]).astype(np.float32)
        wq = _fake_int8(w, axis=0)
        err = ref = 0.0
        for run, batch in zip(runs, batches, strict=True):
            x = run[node.input[0]]
            if x.shape[:2] == batch["attention_mask"].shape:
                x = x[batch["attention_mask"].astype(bool)]
            x = x.reshape(-1, w.shape[0])
            y = x @ w
            err += float(np.square(_fake_uint8(x) @ wq - y).sum())
            ref += float(np.square(y).sum())
        errors.append((node.name, float(np.sqrt(err / max(ref, 1e-30)))))
    return sorted(errors, key=lambda e: -e[1])


def _fake_int8(w: np.ndarray, axis: int) -> np.ndarray:
    """Symmetric int8 per output column (the per-channel scheme ORT uses for MatMul weights), dequantized."""
    scale = np.maximum(np.abs(w).max(axis=axis, keepdims=True), 1e-12) / 127
    return np.clip(np.round(w / scale), -127, 127) * scale


def _fake_uint8(x: np.ndarray) -> np.ndarray:
    """Asymmetric uint8 over the whole tensor (ORT's DynamicQuantizeLinear), dequantized."""
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = max(hi - lo, 1e-12) / 255
    zero = np.round(-lo / scale)
    return (np.clip(np.round(x / scale) + zero, 0, 255) - zero) * scale


def accuracy_check(source: Path, quantized: Path, task_data: data_mod.TaskData, config: QuantizeConfig,
                   worst_nodes: list[str]) -> dict:
    """Main metric of the source and the quantized model on the eval split, overall and per language; warns, naming
    the nodes to keep in fp32, when the drop exceeds config.max_drop."""
    metric = MAIN_METRIC[task_data.task]
    before = runtime.evaluate(source, task_data, config.eval_split, config.batch_size, config.max_length)
    after = runtime.evaluate(quantized, task_data, config.eval_split, config.batch_size, config.max_length)
    drop = before["overall"][metric] - after["overall"][metric]
    if drop > config.max_drop:
        advice = (f"keep the nodes with the largest int8 error in fp32 with --exclude-nodes {' '.join(worst_nodes)}"
                  if worst_nodes else "try ONNX Runtime int8 (--mode dynamic) with --exclude-nodes, or fp16")
        warnings.warn(f"quantization lost {drop * 100:.1f} points of {metric} on {config.eval_split} "
                      f"({before['overall'][metric]:.4f} -> {after['overall'][metric]:.4f}, more than --max-drop "
                      f"{config.max_drop}): {advice}", stacklevel=2)
    return {"accuracy": {"metric": metric, "split": config.eval_split, "drop": drop, "source": before,
                         "quantized": after}}

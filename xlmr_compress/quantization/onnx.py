"""int8 with ONNX Runtime: dynamic (weights int8, activations quantized per batch) or static (QDQ, activation ranges
calibrated on task data), with an accuracy check against the fp32 model and a per-node error report that says which
nodes to keep in fp32 when int8 hurts. `quantize` is also the one entry point for the torch-side modes."""
from __future__ import annotations

import shutil
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx

from .. import data as data_mod
from .. import directory, runtime
from .. import onnx_export as export
from ..configs import QuantizeConfig
from ..errors import UserError
from ..metrics import MAIN_METRIC
from ..options import check_choices
from . import torch as torch_quant

ONNX_MODES = ("dynamic", "static")
REPORTED_NODES = 8


def quantize(src: str | Path, out: str | Path, config: QuantizeConfig | None = None,
             data: data_mod.TaskData | data_mod.DataConfig | str | None = None) -> Path:
    """Quantize a torch or ONNX model directory; with data, calibrate (static) and check accuracy on it."""
    config = config or QuantizeConfig()
    check_config(config, data)
    directory.check_output(out, config.overwrite)
    task_data = None if data is None else data if isinstance(data, data_mod.TaskData) else data_mod.load_data(data)
    if task_data is not None and config.eval_split:
        task_data.split(config.eval_split)  # an absent split is refused now, not after the quantization
    source = Path(src)
    with directory.atomic_output(out, config.overwrite) as tmp:
        if config.mode in torch_quant.DTYPES:
            reference = source
            torch_quant.write_quantized(source, tmp, config.mode)
            measured, worst = compare(reference, tmp), []
        else:
            reference = fp32_onnx(source, tmp / ".fp32", config.optimize)
            errors, kept = write_int8(reference, tmp, config, task_data)
            measured = {**compare(reference, tmp), "node_errors": errors[:REPORTED_NODES], "kept_fp32": kept}
            worst = [name for name, _ in errors if name not in kept][:3]
        if task_data is not None and config.eval_split:
            measured.update(accuracy_check(source, tmp, task_data, config, worst))
        if reference != source:
            shutil.rmtree(reference)
        directory.record_stage(tmp, "quantize", asdict(config), parent=source, metrics=measured)
    return Path(out).resolve()


def write_int8(fp32: Path, out: Path, config: QuantizeConfig,
               task_data: data_mod.TaskData | None) -> tuple[list[tuple[str, float]], list[str]]:
    """Write the int8 ONNX directory (graph, config, tokenizer) of an fp32 ONNX directory; return every weight
    MatMul's int8 error, worst first (measured on calibration data when given), and the nodes kept in fp32."""
    predictor = runtime.Predictor.load(fp32)
    calibrate = config.mode == "static" or (task_data is not None and len(task_data.splits.get(
        config.calibration_split, [])) > 0)  # dynamic int8 ranks nodes on calibration data when there is some
    batches = calibration_batches(predictor, task_data, config) if calibrate else []
    errors = node_errors(_load(fp32), batches or [export.sample_batch(predictor.tokenizer, predictor.task)],
                         out / ".taps")
    kept = list(dict.fromkeys([*(config.exclude_nodes or []), *(name for name, _ in errors[:config.keep_fp32])]))
    if config.keep_fp32:
        print(f"[quantize] kept in fp32, largest int8 error first: {', '.join(kept)}")
    if config.mode == "dynamic":
        quantize_dynamic(fp32, out, config, kept)
    else:
        quantize_static(fp32, out, config, batches, kept)
    directory.load_config(fp32).save_pretrained(out)
    predictor.tokenizer.save_pretrained(out)
    return errors, kept


def check_config(config: QuantizeConfig, data: object) -> None:
    """Refuse impossible options before any work starts."""
    check_choices(config)
    if config.mode == "static" and data is None:
        raise UserError("static quantization calibrates activation ranges on data: pass --data (a slice of the "
                        "task's training data), or use --mode dynamic")
    if config.keep_fp32 < 0 or (config.keep_fp32 and config.mode not in ONNX_MODES):
        raise UserError(f"--keep-fp32 {config.keep_fp32} does not apply: give a count of nodes (at least 0) with "
                        "ONNX Runtime int8 (--mode dynamic or static)")
    if config.calibration_size < 1 or config.batch_size < 1:
        raise UserError("--calibration-size and --batch-size must be at least 1")


def fp32_onnx(model_dir: Path, scratch: Path, optimize: bool) -> Path:
    """An fp32 ONNX directory to quantize: an ONNX input itself, or an export of a torch one into `scratch`."""
    info = directory.inspect(model_dir)
    if info.is_onnx:
        if optimize:
            raise UserError(f"{model_dir} is already ONNX: --optimize applies when exporting; export the torch "
                            "model with --optimize, or quantize the torch directory with --optimize")
        if info.precision != "fp32":
            raise UserError(f"{model_dir} is already {info.precision}: quantize the fp32 export it came from")
        return model_dir
    return export.export(model_dir, scratch, export.ExportConfig(optimize=optimize))


def op_types(config: QuantizeConfig) -> list[str]:
    """Operators to quantize: weight MatMuls (and fused Attention), and the embedding Gathers when asked."""
    ops = ["MatMul", "Attention"] if config.mode == "dynamic" else ["MatMul"]
    return ops + ["Gather"] if config.quantize_embeddings else ops


def quantize_dynamic(fp32: Path, out: Path, config: QuantizeConfig, exclude: list[str]) -> Path:
    """ORT dynamic int8: int8 weights, activations quantized on the fly from each batch's range."""
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic

    path = out / export.ONNX_FILE
    ort_quantize_dynamic(_load(fp32), str(path), op_types_to_quantize=op_types(config),
                         per_channel=config.per_channel, weight_type=QuantType.QInt8,
                         nodes_to_exclude=exclude, use_external_data_format=_large(fp32),
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, "MatMulConstBOnly": True})
    return _mark_int8(path)


def quantize_static(fp32: Path, out: Path, config: QuantizeConfig, batches: list[dict[str, np.ndarray]],
                    exclude: list[str]) -> Path:
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
    ort_quantize_static(_load(fp32), str(path), Reader(), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=op_types(config), per_channel=config.per_channel,
                        activation_type=QuantType.QUInt8 if config.activations == "uint8" else QuantType.QInt8,
                        weight_type=QuantType.QInt8,
                        nodes_to_exclude=exclude, use_external_data_format=_large(fp32),
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
    features = data_mod.encode(subset, "calibration", predictor.tokenizer, config.max_length, config.stride,
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


def compare(reference: Path, quantized: Path) -> dict:
    """Size and output error of a quantized directory against its reference on the padded multilingual check batch."""
    ref = runtime.Predictor.load(reference)
    batch = export.sample_batch(ref.tokenizer, ref.task)
    out = runtime.Predictor.load(quantized)(batch)
    measured = {"reference_bytes": directory.size_on_disk(reference),
                "size_ratio": directory.size_on_disk(quantized) / directory.size_on_disk(reference),
                "max_abs_diff": export.max_abs_diff(out, ref(batch), batch["attention_mask"])}
    return measured


def weight_matmuls(graph: onnx.ModelProto) -> list[onnx.NodeProto]:
    """MatMul nodes whose second input is a constant weight: the ones int8 quantizes."""
    weights = {t.name for t in graph.graph.initializer}
    return [n for n in graph.graph.node if n.op_type == "MatMul" and n.input[1] in weights]


def tap(graph: onnx.ModelProto, names: list[str], batches: list[dict[str, np.ndarray]],
        scratch: Path) -> list[dict[str, np.ndarray]]:
    """Values of the named intermediate tensors on each batch, from a copy of the graph that outputs them."""
    import onnxruntime as ort

    tapped = onnx.ModelProto()
    tapped.CopyFrom(graph)
    outputs = {o.name for o in tapped.graph.output}
    tapped.graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
                               for name in names if name not in outputs)
    scratch.mkdir()  # the tapped graph (and its external data) goes here, never beside the input's files
    try:
        session = ort.InferenceSession(str(export.save(tapped, scratch / export.ONNX_FILE)),
                                       providers=["CPUExecutionProvider"])
        return [dict(zip(names, session.run(names, batch), strict=True)) for batch in batches]
    finally:
        shutil.rmtree(scratch)


def node_errors(graph: onnx.ModelProto, batches: list[dict[str, np.ndarray]],
                scratch: Path) -> list[tuple[str, float]]:
    """Each weight MatMul's output error under int8 alone (per-channel int8 weights, per-batch int8 activations),
    relative to the output's norm per token and averaged over real tokens, worst first. Per token, because a few
    tokens with huge activations (XLM-R's <s>) widen the int8 step for all the others, whose error a norm over the
    whole tensor would hide; these are the nodes to keep in fp32."""
    weights = {t.name: t for t in graph.graph.initializer}
    nodes = weight_matmuls(graph)
    runs = tap(graph, list(dict.fromkeys(n.input[0] for n in nodes)), batches, scratch)
    errors = []
    for node in nodes:
        w = onnx.numpy_helper.to_array(weights[node.input[1]]).astype(np.float32)
        wq = _fake_int8(w, axis=0)
        per_token = []
        for run, batch in zip(runs, batches, strict=True):
            x = run[node.input[0]]
            xq = _fake_uint8(x)
            if x.shape[:2] == batch["attention_mask"].shape:
                real = batch["attention_mask"].astype(bool)
                x, xq = x[real], xq[real]
            x, xq = x.reshape(-1, w.shape[0]), xq.reshape(-1, w.shape[0])
            y = x @ w
            per_token.append(np.linalg.norm(xq @ wq - y, axis=1) / np.maximum(np.linalg.norm(y, axis=1), 1e-12))
        errors.append((node.name, float(np.concatenate(per_token).mean())))
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
    before = runtime.evaluate(source, task_data, config.eval_split, config.batch_size, config.max_length, config.stride)
    after = runtime.evaluate(quantized, task_data, config.eval_split, config.batch_size, config.max_length,
                             config.stride)
    drop = before["overall"][metric] - after["overall"][metric]
    if drop > config.max_drop:
        advice = (f"keep the nodes with the largest int8 error in fp32 with --keep-fp32 {config.keep_fp32 + 4}, or "
                  f"name them with --exclude-nodes {' '.join(worst_nodes)}"
                  if worst_nodes else "try ONNX Runtime int8 (--mode dynamic) with --exclude-nodes, or fp16")
        warnings.warn(f"quantization lost {drop * 100:.1f} points of {metric} on {config.eval_split} "
                      f"({before['overall'][metric]:.4f} -> {after['overall'][metric]:.4f}, more than --max-drop "
                      f"{config.max_drop}): {advice}", stacklevel=2)
    return {"accuracy": {"metric": metric, "split": config.eval_split, "drop": drop, "source": before,
                         "quantized": after}}

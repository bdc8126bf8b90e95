"""SmoothQuant on the ONNX graph: the smoothed fp32 graph computes the same function, an outlier channel stops
dominating the int8 error, and `quantize(..., smooth_alpha=...)` applies it from calibration data."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from safetensors.torch import load_file, save_file

from xlmr_compress import UserError, runtime
from xlmr_compress.data import DataConfig, load_data
from xlmr_compress.export import onnx as export
from xlmr_compress.modeling import save_tiny
from xlmr_compress.quantize import smooth
from xlmr_compress.quantize.onnx import QuantizeConfig, node_errors, quantize

OUTLIER = "roberta.encoder.layer.0.output.LayerNorm"  # its output feeds layer 1's Q, K and V


@pytest.fixture
def outlier_onnx(tmp_path: Path) -> Path:
    """A tiny classifier whose layer-0 output has one channel 40x larger than the rest, as trained XLM-Rs have."""
    src = save_tiny(tmp_path / "src", "sequence-classification", 3, hidden_size=64, intermediate_size=128)
    weights = load_file(src / "model.safetensors")
    for part in ("weight", "bias"):
        weights[f"{OUTLIER}.{part}"][7] *= 40
    save_file(weights, src / "model.safetensors", metadata={"format": "pt"})
    return export.export_onnx(src, tmp_path / "fp32")


def batches(model_dir: Path) -> list[dict[str, np.ndarray]]:
    predictor = runtime.Predictor.load(model_dir)
    return [export.sample_batch(predictor.tokenizer, predictor.task)]


def run(graph: onnx.ModelProto, batch: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["logits"], batch)[0]


def test_smoothed_graph_computes_the_same_function(outlier_onnx: Path, tmp_path: Path) -> None:
    graph = onnx.load(str(outlier_onnx / "model.onnx"))
    matmuls = smooth.weight_matmuls(graph)
    activations = {n.input[0] for n in matmuls}
    smoothed, count = smooth.smooth(onnx.load(str(outlier_onnx / "model.onnx")), batches(outlier_onnx), 0.5,
                                    tmp_path / "taps")
    assert count == len(activations) >= 8  # 4 per layer and the head's two
    onnx.checker.check_model(smoothed)
    assert sum(n.op_type == "Mul" and n.name.endswith("_smooth") for n in smoothed.graph.node) == count
    for batch in batches(outlier_onnx):
        np.testing.assert_allclose(run(smoothed, batch), run(graph, batch), rtol=1e-4, atol=1e-4)
    assert not (tmp_path / "taps").exists()


def test_smoothing_takes_the_outlier_out_of_the_int8_error(outlier_onnx: Path, tmp_path: Path) -> None:
    graph = onnx.load(str(outlier_onnx / "model.onnx"))
    q = "/roberta/encoder/layer.1/attention/self/query/MatMul"
    before = dict(node_errors(graph, batches(outlier_onnx), tmp_path / "a"))
    smoothed, _ = smooth.smooth(graph, batches(outlier_onnx), 0.5, tmp_path / "b")
    after = dict(node_errors(smoothed, batches(outlier_onnx), tmp_path / "c"))
    assert before[q] > 2 * after[q]
    assert before[q] > 2 * float(np.median(list(before.values())))  # the outlier made this node the bad one


def test_quantize_with_smoothing_from_data(outlier_onnx: Path, tmp_path: Path) -> None:
    texts = ["the match ended in a draw", "la banque a relevé ses taux", "der Regen kommt morgen",
             "新しい電話が発売された", "el equipo ganó la final", "inflation rose again in may"] * 4
    rows = [{"text": t, "label": f"L{i % 3}"} for i, t in enumerate(texts)]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
    data = load_data(DataConfig(str(tmp_path / "train.jsonl")))
    plain = quantize(outlier_onnx, tmp_path / "plain", QuantizeConfig(eval_split=None), data)
    out = quantize(outlier_onnx, tmp_path / "smooth", QuantizeConfig(smooth_alpha=0.5, eval_split=None,
                                                                      calibration_size=16), data)
    graph = onnx.load(str(out / "model.onnx")).graph
    assert any(n.op_type == "Mul" and n.name.endswith("_smooth") for n in graph.node)
    assert "MatMulInteger" in {n.op_type for n in graph.node}
    stages = [json.loads((d / "compression.json").read_text())["stages"][-1] for d in (plain, out)]
    assert stages[1]["options"]["smooth_alpha"] == 0.5
    assert stages[1]["measured"]["max_abs_diff"] < stages[0]["measured"]["max_abs_diff"]


def test_smoothing_needs_data_and_a_sensible_alpha(outlier_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="SmoothQuant measures activation ranges on data"):
        quantize(outlier_onnx, tmp_path / "a", QuantizeConfig(smooth_alpha=0.5))
    with pytest.raises(UserError, match="--smooth-alpha 1.5 is out of range"):
        quantize(outlier_onnx, tmp_path / "b", QuantizeConfig(smooth_alpha=1.5), "unused")
    with pytest.raises(UserError, match="applies to ONNX Runtime int8"):
        quantize(outlier_onnx, tmp_path / "c", QuantizeConfig(mode="torch-fp16", smooth_alpha=0.5), "unused")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fp32", "src"]

"""ONNX Runtime int8: dynamic and static (calibrated on real SIB-200 text), bounded error against fp32, size, node
exclusion, the accuracy warning, and one-line refusals that leave nothing behind."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from safetensors.torch import load_file, save_file

from xlmr_compress import UserError, directory, runtime
from xlmr_compress import onnx_export as export
from xlmr_compress.tiny import save_tiny
from xlmr_compress.quantization.onnx import QuantizeConfig, node_errors, quantize

SIB_LANGUAGES = ["eng_Latn", "fra_Latn", "zho_Hans"]
WIDE = {"hidden_size": 128, "intermediate_size": 512}  # wide enough that weights, not graph bookkeeping, fill the file


def last_stage(model_dir: Path) -> dict:
    return json.loads((model_dir / "compression.json").read_text())["stages"][-1]


@pytest.fixture
def onnx_dir(tmp_path: Path) -> Path:
    return export.export(save_tiny(tmp_path / "src", "sequence-classification", 3, **WIDE), tmp_path / "fp32")


@pytest.fixture(scope="module")
def sib(shared_data: Path):
    from xlmr_compress.data import DataConfig, load_data

    return load_data(DataConfig(str(shared_data / "sib200"), languages=SIB_LANGUAGES, max_per_split=48, seed=0))


def sib_model(tmp_path: Path, label_names: list[str]) -> Path:
    src = save_tiny(tmp_path / "src", "sequence-classification", len(label_names), **WIDE)
    config = json.loads((src / "config.json").read_text())
    config.update(id2label=dict(enumerate(label_names)), label2id={n: i for i, n in enumerate(label_names)})
    (src / "config.json").write_text(json.dumps(config))
    return src


def test_dynamic_int8_small_close_and_plain_onnxruntime(onnx_dir: Path, tmp_path: Path) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in onnx_dir.iterdir()}
    out = quantize(onnx_dir, tmp_path / "int8", QuantizeConfig(mode="dynamic"))
    assert {p.name: p.stat().st_mtime_ns for p in onnx_dir.iterdir()} == before  # the input is left as it was
    assert sorted(p.name for p in out.iterdir()) == ["compression.json", "config.json", "model.onnx",
                                                     "tokenizer.json", "tokenizer_config.json"]
    assert directory.size_on_disk(out) <= 0.31 * directory.size_on_disk(onnx_dir)
    fp32 = runtime.Predictor.load(onnx_dir)
    batch = export.sample_batch(fp32.tokenizer, fp32.task)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], batch)[0]
    reference = fp32(batch)["logits"]
    assert np.abs(logits - reference).max() < 0.05 * np.abs(reference).max()
    assert {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node} >= {"MatMulInteger",
                                                                                 "DynamicQuantizeLinear"}
    measured = last_stage(out)["measured"]
    assert measured["size_ratio"] <= 0.31 and measured["max_abs_diff"] == pytest.approx(
        export.max_abs_diff({"logits": logits}, {"logits": reference}, batch["attention_mask"]), rel=1e-5)
    assert len(measured["node_errors"]) == 8 and all(0 < e < 0.2 for _, e in measured["node_errors"])


@pytest.mark.parametrize("task", ["token-classification", "question-answering"])
def test_dynamic_int8_from_torch_directory_other_heads(tmp_path: Path, task: str) -> None:
    src = save_tiny(tmp_path / "src", task, 5)
    out = quantize(src, tmp_path / "int8", QuantizeConfig(mode="dynamic", optimize=True))
    assert not (out / ".fp32").exists()
    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert "QAttention" in ops  # the fused attention was quantized too
    torch_model = runtime.Predictor.load(src)
    batch = export.sample_batch(torch_model.tokenizer, task)
    assert export.max_abs_diff(runtime.Predictor.load(out)(batch), torch_model(batch), batch["attention_mask"]) < 0.1


def test_embeddings_can_stay_fp32_and_nodes_can_be_excluded(onnx_dir: Path, tmp_path: Path) -> None:
    keep = "/roberta/encoder/layer.1/output/dense/MatMul"
    out = quantize(onnx_dir, tmp_path / "int8", QuantizeConfig(quantize_embeddings=False, exclude_nodes=[keep]))
    graph = onnx.load(str(out / "model.onnx")).graph
    assert any(n.name == keep and n.op_type == "MatMul" for n in graph.node)
    weights = {t.name: t.data_type for t in graph.initializer}
    assert weights["roberta.embeddings.word_embeddings.weight"] == onnx.TensorProto.FLOAT
    with_gather = quantize(onnx_dir, tmp_path / "int8-all", QuantizeConfig())
    assert directory.size_on_disk(with_gather) < directory.size_on_disk(out)


@pytest.fixture
def outlier_onnx(tmp_path: Path) -> Path:
    """A tiny classifier whose layer-0 output has one channel 40x larger than the rest: every token's layer-1 input
    then gets a coarse int8 step, as XLM-R's outlier activations give it."""
    src = save_tiny(tmp_path / "src", "sequence-classification", 3, hidden_size=64, intermediate_size=128)
    weights = load_file(src / "model.safetensors")
    for part in ("weight", "bias"):
        weights[f"roberta.encoder.layer.0.output.LayerNorm.{part}"][7] *= 40
    save_file(weights, src / "model.safetensors", metadata={"format": "pt"})
    return export.export(src, tmp_path / "fp32")


def test_keep_fp32_keeps_the_nodes_the_outlier_hurts(outlier_onnx: Path, tmp_path: Path) -> None:
    layer1 = {f"/roberta/encoder/layer.1/attention/self/{part}/MatMul" for part in ("query", "key", "value")}
    predictor = runtime.Predictor.load(outlier_onnx)
    batch = export.sample_batch(predictor.tokenizer, predictor.task)
    errors = node_errors(onnx.load(str(outlier_onnx / "model.onnx")), [batch], tmp_path / "taps")
    assert {name for name, _ in errors[:3]} == layer1 and errors[2][1] > 2 * errors[3][1]
    assert not (tmp_path / "taps").exists()
    plain = quantize(outlier_onnx, tmp_path / "plain", QuantizeConfig())
    kept = quantize(outlier_onnx, tmp_path / "kept", QuantizeConfig(keep_fp32=3))
    graph = onnx.load(str(kept / "model.onnx")).graph
    assert {n.name for n in graph.node if n.op_type == "MatMul"} >= layer1
    assert set(last_stage(kept)["measured"]["kept_fp32"]) == layer1
    # How much of the logits' error the outlier nodes carry depends on ORT's int8 kernels for the host's instruction
    # set (on AVX-512 VNNI it is small): keeping them in fp32 must never make the output worse.
    assert last_stage(kept)["measured"]["max_abs_diff"] < 1.1 * last_stage(plain)["measured"]["max_abs_diff"]


@pytest.mark.parametrize("method", ["minmax", "entropy"])
def test_static_int8_calibrated_on_real_data(tmp_path: Path, sib, method: str) -> None:
    src = sib_model(tmp_path, sib.label_names)
    config = QuantizeConfig(mode="static", calibration_method=method, calibration_size=32, batch_size=16)
    out = quantize(src, tmp_path / "static", config, sib)
    ops = [n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node]
    assert ops.count("QuantizeLinear") >= 8  # activations (not only weights) carry calibrated QDQ pairs
    measured = last_stage(out)["measured"]
    assert measured["size_ratio"] <= 0.36 and measured["max_abs_diff"] < 0.2
    accuracy = measured["accuracy"]
    assert accuracy["metric"] == "macro_f1" and set(accuracy["quantized"]["per_language"]) == set(SIB_LANGUAGES)
    assert accuracy["drop"] == pytest.approx(accuracy["source"]["overall"]["macro_f1"]
                                             - accuracy["quantized"]["overall"]["macro_f1"])


def weight_matmuls_left_in_fp32(model_dir: Path, tmp_path: Path) -> int:
    """MatMuls that ORT, after its own graph optimisation, runs in fp32 on a weight it dequantizes every call."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(model_dir / "model.onnx"), options, providers=["CPUExecutionProvider"])
    graph = onnx.load(options.optimized_model_filepath).graph
    dequantized_weights = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"
                           and n.input[0] in {t.name for t in graph.initializer}}
    return sum(n.op_type == "MatMul" and n.input[1] in dequantized_weights for n in graph.node)


def test_static_int8_activations_are_uint8_so_onnxruntime_fuses_them(tmp_path: Path, sib) -> None:
    src = sib_model(tmp_path, sib.label_names)
    types, fp32_matmuls = {}, {}
    for activations in ("uint8", "int8"):
        config = QuantizeConfig(mode="static", activations=activations, calibration_size=16, batch_size=16,
                                eval_split=None)
        out = quantize(src, tmp_path / activations, config, sib)
        graph = onnx.load(str(out / "model.onnx")).graph
        zero_points = {t.name: t.data_type for t in graph.initializer}
        types[activations] = {zero_points[n.input[2]] for n in graph.node if n.op_type == "QuantizeLinear"}
        fp32_matmuls[activations] = weight_matmuls_left_in_fp32(out, tmp_path / activations)
    assert types == {"uint8": {onnx.TensorProto.UINT8}, "int8": {onnx.TensorProto.INT8}}
    assert fp32_matmuls["uint8"] == 0  # every weight MatMul became an integer kernel


def test_accuracy_drop_warns_with_nodes_to_keep(tmp_path: Path, sib) -> None:
    src = sib_model(tmp_path, sib.label_names)
    with pytest.warns(UserWarning, match="--exclude-nodes /roberta/encoder/layer"):
        quantize(src, tmp_path / "int8", QuantizeConfig(max_drop=-1.0, eval_split="validation"), sib)


# --- bad input: one line, nothing written ---------------------------------------------------------------------


def test_refuses_empty_calibration_set(tmp_path: Path, sib) -> None:
    src = sib_model(tmp_path, sib.label_names)
    empty = type(sib)(sib.task, sib.label_names, {**sib.splits, "train": sib.splits["train"].select([])})
    with pytest.raises(UserError, match="calibration split 'train' is empty"):
        quantize(src, tmp_path / "static", QuantizeConfig(mode="static"), empty)
    assert not (tmp_path / "static").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_refuses_bad_requests(onnx_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="pass --data"):
        quantize(onnx_dir, tmp_path / "q", QuantizeConfig(mode="static"))
    with pytest.raises(UserError, match="unknown mode .*choose one of dynamic"):
        quantize(onnx_dir, tmp_path / "q", QuantizeConfig(mode="int4"))
    for bad in (QuantizeConfig(keep_fp32=-1), QuantizeConfig(mode="torch-int8", keep_fp32=2)):
        with pytest.raises(UserError, match="--keep-fp32 .* does not apply"):
            quantize(onnx_dir, tmp_path / "q", bad)
    int8 = quantize(onnx_dir, tmp_path / "int8")
    with pytest.raises(UserError, match="already int8"):
        quantize(int8, tmp_path / "q")
    no_weights = tmp_path / "empty"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((onnx_dir / "config.json").read_text())
    with pytest.raises(UserError, match="no weights"):
        quantize(no_weights, tmp_path / "q")
    assert not (tmp_path / "q").exists()


def test_an_absent_eval_split_is_refused_before_any_work(onnx_dir: Path, tmp_path: Path, toy_data: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from xlmr_compress.quantization import onnx as quant_onnx

    def never(*args: object) -> None:
        raise AssertionError("the model was exported before the data was checked")

    monkeypatch.setattr(quant_onnx, "fp32_onnx", never)
    (toy_data / "test.csv").unlink()
    with pytest.raises(UserError, match="the data has no 'test' split"):
        quantize(onnx_dir, tmp_path / "q", QuantizeConfig(), str(toy_data))
    assert not (tmp_path / "q").exists()


def test_cli_quantize_and_one_line_error(onnx_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from xlmr_compress.cli import main

    keep = "/roberta/encoder/layer.0/output/dense/MatMul"
    assert main(["quantize", str(onnx_dir), "--out", str(tmp_path / "int8"), "--exclude-nodes", keep]) == 0
    assert "size ratio" in capsys.readouterr().out
    assert last_stage(tmp_path / "int8")["options"]["exclude_nodes"] == [keep]
    assert main(["quantize", str(onnx_dir), "--out", str(tmp_path / "static"), "--mode", "static"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: static quantization calibrates") and err.count("\n") == 1

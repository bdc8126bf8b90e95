"""ONNX export: parity with torch for every head on padded batches, pruned and vocabulary-trimmed models, ORT
fusions, external data, the ONNX predictor, and one-line refusals that leave nothing behind."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from xlmr_compress import UserError, directory, runtime, tiny
from xlmr_compress import onnx_export as export
from xlmr_compress.tiny import save_tiny

TASKS = directory.TASKS
TEXTS = ["hello world", "the movie was very good and the music was great, I love it", "la ville de paris",
         "no"]


def padded_batch(tokenizer, task: str) -> dict[str, np.ndarray]:
    """A batch unlike the export's check batch: other texts, other batch size, heavy right padding."""
    if task == "question-answering":
        enc = tokenizer(["what?"] * len(TEXTS), TEXTS, padding=True, return_tensors="np")
    else:
        enc = tokenizer(TEXTS, padding=True, return_tensors="np")
    return {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask")}


def assert_parity(torch_dir: Path, onnx_dir: Path, tolerance: float = 1e-4) -> None:
    reference = runtime.Predictor.load(torch_dir)
    exported = runtime.Predictor.load(onnx_dir)
    assert exported.backend == "onnx" and exported.task == reference.task
    batch = padded_batch(reference.tokenizer, reference.task)
    assert (batch["attention_mask"] == 0).any()
    assert export.max_abs_diff(exported(batch), reference(batch), batch["attention_mask"]) < tolerance


@pytest.mark.parametrize("task", TASKS)
def test_export_parity_each_head(tmp_path: Path, task: str) -> None:
    src = save_tiny(tmp_path / "src", task, 5)
    out = export.export(src, tmp_path / "onnx")
    assert {"model.onnx", "config.json", "tokenizer.json", "compression.json"} <= {p.name for p in out.iterdir()}
    assert_parity(src, out)
    # Plain onnxruntime, without this library, runs the graph with dynamic batch and sequence axes.
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    assert [o.name for o in session.get_outputs()] == list(directory.OUTPUTS[task])
    for batch, length in ((1, 3), (7, 40)):
        ids = np.full((batch, length), 5, dtype=np.int64)
        assert session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0].shape[:2] == (
            (batch, 5) if task == "sequence-classification" else (batch, length))
    stage = json.loads((out / "compression.json").read_text())["stages"][-1]
    assert stage["stage"] == "export-onnx" and stage["measured"]["max_abs_diff"] < 1e-4
    assert onnx.load(str(out / "model.onnx")).opset_import[0].version >= 18


def test_export_optimized_fuses_attention(tmp_path: Path) -> None:
    src = save_tiny(tmp_path / "src", "token-classification", 5)
    out = export.export(src, tmp_path / "onnx", export.ExportConfig(optimize=True))
    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert {"Attention", "SkipLayerNormalization", "BiasGelu"} <= ops
    assert_parity(src, out)


@pytest.mark.parametrize(("heads", "optimize"), [([3, 1], False), ([3, 1], True), ([2, 2], True), ([4, 4], True)])
def test_export_pruned_model(tmp_path: Path, heads: list[int], optimize: bool) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification

    from xlmr_compress.pruning import PruneConfig, prune

    src = save_tiny(tmp_path / "src", "sequence-classification", 3)
    # sharp attention: a tiny random model's near-uniform softmax hides a wrongly fused attention from the parity check
    model = AutoModelForSequenceClassification.from_pretrained(src)
    with torch.no_grad():
        for layer in model.roberta.encoder.layer:
            layer.attention.self.query.weight.mul_(30)
    model.save_pretrained(src)
    pruned = prune(src, tmp_path / "pruned", PruneConfig(keep_heads=heads, keep_ffn=[48, 16], importance="magnitude"))
    assert json.loads((pruned / "config.json").read_text())["xlmr_compress"]["heads"] == heads
    out = export.export(pruned, tmp_path / "onnx", export.ExportConfig(optimize=optimize))
    assert_parity(pruned, out)
    fused = json.loads((out / "compression.json").read_text())["stages"][-1]["measured"]["fused_operators"]
    # fused only where every layer has all its heads: ORT's Attention is wrong on heads narrower than the hidden size
    assert fused.get("Attention", 0) == (2 if optimize and heads == [4, 4] else 0)


def test_export_vocabulary_trimmed_model(tmp_path: Path) -> None:
    from xlmr_compress.pruning import TrimConfig, trim_vocab

    src = save_tiny(tmp_path / "src", "token-classification", 5)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TEXTS) + "\n")
    trimmed = trim_vocab(src, tmp_path / "trimmed", TrimConfig(corpus=[str(corpus)]))
    assert json.loads((trimmed / "config.json").read_text())["vocab_size"] < len(tiny.tiny_tokenizer())
    out = export.export(trimmed, tmp_path / "onnx")
    assert_parity(trimmed, out)


def test_export_external_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export, "PROTOBUF_LIMIT", 0)  # what a > 2 GB model (xlm-roberta-large) gets
    src = save_tiny(tmp_path / "src", "sequence-classification", 3)
    out = export.export(src, tmp_path / "onnx")
    assert (out / "model.onnx_data").stat().st_size > (out / "model.onnx").stat().st_size
    assert_parity(src, out)


def test_onnx_evaluate_matches_torch(tmp_path: Path) -> None:
    from xlmr_compress.data import load_data

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    rows = [{"text": t, "label": f"L{i % 3}", "language": "en"} for i, t in enumerate(TEXTS * 3)]
    (data_dir / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    src = save_tiny(tmp_path / "src", "sequence-classification", 3)
    out = export.export(src, tmp_path / "onnx")
    data = load_data(str(data_dir))
    via_onnx = runtime.evaluate(runtime.Predictor.load(out, threads=1), data, batch_size=4)
    assert via_onnx["overall"] == runtime.evaluate(src, data, batch_size=4)["overall"]


# --- bad input: one line, nothing written ---------------------------------------------------------------------


def test_refuses_directory_without_weights(tmp_path: Path) -> None:
    src = save_tiny(tmp_path / "src", "sequence-classification", 3)
    (src / "model.safetensors").unlink()
    with pytest.raises(UserError, match="no weights"):
        export.export(src, tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()


def test_refuses_fp16_on_cpu_and_old_opset(tmp_path: Path) -> None:
    src = save_tiny(tmp_path / "src", "sequence-classification", 3)
    with pytest.raises(UserError, match="GPU"):
        export.export(src, tmp_path / "onnx", export.ExportConfig(fp16=True))
    with pytest.raises(UserError, match="opset"):
        export.export(src, tmp_path / "onnx", export.ExportConfig(opset=14))
    assert not (tmp_path / "onnx").exists()


def test_refuses_export_that_drifts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export, "max_abs_diff", lambda *args: 0.5)
    src = save_tiny(tmp_path / "src", "sequence-classification", 3)
    with pytest.raises(UserError, match="differ from the torch model"):
        export.export(src, tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists() and list(tmp_path.iterdir()) == [src]


def test_refuses_onnx_that_does_not_match_its_config(tmp_path: Path) -> None:
    src = save_tiny(tmp_path / "src", "sequence-classification", 3)
    out = export.export(src, tmp_path / "onnx")
    config = json.loads((out / "config.json").read_text())
    wrong_labels = {**config, "id2label": {str(i): f"L{i}" for i in range(5)},
                    "label2id": {f"L{i}": i for i in range(5)}}
    (out / "config.json").write_text(json.dumps(wrong_labels))
    with pytest.raises(UserError, match="3 labels, config.json 5"):
        runtime.Predictor.load(out)
    (out / "config.json").write_text(json.dumps({**config, "architectures": ["XLMRobertaForQuestionAnswering"]}))
    with pytest.raises(UserError, match="lacks output start_logits"):
        runtime.Predictor.load(out)
    (out / "model.onnx").write_bytes(b"not a graph")
    with pytest.raises(UserError, match="cannot load"):
        runtime.Predictor.load(out)


def test_refuses_unknown_provider(tmp_path: Path) -> None:
    src = save_tiny(tmp_path / "src", "sequence-classification", 3)
    out = export.export(src, tmp_path / "onnx")
    with pytest.raises(UserError, match="not available"):
        runtime.Predictor.load(out, provider="TensorrtExecutionProvider")


def test_cli_export_and_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from xlmr_compress.cli import main

    src = save_tiny(tmp_path / "src", "sequence-classification", 3)
    assert main(["export", str(src), "--out", str(tmp_path / "onnx"), "--optimize"]) == 0
    assert "max abs diff" in capsys.readouterr().out
    assert (tmp_path / "onnx" / "model.onnx").is_file()
    assert main(["export", str(src), "--out", str(tmp_path / "fp16"), "--fp16"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: fp16 ONNX models run on GPU only") and err.count("\n") == 1
    assert not (tmp_path / "fp16").exists()

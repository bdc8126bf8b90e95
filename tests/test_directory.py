"""Atomic outputs and compression.json lineage."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from xlmr_compress import UserError
from xlmr_compress.directory import atomic_output, read_lineage, record_stage, size_on_disk


def test_failure_leaves_nothing(tmp_path: Path):
    with pytest.raises(RuntimeError):
        with atomic_output(tmp_path / "out") as tmp:
            (tmp / "model.safetensors").write_bytes(b"x" * 10)
            raise RuntimeError("killed half-way")
    assert list(tmp_path.iterdir()) == []


def test_success_renames_and_refuses_to_clobber(tmp_path: Path):
    with atomic_output(tmp_path / "out") as tmp:
        (tmp / "model.safetensors").write_bytes(b"x" * 10)
    assert size_on_disk(tmp_path / "out") == 10
    with pytest.raises(UserError, match="already exists"):
        with atomic_output(tmp_path / "out"):
            pass
    with atomic_output(tmp_path / "out", overwrite=True) as tmp:
        (tmp / "model.onnx").write_bytes(b"y" * 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert size_on_disk(tmp_path / "out") == 3


def test_lineage_accumulates_across_stages(tmp_path: Path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    record_stage(a, "finetune", {"epochs": 1, "path": Path("/x")}, metrics={"macro_f1": 0.5})
    record_stage(b, "prune", {"heads": 0.3}, parent=a)
    stages = read_lineage(b)["stages"]
    assert [s["stage"] for s in stages] == ["finetune", "prune"]
    assert stages[1]["parent"] == str(a.resolve()) and stages[0]["options"]["path"] == "/x"
    assert stages[0]["measured"]["macro_f1"] == 0.5
    json.loads((b / "compression.json").read_text())


def test_corrupt_lineage_is_a_clear_error(tmp_path: Path):
    (tmp_path / "compression.json").write_text("{")
    with pytest.raises(UserError, match="not valid JSON"):
        read_lineage(tmp_path)


def test_a_model_of_another_architecture_is_refused_in_one_line(tmp_path: Path):
    from transformers import BertConfig, BertForSequenceClassification

    from xlmr_compress.directory import inspect

    BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=32)).save_pretrained(tmp_path)
    with pytest.raises(UserError, match="is a 'bert' model, not XLM-R: .* give an XLM-RoBERTa model"):
        inspect(tmp_path)


def test_a_head_with_default_names_predicts_integer_labels(tmp_path: Path):
    from xlmr_compress.directory import inspect, load
    from xlmr_compress.tiny import save_tiny

    model_dir = save_tiny(tmp_path / "m", "sequence-classification", 2)
    config = json.loads((model_dir / "config.json").read_text())
    config.update(id2label={"0": "LABEL_0", "1": "LABEL_1"}, label2id={"LABEL_0": 0, "LABEL_1": 1})
    (model_dir / "config.json").write_text(json.dumps(config))
    assert inspect(model_dir).label_names == ["LABEL_0", "LABEL_1"]
    load(model_dir, label_names=["0", "1"])
    with pytest.raises(UserError, match="default names: write the class names into its config.json id2label"):
        load(model_dir, label_names=["neg", "pos"])
    with pytest.raises(UserError, match="do not match"):
        load(model_dir, label_names=["1", "0"])

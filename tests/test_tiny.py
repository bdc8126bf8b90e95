"""load(): every directory problem is a one-line UserError; tiny models are realistic XLM-R."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from xlmr_compress import UserError, load
from xlmr_compress.tiny import save_tiny, tiny_model, tiny_tokenizer
from xlmr_compress.surgery import layer_shapes, resize_layers


def test_tiny_model_has_real_checkpoint_conventions():
    model = tiny_model("sequence-classification", 3)
    c = model.config
    assert (c.layer_norm_eps, c.type_vocab_size, c.max_position_embeddings, c.pad_token_id) == (1e-5, 1, 514, 1)
    tok = tiny_tokenizer()
    ids = tok("hello world")["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2 and tok.pad_token_id == 1 and tok.unk_token_id == 3
    # XLM-R positions start after the padding index: position ids of real tokens begin at pad_token_id + 1.
    emb = model.roberta.embeddings
    pos = emb.create_position_ids_from_input_ids(torch.tensor([ids]), padding_idx=1)
    assert pos[0, 0].item() == 2


@pytest.mark.parametrize("task", ["sequence-classification", "token-classification", "question-answering"])
def test_round_trip_each_head(tmp_path: Path, task: str):
    d = save_tiny(tmp_path / "m", task, 5)
    model, tok = load(d)
    x = tok(["hello world", "good movie today"], padding=True, return_tensors="pt")
    out = model(**x)
    key = "start_logits" if task == "question-answering" else "logits"
    assert torch.isfinite(out[key]).all()


def test_missing_directory(tmp_path: Path):
    with pytest.raises(UserError, match="does not exist"):
        load(tmp_path / "nope")


def test_missing_weights(tiny_dir: Path):
    (tiny_dir / "model.safetensors").unlink()
    with pytest.raises(UserError, match="no weights"):
        load(tiny_dir)


def test_missing_tokenizer(tiny_dir: Path):
    (tiny_dir / "tokenizer.json").unlink()
    with pytest.raises(UserError, match="no tokenizer.json"):
        load(tiny_dir)


def test_unreadable_config(tiny_dir: Path):
    (tiny_dir / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="unreadable"):
        load(tiny_dir)


def test_wrong_task_head(tiny_dir: Path):
    with pytest.raises(UserError, match="has a sequence-classification head"):
        load(tiny_dir, "token-classification")


def test_tokenizer_larger_than_embedding(tmp_path: Path, xlmr_tokenizer_file: Path):
    d = save_tiny(tmp_path / "m")
    shutil.copy(xlmr_tokenizer_file, d / "tokenizer.json")
    with pytest.raises(UserError, match="does not belong to this model"):
        load(d)


def test_bare_encoder_needs_labels(tmp_path: Path):
    d = save_tiny(tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"] = ["XLMRobertaModel"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="no task head"):
        load(d)
    model, _ = load(d, "token-classification", label_names=["O", "B-PER", "I-PER"])
    assert model.config.num_labels == 3


def test_pickled_weights_are_refused(tiny_dir: Path):
    (tiny_dir / "model.safetensors").rename(tiny_dir / "pytorch_model.bin")
    with pytest.raises(UserError, match="never unpickled"):
        load(tiny_dir)


def test_pruned_shapes_are_rebuilt(tmp_path: Path):
    model = tiny_model("sequence-classification", 3)
    shapes = {"head_size": 8, "heads": [2, 3], "ffn": [16, 40]}
    resize_layers(model, shapes)
    model.config.xlmr_compress = layer_shapes(model)
    model.save_pretrained(tmp_path / "p")
    tiny_tokenizer().save_pretrained(tmp_path / "p")
    loaded, tok = load(tmp_path / "p")
    assert layer_shapes(loaded) == shapes
    x = tok(["hello world"], return_tensors="pt")
    torch.testing.assert_close(loaded(**x).logits, model.eval()(**x).logits)

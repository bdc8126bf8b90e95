"""Tiny, realistic XLM-R models and tokenizers (the real checkpoints' conventions at a toy size), for tests and
examples that must run offline in seconds."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, XLMRobertaConfig, XLMRobertaTokenizerFast

from .directory import auto_class, check_task

TINY_WORDS = (
    "the a of and to in is was for on that with as by at from it an be this are or his her they we you not but "
    "de la le et les des en un une est que pour dans der die und das ist nicht el los las y es por con il di che "
    "hello world good bad happy sad movie film music sport game team city river house paris london berlin madrid "
    "john mary apple google news today great love hate ok yes no very much more new old big small"
).split()


def tiny_tokenizer() -> XLMRobertaTokenizerFast:
    """A small Unigram (SentencePiece-style) tokenizer with XLM-R's special-token layout, for unit tests."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    chars = sorted(set("".join(TINY_WORDS)) | set("0123456789.,!?'-"))
    pieces = [(s, 0.0) for s in specials] + [("▁" + w, -5.0 - i / 100) for i, w in enumerate(TINY_WORDS)]
    pieces += [("▁", -8.0)] + [(c, -10.0) for c in chars] + [("▁" + c, -10.5) for c in chars] + [("<mask>", 0.0)]
    tok = Tokenizer(models.Unigram(pieces, unk_id=3, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    return XLMRobertaTokenizerFast(tokenizer_object=tok, model_max_length=512)


def tiny_config(vocab_size: int, **overrides: Any) -> XLMRobertaConfig:
    """A 2-layer, 32-wide XLM-R config with the real checkpoints' conventions (eps, type vocab, positions, pad id)."""
    base = dict(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0,
        eos_token_id=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    return XLMRobertaConfig(**{**base, **overrides})


def tiny_model(
    task: str = "sequence-classification", num_labels: int = 3, vocab_size: int | None = None, seed: int = 0,
    **config_overrides: Any,
) -> PreTrainedModel:
    """A randomly initialised tiny XLM-R with a task head, for unit tests."""
    check_task(task)
    vocab_size = vocab_size or len(tiny_tokenizer())
    labels = {} if task == "question-answering" else {
        "id2label": {i: f"L{i}" for i in range(num_labels)}, "label2id": {f"L{i}": i for i in range(num_labels)}}
    config = tiny_config(vocab_size, num_labels=2 if task == "question-answering" else num_labels,
                         **labels, **config_overrides)
    torch.manual_seed(seed)
    return auto_class(task).from_config(config).eval()


def save_tiny(out_dir: str | Path, task: str = "sequence-classification", num_labels: int = 3, seed: int = 0,
              **config_overrides: Any) -> Path:
    """Write a tiny model directory (weights, config, tokenizer) for tests."""
    tokenizer = tiny_tokenizer()
    model = tiny_model(task, num_labels, len(tokenizer), seed, **config_overrides)
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out

"""Model directories the studies build for themselves: xlm-roberta-base's shape with random weights and XLM-R's real
tokenizer (latency, size and vocabulary trimming need no training)."""
from __future__ import annotations

import shutil
from pathlib import Path

from benchmarks import SHARED

TOKENIZER = SHARED / "tokenizers" / "xlm-roberta" / "tokenizer.json"
BASE_SHAPE = {"vocab_size": 250002, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
              "intermediate_size": 3072, "layer_norm_eps": 1e-5, "type_vocab_size": 1, "max_position_embeddings": 514,
              "pad_token_id": 1}


def random_base(out: Path, num_labels: int) -> Path:
    """Write xlm-roberta-base's shape (seeded random weights, a sequence-classification head) with XLM-R's tokenizer
    file copied verbatim; written beside `out` and renamed, so an interrupted build leaves nothing at `out`."""
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification, XLMRobertaTokenizerFast

    torch.manual_seed(0)
    config = XLMRobertaConfig(**BASE_SHAPE, num_labels=num_labels,
                              architectures=["XLMRobertaForSequenceClassification"])
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    XLMRobertaForSequenceClassification(config).eval().save_pretrained(tmp)
    XLMRobertaTokenizerFast(tokenizer_file=str(TOKENIZER)).save_pretrained(tmp)
    shutil.copy(TOKENIZER, tmp / "tokenizer.json")
    tmp.rename(out)
    return out

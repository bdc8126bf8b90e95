"""Vocabulary trimming: keep only the SentencePiece pieces a corpus uses, shrinking the 250k-row embedding.

XLM-R spends 192M of its 278M parameters on the word embedding; a model serving a few languages uses a small
share of the rows. The Unigram tokenizer keeps the kept pieces with their original scores, so a text made only
of kept pieces is segmented exactly as before (every other segmentation was available to the original too) and
the trimmed model computes the same outputs; a piece that falls out is segmented into smaller kept pieces, or
becomes <unk> when none covers it.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from .. import directory
from ..configs import TrimConfig
from ..data import DataConfig, TaskData, load_data
from ..errors import UserError
from ..options import check_choices
from .structured import data_name

VOCAB_TENSORS = ("word_embeddings.weight", "lm_head.decoder.weight", "lm_head.decoder.bias", "lm_head.bias")
TOKENIZER_EXTRAS = ("tokenizer_config.json", "special_tokens_map.json")


def trim_vocab(src: str | Path, out: str | Path, config: TrimConfig | None = None,
               data: TaskData | DataConfig | str | None = None) -> Path:
    """Write a copy of a model whose vocabulary (tokenizer and embedding rows) holds only the pieces the text uses."""
    config = config or TrimConfig()
    check_choices(config)
    src = Path(src)
    tokenizer_json = _check_inputs(src, config, data)
    directory.check_output(out, config.overwrite)
    spec = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    tokenizer = Tokenizer.from_str(json.dumps(spec))
    selection, held_out = _texts(config, data)
    counts = count_pieces(tokenizer, selection)
    if counts.sum() == 0:
        raise UserError("the corpus has no text: give a non-empty --corpus file or a --data set with text")
    kept = kept_ids(spec, counts, config.min_count, config.keep_top)
    coverage = {"selection": coverage_of(counts, kept)}
    coverage.update({name: coverage_of(count_pieces(tokenizer, texts), kept) for name, texts in held_out.items()})

    state = load_file(str(src / "model.safetensors"))
    rows = _embedding_rows(state, src)
    if rows < len(spec["model"]["vocab"]):
        raise UserError(f"{src}: the tokenizer has {len(spec['model']['vocab'])} pieces but the embedding only "
                        f"{rows} rows: the tokenizer does not belong to this model")
    index = torch.as_tensor(kept)
    trimmed = {k: v.index_select(0, index).contiguous() if k.endswith(VOCAB_TENSORS) else v for k, v in state.items()}
    model_config = json.loads((src / "config.json").read_text())
    model_config["vocab_size"] = len(kept)

    with directory.atomic_output(out, config.overwrite) as tmp:
        save_file(trimmed, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(model_config, indent=2) + "\n")
        trimmed_spec = json.dumps(trim_tokenizer(spec, kept), ensure_ascii=False)
        (tmp / "tokenizer.json").write_text(trimmed_spec, encoding="utf-8")
        for name in TOKENIZER_EXTRAS:
            if (src / name).is_file():
                shutil.copy2(src / name, tmp / name)
        measured = {
            "vocabulary_before": len(spec["model"]["vocab"]), "vocabulary_after": len(kept),
            "bytes_before": directory.size_on_disk(src), "bytes_after": directory.size_on_disk(tmp),
            "parameters": sum(t.numel() for t in trimmed.values()),
            "coverage": coverage, "corpus_tokens": int(counts.sum()),
        }
        directory.record_stage(tmp, "trim-vocab", {**asdict(config), "data": data_name(data)}, src, measured)
    return Path(out)


def count_pieces(tokenizer: Tokenizer, texts: list[str]) -> np.ndarray:
    """How often each piece id occurs when the original tokenizer segments the texts (no special tokens)."""
    counts = np.zeros(tokenizer.get_vocab_size(with_added_tokens=True), dtype=np.int64)
    for start in range(0, len(texts), 4096):
        encodings = tokenizer.encode_batch(texts[start:start + 4096], add_special_tokens=False)
        ids = [i for enc in encodings for i in enc.ids]
        counts += np.bincount(np.asarray(ids, dtype=np.int64), minlength=len(counts))
    return counts


def kept_ids(spec: dict, counts: np.ndarray, min_count: int = 1, keep_top: int = 0) -> list[int]:
    """Sorted ids to keep: special tokens, pieces used at least `min_count` times, and the `keep_top` best-scored."""
    if min_count < 1 or keep_top < 0:
        raise UserError(f"min_count {min_count} / keep_top {keep_top}: min_count must be >= 1 and keep_top >= 0")
    specials = {t["id"] for t in spec.get("added_tokens", [])} | {spec["model"]["unk_id"]}
    keep = set(np.flatnonzero(counts >= min_count).tolist()) | specials
    if keep_top:
        scores = np.asarray([score for _, score in spec["model"]["vocab"]])
        scores[list(specials)] = -np.inf
        keep |= set(np.argsort(-scores, kind="stable")[:keep_top].tolist())
    return sorted(keep)


def coverage_of(counts: np.ndarray, kept: list[int]) -> float:
    """Share of the text's tokens (original segmentation) whose piece the trimmed vocabulary keeps."""
    total = counts.sum()
    return float(counts[kept].sum() / total) if total else 0.0


def trim_tokenizer(spec: dict, kept: list[int]) -> dict:
    """The tokenizer.json with only the kept Unigram pieces (original scores and order) and every id re-indexed."""
    new_id = {old: new for new, old in enumerate(kept)}
    out = json.loads(json.dumps(spec))
    vocab = spec["model"]["vocab"]
    out["model"]["vocab"] = [vocab[i] for i in kept]
    out["model"]["unk_id"] = new_id[spec["model"]["unk_id"]]
    for token in out.get("added_tokens", []):
        token["id"] = new_id[token["id"]]
    _remap_post_processor(out.get("post_processor"), new_id)
    return out


def _remap_post_processor(node: dict | None, new_id: dict[int, int]) -> None:
    """Re-index the special-token ids a post-processor (template, RoBERTa/BERT style, or a sequence) carries."""
    if not node:
        return
    for special in node.get("special_tokens", {}).values():
        special["ids"] = [new_id[i] for i in special["ids"]]
    for key in ("sep", "cls"):
        if key in node:
            node[key][1] = new_id[node[key][1]]
    for child in node.get("processors", []):
        _remap_post_processor(child, new_id)


def _check_inputs(src: Path, config: TrimConfig, data: Any) -> Path:
    """Validate the model directory, its tokenizer type and the text sources before any work; return tokenizer.json."""
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        if not (src / name).is_file():
            raise UserError(f"{src} has no {name}: give a torch model directory a stage wrote "
                            "(trim before ONNX export)")
    tokenizer_json = src / "tokenizer.json"
    model_type = json.loads(tokenizer_json.read_text(encoding="utf-8")).get("model", {}).get("type")
    if model_type != "Unigram":
        raise UserError(f"{tokenizer_json} is a {model_type} tokenizer: vocabulary trimming needs XLM-R's "
                        "SentencePiece Unigram tokenizer")
    if not config.corpus and data is None:
        raise UserError("nothing to trim to: give --corpus FILE or --data D (the text whose pieces are kept)")
    for path in config.corpus or []:
        if not Path(path).is_file():
            raise UserError(f"corpus file {path} does not exist: give a text file, one text a line")
    return tokenizer_json


def _texts(config: TrimConfig, data: Any) -> tuple[list[str], dict[str, list[str]]]:
    """The texts that choose the vocabulary, and held-out texts (the data's other splits) to report coverage on."""
    selection = [line for path in config.corpus or [] for line in Path(path).read_text(encoding="utf-8").splitlines()
                 if line.strip()]
    held_out = {}
    if data is not None:
        task_data = data if isinstance(data, TaskData) else load_data(data)
        missing = [s for s in config.splits if s not in task_data.splits]
        if missing:
            raise UserError(f"the data has no {', '.join(missing)} split (it has {', '.join(task_data.splits)}): "
                            "choose --splits among those")
        for name, split in task_data.splits.items():
            texts = split_texts(split)
            if name in config.splits:
                selection += texts
            else:
                held_out[name] = texts
    return selection, held_out


def split_texts(split: Any) -> list[str]:
    """Every text of a data split: sentences (and pairs), NER words joined by spaces, QA questions and contexts."""
    if "tokens" in split.column_names:
        return [" ".join(words) for words in split["tokens"]]
    columns = [c for c in ("text", "text_pair", "question", "context") if c in split.column_names]
    return [text for c in columns for text in split[c] if text]


def _embedding_rows(state: dict[str, torch.Tensor], src: Path) -> int:
    """Rows of the word embedding, with a clear error when the weights have none."""
    for key, tensor in state.items():
        if key.endswith("word_embeddings.weight"):
            return tensor.shape[0]
    raise UserError(f"{src}/model.safetensors has no word embedding: it is not an XLM-R checkpoint")

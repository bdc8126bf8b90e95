"""Post-processing: model outputs over encoded features into per-example predictions, beside the gold references."""
from __future__ import annotations

import datasets
import numpy as np

from .base import TaskData
from .features import label_map

MAX_ANSWER_TOKENS = 30


def references_of(data: TaskData, split: str) -> list:
    """The gold per example: class index, tag strings per word (NER), or the list of answer texts (QA)."""
    ds = data.split(split)
    if data.task == "sequence-classification":
        return ds["label"][:]
    if data.task == "token-classification":
        return [[data.label_names[t] for t in tags] for tags in ds["tags"][:]]
    return [answers["text"] for answers in ds["answers"][:]]


def decode(data: TaskData, split: str, features: datasets.Dataset, outputs: dict[str, np.ndarray],
           label_names: list[str] | None = None) -> list:
    """Per-example predictions from model outputs over `features`: class index (into the data's labels), tag
    strings per word (NER: each word's first sub-token), or answer text (QA: best span over all windows).

    label_names: the model's label order, when encode was given one.
    """
    if data.task == "sequence-classification":
        predicted = np.asarray(outputs["logits"]).argmax(-1)
        if label_names is None:
            return predicted.tolist()
        to_data = np.full(len(label_names), -1)  # -1: a class the model knows but the data does not use
        to_data[label_map(data.label_names, label_names)] = np.arange(len(data.label_names))
        return to_data[predicted].tolist()
    if data.task == "token-classification":
        return _decode_tokens(data.split(split), features, np.asarray(outputs["logits"]).argmax(-1),
                              label_names or data.label_names)
    return _decode_qa(data.split(split), features, np.asarray(outputs["start_logits"]),
                      np.asarray(outputs["end_logits"]))


def _decode_tokens(ds: datasets.Dataset, features: datasets.Dataset, predicted: np.ndarray,
                   label_names: list[str]) -> list[list[str]]:
    """Each word takes its first sub-token's tag; words cut off by truncation get "O"."""
    results = []
    for tokens, words, row in zip(ds["tokens"][:], features["word_ids"][:], predicted, strict=False):
        tags = ["O"] * len(tokens)
        for j, w in reversed(list(enumerate(words))):
            if w >= 0:
                tags[w] = label_names[row[j]]
        results.append(tags)
    return results


def _decode_qa(ds: datasets.Dataset, features: datasets.Dataset, start_logits: np.ndarray,
               end_logits: np.ndarray) -> list[str]:
    """The highest-scoring valid span (in context, start <= end, at most MAX_ANSWER_TOKENS) of each example."""
    contexts = ds["context"][:]
    best: list[tuple[float, str]] = [(-np.inf, "")] * len(ds)
    for i, (example, offsets) in enumerate(zip(features["example_index"][:], features["offset_mapping"][:],
                                               strict=True)):
        s, e, score = best_span(start_logits[i], end_logits[i], np.asarray([o is not None for o in offsets]))
        if score > best[example][0]:
            # XLM-R's offsets of a word-initial piece include the space before it
            best[example] = (score, contexts[example][offsets[s][0]:offsets[e][1]].strip())
    return [text for _, text in best]


def best_span(start: np.ndarray, end: np.ndarray, in_context: np.ndarray) -> tuple[int, int, float]:
    """The answer span (s, e) maximising start[s] + end[e] over context tokens with s <= e < s + MAX_ANSWER_TOKENS;
    scores are logits or log-probabilities, one per token of the window (`in_context` is as long as the window)."""
    n = len(in_context)
    span = np.triu(np.ones((n, n), dtype=bool)) & ~np.triu(np.ones((n, n), dtype=bool), MAX_ANSWER_TOKENS)
    scores = np.where(span & in_context[:, None] & in_context[None, :], start[:n, None] + end[None, :n], -np.inf)
    s, e = np.unravel_index(np.argmax(scores), scores.shape)
    return int(s), int(e), float(scores[s, e])

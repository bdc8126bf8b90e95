"""Task metrics, overall and per language: accuracy and macro-F1, entity-level F1 (as seqeval computes it),
SQuAD-v1 exact match and F1. Every score is a fraction in 0..1."""
from __future__ import annotations

import re
import string
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from .directory import check_task

PUNCTUATION = frozenset(string.punctuation)
MAIN_METRIC = {"sequence-classification": "macro_f1", "token-classification": "f1", "question-answering": "f1"}


def compute_metrics(task: str, predictions: Sequence, references: Sequence, languages: Sequence[str] | None = None,
                    label_names: Sequence[str] | None = None) -> dict[str, Any]:
    """{"overall": {...}, "per_language": {lang: {...}}}; `label_names` turns NER tag indices into tags."""
    check_task(task)
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if languages is not None and len(languages) != len(references):
        raise ValueError(f"{len(languages)} languages for {len(references)} references")
    if task == "token-classification" and label_names is not None:
        predictions, references = ([[t if isinstance(t, str) else label_names[t] for t in seq] for seq in seqs]
                                   for seqs in (predictions, references))
    score = SCORES[task]
    groups = defaultdict(list)
    for i, language in enumerate(languages if languages is not None else []):
        groups[language].append(i)
    return {"overall": score(predictions, references),
            "per_language": {language: score([predictions[i] for i in indices], [references[i] for i in indices])
                             for language, indices in sorted(groups.items())}}


def classification_scores(predictions: Sequence, references: Sequence) -> dict[str, float]:
    """Accuracy and macro-F1 over the labels seen in references or predictions (sklearn's average="macro")."""
    predictions, references = np.asarray(predictions), np.asarray(references)
    f1s = []
    for label in np.union1d(predictions, references):
        tp = np.sum((predictions == label) & (references == label))
        # F1 = 2TP / (2TP + FP + FN); both counts below include TP once each.
        f1s.append(2 * tp / (np.sum(predictions == label) + np.sum(references == label)))
    return {"accuracy": float(np.mean(predictions == references)) if len(references) else 0.0,
            "macro_f1": float(np.mean(f1s)) if f1s else 0.0, "examples": len(references)}


def entities(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """(type, first, last) spans of a tag sequence in IOB2, IOB1, IOBES, BILOU or bare types (IO).

    B- starts an entity; I-, E- and L- continue one of the same type (or start one, as in seqeval's default mode);
    E- and L- end it; S- and U- are one-word entities; a tag without a prefix is I- of that type.
    """
    spans, start, kind = set(), None, None
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, tag_kind = (tag[0], tag[2:]) if tag[1:2] == "-" else ("O", "") if tag == "O" else ("I", tag)
        if start is not None and (prefix in ("B", "S", "U", "O") or tag_kind != kind):
            spans.add((kind, start, i - 1))
            start = None
        if prefix in ("S", "U"):
            spans.add((tag_kind, i, i))
        elif prefix in ("B", "I", "E", "L") and start is None:
            start, kind = i, tag_kind
        if prefix in ("E", "L") and start is not None:
            spans.add((kind, start, i))
            start = None
    return spans


def entity_scores(predictions: Sequence[Sequence[str]], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Micro precision, recall and F1 over exact entity spans (seqeval's default mode)."""
    found = correct = gold = 0
    for i, (predicted, reference) in enumerate(zip(predictions, references, strict=False)):
        if len(predicted) != len(reference):
            raise ValueError(f"sentence {i}: {len(predicted)} predicted tags for {len(reference)} words")
        p, r = entities(predicted), entities(reference)
        found, gold, correct = found + len(p), gold + len(r), correct + len(p & r)
    precision = correct / found if found else 0.0
    recall = correct / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "examples": len(references)}


def normalize_answer(text: str) -> str:
    """SQuAD-v1 normalisation: lowercase, no punctuation, no English articles, single spaces."""
    text = "".join(c for c in text.lower() if c not in PUNCTUATION)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def _f1(prediction: str, gold: str) -> float:
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(gold).split()
    same = sum((Counter(predicted) & Counter(expected)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(expected)
    return 2 * precision * recall / (precision + recall)


def qa_scores(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """SQuAD-v1 exact match and token F1, each the max over an example's gold answers, averaged."""
    exact = [max((normalize_answer(p) == normalize_answer(g) for g in golds), default=False)
             for p, golds in zip(predictions, references, strict=False)]
    f1 = [max((_f1(p, g) for g in golds), default=0.0)
          for p, golds in zip(predictions, references, strict=False)]
    return {"exact_match": float(np.mean(exact)) if exact else 0.0, "f1": float(np.mean(f1)) if f1 else 0.0,
            "examples": len(references)}


SCORES = {"sequence-classification": classification_scores, "token-classification": entity_scores,
          "question-answering": qa_scores}  # each task's scorer of one group of examples

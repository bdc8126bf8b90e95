"""Model features: label names and indices, tokenisation for the three tasks, and the padding collator."""
from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import datasets
import numpy as np
from transformers import DataCollatorForTokenClassification, DataCollatorWithPadding

from ..directory import check_task, label_fix, same_labels
from ..errors import UserError
from .base import TaskData, mapped, schema

MAX_LENGTH = 512  # XLM-R's position table holds 512 tokens after the padding offset
MODEL_INPUTS = ("input_ids", "attention_mask", "labels", "start_positions", "end_positions")


def label_names(task: str, splits: Mapping[str, datasets.Dataset]) -> list[str]:
    """Sorted train labels (numerically when all are numbers); NER tags with "O" first; [] for QA.

    Evaluation-only data (no train split) takes its labels from all splits; otherwise dev/test labels must be known.
    """
    if task == "question-answering":
        return []
    if task == "sequence-classification":
        found = {split: set(ds["label"][:]) for split, ds in splits.items()}
    else:
        found = {split: {t for tags in ds["tags"][:] for t in tags} for split, ds in splits.items()}
    known = found["train"] if "train" in found else set().union(*found.values())
    for split, labels in found.items():
        unseen = labels - known
        if unseen:
            raise UserError(f"labels {', '.join(sorted(unseen))} of the {split} split never occur in train: "
                            "fix the labels or add training examples for them")
    if task == "token-classification":
        return ["O", *sorted(known - {"O"}, key=lambda t: (t[2:], t[:2]) if t[1:2] == "-" else (t, ""))]
    numeric = all(re.fullmatch(r"-?\d+", label) for label in known)
    return sorted(known, key=int) if numeric else sorted(known)


def index_labels(task: str, ds: datasets.Dataset, names: list[str]) -> datasets.Dataset:
    """A split with its label strings replaced by their index into names."""
    if task == "question-answering":
        return ds
    index = {name: i for i, name in enumerate(names)}
    if task == "sequence-classification":
        column, convert = "label", index.__getitem__
    else:
        column, convert = "tags", lambda tags: [index[t] for t in tags]
    return mapped(ds, lambda values: {column: [convert(v) for v in values]}, input_columns=column,
                  features=schema(task, "int64", "text_pair" in ds.column_names))


def encode(data: TaskData, split: str, tokenizer: Any, max_length: int = 128, stride: int = 32,
           label_names: list[str] | None = None) -> datasets.Dataset:
    """Tokenise a split into model features, plus `length` (for length-grouped batches) and what decode needs.

    label_names: the model's label order, when it differs from the data's.
    """
    if not 0 < max_length <= MAX_LENGTH:
        raise UserError(f"max_length {max_length} is out of range: XLM-R takes at most {MAX_LENGTH} tokens")
    ds = data.split(split)
    remap = label_map(data.label_names, label_names)
    truncated = 0

    def tokenise(examples: Mapping, indices: list[int]) -> dict:
        nonlocal truncated
        if data.task == "sequence-classification":
            columns, cut = _encode_classification(examples, tokenizer, max_length, remap)
        elif data.task == "token-classification":
            columns, cut = _encode_tokens(examples, tokenizer, max_length, remap)
        else:
            columns, cut = _encode_qa(examples, indices, tokenizer, max_length, stride)
        truncated += cut
        columns["length"] = [len(ids) for ids in columns["input_ids"]]
        return columns

    features = mapped(ds, tokenise, with_indices=True, remove_columns=ds.column_names)
    if truncated:
        warnings.warn(f"{truncated} of {len(ds)} {split} examples are longer than {max_length} tokens and were "
                      "truncated: raise max_length to keep them whole", stacklevel=2)
    return features


def label_map(data_labels: list[str], model_labels: list[str] | None) -> np.ndarray:
    """Index map from the data's label order to the model's; refuses labels the model lacks."""
    if model_labels is None or same_labels(data_labels, model_labels):
        return np.arange(len(data_labels))
    missing = sorted(set(data_labels) - set(model_labels))
    if missing:
        raise UserError(f"the data has labels {', '.join(missing)} that the model does not know "
                        f"({', '.join(model_labels)}): {label_fix(model_labels)}")
    return np.asarray([list(model_labels).index(name) for name in data_labels], dtype=np.int64)


def _truncated(enc: Any) -> int:
    """How many inputs the fast tokenizer cut at max_length (their cut-off tokens land in `overflowing`)."""
    return sum(bool(e.overflowing) for e in enc.encodings)


def _encode_classification(examples: Mapping, tokenizer: Any, max_length: int, remap: np.ndarray) -> tuple[dict, int]:
    enc = tokenizer(examples["text"], examples.get("text_pair"), truncation=True, max_length=max_length)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
            "labels": remap[np.asarray(examples["label"], dtype=np.int64)].tolist()}, _truncated(enc)


def _encode_tokens(examples: Mapping, tokenizer: Any, max_length: int, remap: np.ndarray) -> tuple[dict, int]:
    """NER features: each word's tag on its first sub-token, -100 (ignored by the loss) elsewhere."""
    enc = tokenizer(examples["tokens"], is_split_into_words=True, truncation=True, max_length=max_length)
    labels, word_ids = [], []
    for i, tags in enumerate(examples["tags"]):
        words = [-1 if w is None else w for w in enc.word_ids(i)]
        labels.append([int(remap[tags[w]]) if w >= 0 and (j == 0 or words[j - 1] != w) else -100
                       for j, w in enumerate(words)])
        word_ids.append(words)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels,
            "word_ids": word_ids}, _truncated(enc)


def _encode_qa(examples: Mapping, indices: list[int], tokenizer: Any, max_length: int,
               stride: int) -> tuple[dict, int]:
    """QA features: a long context becomes overlapping windows, each with its example's index and the character
    offsets of its context tokens (None elsewhere); the target is the answer's token span, or CLS (0) when the
    window does not hold the whole answer."""
    questions = [q.lstrip() for q in examples["question"]]
    longest = max(len(ids) for ids in tokenizer(questions, add_special_tokens=False)["input_ids"])
    room = max_length - longest - tokenizer.num_special_tokens_to_add(pair=True)
    if room <= stride:  # the tokenizer would panic instead of raising
        raise UserError(f"max_length {max_length} leaves {room} context tokens beside the longest question "
                        f"({longest} tokens), not more than stride {stride}: raise max_length or lower stride")
    enc = tokenizer(questions, examples["context"], truncation="only_second", max_length=max_length, stride=stride,
                    return_overflowing_tokens=True, return_offsets_mapping=True)
    columns = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "start_positions": [],
               "end_positions": [], "offset_mapping": [],
               "example_index": [indices[i] for i in enc["overflow_to_sample_mapping"]]}
    for i, example in enumerate(enc["overflow_to_sample_mapping"]):
        offsets = [list(o) if s == 1 else None
                   for o, s in zip(enc["offset_mapping"][i], enc.sequence_ids(i), strict=True)]
        context = [j for j, o in enumerate(offsets) if o is not None]
        answers = examples["answers"][example]
        start = end = 0
        if answers["text"] and context:
            first = answers["answer_start"][0]
            last = first + len(answers["text"][0])
            if offsets[context[0]][0] <= first and offsets[context[-1]][1] >= last:
                inside = [j for j in context if offsets[j][0] < last and offsets[j][1] > first]
                start, end = inside[0], inside[-1]
        columns["start_positions"].append(start)
        columns["end_positions"].append(end)
        columns["offset_mapping"].append(offsets)
    return columns, 0


class _Collator:
    """Pads a batch after dropping the columns the model cannot take (bookkeeping kept for decode, `length`)."""

    def __init__(self, pad: Callable[[list[dict]], dict]) -> None:
        self.pad = pad

    def __call__(self, features: list[dict]) -> dict:
        return self.pad([{k: v for k, v in f.items() if k in MODEL_INPUTS} for f in features])


def collator(task: str, tokenizer: Any, pad_to_multiple_of: int | None = None) -> Callable[[list[dict]], dict]:
    """Dynamic padding for a task's features (NER labels padded with -100)."""
    check_task(task)
    pad = (DataCollatorForTokenClassification if task == "token-classification" else DataCollatorWithPadding)
    return _Collator(pad(tokenizer, pad_to_multiple_of=pad_to_multiple_of))

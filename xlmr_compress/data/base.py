"""What every data module shares: the data's configuration, the loaded TaskData, split names, quiet `datasets` calls."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import datasets
from datasets.fingerprint import generate_random_fingerprint

from ..errors import UserError
from ..options import option

Task = Literal["sequence-classification", "token-classification", "question-answering"]
SPLITS = {"train": "train", "dev": "validation", "val": "validation", "valid": "validation",
          "validation": "validation", "test": "test"}
SPLIT_ORDER = ("train", "validation", "test")
UNKNOWN_LANGUAGE = "und"


@dataclass
class DataConfig:
    """Where the data is and how to read it."""

    path: str = option(help="task data: a file, a directory (split files, one sub-directory per language, or a "
                            "save_to_disk folder), 'chatterbot' (the embedded multilingual default), or a `datasets` "
                            "name")
    task: Task | None = option(None, "task of the data (default: inferred from the files)")
    text_column: str = option("text", "column holding the text (CSV/TSV/JSONL/datasets)")
    text_pair_column: str | None = option(
        None, "column holding the second text of a sentence pair (e.g. NLI hypothesis)")
    label_column: str = option("label", "column holding the label")
    language_column: str | None = option("language", "column holding the language code (per-language metrics)")
    languages: list[str] | None = option(
        None, "keep only these languages (sub-directory names or language-column values)")
    max_per_split: int | None = option(None, "keep at most N examples per split (seeded, stratified by language)")
    dataset_config: str | None = option(None, "configuration name of a `datasets` data set")
    seed: int = option(0, "random seed of the --max-per-split subsample and of the chatterbot split")


@dataclass
class TaskData:
    """A task's examples per split, with the label names the integer labels index."""

    task: Task
    label_names: list[str]  # classes, or NER tags ("O" first, any scheme) for NER; [] for QA
    splits: datasets.DatasetDict  # keys among "train", "validation", "test"
    _fingerprint: str | None = field(default=None, init=False, repr=False, compare=False)

    def fingerprint(self) -> str:
        """A hash of the task, the labels and every example: what a resumed run must find unchanged."""
        if self._fingerprint is None:
            digest = hashlib.sha256(json.dumps([self.task, self.label_names]).encode())
            for name in sorted(self.splits):
                digest.update(name.encode())
                for batch in self.splits[name].iter(batch_size=4096):
                    digest.update(json.dumps(batch, ensure_ascii=False, sort_keys=True, default=str).encode())
            self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint

    def languages(self, split: str) -> list[str]:
        """The sorted languages present in a split."""
        # `ds[name][:]` is a list; iterating datasets' lazy Column object goes row by row (seconds on 20k rows)
        return sorted(set(self.split(split)["language"][:]))

    def split(self, name: str) -> datasets.Dataset:
        """One split, with a clear error when it is absent."""
        if name not in self.splits:
            raise UserError(f"the data has no {name!r} split (it has {', '.join(self.splits)}): "
                            f"add a {name} file or choose another split")
        return self.splits[name]


@contextmanager
def quiet() -> Iterator[None]:
    """Hide `datasets` progress bars over our own bookkeeping (reads, maps, filters); a user's
    HF_DATASETS_DISABLE_PROGRESS_BARS setting wins."""
    if datasets.config.HF_DATASETS_DISABLE_PROGRESS_BARS is not None or datasets.are_progress_bars_disabled():
        yield
        return
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        datasets.enable_progress_bars()


def schema(task: str, label: str, pair: bool) -> datasets.Features:
    """The columns of a task's split, labels typed `label`: "string" as read, "int64" once indexed into label_names."""
    string, labels = datasets.Value("string"), datasets.Value(label)
    if task == "question-answering":
        return datasets.Features({"id": string, "question": string, "context": string, "language": string,
                                  "answers": {"text": datasets.List(string),
                                              "answer_start": datasets.List(datasets.Value("int64"))}})
    if task == "token-classification":
        return datasets.Features({"tokens": datasets.List(string), "tags": datasets.List(labels), "language": string})
    return datasets.Features({"text": string, **({"text_pair": string} if pair else {}), "label": labels,
                              "language": string})


def mapped(ds: datasets.Dataset, function: Callable[..., dict], **kwargs: Any) -> datasets.Dataset:
    """`ds.map` in batches, in memory and never answered from the cache: our functions count and check as they go."""
    with quiet():
        return ds.map(function, batched=True, keep_in_memory=True, new_fingerprint=generate_random_fingerprint(),
                      **kwargs)

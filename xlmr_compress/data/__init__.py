"""Task data on `datasets`: readers for files, directories, registered sources and hub names (readers), label
indices, tokenisation and padding (features), outputs back into predictions (decode); load_data ties them up."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from datasets.fingerprint import generate_random_fingerprint

from ..errors import UserError
from ..options import check_choices
from .base import SPLIT_ORDER, UNKNOWN_LANGUAGE, DataConfig, TaskData, quiet
from .decode import MAX_ANSWER_TOKENS, decode, references_of
from .features import MAX_LENGTH, collator, encode, index_labels, label_names
from .readers import SOURCES, Splits, read

__all__ = ["MAX_ANSWER_TOKENS", "MAX_LENGTH", "SOURCES", "UNKNOWN_LANGUAGE", "DataConfig", "TaskData", "collator",
           "decode", "encode", "load_data", "references_of", "subsample"]


def load_data(config: DataConfig | str | Path, **overrides: Any) -> TaskData:
    """Read a data set into TaskData: examples per split with integer labels and a language per example."""
    cfg = replace(DataConfig(path=str(config)) if isinstance(config, (str, Path)) else config, **overrides)
    check_choices(cfg)
    task, splits = read(cfg)
    if cfg.task is not None and cfg.task != task:
        raise UserError(f"{cfg.path} holds {task} data but the task is {cfg.task}: drop --task or pick other data")
    splits = _keep_languages(splits, cfg.languages, cfg.path)
    names = label_names(task, splits)
    return TaskData(task, names, datasets.DatasetDict({
        split: subsample(index_labels(task, splits[split], names), cfg.max_per_split, cfg.seed)
        for split in SPLIT_ORDER if split in splits
    }))


def _keep_languages(splits: Splits, languages: list[str] | None, where: str) -> Splits:
    """Keep only the wanted languages; drop splits left empty; refuse a filter that matches nothing."""
    if languages is not None:
        present = sorted({language for ds in splits.values() for language in ds["language"][:]})
        wanted = set(languages)
        with quiet():
            splits = {split: ds.filter(lambda batch: [language in wanted for language in batch], batched=True,
                                       input_columns="language", keep_in_memory=True,
                                       new_fingerprint=generate_random_fingerprint())
                      for split, ds in splits.items()}
        splits = {split: ds for split, ds in splits.items() if len(ds)}
        if not splits:
            raise UserError(f"no example of {where} is in languages {', '.join(languages)}: "
                            f"the languages present are {', '.join(present)}")
    for split, ds in splits.items():
        if not len(ds):
            raise UserError(f"the {split} split of {where} is empty: add examples or remove it")
    return splits


def subsample(ds: datasets.Dataset, n: int | None, seed: int) -> datasets.Dataset:
    """A seeded subsample of n examples that keeps each language's share; original order kept."""
    if n is None or len(ds) <= n:
        return ds
    rng = np.random.default_rng(seed)
    languages = np.asarray(ds["language"][:])
    rank = np.empty(len(ds))
    for language in np.unique(languages):
        members = np.flatnonzero(languages == language)
        rank[members] = (rng.permutation(len(members)) + rng.random()) / len(members)
    return ds.select(np.sort(np.argsort(rank, kind="stable")[:n]))

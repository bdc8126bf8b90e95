"""Noisy copies of the train texts for the teacher to label, so that a student has more to imitate than a small train
set holds (the data augmentation of TinyBERT, Jiao et al. 2020, and of Tang et al. 2019).

Each copy of a text keeps its first and last special tokens and changes the pieces between them:
- with probability `SPLICE`, its second part is replaced by the second part of another train text (cut at a random
  point between a third and two thirds of each), a new text whose label only the teacher can tell;
- then every piece is dropped with probability `DROP`, or replaced with probability `REPLACE` by a piece drawn from
  all train pieces (so replacements follow the train set's own languages and scripts).

It works on token ids, so a language without spaces (Chinese, Japanese, Thai) is noised like any other. The copies
carry no gold label (-100): only the teacher's outputs teach them, which is why they need no label to stay true.
"""
from __future__ import annotations

import datasets
import numpy as np

SPLICE = 0.5
DROP = 0.1
REPLACE = 0.1


def noisy_pieces(body: np.ndarray, other: np.ndarray, pool: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One noisy copy of the pieces `body` (no special tokens), spliced with `other` and replaced from `pool`."""
    if rng.random() < SPLICE and len(body) >= 3 and len(other) >= 3:
        body = np.concatenate([body[:rng.integers(len(body) // 3, 2 * len(body) // 3 + 1)],
                               other[rng.integers(len(other) // 3, 2 * len(other) // 3 + 1):]])
    u = rng.random(len(body))
    replaced = np.where(u < DROP + REPLACE, pool[rng.integers(0, len(pool), len(body))], body)
    kept = replaced[u >= DROP]
    return kept if len(kept) else body[:1]


def ignored_labels(input_ids: list[list[int]], token_level: bool) -> list:
    """Labels that every loss on gold labels skips (-100), per text or per token, for text only the teacher labels."""
    return [[-100] * len(ids) for ids in input_ids] if token_level else [-100] * len(input_ids)


def augment(features: datasets.Dataset, copies: int, max_length: int, seed: int = 0) -> datasets.Dataset:
    """`copies` noisy copies of every feature row (classification or NER features from `data.encode`), labels -100."""
    columns = features.to_dict()
    ids = [np.asarray(row, dtype=np.int64) for row in columns["input_ids"]]
    bodies = [row[1:-1] for row in ids]
    pool = np.concatenate([b for b in bodies if len(b)] or [np.zeros(1, np.int64)])
    rng = np.random.default_rng(seed)
    sources, rows = [], []
    for _ in range(copies):
        for i, row in enumerate(ids):
            body = noisy_pieces(bodies[i], bodies[rng.integers(len(bodies))], pool, rng)[:max_length - 2]
            sources.append(i)
            rows.append([int(row[0]), *body.tolist(), int(row[-1])])
    new = {}
    for name, values in columns.items():
        if name == "input_ids":
            new[name] = rows
        elif name == "attention_mask":
            new[name] = [[1] * len(r) for r in rows]
        elif name == "labels":
            new[name] = ignored_labels(rows, token_level=isinstance(features.features[name], datasets.Sequence))
        elif name == "length":
            new[name] = [len(r) for r in rows]
        elif name == "word_ids":
            new[name] = [[-1] * len(r) for r in rows]
        else:
            new[name] = [values[i] for i in sources]
    return datasets.Dataset.from_dict(new, features=features.features)

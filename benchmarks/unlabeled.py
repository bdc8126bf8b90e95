"""Unlabelled multilingual text for distillation (`distill --unlabeled`), drawn from the other shared sets.

    python -m benchmarks.unlabeled --exclude sib200 --lines 20000 --out /work/cache/unlabeled-sib200.txt
    python -m benchmarks.unlabeled --exclude umsab_sentiment --lines 20000 --out /work/cache/unlabeled-umsab.txt

The student of a small train set imitates the teacher on few distinct texts: SIB-200 has 701 sentences, each in 31
languages. Text the teacher labels adds more to imitate. This draws it from the train splits of the shared sets
other than the one being compressed (SIB-200 sentences, UMSAB tweets, UNER sentences) and from XQuAD's Wikipedia
paragraphs cut into sentences, evenly from each source, seeded. The file lives outside the repository, as the data
does.
"""
from __future__ import annotations

import argparse
import random
import re
from pathlib import Path

from benchmarks import SHARED
from xlmr_compress import DataConfig, load_data

SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+|(?<=[。！？])")


def texts_of(name: str) -> list[str]:
    """Distinct texts of one shared set: train-split texts, or XQuAD's paragraphs as sentences."""
    data = load_data(DataConfig(str(SHARED / "data" / name)))
    if data.task == "question-answering":
        split = next(iter(data.splits.values()))
        paragraphs = dict.fromkeys(split["context"])
        texts = [s.strip() for p in paragraphs for s in SENTENCE_END.split(p)]
    else:
        train = data.splits["train"]
        texts = train["text"] if "text" in train.column_names else [" ".join(t) for t in train["tokens"]]
    return [t for t in dict.fromkeys(texts) if len(t) >= 20]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sources", nargs="+", default=["sib200", "umsab_sentiment", "uner", "xquad"],
                    help="shared data sets to draw from")
    ap.add_argument("--exclude", default=None, help="the set being compressed, never drawn from")
    ap.add_argument("--lines", type=int, default=20000, help="texts written, split evenly over the sources")
    ap.add_argument("--out", required=True, help="text file written, one text a line")
    a = ap.parse_args()
    sources = [s for s in a.sources if s != a.exclude]
    rng = random.Random(0)
    lines: list[str] = []
    for i, name in enumerate(sources):
        texts = texts_of(name)
        want = (a.lines - len(lines)) // (len(sources) - i)
        lines += rng.sample(texts, min(want, len(texts)))
        print(f"{name}: {min(want, len(texts))} of {len(texts)} texts")
    rng.shuffle(lines)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text("".join(" ".join(t.split()) + "\n" for t in lines), encoding="utf-8")
    print(f"wrote {len(lines)} texts to {a.out}")


if __name__ == "__main__":
    main()

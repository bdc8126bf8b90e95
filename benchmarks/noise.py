"""How much of a per-language bar is the test split's noise: a paired bootstrap of the share of the teacher's metric
that a model keeps in each language, and the same count for a model exactly as good as the teacher.

    python -m benchmarks.noise --teacher runs/teacher-sib200 --model runs/compress-sib200/best \
        --data ../shared/data/sib200 --key noise-sib200

Per language, the test examples are drawn again with replacement, the same draw for both models (`--rounds` times):
the share's 90% interval and how often it falls below the floor. The null model answers each example with this
model's or the teacher's prediction, a coin flip each: it is as good as the teacher on average and disagrees with it
where this model does. How many languages it leaves below the floor is what the bar costs by chance alone. For
classification, the examples where the two disagree are split by which one is right: an even split is noise, a
lopsided one a real loss. `--split validation` shows what the search saw.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import NamedTuple

import numpy as np

from benchmarks import SHARED
from benchmarks.results import update_section
from xlmr_compress import DataConfig, load_data
from xlmr_compress.data import references_of
from xlmr_compress.metrics import MAIN_METRIC, SCORES
from xlmr_compress.runtime import predictions_of


class Row(NamedTuple):
    """One language's line of the table."""

    language: str
    examples: int
    teacher: float
    model: float
    share: float
    low: float
    high: float
    p_below: float
    null_p_below: float
    disagreement: float
    right_only: str


def ratio(own: float, base: float) -> float:
    """A model's metric over the teacher's (1 where the teacher scores 0)."""
    return own / base if base > 0 else 1.0


def share(score, metric: str, model: list, teacher: list, gold: list) -> float:
    """The model's metric over the teacher's on one group of examples."""
    return ratio(score(model, gold)[metric], score(teacher, gold)[metric])


def mixed(first: list, second: list, pick: np.ndarray) -> list:
    """Per example, the first list's prediction where pick is true, else the second's."""
    return [x if p else y for x, y, p in zip(first, second, pick, strict=True)]


def who_is_right(model: list, teacher: list, gold: list) -> tuple[int, int]:
    """Examples only the teacher gets right, and examples only the model gets right."""
    teacher_only = sum(t == g != m for m, t, g in zip(model, teacher, gold, strict=True))
    model_only = sum(m == g != t for m, t, g in zip(model, teacher, gold, strict=True))
    return teacher_only, model_only


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", required=True, help="the teacher's model directory")
    ap.add_argument("--model", required=True, help="the compressed model's directory (compress writes OUT/best)")
    ap.add_argument("--data", default=str(SHARED / "data" / "sib200"), help="task data with a test split")
    ap.add_argument("--languages", nargs="+", help="keep only these languages (default: all)")
    ap.add_argument("--floor", type=float, default=0.95, help="the per-language bar, a share of the teacher's metric")
    ap.add_argument("--rounds", type=int, default=1000, help="bootstrap draws and null-model flips")
    ap.add_argument("--split", default="test", help="the split scored (validation: what the search selected on)")
    ap.add_argument("--key", default="noise-sib200", help="RESULTS.md section key")
    a = ap.parse_args()
    data = load_data(DataConfig(a.data, languages=a.languages))
    metric, score = MAIN_METRIC[data.task], SCORES[data.task]
    gold, languages = references_of(data, a.split), data.splits[a.split]["language"][:]
    teacher, model = (predictions_of(m, data, a.split) for m in (a.teacher, a.model))
    classes = data.task == "sequence-classification"
    rng = np.random.default_rng(0)
    rows, null_below = [], np.zeros(a.rounds, dtype=int)
    for lang in sorted(set(languages)):
        idx = [i for i, g in enumerate(languages) if g == lang]
        t, m, g = ([x[i] for i in idx] for x in (teacher, model, gold))
        draws = rng.integers(0, len(idx), size=(a.rounds, len(idx)))
        boot = np.array([share(score, metric, *([x[i] for i in d] for x in (m, t, g))) for d in draws])
        flips = rng.random((a.rounds, len(idx))) < 0.5
        null = np.array([share(score, metric, mixed(m, t, f), mixed(t, m, f), g) for f in flips])
        null_below += null < a.floor
        base, own = (score(x, g)[metric] for x in (t, m))
        rows.append(Row(lang, len(idx), base, own, ratio(own, base), *np.quantile(boot, [0.05, 0.95]),
                     float(np.mean(boot < a.floor)), float(np.mean(null < a.floor)),
                     sum(x != y for x, y in zip(m, t, strict=True)) / len(idx),
                     "{} / {}".format(*who_is_right(m, t, g)) if classes else "n/a"))
    lines = [f"| language | examples | teacher {metric} | model {metric} | share of the teacher's | 90% interval | "
             f"P(share < {a.floor:.0%}) | null model: P(share < {a.floor:.0%}) | disagreement with the teacher | "
             "right only: teacher / model |",
             "|---|" + "---|" * 9]
    lines += [f"| {lang} | {n} | {t:.4f} | {m:.4f} | {s:.1%} | {lo:.1%} – {hi:.1%} | {p:.2f} | {q:.2f} | {d:.1%} "
              f"| {w} |" for lang, n, t, m, s, lo, hi, p, q, d, w in rows]
    below = sum(r.share < a.floor for r in rows)
    lo, hi = np.quantile(null_below, [0.05, 0.95])
    body = (f"Teacher `{a.teacher}`, model `{a.model}`, `{a.data}` {a.split} split ({len(gold)} examples, {len(rows)} "
            f"languages), {a.rounds} paired bootstrap draws per language (seeded).\n\n"
            f"- Languages below {a.floor:.0%} of the teacher on the real split: **{below} of {len(rows)}**.\n"
            f"- A null model as good as the teacher, disagreeing with it where this model does (each example's "
            f"prediction from either, a coin flip), leaves **{null_below.mean():.1f}** languages below "
            f"{a.floor:.0%} on average (90% of draws: {lo:.0f} – {hi:.0f}); it clears every language in "
            f"{np.mean(null_below == 0):.0%} of draws.\n\n" + "\n".join(lines))
    update_section(a.key, f"{a.split.capitalize()} noise of the per-language bar: {Path(a.data).name}", body)
    print(body)


if __name__ == "__main__":
    main()

"""The report of a run: the accuracy-latency table (ratios and deltas against the baseline), latency per setting,
the metric per language, the measured ceilings, as Markdown and CSV, and the accuracy-latency Pareto plot."""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import directory

LATENCY_COLUMNS = ("variant", "backend", "precision", "setting", "p50_ms", "p90_ms", "p99_ms", "speedup",
                   "seq_per_s", "tokens_per_s", "peak_mib", "model_mib", "memory_ratio", "size_mib", "size_ratio",
                   "gflop_per_seq", "gflop_per_s", "ceiling_pct")
SUMMARY_COLUMNS = ("variant", "backend", "precision", "size_mib", "size_ratio", "p50_ms", "p99_ms", "speedup",
                   "seq_per_s", "model_mib", "memory_ratio", "gflop_per_seq", "ceiling_pct")
NOTES = (
    "Columns: p50/p90/p99 latency per batch; speedup = baseline p50 / p50; seq/s and tokens/s (real, unpadded "
    "tokens) over all timed rounds; peak_mib = peak resident memory of a fresh process that loads the variant and "
    "runs the largest batch (GPU: allocated device memory), model_mib = that peak minus the process before loading; "
    "size on disk counts weight files only; gflop_per_seq = forward FLOPs (2 x multiply-adds of every matmul, "
    "attention included, padding included) per sequence; ceiling_pct = achieved GFLOP/s over this machine's "
    "measured matmul ceiling of the variant's precision."
)


@dataclass
class BenchResult:
    """Rows per variant and setting, accuracy per variant, the measured ceilings; the table and plot built on them."""

    rows: list[dict]  # one per variant x setting, in setting order
    accuracy: dict[str, dict]  # variant -> runtime.evaluate() result (empty without data)
    ceilings: list[dict]  # device, threads, precision, gflop_per_s
    baseline: str
    metric: str | None  # main metric of the data's task
    task_summary: str = ""

    @property
    def primary(self) -> list[dict]:
        """The rows of the first setting (real lengths when data was given): the accuracy-latency table's rows."""
        first = self.rows[0]["setting"]
        return [r for r in self.rows if r["setting"] == first]

    def summary(self) -> list[dict]:
        """Accuracy-latency table: one row per variant at the primary setting, metrics and ratios to the baseline."""
        base = self.accuracy.get(self.baseline, {}).get("overall", {})
        table = []
        for r in self.primary:
            row = {k: r[k] for k in SUMMARY_COLUMNS if k in r}
            overall = self.accuracy.get(r["variant"], {}).get("overall", {})
            for name, value in overall.items():
                row[name] = value
            if self.metric in overall:
                row[f"{self.metric}_delta"] = overall[self.metric] - base[self.metric]
            table.append(row)
        return table

    def per_language(self) -> list[dict]:
        """The main metric per language (rows) and variant (columns)."""
        languages = sorted({lang for a in self.accuracy.values() for lang in a.get("per_language", {})})
        return [{"language": lang, **{v: a["per_language"].get(lang, {}).get(self.metric)
                                      for v, a in self.accuracy.items()}} for lang in languages]

    def markdown(self) -> str:
        """All tables as Markdown: accuracy-latency (if data), every setting, per language, the ceilings."""
        parts = []
        if self.accuracy:
            parts.append(f"Accuracy and latency at {self.rows[0]['setting']} ({self.task_summary}; ratios and "
                         f"deltas against `{self.baseline}`):\n\n" + markdown_table(self.summary()))
        parts.append("Latency, throughput, memory and FLOPs per setting:\n\n"
                     + markdown_table([{k: r[k] for k in LATENCY_COLUMNS} for r in self.rows]))
        if self.accuracy:
            parts.append(f"{self.metric} per language:\n\n" + markdown_table(self.per_language()))
        parts.append("Matmul ceilings measured in this run (best of the timed square matmuls):\n\n"
                     + markdown_table(self.ceilings))
        return "\n\n".join(parts) + "\n\n" + NOTES

    def write(self, out_dir: str | Path, overwrite: bool = False) -> Path:
        """results.md, CSV tables, results.json and (with accuracy) pareto.png, written atomically to out_dir."""
        with directory.atomic_output(out_dir, overwrite) as tmp:
            (tmp / "results.md").write_text(self.markdown())
            write_csv([{k: r[k] for k in LATENCY_COLUMNS} for r in self.rows], tmp / "latency.csv")
            if self.accuracy:
                write_csv(self.summary(), tmp / "accuracy_latency.csv")
                write_csv(self.per_language(), tmp / "per_language.csv")
                plot_pareto(self.summary(), self.metric, tmp / "pareto.png", self.rows[0]["setting"])
            (tmp / "results.json").write_text(json.dumps(
                {"baseline": self.baseline, "metric": self.metric, "rows": self.rows, "accuracy": self.accuracy,
                 "ceilings": self.ceilings}, indent=2, ensure_ascii=False, default=str) + "\n")
        return Path(out_dir).resolve()


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the (latency, metric) points that no other point beats (no slower and no worse), by latency."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front: list[int] = []
    for i in order:
        if not front or points[i][1] > points[front[-1]][1]:
            front.append(i)
    return front


def plot_pareto(rows: list[dict], metric: str, path: str | Path, setting: str = "") -> Path:
    """PNG: latency p50 on x, the metric on y, marker area proportional to size on disk, the frontier drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["p50_ms"] for r in rows]
    y = [r[metric] for r in rows]
    largest_size = max(r["size_mib"] for r in rows) or 1.0
    area = [30 + 1500 * r["size_mib"] / largest_size for r in rows]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    ax.scatter(x, y, s=area, alpha=0.5, edgecolors="black")
    for r, xi, yi in zip(rows, x, y, strict=True):
        ax.annotate(f"{r['variant']}\n{r['size_mib']:.0f} MiB", (xi, yi), textcoords="offset points", xytext=(6, 6),
                    fontsize=8)
    front = pareto_front(list(zip(x, y, strict=True)))
    ax.step([x[i] for i in front], [y[i] for i in front], where="post", color="tab:red", label="Pareto frontier")
    if max(x) > 10 * min(x):
        ax.set_xscale("log")
    ax.set_xlabel(f"latency p50 (ms per batch){', ' + setting if setting else ''}")
    ax.set_ylabel(metric)
    ax.set_title("accuracy against latency (marker area: size on disk)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def markdown_table(rows: list[dict]) -> str:
    """A Markdown table of dict rows (columns from the first row), numbers rounded for reading."""
    if not rows:
        return "(no rows)"
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(c, r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def _cell(column: str, value: Any) -> str:
    if value is None:
        return "–"
    if not isinstance(value, float):
        return str(value)
    if column.endswith(("speedup", "ratio")):
        return f"{value:.2f}x"
    if column.endswith("_delta"):
        return f"{value:+.4f}"
    if column.endswith(("_pct", "_mib", "_per_s")):
        return f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}"
    if column.endswith("_ms") or column.startswith("gflop"):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return f"{value:.4f}"


def write_csv(rows: list[dict], path: str | Path) -> Path:
    """Rows as CSV (columns from the first row), full precision."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)

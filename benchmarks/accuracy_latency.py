"""Accuracy against latency, size and memory for a set of variants on one data set: the table and the Pareto plot.

    python -m benchmarks.accuracy_latency TEACHER STUDENT PRUNED TRIMMED ONNX INT8 --data ../shared/data/sib200

The first directory is the baseline of every ratio. Each variant is evaluated on the test split (overall and per
language) and timed on batches drawn from the split's real lengths and at fixed shapes, variants interleaved; the
Markdown table goes to benchmarks/RESULTS.md, the plot to benchmarks/accuracy_latency.png, and all tables (CSV,
JSON) to --out.
"""
from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from benchmarks import SHARED
from benchmarks.latency import add_bench_flags, bench_config
from benchmarks.results import update_section
from xlmr_compress import DataConfig, load_data, run_bench

PLOT = Path(__file__).with_name("accuracy_latency.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", help="model directories (torch or ONNX); the first is the baseline")
    ap.add_argument("--data", default=str(SHARED / "data" / "sib200"), help="task data (default: SIB-200)")
    ap.add_argument("--max-per-split", type=int, help="subsample each split (stratified by language)")
    ap.add_argument("--out", default="runs/accuracy-latency", help="directory for the CSV/JSON tables and the plot")
    add_bench_flags(ap, batch_sizes=[1, 16], seq_lengths=[128])
    a = ap.parse_args()
    data = load_data(DataConfig(a.data, max_per_split=a.max_per_split))
    load = os.getloadavg()
    result = run_bench(a.models, bench_config(a), data)
    out = result.write(a.out, overwrite=True)
    body = (f"Data: `{a.data}`. Variants: " + ", ".join(f"`{m}`" for m in a.models) + ". Load average when the run "
            f"started: {load[0]:.1f} (1 min), {load[1]:.1f} (5 min) on a machine shared with other jobs: ratios "
            "within the run are what count.\n\n![accuracy against latency](accuracy_latency.png)\n\n"
            + result.markdown())
    print(body)
    if not a.quick:
        shutil.copy(out / "pareto.png", PLOT)
        update_section("accuracy-latency", "Accuracy against latency, size and memory", body)


if __name__ == "__main__":
    main()

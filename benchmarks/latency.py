"""Latency, throughput, peak memory and FLOPs of a set of variants over batch sizes, lengths and thread counts.

    python -m benchmarks.latency TEACHER STUDENT ONNX INT8 --batch-sizes 1 8 32 --seq-lengths 32 128 512

Fixed-shape, unpadded batches; variants interleaved round-robin after a warm-up; every figure also as a ratio to
the first directory. The Markdown tables go to benchmarks/RESULTS.md, CSV and JSON to --out.
"""
from __future__ import annotations

import argparse
import os

from benchmarks.results import update_section
from xlmr_compress.bench import BenchConfig, bench
from xlmr_compress.cli import BENCH_HELP, add_config_flags, config_from


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", help="model directories (torch or ONNX); the first is the baseline")
    ap.add_argument("--out", default="runs/latency", help="directory for the CSV and JSON tables")
    add_config_flags(ap, BenchConfig, help=BENCH_HELP)
    ap.set_defaults(batch_sizes=[1, 8, 32], seq_lengths=[32, 128, 512])
    a = ap.parse_args()
    load = os.getloadavg()
    result = bench(a.models, config_from(a, BenchConfig))
    result.write(a.out, overwrite=True)
    body = ("Variants: " + ", ".join(f"`{m}`" for m in a.models) + f". Load average when the run started: "
            f"{load[0]:.1f} (1 min), {load[1]:.1f} (5 min) on a machine shared with other jobs: ratios within the "
            "run are what count.\n\n" + result.markdown())
    print(body)
    if not a.quick:
        update_section("latency", "Latency, throughput and memory by shape", body)


if __name__ == "__main__":
    main()

"""Latency, throughput, peak memory and FLOPs of a set of variants over batch sizes, lengths and thread counts.

    python -m benchmarks.latency TEACHER STUDENT ONNX INT8 --batch-sizes 1 8 32 --seq-lengths 32 128 512

Fixed-shape, unpadded batches; variants interleaved round-robin after a warm-up; every figure also as a ratio to
the first directory. The Markdown tables go to benchmarks/RESULTS.md, CSV and JSON to --out.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any

from benchmarks.results import update_section
from xlmr_compress import BenchConfig, run_bench

FLAGS: dict[str, dict[str, Any]] = {  # the BenchConfig fields a study takes from its command line
    "devices": {"nargs": "+"},
    "threads": {"type": int, "nargs": "+"},
    "batch_sizes": {"type": int, "nargs": "+"},
    "seq_lengths": {"type": int, "nargs": "+"},
    "data_lengths": {"action": argparse.BooleanOptionalAction},
    "warmup": {"type": int},
    "repeats": {"type": int},
    "memory": {"action": argparse.BooleanOptionalAction},
    "cuda_graphs": {"action": argparse.BooleanOptionalAction},
    "baseline": {},
    "split": {},
    "quick": {"action": argparse.BooleanOptionalAction},
}


def add_bench_flags(parser: argparse.ArgumentParser, **defaults: Any) -> None:
    """One flag per FLAGS field, explained by BenchConfig's own help text, defaulting to the study's `defaults`."""
    config = BenchConfig(**defaults)
    for f in dataclasses.fields(BenchConfig):
        if f.name in FLAGS:
            parser.add_argument("--" + f.name.replace("_", "-"), default=getattr(config, f.name),
                                help=f.metadata["help"] + " (default: %(default)s)", **FLAGS[f.name])


def bench_config(args: argparse.Namespace) -> BenchConfig:
    """The BenchConfig of parsed FLAGS."""
    return BenchConfig(**{name: getattr(args, name) for name in FLAGS})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", help="model directories (torch or ONNX); the first is the baseline")
    ap.add_argument("--out", default="runs/latency", help="directory for the CSV and JSON tables")
    ap.add_argument("--key", default="latency", help="RESULTS.md section key, to keep runs on other devices apart")
    ap.add_argument("--title", default="Latency, throughput and memory by shape", help="RESULTS.md section title")
    add_bench_flags(ap, batch_sizes=[1, 8, 32], seq_lengths=[32, 128, 512])
    a = ap.parse_args()
    load = os.getloadavg()
    result = run_bench(a.models, bench_config(a))
    result.write(a.out, overwrite=True)
    body = ("Variants: " + ", ".join(f"`{m}`" for m in a.models) + f". Load average when the run started: "
            f"{load[0]:.1f} (1 min), {load[1]:.1f} (5 min) on a machine shared with other jobs: ratios within the "
            "run are what count.\n\n" + result.markdown())
    print(body)
    if not a.quick:
        update_section(a.key, a.title, body)


if __name__ == "__main__":
    main()

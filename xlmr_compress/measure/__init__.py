"""The measuring harness behind `xlmr-compress bench`: latency percentiles, throughput, peak memory, size on disk and
FLOPs against this machine's measured matmul ceiling, for any set of model directories (torch or ONNX), joined with
accuracy into one table and an accuracy-latency Pareto plot.

Variants are timed round-robin after a warm-up (timing.py), the first variant of each round rotating, so drift in a
shared machine's load hits all of them alike; every figure is also quoted as a ratio to a baseline variant of the
same run. `run_bench` returns the tables; the `bench` stage writes them to a directory.
"""
from __future__ import annotations

import time
from pathlib import Path

from .. import data as data_mod
from .. import directory
from ..configs import BenchConfig
from .report import BenchResult, markdown_table
from .run import run_bench
from .timing import percentiles_ms, time_round_robin

__all__ = ["BenchConfig", "BenchResult", "bench", "markdown_table", "percentiles_ms", "run_bench",
           "time_round_robin"]


def bench(src: str | Path | list[str | Path], out: str | Path | None = None, config: BenchConfig | None = None,
          data: data_mod.TaskData | data_mod.DataConfig | str | None = None) -> Path:
    """Benchmark one model directory or a list of them and write results.md, CSV tables, results.json and (with
    data) pareto.png to `out` atomically (default: a new bench-<time> directory here); print the tables."""
    config = config or BenchConfig()
    out = Path(out) if out is not None else Path(f"bench-{time.strftime('%Y%m%d-%H%M%S')}")
    directory.check_output(out, config.overwrite)  # before the long run, not after it
    result = run_bench(src, config, data)
    print(result.markdown(), flush=True)
    return result.write(out, config.overwrite)

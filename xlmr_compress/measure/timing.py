"""The one timer of the library and of `benchmarks/`: a warm-up, then interleaved round-robin rounds whose first
caller rotates, so drift in a shared machine's load hits every contender alike; on CUDA each call is timed between
events after a synchronisation."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..console import progress

PERCENTILES = (50, 90, 99)


def time_round_robin(calls: dict[str, Callable[[int], Any]], warmup: int, repeats: int,
                     device: str = "cpu") -> dict[str, np.ndarray]:
    """Seconds per call of each contender: warm-up, then `repeats` rounds calling each once, rotating the first.

    Each call gets its round number (warm-up rounds first), so a contender can run a different batch per round."""
    for call in calls.values():
        for r in range(warmup):
            call(r)
    names = list(calls)
    times = {n: np.empty(repeats) for n in names}
    for r in progress(range(repeats), desc="timed rounds", unit="round", leave=False):
        shift = r % len(names)
        for n in names[shift:] + names[:shift]:
            times[n][r] = timed(calls[n], warmup + r, device)
    return times


def timed(call: Callable[[int], Any], r: int, device: str = "cpu") -> float:
    """Seconds of one call; on CUDA between events after synchronising (the call's GPU work is all counted)."""
    if device.startswith("cuda"):
        with torch.cuda.device(device):
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            call(r)
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
    start_s = time.perf_counter()
    call(r)
    return time.perf_counter() - start_s


def percentiles_ms(seconds: np.ndarray, percentiles: tuple[int, ...] = PERCENTILES) -> dict[str, float]:
    """Latency percentiles in milliseconds of timed calls, keyed p50_ms, p90_ms, p99_ms."""
    return {f"p{p}_ms": float(np.percentile(seconds, p) * 1e3) for p in percentiles}

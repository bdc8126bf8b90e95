"""The memory probe: peak memory of a variant measured in a fresh child process (so one variant's allocations never
count against another's), resident memory on the CPU, allocated device memory on a GPU."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..runtime import Predictor

if TYPE_CHECKING:
    from .run import Setting

MIB = 2**20


def peak_memory(model_dir: str | Path, device: str, threads: int, batches: list[dict]) -> tuple[float, list[float]]:
    """(MiB before loading, peak MiB after each batch) of a fresh Python process that loads the variant and runs the
    batches in the given order (smallest first: the CPU figure is a high-water mark)."""
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "batches.npz"
        np.savez(inputs, **{f"{i}/{k}": v for i, b in enumerate(batches) for k, v in b.items()})
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                            os.environ.get("PYTHONPATH", "")])}
        code = "import sys; from xlmr_compress.measure.memory import _peak_memory_child as f; f(*sys.argv[1:])"
        proc = subprocess.run([sys.executable, "-c", code, str(model_dir), device, str(threads), str(inputs)],
                              capture_output=True, text=True, env=env, check=False)
    if proc.returncode:
        raise RuntimeError(f"the memory measurement of {model_dir} failed:\n{proc.stderr[-3000:]}")
    base, peaks = json.loads(proc.stdout.strip().splitlines()[-1])
    return base, peaks


def _peak_memory_child(model_dir: str, device: str, threads: str, inputs: str) -> None:
    """The child's side of peak_memory: prints [base, [peaks]] as the last line of its output."""
    import onnx  # noqa: F401  the runtimes and their libraries belong to the process's base, not to the variant
    import onnxruntime  # noqa: F401

    arrays = np.load(inputs)
    batches = [{k: arrays[f"{i}/{k}"] for k in ("input_ids", "attention_mask")} for i in range(len(arrays.files) // 2)]
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.init()
        free, total = torch.cuda.mem_get_info(device)
    base = (total - free) / MIB if cuda else _resident_mib("VmRSS")
    if not cuda:
        Path("/proc/self/clear_refs").write_text("5")  # restart the high-water mark from here (Linux >= 4.0)
    predictor = Predictor.load(model_dir, device=device, threads=int(threads))
    peaks = []
    for batch in batches:
        if cuda and predictor.backend == "torch":
            torch.cuda.reset_peak_memory_stats(device)
        predictor(batch)
        if cuda and predictor.backend == "torch":
            peaks.append(base + torch.cuda.max_memory_allocated(device) / MIB)
        elif cuda:  # ONNX Runtime's arena only grows: device memory in use is its high-water mark
            free, total = torch.cuda.mem_get_info(device)
            peaks.append((total - free) / MIB)
        else:
            peaks.append(_resident_mib("VmHWM"))
    print(json.dumps([base, peaks]))


def _resident_mib(field: str) -> float:
    """VmRSS (resident now) or VmHWM (high-water mark) of this process, in MiB."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE).group(1)) / 1024


def fill_memory(rows: list[dict], batches: dict[tuple[str, str], list[tuple[Setting, dict]]],
                dirs: dict[str, Path]) -> None:
    """Peak and variant memory of each row: one child process per variant and device (first thread count), run
    concurrently after all timing is done (a process's own peak does not depend on its neighbours)."""
    ordered = {key: sorted(entries, key=lambda e: e[1]["input_ids"].size) for key, entries in batches.items()}
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        results = {(name, device): pool.submit(peak_memory, dirs[name], device, entries[0][0].threads,
                                               [b for _, b in entries])
                   for (name, device), entries in ordered.items()}
    for (name, device), entries in ordered.items():
        base, peaks = results[name, device].result()
        peak_of = {(s.batch_size, s.seq_length or "data"): peak
                   for (s, _), peak in zip(entries, peaks, strict=True)}
        for row in rows:  # every thread count gets the figure measured at the first
            peak = peak_of.get((row["batch"], row["tokens"]))
            if row["variant"] == name and row["device"] == device and peak is not None:
                row["peak_mib"], row["model_mib"] = peak, peak - base

"""Write one section of benchmarks/RESULTS.md, headed by the command and the machine that produced it."""
from __future__ import annotations

import os
import platform
import re
import shlex
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
HEADER = "# Benchmark results\n\nEvery section below is written by a script in `benchmarks/`; do not edit by hand.\n"


def machine() -> str:
    """One line describing where the figures were measured."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                present = set(line.split(":", 1)[1].split())
                flags = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in present]
                break
    except OSError:
        pass
    desc = (f"{cpu} ({' '.join(flags) or 'no AVX2'}), {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")
    if torch.cuda.is_available():
        desc += f", GPU {torch.cuda.get_device_name()} (CUDA {torch.version.cuda})"
    return desc


def update_section(key: str, title: str, body: str, command: str | None = None) -> Path:
    """Replace (or append) the section `key` of RESULTS.md with `body`."""
    command = command or "python " + " ".join(shlex.quote(a) for a in sys.argv)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    section = (
        f"<!-- section:{key} -->\n## {title}\n\n"
        f"Command: `{command}`  \nMachine: {machine()}  \nDate: {stamp}\n\n{body.rstrip()}\n"
        f"<!-- end:{key} -->\n"
    )
    text = RESULTS.read_text() if RESULTS.exists() else HEADER
    pattern = re.compile(rf"<!-- section:{re.escape(key)} -->.*?<!-- end:{re.escape(key)} -->\n", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    RESULTS.write_text(text)
    return RESULTS

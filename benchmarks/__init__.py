"""The benchmark scripts that write benchmarks/RESULTS.md (run each as `python -m benchmarks.NAME`)."""
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"

"""xlmr-compress: make XLM-RoBERTa small and fast without losing its accuracy.

Names are imported lazily, so `import xlmr_compress` (and every `--help`) stays light: onnxruntime, triton and
torch-pruning load only when a stage that needs them runs.
"""
from __future__ import annotations

import importlib
from typing import Any

_API = {
    "UserError": "errors",
    "load": "directory", "inspect": "directory", "read_lineage": "directory",
    "Predictor": "runtime", "evaluate": "runtime",
    "FinetuneConfig": "configs", "finetune": "train",
    "DistillConfig": "configs", "distill": "distillation",
    "PruneConfig": "configs", "prune": "pruning", "TrimConfig": "configs", "trim_vocab": "pruning",
    "ExportConfig": "configs", "export": "onnx_export",
    "QuantizeConfig": "configs", "quantize": "quantization.onnx",
    "BenchConfig": "configs", "bench": "measure", "run_bench": "measure", "BenchResult": "measure",
    "time_round_robin": "measure", "percentiles_ms": "measure", "markdown_table": "measure",
    "DataConfig": "data", "load_data": "data", "TaskData": "data",
    "pipeline": "inference.pipeline", "PipelineConfig": "configs", "predict": "inference.predict",
    "PredictConfig": "configs", "serve": "inference.serve", "ServeConfig": "configs",
    "CompressConfig": "configs", "compress": "compression",
    "STAGES": "stages",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'xlmr_compress' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__

"""xlmr-compress: make XLM-RoBERTa small and fast without losing its accuracy."""
from .bench import BenchConfig, bench
from .distill import DistillConfig, distill
from .errors import UserError
from .export.onnx import ExportConfig, export_onnx
from .modeling import load
from .quantize.onnx import QuantizeConfig, quantize
from .quantize.torch import quantize_torch
from .runtime import Predictor, evaluate
from .train import FinetuneConfig, finetune

__all__ = ["BenchConfig", "DistillConfig", "ExportConfig", "FinetuneConfig", "Predictor", "QuantizeConfig", "UserError",
           "bench", "distill", "evaluate", "export_onnx", "finetune", "load", "quantize", "quantize_torch"]

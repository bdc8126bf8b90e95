"""xlmr-compress: make XLM-RoBERTa small and fast without losing its accuracy."""
from .distill import DistillConfig, distill
from .errors import UserError
from .modeling import load
from .runtime import Predictor, evaluate
from .train import FinetuneConfig, finetune

__all__ = ["DistillConfig", "FinetuneConfig", "Predictor", "UserError", "distill", "evaluate", "finetune", "load"]

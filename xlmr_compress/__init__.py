"""xlmr-compress: make XLM-RoBERTa small and fast without losing its accuracy."""
from .errors import UserError
from .modeling import load
from .runtime import Predictor, evaluate
from .train import FinetuneConfig, finetune

__all__ = ["FinetuneConfig", "Predictor", "UserError", "evaluate", "finetune", "load"]

"""xlmr-compress: make XLM-RoBERTa small and fast without losing its accuracy."""
from .errors import UserError
from .modeling import load

__all__ = ["UserError", "load"]

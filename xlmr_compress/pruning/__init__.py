"""Structured pruning (attention heads, FFN neurons) and vocabulary trimming."""
from .structured import PruneConfig, prune
from .vocab import TrimConfig, trim_vocab

__all__ = ["PruneConfig", "TrimConfig", "prune", "trim_vocab"]

"""Distillation: a smaller student learns from a fine-tuned teacher."""
from .losses import PRESETS, LossWeights
from .student import StudentShape, build_student, select_layers
from .trainer import DistillConfig, distill

__all__ = ["PRESETS", "DistillConfig", "LossWeights", "StudentShape", "build_student", "distill", "select_layers"]

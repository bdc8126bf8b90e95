"""Structured FFN pruning: remove intermediate neurons from the up and down projections of each layer."""
from __future__ import annotations

import torch
import torch_pruning as tp
from transformers import PreTrainedModel

from .graph import prune_channels


def prune_ffn(model: PreTrainedModel, keep: list[torch.Tensor], graph: tp.DependencyGraph) -> None:
    """Keep only the FFN neurons listed per layer, physically shrinking both projections."""
    for layer, kept in zip(model.base_model.encoder.layer, keep, strict=True):
        up, down = layer.intermediate.dense, layer.output.dense
        dropped = sorted(set(range(up.out_features)) - set(kept.tolist()))
        prune_channels(graph, up, dropped, {up, down})

"""Structured attention-head pruning: remove whole heads from q, k, v and the attention output projection."""
from __future__ import annotations

import torch
import torch_pruning as tp
from transformers import PreTrainedModel

from .graph import prune_channels


def prune_heads(model: PreTrainedModel, keep: list[torch.Tensor], graph: tp.DependencyGraph) -> None:
    """Keep only the heads listed per layer, physically shrinking the weights, so the model gets smaller and faster."""
    for layer, kept in zip(model.base_model.encoder.layer, keep, strict=True):
        att = layer.attention.self
        size = att.attention_head_size
        dropped = sorted(set(range(att.query.out_features // size)) - set(kept.tolist()))
        channels = [h * size + j for h in dropped for j in range(size)]
        prune_channels(graph, att.query, channels, {att.query, att.key, att.value, layer.attention.output.dense})
        # transformers reads the head count from these; the head size and its `scaling` stay as they were
        att.num_attention_heads = att.query.out_features // size
        att.all_head_size = att.query.out_features

"""Model surgery shared by the student builder and the pruner: per-layer shapes, resizing a model to recorded
shapes, and keeping a subset of attention heads, FFN neurons and hidden dimensions, the rest removed for real.

torch-pruning does the removal: its dependency graph finds every weight coupled to a channel (q/k/v and the
attention output for a head, both projections for an FFN neuron, every embedding, LayerNorm and projection on the
residual stream for a hidden dimension), and each cut is checked against the layers it must touch.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch_pruning as tp
from torch import nn
from transformers import PreTrainedModel

WEIGHTED = (nn.Linear, nn.LayerNorm, nn.Embedding)  # the layers a cut may touch (the graph also holds tensor ops)


def layer_shapes(model: PreTrainedModel) -> dict:
    """Per-layer heads, head size and FFN width of a model, as recorded in config.json after pruning."""
    layers = model.base_model.encoder.layer
    head_size = layers[0].attention.self.attention_head_size
    return {
        "head_size": head_size,
        "heads": [layer.attention.self.query.out_features // head_size for layer in layers],
        "ffn": [layer.intermediate.dense.out_features for layer in layers],
    }


def resize_layers(model: PreTrainedModel, shapes: dict) -> None:
    """Give each encoder layer the recorded number of heads and FFN width (fresh weights, to be loaded)."""
    hidden, head_size = model.config.hidden_size, shapes["head_size"]
    for layer, heads, ffn in zip(model.base_model.encoder.layer, shapes["heads"], shapes["ffn"], strict=False):
        att = layer.attention.self
        width = heads * head_size
        att.query, att.key, att.value = (nn.Linear(hidden, width) for _ in range(3))
        att.num_attention_heads, att.attention_head_size, att.all_head_size = heads, head_size, width
        layer.attention.output.dense = nn.Linear(width, hidden)
        layer.intermediate.dense = nn.Linear(hidden, ffn)
        layer.output.dense = nn.Linear(ffn, hidden)


def keep(model: PreTrainedModel, heads: list[torch.Tensor] | None = None, ffn: list[torch.Tensor] | None = None,
         hidden: torch.Tensor | None = None) -> None:
    """Keep only the listed heads and FFN neurons of each layer and the listed hidden dimensions, in place; the
    weights of the rest are removed, so the model gets smaller and faster (None: keep all of that kind)."""
    graph = dependency_graph(model)
    layers = model.base_model.encoder.layer
    for layer, kept in zip(layers, heads or [], strict=heads is not None):
        att = layer.attention.self
        size = att.attention_head_size
        channels = [h * size + j for h in _dropped(att.query.out_features // size, kept) for j in range(size)]
        _cut(graph, att.query, tp.prune_linear_out_channels, channels,
             {att.query, att.key, att.value, layer.attention.output.dense})
        # transformers reads the head count from these; the head size and its `scaling` stay as they were
        att.num_attention_heads = att.query.out_features // size
        att.all_head_size = att.query.out_features
    for layer, kept in zip(layers, ffn or [], strict=ffn is not None):
        up, down = layer.intermediate.dense, layer.output.dense
        _cut(graph, up, tp.prune_linear_out_channels, _dropped(up.out_features, kept), {up, down})
    if hidden is not None:
        dropped = _dropped(model.config.hidden_size, hidden)
        head = getattr(model, "classifier", None)
        head_dense = getattr(head, "dense", None)  # the sequence head's hidden-to-hidden layer, off the residual
        stream = {m for m in model.modules() if isinstance(m, WEIGHTED)}
        if head_dense is not None:
            stream.discard(head.out_proj)
        _cut(graph, model.base_model.embeddings.word_embeddings, tp.prune_embedding_out_channels, dropped, stream)
        if head_dense is not None:
            _cut(graph, head_dense, tp.prune_linear_out_channels, dropped, {head_dense, head.out_proj})
        model.config.hidden_size = len(hidden)


def dependency_graph(model: PreTrainedModel) -> tp.DependencyGraph:
    """Trace which channels are coupled (q/k/v/output per attention, up/down per FFN, the residual stream)."""
    ids = torch.tensor([[model.config.bos_token_id or 0, 5, 6, model.config.eos_token_id or 2]])
    ids = ids.clamp_max(model.config.vocab_size - 1).to(model.device)
    with torch.enable_grad():
        return tp.DependencyGraph().build_dependency(
            model, example_inputs={"input_ids": ids, "attention_mask": torch.ones_like(ids)},
            output_transform=lambda out: out[0])


def _dropped(size: int, kept: torch.Tensor) -> list[int]:
    """The indices in range(size) that are not kept."""
    return sorted(set(range(size)) - set(kept.tolist()))


def _cut(graph: tp.DependencyGraph, root: nn.Module, how: Callable, idxs: list[int], coupled: set[nn.Module]) -> None:
    """Remove channels `idxs` of `root` and the matching channels of every layer coupled to it.

    `coupled` is the set of layers the cut must touch, so an unexpected trace fails loudly instead of cutting the
    wrong weights.
    """
    if not idxs:
        return
    group = graph.get_pruning_group(root, how, idxs=idxs)
    touched = {item.dep.target.module for item in group.items if isinstance(item.dep.target.module, WEIGHTED)}
    if touched != coupled:
        names = sorted(graph._module2name.get(m, "?") for m in touched ^ coupled)
        raise RuntimeError(f"torch-pruning coupled an unexpected set of layers to {graph._module2name[root]}: {names}")
    group.prune()

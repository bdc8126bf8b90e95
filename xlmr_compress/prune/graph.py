"""torch-pruning's dependency graph of an XLM-R model, and the physical removal of one group of channels."""
from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn
from transformers import PreTrainedModel


def dependency_graph(model: PreTrainedModel) -> tp.DependencyGraph:
    """Trace which Linear channels are coupled (q/k/v/output per attention; up/down projection per FFN)."""
    ids = torch.tensor([[model.config.bos_token_id or 0, 5, 6, model.config.eos_token_id or 2]])
    ids = ids.clamp_max(model.config.vocab_size - 1)
    with torch.enable_grad():
        return tp.DependencyGraph().build_dependency(
            model, example_inputs={"input_ids": ids, "attention_mask": torch.ones_like(ids)},
            output_transform=lambda out: out[0])


def prune_channels(graph: tp.DependencyGraph, root: nn.Linear, idxs: list[int], coupled: set[nn.Module]) -> None:
    """Remove output channels `idxs` of `root` and the matching channels of every layer coupled to it.

    `coupled` is the set of Linear layers the group must touch, so an unexpected trace fails loudly instead of
    pruning the wrong weights.
    """
    if not idxs:
        return
    group = graph.get_pruning_group(root, tp.prune_linear_out_channels, idxs=idxs)
    touched = {item.dep.target.module for item in group.items if isinstance(item.dep.target.module, nn.Linear)}
    if touched != coupled:
        names = sorted(graph._module2name.get(m, "?") for m in touched ^ coupled)
        raise RuntimeError(f"torch-pruning coupled an unexpected set of layers to {graph._module2name[root]}: {names}")
    group.prune()

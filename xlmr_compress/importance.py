"""How much each attention head, FFN neuron and hidden dimension matters, and which ones a target keeps: the
scores that both pruning and student building cut by.

Data-driven scores follow Michel et al. (2019), "Are Sixteen Heads Really Better than One?": put a gate m = 1 on
each head's output (and on each FFN neuron) and score it by E_x |dL(x)/dm|. The gate of a head scales its slice
of the input of the attention output projection, so dL/dm is that slice times its gradient, summed over tokens:
no change to the model's forward is needed. Without data, the weights' L2 norm is the fallback.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
from transformers import PreTrainedModel

from .errors import UserError


def _projections(model: PreTrainedModel) -> list[tuple[torch.nn.Linear, torch.nn.Linear, int]]:
    """Per layer: the attention output projection, the FFN down projection, and the head size."""
    return [(layer.attention.output.dense, layer.output.dense, layer.attention.self.attention_head_size)
            for layer in model.base_model.encoder.layer]


def taylor_scores(model: PreTrainedModel, batches: Iterable[dict]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per layer, sum over examples of |dL/d gate| for each head and each FFN neuron (Michel et al.)."""
    projections = _projections(model)
    inputs: dict[torch.nn.Module, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args: inputs.__setitem__(mod, args[0]))
             for attn_out, ffn_out, _ in projections for m in (attn_out, ffn_out)]
    heads = [torch.zeros(attn_out.in_features // size) for attn_out, _, size in projections]
    ffn = [torch.zeros(ffn_out.in_features) for _, ffn_out, _ in projections]
    model.eval()
    try:
        for batch in batches:
            loss = model(**batch).loss
            acts = [inputs[m] for attn_out, ffn_out, _ in projections for m in (attn_out, ffn_out)]
            grads = torch.autograd.grad(loss, acts)
            for i, (_, _, size) in enumerate(projections):
                head_gate = (acts[2 * i] * grads[2 * i]).sum(1)  # [batch, heads * size]: dL/dm per channel
                heads[i] += head_gate.view(len(head_gate), -1, size).sum(-1).abs().sum(0).detach()
                ffn[i] += (acts[2 * i + 1] * grads[2 * i + 1]).sum(1).abs().sum(0).detach()
            inputs.clear()
    finally:
        for h in hooks:
            h.remove()
    return heads, ffn


@torch.no_grad()
def magnitude_scores(model: PreTrainedModel) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per layer, the L2 norm of every weight and bias that belongs to each head and each FFN neuron."""
    heads, ffn = [], []
    for layer in model.base_model.encoder.layer:
        att, size = layer.attention.self, layer.attention.self.attention_head_size
        squares = sum(lin.weight.pow(2).sum(1) + lin.bias.pow(2) for lin in (att.query, att.key, att.value))
        squares = squares + layer.attention.output.dense.weight.pow(2).sum(0)
        heads.append(squares.view(-1, size).sum(1).sqrt())
        up, down = layer.intermediate.dense, layer.output.dense
        ffn.append((up.weight.pow(2).sum(1) + up.bias.pow(2) + down.weight.pow(2).sum(0)).sqrt())
    return heads, ffn


@torch.no_grad()
def hidden_ranking(model: PreTrainedModel) -> torch.Tensor:
    """Hidden dimensions from most to least important: summed |gain| of every LayerNorm on the residual stream."""
    gains = [m.weight.abs() for m in model.base_model.modules() if isinstance(m, torch.nn.LayerNorm)]
    return torch.stack(gains).sum(0).argsort(descending=True)


def keep_indices(scores: list[torch.Tensor], remove: float = 0.0, keep: list[int] | None = None,
                 scope: Literal["layer", "global"] = "layer", what: str = "heads") -> list[torch.Tensor]:
    """Sorted indices to keep in each layer: the `keep` best per layer, or all but a `remove` share of the worst.

    scope "layer" takes the same share from every layer; "global" ranks all layers together after scaling each
    layer's scores to unit L2 norm (Michel et al.), so layers end up uneven; every layer keeps at least one.
    """
    sizes = [len(s) for s in scores]
    if keep is not None:
        counts = check_counts(keep, sizes, what)
    elif scope == "global":
        counts = _global_counts(scores, remove)
    else:
        counts = [max(1, n - round(remove * n)) for n in sizes]
    return [torch.topk(s, c).indices.sort().values for s, c in zip(scores, counts, strict=True)]


def check_ratio(ratio: float, what: str) -> float:
    """A share to remove must lie in [0, 1)."""
    if not 0.0 <= ratio < 1.0:
        raise UserError(f"--{what} {ratio} is not a share in [0, 1): give the fraction of {what} to remove, e.g. 0.3")
    return ratio


def check_counts(keep: list[int], sizes: list[int], what: str) -> list[int]:
    """Per-layer counts from one number for every layer or one per layer, each within 1..layer size."""
    if len(keep) not in (1, len(sizes)):
        raise UserError(f"{len(keep)} {what} counts for {len(sizes)} layers: give one number, or one per layer")
    counts = keep * len(sizes) if len(keep) == 1 else list(keep)
    for i, (c, n) in enumerate(zip(counts, sizes, strict=True)):
        if c < 1:
            raise UserError(f"keeping {c} {what} in layer {i} would prune every one of them: keep at least 1 per layer")
        if c > n:
            raise UserError(f"layer {i} has {n} {what}, cannot keep {c}: give at most {n}")
    return counts


def _global_counts(scores: list[torch.Tensor], remove: float) -> list[int]:
    """Per-layer counts after removing the globally lowest `remove` share of layer-normalised scores."""
    normed = torch.cat([s / s.norm().clamp_min(1e-12) for s in scores])
    layer = torch.cat([torch.full((len(s),), i) for i, s in enumerate(scores)])
    starts = torch.tensor([0] + [len(s) for s in scores]).cumsum(0)[:-1]
    best = starts + torch.stack([s.argmax() for s in scores])
    normed[best] = float("inf")  # each layer's best one is never removed
    total = min(round(remove * len(normed)), len(normed) - len(scores))
    removed = layer[normed.argsort()[:total]]
    return [len(s) - int((removed == i).sum()) for i, s in enumerate(scores)]

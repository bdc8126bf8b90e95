"""Register the Triton fused attention kernel with transformers as attn_implementation="xlmr_triton".

Padded batches reach the kernel with their 2-d key-padding mask (transformers' flash mask function, so no L x L mask
is built); packed batches (see `pack`) reach its variable-length path through `cu_seq_lens_q`, so the whole encoder
runs on real tokens only. Without a CUDA device (and without TRITON_INTERPRET=1) it warns and uses sdpa.
"""
from __future__ import annotations

import warnings

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

from .kernels import flash_attention as fa

NAME = "xlmr_triton"  # transformers 5 treats any name containing "flash" as a flash-attn hub kernel to download


def _fallback_reason(query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None) -> str | None:
    if fa.triton is None:
        return "triton is not installed"
    if not fa.available():
        return "no CUDA device (set TRITON_INTERPRET=1 before importing triton to run the kernel interpreted)"
    if query.device.type != "cuda" and not fa.INTERPRET:
        return f"the model is on {query.device.type}, the kernel runs on CUDA"
    if query.shape[-1] not in fa.HEAD_DIMS:
        return f"head size {query.shape[-1]} is not one of the kernel's {fa.HEAD_DIMS}"
    if query.dtype not in fa.DTYPES:
        return f"dtype {query.dtype} is not supported"
    if query.shape[2] != key.shape[2]:
        return "queries and keys differ in length (cross-attention)"
    if attention_mask is not None and attention_mask.ndim != 2:
        return f"a {attention_mask.ndim}-d attention mask is not a key-padding mask"
    return None


def _packed_mask(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Block-diagonal (1, 1, T, T) boolean mask of packed sequences, for the sdpa fallback."""
    seq = torch.repeat_interleave(torch.arange(cu_seqlens.numel() - 1, device=cu_seqlens.device), cu_seqlens.diff())
    return (seq[:, None] == seq[None, :])[None, None]


def xlmr_triton_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: q, k, v (B, H, L, D) and a (B, L) key-padding mask -> (B, L, H, D)."""
    cu_seqlens = kwargs.get("cu_seq_lens_q")
    reason = _fallback_reason(query, key, attention_mask)
    if reason:
        warnings.warn(f"xlmr_triton attention falls back to sdpa: {reason}", RuntimeWarning, stacklevel=2)
        if cu_seqlens is not None:
            attention_mask = _packed_mask(cu_seqlens)
        elif attention_mask is not None and attention_mask.ndim == 2:
            attention_mask = attention_mask[:, None, None, :].bool()
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout)
    q, k, v = (x.transpose(1, 2) for x in (query, key, value))
    if cu_seqlens is not None:
        if q.shape[0] != 1:
            raise ValueError("packed sequences (cu_seq_lens_q) must come as one row: batch size 1")
        out = fa.flash_attention_varlen(q[0], k[0], v[0], cu_seqlens, kwargs["max_length_q"], scaling, dropout)
        return out[None], None
    return fa.flash_attention(q, k, v, attention_mask, scaling, dropout), None


def pack(input_ids: torch.Tensor, attention_mask: torch.Tensor, padding_idx: int = 1) -> tuple[dict, torch.Tensor]:
    """A padded batch as one row of real tokens plus the kwargs that keep its sequences apart, and the row indices.

    Feed the dict to an encoder loaded with attn_implementation="xlmr_triton"; `kernels.flash_attention.pad(out[0],
    indices, batch, seqlen)` puts its (1, T, ...) outputs back in the padded layout. Position ids restart per sequence
    at padding_idx + 1, as XLM-R numbers them.
    """
    ids, indices, cu_seqlens, max_seqlen = fa.unpad(input_ids, attention_mask)
    first = torch.repeat_interleave(cu_seqlens[:-1], cu_seqlens.diff())
    positions = torch.arange(ids.numel(), device=ids.device) - first + padding_idx + 1
    inputs = {"input_ids": ids[None], "position_ids": positions[None], "cu_seq_lens_q": cu_seqlens,
              "cu_seq_lens_k": cu_seqlens, "max_length_q": max_seqlen, "max_length_k": max_seqlen}
    return inputs, indices


def register() -> None:
    """Make attn_implementation="xlmr_triton" known to transformers, with its mask function (idempotent)."""
    AttentionInterface.register(NAME, xlmr_triton_attention)
    AttentionMaskInterface.register(NAME, flash_attention_mask)


register()

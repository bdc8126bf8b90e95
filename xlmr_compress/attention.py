"""Attention for packed (padding-free) batches: the Triton kernel as attn_implementation="xlmr_triton", and sdpa on
any device as "xlmr_packed".

Padded batches arrive with their 2-d key-padding mask (transformers' flash mask function, so no L x L mask is built);
packed batches (see `pack`) arrive as one row of real tokens with `cu_seq_lens_q`, so every layer but attention runs
on real tokens only. The kernel has a variable-length path; sdpa gets each sequence's queries, keys and values put
back in a padded (B, H, L, D) block, which costs a copy and L^2 per sequence instead of (sum of L)^2 for the row.
Without a CUDA device (and without TRITON_INTERPRET=1) "xlmr_triton" warns and uses the sdpa path.
"""
from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

from .kernels import flash_attention as fa

NAME = "xlmr_triton"  # transformers 5 treats any name containing "flash" as a flash-attn hub kernel to download
PACKED = "xlmr_packed"


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


def sdpa_varlen(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cu_seqlens: torch.Tensor,
                max_seqlen: int, scaling: float | None = None, dropout: float = 0.0) -> torch.Tensor:
    """Attention within each packed sequence: q, k, v (1, H, T, D) -> (1, T, H, D), through a padded sdpa call."""
    heads, total, dim = query.shape[1:]
    batch, lengths = cu_seqlens.numel() - 1, cu_seqlens.diff()
    sequence = torch.repeat_interleave(torch.arange(batch, device=query.device), lengths)
    slot = sequence * max_seqlen + torch.arange(total, device=query.device) - cu_seqlens[:-1].long()[sequence]

    def padded(x: torch.Tensor) -> torch.Tensor:
        out = x.new_zeros(heads, batch * max_seqlen, dim)
        out[:, slot] = x[0]
        return out.view(heads, batch, max_seqlen, dim).transpose(0, 1)

    keep = torch.arange(max_seqlen, device=query.device)[None] < lengths[:, None]
    out = F.scaled_dot_product_attention(padded(query), padded(key), padded(value), attn_mask=keep[:, None, None],
                                         dropout_p=dropout, scale=scaling)
    return out.transpose(1, 2).reshape(batch * max_seqlen, heads, dim)[slot][None]


def packed_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: sdpa per sequence for a packed row (cu_seq_lens_q), plain sdpa otherwise."""
    cu_seqlens = kwargs.get("cu_seq_lens_q")
    if cu_seqlens is not None:
        return sdpa_varlen(query, key, value, cu_seqlens, kwargs["max_length_q"], scaling,
                           dropout if module.training else 0.0), None
    if attention_mask is not None and attention_mask.ndim == 2:
        attention_mask = attention_mask[:, None, None, :].bool()
    return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout)


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
        return packed_sdpa_attention(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
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


def packed_forward(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
    """The outputs of an XLM-R model (any task head) on a padded batch, computed as one packed row of real tokens.

    The model must use a packed-aware attention (PACKED or NAME). Its encoder output is scattered back to the padded
    (B, L, H) layout before the head, so the outputs have the padded shapes (at padding: the head applied to zeros).
    """
    inputs, indices = pack(input_ids, attention_mask, model.config.pad_token_id)

    def unpack(module: torch.nn.Module, args: Any, output: Any) -> Any:
        output.last_hidden_state = fa.pad(output.last_hidden_state[0], indices, *input_ids.shape)
        return output

    handle = model.base_model.encoder.register_forward_hook(unpack)
    try:
        return model(**inputs)
    finally:
        handle.remove()


def register() -> None:
    """Make attn_implementation="xlmr_triton" and "xlmr_packed" known to transformers (idempotent)."""
    AttentionInterface.register(NAME, xlmr_triton_attention)
    AttentionMaskInterface.register(NAME, flash_attention_mask)
    AttentionInterface.register(PACKED, packed_sdpa_attention)
    AttentionMaskInterface.register(PACKED, flash_attention_mask)


register()

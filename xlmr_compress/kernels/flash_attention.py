"""FlashAttention-2-style fused attention for XLM-R in Triton: non-causal, padding-aware (key-padding mask or packed
variable-length sequences), forward and backward, with a plain PyTorch reference beside it.

Layout is token-major as in FlashAttention's API: padded tensors are (batch, seqlen, heads, head_dim), packed tensors
are (total_tokens, heads, head_dim) with `cu_seqlens` (batch + 1,) int32 offsets. Query rows that are padding get a
zero output (and zero gradient), so the padded and the packed paths agree everywhere.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
except ImportError:  # the library imports without triton; the kernels then refuse to run
    triton = None

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
AUTOTUNE = os.environ.get("XLMR_TRITON_AUTOTUNE", "1") != "0"  # 0: the first config only (one compile per shape)
HEAD_DIMS = (16, 32, 64, 128)
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
LOG2E = 1.4426950408889634


def available() -> bool:
    """Whether the Triton kernels can run here: triton installed and a CUDA device, or the interpreter."""
    return triton is not None and (INTERPRET or torch.cuda.is_available())


def attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    scale: float | None = None,
    dropout_keep: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Plain PyTorch attention with the kernel's semantics (q, k, v: (B, L, H, D); mask: (B, L), 1 = real token)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    scores = (q @ k.transpose(-1, -2)) * scale
    if attention_mask is not None:
        keys = attention_mask.bool()[:, None, None, :]
        scores = scores.masked_fill(~keys, float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # a sequence with no real token attends to nothing
    if dropout_keep is not None:
        probs = probs * dropout_keep / (1.0 - dropout_p)
    out = (probs @ v).transpose(1, 2)
    if attention_mask is not None:
        out = out * attention_mask.bool()[:, :, None, None]
    return out


if triton is not None:

    def _configs(blocks: list[tuple[int, int, int, int]]) -> list:
        if INTERPRET:  # the interpreter runs every config it is given: one small tile, several tiles per test
            return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=1, num_stages=1)]
        return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
                for m, n, w, s in (blocks if AUTOTUNE else blocks[:1])]

    FWD_CONFIGS = _configs([(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (128, 32, 4, 4), (64, 64, 4, 3),
                            (64, 64, 4, 4), (64, 32, 4, 3)])
    BWD_CONFIGS = _configs([(64, 64, 4, 2), (64, 64, 8, 3), (32, 64, 4, 3), (64, 128, 8, 2), (128, 64, 8, 2),
                            (32, 32, 4, 3)])
    AUTOTUNE_KEY = ["SEQLEN_BUCKET", "HEAD_DIM", "HAS_MASK", "IS_VARLEN", "DROPOUT"]

    _INTERPRETED = tl.constexpr(INTERPRET)

    @triton.jit
    def _dot(a, b, PRECISION: tl.constexpr):
        if _INTERPRETED and a.dtype == tl.bfloat16:  # the interpreter multiplies bf16 tiles as raw bits
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        return tl.dot(a, b, input_precision=PRECISION)

    @triton.jit
    def _sequence(CU_SEQLENS, MASK, b, stride_mask_b, MAX_SEQLEN, HAS_MASK: tl.constexpr, IS_VARLEN: tl.constexpr):
        """Row offset of sequence b in the token dimension, and the range [lo, hi) holding its real tokens."""
        if IS_VARLEN:
            row0 = tl.load(CU_SEQLENS + b)
            lo = row0 * 0
            hi = tl.load(CU_SEQLENS + b + 1) - row0
        else:
            row0 = b * 0
            lo = row0 + MAX_SEQLEN if HAS_MASK else row0
            hi = row0 if HAS_MASK else row0 + MAX_SEQLEN
            if HAS_MASK:  # first real token and one past the last, from the mask row (<= 512 bytes)
                for start in range(0, MAX_SEQLEN, 128):
                    idx = start + tl.arange(0, 128)
                    real = tl.load(MASK + b * stride_mask_b + idx, mask=idx < MAX_SEQLEN, other=0) != 0
                    lo = tl.minimum(lo, tl.min(tl.where(real, idx, MAX_SEQLEN)))
                    hi = tl.maximum(hi, tl.max(tl.where(real, idx + 1, 0)))
        return row0, lo, hi

    @triton.jit
    def _program(CU_SEQLENS, MASK, stride_b, stride_t, stride_h, stride_mask_b, H, MAX_SEQLEN,
                 HAS_MASK: tl.constexpr, IS_VARLEN: tl.constexpr):
        """This program's batch*head, batch, head, sequence rows (row0, lo, hi), row count and base offset."""
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        row0, lo, hi = _sequence(CU_SEQLENS, MASK, b, stride_mask_b, MAX_SEQLEN, HAS_MASK, IS_VARLEN)
        n_rows = hi if IS_VARLEN else MAX_SEQLEN
        base = b.to(tl.int64) * stride_b + row0.to(tl.int64) * stride_t + h * stride_h
        return bh, b, h, row0, lo, hi, n_rows, base

    @triton.jit
    def _dropout_keep(seed, bh, rows, cols, MAX_SEQLEN, dropout_p):
        """Philox keep mask of one tile, a pure function of (seed, batch*head, row, col): backward regenerates it."""
        offsets = (bh * MAX_SEQLEN + rows[:, None]) * MAX_SEQLEN + cols[None, :]
        return tl.rand(seed, offsets) >= dropout_p

    @triton.jit
    def _fwd_key_tiles(
        acc, l_i, m_i, q, K, V, MASK, start, end, hi, offs_m, offs_n, offs_d, stride_t, qk_scale, dropout_p, seed, bh,
        MAX_SEQLEN, HAS_MASK: tl.constexpr, DROPOUT: tl.constexpr, PRECISION: tl.constexpr, BLOCK_N: tl.constexpr,
        MASKED: tl.constexpr,
    ):
        """Online-softmax update of a query tile over the key tiles in [start, end); MASKED checks bounds and mask."""
        for start_n in range(start, end, BLOCK_N):
            cols = start_n + offs_n
            if MASKED:
                key_in = cols < hi
                if HAS_MASK:
                    key_in &= tl.load(MASK + cols, mask=key_in, other=0) != 0
                kt = tl.load(K + cols[None, :] * stride_t + offs_d[:, None], mask=key_in[None, :], other=0.0)
                v = tl.load(V + cols[:, None] * stride_t + offs_d[None, :], mask=key_in[:, None], other=0.0)
                s = tl.where(key_in[None, :], _dot(q, kt, PRECISION) * qk_scale, float("-inf"))
            else:
                kt = tl.load(K + cols[None, :] * stride_t + offs_d[:, None])
                v = tl.load(V + cols[:, None] * stride_t + offs_d[None, :])
                s = _dot(q, kt, PRECISION) * qk_scale
            m_new = tl.maximum(m_i, tl.max(s, 1))
            if MASKED:
                m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a tile of masked keys must not give inf - inf
            else:
                m_safe = m_new
            p = tl.exp2(s - m_safe[:, None])
            alpha = tl.exp2(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, 1)
            if DROPOUT:
                keep = _dropout_keep(seed, bh, offs_m, cols, MAX_SEQLEN, dropout_p)
                p = tl.where(keep, p / (1.0 - dropout_p), 0.0)
            acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, PRECISION)
            m_i = m_new
        return acc, l_i, m_i

    # Forward, FlashAttention-2 (Dao, 2023). For a tile of queries Q_i and each tile of keys K_j, V_j, in base 2
    # with log2(e) folded into the scale:
    #     S = Q_i K_j^T * scale * log2(e)        (masked keys -> -inf)
    #     m' = max(m, rowmax(S));  P = exp2(S - m');  alpha = exp2(m - m')
    #     l = l * alpha + rowsum(P);  acc = acc * alpha + P V_j
    # and at the end O_i = acc / l, LSE_i = m + log2(l) (saved for backward). Only BLOCK_M x BLOCK_N scores ever
    # exist, in registers; keys outside the sequence's real range [lo, hi) are never loaded, and query tiles with
    # no real token skip the loop. Dropout (on P, after normalisation by l) scales kept entries by 1 / (1 - p).
    @triton.autotune(configs=FWD_CONFIGS, key=AUTOTUNE_KEY)
    @triton.jit
    def _fwd_kernel(
        Q, K, V, OUT, LSE, MASK, CU_SEQLENS,
        stride_b, stride_t, stride_h, stride_lse_b, stride_mask_b,
        H, MAX_SEQLEN, qk_scale, dropout_p, seed,
        SEQLEN_BUCKET, HEAD_DIM: tl.constexpr, HAS_MASK: tl.constexpr, IS_VARLEN: tl.constexpr,
        DROPOUT: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        bh, b, h, row0, lo, hi, n_rows, base = _program(CU_SEQLENS, MASK, stride_b, stride_t, stride_h,
                                                        stride_mask_b, H, MAX_SEQLEN, HAS_MASK, IS_VARLEN)
        start_m = tl.program_id(0) * BLOCK_M
        offs_m = start_m + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        q = tl.load(Q + base + offs_m[:, None] * stride_t + offs_d[None, :], mask=offs_m[:, None] < n_rows, other=0.0)
        q_real = (offs_m >= lo) & (offs_m < hi)
        if HAS_MASK:
            q_real &= tl.load(MASK + b * stride_mask_b + offs_m, mask=offs_m < n_rows, other=0) != 0

        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        end_n = tl.where((start_m < hi) & (start_m + BLOCK_M > lo), hi, lo)
        # whole key tiles first, without bounds checks (or any mask when the batch has none), then the ragged last one
        full_end = lo + (end_n - lo) // BLOCK_N * BLOCK_N
        key_mask = MASK + b * stride_mask_b
        acc, l_i, m_i = _fwd_key_tiles(acc, l_i, m_i, q, K + base, V + base, key_mask, lo, full_end, hi, offs_m,
                                       offs_n, offs_d, stride_t, qk_scale, dropout_p, seed, bh, MAX_SEQLEN,
                                       HAS_MASK, DROPOUT, PRECISION, BLOCK_N, MASKED=HAS_MASK)
        acc, l_i, m_i = _fwd_key_tiles(acc, l_i, m_i, q, K + base, V + base, key_mask, full_end, end_n, hi, offs_m,
                                       offs_n, offs_d, stride_t, qk_scale, dropout_p, seed, bh, MAX_SEQLEN,
                                       HAS_MASK, DROPOUT, PRECISION, BLOCK_N, MASKED=True)

        real = q_real & (l_i > 0.0)
        out = tl.where(real[:, None], acc / tl.where(real, l_i, 1.0)[:, None], 0.0)
        tl.store(OUT + base + offs_m[:, None] * stride_t + offs_d[None, :], out.to(OUT.dtype.element_ty),
                 mask=offs_m[:, None] < n_rows)
        lse = tl.where(real, m_i + tl.log2(tl.where(real, l_i, 1.0)), float("inf"))  # +inf: P = 0 in backward
        lse_ptr = LSE + b.to(tl.int64) * stride_lse_b + (row0 + offs_m) * H + h
        tl.store(lse_ptr, lse, mask=offs_m < n_rows)

    # Backward, FlashAttention-2: with P = exp2(S - LSE) recomputed tile by tile and Delta = rowsum(dO * O),
    #     dV = P^T dO,  dP = dO V^T,  dS = P * (dP - Delta),  dK = dS^T Q * scale,  dQ = dS K * scale.
    # One kernel owns a key tile and loops over queries (dK, dV); another owns a query tile and loops over keys (dQ),
    # so no atomics are needed. With dropout, dV uses the dropped P and dP is masked and rescaled the same way.
    @triton.autotune(configs=BWD_CONFIGS, key=AUTOTUNE_KEY)
    @triton.jit
    def _bwd_dkdv_kernel(
        Q, K, V, DO, DK, DV, LSE, DELTA, MASK, CU_SEQLENS,
        stride_b, stride_t, stride_h, stride_lse_b, stride_mask_b,
        H, MAX_SEQLEN, qk_scale, scale, dropout_p, seed,
        SEQLEN_BUCKET, HEAD_DIM: tl.constexpr, HAS_MASK: tl.constexpr, IS_VARLEN: tl.constexpr,
        DROPOUT: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        bh, b, h, row0, lo, hi, n_rows, base = _program(CU_SEQLENS, MASK, stride_b, stride_t, stride_h,
                                                        stride_mask_b, H, MAX_SEQLEN, HAS_MASK, IS_VARLEN)
        start_n = tl.program_id(0) * BLOCK_N
        offs_n = start_n + tl.arange(0, BLOCK_N)
        offs_m = tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        lse_base = LSE + b.to(tl.int64) * stride_lse_b + row0 * H + h
        delta_base = DELTA + b.to(tl.int64) * stride_lse_b + row0 * H + h
        tile = offs_n[:, None] * stride_t + offs_d[None, :]
        k = tl.load(K + base + tile, mask=offs_n[:, None] < n_rows, other=0.0)
        v = tl.load(V + base + tile, mask=offs_n[:, None] < n_rows, other=0.0)
        key_real = (offs_n >= lo) & (offs_n < hi)
        if HAS_MASK:
            key_real &= tl.load(MASK + b * stride_mask_b + offs_n, mask=offs_n < n_rows, other=0) != 0

        dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
        dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
        end_m = tl.where((start_n < hi) & (start_n + BLOCK_N > lo), hi, lo)
        for start_m in range(lo, end_m, BLOCK_M):
            rows = start_m + offs_m
            row_in = rows < hi
            qt = tl.load(Q + base + rows[None, :] * stride_t + offs_d[:, None], mask=row_in[None, :], other=0.0)
            do = tl.load(DO + base + rows[:, None] * stride_t + offs_d[None, :], mask=row_in[:, None], other=0.0)
            lse = tl.load(lse_base + rows * H, mask=row_in, other=float("inf"))
            delta = tl.load(delta_base + rows * H, mask=row_in, other=0.0)
            st = _dot(k, qt, PRECISION) * qk_scale
            pt = tl.where(key_real[:, None], tl.exp2(st - lse[None, :]), 0.0)
            dpt = _dot(v, tl.trans(do), PRECISION)
            if DROPOUT:
                keep = tl.trans(_dropout_keep(seed, bh, rows, offs_n, MAX_SEQLEN, dropout_p))
                dv += _dot(tl.where(keep, pt / (1.0 - dropout_p), 0.0).to(do.dtype), do, PRECISION)
                dpt = tl.where(keep, dpt / (1.0 - dropout_p), 0.0)
            else:
                dv += _dot(pt.to(do.dtype), do, PRECISION)
            dst = pt * (dpt - delta[None, :])
            dk += _dot(dst.to(qt.dtype), tl.trans(qt), PRECISION)

        tl.store(DK + base + tile, (dk * scale).to(DK.dtype.element_ty), mask=offs_n[:, None] < n_rows)
        tl.store(DV + base + tile, dv.to(DV.dtype.element_ty), mask=offs_n[:, None] < n_rows)

    @triton.autotune(configs=BWD_CONFIGS, key=AUTOTUNE_KEY)
    @triton.jit
    def _bwd_dq_kernel(
        Q, K, V, DO, DQ, LSE, DELTA, MASK, CU_SEQLENS,
        stride_b, stride_t, stride_h, stride_lse_b, stride_mask_b,
        H, MAX_SEQLEN, qk_scale, scale, dropout_p, seed,
        SEQLEN_BUCKET, HEAD_DIM: tl.constexpr, HAS_MASK: tl.constexpr, IS_VARLEN: tl.constexpr,
        DROPOUT: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        bh, b, h, row0, lo, hi, n_rows, base = _program(CU_SEQLENS, MASK, stride_b, stride_t, stride_h,
                                                        stride_mask_b, H, MAX_SEQLEN, HAS_MASK, IS_VARLEN)
        start_m = tl.program_id(0) * BLOCK_M
        offs_m = start_m + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        tile = offs_m[:, None] * stride_t + offs_d[None, :]
        row_in = offs_m < n_rows
        q = tl.load(Q + base + tile, mask=row_in[:, None], other=0.0)
        do = tl.load(DO + base + tile, mask=row_in[:, None], other=0.0)
        lse_offs = b.to(tl.int64) * stride_lse_b + (row0 + offs_m) * H + h
        lse = tl.load(LSE + lse_offs, mask=row_in, other=float("inf"))
        delta = tl.load(DELTA + lse_offs, mask=row_in, other=0.0)

        dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        end_n = tl.where((start_m < hi) & (start_m + BLOCK_M > lo), hi, lo)
        for start_n in range(lo, end_n, BLOCK_N):
            cols = start_n + offs_n
            key_in = cols < hi
            if HAS_MASK:
                key_in &= tl.load(MASK + b * stride_mask_b + cols, mask=key_in, other=0) != 0
            kt = tl.load(K + base + cols[None, :] * stride_t + offs_d[:, None], mask=key_in[None, :], other=0.0)
            vt = tl.load(V + base + cols[None, :] * stride_t + offs_d[:, None], mask=key_in[None, :], other=0.0)
            s = _dot(q, kt, PRECISION) * qk_scale
            p = tl.where(key_in[None, :], tl.exp2(s - lse[:, None]), 0.0)
            dp = _dot(do, vt, PRECISION)
            if DROPOUT:
                keep = _dropout_keep(seed, bh, offs_m, cols, MAX_SEQLEN, dropout_p)
                dp = tl.where(keep, dp / (1.0 - dropout_p), 0.0)
            ds = p * (dp - delta[:, None])
            dq += _dot(ds.to(kt.dtype), tl.trans(kt), PRECISION)

        tl.store(DQ + base + tile, (dq * scale).to(DQ.dtype.element_ty), mask=row_in[:, None])

    @triton.jit
    def _dropout_mask_kernel(KEEP, seed, dropout_p, MAX_SEQLEN, BLOCK: tl.constexpr):
        bh = tl.program_id(0)
        rows = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        cols = tl.arange(0, BLOCK)
        for start_n in range(0, MAX_SEQLEN, BLOCK):
            keep = _dropout_keep(seed, bh, rows, start_n + cols, MAX_SEQLEN, dropout_p)
            ptrs = KEEP + (bh * MAX_SEQLEN + rows[:, None]) * MAX_SEQLEN + start_n + cols[None, :]
            tl.store(ptrs, keep.to(tl.int8), mask=(rows[:, None] < MAX_SEQLEN) & (start_n + cols[None, :] < MAX_SEQLEN))


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ndim: int) -> None:
    if not available():
        raise RuntimeError("the Triton attention kernel needs triton and a CUDA device (or TRITON_INTERPRET=1 set "
                           "before triton is imported)")
    if q.ndim != ndim or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"q, k, v must share one {ndim}-d shape, got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if q.shape[-1] not in HEAD_DIMS:
        raise ValueError(f"head size {q.shape[-1]} is not supported: use one of {HEAD_DIMS}")
    if q.dtype not in DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must share one dtype of {DTYPES}, got {q.dtype}, {k.dtype}, {v.dtype}")


def _precision(dtype: torch.dtype) -> str:
    """fp32 inputs follow torch's TF32 switch for matmuls; fp16/bf16 always use tensor cores with fp32 accumulation."""
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


class _Attention(torch.autograd.Function):
    """Fused attention over padded (B, L, H, D) or packed (T, H, D) tensors; saves the log-sum-exp for backward."""

    @staticmethod
    def forward(ctx, q, k, v, mask, cu_seqlens, max_seqlen, scale, dropout_p):
        q, k, v = (x if x.is_contiguous() else x.contiguous() for x in (q, k, v))
        varlen = cu_seqlens is not None
        heads = q.shape[-2]
        batch = cu_seqlens.numel() - 1 if varlen else q.shape[0]
        lse = torch.empty(q.shape[:-1], device=q.device, dtype=torch.float32)
        seed = _dropout_seed() if dropout_p > 0 else 0
        o = torch.empty_like(q)
        ctx.meta = {
            "stride_b": 0 if varlen else q.stride(0), "stride_t": q.stride(-3), "stride_h": q.stride(-2),
            "stride_lse_b": 0 if varlen else lse.stride(0),
            "stride_mask_b": mask.stride(0) if mask is not None else 0,
            "H": heads, "MAX_SEQLEN": max_seqlen, "qk_scale": scale * LOG2E, "dropout_p": dropout_p, "seed": seed,
            "SEQLEN_BUCKET": triton.next_power_of_2(max_seqlen), "HEAD_DIM": q.shape[-1],
            "HAS_MASK": mask is not None, "IS_VARLEN": varlen, "DROPOUT": dropout_p > 0,
            "PRECISION": _precision(q.dtype),
        }
        ctx.scale = scale
        mask_arg = mask if mask is not None else lse  # pointers the kernel never reads (HAS_MASK, IS_VARLEN off)
        cu_arg = cu_seqlens if varlen else lse

        def grid(meta):
            return triton.cdiv(max_seqlen, meta["BLOCK_M"]), batch * heads

        _fwd_kernel[grid](q, k, v, o, lse, mask_arg, cu_arg, **ctx.meta)
        ctx.save_for_backward(q, k, v, o, lse, mask_arg, cu_arg)
        ctx.batch = batch
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, mask_arg, cu_arg = ctx.saved_tensors
        do = do if do.is_contiguous() else do.contiguous()
        delta = (do.float() * o.float()).sum(-1)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        meta = ctx.meta
        rows, heads = meta["MAX_SEQLEN"], meta["H"]
        args = dict(meta, scale=ctx.scale)

        def grid_n(m):
            return triton.cdiv(rows, m["BLOCK_N"]), ctx.batch * heads

        def grid_m(m):
            return triton.cdiv(rows, m["BLOCK_M"]), ctx.batch * heads

        _bwd_dkdv_kernel[grid_n](q, k, v, do, dk, dv, lse, delta, mask_arg, cu_arg, **args)
        _bwd_dq_kernel[grid_m](q, k, v, do, dq, lse, delta, mask_arg, cu_arg, **args)
        return dq, dk, dv, None, None, None, None, None


def _dropout_seed() -> int:
    """A Philox seed drawn from torch's CPU generator, so torch.manual_seed makes dropout reproducible."""
    return int(torch.randint(0, 2**31 - 1, (1,)).item())


def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Fused attention over a padded batch (q, k, v: (B, L, H, D); mask: (B, L), nonzero = real token)."""
    _check(q, k, v, 4)
    batch, seqlen = q.shape[:2]
    mask = None
    if attention_mask is not None:
        if attention_mask.shape != (batch, seqlen):
            raise ValueError(f"attention_mask must be (batch, seqlen) = {(batch, seqlen)}, got "
                             f"{tuple(attention_mask.shape)}")
        mask = attention_mask.to(device=q.device)
        mask = mask.view(torch.uint8) if mask.dtype == torch.bool else (mask != 0).view(torch.uint8)
        mask = mask.contiguous()
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return _Attention.apply(q, k, v, mask, None, seqlen, scale, dropout_p)


def flash_attention_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    scale: float | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Fused self-attention over packed sequences (q, k, v: (T, H, D); cu_seqlens: (B + 1,) offsets, as flash-attn)."""
    _check(q, k, v, 3)
    if cu_seqlens.ndim != 1 or cu_seqlens.numel() < 2:
        raise ValueError("cu_seqlens must be a 1-d tensor of batch + 1 offsets starting at 0")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    cu_seqlens = cu_seqlens.to(device=q.device, dtype=torch.int32).contiguous()
    return _Attention.apply(q, k, v, None, cu_seqlens, int(max_seqlen), scale, dropout_p)


def unpad(x: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Real tokens of a padded batch (B, L, ...) packed as (T, ...), with their flat indices, cu_seqlens, max_seqlen."""
    real = attention_mask.reshape(-1) != 0
    indices = real.nonzero().squeeze(1)
    seqlens = (attention_mask != 0).sum(1, dtype=torch.int32)
    cu_seqlens = F.pad(seqlens.cumsum(0, dtype=torch.int32), (1, 0))
    return x.reshape(-1, *x.shape[2:])[indices], indices, cu_seqlens, int(seqlens.max().item())


def pad(x: torch.Tensor, indices: torch.Tensor, batch: int, seqlen: int) -> torch.Tensor:
    """Scatter packed rows (T, ...) back to a zero-padded (B, L, ...) batch: the inverse of unpad."""
    out = x.new_zeros(batch * seqlen, *x.shape[1:])
    out = out.index_put((indices,), x)
    return out.view(batch, seqlen, *x.shape[1:])


def dropout_keep_mask(seed: int, dropout_p: float, batch_heads: int, max_seqlen: int, device) -> torch.Tensor:
    """The kernel's dropout keep mask (B*H, L, L) as int8, regenerated from its seed, to test against the reference."""
    if not available():
        raise RuntimeError("the Triton attention kernel needs triton and a CUDA device (or TRITON_INTERPRET=1)")
    keep = torch.empty(batch_heads, max_seqlen, max_seqlen, dtype=torch.int8, device=device)
    block = 16
    _dropout_mask_kernel[(batch_heads, triton.cdiv(max_seqlen, block))](keep, seed, dropout_p, max_seqlen, BLOCK=block)
    return keep


def attention_flops(seqlens: list[int], heads: int, head_dim: int, backward: bool = False) -> float:
    """Useful matmul FLOPs of attention over sequences of these lengths (forward 4*L^2*D per head; backward 2.5x)."""
    flops = sum(4.0 * n * n * head_dim * heads for n in seqlens)
    return flops * 2.5 if backward else flops


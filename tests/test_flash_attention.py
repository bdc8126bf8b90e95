"""The Triton attention kernel against a float64 reference: forward and backward, padded and packed, with dropout.

Without CUDA the kernels run in Triton's interpreter (TRITON_INTERPRET=1 must be set before triton is imported), on
tiny shapes: 40 tokens in 16 x 16 tiles still crosses tile edges, padding inside and at the end of sequences, and a
sequence that is all padding.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

fa = pytest.importorskip("xlmr_compress.kernels.flash_attention")
if fa.triton is None:
    pytest.skip("triton is not installed", allow_module_level=True)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOLERANCE = {torch.float32: 1e-3, torch.float16: 1e-2, torch.bfloat16: 1e-2}
BATCH, SEQLEN, HEADS = 4, 40, 2


@pytest.fixture
def poisoned(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every float tensor the kernel wrapper allocates starts as NaN, so an element the kernel forgets shows up."""
    empty, empty_like = torch.empty, torch.empty_like

    def nan_empty(*size, dtype=None, **kwargs):
        out = empty(*size, dtype=dtype, **kwargs)
        return out.fill_(float("nan")) if out.is_floating_point() else out

    def nan_empty_like(x, **kwargs):
        out = empty_like(x, **kwargs)
        return out.fill_(float("nan")) if out.is_floating_point() else out

    monkeypatch.setattr(torch, "empty", nan_empty)
    monkeypatch.setattr(torch, "empty_like", nan_empty_like)


def padding_mask() -> torch.Tensor:
    """Full row; right padding; left padding with a hole in the middle; a row that is all padding."""
    mask = torch.ones(BATCH, SEQLEN, dtype=torch.long)
    mask[1, 23:] = 0
    mask[2, :3] = 0
    mask[2, 17:34] = 0
    mask[3] = 0
    return mask.to(DEVICE)


def inputs(dtype: torch.dtype, head_dim: int, seed: int = 0, batch: int = BATCH) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, SEQLEN, HEADS, head_dim, generator=gen).to(DEVICE, dtype).requires_grad_()
            for _ in range(3)]


def reference(q, k, v, mask, dout, **kwargs) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Output and gradients of the float64 reference."""
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    out = fa.attention_reference(q64, k64, v64, mask, **kwargs)
    out.backward(dout.double())
    return out, [q64.grad, k64.grad, v64.grad]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str) -> None:
    assert not actual.isnan().any(), f"{what} has NaN (unwritten or unsafe elements)"
    error = (actual.double() - expected).abs().max() / expected.abs().max().clamp_min(1e-6)
    assert error <= tol, f"{what}: relative error {error:.2e} > {tol:.0e}"


@pytest.mark.parametrize(("dtype", "head_dim", "masked"), [
    (torch.float32, 32, True), (torch.float16, 32, True), (torch.bfloat16, 32, True),
    (torch.float16, 64, False), (torch.bfloat16, 64, True), (torch.float32, 128, True),
])
def test_padded_forward_backward_match_reference(poisoned, dtype, head_dim, masked) -> None:
    q, k, v = inputs(dtype, head_dim)
    mask = padding_mask() if masked else None
    out = fa.flash_attention(q, k, v, mask)
    dout = torch.randn_like(out)
    out.backward(dout)
    expected, grads = reference(q, k, v, mask, dout)
    tol = TOLERANCE[dtype]
    assert_close(out, expected, tol, "output")
    for name, x, g in zip("qkv", (q, k, v), grads, strict=True):
        assert_close(x.grad, g, tol, f"d{name}")
    if masked:
        pad = padding_mask() == 0
        assert out[pad].abs().max() == 0 and q.grad[pad].abs().max() == 0, "padding rows must be zero"
        assert k.grad[pad].abs().max() == 0 and v.grad[pad].abs().max() == 0, "padding keys get no gradient"


def test_packed_path_matches_padded_path(poisoned) -> None:
    q, k, v = inputs(torch.float16, 32, seed=1)
    mask = padding_mask()
    mask[2] = 1  # packed sequences are contiguous: no holes
    mask[2, 30:] = 0
    out = fa.flash_attention(q, k, v, mask)
    dout = torch.randn_like(out)
    out.backward(dout)
    padded_grads = [x.grad.clone() for x in (q, k, v)]
    for x in (q, k, v):
        x.grad = None

    (pq, indices, cu_seqlens, max_seqlen), (pk, *_), (pv, *_) = (fa.unpad(x, mask) for x in (q, k, v))
    assert cu_seqlens.tolist() == [0, SEQLEN, SEQLEN + 23, SEQLEN + 23 + 30, SEQLEN + 23 + 30]
    packed = fa.flash_attention_varlen(pq, pk, pv, cu_seqlens, max_seqlen)
    fa.pad(packed, indices, BATCH, SEQLEN).backward(dout)
    torch.testing.assert_close(fa.pad(packed, indices, BATCH, SEQLEN), out, atol=0, rtol=0)
    for name, x, g in zip("qkv", (q, k, v), padded_grads, strict=True):
        torch.testing.assert_close(x.grad, g, atol=2e-3, rtol=0, msg=f"d{name} differs between packed and padded")


def test_dropout_matches_reference_with_the_same_keep_mask(poisoned) -> None:
    batch = 2  # the interpreter draws Philox numbers slowly: a full row and a right-padded one
    q, k, v = inputs(torch.float32, 32, seed=2, batch=batch)
    mask, p = padding_mask()[:batch], 0.25
    torch.manual_seed(7)
    out = fa.flash_attention(q, k, v, mask, dropout_p=p)
    dout = torch.randn_like(out)
    out.backward(dout)
    torch.manual_seed(7)
    keep = fa.dropout_keep_mask(fa._dropout_seed(), p, batch * HEADS, SEQLEN, DEVICE).view(batch, HEADS, SEQLEN, SEQLEN)
    assert 0.7 < keep.float().mean() < 0.8, "keep rate should be near 1 - p"
    expected, grads = reference(q, k, v, mask, dout, dropout_keep=keep.double(), dropout_p=p)
    assert_close(out, expected, 1e-3, "output")
    for name, x, g in zip("qkv", (q, k, v), grads, strict=True):
        assert_close(x.grad, g, 1e-3, f"d{name}")


def test_unpad_pad_round_trip() -> None:
    x = torch.randn(BATCH, SEQLEN, 3)
    mask = padding_mask().cpu()
    packed, indices, cu_seqlens, max_seqlen = fa.unpad(x, mask)
    assert packed.shape == (int(mask.sum()), 3)
    assert max_seqlen == SEQLEN and cu_seqlens[-1] == mask.sum()
    torch.testing.assert_close(fa.pad(packed, indices, BATCH, SEQLEN), x * mask[..., None])


def test_rejects_unsupported_input() -> None:
    q = torch.randn(1, 8, 2, 48, device=DEVICE)
    with pytest.raises(ValueError, match="head size 48"):
        fa.flash_attention(q, q, q)
    q = torch.randn(1, 8, 2, 32, device=DEVICE)
    with pytest.raises(ValueError, match="attention_mask must be"):
        fa.flash_attention(q, q, q, torch.ones(1, 9, device=DEVICE))
    with pytest.raises(ValueError, match="dtype"):
        fa.flash_attention(q, q, q.double(), None)


COMPILE_CHECK = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from xlmr_compress.kernels import flash_attention as fa
pointers = {"LSE": "*fp32", "DELTA": "*fp32", "MASK": "*u8", "CU_SEQLENS": "*i32", "SEQ_LO": "*i32", "SEQ_HI": "*i32"}
types = {"qk_scale": "fp32", "scale": "fp32", "dropout_p": "fp32", "H": "i32", "MAX_SEQLEN": "i32", "seed": "i32"}
for kernel in (fa._fwd_kernel, fa._bwd_dkdv_kernel, fa._bwd_dq_kernel):
    constants = dict(SEQLEN_BUCKET=512, HEAD_DIM=64, HAS_MASK=True, IS_VARLEN=False, DROPOUT=False, PRECISION="tf32",
                     BLOCK_M=64, BLOCK_N=64)
    signature = {n: "constexpr" if n in constants else types.get(n, pointers.get(n, "*fp16" if n.isupper() else "i32"))
                 for n in kernel.fn.arg_names}
    triton.compile(ASTSource(kernel.fn, signature, constants), target=GPUTarget("cuda", 90, 32),
                   options={"num_warps": 4, "num_stages": 3})
print("compiled")
"""


def test_kernels_compile_for_hopper() -> None:
    """The interpreter does not type-check like the compiler: build the three kernels to sm_90 machine code."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", COMPILE_CHECK], env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    if "ptxas" in done.stderr and "not found" in done.stderr.lower():
        pytest.skip("triton's bundled ptxas is missing: cannot compile for the GPU here")
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-2000:]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_base_shape_matches_sdpa(dtype) -> None:
    """XLM-R base shape (12 heads of 64, 512 tokens, a quarter padding) against SDPA, forward and backward."""
    q, k, v = (torch.randn(8, 512, 12, 64, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3))
    mask = torch.ones(8, 512, dtype=torch.bool, device="cuda")
    mask[::2, 384:] = False
    out = fa.flash_attention(q, k, v, mask)
    dout = torch.randn_like(out)
    out.backward(dout)
    expected, grads = reference(q, k, v, mask, dout)
    assert_close(out, expected, TOLERANCE[dtype], "output")
    for name, x, g in zip("qkv", (q, k, v), grads, strict=True):
        assert_close(x.grad, g, TOLERANCE[dtype], f"d{name}")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given where there is no CUDA device")
def test_benchmark_exits_2_without_cuda() -> None:
    repo = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-m", "benchmarks.attention"], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 2, done.stderr[-2000:]
    err = done.stderr.strip()
    assert err.startswith("error:") and "--interpret-smoke" in err and "\n" not in err

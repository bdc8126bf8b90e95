"""The Triton attention kernel (padded and packed) against SDPA's backends and eager attention, then an XLM-R base
encoder with each attention implementation, on one CUDA GPU.

    python -m benchmarks.attention                   # a few minutes on an H100/H200; writes benchmarks/RESULTS.md
    python -m benchmarks.attention --interpret-smoke # CPU: the same code path on tiny shapes in Triton's interpreter

Attention figures are effective TFLOP/s: the useful matmul work on real tokens (forward 4 * n^2 * head_dim per head
and sequence, forward + backward 3.5x that) over the measured time, so work spent on padding counts as lost.
Sequence lengths are drawn uniformly from [L * (1 - 2 * padding), L], right-padded to L. Packed figures time the
kernel on real tokens only, as an encoder run on packed batches does (the unpad itself is done once per batch).
Times are medians of the library's one timer (`xlmr_compress.time_round_robin`): the backends of a case take turns
round after round, each call between CUDA events after a synchronisation.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

LENGTHS = (64, 128, 256, 512)
PADDINGS = (0.0, 0.25, 0.5)
SHAPES = ((32, 12), (16, 16))  # (batch, heads): XLM-R base and large, head size 64
BACKENDS = ("triton", "triton packed", "sdpa flash", "sdpa efficient", "sdpa math", "eager")
ROUNDS = {"cuda": (10, 100), "cpu": (0, 2)}  # (warm-up, timed rounds); the CPU runs Triton's slow interpreter


@dataclass
class Case:
    batch: int
    heads: int
    seqlen: int
    padding: float
    head_dim: int = 64
    backward: bool = False


def lengths(case: Case, seed: int = 0) -> list[int]:
    """Sequence lengths with mean padding fraction `case.padding` (seeded)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(case.batch, generator=gen)
    return [max(1, round(case.seqlen * (1 - 2 * case.padding * x))) for x in u.tolist()]


def attention_fns(case: Case, device: str, dtype) -> tuple[dict, dict]:
    """One zero-argument function per backend (returning a (B, L, H, D) output or a packed one), and shared inputs."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from xlmr_compress.kernels import flash_attention as fa

    gen = torch.Generator().manual_seed(1)
    shape = (case.batch, case.seqlen, case.heads, case.head_dim)
    q, k, v = (torch.randn(shape, generator=gen).to(device, dtype).requires_grad_(case.backward) for _ in range(3))
    ns = lengths(case)
    mask = torch.arange(case.seqlen)[None, :] < torch.tensor(ns)[:, None]
    mask = mask.to(device)
    kernel_mask = None if case.padding == 0 else mask
    qh, kh, vh = (x.detach().transpose(1, 2).contiguous().requires_grad_(case.backward) for x in (q, k, v))
    sdpa_mask = None if case.padding == 0 else mask[:, None, None, :]
    (pq, indices, cu_seqlens, max_seqlen), (pk, *_), (pv, *_) = (fa.unpad(x.detach(), mask) for x in (q, k, v))
    pq, pk, pv = (x.requires_grad_(case.backward) for x in (pq, pk, pv))
    bias = None if sdpa_mask is None else torch.zeros(sdpa_mask.shape, device=device, dtype=dtype).masked_fill(
        ~sdpa_mask, float("-inf"))
    scale = case.head_dim ** -0.5

    def sdpa(backend):
        def run():
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(qh, kh, vh, attn_mask=sdpa_mask).transpose(1, 2)
        return run

    def eager():
        scores = (qh @ kh.transpose(-1, -2)) * scale
        if bias is not None:
            scores = scores + bias
        return (torch.softmax(scores.float(), -1).to(dtype) @ vh).transpose(1, 2)

    fns = {
        "triton": lambda: fa.flash_attention(q, k, v, kernel_mask),
        "triton packed": lambda: fa.flash_attention_varlen(pq, pk, pv, cu_seqlens, max_seqlen),
        "sdpa flash": sdpa(SDPBackend.FLASH_ATTENTION),
        "sdpa efficient": sdpa(SDPBackend.EFFICIENT_ATTENTION),
        "sdpa math": sdpa(SDPBackend.MATH),
        "eager": eager,
    }
    leaves = {"triton": [q, k, v], "triton packed": [pq, pk, pv]}
    shared = {"mask": mask, "indices": indices, "lengths": ns, "leaves": leaves, "sdpa leaves": [qh, kh, vh],
              "reference": lambda: fa.attention_reference(*(x.detach().double() for x in (q, k, v)), mask, scale)}
    return fns, shared


def median_ms(fns: dict[str, Callable[[], Any]], device: str) -> dict[str, float]:
    """Median milliseconds of each zero-argument function, timed interleaved by the library's one timer (CUDA events
    after a synchronisation on the GPU)."""
    from xlmr_compress import percentiles_ms, time_round_robin

    warmup, repeats = ROUNDS[device]
    times = time_round_robin({name: (lambda _, fn=fn: fn()) for name, fn in fns.items()}, warmup, repeats, device)
    return {name: percentiles_ms(t)["p50_ms"] for name, t in times.items()}


def bench_attention(cases: list[Case], device: str, dtype, tolerance: float) -> tuple[list[dict], list[str], dict]:
    """Time every backend on every case; check each output against the float64 reference on real tokens.

    Returns the rows, the cases whose output disagrees, and why each backend that refused a case refused (first one).
    """
    import torch
    from xlmr_compress.kernels import flash_attention as fa

    rows, failures, refused = [], [], {}
    for case in cases:
        fns, shared = attention_fns(case, device, dtype)
        real = shared["mask"]
        expected = shared["reference"]()
        flops = fa.attention_flops(shared["lengths"], case.heads, case.head_dim)
        flops += fa.attention_flops(shared["lengths"], case.heads, case.head_dim, backward=True) if case.backward else 0
        row = {"case": case, "tflops": dict.fromkeys(fns)}
        runs = {}
        for name, fn in fns.items():
            try:
                out = fn()
            except Exception as e:  # SDPA's flash backend refuses a mask; a kernel that fails to compile is reported
                refused.setdefault(name, f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}")
                continue
            got = fa.pad(out, shared["indices"], case.batch, case.seqlen) if name == "triton packed" else out
            error = ((got.double() - expected)[real].abs().max() / expected[real].abs().max()).item()
            if not error <= tolerance:
                failures.append(f"{name} {case}: relative error {error:.1e} > {tolerance:.0e}")
            if case.backward:
                leaves, dout = shared["leaves"].get(name, shared["sdpa leaves"]), torch.randn_like(out)

                def run(fn=fn, dout=dout, leaves=leaves):
                    for leaf in leaves:  # no gradient accumulation into the last round's
                        leaf.grad = None
                    fn().backward(dout)
                runs[name] = run
            else:
                runs[name] = fn
        with torch.inference_mode(not case.backward):
            ms = median_ms(runs, device)
        row["tflops"].update({name: flops / (t * 1e-3) / 1e12 for name, t in ms.items()})
        rows.append(row)
    return rows, failures, refused


def attention_table(rows: list[dict]) -> str:
    """Markdown: effective TFLOP/s per backend, and the kernel's speedup over the best SDPA backend."""
    speedups = " | triton / best sdpa | packed / best sdpa |"
    head = "| batch x heads | length | padding | " + " | ".join(BACKENDS) + speedups
    lines = [head, "|" + "---|" * (len(BACKENDS) + 5)]
    for row in rows:
        c, t = row["case"], row["tflops"]
        best = max((v for k, v in t.items() if k.startswith("sdpa") and v), default=None)
        cells = [f"{t[b]:.3g}" if t.get(b) else "n/a" for b in BACKENDS]
        speed = [f"{t[b] / best:.2f}x" if best and t.get(b) else "n/a" for b in ("triton", "triton packed")]
        lines.append(f"| {c.batch} x {c.heads} | {c.seqlen} | {c.padding:.0%} | " + " | ".join(cells + speed) + " |")
    return "\n".join(lines)


def bench_encoder(device: str, dtype, config_kwargs: dict, shapes: list[tuple[int, int, float]]) -> list[str]:
    """Latency of an XLM-R encoder (random weights) with each attention implementation, and agreement with sdpa."""
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaModel
    from xlmr_compress.kernels import flash_attention as fa

    from xlmr_compress import attention

    config = XLMRobertaConfig(layer_norm_eps=1e-5, type_vocab_size=1, max_position_embeddings=514, pad_token_id=1,
                              **config_kwargs)
    torch.manual_seed(0)
    model = XLMRobertaModel(config, add_pooling_layer=False).to(device, dtype).eval()
    head = ("| batch | length | padding | eager ms | sdpa ms | xlmr_triton ms | xlmr_triton packed ms | packed / sdpa "
            "| max abs diff vs sdpa |")
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    for batch, seqlen, padding in shapes:
        ns = lengths(Case(batch, config.num_attention_heads, seqlen, padding))
        mask = (torch.arange(seqlen)[None, :] < torch.tensor(ns)[:, None]).to(device)
        ids = torch.randint(3, config.vocab_size, (batch, seqlen), device=device).masked_fill(~mask, 1)
        packed, indices = attention.pack(ids, mask.long())
        runs = {
            "eager": ("eager", {"input_ids": ids, "attention_mask": mask.long()}),
            "sdpa": ("sdpa", {"input_ids": ids, "attention_mask": mask.long()}),
            "xlmr_triton": (attention.NAME, {"input_ids": ids, "attention_mask": mask.long()}),
            "packed": (attention.NAME, packed),
        }
        ms, outs = {}, {}
        with torch.inference_mode():
            for name, (implementation, inputs) in runs.items():
                model.set_attn_implementation(implementation)
                out = model(**inputs).last_hidden_state
                outs[name] = fa.pad(out[0], indices, batch, seqlen) if name == "packed" else out
                ms.update(median_ms({name: lambda inputs=inputs: model(**inputs)}, device))
        diff = max((outs[n] - outs["sdpa"])[mask].abs().max().item() for n in ("xlmr_triton", "packed"))
        lines.append(f"| {batch} | {seqlen} | {padding:.0%} | {ms['eager']:.2f} | {ms['sdpa']:.2f} | "
                     f"{ms['xlmr_triton']:.2f} | {ms['packed']:.2f} | {ms['sdpa'] / ms['packed']:.2f}x | {diff:.1e} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--interpret-smoke", action="store_true",
                    help="run the script's code path on tiny shapes in Triton's interpreter on the CPU (no GPU needed)")
    args = ap.parse_args(argv)
    if args.interpret_smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton
    import torch
    from xlmr_compress.kernels import flash_attention as fa

    if not args.interpret_smoke and not torch.cuda.is_available():
        print("error: benchmarks/attention.py measures GPU kernels and there is no CUDA device here "
              "(python -m benchmarks.attention --interpret-smoke checks the script on the CPU)", file=sys.stderr)
        return 2
    if not fa.available():
        print("error: triton is not installed: pip install triton", file=sys.stderr)
        return 2

    if args.interpret_smoke:
        device, dtype, tolerance = "cpu", torch.float32, 1e-3
        cases = [Case(2, 2, 32, 0.25, head_dim=32), Case(2, 2, 32, 0.25, head_dim=32, backward=True)]
        encoder = {"vocab_size": 100, "hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                   "intermediate_size": 128}
        shapes = [(2, 24, 0.25)]
    else:
        device, dtype, tolerance = "cuda", torch.float16, 2e-2
        cases = [Case(b, h, n, p, backward=bwd) for bwd in (False, True) for b, h in SHAPES for n in LENGTHS
                 for p in PADDINGS]
        encoder = {"vocab_size": 250002, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                   "intermediate_size": 3072}
        shapes = [(1, 128, 0.0)] + [(b, n, p) for b, n in ((32, 128), (32, 512)) for p in (0.0, 0.5)]

    rows, failures, refused = bench_attention(cases, device, dtype, tolerance)
    forward = attention_table([r for r in rows if not r["case"].backward])
    backward = attention_table([r for r in rows if r["case"].backward])
    e2e = "\n".join(bench_encoder(device, dtype, encoder, shapes))
    body = (f"Triton {fa.triton.__version__}, CUDA {torch.version.cuda}. "
            f"Attention alone, {dtype} (head size {cases[0].head_dim}), effective TFLOP/s on real tokens "
            "(see the script's docstring), forward:\n\n" + forward + "\n\nForward + backward:\n\n" + backward +
            "".join(f"\n\nn/a for {name}: {why}" for name, why in refused.items()) +
            f"\n\nXLM-R encoder ({encoder['num_hidden_layers']} layers x {encoder['hidden_size']}, random weights, "
            f"{dtype}), forward latency:\n\n" + e2e)
    print(body)
    if failures:
        print("\n".join(["error: outputs disagree with the reference:", *failures]), file=sys.stderr)
        return 1
    if not args.interpret_smoke:
        from benchmarks.results import update_section

        update_section("attention", "Triton fused attention against SDPA", body, "python -m benchmarks.attention")
    return 0


if __name__ == "__main__":
    sys.exit(main())

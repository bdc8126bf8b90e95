"""Quantization study: ONNX Runtime int8 against torch fp32, for speed and size and for accuracy.

    python -m benchmarks.quantize latency   # xlm-roberta-base shape (random weights), batch 1, 128 tokens, 2 threads
    python -m benchmarks.quantize quality   # the SIB-200 teacher: fp32 vs dynamic and static int8, per language

Every variant is a model directory written by the library's own stages and timed or evaluated through
`xlmr_compress.run_bench` (one predictor path for torch and ONNX). Directories are kept in --workdir between runs.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks import SHARED
from benchmarks.models import random_base
from benchmarks.results import update_section
from xlmr_compress import (
    BenchConfig,
    BenchResult,
    DataConfig,
    ExportConfig,
    QuantizeConfig,
    export,
    load_data,
    markdown_table,
    quantize,
    run_bench,
)

COLUMNS = ("variant", "backend", "precision", "p50_ms", "p90_ms", "speedup", "size_mib", "size_ratio")


def build(out: Path, make) -> Path:
    """Write a variant once; later runs reuse the directory."""
    if not out.is_dir():
        print(f"[quantize] building {out.name}", flush=True)
        make(out)
    return out


def latency(workdir: Path, repeats: int) -> str:
    """torch eager fp32, torch int8, ORT fp32 and int8, each with and without ONNX Runtime's fusions."""
    fp32 = build(workdir / "torch-fp32", lambda out: random_base(out, num_labels=7))
    ort_fp32 = build(workdir / "ort-fp32", lambda out: export(fp32, out))
    fused = build(workdir / "ort-fp32-fused", lambda out: export(fp32, out, ExportConfig(optimize=True)))
    variants = [
        fp32,
        build(workdir / "torch-int8", lambda out: quantize(fp32, out, QuantizeConfig(mode="torch-int8"))),
        ort_fp32,
        fused,
        build(workdir / "ort-int8", lambda out: quantize(ort_fp32, out)),
        build(workdir / "ort-int8-fused", lambda out: quantize(fused, out)),
    ]
    config = BenchConfig(batch_sizes=[1], seq_lengths=[128], threads=[2], warmup=3, repeats=repeats, memory=False)
    result = run_bench(variants, config)
    rows = {r["variant"]: r for r in result.rows}
    torch_ms, fp32_mib = rows["torch-fp32"]["p50_ms"], rows["ort-fp32"]["size_mib"]
    checks = []
    for name in ("ort-int8", "ort-int8-fused"):
        speed = rows[name]["p50_ms"] / torch_ms
        size = rows[name]["size_mib"] / fp32_mib
        checks.append(f"- `{name}`: latency {speed:.3f} x torch eager fp32 (target <= 0.25: "
                      f"{'met' if speed <= 0.25 else 'NOT met'}); file {size:.3f} x the fp32 ONNX file "
                      f"(target <= 0.30: {'met' if size <= 0.30 else 'NOT met'})")
    checks.append(int8_floor(result, torch_ms))
    return (f"xlm-roberta-base shape (12 x 768, 250,002-piece vocabulary, random weights, sequence-classification "
            f"head), {rows['torch-fp32']['setting']}, {repeats} interleaved rounds; `-fused` = exported with "
            "`--optimize` (ONNX Runtime's Attention/SkipLayerNorm/BiasGelu fusions); int8 = dynamic, per-channel, "
            "embeddings included.\n\n" + markdown_table([{k: r[k] for k in COLUMNS} for r in result.rows])
            + "\n\n" + "\n".join(checks) + "\n\nMatmul ceilings measured in this run:\n\n"
            + markdown_table(result.ceilings))


def int8_floor(result: BenchResult, torch_ms: float) -> str:
    """The fastest the int8 model could run here: its matmul work at this machine's measured int8 matmul peak."""
    peak = {c["precision"]: c["gflop_per_s"] for c in result.ceilings}
    row = next(r for r in result.rows if r["variant"] == "ort-int8")
    gop = row["gflop_per_seq"] * row["batch"]
    floor_ms = gop / peak["int8"] * 1e3
    verdict = "unreachable on this machine" if floor_ms > 0.25 * torch_ms else "reachable in principle"
    return (f"- floor: {gop:.1f} GOP per batch at this machine's int8 matmul "
            f"peak ({peak['int8']:.0f} GOP/s, ONNX Runtime MatMulInteger, measured in this run; fp32 torch peak "
            f"{peak['fp32']:.0f} GFLOP/s) take at least {floor_ms:.0f} ms = {floor_ms / torch_ms:.2f} x torch eager "
            f"fp32: the 0.25 target is {verdict}")


def quality(workdir: Path, teacher: Path, data_path: str, calibration_size: int, per_split: int | None,
            method: str, keep: int) -> str:
    """Main metric, overall and per language, of the teacher in fp32 and ORT fp32/int8 (dynamic and static, each
    plain and with its `keep` most int8-sensitive MatMuls left in fp32) on the test split."""
    data = load_data(DataConfig(data_path, max_per_split=per_split))
    ort_fp32 = build(workdir / "teacher-ort-fp32", lambda out: export(teacher, out))
    variants = [teacher, ort_fp32]
    for mode, activations, kept in (("dynamic", "uint8", 0), ("dynamic", "uint8", keep), ("static", "uint8", 0),
                                    ("static", "uint8", keep), ("static", "int8", 0)):
        config = QuantizeConfig(mode=mode, activations=activations, calibration_size=calibration_size,
                                calibration_method=method, keep_fp32=kept, eval_split=None)
        name = (f"teacher-int8-{mode}" + ("" if mode == "dynamic" else f"-{method}-{activations}")
                + (f"-keep{kept}" if kept else ""))
        variants.append(build(workdir / name, lambda out, c=config: quantize(ort_fp32, out, c, data)))
    config = BenchConfig(batch_sizes=[1], seq_lengths=[128], threads=[2], warmup=2, repeats=10, memory=False,
                         data_lengths=False)
    result = run_bench(variants, config, data)
    base = result.accuracy[teacher.name]["overall"][result.metric]
    checks = [f"- `{name}`: {result.metric} {a['overall'][result.metric]:.4f}, "
              f"{(base - a['overall'][result.metric]) * 100:+.2f} points lost against fp32 (target <= 1: "
              f"{'met' if base - a['overall'][result.metric] <= 0.01 else 'NOT met'})"
              for name, a in result.accuracy.items() if "int8" in name]
    columns = COLUMNS[:3] + ("size_mib", "size_ratio", "p50_ms", result.metric, f"{result.metric}_delta")
    summary = [{k: r.get(k) for k in columns} for r in result.summary()]
    return (f"Teacher `{teacher}` (e5-small fine-tuned on SIB-200), `{data_path}` {result.task_summary}; "
            f"{calibration_size} train examples sampled across the languages calibrate static int8 ({method}, QDQ, "
            "activations uint8 or int8: `--activations`) and "
            f"rank the MatMuls by int8 error per token; `-keep{keep}` = the {keep} worst kept in fp32 (`--keep-fp32 "
            f"{keep}`); every int8 variant is per-channel with int8 embeddings; latency at batch 1, 128 tokens, 2 "
            "threads.\n\n"
            + markdown_table(summary) + "\n\n" + "\n".join(checks) + f"\n\n{result.metric} per language:\n\n"
            + markdown_table(result.per_language()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("study", choices=["latency", "quality"])
    ap.add_argument("--workdir", default="/work/cache/quantize-bench", help="where variant directories are kept")
    ap.add_argument("--repeats", type=int, default=20, help="timed rounds (latency)")
    ap.add_argument("--teacher", default="/work/cache/teacher-sib200", help="fine-tuned teacher directory (quality)")
    ap.add_argument("--data", default=str(SHARED / "data" / "sib200"), help="task data (quality)")
    ap.add_argument("--calibration-size", type=int, default=128, help="train examples calibrating static int8")
    ap.add_argument("--calibration-method", default="minmax", help="static int8: minmax, entropy or percentile")
    ap.add_argument("--keep-fp32", type=int, default=4, help="MatMuls the -keep variants leave in fp32")
    ap.add_argument("--max-per-split", type=int, help="examples per split, stratified by language (default: all)")
    a = ap.parse_args()
    workdir = Path(a.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if a.study == "latency":
        body = latency(workdir, a.repeats)
        update_section("quantize-latency", "Quantization: int8 latency and size (xlm-roberta-base shape)", body)
    else:
        body = quality(workdir, Path(a.teacher), a.data, a.calibration_size, a.max_per_split, a.calibration_method,
                       a.keep_fp32)
        update_section("quantize-quality", "Quantization: int8 accuracy on SIB-200 (teacher)", body)
    print(body)


if __name__ == "__main__":
    main()

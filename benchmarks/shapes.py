"""Which student shapes can meet a speed bar, before any training: untrained slices of the teacher (k layers, FFN
narrowed by importance) exported, int8-quantized and timed against the teacher in torch and ONNX, at batch 1 over the
data's real lengths. Speed does not depend on the weights, so this picks the recipe's candidates in minutes.

    python -m benchmarks.shapes --teacher runs/teacher-sib200 --shapes 6:768 5:768 4:768 4 --work runs/shapes
"""
from __future__ import annotations

import argparse
from pathlib import Path

from transformers import AutoModelForSequenceClassification, AutoTokenizer

import xlmr_compress as xc
from benchmarks import SHARED
from benchmarks.results import update_section
from xlmr_compress.distillation.student import StudentShape, build_student, select_layers


def built(path: Path, make) -> Path:
    """`path`, made by `make(path)` unless an earlier run left it."""
    if not path.exists():
        make(path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", required=True, help="fine-tuned sequence-classification teacher directory")
    ap.add_argument("--data", default=str(SHARED / "data" / "sib200"), help="task data whose test lengths are timed")
    ap.add_argument("--shapes", nargs="+", default=["6:768", "5:768", "4:768", "4"],
                    help="student shapes as LAYERS[:FFN] (FFN: neurons kept per layer)")
    ap.add_argument("--work", required=True, help="directory for the sliced, exported and quantized models")
    ap.add_argument("--repeats", type=int, default=20, help="timed rounds")
    ap.add_argument("--key", default="shapes-sib200", help="RESULTS.md section key")
    a = ap.parse_args()
    teacher_dir, work = Path(a.teacher), Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir)
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)

    def slice_to(shape: StudentShape):
        def make(path: Path) -> None:
            build_student(teacher, shape).save_pretrained(path)
            tokenizer.save_pretrained(path)
        return make

    variants = [teacher_dir, built(work / "teacher-onnx", lambda p: xc.export(teacher_dir, p, xc.ExportConfig(
        optimize=True)))]
    for spec in a.shapes:
        layers, _, ffn = spec.partition(":")
        name = f"s{layers}" + (f"-ffn{ffn}" if ffn else "")
        kept = select_layers(teacher.config.num_hidden_layers, int(layers))
        shape = StudentShape(kept, ffn=int(ffn) if ffn else None)
        torch_dir = built(work / name, slice_to(shape))
        onnx_dir = built(work / f"{name}-onnx", lambda p, s=torch_dir: xc.export(s, p, xc.ExportConfig(optimize=True)))
        variants.append(built(work / f"{name}-int8", lambda p, s=onnx_dir: xc.quantize(s, p, xc.QuantizeConfig())))
    result = xc.run_bench(variants, xc.BenchConfig(batch_sizes=[1], seq_lengths=[], repeats=a.repeats, memory=False),
                          xc.load_data(xc.DataConfig(path=a.data)))
    rows = result.primary  # the one setting timed: batch 1 over the data's real lengths
    lines = [f"Teacher `{teacher_dir}` against untrained student slices (ONNX with the ORT optimiser, then dynamic "
             f"int8), batch 1 over the real lengths of `{a.data}` test texts, {a.repeats} interleaved rounds. "
             "Accuracy is not measured here: the weights are untrained slices.", "",
             "| variant | backend | precision | p50 ms | p99 ms | vs teacher torch | vs teacher ONNX fp32 |",
             "|---|---|---|---|---|---|---|"]
    torch_ms, onnx_ms = rows[0]["p50_ms"], rows[1]["p50_ms"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['backend']} | {r['precision']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                     f"{torch_ms / r['p50_ms']:.2f}x | {onnx_ms / r['p50_ms']:.2f}x |")
    body = "\n".join(lines)
    update_section(a.key, f"compress: speed of student shapes ({Path(a.data).name})", body)
    print(body)


if __name__ == "__main__":
    main()

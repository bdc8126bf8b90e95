"""Distillation figures: a student with k of the teacher's layers, distilled and trained on labels alone, against
the teacher; written to benchmarks/RESULTS.md.

    python -m benchmarks.distill --teacher /work/cache/teacher-sib200 --data ../shared/data/sib200 --student-layers 6

Both students start from the same teacher layers (same seed, same data, same steps); the distilled one learns from
the teacher's outputs and the labels, the other from the labels alone. Parameters and bytes on disk come from each
model directory, macro-F1 from the full test split (overall and per language), CPU latency from one `run_bench`
that times the three models interleaved, so the ratios share the machine's load.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks import SHARED
from benchmarks.results import update_section
from xlmr_compress import (
    BenchConfig,
    BenchResult,
    DataConfig,
    DistillConfig,
    TaskData,
    distill,
    load_data,
    read_lineage,
    run_bench,
)
from xlmr_compress.distillation.losses import loss_weights

LABELS_ONLY = ["soft=0", "hidden=0", "attention=0", "relations=0", "embedding=0", "cosine=0", "hard=1"]

SELECTIONS = {"even": "evenly spaced", "first": "the bottom ones"}


def train_students(teacher: Path, data: TaskData, work: Path, a: argparse.Namespace) -> dict[str, Path]:
    """The distilled student and the same student trained on labels alone (each skipped when already written)."""
    common = dict(student_layers=a.student_layers, epochs=a.epochs, batch_size=32, learning_rate=a.learning_rate,
                  max_length=a.max_length, freeze_embeddings=True, seed=0, logging_steps=50, resume=True,
                  preset=a.preset)
    students = {}
    distilled = {"cache_teacher": loss_weights(a.preset, a.losses).cacheable(), "augment": a.augment,
                 "layer_selection": a.layer_selection, "unlabeled": a.unlabeled, "losses": a.losses}
    for name, extra in (("distilled", distilled), ("labels-only", {"losses": LABELS_ONLY})):
        out = work / f"student-{a.student_layers}l-{name}"
        if not out.is_dir() and name in a.train:
            distill(teacher, out, DistillConfig(**common, **extra), data)
        students[name] = out
    return students


def tables(teacher: Path, students: dict[str, Path], timing: BenchResult, metric: str) -> str:
    """Markdown: size, latency ratio and test metric per model, then the metric per language."""
    first = read_lineage(students["distilled"])["stages"][-1]["measured"]
    results = {"teacher": first["teacher"]}
    results.update({n: read_lineage(p)["stages"][-1]["measured"] for n, p in students.items()})
    base_f1 = results["teacher"]["test"]["overall"][metric]
    settings = list(dict.fromkeys(r["setting"] for r in timing.rows))
    head = ["model", "layers", "parameters", "bytes on disk"] + [f"p50 ms, {s} (speedup)" for s in settings]
    head += [f"test {metric}", "of teacher"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in results.items():
        timed = [r for r in timing.rows if r["variant"] == variant_of(name, teacher, students)]
        f1 = m["test"]["overall"][metric]
        layers = m.get("layers") or len(m["student_layers"])
        cells = [name, str(layers), f"{m['parameters']:,}", f"{m['bytes_on_disk']:,}"]
        cells += [f"{r['p50_ms']:.1f} ({r['speedup']:.2f}x)" for r in timed]
        cells += [f"{f1:.4f}", f"{f1 / base_f1:.1%}"]
        lines.append("| " + " | ".join(cells) + " |")
    languages = sorted(results["teacher"]["test"]["per_language"])
    per_lang = ["| language | " + " | ".join(results) + " |", "|" + "---|" * (len(results) + 1)]
    for lang in languages:
        per_lang.append(f"| {lang} | " + " | ".join(f"{r['test']['per_language'][lang][metric]:.4f}"
                                                     for r in results.values()) + " |")
    return "\n".join(lines) + f"\n\nTest {metric} per language:\n\n" + "\n".join(per_lang)


def variant_of(name: str, teacher: Path, students: dict[str, Path]) -> str:
    """The bench variant name (directory name) of a table row."""
    return (teacher if name == "teacher" else students[name]).resolve().name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", required=True, help="fine-tuned teacher directory (benchmarks/teacher.py writes one)")
    ap.add_argument("--data", default=str(SHARED / "data" / "sib200"), help="task data (default: SIB-200)")
    ap.add_argument("--student-layers", type=int, default=6, help="teacher layers the student keeps")
    ap.add_argument("--work", default="/work/cache/distill-bench", help="where the students are written (reused)")
    ap.add_argument("--epochs", type=float, default=2.0, help="training epochs of each student")
    ap.add_argument("--learning-rate", type=float, default=1e-4, help="peak learning rate of each student")
    ap.add_argument("--preset", default="fast", help="distillation losses (fast: outputs only, teacher cached on disk)")
    ap.add_argument("--max-length", type=int, default=96, help="tokens per text")
    ap.add_argument("--train-examples", type=int, default=4000, help="seeded subset of the train split (CPU budget)")
    ap.add_argument("--validation-examples", type=int, default=1000, help="seeded subset evaluated after each epoch")
    ap.add_argument("--test-examples", type=int, default=None,
                    help="seeded subset of the test split, stratified by language (default: all of it)")
    ap.add_argument("--repeats", type=int, default=10, help="timed rounds per latency setting")
    ap.add_argument("--train", nargs="*", default=["distilled", "labels-only"],
                    help="students this process trains (run one per process in parallel, then once with none to "
                         "write the table)")
    ap.add_argument("--layer-selection", choices=list(SELECTIONS), default="even",
                    help="which teacher layers the distilled student keeps (DistillConfig.layer_selection)")
    ap.add_argument("--augment", type=int, default=0,
                    help="noisy copies of each train text for the distilled student (DistillConfig.augment)")
    ap.add_argument("--unlabeled", default=None,
                    help="text file the teacher labels for the distilled student (DistillConfig.unlabeled; "
                         "benchmarks/unlabeled.py writes one)")
    ap.add_argument("--losses", nargs="*", default=None,
                    help="NAME=WEIGHT overrides of the preset for the distilled student (DistillConfig.losses)")
    ap.add_argument("--key", help="RESULTS.md section key (default: distill-LAYERS), to keep runs with other settings")
    a = ap.parse_args()
    teacher, work = Path(a.teacher), Path(a.work)
    data = load_data(DataConfig(a.data))
    for split, n in (("train", a.train_examples), ("validation", a.validation_examples)):
        if n < len(data.splits[split]):
            data.splits[split] = data.splits[split].shuffle(seed=0).select(range(n))
    if a.test_examples:
        data.splits["test"] = load_data(DataConfig(a.data, max_per_split=a.test_examples)).splits["test"]
    students = train_students(teacher, data, work, a)
    missing = [str(p) for p in students.values() if not p.is_dir()]
    if missing:
        print(f"not written yet: {', '.join(missing)}; run again without --train when they are")
        return
    timing = run_bench([teacher, *students.values()], BenchConfig(batch_sizes=[1, 8], seq_lengths=[64],
                                                                  data_lengths=False, memory=False, repeats=a.repeats))
    metric = "macro_f1"
    body = (f"Teacher `{teacher}`; students keep {a.student_layers} of its layers (the distilled one: "
            f"{SELECTIONS[a.layer_selection]}; labels-only: evenly spaced; copied), trained "
            f"{a.epochs:g} epochs on {len(data.splits['train'])} `{a.data}` train examples (seeded subset, frozen "
            f"word embeddings, max length {a.max_length}); distilled with preset `{a.preset}` (losses: "
            f"{', '.join(loss_weights(a.preset, a.losses).active())}; T=2)"
            + (f" with {a.augment} noisy copies of each train text that the teacher labels" if a.augment else "")
            + (f" plus the texts of `{a.unlabeled}` that the teacher labels" if a.unlabeled else "")
            + ", or on labels alone. Test split: "
            f"{len(data.splits['test'])} examples, "
            f"{len(data.languages('test'))} languages"
            + (" (seeded subset, stratified by language)" if a.test_examples else "")
            + f". Latency: CPU, fixed 64-token batches, the three models timed "
            f"round-robin in one run ({a.repeats} rounds).\n\n" + tables(teacher, students, timing, metric))
    update_section(a.key or f"distill-{a.student_layers}",
                   f"Distillation: {a.student_layers}-layer student vs teacher ({a.preset}"
                   + (f", {a.augment} augmented copies" if a.augment else "")
                   + (f", {SELECTIONS[a.layer_selection]}" if a.layer_selection != "even" else "")
                   + (", unlabelled text" if a.unlabeled else "")
                   + "".join(f", {item}" for item in a.losses or []) + ")", body)
    print(body)


if __name__ == "__main__":
    main()

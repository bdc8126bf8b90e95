"""Fine-tune the benchmark teacher: the pretrained e5-small encoder (XLM-R layout) on a real multilingual set.

    python -m benchmarks.teacher --data ../shared/data/sib200 --out runs/teacher-sib200

Every quality figure in RESULTS.md starts from this teacher (a transformer trained from scratch barely learns
these sets). Writes the teacher's test metrics, per language, beside the majority-class baseline.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.results import update_section
from xlmr_compress import DataConfig, FinetuneConfig, e5, finetune, load_data, read_lineage
from xlmr_compress.demo import majority_baseline

SHARED = Path(__file__).resolve().parents[2] / "shared"


def table(result: dict, baseline: dict) -> str:
    """Markdown: macro-F1 and accuracy per language, teacher beside the majority baseline."""
    rows = ["| language | macro-F1 | accuracy | majority macro-F1 |", "|---|---|---|---|"]
    entries = [("**all**", result["overall"], baseline["overall"])]
    entries += [(lang, m, baseline["per_language"][lang]) for lang, m in sorted(result["per_language"].items())]
    for lang, m, b in entries:
        rows.append(f"| {lang} | {m['macro_f1']:.4f} | {m['accuracy']:.4f} | {b['macro_f1']:.4f} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(SHARED / "data" / "sib200"),
                    help="task data (default: SIB-200, 31 languages)")
    ap.add_argument("--out", default="runs/teacher-sib200", help="teacher model directory")
    ap.add_argument("--epochs", type=float, default=2.0, help="fine-tuning epochs")
    ap.add_argument("--train-examples", type=int, default=4000, help="seeded subset of the train split (CPU budget)")
    ap.add_argument("--validation-examples", type=int, default=1000, help="seeded subset evaluated after each epoch")
    a = ap.parse_args()
    out = Path(a.out)
    encoder = out.with_name(out.name + ".e5")
    tokenizer = SHARED / "tokenizers" / "xlm-roberta" / "tokenizer.json"
    if not encoder.is_dir():
        e5.convert(encoder, e5.E5Config(tokenizer_file=str(tokenizer) if tokenizer.is_file() else None))
    data = load_data(DataConfig(a.data))
    for split, n in (("train", a.train_examples), ("validation", a.validation_examples)):
        if n < len(data.splits[split]):
            data.splits[split] = data.splits[split].shuffle(seed=0).select(range(n))
    config = FinetuneConfig(epochs=a.epochs, batch_size=32, learning_rate=1e-4, max_length=96, freeze_embeddings=True,
                            seed=0, logging_steps=100, resume=True)
    if not out.is_dir():
        finetune(encoder, out, config, data)
    result = read_lineage(out)["stages"][-1]["measured"]["test"]  # measured by finetune on the saved model
    body = (f"Teacher: e5-small (12 layers x 384, pretrained, XLM-R layout) fine-tuned on `{a.data}` train "
            f"({len(data.splits['train'])} examples, {a.epochs} epochs, frozen word embeddings); test split, "
            f"{len(data.splits['test'])} examples.\n\n" + table(result, majority_baseline(data)))
    update_section("teacher", "Teacher: e5-small fine-tuned", body)
    print(body)


if __name__ == "__main__":
    main()

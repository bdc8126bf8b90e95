"""Fine-tune the benchmark teacher: the pretrained e5-small encoder (XLM-R layout) on a real multilingual set.

    python -m benchmarks.teacher --data ../shared/data/sib200 --out runs/teacher-sib200
    python -m benchmarks.teacher --data ../shared/data/uner --languages Chinese-GSDSIMP Danish-DDT Portuguese-Bosque \
        Serbian-SET Slovak-SNK Swedish-Talbanken --max-length 128 --train-examples 12000 --epochs 3 \
        --head-learning-rate 1e-3 --out runs/teacher-uner --key teacher-uner-12k

Every quality figure in RESULTS.md starts from this teacher (a transformer trained from scratch barely learns
these sets). Writes the teacher's test metrics, per language, beside the majority-class baseline.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks import SHARED
from benchmarks.results import update_section
from xlmr_compress import DataConfig, FinetuneConfig, e5, finetune, load_data, read_lineage
from xlmr_compress.demo import majority_baseline
from xlmr_compress.metrics import MAIN_METRIC
from xlmr_compress.inference.pipeline import CLASSIFY


def table(result: dict, baseline: dict | None, metric: str) -> str:
    """Markdown: every metric per language, the main one beside the majority class where there is one."""
    names = [k for k in result["overall"] if k != "examples"]

    def majority(lang: str | None) -> str:
        if baseline is None:
            return "-"
        return f"{(baseline['overall'] if lang is None else baseline['per_language'][lang])[metric]:.4f}"

    rows = [f"| language | {' | '.join(names)} | examples | majority-class {metric} |",
            "|---|" + "---|" * (len(names) + 2)]
    entries = [("**all**", result["overall"], majority(None))]
    entries += [(lang, m, majority(lang)) for lang, m in sorted(result["per_language"].items())]
    rows += [f"| {lang} | {' | '.join(f'{m[k]:.4f}' for k in names)} | {m['examples']} | {b} |"
             for lang, m, b in entries]
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(SHARED / "data" / "sib200"),
                    help="task data (default: SIB-200, 31 languages)")
    ap.add_argument("--out", default="runs/teacher-sib200", help="teacher model directory")
    ap.add_argument("--epochs", type=float, default=2.0, help="fine-tuning epochs")
    ap.add_argument("--train-examples", type=int, default=4000, help="seeded subset of the train split (CPU budget)")
    ap.add_argument("--validation-examples", type=int, default=1000, help="seeded subset evaluated after each epoch")
    ap.add_argument("--languages", nargs="+", help="keep only these languages (default: all)")
    ap.add_argument("--max-length", type=int, default=96, help="tokens per sequence")
    ap.add_argument("--head-learning-rate", type=float, help="the new head's learning rate (default: the encoder's)")
    ap.add_argument("--key", default="teacher", help="RESULTS.md section key")
    a = ap.parse_args()
    out = Path(a.out)
    encoder = out.with_name(out.name + ".e5")
    tokenizer = SHARED / "tokenizers" / "xlm-roberta" / "tokenizer.json"
    if not encoder.is_dir():
        e5.convert(encoder, e5.E5Config(tokenizer_file=str(tokenizer) if tokenizer.is_file() else None))
    data = load_data(DataConfig(a.data, languages=a.languages))
    for split, n in (("train", a.train_examples), ("validation", a.validation_examples)):
        if n < len(data.splits[split]):
            data.splits[split] = data.splits[split].shuffle(seed=0).select(range(n))
    config = FinetuneConfig(epochs=a.epochs, batch_size=32, learning_rate=1e-4, head_learning_rate=a.head_learning_rate,
                            max_length=a.max_length, freeze_embeddings=True, seed=0, logging_steps=100, resume=True)
    if not out.is_dir():
        finetune(encoder, out, config, data)
    result = read_lineage(out)["stages"][-1]["measured"]["test"]  # measured by finetune on the saved model
    body = (f"Teacher: e5-small (12 layers x 384, pretrained, XLM-R layout) fine-tuned on `{a.data}` train "
            f"({len(data.splits['train'])} examples, {a.epochs} epochs, frozen word embeddings); test split, "
            f"{len(data.splits['test'])} examples.\n\n"
            + table(result, majority_baseline(data) if data.task == CLASSIFY else None, MAIN_METRIC[data.task]))
    update_section(a.key, f"Teacher: e5-small fine-tuned on {Path(a.data).name}", body)
    print(body)


if __name__ == "__main__":
    main()

"""`compress` on a real teacher: the chosen model's speed against the teacher in torch and in ONNX, its test metric
against the teacher's overall and per language, and the search's wall time.

    python -m benchmarks.compress --teacher runs/teacher-sib200 --data ../shared/data/sib200 --out runs/compress-sib200
    python -m benchmarks.compress --teacher runs/teacher-uner --data ../shared/data/uner --max-drop 2 \
        --languages Chinese-GSDSIMP Danish-DDT Portuguese-Bosque Serbian-SET Slovak-SNK Swedish-Talbanken \
        --out runs/compress-uner --key compress-uner
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml

import xlmr_compress as xc
from benchmarks import SHARED
from benchmarks.results import update_section
from xlmr_compress.compression.recipe import default_text


def summary(out: Path, seconds: float, max_drop: float, min_share: float, resumed: bool) -> str:
    """Markdown: the decision, the bars of the issue, the per-language shares, and the report's candidate table."""
    results = json.loads((out / "results.json").read_text())
    metric, test = results["metric"], results["test"]
    rows = {c["model"]: c for c in results["candidates"]}
    chosen = rows[results["chosen"]]
    teacher, best = test["teacher"], test["best"]
    drop = 100 * (teacher["overall"][metric] - best["overall"][metric])
    shares = {lang: best["per_language"][lang][metric] / m[metric] for lang, m in teacher["per_language"].items()
              if m[metric] > 0}
    worst = min(shares, key=shares.get)
    m = results["machine"]
    lines = [
        f"Machine flags: {' '.join(m['flags'])} ({m['cpu']}). Latency: {results['setting']}. Search wall time "
        f"{seconds / 60:.1f} min{' (a rerun: finished candidates reused, the models timed again)' if resumed else ''}"
        f"{'' if resumed else ' from an empty OUT'}. Budget: {max_drop:g} points of {metric} on validation"
        f"{f', every language at {min_share:.0%} of the teacher or more' if min_share else ''}.",
        "",
        f"Chosen: `{results['chosen']}` ({chosen['backend']}, {chosen['precision']}).",
        "",
        "| figure | value |",
        "|---|---|",
        f"| speed-up vs teacher, torch eager fp32 (p50) | {chosen['vs_teacher_torch']:.2f}x |",
        f"| speed-up vs teacher, ONNX fp32 (p50) | {chosen['vs_teacher_onnx']:.2f}x |",
        f"| p50 / p99 ms: teacher torch | {rows['teacher']['p50_ms']:.2f} / {rows['teacher']['p99_ms']:.2f} |",
        f"| p50 / p99 ms: teacher ONNX | {rows['teacher-onnx']['p50_ms']:.2f} / {rows['teacher-onnx']['p99_ms']:.2f} |",
        f"| p50 / p99 ms: chosen | {chosen['p50_ms']:.2f} / {chosen['p99_ms']:.2f} |",
        f"| test {metric}: teacher / chosen | {teacher['overall'][metric]:.4f} / {best['overall'][metric]:.4f} |",
        f"| test drop (points) | {drop:+.2f} |",
        f"| lowest per-language share of the teacher's {metric} | {shares[worst]:.1%} ({worst}) |",
        f"| languages below 95% of the teacher | {sum(s < 0.95 for s in shares.values())} of {len(shares)} |",
        "",
        "The search's report (candidates on the validation split, the path taken, the test split):",
        "",
        (out / "report.md").read_text().split("\n", 2)[2].replace("](pareto.png)", f"]({out}/pareto.png)"),
    ]
    return "\n".join(lines)


def with_unlabeled(recipe: str | None, unlabeled: str, out: Path) -> str:
    """A copy of the recipe whose distill settings add a file of unlabelled text, written beside OUT."""
    raw = yaml.safe_load(Path(recipe).read_text(encoding="utf-8") if recipe else default_text())
    if not raw.get("distill"):
        raise SystemExit(f"--unlabeled: the recipe {recipe or '(default)'} has no distill stage to add it to")
    raw["distill"].setdefault("settings", {})["unlabeled"] = str(Path(unlabeled).resolve())
    path = out.parent / f"{out.name}.recipe.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return str(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", required=True, help="fine-tuned teacher directory (benchmarks/teacher.py)")
    ap.add_argument("--data", default=str(SHARED / "data" / "sib200"), help="task data (default: SIB-200)")
    ap.add_argument("--out", required=True, help="compress working directory (rerun to resume)")
    ap.add_argument("--max-drop", type=float, default=1.0, help="budget in points of the main metric")
    ap.add_argument("--min-language-share", type=float, default=0.0,
                    help="floor per language on validation, as a share of the teacher's (0: off)")
    ap.add_argument("--train-examples", type=int, default=4000, help="seeded training subset (CPU budget)")
    ap.add_argument("--recipe", help="recipe YAML (default: the shipped one)")
    ap.add_argument("--languages", nargs="+", help="keep only these languages (default: all)")
    ap.add_argument("--unlabeled", help="text the teacher labels for the students, added to the recipe's distill "
                                        "settings (benchmarks/unlabeled.py writes one)")
    ap.add_argument("--key", default="compress-sib200", help="RESULTS.md section key")
    a = ap.parse_args()
    resumed = (Path(a.out) / "candidates").is_dir()
    start = time.perf_counter()
    recipe = with_unlabeled(a.recipe, a.unlabeled, Path(a.out)) if a.unlabeled else a.recipe
    config = xc.CompressConfig(max_drop=a.max_drop, min_language_share=a.min_language_share, recipe=recipe,
                               train_examples=a.train_examples)
    xc.compress(a.teacher, a.out, config, xc.DataConfig(a.data, languages=a.languages))
    seconds = time.perf_counter() - start
    body = summary(Path(a.out), seconds, a.max_drop, a.min_language_share, resumed)
    update_section(a.key, f"compress --max-drop {a.max_drop:g}: {Path(a.data).name}", body)
    print(body)


if __name__ == "__main__":
    main()

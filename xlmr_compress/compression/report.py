"""The compress report: every candidate (validation metric, overall and as each language's share of the teacher's,
latency p50/p99, size, memory, share of this machine's ceiling), the path the search took, and the test split of the
teacher and of best, overall and per language."""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

from .. import data as data_mod
from ..measure.report import markdown_table, plot_pareto
from ..runtime import evaluate

COLUMNS = ("backend", "precision", "p50_ms", "p99_ms", "size_mib", "peak_mib", "ceiling_pct")


def write_report(out: Path, search: Any, config: Any, teacher: Path, scored: list[dict], rows: dict[str, dict],
                 chosen: dict | None, best: Path | None, task_data: data_mod.TaskData) -> Path:
    """Write report.md, results.json and pareto.png into OUT; return the report's path."""
    metric = search.metric
    validation = search.state["validation"]
    teacher_p50, onnx_p50 = rows["teacher"]["p50_ms"], rows["teacher-onnx"]["p50_ms"]
    table = []
    # when every lossy step was skipped, the teacher is itself the torch candidate: one row for it
    for label in dict.fromkeys(("teacher", "teacher-onnx", *[c["name"] for c in scored])):
        row = rows[label]
        weakest = search.weakest(validation["teacher"], validation[label])
        entry = {"model": label, metric: validation[label]["overall"][metric],
                 "drop_points": 100 * (validation["teacher"]["overall"][metric] - validation[label]["overall"][metric]),
                 "weakest_language": f"{weakest[0]} {weakest[1]:.1%}" if weakest else None,
                 **{k: row.get(k) for k in COLUMNS},
                 "vs_teacher_torch": teacher_p50 / row["p50_ms"], "vs_teacher_onnx": onnx_p50 / row["p50_ms"]}
        entry["chosen"] = bool(chosen and chosen["name"] == label)
        table.append(entry)
    test = {}
    if "test" in task_data.splits:
        search.progress.log("scoring the test split once, on the teacher and on best")
        test["teacher"] = evaluate(teacher, task_data, "test", max_length=config.max_length, stride=config.stride)
        if best is not None:
            test["best"] = evaluate(best, task_data, "test", max_length=config.max_length, stride=config.stride)
    search.progress.step(search.progress.total - search.progress.done)
    plot_rows = [{"variant": t["model"], "p50_ms": t["p50_ms"], "size_mib": t["size_mib"], metric: t[metric]}
                 for t in table]
    plot_pareto(plot_rows, metric, out / "pareto.png", rows["teacher"]["setting"])
    results = {"metric": metric, "max_drop_points": config.max_drop, "min_language_share": config.min_language_share,
               "gain_not_spent_points": search.gain, "setting": rows["teacher"]["setting"],
               "machine": machine(), "candidates": table,
               "validation_language_shares": {name: search.shares(validation["teacher"], result)
                                              for name, result in validation.items()},
               "path": search.path,
               "chosen": chosen["name"] if chosen else None, "test": test}
    (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False, default=str) + "\n")
    report = out / "report.md"
    report.write_text(markdown(results, table, test, metric), encoding="utf-8")
    return report


def machine() -> dict:
    """The CPU and its instruction-set flags that matter for int8 and fused kernels, written with every figure."""
    flags: list[str] = []
    model = platform.processor()
    if Path("/proc/cpuinfo").is_file():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not flags:
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                present = set(line.split(":", 1)[1].split())
                flags = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in present]
                break
    return {"cpu": model, "cores": os.cpu_count(), "flags": flags}


def markdown(results: dict, table: list[dict], test: dict, metric: str) -> str:
    """The report as Markdown."""
    m = results["machine"]
    floor = results.get("min_language_share")
    languages = f", every language keeping at least {floor:.0%} of the teacher's" if floor else ""
    gain = results.get("gain_not_spent_points")
    if gain:
        languages += (f"; the kept model gained {gain:.2f} points on validation, which is not spent: candidates are "
                      f"held to a drop of {results['max_drop_points'] - gain:.2f}")
    lines = ["# compress report\n", f"Budget: at most {results['max_drop_points']:g} points of {metric} lost on the "
             f"validation split{languages}. Latency: {results['setting']}. Machine: {m['cpu']}, {m['cores']} cores, "
             f"flags {' '.join(m['flags']) or 'none of avx2/avx512/vnni/amx'}.\n",
             f"Chosen: **{results['chosen'] or 'none within budget'}**.\n", "## Candidates (validation split)\n",
             markdown_table(table), "\n![accuracy against latency](pareto.png)\n", "## The path the search took\n"]
    for step in results["path"]:
        if step.get("choice") == "skipped":
            lines.append(f"- {step['stage']}: skipped")
        elif step.get("choice") == "failed":
            lines.append(f"- {step['candidate']}: not built, left out of the timing ({step['error']})")
        elif step.get("choice") == "exhausted":
            lines.append(f"- {step['stage']}: no candidate within its allowance; went on with the closest, "
                         f"{step['candidate']} ({step['drop']:+.2f} points), and stopped")
        else:
            weakest = step.get("weakest_language")
            languages = f", weakest language {weakest[0]} at {weakest[1]:.1%}" if weakest else ""
            counted = step.get("counted_drop", step["drop"])
            counted = f" ({counted:+.2f} counted from the gain before it)" if counted != step["drop"] else ""
            lines.append(f"- {step['candidate']}: drop {step['drop']:+.2f} points{counted} against an allowance of "
                         f"{step['allowance']:.2f}{languages}: {'kept' if step['kept'] else 'fell back'}")
    if test:
        lines += ["", "## Test split (scored once)\n"]
        names = list(test)
        overall = [{"model": n, **test[n]["overall"]} for n in names]
        lines.append(markdown_table(overall))
        languages = sorted(test["teacher"].get("per_language", {}))
        if languages:
            per = []
            for lang in languages:
                row: dict[str, Any] = {"language": lang}
                for n in names:
                    row[n] = test[n]["per_language"][lang][metric]
                if "best" in test and row["teacher"]:
                    row["best_share_of_teacher"] = row["best"] / row["teacher"]
                per.append(row)
            lines += ["", f"{metric} per language:\n", markdown_table(per)]
    return "\n".join(lines) + "\n"

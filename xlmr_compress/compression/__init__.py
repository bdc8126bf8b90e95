"""`compress`: the fastest model within an accuracy budget, on this machine, in one command.

From a fine-tuned teacher (fine-tuned first when it has no task head), the recipe's lossy stages run with their
fallbacks on the validation split (search.py), every backend of the kept model is timed here with the bench harness
beside the teacher in torch and in ONNX, and the fastest backend within `max_drop` becomes OUT/best. The test split
is scored once, for the report, on the teacher and on best (report.py).
"""
from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path

from .. import data as data_mod
from .. import directory
from ..configs import BenchConfig, CompressConfig
from ..errors import UserError
from ..measure import run_bench
from .recipe import Recipe, load_recipe
from .report import write_report
from .search import FINISH, Search, cost, within_budget

TIE = 0.03  # p50s within 3% of the fastest count as a tie


def compress(src: str | Path, out: str | Path, config: CompressConfig | None = None,
             data: data_mod.TaskData | data_mod.DataConfig | str | None = None) -> Path:
    """Search the recipe for the fastest model within `max_drop`; write OUT/best, report.md, results.json and
    pareto.png. Rerunning the same command resumes: finished candidates are reused."""
    config = config or CompressConfig()
    recipe = load_recipe(config.recipe)
    if config.max_drop < 0:
        raise UserError(f"--max-drop {config.max_drop} is negative: give the points you accept to lose (0 or more)")
    if not 0 <= config.min_language_share <= 1:
        raise UserError(f"--min-language-share {config.min_language_share} is not a share: give one in [0, 1], "
                        "such as 0.95")
    if not 0 <= config.holdout < 1:
        raise UserError(f"--holdout {config.holdout} is not a share below 1: give one in [0, 1), such as 0.1")
    if data is None:
        raise UserError("compress scores candidates on task data: pass --data (with train and validation splits)")
    task_data = data if isinstance(data, data_mod.TaskData) else data_mod.load_data(data)
    if "train" not in task_data.splits:
        raise UserError("the data has no train split: compress trains its candidates on train; add a train file")
    if "validation" not in task_data.splits and not config.holdout:
        raise UserError("the data has no validation split to select candidates on: add a dev file, or give "
                        "--holdout 0.1 to hold out a share of train")
    info = directory.inspect(src)
    if info.task is not None:
        directory.check_head(info, task_data.task, task_data.label_names)
    out = Path(out).resolve()
    if out.is_file():
        raise UserError(f"{out} is a file: give a directory for --out")
    created = not out.exists()
    try:
        return _search(src, out, config, recipe, task_data, info)
    except BaseException:
        if created and not any(out.glob("candidates/*")):  # nothing to resume: leave no directory behind
            shutil.rmtree(out, ignore_errors=True)
        raise


def _search(src: str | Path, out: Path, config: CompressConfig, recipe: Recipe, task_data: data_mod.TaskData,
            info: directory.ModelInfo) -> Path:
    """compress() once its inputs are checked: the search in OUT, the timing, the choice and the report."""
    search_data = searchable(task_data, config)
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe.yaml").write_text(recipe.text, encoding="utf-8")
    search = Search(out, search_data, recipe, config.max_drop, config.max_length, config.min_language_share,
                    config.stride)
    search.claim({"teacher": directory.fingerprint(src), "data": search_data.fingerprint(),
                  "max_length": config.max_length, "stride": config.stride})
    if "validation" not in task_data.splits:
        search.progress.log(f"the data has no validation split: {len(search_data.splits['validation'])} train examples "
                            f"({config.holdout:.0%}, seeded) are held out to select on; a teacher that trained on them "
                            "scores higher there, so the search errs on the safe side")
    teacher = with_head(src, info, search, recipe)
    name, model = search.lossy(teacher)
    candidates = search.backends(name, model)
    reference = search.build("export", teacher, "teacher+export-reference", {"optimize": False})
    rows, accuracy = time_candidates(search, teacher, reference, candidates, config)
    base = search.score("teacher", teacher)
    scored = []
    for cname in candidates:
        drop, weakest = search.drop(base, accuracy[cname]), search.weakest(base, accuracy[cname])
        within = within_budget(search.counted(drop), config.max_drop) and search.languages_hold(weakest)
        scored.append({"name": cname, "drop": drop, **rows[cname], "weakest_language": weakest, "within": within})
    chosen = choose(scored)
    best = None
    if chosen is not None:
        best = publish(candidates[chosen["name"]], out / "best", config, chosen)
    report = write_report(out, search, config, teacher, scored, rows, chosen, best, task_data)
    if chosen is None:
        closest = min(scored, key=lambda c: c["drop"])
        weakest = closest["weakest_language"]
        languages = f", {weakest[0]} keeping {weakest[1]:.1%} of the teacher" if config.min_language_share and weakest \
            else ""
        floor = f" and --min-language-share {config.min_language_share:g}" if config.min_language_share else ""
        raise UserError(f"no candidate is within --max-drop {config.max_drop:g}{floor}: the closest is "
                        f"{closest['name']} at {closest['drop']:.2f} points{languages} (report: {report}); loosen "
                        "the budget or add gentler candidates to the recipe")
    return out / "best"


def choose(scored: list[dict], tie: float = TIE) -> dict | None:
    """The fastest candidate within budget; among those within `tie` of its p50, the smallest on disk (then the one
    that loses least), so a rerun does not flip between two models that time the same."""
    within = [c for c in scored if c["within"]]
    if not within:
        return None
    fastest = min(c["p50_ms"] for c in within)
    return min((c for c in within if c["p50_ms"] <= fastest * (1 + tie)),
               key=lambda c: (c["size_mib"], c["drop"], c["p50_ms"]))


def searchable(task_data: data_mod.TaskData, config: CompressConfig) -> data_mod.TaskData:
    """The data the stages see: train (optionally a seeded subset) and validation (a seeded share of train where the
    data has none), never test."""
    train, validation = task_data.splits["train"], task_data.splits.get("validation")
    if validation is None:
        held = train.train_test_split(test_size=config.holdout, seed=config.seed)
        train, validation = held["train"], held["test"]
    if config.train_examples and config.train_examples < len(train):
        train = train.shuffle(seed=config.seed).select(range(config.train_examples))
    return data_mod.TaskData(task_data.task, task_data.label_names,
                             {"train": train, "validation": validation})


def with_head(src: str | Path, info: directory.ModelInfo, search: Search, recipe: Recipe) -> Path:
    """The teacher: MODEL itself, or MODEL fine-tuned first when it is a bare encoder."""
    if info.task is not None:
        return Path(src)
    search.progress.log(f"{src} has no task head: fine-tuning it first, as finetune would")
    search.progress.total += cost("finetune", recipe.finetune)
    return search.build("finetune", src, "teacher", recipe.finetune)


def time_candidates(search: Search, teacher: Path, reference: Path, candidates: dict[str, Path],
                    config: CompressConfig) -> tuple[dict[str, dict], dict[str, dict]]:
    """Latency, size and memory of every candidate beside the teacher in torch and ONNX, in one interleaved run,
    and their validation scores; rows keyed by candidate name (and "teacher", "teacher-onnx")."""
    dirs = {"teacher": teacher, "teacher-onnx": reference, **candidates}
    links = search.out / "timed"
    shutil.rmtree(links, ignore_errors=True)
    links.mkdir()
    for label, path in dirs.items():  # the bench names variants by directory name: give each its label
        (links / label).symlink_to(Path(path).resolve(), target_is_directory=True)
    bench_config = BenchConfig(batch_sizes=[config.latency_batch],
                               seq_lengths=[config.latency_length] if config.latency_length else [],
                               data_lengths=config.latency_length is None, threads=[config.threads] if config.threads
                               else None, repeats=config.repeats, warmup=3, memory=config.memory, split="validation",
                               max_length=config.max_length, stride=config.stride, baseline="teacher")
    search.progress.log(f"timing {len(dirs)} models on this machine, interleaved ({config.repeats} rounds)")
    result = run_bench([links / label for label in dirs], bench_config, search.data)
    search.progress.step(FINISH / 2)
    shutil.rmtree(links, ignore_errors=True)
    rows = {r["variant"]: r for r in result.primary}
    for label, accuracy in result.accuracy.items():
        search.state["validation"].setdefault(label, accuracy)
    return rows, result.accuracy


def publish(chosen: Path, best: Path, config: CompressConfig, measured: dict) -> Path:
    """Copy the chosen candidate to OUT/best atomically, its lineage extended by the compress decision."""
    with directory.atomic_output(best, overwrite=True) as tmp:
        shutil.copytree(chosen, tmp, dirs_exist_ok=True)
        directory.record_stage(tmp, "compress", asdict(config), parent=chosen,
                               metrics={k: v for k, v in measured.items() if k != "within"})
    return best

"""The accuracy-aware search: lossy stages with fallbacks on the validation split, then every backend timed here.

Each lossy stage may spend its share of the budget (shares not spent carry over): its candidates are tried from the
most compression to the least, and the first within the running allowance is kept. A stage that gains on validation
does not lend its gain to the stages after it: their cost is counted from the gain, since a gain on a few thousand
examples is mostly the validation split's noise. Every candidate is a finished model directory under OUT/candidates,
named by the chain of settings that made it, so a rerun reuses it; validation scores are kept in OUT/state.json. The
stages never see the test split.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from .. import data as data_mod
from ..directory import read_lineage
from ..errors import UserError
from ..metrics import MAIN_METRIC
from ..runtime import evaluate
from ..stages import STAGES
from ..train import changed_settings, checkpoint_dir, run_settings
from .recipe import Recipe, slug


class Progress:
    """One line per event: which candidate and stage, the time spent, and an estimate of what is left, from the time
    per unit of work so far (a training run is one unit, other work a fraction: see `cost`)."""

    def __init__(self, total: float) -> None:
        self.start, self.total, self.done = time.perf_counter(), total, 0.0

    def log(self, message: str) -> None:
        elapsed = time.perf_counter() - self.start
        left = "" if not self.done else f", about {_minutes(elapsed / self.done * (self.total - self.done))} left"
        print(f"[compress {_minutes(elapsed)}{left}] {message}", flush=True)

    def step(self, units: float) -> None:
        """Work of `units` is done."""
        self.done = min(self.done + units, self.total)

    def skip(self, units: float) -> None:
        """Planned work of `units` will not run (a stage kept an earlier candidate, or the search stopped)."""
        self.total = max(self.total - units, self.done)


TRAINING = ("finetune", "distill", "prune")
FINISH = 0.5  # timing every model and scoring the test split, in training runs


def changed_options(model_dir: Path, options: dict[str, Any]) -> list[str]:
    """The options that a finished candidate was made with other than `options` (the recipe was edited since)."""
    stages = read_lineage(model_dir)["stages"]
    recorded = stages[-1].get("options", {}) if stages else {}
    return [key for key, value in options.items()
            if key in recorded and recorded[key] != json.loads(json.dumps(value, default=str))]


def cost(stage: str, options: dict[str, Any] | None) -> float:
    """Rough work of one candidate, in training runs: what the estimate of time left weighs candidates by."""
    if options is None:
        return 0.0
    if stage in TRAINING and (stage != "prune" or options.get("recover")):
        return 1.0
    return 0.1


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


class Search:
    """State of one compress run in its working directory: candidates built, validation scores, the path taken."""

    def __init__(self, out: Path, data: data_mod.TaskData, recipe: Recipe, max_drop: float, max_length: int,
                 min_share: float = 0.0, stride: int = 32) -> None:
        self.out, self.data, self.recipe = out, data, recipe
        self.max_drop, self.max_length, self.min_share, self.stride = max_drop, max_length, min_share, stride
        self.gain = 0.0  # the largest validation gain of a kept model, which later candidates may not spend
        self.metric = MAIN_METRIC[data.task]
        self.candidates = out / "candidates"
        self.state_file = out / "state.json"
        self.state = json.loads(self.state_file.read_text()) if self.state_file.is_file() else {"validation": {}}
        self.path: list[dict] = []
        planned = sum(self._planned(s.candidates, s) for s in recipe.steps)
        self.progress = Progress(planned + sum(cost(b["stage"], b) for b in recipe.backends) + FINISH)

    def claim(self, inputs: dict[str, Any]) -> None:
        """Record what this search is of; refuse an OUT that holds the search of another teacher, data or length,
        whose candidates and scores would be reused wrongly."""
        recorded = self.state.get("inputs") or inputs
        changed = [key for key, value in inputs.items() if recorded.get(key) != value]
        if changed:
            raise UserError(f"{self.out} holds a search with another {', '.join(changed)}: give a new --out, or "
                            "delete it to start over")
        self.state["inputs"] = inputs
        self._save_state()

    def build(self, stage: str, src: Path, name: str, options: dict[str, Any]) -> Path:
        """The candidate directory `name`, made by `stage` from `src` unless a previous run finished it."""
        out = self.candidates / name
        units = cost(stage, options)
        changed = changed_options(out, options) if out.is_dir() else []
        if changed:
            self.progress.log(f"{name}: the recipe changed {', '.join(changed)} since it was made: making it again, "
                              "and the candidates made from it")
            self._forget(name)
        if out.is_dir():
            self.progress.skip(units)  # no time spent: left out of the time per unit
            self.progress.log(f"{name}: reusing the finished candidate")
            return out
        command = STAGES[stage]
        config_cls = command.config_class()
        fields = {f.name for f in dataclasses.fields(config_cls)}
        config = config_cls(**{**options, **({"resume": True} if "resume" in fields else {})})
        checkpoints = checkpoint_dir(out)
        stale = changed_settings(checkpoints, run_settings(src, config, self.data))
        if stale:
            self.progress.log(f"{name}: the interrupted run was started with other {', '.join(stale)}: starting over")
            shutil.rmtree(checkpoints)
        self.progress.log(f"{name}: running {stage} {json.dumps(options, default=str)}")
        started = time.perf_counter()
        command.function()(src, out, config, self.data if command.data else None)
        self.progress.step(units)
        self.progress.log(f"{name}: {stage} done in {_minutes(time.perf_counter() - started)}")
        return out

    def score(self, name: str, model_dir: Path) -> dict:
        """Validation metrics of a candidate (cached in state.json)."""
        if name not in self.state["validation"]:
            self.progress.log(f"{name}: evaluating on {len(self.data.splits['validation'])} validation examples")
            self.state["validation"][name] = evaluate(model_dir, self.data, "validation",
                                                      max_length=self.max_length, stride=self.stride)
            self._save_state()
        return self.state["validation"][name]

    def drop(self, reference: dict, result: dict) -> float:
        """Points of the main metric lost against the reference (negative: a gain)."""
        return 100 * (reference["overall"][self.metric] - result["overall"][self.metric])

    def shares(self, reference: dict, result: dict) -> dict[str, float]:
        """The share of the reference's metric that each language keeps (languages the reference scores above 0)."""
        ref, got = reference.get("per_language", {}), result.get("per_language", {})
        return {lang: got[lang][self.metric] / ref[lang][self.metric] for lang in ref
                if lang in got and ref[lang][self.metric] > 0}

    def weakest(self, reference: dict, result: dict) -> tuple[str, float] | None:
        """The language that keeps the smallest share of the reference's metric, and that share (None: no languages)."""
        shares = self.shares(reference, result)
        return min(shares.items(), key=lambda item: item[1]) if shares else None

    def counted(self, drop: float) -> float:
        """A candidate's drop counted from the best validation gain kept so far, which it may not spend."""
        return drop + self.gain

    def languages_hold(self, weakest: tuple[str, float] | None) -> bool:
        """Whether every language keeps at least min_share of the teacher's metric."""
        return weakest is None or weakest[1] >= self.min_share - 1e-9

    def lossy(self, teacher: Path) -> tuple[str, Path]:
        """Run the lossy steps with their fallbacks; the name and directory of the torch model kept."""
        base = self.score("teacher", teacher)
        name, current, allowance = "teacher", teacher, 0.0
        for step in self.recipe.steps:
            allowance += step.share * self.max_drop
            tried: list[tuple[float, str, Path]] = []
            for i, options in enumerate(step.candidates):
                if options is None:
                    self.path.append({"stage": step.stage, "choice": "skipped", "allowance": allowance})
                    self.progress.log(f"{step.stage}: skipped (every candidate before cost more than its share)")
                    break
                cname = f"{step.stage}-{slug(options)}" if name == "teacher" else f"{name}+{step.stage}-{slug(options)}"
                built = self.build(step.stage, current, cname, {**step.settings, **options})
                result = self.score(cname, built)
                drop, weakest = self.drop(base, result), self.weakest(base, result)
                counted = self.counted(drop)
                kept = counted <= allowance and self.languages_hold(weakest)
                self.path.append({"stage": step.stage, "candidate": cname, "options": options, "drop": drop,
                                  "counted_drop": counted, "allowance": allowance, "weakest_language": weakest,
                                  "min_share": self.min_share, "kept": kept})
                self.progress.log(f"{cname}: validation drop {drop:+.2f} points"
                                  + (f" ({counted:+.2f} counted from the gain before it)" if self.gain else "")
                                  + f", allowance {allowance:.2f}"
                                  + (f", weakest language {weakest[0]} at {weakest[1]:.1%}" if weakest else "")
                                  + (f" (floor {self.min_share:.0%})" if self.min_share else "")
                                  + (": kept" if kept else ": falling back"))
                if kept:
                    name, current, self.gain = cname, built, max(self.gain, -drop)
                    self.progress.skip(self._planned(step.candidates[i + 1:], step))
                    break
                tried.append((drop, cname, built))
            else:
                drop, name, current = min(tried, key=lambda t: t[0])
                self.path.append({"stage": step.stage, "choice": "exhausted", "candidate": name, "drop": drop})
                self.progress.log(f"{step.stage}: no candidate within its allowance and no null to skip it: the "
                                  f"search goes on with the closest, {name} ({drop:+.2f} points), and stops here")
                later = self.recipe.steps[self.recipe.steps.index(step) + 1:]
                self.progress.skip(sum(self._planned(s.candidates, s) for s in later))
                return name, current
        return name, current

    @staticmethod
    def _planned(candidates: list, step: Any) -> float:
        return sum(cost(step.stage, c and {**step.settings, **c}) for c in candidates)

    def backends(self, name: str, model: Path) -> dict[str, Path]:
        """Every backend of the kept model: torch itself, ONNX exports and int8 quantizations (candidates all)."""
        built = {}
        for spec in self.recipe.backends:
            if spec["stage"] == "torch":
                built[name] = model
                continue
            options = {k: v for k, v in spec.items() if k != "stage"}
            if spec["stage"] == "quantize":
                options.setdefault("eval_split", None)  # compress scores every backend itself, on validation
            cname = f"{name}+{spec['stage']}-{slug({k: v for k, v in options.items() if k != 'eval_split'})}"
            try:
                built[cname] = self.build(spec["stage"], model, cname, options)
            except UserError as e:  # one backend that cannot be made (a parity gate, say) leaves the others to time
                self.path.append({"stage": spec["stage"], "candidate": cname, "choice": "failed", "error": str(e)})
                self.progress.log(f"{cname}: left out of the timing, {spec['stage']} refused it: {e}")
        return built

    def _forget(self, name: str) -> None:
        """Delete candidate `name` and every candidate made from it, with their cached validation scores."""
        for path in self.candidates.iterdir():
            if path.name == name or path.name.startswith(name + "+"):
                shutil.rmtree(path)
                self.state["validation"].pop(path.name, None)
        self._save_state()

    def _save_state(self) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=1, default=str) + "\n")
        os.replace(tmp, self.state_file)


def within_budget(drop: float, max_drop: float) -> bool:
    """Whether a drop in points is within the budget (a hair of float slack, so 0 allows exact ties)."""
    return drop <= max_drop + 1e-9

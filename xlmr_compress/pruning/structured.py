"""The prune stage: score heads and FFN neurons, remove the weakest for real, optionally recover, save."""
from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path

import datasets
from transformers import PreTrainedModel

from .. import directory, importance, surgery
from ..configs import PruneConfig
from ..data import DataConfig, TaskData, collator, encode
from ..distillation import DistillConfig, distill
from ..distillation.losses import loss_weights
from ..errors import UserError
from ..options import check_choices
from ..train import FinetuneConfig, as_task_data, checkpoint_dir, claim_checkpoints, finetune, run_settings


def prune(src: str | Path, out: str | Path, config: PruneConfig | None = None,
          data: TaskData | DataConfig | str | None = None) -> Path:
    """Remove the least important attention heads and FFN neurons of a model directory; write the smaller model."""
    config = config or PruneConfig()
    check_choices(config)
    method = _check(config, data)
    directory.check_output(out, config.overwrite)
    task_data = as_task_data(data) if data is not None else None
    model, tokenizer = directory.load(src)
    before = directory.count_parameters(model)
    shapes = surgery.layer_shapes(model)
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
    surgery.keep(model, heads=keep_heads, ffn=keep_ffn)
    setattr(model.config, directory.SHAPES_KEY, surgery.layer_shapes(model))
    measured = {"parameters_before": before, "importance": method, "shapes": surgery.layer_shapes(model)}

    with directory.atomic_output(out, config.overwrite) as tmp:
        if config.recover:
            work = checkpoint_dir(out)  # beside OUT, not in tmp: a killed recovery resumes from its checkpoints
            claim_checkpoints(work, run_settings(src, config, task_data))
            recovered = recover(model, tokenizer, task_data, work, config, src)
            measured.update({k: v for k, v in directory.read_lineage(recovered)["stages"][-1]["measured"].items()
                             if k in ("validation", "test")})
            for f in recovered.iterdir():
                f.rename(tmp / f.name)
            shutil.rmtree(work)
        else:
            directory.save_model(model.eval(), tokenizer, tmp)
        options = {**asdict(config), "data": data_name(data)}
        directory.record_stage(tmp, "prune", options, src, measured, model=model)
    return Path(out)


def recover(model: PreTrainedModel, tokenizer: object, task_data: TaskData, work: Path, config: PruneConfig,
            teacher: str | Path) -> Path:
    """Train the pruned model on the task data, by distillation from its unpruned self or by fine-tuning;
    returns the directory the best epoch (on the validation split) was written to, inside `work`."""
    if config.resume and (work / "recovered" / directory.LINEAGE).is_file():
        return work / "recovered"  # finished before the run was killed
    common = {"epochs": config.recover_epochs, "batch_size": config.batch_size, "max_length": config.max_length,
              "stride": config.stride, "learning_rate": config.recover_learning_rate,
              "freeze_embeddings": config.freeze_embeddings, "seed": config.seed, "resume": config.resume}
    if config.recover_with == "finetune":
        return finetune(model, work / "recovered", FinetuneConfig(**common), task_data, tokenizer=tokenizer)
    directory.save_model(model, tokenizer, work / "student")
    recovered = distill(teacher, work / "recovered",
                        DistillConfig(**common, student=str(work / "student"), losses=config.recover_losses), task_data)
    shutil.rmtree(work / "student")
    return recovered


def importance_batches(model: PreTrainedModel, tokenizer: object, task_data: TaskData,
                       config: PruneConfig) -> Iterator[dict]:
    """Padded, labelled batches of a seeded sample of the scored split."""
    split = task_data.split(config.importance_split)
    size = min(len(split), config.importance_batches * config.batch_size)
    sample = split.shuffle(seed=config.seed).select(range(size))
    one_split = replace(task_data, splits=datasets.DatasetDict({"sample": sample}))
    labels = directory.label_names_of(model.config, task_data.task) or None
    features = encode(one_split, "sample", tokenizer, config.max_length, config.stride, label_names=labels)
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
    if data is None and (config.importance == "taylor" or config.recover):
        raise UserError("Taylor importance and --recover learn from data: give --data, or use --importance magnitude")
    if config.importance_batches < 1 or config.batch_size < 1:
        raise UserError("--importance-batches and --batch-size must be at least 1")
    if config.recover_losses is not None:
        if config.recover_with != "distill":
            raise UserError("--recover-losses weighs distillation losses: drop it or use --recover-with distill")
        loss_weights(overrides=config.recover_losses)
    return "taylor" if config.importance == "taylor" or (config.importance == "auto" and data is not None) \
        else "magnitude"

"""Fine-tuning on transformers.Trainer: teachers, and recovery after pruning."""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, Trainer, TrainingArguments, set_seed

from . import directory, runtime, shard
from .configs import FinetuneConfig
from .console import interactive
from .data import DataConfig, TaskData, collator, encode, load_data
from .errors import UserError
from .metrics import MAIN_METRIC
from .options import check_choices
from .surgery import layer_shapes


def precision_flags(precision: str) -> dict[str, bool]:
    """TrainingArguments' bf16/fp16 flags for a precision choice; 'auto' takes bf16 or fp16 only on a GPU."""
    cuda = torch.cuda.is_available()
    if precision == "auto":
        precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "fp32"
    if precision == "fp16" and not cuda:
        raise UserError("fp16 training needs a CUDA GPU: use --precision fp32 or bf16 on a CPU")
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


def cpu_processes() -> dict[str, Any]:
    """Under torchrun without a GPU, ask for gloo explicitly: otherwise every process trains alone as rank 0."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
        return {"use_cpu": True, "ddp_backend": "gloo"}
    return {}


def training_arguments(checkpoints: Path, config: Any, task: str, **extra: Any) -> TrainingArguments:
    """TrainingArguments shared by fine-tuning and distillation: per-epoch (or per-N-step) eval, best kept."""
    steps = config.save_steps
    return TrainingArguments(
        output_dir=str(checkpoints), num_train_epochs=config.epochs, max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size, per_device_eval_batch_size=config.batch_size * 2,
        learning_rate=config.learning_rate, weight_decay=config.weight_decay, warmup_steps=config.warmup,
        gradient_accumulation_steps=config.grad_accum, seed=config.seed,
        eval_strategy="steps" if steps else "epoch", save_strategy="steps" if steps else "epoch",
        eval_steps=steps, save_steps=steps, save_total_limit=2, load_best_model_at_end=True,
        metric_for_best_model=MAIN_METRIC[task], greater_is_better=True,
        logging_steps=config.logging_steps, report_to="none", remove_unused_columns=False,
        disable_tqdm=not interactive(),
        train_sampling_strategy="group_by_length", dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        **precision_flags(config.precision), **cpu_processes(), **extra,
        **(shard.training_arguments(precision_flags(config.precision)) if config.shard else {}),
    )


class TaskTrainer(Trainer):
    """A Trainer whose evaluation decodes predictions per example (spans, words, answers) and breaks them down."""

    def __init__(self, *args: Any, task_data: TaskData, eval_split: str, max_length: int, stride: int,
                 head_learning_rate: float | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.task_data, self.eval_split, self.max_length, self.stride = task_data, eval_split, max_length, stride
        self.head_learning_rate = head_learning_rate

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Trainer's; under --shard the checkpoint folder is made at once on every rank. Trainer looks for the best
        checkpoint's folder before it writes the shards into it, so ranks disagreed on the best checkpoint and
        deadlocked in load_best_model_at_end (transformers 5.24, SHARDED_STATE_DICT)."""
        super().save_model(output_dir, _internal_call)
        if self.is_fsdp_enabled:
            os.makedirs(output_dir or self.args.output_dir, exist_ok=True)

    def create_optimizer(self, model: Any = None) -> torch.optim.Optimizer:
        """Trainer's AdamW, with the task head's parameters in groups of their own at head_learning_rate if set."""
        optimizer = super().create_optimizer(model)
        if self.head_learning_rate is None:
            return optimizer
        encoder = {id(p) for p in self.accelerator.unwrap_model(self.model).base_model.parameters()}
        groups = [{**group, "params": params, "lr": lr}
                  for group in optimizer.param_groups
                  for params, lr in (([p for p in group["params"] if id(p) in encoder], group["lr"]),
                                     ([p for p in group["params"] if id(p) not in encoder], self.head_learning_rate))
                  if params]
        optimizer.param_groups.clear()
        for group in groups:
            optimizer.add_param_group(group)
        return optimizer

    def evaluate(self, eval_dataset: Any = None, ignore_keys: Any = None, metric_key_prefix: str = "eval") -> dict:
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        predictor = runtime.Predictor.from_torch(model, self.processing_class, str(self.args.device))
        result = runtime.evaluate(predictor, self.task_data, self.eval_split, self.args.eval_batch_size,
                                  self.max_length, self.stride, features=self.eval_dataset)
        model.train(was_training)
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in result["overall"].items()}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


SETTINGS_FILE = "settings.json"  # in OUT.checkpoints: the settings of the run that wrote the checkpoints


def checkpoint_dir(out_dir: str | Path) -> Path:
    """Where an interrupted run's checkpoints live: a sibling of the output, so the output is never half-written."""
    out = Path(out_dir).resolve()
    return out.with_name(out.name + ".checkpoints")


def last_complete_checkpoint(checkpoints: Path) -> str | None:
    """The newest checkpoint whose trainer_state.json (written last by Trainer) is whole: a kill may cut the newest."""
    found = sorted(checkpoints.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]), reverse=True)
    for candidate in found:
        try:
            json.loads((candidate / "trainer_state.json").read_text())
        except (OSError, json.JSONDecodeError):
            continue
        return str(candidate)
    return None


def prepare_checkpoints(out_dir: str | Path, resume: bool, settings: dict) -> tuple[Path, str | None]:
    """The checkpoint directory and the checkpoint to resume from; refuses to silently drop an interrupted run."""
    checkpoints = checkpoint_dir(out_dir)
    last = last_complete_checkpoint(checkpoints)
    if last and not resume:
        raise UserError(f"{checkpoints} holds an interrupted run: pass --resume to continue it, "
                        "or delete it to start over")
    if resume:
        print(f"resuming from {last}" if last else f"no checkpoint in {checkpoints}: starting from the beginning")
    claim_checkpoints(checkpoints, settings)
    return checkpoints, last


def run_settings(src: Any, config: Any, data: TaskData) -> dict:
    """What an interrupted run must be resumed with: its source, its options (but resume and overwrite) and its
    data, as JSON values."""
    options = {k: v for k, v in asdict(config).items() if k not in ("resume", "overwrite")}
    source = str(src) if isinstance(src, (str, Path)) else type(src).__name__
    return json.loads(json.dumps({"source": source, **options, "data": data.fingerprint()}, default=str))


def changed_settings(checkpoints: Path, settings: dict) -> list[str]:
    """The settings an interrupted run in `checkpoints` was started with other than these ([] when none is
    recorded)."""
    file = checkpoints / SETTINGS_FILE
    if not file.is_file():
        return []
    recorded = json.loads(file.read_text())
    return sorted(k for k in {*recorded, *settings} if recorded.get(k) != settings.get(k))


def claim_checkpoints(checkpoints: Path, settings: dict) -> None:
    """Record the settings of the run that writes `checkpoints`; refuses to resume one begun with other settings,
    whose checkpoint would not fit (another student shape, other data)."""
    started = checkpoints.is_dir() and any(p.name != SETTINGS_FILE for p in checkpoints.iterdir())
    changed = changed_settings(checkpoints, settings) if started else []
    if changed:
        raise UserError(f"{checkpoints} holds an interrupted run with other settings ({', '.join(changed)}): rerun "
                        "with the same settings to continue it, or delete it to start over")
    checkpoints.mkdir(parents=True, exist_ok=True)
    tmp = checkpoints / f".{SETTINGS_FILE}.{os.getpid()}"  # each rank of a sharded run writes its own, then renames
    tmp.write_text(json.dumps(settings, indent=1) + "\n")
    os.replace(tmp, checkpoints / SETTINGS_FILE)


def eval_split_of(task_data: TaskData, wanted: str) -> str:
    """The split used for per-epoch evaluation: the one asked for, else validation, else test."""
    for split in (wanted, "validation", "test"):
        if split in task_data.splits:
            return split
    raise UserError("the data has no validation or test split to evaluate on: add a dev/validation file")


def as_task_data(data: TaskData | DataConfig | str | None) -> TaskData:
    """Accept loaded data, a DataConfig, or a path/name; training without data is refused."""
    if data is None:
        raise UserError("this stage trains on task data: give --data (a file, a directory or a data set name)")
    return data if isinstance(data, TaskData) else load_data(data)


def finetune(
    src: str | Path | PreTrainedModel,
    out: str | Path,
    config: FinetuneConfig | None = None,
    data: TaskData | DataConfig | str | None = None,
    tokenizer: Any = None,
) -> Path:
    """Fine-tune an XLM-R (a directory, hub id or model) on task data; write the best checkpoint as a model
    directory."""
    config = config or FinetuneConfig()
    check_choices(config)
    if config.shard:
        shard.check_launch()
    task_data = as_task_data(data)
    if "train" not in task_data.splits:
        raise UserError("the data has no train split: give a directory with a train file")
    directory.check_output(out, config.overwrite)
    parent, model = None, src
    if isinstance(src, (str, Path)):
        parent = src
        set_seed(config.seed)  # a new task head is initialised at load: the seed must cover it, not only training
        model, tokenizer = directory.load(src, task_data.task, label_names=task_data.label_names)
    elif tokenizer is None:
        raise UserError("finetune() with a model object needs its tokenizer too: pass tokenizer=")
    if config.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    eval_split = eval_split_of(task_data, config.eval_split)
    labels = directory.label_names_of(model.config, task_data.task) or None
    train_features = encode(task_data, "train", tokenizer, config.max_length, config.stride, label_names=labels)
    eval_features = encode(task_data, eval_split, tokenizer, config.max_length, config.stride, label_names=labels)
    checkpoints, last = prepare_checkpoints(out, config.resume, run_settings(src, config, task_data))
    trainer = TaskTrainer(
        model=model.train(), args=training_arguments(checkpoints, config, task_data.task),
        train_dataset=train_features, eval_dataset=eval_features, data_collator=collator(task_data.task, tokenizer),
        processing_class=tokenizer,
        callbacks=early_stopping(config.early_stopping),
        task_data=task_data, eval_split=eval_split, max_length=config.max_length, stride=config.stride,
        head_learning_rate=config.head_learning_rate,
    )
    if config.shard:
        shard.check_sharded(trainer)
    trainer.train(resume_from_checkpoint=last)
    trained, extra = shard.finish(trainer) if config.shard else (trainer.model, None)
    if trainer.is_world_process_zero():
        save_trained(trained, tokenizer, task_data, out, "finetune", asdict(config), parent, config, extra)
        shutil.rmtree(checkpoints, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()  # every process returns once the model is written
    return Path(out)


def early_stopping(patience: int | None) -> list:
    """An early-stopping callback when a patience is given."""
    from transformers import EarlyStoppingCallback

    return [EarlyStoppingCallback(early_stopping_patience=patience)] if patience else []


def save_trained(model: PreTrainedModel, tokenizer: Any, task_data: TaskData, out_dir: str | Path, stage: str,
                 options: dict, parent: Any, config: Any, extra: dict | None = None) -> dict:
    """Write a trained model atomically with its metrics on every evaluation split in compression.json."""
    model = model.eval()
    measured: dict[str, Any] = dict(extra or {})
    predictor = runtime.Predictor.from_torch(model, tokenizer, str(model.device))
    for split in ("validation", "test"):
        if split in task_data.splits:
            measured[split] = runtime.evaluate(predictor, task_data, split, max_length=config.max_length,
                                               stride=config.stride)
    model.to("cpu")
    with directory.atomic_output(out_dir, config.overwrite) as tmp:
        if hasattr(model.config, directory.SHAPES_KEY):
            setattr(model.config, directory.SHAPES_KEY, layer_shapes(model))
        directory.save_model(model, tokenizer, tmp)
        directory.record_stage(tmp, stage, options, parent, measured, model=model)
    return measured

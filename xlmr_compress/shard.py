"""Sharded training (`--shard`): PyTorch FSDP2 (`fully_shard`, one unit per encoder layer) through transformers'
Trainer and Accelerate's FSDP plugin, so parameters, gradients and AdamW state are split across the processes of a
torchrun or accelerate launch; the frozen teacher is split the same way and gathered layer by layer in its forward."""
from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from .errors import UserError
from .surgery import layer_shapes, resize_layers

LAYER_CLASSES = ["XLMRobertaLayer"]  # one FSDP unit per encoder layer
STATE_DICT = "SHARDED_STATE_DICT"  # checkpoints through torch.distributed.checkpoint, each rank writing its part


def check_launch() -> None:
    """Refuse --shard in a single process, which has nothing to share the model with (checked before any loading)."""
    if int(os.environ.get("WORLD_SIZE", "1")) < 2:
        raise UserError("--shard splits the model across processes: launch with `torchrun --nproc-per-node N -m "
                        "xlmr_compress.cli ...` (N >= 2) or `accelerate launch`, or drop --shard")


def close_process_group() -> None:
    """Tear down the process group a torchrun launch opened, once this rank is done: left to interpreter exit, gloo's
    threads can abort the process ("terminate called without an active exception") and fail the whole launch."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def training_arguments(precision: dict[str, bool]) -> dict[str, Any]:
    """TrainingArguments keywords that shard the model (`precision`: its bf16/fp16 flags)."""
    check_launch()
    extra: dict[str, Any] = {"fsdp": True, "fsdp_config": {
        "version": 2, "transformer_layer_cls_to_wrap": LAYER_CLASSES, "state_dict_type": STATE_DICT,
        "reshard_after_forward": True}}
    if not torch.cuda.is_available():
        configure_cpu_state(next((name for name, on in precision.items() if on), "no"))
        extra["accelerator_config"] = {"use_configured_state": True}
    return extra


def configure_cpu_state(mixed_precision: str) -> None:
    """Set Accelerate up for FSDP2 over gloo before Trainer builds its Accelerator.

    Accelerate 1.16 switches to FSDP only from an accelerator device type (MULTI_GPU, MULTI_XPU, ...), never from
    MULTI_CPU: on a CPU host `TrainingArguments(fsdp=True)` and `Accelerator(fsdp_plugin=...)` silently train
    unsharded under DDP. FSDP2 itself runs on CPU with gloo, so we build Accelerate's state with the same plugin,
    mark it FSDP, and hand it to Trainer through `accelerator_config={"use_configured_state": True}`.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2, auto_wrap_policy="transformer_based_wrap", state_dict_type=STATE_DICT,
        transformer_cls_names_to_wrap=",".join(LAYER_CLASSES), reshard_after_forward=True)
    AcceleratorState._reset_state(reset_partial_state=True)  # as TrainingArguments does: a new stage, a new state
    Accelerator(cpu=True, mixed_precision=mixed_precision, fsdp_plugin=plugin)
    if mixed_precision != "no":
        plugin.set_mixed_precision(mixed_precision)
    PartialState().distributed_type = DistributedType.FSDP
    state = AcceleratorState()
    state.distributed_type, state.fsdp_plugin = DistributedType.FSDP, plugin


def check_sharded(trainer: Any) -> None:
    """Refuse to train unsharded when --shard was asked for and the engine dropped FSDP."""
    if not trainer.is_fsdp_enabled or not trainer.accelerator.is_fsdp2:
        raise UserError(f"--shard: Accelerate did not enable FSDP2 (distributed type "
                        f"{trainer.accelerator.distributed_type}); launch with torchrun or accelerate launch")


def shard_frozen(model: PreTrainedModel) -> PreTrainedModel:
    """Shard a frozen model (the teacher) in place: a unit per encoder layer, one for the embeddings, the head at the
    root; each unit is gathered for its own forward and freed after it."""
    from torch.distributed.fsdp import fully_shard

    model.eval().requires_grad_(False)
    for layer in model.base_model.encoder.layer:
        fully_shard(layer, reshard_after_forward=True)
    fully_shard(model.base_model.embeddings, reshard_after_forward=True)
    fully_shard(model, reshard_after_forward=True)
    return model


def nbytes(tensors: Iterable[torch.Tensor], local: bool = True) -> int:
    """Bytes of these tensors: this rank's shard of each DTensor (`local`), else their full size."""
    return sum((getattr(t, "_local_tensor", t) if local else t).numel() * t.element_size() for t in tensors)


def footprint(trainer: Any, **frozen: nn.Module) -> dict[str, Any]:
    """Per-rank bytes of the trained model's parameters, of its AdamW state and of frozen models (every rank joins)."""
    import torch.distributed as dist

    models = {"model": trainer.model, **frozen}
    moments = [t for s in trainer.optimizer.state.values() for t in s.values() if torch.is_tensor(t) and t.dim()]
    mine = {"optimizer_bytes": nbytes(moments), **{f"{k}_bytes": nbytes(m.parameters()) for k, m in models.items()}}
    ranks: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(ranks, mine)
    return {"ranks": len(ranks), "full": {f"{k}_bytes": nbytes(m.parameters(), local=False) for k, m in models.items()},
            **{key: [r[key] for r in ranks] for key in mine}}


def finish(trainer: Any, **frozen: nn.Module) -> tuple[PreTrainedModel | None, dict[str, Any]]:
    """After sharded training (every rank calls): the model gathered whole on the main process (None on the others)
    and the per-rank bytes, for compression.json."""
    sharding = footprint(trainer, **frozen)
    return gathered(trainer), {"sharding": sharding}


def gathered(trainer: Any) -> PreTrainedModel | None:
    """The trained model gathered whole as a plain model on the main process (None on the others; all must call)."""
    from torch.distributed.fsdp import FSDPModule

    sharded = trainer.model
    state = trainer.accelerator.get_state_dict(sharded)  # the full state dict, on the main process's CPU
    if not trainer.accelerator.is_main_process:
        return None
    cls = next(c for c in type(sharded).__mro__ if issubclass(c, PreTrainedModel) and not issubclass(c, FSDPModule))
    model = cls(sharded.config)
    resize_layers(model, layer_shapes(sharded))
    expected = model.state_dict()  # training-only submodules (distill's projection) are left out
    missing = [k for k in expected if k not in state]
    if missing:
        raise RuntimeError(f"the gathered state dict lacks {missing[:3]}")
    model.load_state_dict({k: state[k] for k in expected})
    return model

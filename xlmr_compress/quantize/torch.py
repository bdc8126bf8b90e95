"""Torch-side compression for users who stay in PyTorch: dynamic int8 Linear layers, or fp16/bf16 weights.

int8 weights are stored in model.safetensors as plain tensors (int8 values, per-channel scales and zero points), and
config.json is marked with `modeling.QUANTIZED_KEY`, so `xlmr_compress.load` rebuilds the quantized model without
unpickling anything. Dynamic int8 runs on CPU (torch's quantized kernels are CPU-only).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as Int8Linear
from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
from transformers import PretrainedConfig, PreTrainedModel

from .. import artifact, modeling
from ..errors import UserError

DTYPES = {"torch-int8": torch.qint8, "torch-fp16": torch.float16, "torch-bf16": torch.bfloat16}
WEIGHTS = "model.safetensors"


def quantize_torch(model_dir: str | Path, out_dir: str | Path, mode: str = "torch-int8",
                   overwrite: bool = False) -> Path:
    """Write a torch model directory with int8 Linear layers (dynamic quantization) or fp16/bf16 weights."""
    artifact.check_output(out_dir, overwrite)
    with artifact.atomic_output(out_dir, overwrite) as tmp:
        model = write_quantized(model_dir, tmp, mode)
        artifact.record_stage(tmp, "quantize", {"mode": mode}, parent=model_dir, model=model)
    return Path(out_dir).resolve()


def write_quantized(model_dir: str | Path, out_dir: Path, mode: str) -> PreTrainedModel:
    """Load a torch directory, quantize or cast it, and save it (with its tokenizer) into out_dir."""
    if mode not in DTYPES:
        raise UserError(f"unknown torch quantization mode {mode!r}: choose one of {', '.join(DTYPES)}")
    if (Path(model_dir) / "model.onnx").is_file() and not (Path(model_dir) / WEIGHTS).is_file():
        raise UserError(f"{model_dir} is ONNX: torch modes need the torch directory it was exported from "
                        "(or use --mode dynamic / static for ONNX)")
    model, tokenizer = modeling.load(model_dir)
    if getattr(model.config, modeling.QUANTIZED_KEY, None):
        raise UserError(f"{model_dir} is already int8: quantize the fp32 model it came from")
    if mode == "torch-int8":
        model = to_int8(model.float())
        save_int8(model, tokenizer, out_dir)
    else:
        artifact.save_model(model.to(DTYPES[mode]), tokenizer, out_dir)
    return model


def to_int8(model: PreTrainedModel) -> PreTrainedModel:
    """Dynamic int8 quantization of every Linear layer (per-channel weights, activations quantized per batch)."""
    with warnings.catch_warnings():  # torch.ao quantization is deprecated in favour of torchao, but faster on CPU here
        warnings.filterwarnings("ignore", message=".*deprecated.*")
        return quantize_dynamic(model, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)


def save_int8(model: PreTrainedModel, tokenizer: object, out_dir: Path) -> None:
    """Write an int8 model as safetensors: int8 weights with scales and zero points, other tensors as they are."""
    state: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, Int8Linear):
            weight, bias = module.weight(), module.bias()
            state[prefix + "weight"] = weight.int_repr()
            state[prefix + "weight_scale"] = weight.q_per_channel_scales().float()
            state[prefix + "weight_zero_point"] = weight.q_per_channel_zero_points()
            if bias is not None:
                state[prefix + "bias"] = bias.detach()
        else:
            state.update({prefix + k: v.detach() for k, v in module.named_parameters(recurse=False)})
    setattr(model.config, modeling.QUANTIZED_KEY, {"method": "torch-dynamic-int8", "weights": "per-channel"})
    model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(out_dir)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out_dir / WEIGHTS), metadata={"format": "pt"})
    tokenizer.save_pretrained(out_dir)


def load_int8(path: Path, config: PretrainedConfig, task: str) -> PreTrainedModel:
    """Rebuild a model written by save_int8: fp32 skeleton (pruned shapes included), quantized, then its weights."""
    model = modeling.AUTO_CLASSES[task].from_config(config)
    shapes = getattr(config, modeling.SHAPES_KEY, None)
    if shapes:
        modeling.resize_layers(model, shapes)
    model = to_int8(model.eval())
    state = load_file(str(path / WEIGHTS))
    expected = set()
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, Int8Linear):
            keys = [prefix + k for k in ("weight", "weight_scale", "weight_zero_point")]
            if not all(k in state for k in keys):
                raise UserError(f"{path}: {WEIGHTS} lacks the int8 weights of {name}: re-run the quantize stage")
            weight = torch._make_per_channel_quantized_tensor(state[keys[0]], state[keys[1]].double(),
                                                              state[keys[2]], 0)
            module.set_weight_bias(weight, state.get(prefix + "bias"))
            expected.update(keys + [prefix + "bias"])
        else:
            for k, param in module.named_parameters(recurse=False):
                if prefix + k not in state or state[prefix + k].shape != param.shape:
                    raise UserError(f"{path}: {WEIGHTS} does not match config.json at {prefix + k}: "
                                    "re-run the quantize stage")
                param.data.copy_(state[prefix + k])
                expected.add(prefix + k)
    unexpected = sorted(set(state) - expected)
    if unexpected:
        raise UserError(f"{path}: {WEIGHTS} holds tensors this model does not have ({unexpected[:3]}): "
                        "re-run the quantize stage")
    return model.eval()

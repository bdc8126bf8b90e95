"""The torch int8 directory kind: dynamic int8 Linear layers stored as plain safetensors tensors.

int8 weights are stored in model.safetensors as int8 values with per-channel scales and zero points, and config.json
carries `directory.QUANTIZED_KEY`, so the model is rebuilt without unpickling anything. Dynamic int8 runs on CPU
(torch's quantized kernels are CPU-only).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as Int8Linear
from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

from ..directory import QUANTIZED_KEY, SAFETENSORS, ModelInfo, auto_class, register
from ..errors import UserError
from ..surgery import resize_layers


def to_int8(model: Any) -> Any:
    """Dynamic int8 quantization of every Linear layer (per-channel weights, activations quantized per batch)."""
    with warnings.catch_warnings():  # torch.ao quantization is deprecated in favour of torchao, but faster on CPU here
        warnings.filterwarnings("ignore", message=".*deprecated.*")
        return quantize_dynamic(model, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)


def save_int8(model: Any, tokenizer: Any, out_dir: Path) -> None:
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
    setattr(model.config, QUANTIZED_KEY, {"method": "torch-dynamic-int8", "weights": "per-channel"})
    model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(out_dir)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out_dir / SAFETENSORS), metadata={"format": "pt"})
    tokenizer.save_pretrained(out_dir)


@register("torch-int8")
def load_int8(info: ModelInfo, task: str, label_names: list[str] | None = None, **_: Any) -> Any:
    """Rebuild a model written by save_int8: fp32 skeleton (pruned shapes included), quantized, then its weights."""
    model = auto_class(task).from_config(info.config)
    if info.shapes:
        resize_layers(model, info.shapes)
    model = to_int8(model.eval())
    state = load_file(str(info.path / SAFETENSORS))
    expected = set()
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, Int8Linear):
            keys = [prefix + k for k in ("weight", "weight_scale", "weight_zero_point")]
            if not all(k in state for k in keys):
                raise UserError(f"{info.path}: {SAFETENSORS} lacks the int8 weights of {name}: re-run the quantize "
                                "stage")
            weight = torch._make_per_channel_quantized_tensor(state[keys[0]], state[keys[1]].double(),
                                                              state[keys[2]], 0)
            module.set_weight_bias(weight, state.get(prefix + "bias"))
            expected.update(keys + [prefix + "bias"])
        else:
            for k, param in module.named_parameters(recurse=False):
                if prefix + k not in state or state[prefix + k].shape != param.shape:
                    raise UserError(f"{info.path}: {SAFETENSORS} does not match config.json at {prefix + k}: "
                                    "re-run the quantize stage")
                param.data.copy_(state[prefix + k])
                expected.add(prefix + k)
    unexpected = sorted(set(state) - expected)
    if unexpected:
        raise UserError(f"{info.path}: {SAFETENSORS} holds tensors this model does not have ({unexpected[:3]}): "
                        "re-run the quantize stage")
    return model.eval()

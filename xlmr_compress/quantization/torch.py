"""Torch-side compression for users who stay in PyTorch: dynamic int8 Linear layers, or fp16/bf16 weights.

The int8 format itself (how the weights are stored and rebuilt) is `formats/int8.py`; this module only writes it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .. import directory
from ..errors import UserError
from ..formats.int8 import save_int8, to_int8

DTYPES = {"torch-int8": torch.qint8, "torch-fp16": torch.float16, "torch-bf16": torch.bfloat16}


def write_quantized(src: str | Path, out_dir: Path, mode: str) -> Any:
    """Load a torch directory, quantize or cast it, and save it (with its tokenizer) into out_dir."""
    kind = directory.inspect(src).kind
    if kind == "onnx":
        raise UserError(f"{src} is ONNX: torch modes need the torch directory it was exported from "
                        "(or use --mode dynamic / static for ONNX)")
    if kind == "torch-int8":
        raise UserError(f"{src} is already int8: quantize the fp32 model it came from")
    model, tokenizer = directory.load(src)
    if mode == "torch-int8":
        model = to_int8(model.float())
        save_int8(model, tokenizer, out_dir)
    else:
        directory.save_model(model.to(DTYPES[mode]), tokenizer, out_dir)
    return model

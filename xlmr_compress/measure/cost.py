"""The cost model: forward FLOPs from a model's layer shapes (pruned ones included), and this machine's measured
matmul ceiling in fp32/fp16/bf16 (torch) and int8 (ONNX Runtime), against which achieved GFLOP/s are quoted."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .. import directory
from .timing import timed


def flops_per_sequence(config: Any, length: int) -> float:
    """Forward FLOPs of one sequence of `length` tokens: 2 x multiply-adds of every matmul, attention included,
    with per-layer heads and FFN widths of a pruned model (the embedding lookup does no matmul)."""
    hidden, layers = config.hidden_size, config.num_hidden_layers
    shapes = getattr(config, directory.SHAPES_KEY, None) or {}
    head_size = shapes.get("head_size", hidden // config.num_attention_heads)
    heads = shapes.get("heads", [config.num_attention_heads] * layers)
    ffn = shapes.get("ffn", [config.intermediate_size] * layers)
    macs = 0
    for h, width in zip(heads, ffn, strict=True):
        attention = h * head_size
        macs += 4 * length * hidden * attention  # query, key, value and output projections
        macs += 2 * length * length * attention  # scores and the weighted sum of values
        macs += 2 * length * hidden * width  # FFN in and out
    task = directory.task_of(config)
    if task == "sequence-classification":  # dense + out_proj on the first token
        macs += hidden * hidden + hidden * config.num_labels
    else:
        macs += length * hidden * (2 if task == "question-answering" else config.num_labels)
    return 2.0 * macs


def batch_flops(config: Any, batch: dict) -> float:
    """FLOPs the model executes on a padded batch (padding positions are computed too)."""
    rows, width = batch["input_ids"].shape
    return rows * flops_per_sequence(config, width)


def matmul_ceiling(device: str = "cpu", threads: int | None = None, precision: str = "fp32",
                   repeats: int = 30) -> float:
    """This machine's matmul peak in GFLOP/s (GOP/s for int8): best of `repeats` square matmuls after a warm-up.
    fp32/fp16/bf16 with torch; int8 with ONNX Runtime's MatMulInteger, the kernel its int8 graphs run."""
    size = 4096 if device.startswith("cuda") else 1024
    if threads:
        torch.set_num_threads(threads)
    if precision == "int8":
        call = _ort_int8_matmul(size, device, threads)
    else:
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)
        a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))

        def call(_: int) -> torch.Tensor:
            return torch.mm(a, b)
    for _ in range(2):
        timed(call, 0, device)
    return 2 * size**3 / min(timed(call, 0, device) for _ in range(repeats)) / 1e9


def _ort_int8_matmul(size: int, device: str, threads: int | None) -> Callable[[int], Any]:
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from ..formats.onnx import providers

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.integers(-128, 128, (size, size), dtype=np.int8), "B")
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["A", "B"], ["Y"])], "matmul_int8",
                              [helper.make_tensor_value_info("A", TensorProto.UINT8, [size, size])],
                              [helper.make_tensor_value_info("Y", TensorProto.INT32, [size, size])], [weight])
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as formats.onnx: no spinning threads
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
                                   .SerializeToString(), options, providers=providers(device))
    a = rng.integers(0, 256, (size, size), dtype=np.uint8)
    return lambda _: session.run(None, {"A": a})

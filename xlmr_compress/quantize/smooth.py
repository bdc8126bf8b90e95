"""SmoothQuant (Xiao et al., 2023) on an ONNX graph: move per-channel activation outliers into the weights.

int8 gives a whole activation tensor one scale, so a few channels that run 20-100x larger than the rest (LayerNorm and
GELU outputs of BERT-like encoders have them) leave the other channels a handful of levels. For an activation X that
feeds weight MatMuls X @ W_k, per input channel j:

    X @ W_k = (X / s) @ (diag(s) W_k),    s_j = max|X_j| ** alpha / max_k max_n |W_k[j, n]| ** (1 - alpha)

X / s has flatter channels and the weights, quantized per output channel, absorb the range. X / s is a Mul inserted
before the MatMuls: XLM-R's LayerNorm output also feeds the residual, so the scale cannot fold into the LayerNorm.
"""
from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import onnx

from ..export import onnx as export


def weight_matmuls(proto: onnx.ModelProto) -> list[onnx.NodeProto]:
    """MatMul nodes whose second input is a constant weight (the ones int8 quantizes)."""
    weights = {t.name for t in proto.graph.initializer}
    return [n for n in proto.graph.node if n.op_type == "MatMul" and n.input[1] in weights]


def tap(proto: onnx.ModelProto, names: list[str], batches: list[dict[str, np.ndarray]],
        scratch: Path) -> list[dict[str, np.ndarray]]:
    """Values of the named intermediate tensors on each batch, from a copy of the graph that outputs them."""
    import onnxruntime as ort

    tapped = onnx.ModelProto()
    tapped.CopyFrom(proto)
    outputs = {o.name for o in tapped.graph.output}
    tapped.graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
                               for name in names if name not in outputs)
    scratch.mkdir()  # the tapped graph (and its external data) goes here, never beside the input's files
    try:
        path = export.save(tapped, scratch / export.ONNX_FILE)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return [dict(zip(names, session.run(names, batch), strict=True)) for batch in batches]
    finally:
        shutil.rmtree(scratch)


def smooth(proto: onnx.ModelProto, batches: list[dict[str, np.ndarray]], alpha: float,
           scratch: Path) -> tuple[onnx.ModelProto, int]:
    """Smooth every activation that feeds weight MatMuls, with channel ranges measured on `batches`; returns the new
    graph and the number of activations smoothed."""
    nodes = weight_matmuls(proto)
    names = list(dict.fromkeys(n.input[0] for n in nodes))
    x_max = {name: np.zeros(0, dtype=np.float32) for name in names}
    for run in tap(proto, names, batches, scratch):
        for name, x in run.items():
            channel = np.abs(x.reshape(-1, x.shape[-1])).max(axis=0)
            x_max[name] = channel if x_max[name].size == 0 else np.maximum(x_max[name], channel)
    weights = {t.name: t for t in proto.graph.initializer}
    uses = Counter(i for n in proto.graph.node for i in n.input)
    arrays = {n.input[1]: onnx.numpy_helper.to_array(weights[n.input[1]]).astype(np.float32) for n in nodes}
    muls = {}  # first consumer's output -> the Mul that must run before it
    for name in names:
        consumers = [n for n in nodes if n.input[0] == name]
        if any(uses[n.input[1]] > 1 for n in consumers):
            continue  # a weight shared with another node cannot take this activation's scale
        w_max = np.max([np.abs(arrays[n.input[1]]).max(axis=1) for n in consumers], axis=0)
        s = (np.maximum(x_max[name], 1e-5) ** alpha / np.maximum(w_max, 1e-5) ** (1 - alpha)).astype(np.float32)
        inverse, smoothed = f"{name}_smooth_scale", f"{name}_smoothed"
        proto.graph.initializer.append(onnx.numpy_helper.from_array(1 / s, inverse))
        muls[consumers[0].output[0]] = onnx.helper.make_node("Mul", [name, inverse], [smoothed],
                                                             name=f"{name}_smooth")
        for node in consumers:
            node.input[0] = smoothed
            weights[node.input[1]].CopyFrom(onnx.numpy_helper.from_array(arrays[node.input[1]] * s[:, None],
                                                                         node.input[1]))
    ordered = []
    for node in proto.graph.node:
        if node.output[0] in muls:
            ordered.append(muls[node.output[0]])
        ordered.append(onnx.NodeProto.FromString(node.SerializeToString()))  # survives the clearing below
    del proto.graph.node[:]
    proto.graph.node.extend(ordered)
    return proto, len(muls)

"""Torch-side quantization: int8 Linear layers and fp16/bf16 weights, saved as safetensors and reloaded by load()."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.ao.nn.quantized.dynamic import Linear as Int8Linear

from xlmr_compress import UserError, directory, load, runtime
from xlmr_compress import onnx_export as export
from xlmr_compress.tiny import save_tiny
from xlmr_compress.formats.int8 import to_int8
from xlmr_compress.quantization.onnx import QuantizeConfig, quantize

WIDE = {"hidden_size": 128, "intermediate_size": 512}


INT8 = QuantizeConfig(mode="torch-int8")


def outputs(model_dir: Path, batch: dict) -> dict:
    return runtime.Predictor.load(model_dir)(batch)


@pytest.mark.parametrize("task", ["sequence-classification", "question-answering"])
def test_int8_saved_and_reloaded(tmp_path: Path, task: str) -> None:
    src = save_tiny(tmp_path / "src", task, 3, **WIDE)
    out = quantize(src, tmp_path / "int8", INT8)
    model, _ = load(out)
    linears = [m for m in model.modules() if isinstance(m, Int8Linear)]
    assert len(linears) == 2 * 6 + (2 if task == "sequence-classification" else 1)
    assert linears[0].weight().qscheme() == torch.per_channel_affine
    fp32 = runtime.Predictor.load(src)
    batch = export.sample_batch(fp32.tokenizer, task)
    in_memory = runtime.Predictor.from_torch(to_int8(load(src)[0]), fp32.tokenizer)(batch)
    reloaded = outputs(out, batch)
    assert export.max_abs_diff(reloaded, in_memory, batch["attention_mask"]) == 0.0  # saving loses nothing
    assert 0 < export.max_abs_diff(reloaded, fp32(batch), batch["attention_mask"]) < 0.05
    assert directory.size_on_disk(out) < 0.45 * directory.size_on_disk(src)


def test_int8_of_pruned_model(tmp_path: Path) -> None:
    from xlmr_compress.pruning import PruneConfig, prune

    src = save_tiny(tmp_path / "src", "sequence-classification", 3)
    pruned = prune(src, tmp_path / "pruned", PruneConfig(keep_heads=[3, 1], keep_ffn=[48, 16], importance="magnitude"))
    out = quantize(pruned, tmp_path / "int8", INT8)
    model, _ = load(out)
    assert model.roberta.encoder.layer[1].intermediate.dense.weight().shape == (16, 32)
    batch = export.sample_batch(load(pruned)[1], "sequence-classification")
    assert export.max_abs_diff(outputs(out, batch), outputs(pruned, batch), batch["attention_mask"]) < 0.05


@pytest.mark.parametrize(("mode", "dtype"), [("torch-fp16", torch.float16), ("torch-bf16", torch.bfloat16)])
def test_half_precision_saved_and_reloaded(tmp_path: Path, mode: str, dtype: torch.dtype) -> None:
    src = save_tiny(tmp_path / "src", "token-classification", 5, **WIDE)
    out = quantize(src, tmp_path / mode, QuantizeConfig(mode=mode))
    model, _ = load(out)
    assert next(model.parameters()).dtype == dtype
    assert directory.size_on_disk(out) < 0.55 * directory.size_on_disk(src)
    batch = export.sample_batch(load(src)[1], "token-classification")
    assert export.max_abs_diff(outputs(out, batch), outputs(src, batch), batch["attention_mask"]) < 0.05
    stage = json.loads((out / "compression.json").read_text())["stages"][-1]
    assert stage["options"]["mode"] == mode and stage["measured"]["size_ratio"] < 0.55


def test_refuses_int8_twice_onnx_input_and_export(tmp_path: Path) -> None:
    src = save_tiny(tmp_path / "src", "sequence-classification", 3)
    int8 = quantize(src, tmp_path / "int8", INT8)
    with pytest.raises(UserError, match="already int8"):
        quantize(int8, tmp_path / "again", INT8)
    with pytest.raises(UserError, match="torch-int8 directory, which does not export"):
        export.export(int8, tmp_path / "onnx")
    onnx_dir = export.export(src, tmp_path / "fp32-onnx")
    with pytest.raises(UserError, match="is ONNX"):
        quantize(onnx_dir, tmp_path / "again", INT8)
    assert not (tmp_path / "again").exists() and not (tmp_path / "onnx").exists()

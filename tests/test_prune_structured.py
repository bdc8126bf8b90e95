"""Head and FFN pruning on tiny models: shapes, exactness of the removal, importance, targets, recovery, bad input."""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from xlmr_compress import UserError, load
from xlmr_compress.onnx_export import ExportConfig, export
from xlmr_compress.importance import keep_indices, magnitude_scores, taylor_scores
from xlmr_compress.tiny import TINY_WORDS, tiny_model, tiny_tokenizer
from xlmr_compress.pruning import PruneConfig, prune
from xlmr_compress.surgery import keep, layer_shapes


def batch(seed: int = 0, size: int = 8, labels: bool = True) -> dict:
    """Random tiny-tokenizer sentences with some padding."""
    g = torch.Generator().manual_seed(seed)
    words = [" ".join(TINY_WORDS[i] for i in torch.randint(len(TINY_WORDS), (int(n),), generator=g))
             for n in torch.randint(3, 12, (size,), generator=g)]
    enc = dict(tiny_tokenizer()(words, padding=True, return_tensors="pt"))
    if labels:
        enc["labels"] = torch.randint(3, (size,), generator=g)
    return enc


def logits(model, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    """A small CSV sentence-classification set whose label depends on the words, so a model can learn it."""
    folder = tmp_path / "data"
    folder.mkdir()
    for split, n, seed in (("train", 96, 0), ("dev", 32, 1)):
        g = torch.Generator().manual_seed(seed)
        rows = ["text,label"]
        for _ in range(n):
            label = int(torch.randint(3, (1,), generator=g))
            ids = torch.randint(10, (5,), generator=g) + 10 * label
            rows.append(" ".join(TINY_WORDS[i] for i in ids) + f",L{label}")
        (folder / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return folder


def test_pruning_removes_exactly_the_masked_heads_and_neurons():
    model = tiny_model()
    masked = copy.deepcopy(model)
    keep_heads = [torch.tensor([0, 2, 3]), torch.tensor([1])]
    keep_ffn = [torch.arange(0, 64, 2), torch.arange(10)]
    keep(model, heads=keep_heads, ffn=keep_ffn)
    assert layer_shapes(model) == {"head_size": 8, "heads": [3, 1], "ffn": [32, 10]}
    assert model.roberta.encoder.layer[1].attention.self.query.weight.shape == (8, 32)
    # a removed head or neuron contributes exactly what a zeroed output column contributes: nothing
    with torch.no_grad():
        for layer, heads, neurons in zip(masked.roberta.encoder.layer, keep_heads, keep_ffn, strict=True):
            o = layer.attention.output.dense.weight.view(32, 4, 8)
            o[:, [h for h in range(4) if h not in heads.tolist()]] = 0
            d = layer.output.dense.weight
            d[:, [j for j in range(64) if j not in neurons.tolist()]] = 0
    inputs = batch()
    assert torch.allclose(logits(model, inputs), logits(masked, inputs), atol=1e-6)
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in masked.parameters())


def test_surgery_and_importance_import_no_stage():
    """The layer under the stages stands alone: importing it loads no stage (no cycle through prune or distill)."""
    code = ("import sys, xlmr_compress.surgery, xlmr_compress.importance; "
            "print([m for m in sys.modules if m.startswith(('xlmr_compress.pruning', 'xlmr_compress.distillation', "
            "'xlmr_compress.train'))])")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"


def test_prune_shapes_forward_and_round_trip(tmp_path: Path, tiny_dir: Path):
    out = prune(tiny_dir, tmp_path / "pruned", PruneConfig(heads=0.5, ffn=0.25, importance="magnitude"))
    model, _ = load(out)
    assert layer_shapes(model) == {"head_size": 8, "heads": [2, 2], "ffn": [48, 48]}
    assert json.loads((out / "config.json").read_text())["xlmr_compress"]["heads"] == [2, 2]
    inputs = batch(labels=False)
    first = logits(model, inputs)
    assert first.shape == (8, 3) and torch.isfinite(first).all()
    again, _ = load(out)
    assert torch.equal(logits(again, inputs), first)
    stage = json.loads((out / "compression.json").read_text())["stages"][-1]
    assert stage["stage"] == "prune" and stage["measured"]["parameters"] < stage["measured"]["parameters_before"]


def test_pruning_nothing_changes_nothing(tmp_path: Path, tiny_dir: Path):
    out = prune(tiny_dir, tmp_path / "same", PruneConfig(heads=0.0, ffn=0.0))
    original, _ = load(tiny_dir)
    pruned, _ = load(out)
    inputs = batch()
    assert layer_shapes(pruned) == layer_shapes(original)
    assert torch.equal(logits(pruned, inputs), logits(original, inputs))


def test_taylor_importance_ranks_a_useless_head_and_neuron_lowest():
    model = tiny_model(seed=1)
    layer = model.roberta.encoder.layer[0]
    with torch.no_grad():
        # head 2 writes nothing (zero output columns) yet has the largest q/k/v weights
        layer.attention.output.dense.weight.view(32, 4, 8)[:, 2] = 0
        for lin in (layer.attention.self.query, layer.attention.self.key, layer.attention.self.value):
            lin.weight[16:24] *= 10
        # FFN neuron 5 likewise: nothing out, the largest weights in
        layer.output.dense.weight[:, 5] = 0
        layer.intermediate.dense.weight[5] *= 10
    heads, ffn = taylor_scores(model, [batch(seed) for seed in range(4)])
    assert heads[0].argmin() == 2 and heads[0][2] == 0 and (heads[0][[0, 1, 3]] > 0).all()
    assert ffn[0].argmin() == 5
    # the data-free fallback is fooled by the large weights: only the gradient sees the head is useless
    mag_heads, mag_ffn = magnitude_scores(model)
    assert mag_heads[0].argmax() == 2 and mag_ffn[0].argmin() != 5


def test_targets_ratio_counts_and_global_budget():
    scores = [torch.tensor([1.0, 1.0, 1.0, 1.0]), torch.tensor([0.1, 10.0, 0.1, 0.1])]
    per_layer = keep_indices(scores, remove=0.5)
    assert [len(k) for k in per_layer] == [2, 2] and 1 in per_layer[1].tolist()
    assert [len(k) for k in keep_indices(scores, keep=[3])] == [3, 3]
    assert [k.tolist() for k in keep_indices(scores, keep=[4, 1])] == [[0, 1, 2, 3], [1]]
    # globally, after per-layer normalisation, layer 1's three weak heads go first: uneven layers
    assert [k.tolist() for k in keep_indices(scores, remove=3 / 8, scope="global")] == [[0, 1, 2, 3], [1]]
    # a global budget never empties a layer
    assert [len(k) for k in keep_indices(scores, remove=0.99, scope="global")] == [1, 1]


@pytest.mark.parametrize("recover_with", ["distill", "finetune"])
def test_prune_with_data_taylor_and_recovery(tmp_path: Path, tiny_dir: Path, tiny_data: Path, recover_with: str,
                                             monkeypatch: pytest.MonkeyPatch):
    from xlmr_compress.pruning import structured

    seen = []

    def spy(teacher, out, config, data):
        seen.append(config.losses)
        return real_distill(teacher, out, config, data)

    real_distill = structured.distill
    monkeypatch.setattr(structured, "distill", spy)
    config = PruneConfig(keep_heads=[2, 1], keep_ffn=[16], scope="global", importance_batches=2, batch_size=16,
                         recover=True, recover_with=recover_with, recover_epochs=1, recover_learning_rate=1e-3,
                         max_length=16, recover_losses=["hard=2", "cosine=1"] if recover_with == "distill" else None)
    out = prune(tiny_dir, tmp_path / "recovered", config, data=str(tiny_data))
    model, _ = load(out)
    assert layer_shapes(model) == {"head_size": 8, "heads": [2, 1], "ffn": [16, 16]}
    lineage = json.loads((out / "compression.json").read_text())
    stage = lineage["stages"][-1]
    assert stage["stage"] == "prune" and stage["measured"]["importance"] == "taylor"
    assert "macro_f1" in stage["measured"]["validation"]["overall"]
    if recover_with == "distill":  # the recovery weighed the losses it was given
        assert seen == [["hard=2", "cosine=1"]] and stage["options"]["recover_losses"] == ["hard=2", "cosine=1"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["compression.json", "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"])
    assert not list(tmp_path.glob(".recovered*"))


def test_prune_takes_the_qa_window_stride_for_importance_and_recovery(tmp_path: Path):
    """A short max_length leaves fewer context tokens than the default stride: --stride makes QA data fit."""
    from test_distill_trainer import make_teacher, write_qa

    data = write_qa(tmp_path / "qa")
    teacher = make_teacher(tmp_path / "teacher", data, layers=2)
    config = PruneConfig(ffn=0.5, importance_batches=1, batch_size=4, recover=True, recover_epochs=1, max_length=24)
    with pytest.raises(UserError, match="not more than stride 32"):
        prune(teacher, tmp_path / "default", config, data=str(data))
    assert not (tmp_path / "default").exists()
    out = prune(teacher, tmp_path / "pruned", replace(config, stride=4), data=str(data))
    stage = json.loads((out / "compression.json").read_text())["stages"][-1]
    assert stage["options"]["stride"] == 4 and "f1" in stage["measured"]["validation"]["overall"]


@pytest.mark.parametrize("config, message", [
    (PruneConfig(heads=1.0), "not a share in"),
    (PruneConfig(ffn=-0.1), "not a share in"),
    (PruneConfig(keep_heads=[0]), "prune every one"),
    (PruneConfig(keep_heads=[4, 0]), "prune every one"),
    (PruneConfig(keep_ffn=[8, 8, 8]), "one per layer"),
    (PruneConfig(keep_heads=[5]), "cannot keep 5"),
    (PruneConfig(importance="taylor"), "give --data"),
    (PruneConfig(scope="model"), "unknown scope 'model'"),
    (PruneConfig(recover_with="magic"), "unknown recover with 'magic'"),
    (PruneConfig(recover_losses=["magic=1"]), "unknown loss 'magic'"),
    (PruneConfig(recover_with="finetune", recover_losses=["hard=2"]), "use --recover-with distill"),
])
def test_bad_input_is_one_line_error(tmp_path: Path, tiny_dir: Path, config: PruneConfig, message: str):
    with pytest.raises(UserError, match=message) as err:
        prune(tiny_dir, tmp_path / "out", config)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_cli_prune_and_trim_vocab(tmp_path: Path, tiny_dir: Path, capsys: pytest.CaptureFixture):
    from xlmr_compress.cli import main

    assert main(["prune", str(tiny_dir), "--heads", "0.5", "--keep-ffn", "40", "20", "--out", str(tmp_path / "p")]) == 0
    assert layer_shapes(load(tmp_path / "p")[0]) == {"head_size": 8, "heads": [2, 2], "ffn": [40, 20]}
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("hello world\n")
    assert main(["trim-vocab", str(tmp_path / "p"), "--corpus", str(corpus), "--out", str(tmp_path / "t")]) == 0
    assert "coverage: selection 1" in capsys.readouterr().out
    assert layer_shapes(load(tmp_path / "t")[0])["ffn"] == [40, 20]  # trimming keeps the pruned shapes
    assert main(["prune", str(tiny_dir), "--heads", "1.5", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --heads 1.5 is not a share") and err.count("\n") == 1


@pytest.mark.parametrize("optimize", [False, True])
def test_pruned_model_exports_to_onnx(tmp_path: Path, tiny_dir: Path, optimize: bool):
    """Uneven per-layer heads and FFN widths export with the ordinary ONNX path, outputs checked against torch."""
    pruned = prune(tiny_dir, tmp_path / "pruned", PruneConfig(keep_heads=[3, 1], keep_ffn=[40, 8]))
    out = export(pruned, tmp_path / "onnx", ExportConfig(optimize=optimize))
    measured = json.loads((out / "compression.json").read_text())["stages"][-1]["measured"]
    assert measured["max_abs_diff"] < 1e-4
    stages = json.loads((out / "compression.json").read_text())["stages"]
    assert [s["stage"] for s in stages] == ["prune", "export-onnx"]

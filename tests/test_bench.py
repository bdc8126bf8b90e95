"""The benchmark harness on tiny models: every column filled, consistent ratios, FLOPs, the Pareto frontier, the
written table and plot, and one-line errors for bad input."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from xlmr_compress.measure import BenchConfig, bench, percentiles_ms, run_bench, time_round_robin
from xlmr_compress.measure.cost import flops_per_sequence
from xlmr_compress.measure.report import pareto_front
from xlmr_compress.measure.run import synthetic_batch, variant_names
from xlmr_compress.cli import main
from xlmr_compress.data import TaskData, load_data
from xlmr_compress.directory import load_config
from xlmr_compress.errors import UserError
from xlmr_compress.onnx_export import export
from xlmr_compress.tiny import save_tiny, tiny_tokenizer
from xlmr_compress.quantization.onnx import QuantizeConfig, quantize

WORDS = "the movie was good and the music very great paris london berlin hello world".split()
FAST = {"batch_sizes": [2], "seq_lengths": [16], "warmup": 1, "repeats": 4}


def write_data(root: Path, labels: tuple[str, ...] = ("L0", "L1", "L2"), n: int = 24) -> Path:
    """A small CSV data set (train and test) in two languages, labels L0..L2 like the tiny models' heads."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        lines = ["text,label,language"]
        for i in range(n):
            text = " ".join(rng.choice(WORDS, rng.integers(2, 12)))
            lines.append(f"{text},{labels[i % len(labels)]},{('en', 'fr')[i % 2]}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A tiny 2-layer torch model (the baseline), a 1-layer narrower one, and the first's ONNX fp32 and int8 exports."""
    root = tmp_path_factory.mktemp("bench")
    big = save_tiny(root / "big", num_labels=3)
    small = save_tiny(root / "small", num_labels=3, num_hidden_layers=1, intermediate_size=32)
    onnx = export(big, root / "big-onnx")
    int8 = quantize(onnx, root / "big-int8", QuantizeConfig(mode="dynamic", eval_split=None))
    return [big, small, onnx, int8]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> TaskData:
    return load_data(str(write_data(tmp_path_factory.mktemp("data") / "csv")))


@pytest.fixture(scope="module")
def result(variants: list[Path], data: TaskData):
    return run_bench(variants, BenchConfig(**{**FAST, "seq_lengths": [16, 256]}, threads=[1]), data)


def test_every_column_filled_and_ratios_consistent(result) -> None:
    names = ["big", "small", "big-onnx", "big-int8"]
    assert [(r["variant"], r["tokens"]) for r in result.rows] == [  # real lengths first, then fixed lengths
        (n, tokens) for tokens in ("data", 16, 256) for n in names]
    assert [(r["backend"], r["precision"]) for r in result.rows[:4]] == [
        ("torch", "fp32"), ("torch", "fp32"), ("onnx", "fp32"), ("onnx", "int8")]
    for row in result.rows:
        empty = [k for k, v in row.items() if v is None or (isinstance(v, float) and not math.isfinite(v))]
        assert not empty, f"{row['variant']} {row['setting']}: empty {empty}"
        assert row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
        assert row["peak_mib"] > row["model_mib"] > 0
    by = {(r["variant"], r["tokens"]): r for r in result.rows}
    for tokens in ("data", 16, 256):
        big, small = by["big", tokens], by["small", tokens]
        assert big["speedup"] == big["size_ratio"] == big["memory_ratio"] == 1.0
        assert small["speedup"] == pytest.approx(big["p50_ms"] / small["p50_ms"])
        assert small["size_ratio"] == pytest.approx(small["size_mib"] / big["size_mib"]) and small["size_ratio"] < 1
        assert small["gflop_per_seq"] < big["gflop_per_seq"]
        onnx, int8 = by["big-onnx", tokens], by["big-int8", tokens]
        assert onnx["gflop_per_seq"] == int8["gflop_per_seq"] == big["gflop_per_seq"]
        assert int8["size_ratio"] < 1  # int8 weights (a tiny model is mostly graph overhead)
    fixed = by["big", 16]
    assert fixed["tokens_per_s"] == pytest.approx(16 * fixed["seq_per_s"])
    assert fixed["ceiling_pct"] == pytest.approx(100 * fixed["gflop_per_s"] / fixed["ceiling_gflop_per_s"])
    assert by["big", 256]["model_mib"] > by["big", 16]["model_mib"]  # activations of the longer batch
    assert {(c["device"], c["precision"]) for c in result.ceilings} == {("cpu", "fp32"), ("cpu", "int8")}
    assert all(c["gflop_per_s"] > 0 for c in result.ceilings)
    int8 = by["big-int8", 16]
    assert int8["ceiling_gflop_per_s"] == next(c["gflop_per_s"] for c in result.ceilings if c["precision"] == "int8")


def test_accuracy_joined_with_latency(result, data: TaskData) -> None:
    summary = result.summary()
    assert [r["variant"] for r in summary] == ["big", "small", "big-onnx", "big-int8"]
    assert result.metric == "macro_f1"
    for row in summary:
        assert 0.0 <= row["macro_f1"] <= 1.0 and 0.0 <= row["accuracy"] <= 1.0
        assert row["macro_f1_delta"] == pytest.approx(row["macro_f1"] - summary[0]["macro_f1"])
    assert summary[2]["accuracy"] == summary[0]["accuracy"]  # the ONNX export predicts as its torch source
    assert [r["language"] for r in result.per_language()] == ["en", "fr"]
    assert result.accuracy["big"]["examples"] == len(data.splits["test"])


def test_report_files_written(result, tmp_path: Path) -> None:
    out = result.write(tmp_path / "report")
    png = (out / "pareto.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    md = (out / "results.md").read_text()
    assert "| variant |" in md and "macro_f1 per language" in md
    csv_lines = (out / "accuracy_latency.csv").read_text().splitlines()
    assert len(csv_lines) == 5 and "macro_f1_delta" in csv_lines[0]
    assert len((out / "latency.csv").read_text().splitlines()) == 1 + len(result.rows)
    assert json.loads((out / "results.json").read_text())["baseline"] == "big"


def test_pareto_front_on_hand_made_points() -> None:
    points = [(10.0, 0.90), (5.0, 0.85), (20.0, 0.89), (2.0, 0.70), (5.0, 0.80), (12.0, 0.90), (1.0, 0.70)]
    # (20, .89) is beaten by (10, .90); (5, .80) by (5, .85); (12, .90) by (10, .90); (2, .70) by (1, .70)
    assert pareto_front(points) == [6, 1, 0]
    assert pareto_front([(3.0, 0.5)]) == [0]


def test_flops_count_matches_the_matmuls(tmp_path: Path) -> None:
    config = load_config(save_tiny(tmp_path / "tiny", num_labels=3))
    hidden, ffn, layers, length = 32, 64, 2, 10
    per_layer = 4 * length * hidden * hidden + 2 * length * length * hidden + 2 * length * hidden * ffn
    expected = 2 * (layers * per_layer + hidden * hidden + hidden * 3)
    assert flops_per_sequence(config, length) == expected
    config.xlmr_compress = {"head_size": 8, "heads": [4, 2], "ffn": [64, 16]}  # a pruned model's shapes
    pruned = 2 * (per_layer + 4 * length * hidden * 16 + 2 * length * length * 16 + 2 * length * hidden * 16
                  + hidden * hidden + hidden * 3)
    assert flops_per_sequence(config, length) == pruned


def test_round_robin_interleaves_and_rotates() -> None:
    calls: list[tuple[str, int]] = []
    times = time_round_robin({n: (lambda r, n=n: calls.append((n, r))) for n in "abc"}, warmup=1, repeats=3)
    assert [n for n, _ in calls] == list("abc") + list("abc") + list("bca") + list("cab")
    assert [r for _, r in calls] == [0, 0, 0] + [1] * 3 + [2] * 3 + [3] * 3  # warm-up rounds, then timed rounds
    assert all(len(t) == 3 and (t >= 0).all() for t in times.values())


def test_percentiles_in_milliseconds() -> None:
    assert percentiles_ms(np.arange(1, 101) / 1e3) == pytest.approx({"p50_ms": 50.5, "p90_ms": 90.1, "p99_ms": 99.01})


def test_synthetic_batch_shape_and_framing() -> None:
    tok = tiny_tokenizer()
    batch = synthetic_batch(tok, 3, 7)
    assert batch["input_ids"].shape == (3, 7) and batch["attention_mask"].all()
    assert (batch["input_ids"][:, 0] == tok.cls_token_id).all()
    assert (batch["input_ids"][:, -1] == tok.sep_token_id).all()
    inner = batch["input_ids"][:, 1:-1]
    assert not np.isin(inner, tok.all_special_ids).any() and inner.max() < len(tok)


def test_variant_names_as_given(tmp_path: Path) -> None:
    for parent in ("a", "b"):
        (tmp_path / parent / "m").mkdir(parents=True)
    (tmp_path / "label").symlink_to(tmp_path / "a" / "m")  # a link names its target, as compress's labels do
    assert variant_names([tmp_path / "label", tmp_path / "a" / "m", tmp_path / "b" / "m"]) == ["label", "a/m", "b/m"]
    with pytest.raises(UserError, match="twice"):
        variant_names([tmp_path / "a" / "m", tmp_path / "a" / "m/"])


def test_quick_needs_no_memory_children(variants: list[Path], data: TaskData) -> None:
    result = run_bench(variants, BenchConfig(quick=True, threads=[1]), data)
    assert {r["tokens"] for r in result.rows} == {"data", 64} and {r["batch"] for r in result.rows} == {1}
    assert all(r["peak_mib"] is None and r["speedup"] > 0 for r in result.rows)


def test_bad_input_is_one_line(variants: list[Path], data: TaskData, tmp_path: Path, capsys) -> None:
    (tmp_path / "notes").mkdir()
    with pytest.raises(UserError, match="not a model directory"):
        run_bench([tmp_path / "notes"], BenchConfig(**FAST))
    with pytest.raises(UserError, match="does not exist"):
        bench(tmp_path / "missing", tmp_path / "out", BenchConfig(**FAST))
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA GPU"):
            run_bench(variants, BenchConfig(**FAST, devices=["cuda"]))
    other = load_data(str(write_data(tmp_path / "other", labels=("pos", "neg"))))
    with pytest.raises(UserError, match="labels"):
        run_bench(variants, BenchConfig(**FAST, memory=False), other)
    with pytest.raises(UserError, match="baseline"):
        run_bench(variants, BenchConfig(**FAST, baseline="nope"))
    (tmp_path / "taken" / "old").mkdir(parents=True)
    with pytest.raises(UserError, match="already exists"):  # refused before anything is timed
        bench(variants, tmp_path / "taken", BenchConfig(**FAST))
    assert not (tmp_path / "out").exists()
    capsys.readouterr()
    assert main(["bench", str(tmp_path / "notes"), "--repeats", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "not a model directory" in err


def test_cli_writes_the_report(variants: list[Path], tmp_path: Path, capsys) -> None:
    data_dir = write_data(tmp_path / "csv")
    out = tmp_path / "report"
    code = main(["bench", *map(str, variants), "--data", str(data_dir), "--quick", "--threads", "1", "--out", str(out)])
    assert code == 0
    assert "| variant |" in capsys.readouterr().out
    assert (out / "pareto.png").stat().st_size > 0 and (out / "accuracy_latency.csv").is_file()

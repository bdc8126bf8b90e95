"""finetune and evaluate on a tiny model: learns, records lineage, resumes after SIGKILL, refuses bad input."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import write_toy_data
from xlmr_compress import FinetuneConfig, UserError, evaluate, finetune
from xlmr_compress.directory import read_lineage
from xlmr_compress.data import load_data
from xlmr_compress.train import claim_checkpoints, last_complete_checkpoint, prepare_checkpoints, run_settings

FAST = dict(epochs=3, batch_size=16, learning_rate=2e-3, logging_steps=1000)


def cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "xlmr_compress.cli", *args], capture_output=True, text=True,
                          env=env, **kwargs)


def test_finetune_learns_and_records_lineage(tiny_encoder: Path, toy_data: Path, tmp_path: Path):
    out = finetune(tiny_encoder, tmp_path / "out", FinetuneConfig(**FAST), str(toy_data))
    result = evaluate(out, str(toy_data))
    assert result["overall"]["accuracy"] >= 0.9
    assert set(result["per_language"]) == {"en", "fr"}
    stage = read_lineage(out)["stages"][-1]
    assert stage["stage"] == "finetune" and stage["options"]["epochs"] == 3
    assert stage["measured"]["test"]["overall"] == result["overall"]
    assert not (tmp_path / "out.checkpoints").exists()


def test_same_seed_same_model(tiny_encoder: Path, toy_data: Path, tmp_path: Path):
    from safetensors.torch import load_file

    config = FinetuneConfig(**{**FAST, "epochs": 1}, seed=3)
    runs = [load_file(finetune(tiny_encoder, tmp_path / f"run{i}", config, str(toy_data)) / "model.safetensors")
            for i in range(2)]
    assert runs[0].keys() == runs[1].keys() and any("classifier" in k for k in runs[0])
    assert all(runs[0][k].equal(runs[1][k]) for k in runs[0])  # the new head's initialisation included


def test_head_learning_rate_trains_the_head_alone_when_the_encoder_rate_is_zero(tiny_encoder: Path, toy_data: Path,
                                                                                tmp_path: Path):
    from safetensors.torch import load_file

    runs = {lr: load_file(finetune(tiny_encoder, tmp_path / f"head{lr}",
                                   FinetuneConfig(**{**FAST, "epochs": 1, "learning_rate": 0.0},
                                                  head_learning_rate=lr), str(toy_data)) / "model.safetensors")
            for lr in (None, 1e-2)}
    frozen, trained = runs[None], runs[1e-2]
    head = [k for k in frozen if k.startswith("classifier.")]
    assert head and not any(frozen[k].equal(trained[k]) for k in head)
    assert all(frozen[k].equal(trained[k]) for k in frozen if k not in head)


def test_output_checked_before_training(tiny_encoder: Path, toy_data: Path, tmp_path: Path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="already exists"):
        finetune(tiny_encoder, tmp_path / "out", FinetuneConfig(**FAST), str(toy_data))


def test_no_train_split(tiny_encoder: Path, toy_data: Path, tmp_path: Path):
    (toy_data / "train.csv").unlink()
    with pytest.raises(UserError, match="no train split"):
        finetune(tiny_encoder, tmp_path / "out", FinetuneConfig(**FAST), str(toy_data))


def test_resume_after_sigkill(tiny_encoder: Path, tmp_path: Path):
    data = write_toy_data(tmp_path / "big", n_train=3000)
    out = tmp_path / "out"
    args = ["finetune", str(tiny_encoder), "--data", str(data), "--out", str(out), "--epochs", "2",
            "--batch-size", "8", "--save-steps", "20", "--learning-rate", "2e-3"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "xlmr_compress.cli", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = tmp_path / "out.checkpoints"
    deadline = time.time() + 300
    while not list(checkpoints.glob("checkpoint-*/trainer_state.json")) and proc.poll() is None \
            and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # a real kill lands anywhere after a checkpoint, possibly inside the next one's write
    assert proc.poll() is None, "training ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # on a fast machine the rotation (save_total_limit) may already have dropped checkpoint-20: any whole one will do
    assert last_complete_checkpoint(checkpoints), "no complete checkpoint was written before the kill"
    assert not out.exists(), "a killed run must leave no output directory"

    refused = cli(*args)
    assert refused.returncode == 2 and "pass --resume" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1

    resumed = cli(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout and "checkpoint-" in resumed.stdout
    assert (out / "model.safetensors").is_file() and (out / "compression.json").is_file()
    state = json.loads((out / "compression.json").read_text())["stages"][-1]
    assert state["stage"] == "finetune" and state["measured"]["test"]["overall"]["accuracy"] > 0.5


def test_an_interrupted_run_resumes_only_with_its_own_settings(toy_data: Path, tmp_path: Path):
    data = load_data(str(toy_data))
    two, four = FinetuneConfig(epochs=2), FinetuneConfig(epochs=4, resume=True)
    out = tmp_path / "out"
    checkpoints, last = prepare_checkpoints(out, False, run_settings("teacher", two, data))
    assert last is None and (checkpoints / "settings.json").is_file()
    claim_checkpoints(checkpoints, run_settings("teacher", four, data))  # nothing saved yet: the new run takes over
    (checkpoints / "checkpoint-5").mkdir()
    (checkpoints / "checkpoint-5" / "trainer_state.json").write_text("{}")
    with pytest.raises(UserError, match=r"holds an interrupted run with other settings \(epochs\): rerun with"):
        prepare_checkpoints(out, True, run_settings("teacher", two, data))
    other = load_data(str(write_toy_data(tmp_path / "other", seed=1)))
    with pytest.raises(UserError, match=r"other settings \(data, source\)"):
        prepare_checkpoints(out, True, run_settings("student", four, other))
    assert prepare_checkpoints(out, True, run_settings("teacher", four, data))[1].endswith("checkpoint-5")


def test_cli_errors_are_one_line(tiny_dir: Path, tmp_path: Path):
    missing = cli("evaluate", str(tmp_path / "nope"), "--data", str(tmp_path))
    assert missing.returncode == 2 and missing.stderr.startswith("error: ")
    assert len(missing.stderr.strip().splitlines()) == 1 and "Traceback" not in missing.stderr
    data = write_toy_data(tmp_path / "d")
    wrong = cli("evaluate", str(tiny_dir), "--data", str(data))
    assert wrong.returncode == 2 and "does not know" in wrong.stderr and "Traceback" not in wrong.stderr


def test_evaluate_cli_writes_json(tiny_encoder: Path, toy_data: Path, tmp_path: Path):
    out = finetune(tiny_encoder, tmp_path / "m", FinetuneConfig(**FAST), str(toy_data))
    res = cli("evaluate", str(out), "--data", str(toy_data), "--json", str(tmp_path / "m.json"))
    assert res.returncode == 0, res.stderr
    assert "overall" in res.stdout and "fr" in res.stdout
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved["overall"] == evaluate(out, load_data(str(toy_data)))["overall"]

"""--shard (FSDP2) under torchrun with 2 CPU processes and gloo: each rank holds half of the student's, the teacher's
and the AdamW state's bytes, training matches unsharded data parallelism (losses and written weights), --resume
continues after a kill, and the output is the usual single safetensors directory.

Run as a script, this file is the torchrun worker: it runs the CLI, recording beside SHARD_TEST_LOSSES the training
losses, each rank's best checkpoint and whether the output was written when each rank returned, and with
SHARD_TEST_KILL kills every rank right after the first checkpoint."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
RUN = ["--batch-size", "4", "--max-length", "32", "--epochs", "2", "--logging-steps", "1", "--learning-rate", "1e-3",
       "--seed", "3"]  # 48 rows, 2 processes x 4: 6 steps an epoch, a checkpoint after each
DISTILL = ["--student-layers", "2", "--preset", "balanced"]


def torchrun(args: list[str], out: Path, shard: bool, kill: bool = False) -> subprocess.CompletedProcess:
    """This file under torchrun with 2 processes: the CLI with `args`, its losses written beside `out`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO),
           "SHARD_TEST_LOSSES": str(out.with_suffix(".losses.jsonl"))}
    if kill:
        env["SHARD_TEST_KILL"] = "1"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", __file__,
               *args, "--out", str(out), *(["--shard"] if shard else [])]
    return subprocess.run(command, env=env, cwd=out.parent, capture_output=True, text=True, timeout=300)


def trained(args: list[str], out: Path, shard: bool) -> Path:
    """Run to the end: every rank returns only once the output directory is written."""
    run = torchrun(args, out, shard)
    assert run.returncode == 0, run.stderr[-3000:]
    returned = [json.loads(line) for line in out.with_suffix(".returned.jsonl").read_text().splitlines()]
    assert sorted(r["rank"] for r in returned) == [0, 1] and all(r["out_written"] for r in returned), returned
    return out


def losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in out.with_suffix(".losses.jsonl").read_text().splitlines()]


def max_difference(a: Path, b: Path) -> float:
    one, two = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert one.keys() == two.keys() and {k: v.shape for k, v in one.items()} == {k: v.shape for k, v in two.items()}
    return max((one[k] - two[k]).abs().max().item() for k in one)


def best_checkpoints(out: Path) -> list[str | None]:
    """The checkpoint each rank loaded as the best at the end (its name)."""
    ranks = [json.loads(line) for line in out.with_suffix(".best.jsonl").read_text().splitlines()]
    return [r["best"] and Path(r["best"]).name for r in sorted(ranks, key=lambda r: r["rank"])]


def sharding(out: Path) -> dict:
    return json.loads((out / "compression.json").read_text())["stages"][-1]["measured"].get("sharding")


def assert_half_per_rank(record: dict, *names: str) -> None:
    """Each rank holds about half of each model's parameter bytes, and of the trained model's AdamW state."""
    assert record["ranks"] == 2
    for name in names:
        full = record["full"][f"{name}_bytes"]
        assert all(abs(b - full / 2) <= 0.1 * full / 2 for b in record[f"{name}_bytes"]), (name, record)
    full = record["full"]["model_bytes"]
    assert all(abs(b - full) <= 0.1 * full for b in record["optimizer_bytes"]), record  # 2 moments, half each


def assert_same_training(sharded: Path, unsharded: Path) -> None:
    ours, theirs = losses(sharded), losses(unsharded)
    assert len(ours) >= 10 and len(theirs) >= 10
    for a, b in zip(ours[:10], theirs[:10], strict=True):
        assert abs(a - b) <= 1e-4 * abs(b), (ours[:10], theirs[:10])
    assert max_difference(sharded, unsharded) <= 1e-5
    ours, theirs = best_checkpoints(sharded), best_checkpoints(unsharded)
    assert len(set(ours)) == 1 and ours[0] is not None and ours[0] == theirs[0], (ours, theirs)
    assert not list(sharded.glob("*.distcp")) and not (sharded / "model.safetensors.index.json").exists()


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The toy data (48 training rows) and a 4-layer tiny teacher for its labels (untrained: mechanics only)."""
    from conftest import write_toy_data
    from xlmr_compress import directory, tiny
    from xlmr_compress.data import load_data

    root = tmp_path_factory.mktemp("shard")
    data = write_toy_data(root / "toy", n_train=48)
    names = load_data(str(data)).label_names
    config = tiny.tiny_config(len(tiny.tiny_tokenizer()), num_hidden_layers=4, num_labels=len(names),
                              id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    torch.manual_seed(0)
    teacher = root / "teacher"
    directory.auto_class("sequence-classification").from_config(config).save_pretrained(teacher)
    tiny.tiny_tokenizer().save_pretrained(teacher)
    return data, teacher


@pytest.fixture(scope="module")
def distilled(toy: tuple[Path, Path]) -> Path:
    """The student of an uninterrupted `distill --shard` run."""
    data, teacher = toy
    return trained(["distill", str(teacher), "--data", str(data), *DISTILL, *RUN], teacher.parent / "sharded", True)


def test_distill_shard_halves_each_rank_and_trains_as_unsharded(toy: tuple[Path, Path], distilled: Path):
    data, teacher = toy
    unsharded = trained(["distill", str(teacher), "--data", str(data), *DISTILL, *RUN], teacher.parent / "ddp", False)
    assert_half_per_rank(sharding(distilled), "model", "teacher")
    assert sharding(unsharded) is None
    assert_same_training(distilled, unsharded)
    stage = json.loads((distilled / "compression.json").read_text())["stages"][-1]
    assert stage["options"]["shard"] is True and "accuracy" in stage["measured"]["teacher"]["test"]["overall"]


def test_distill_shard_resumes_after_a_kill(toy: tuple[Path, Path], distilled: Path):
    data, teacher = toy
    out = teacher.parent / "resumed"
    args = ["distill", str(teacher), "--data", str(data), *DISTILL, *RUN]
    killed = torchrun(args, out, shard=True, kill=True)
    assert killed.returncode != 0 and not out.exists()
    checkpoint = out.with_name(out.name + ".checkpoints") / "checkpoint-6"
    assert (checkpoint / "trainer_state.json").is_file() and list(checkpoint.rglob("*.distcp")), killed.stderr[-3000:]
    resumed = torchrun([*args, "--resume"], out, shard=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout and "checkpoint-6" in resumed.stdout
    assert max_difference(out, distilled) <= 1e-6


def test_distill_shard_caches_the_sharded_teachers_outputs(toy: tuple[Path, Path], tmp_path: Path):
    from xlmr_compress.data import encode, load_data
    from xlmr_compress.distillation.trainer import load_teacher, teacher_outputs

    data, teacher = toy
    out = tmp_path / "cached"
    run = torchrun(["distill", str(teacher), "--data", str(data), "--student-layers", "2", "--preset", "fast",
                    "--cache-teacher", *RUN, "--save-steps", "1"], out, shard=True, kill=True)
    cache = out.with_name(out.name + ".checkpoints") / "teacher-outputs" / "logits.npy"
    assert run.returncode != 0 and cache.is_file(), run.stderr[-3000:]
    task_data = load_data(str(data))
    model, tokenizer = load_teacher(teacher, task_data)
    features = encode(task_data, "train", tokenizer, 32, 32, label_names=task_data.label_names)
    expected = teacher_outputs(model, tokenizer, features, tmp_path / "unsharded", "cpu")["logits"]
    assert np.abs(np.load(cache) - expected).max() <= 1e-5


def test_finetune_shard_halves_each_rank_and_trains_as_unsharded(tmp_path: Path):
    from conftest import write_toy_data
    from transformers import XLMRobertaModel

    from xlmr_compress import tiny

    data = write_toy_data(tmp_path / "toy", n_train=48)
    encoder = tmp_path / "encoder"
    torch.manual_seed(0)
    XLMRobertaModel(tiny.tiny_config(len(tiny.tiny_tokenizer())), add_pooling_layer=False).save_pretrained(
        encoder)
    tiny.tiny_tokenizer().save_pretrained(encoder)
    args = ["finetune", str(encoder), "--data", str(data), *RUN, "--max-steps", "10", "--save-steps", "10"]
    sharded, unsharded = trained(args, tmp_path / "sharded", True), trained(args, tmp_path / "ddp", False)
    assert_half_per_rank(sharding(sharded), "model")
    assert_same_training(sharded, unsharded)


def test_shard_needs_several_processes(tiny_encoder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from conftest import write_toy_data
    from xlmr_compress import DistillConfig, FinetuneConfig, UserError, distill, finetune

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    data = str(write_toy_data(tmp_path / "toy", n_train=8))
    for stage, config in ((finetune, FinetuneConfig(shard=True)), (distill, DistillConfig(shard=True))):
        with pytest.raises(UserError, match="torchrun --nproc-per-node"):
            stage(tiny_encoder, tmp_path / "out", config, data)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.checkpoints").exists()


def worker(argv: list[str]) -> int:
    """A torchrun worker: the CLI, with the losses recorded by rank 0, each rank's best checkpoint after training,
    and, if asked, every rank killed after the first checkpoint is whole."""
    import signal

    import torch.distributed as dist
    from transformers import Trainer

    from xlmr_compress import cli

    log, save, train = Trainer.log, Trainer._save_checkpoint, Trainer.train

    def record(self: Trainer, logs: dict, *args, **kwargs) -> None:
        if "loss" in logs and self.is_world_process_zero():
            with open(os.environ["SHARD_TEST_LOSSES"], "a") as f:
                f.write(json.dumps({"step": self.state.global_step, "loss": logs["loss"]}) + "\n")
        log(self, logs, *args, **kwargs)

    def train_and_tell(self: Trainer, *args, **kwargs) -> object:
        result = train(self, *args, **kwargs)
        with open(os.environ["SHARD_TEST_LOSSES"].replace(".losses.", ".best."), "a") as f:
            f.write(json.dumps({"rank": self.args.process_index, "best": self.state.best_model_checkpoint}) + "\n")
        return result

    def save_then_die(self: Trainer, *args, **kwargs) -> None:
        save(self, *args, **kwargs)
        dist.barrier()
        os.kill(os.getpid(), signal.SIGKILL)

    Trainer.log, Trainer.train = record, train_and_tell
    if os.environ.get("SHARD_TEST_KILL"):
        Trainer._save_checkpoint = save_then_die
    code = cli.main(argv)
    out = Path(argv[argv.index("--out") + 1])
    written = (out / "compression.json").is_file()
    with open(os.environ["SHARD_TEST_LOSSES"].replace(".losses.", ".returned."), "a") as f:
        f.write(json.dumps({"rank": int(os.environ["RANK"]), "out_written": written}) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(worker(sys.argv[1:]))

"""The distill stage on tiny models: every task head, teacher caching, unlabelled text, bad input, torchrun."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import write_toy_data
from xlmr_compress import cli, directory, tiny
from xlmr_compress.directory import read_lineage
from xlmr_compress.data import encode, load_data
from xlmr_compress.distillation import DistillConfig, distill
from xlmr_compress.distillation.augment import augment
from xlmr_compress.distillation.losses import loss_weights
from xlmr_compress.distillation.trainer import DistillTrainer, encode_unlabeled
from xlmr_compress.errors import UserError

REPO = Path(__file__).resolve().parents[1]
TINY_RUN = dict(epochs=1, max_steps=2, batch_size=8, max_length=32, stride=8, logging_steps=1, learning_rate=1e-3)


def write_ner(folder: Path) -> Path:
    """A two-column IOB2 data set in the tiny tokenizer's words."""
    folder.mkdir(parents=True)
    sentence = "john\tB-PER\nlove\tO\nparis\tB-LOC\n\nmary\tB-PER\nhate\tO\nlondon\tB-LOC\nand\tO\nberlin\tB-LOC\n\n"
    for split in ("train", "dev", "test"):
        (folder / f"{split}.conll").write_text(sentence * 4)
    return folder


def write_qa(folder: Path) -> Path:
    """A SQuAD-v1 data set in the tiny tokenizer's words."""
    folder.mkdir(parents=True)
    context = "john is in paris and mary is in london"
    qas = [{"id": f"q{i}", "question": q, "answers": [{"text": a, "answer_start": context.index(a)}]}
           for i, (q, a) in enumerate([("where is john", "paris"), ("where is mary", "london")] * 4)]
    for split in ("train", "dev", "test"):
        (folder / f"{split}.json").write_text(
            json.dumps({"data": [{"paragraphs": [{"context": context, "qas": qas}]}]}))
    return folder


def make_teacher(folder: Path, data_path: Path, layers: int = 4) -> Path:
    """A tiny teacher with a head for the data's task and labels (untrained: the tests check mechanics)."""
    data = load_data(str(data_path))
    labels = {} if data.task == "question-answering" else {
        "num_labels": len(data.label_names), "id2label": dict(enumerate(data.label_names)),
        "label2id": {n: i for i, n in enumerate(data.label_names)}}
    config = tiny.tiny_config(len(tiny.tiny_tokenizer()), num_hidden_layers=layers, **labels)
    torch.manual_seed(0)
    directory.auto_class(data.task).from_config(config).save_pretrained(folder)
    tiny.tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture
def toy_teacher(tmp_path: Path) -> tuple[Path, Path]:
    data = write_toy_data(tmp_path / "toy", n_train=48)
    return make_teacher(tmp_path / "teacher", data), data


@pytest.mark.parametrize("task", ["sequence-classification", "token-classification", "question-answering"])
def test_distill_every_head_with_every_loss(tmp_path: Path, task: str, monkeypatch: pytest.MonkeyPatch):
    writer = {"sequence-classification": lambda f: write_toy_data(f, n_train=48), "token-classification": write_ner,
              "question-answering": write_qa}[task]
    data = writer(tmp_path / "data")
    teacher = make_teacher(tmp_path / "teacher", data)
    computed: set[str] = set()
    compute = DistillTrainer._losses

    def spy(self: DistillTrainer, *args: object) -> dict[str, torch.Tensor]:
        parts = compute(self, *args)
        computed.update(name for name, value in parts.items() if torch.isfinite(value))
        return parts

    monkeypatch.setattr(DistillTrainer, "_losses", spy)
    out = distill(teacher, tmp_path / "student",
                  DistillConfig(student_layers=2, student_hidden=24, student_heads=2, student_ffn=32, preset="quality",
                                losses=["cosine=1"], **TINY_RUN), str(data))
    stage = read_lineage(out)["stages"][-1]
    measured = stage["measured"]
    assert stage["stage"] == "distill" and stage["parent"] == str(teacher.resolve())
    assert measured["student_layers"] == [0, 3] and measured["hidden_size"] == 24
    assert measured["shapes"] == {"head_size": 8, "heads": [2, 2], "ffn": [32, 32]}
    assert computed == {"soft", "hard", "hidden", "attention", "relations", "embedding", "cosine"}  # each, finite
    assert measured["losses"] == asdict(loss_weights("quality", ["cosine=1"]))
    assert "test" in measured and "test" in measured["teacher"]  # student beside teacher
    assert measured["parameters"] < measured["teacher"]["parameters"]
    student, _ = directory.load(out)
    assert directory.task_of(student.config) == task and student.config.num_hidden_layers == 2
    assert not any(k.startswith("distill_projection") for k in load_file(str(out / "model.safetensors")))
    assert not (tmp_path / "student.checkpoints").exists()


@pytest.mark.parametrize("extra", [[], ["cosine=1"]])
def test_cached_teacher_outputs_train_the_same_student(toy_teacher, tmp_path: Path, extra: list[str]):
    teacher, data = toy_teacher
    runs = {}
    for cache in (False, True):
        out = distill(teacher, tmp_path / f"cache-{cache}",
                      DistillConfig(student_layers=2, preset="fast", losses=extra, cache_teacher=cache,
                                    **{**TINY_RUN, "max_steps": 4}), str(data))
        runs[cache] = load_file(str(out / "model.safetensors"))
    assert runs[True].keys() == runs[False].keys()
    for name in runs[True]:  # padded batches vs one cached pass differ only by float rounding
        torch.testing.assert_close(runs[True][name], runs[False][name], atol=1e-5, rtol=1e-4)


def test_unlabeled_text_gets_ignored_labels_and_trains(toy_teacher, tmp_path: Path):
    teacher, data = toy_teacher
    texts = tmp_path / "texts.txt"
    texts.write_text("hello world\n\nle film est bad\ndie musik ist good\n")
    tokenizer = tiny.tiny_tokenizer()
    config = DistillConfig(max_length=32)
    features = encode_unlabeled(["hello world", "le film"], "sequence-classification", tokenizer, config,
                                ["neg", "pos"])
    assert features["labels"][:] == [-100, -100]
    tokens = encode_unlabeled(["john in paris"], "token-classification", tokenizer, config, ["O", "B-LOC"])
    assert set(tokens["labels"][0]) == {-100}
    out = distill(teacher, tmp_path / "student",
                  DistillConfig(student_layers=1, unlabeled=str(texts), preset="fast", **TINY_RUN), str(data))
    assert read_lineage(out)["stages"][-1]["options"]["unlabeled"] == str(texts)


def test_augmented_copies_are_noisy_unlabelled_and_seeded(toy_teacher, tmp_path: Path):
    teacher, data = toy_teacher
    tokenizer = tiny.tiny_tokenizer()
    features = encode(load_data(str(data)), "train", tokenizer, max_length=32)
    copies = augment(features, copies=3, max_length=12, seed=1)
    assert len(copies) == 3 * len(features) and copies.features == features.features
    assert set(copies["labels"][:]) == {-100}
    originals = {tuple(ids) for ids in features["input_ids"][:]}
    rows = copies["input_ids"][:]
    assert all(r[0] == tokenizer.cls_token_id and r[-1] == tokenizer.sep_token_id and 3 <= len(r) <= 12 for r in rows)
    assert copies["length"][:] == [len(r) for r in rows] and all(set(m) == {1} for m in copies["attention_mask"][:])
    assert sum(tuple(r) not in originals for r in rows) > len(rows) // 2
    assert augment(features, 3, 12, seed=1)["input_ids"][:] == rows != augment(features, 3, 12, seed=2)["input_ids"][:]
    ner = write_ner(tmp_path / "ner")
    tokens = encode(load_data(str(ner)), "train", tokenizer, max_length=32)
    noisy = augment(tokens, copies=1, max_length=32)
    columns = (noisy[name][:] for name in ("labels", "input_ids", "word_ids"))
    assert all(set(labels) == {-100} and len(labels) == len(ids) == len(words)
               for labels, ids, words in zip(*columns, strict=True))
    out = distill(teacher, tmp_path / "student",
                  DistillConfig(student_layers=1, augment=2, preset="fast", cache_teacher=True, **TINY_RUN), str(data))
    assert read_lineage(out)["stages"][-1]["options"]["augment"] == 2
    with pytest.raises(UserError, match="--augment -1 is negative"):
        distill(teacher, tmp_path / "bad", DistillConfig(student_layers=1, augment=-1), str(data))
    with pytest.raises(UserError, match="keeps the last hidden state of the first token only"):
        cosine = DistillConfig(student_layers=1, preset="fast", losses=["cosine=1"], cache_teacher=True)
        distill(teacher, tmp_path / "bad", cosine, str(ner))
    with pytest.raises(UserError, match="--augment noises plain texts"):
        distill(teacher, tmp_path / "bad", DistillConfig(student_layers=1, augment=1), str(write_qa(tmp_path / "qa")))
    assert not (tmp_path / "bad").exists()


def test_bad_choice_or_no_data_is_refused_before_any_work(toy_teacher, tmp_path: Path):
    teacher, data = toy_teacher
    with pytest.raises(UserError, match="unknown layer selection 'odd'"):
        distill(teacher, tmp_path / "student", DistillConfig(student_layers=1, layer_selection="odd"), str(data))
    with pytest.raises(UserError, match="give --data"):
        distill(teacher, tmp_path / "student", DistillConfig(student_layers=1))
    assert not (tmp_path / "student").exists()


def different_tokenizer_student(tmp_path: Path, teacher: Path) -> Path:
    """The teacher's weights with a tokenizer in which one piece is renamed."""
    student = tmp_path / "other-tok"
    model, tokenizer = directory.load(teacher)
    model.save_pretrained(student)
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    spec["model"]["vocab"][10][0] = "▁renamed"
    (student / "tokenizer.json").write_text(json.dumps(spec))
    return student


@pytest.mark.parametrize("case", ["tokenizer", "wider", "layer", "no-head", "empty-unlabeled"])
def test_bad_input_is_one_line_and_leaves_no_output(toy_teacher, tmp_path: Path, capsys, case: str):
    teacher, data = toy_teacher
    out = tmp_path / "student"
    args = ["distill", str(teacher), "--data", str(data), "--out", str(out), "--max-steps", "1"]
    if case == "tokenizer":
        args += ["--student", str(different_tokenizer_student(tmp_path, teacher))]
    elif case == "wider":
        args += ["--student-layers", "2", "--student-hidden", "64"]
    elif case == "layer":
        args += ["--layers", "0", "9"]
    elif case == "no-head":
        encoder = tmp_path / "encoder"
        from transformers import XLMRobertaModel

        XLMRobertaModel(tiny.tiny_config(len(tiny.tiny_tokenizer())),
                        add_pooling_layer=False).save_pretrained(encoder)
        tiny.tiny_tokenizer().save_pretrained(encoder)
        args[1] = str(encoder)
        args += ["--student-layers", "1"]
    else:
        (tmp_path / "empty.txt").write_text("\n \n")
        args += ["--student-layers", "1", "--unlabeled", str(tmp_path / "empty.txt")]
    capsys.readouterr()  # drop what building the bad student printed (a loading progress bar): judge the CLI alone
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    expected = {"tokenizer": "different tokenizer", "wider": "wider than its teacher", "layer": "out of range",
                "no-head": "no task head", "empty-unlabeled": "is empty"}[case]
    assert err.startswith("error: ") and "\n" not in err and expected in err
    assert not out.exists() and not (tmp_path / "student.checkpoints").exists()


def test_torchrun_two_processes_write_the_same_student_shape(toy_teacher, tmp_path: Path):
    teacher, data = toy_teacher
    common = ["distill", str(teacher), "--data", str(data), "--student-layers", "2",
              "--student-ffn", "32", "--max-steps", "2", "--batch-size", "4", "--max-length", "32"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    single = tmp_path / "single"
    assert cli.main([*common, "--out", str(single)]) == 0
    double = tmp_path / "double"
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", "29533", "-m", "xlmr_compress.cli", *common, "--out", str(double)],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.count("wrote ") == 1, run.stdout  # rank 0 alone reports
    one, two = load_file(str(single / "model.safetensors")), load_file(str(double / "model.safetensors"))
    assert {k: v.shape for k, v in one.items()} == {k: v.shape for k, v in two.items()}
    assert json.loads((double / "config.json").read_text())["num_hidden_layers"] == 2

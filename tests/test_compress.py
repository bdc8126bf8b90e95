"""compress: recipe checks before any work, the search with fallbacks, resume, the report, an unreachable budget."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import xlmr_compress as xc
from xlmr_compress.cli import main
from xlmr_compress.compression import choose
from xlmr_compress.compression.recipe import load_recipe
from xlmr_compress.compression.search import Search

FAST = {"epochs": 1, "batch_size": 16, "learning_rate": 1e-3, "max_length": 16, "logging_steps": 1000}


def write_recipe(path: Path, student_layers: list, backends: list[dict], **settings: object) -> Path:
    import yaml

    recipe = {
        "finetune": {**FAST, "epochs": 4},
        "distill": {"share": 1.0, "settings": {**FAST, "epochs": 3, **settings},
                    "candidates": [None if k is None else {"student_layers": k} for k in student_layers]},
        "backends": backends,
    }
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture
def toy_teacher(tmp_path: Path, toy_data: Path, tiny_encoder: Path) -> Path:
    return xc.finetune(tiny_encoder, tmp_path / "teacher", xc.FinetuneConfig(**{**FAST, "epochs": 4}), toy_data)


def test_the_default_recipe_is_valid_and_shipped():
    recipe = load_recipe()
    assert [s.stage for s in recipe.steps] == ["distill", "prune", "trim-vocab"]
    assert {b["stage"] for b in recipe.backends} == {"torch", "export", "quantize"}
    assert "student_layers" in recipe.text


@pytest.mark.parametrize("text, message", [
    ("distil: {candidates: [{student_layers: 2}]}", "unknown stage 'distil'"),
    ("distill: {candidates: [{student_layer: 2}]}", "unknown option 'student_layer'"),
    ("distill: {candidates: [{preset: fastest}]}", "choose one of fast, balanced, quality"),
    ("distill: {candidates: [{student_layers: two}]}", "takes int values"),
    ("backends: [{stage: onnx}]", "every backend needs stage"),
    ("distill: [", "not valid YAML"),
    ("distill: {candidates: [{cache_teacher: true, preset: balanced}]}", "drop --cache-teacher"),
    ("distill: {settings: {unlabeled: no-such.txt}, candidates: [{student_layers: 2}]}", "no-such.txt does not exist"),
])
def test_a_bad_recipe_fails_in_one_line_before_any_work(tmp_path, toy_data, tiny_dir, text, message):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    with pytest.raises(xc.UserError, match=message) as e:
        xc.compress(tiny_dir, tmp_path / "out", xc.CompressConfig(recipe=str(recipe)), toy_data)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def by_the_rule(results: dict) -> str:
    """The candidate compress should choose from a results.json whose candidates are all within budget."""
    timed = [{**c, "name": c["model"], "drop": c["drop_points"], "within": True} for c in results["candidates"]
             if c["model"] not in ("teacher", "teacher-onnx")]
    return choose(timed)["name"]


def test_choose_breaks_a_latency_tie_by_size_then_drop():
    rows = [{"name": "int8", "p50_ms": 10.2, "size_mib": 100, "drop": 0.5, "within": True},
            {"name": "fp32", "p50_ms": 10.0, "size_mib": 400, "drop": 0.0, "within": True},
            {"name": "tiny-but-lossy", "p50_ms": 5.0, "size_mib": 50, "drop": 3.0, "within": False}]
    assert choose(rows)["name"] == "int8"  # 2% slower: a tie, and 4x smaller
    rows[0]["p50_ms"] = 11.0
    assert choose(rows)["name"] == "fp32"  # 10% slower: not a tie
    rows[1]["size_mib"] = 100
    rows[0]["p50_ms"] = 10.1
    assert choose(rows)["name"] == "fp32"  # same size: the one that loses least
    assert choose([{**r, "within": False} for r in rows]) is None


def test_compress_chooses_resumes_and_reports(tmp_path, toy_data, toy_teacher, capsys):
    # a parity gate no export can pass: that backend is left out, named in the report, and the others are timed
    refused = {"stage": "export", "optimize": False, "tolerance": 1e-12}
    recipe = write_recipe(tmp_path / "recipe.yaml", [1], [{"stage": "torch"}, {"stage": "export", "optimize": False},
                                                         {"stage": "quantize", "mode": "dynamic"}, refused])
    out = tmp_path / "out"
    config = xc.CompressConfig(max_drop=100.0, recipe=str(recipe), repeats=3, memory=False)
    best = xc.compress(toy_teacher, out, config, toy_data)
    results = json.loads((out / "results.json").read_text())
    names = [c["model"] for c in results["candidates"]]
    assert {"teacher", "teacher-onnx"} <= set(names) and len(names) == 5
    chosen = next(c for c in results["candidates"] if c["chosen"])
    assert chosen["model"] == results["chosen"] == by_the_rule(results)
    assert set(results["test"]) == {"teacher", "best"} and "per_language" in results["test"]["best"]
    for row in results["candidates"]:  # every language's validation share is kept, and the weakest is its minimum
        shares = results["validation_language_shares"][row["model"]]
        assert set(shares) == {"en", "fr"} and row["weakest_language"] == "{} {:.1%}".format(
            *min(shares.items(), key=lambda item: item[1]))
    report = (out / "report.md").read_text()
    assert report.count("distill-student_layers1") >= 1
    assert "distill-student_layers1+export-optimizefalse-tolerance1e-12: not built, left out of the timing" in report
    assert (out / "pareto.png").stat().st_size > 0 and (out / "recipe.yaml").is_file()
    assert xc.inspect(best).task == "sequence-classification"
    assert xc.load(best)[0] is not None
    lineage = json.loads((best / "compression.json").read_text())["stages"]
    assert lineage[-1]["stage"] == "compress" and any(s["stage"] == "distill" for s in lineage)
    inherited = len(xc.read_lineage(toy_teacher)["stages"])
    for stage in lineage[inherited:]:
        assert "test" not in stage["measured"], "the search must never score the test split"
    capsys.readouterr()
    again = xc.compress(toy_teacher, out, config, toy_data)
    log = capsys.readouterr().out
    assert "reusing the finished candidate" in log and "running distill" not in log
    # the rerun times the models again and applies the same rule to its own timing (the killed-search test holds
    # "the same model": its only backend is torch)
    rerun = json.loads((out / "results.json").read_text())
    assert rerun["chosen"] == by_the_rule(rerun)
    assert again == best
    # an edited recipe makes the edited candidate again, and what was made from it, instead of reusing them
    write_recipe(recipe, [1], [{"stage": "torch"}, {"stage": "quantize", "mode": "dynamic"}], learning_rate=5e-4)
    xc.compress(toy_teacher, out, config, toy_data)
    log = capsys.readouterr().out
    assert "distill-student_layers1: the recipe changed learning_rate since it was made" in log
    assert "running distill" in log and "running quantize" in log
    student = out / "candidates" / "distill-student_layers1"
    assert xc.read_lineage(student)["stages"][-1]["options"]["learning_rate"] == 5e-4
    assert not (out / "candidates" / "distill-student_layers1+export-optimizefalse").exists()


def test_an_unreachable_budget_exits_nonzero_with_a_report(tmp_path, toy_data, toy_teacher, capsys):
    # a fresh one-layer student trained for one step: far below the teacher, and no `null` to skip distillation
    recipe = write_recipe(tmp_path / "recipe.yaml", [1], [{"stage": "torch"}], max_steps=1, student_init="fresh")
    out = tmp_path / "out"
    code = main(["compress", str(toy_teacher), "--data", str(toy_data), "--out", str(out), "--max-drop", "0",
                 "--recipe", str(recipe), "--repeats", "2", "--no-memory"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: no candidate is within --max-drop 0") and "\n" not in err
    assert "distill-student_layers1" in err
    assert (out / "report.md").is_file() and not (out / "best").exists()


def test_every_step_skipped_keeps_the_teacher_once(tmp_path, toy_data, toy_teacher):
    # the student falls far short, `null` skips distillation: the teacher itself is the torch candidate, in one row
    recipe = write_recipe(tmp_path / "recipe.yaml", [1, None], [{"stage": "torch"}], max_steps=1, student_init="fresh")
    out = tmp_path / "out"
    best = xc.compress(toy_teacher, out, xc.CompressConfig(max_drop=0.0, recipe=str(recipe), repeats=2, memory=False),
                       toy_data)
    results = json.loads((out / "results.json").read_text())
    names = [c["model"] for c in results["candidates"]]
    assert sorted(names) == ["teacher", "teacher-onnx"] and results["chosen"] == "teacher"
    assert any(step.get("choice") == "skipped" for step in results["path"])
    assert xc.inspect(best).task == "sequence-classification"


def test_data_without_a_validation_split_selects_on_a_held_out_share_of_train(tmp_path, toy_data, toy_teacher,
                                                                              capsys):
    (toy_data / "dev.csv").unlink()
    recipe = write_recipe(tmp_path / "recipe.yaml", [None], [{"stage": "torch"}])
    code = main(["compress", str(toy_teacher), "--data", str(toy_data), "--out", str(tmp_path / "refused"),
                 "--holdout", "0", "--recipe", str(recipe)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "no validation split" in err and "--holdout 0.1" in err and "\n" not in err
    assert not (tmp_path / "refused").exists()
    out = tmp_path / "out"
    xc.compress(toy_teacher, out, xc.CompressConfig(holdout=0.25, recipe=str(recipe), repeats=2, memory=False),
                toy_data)
    assert "50 train examples (25%, seeded) are held out to select on" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["chosen"] == "teacher" and "best" in results["test"]


def test_a_language_below_its_floor_falls_back_though_the_overall_drop_fits(tmp_path, toy_data, toy_teacher, capsys):
    # 100 points of overall drop allowed, but each language must keep 99% of the teacher's macro-F1: an untrained
    # student keeps far less, so distillation falls back to its `null` and the teacher is the candidate
    recipe = write_recipe(tmp_path / "recipe.yaml", [1, None], [{"stage": "torch"}], max_steps=1, student_init="fresh")
    out = tmp_path / "out"
    with pytest.raises(xc.UserError, match="--min-language-share 1.5 is not a share"):
        xc.compress(toy_teacher, out, xc.CompressConfig(min_language_share=1.5, recipe=str(recipe)), toy_data)
    config = xc.CompressConfig(max_drop=100.0, min_language_share=0.99, recipe=str(recipe), repeats=2, memory=False)
    xc.compress(toy_teacher, out, config, toy_data)
    results = json.loads((out / "results.json").read_text())
    student = next(step for step in results["path"] if step.get("candidate") == "distill-student_layers1")
    assert student["drop"] <= student["allowance"] and not student["kept"]
    language, share = student["weakest_language"]
    assert language in ("en", "fr") and share < 0.99
    assert results["chosen"] == "teacher" and results["min_language_share"] == 0.99
    assert f"weakest language {language} at {share:.1%} (floor 99%): falling back" in capsys.readouterr().out
    shares = results["validation_language_shares"]  # every model scored on validation, the fallen-back ones too
    assert min(shares["distill-student_layers1"].items(), key=lambda item: item[1]) == (language, share)
    assert set(shares["distill-student_layers1"]) == {"en", "fr"} and shares["teacher"] == {"en": 1.0, "fr": 1.0}
    assert "every language keeping at least 99% of the teacher's" in (out / "report.md").read_text()


def test_a_gain_on_validation_is_not_spent_by_later_stages(tmp_path, toy_data, monkeypatch, capsys):
    # distillation gains 2 points on validation; trimming then loses 1.5 of them: -0.5 overall is within the budget,
    # but counted from the gain it costs 1.5, more than the whole budget, so trimming falls back to its null
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("distill: {share: 0.5, candidates: [{student_layers: 1}]}\n"
                      "trim-vocab: {share: 0.5, candidates: [{min_count: 1}, null]}\n")
    macro_f1 = {"teacher": 0.80, "distill-student_layers1": 0.82,
                "distill-student_layers1+trim-vocab-min_count1": 0.805}
    monkeypatch.setattr(Search, "build", lambda self, stage, src, name, options: tmp_path / name)
    monkeypatch.setattr(Search, "score", lambda self, name, model_dir: {"overall": {"macro_f1": macro_f1[name]}})
    search = Search(tmp_path / "out", xc.load_data(xc.DataConfig(str(toy_data))), load_recipe(recipe), max_drop=1.0,
                    max_length=16)
    name, _ = search.lossy(tmp_path / "teacher")
    assert name == "distill-student_layers1" and search.gain == pytest.approx(2.0)
    trim = search.path[1]
    assert trim["drop"] == pytest.approx(-0.5) and trim["drop"] <= trim["allowance"] and not trim["kept"]
    assert "validation drop -0.50 points (+1.50 counted from the gain before it), allowance 1.00" in \
        capsys.readouterr().out
    assert search.path[2]["choice"] == "skipped"


KILL_AT_FIRST_RECOVERY_CHECKPOINT = """
import os, signal, sys
import transformers
import xlmr_compress as xc

save = transformers.Trainer._save_checkpoint

def save_then_die(self, *args, **kwargs):
    save(self, *args, **kwargs)
    if "prune" in self.args.output_dir:  # the prune stage's recovery: SIGKILL once its first checkpoint is on disk
        os.kill(os.getpid(), signal.SIGKILL)

transformers.Trainer._save_checkpoint = save_then_die
teacher, out, recipe, data = sys.argv[1:]
xc.compress(teacher, out, xc.CompressConfig(max_drop=100.0, recipe=recipe, repeats=2, memory=False), data)
"""


def test_a_search_killed_mid_training_resumes_and_chooses_the_same_model(tmp_path, toy_data, toy_teacher, capsys):
    import subprocess
    import sys

    import yaml

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "distill": {"share": 0.5, "settings": {**FAST, "epochs": 2}, "candidates": [{"student_layers": 1}]},
        "prune": {"share": 0.5, "settings": {"recover": True, "recover_epochs": 3, "recover_learning_rate": 1e-3,
                                              "batch_size": 16, "max_length": 16},
                  "candidates": [{"ffn": 0.5}]},
        "backends": [{"stage": "torch"}],
    }))
    killed = tmp_path / "killed"
    child = subprocess.run([sys.executable, "-c", KILL_AT_FIRST_RECOVERY_CHECKPOINT, str(toy_teacher), str(killed),
                            str(recipe), str(toy_data)], capture_output=True, text=True, timeout=600)
    assert child.returncode == -9, child.stderr[-2000:]
    candidates = killed / "candidates"
    assert (candidates / "distill-student_layers1" / "compression.json").is_file()
    pruned = "distill-student_layers1+prune-ffn0.5"
    assert not (candidates / pruned).exists()
    assert list((candidates / f"{pruned}.checkpoints").glob("recovered.checkpoints/checkpoint-*"))

    config = xc.CompressConfig(max_drop=100.0, recipe=str(recipe), repeats=2, memory=False)
    xc.compress(toy_teacher, killed, config, toy_data)
    log = capsys.readouterr().out
    assert "distill-student_layers1: reusing the finished candidate" in log and "running distill" not in log
    assert "resuming from" in log and "recovered.checkpoints/checkpoint-" in log
    assert not (candidates / f"{pruned}.checkpoints").exists()

    whole = tmp_path / "whole"
    xc.compress(toy_teacher, whole, config, toy_data)
    chosen = [json.loads((run / "results.json").read_text())["chosen"] for run in (killed, whole)]
    assert chosen[0] == chosen[1] == pruned
    lineage = [json.loads((run / "best" / "compression.json").read_text())["stages"] for run in (killed, whole)]
    shapes = [next(s for s in stages if s["stage"] == "prune")["measured"]["shapes"] for stages in lineage]
    assert shapes[0] == shapes[1]
    weights = [xc.load(run / "best")[0].state_dict() for run in (killed, whole)]
    assert max((weights[0][k] - weights[1][k]).abs().max().item() for k in weights[0]) < 1e-5


def test_inputs_that_cannot_work_are_refused_before_out_is_made(tmp_path, toy_data, tiny_dir, monkeypatch):
    from transformers import BertConfig, BertForSequenceClassification

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    bert = tmp_path / "bert"
    BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                             intermediate_size=32)).save_pretrained(bert)
    for teacher, message in (("./no-teacher", "model directory no-teacher does not exist"),
                             (str(bert), "is a 'bert' model, not XLM-R"),
                             (str(tiny_dir), "do not match the model's head")):
        with pytest.raises(xc.UserError, match=message):
            xc.compress(teacher, out, xc.CompressConfig(), toy_data)
        assert not out.exists()


def test_a_stage_that_refuses_its_settings_leaves_no_out(tmp_path, toy_data, toy_teacher):
    import yaml

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"prune": {"candidates": [{"ffn": 1.5}]}, "backends": [{"stage": "torch"}]}))
    with pytest.raises(xc.UserError, match="ffn"):
        xc.compress(toy_teacher, tmp_path / "out", xc.CompressConfig(recipe=str(recipe)), toy_data)
    assert not (tmp_path / "out").exists()


def test_an_out_holding_the_search_of_other_inputs_is_refused(tmp_path, toy_data):
    data = xc.load_data(str(toy_data))
    out = tmp_path / "out"
    out.mkdir()
    Search(out, data, load_recipe(), 1.0, 16).claim({"teacher": "a", "data": data.fingerprint()})
    Search(out, data, load_recipe(), 1.0, 16).claim({"teacher": "a", "data": data.fingerprint()})
    with pytest.raises(xc.UserError, match="holds a search with another teacher: give a new --out"):
        Search(out, data, load_recipe(), 1.0, 16).claim({"teacher": "b", "data": data.fingerprint()})


def test_an_interrupted_candidate_started_with_other_settings_starts_over(tmp_path, toy_data, toy_teacher, capsys):
    from xlmr_compress.train import SETTINGS_FILE, checkpoint_dir

    data = xc.load_data(str(toy_data))
    search = Search(tmp_path, data, load_recipe(), 1.0, 16)
    out = search.candidates / "distill-student_layers1"
    stale = checkpoint_dir(out)
    (stale / "checkpoint-3").mkdir(parents=True)  # a checkpoint of a 2-layer student, which cannot load into 1 layer
    (stale / "checkpoint-3" / "trainer_state.json").write_text("{}")
    (stale / SETTINGS_FILE).write_text(json.dumps({"student_layers": 2}))
    search.build("distill", toy_teacher, out.name, {**FAST, "student_layers": 1})
    log = capsys.readouterr().out
    assert "the interrupted run was started with other" in log and "starting over" in log and "resuming from" not in log
    assert xc.load(out)[0].config.num_hidden_layers == 1 and not stale.exists()

"""The CLI is generated from the stage registry: every flag explained, choices typed, help imports nothing heavy."""
from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys

import pytest

import xlmr_compress
from xlmr_compress.cli import COMMANDS, build_parser, main
from xlmr_compress.stages import STAGES

HEAVY = ("onnxruntime", "triton", "torch_pruning")


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser(name)
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_flag_is_explained(name):
    sub = _subparser(name)
    flags = [a for a in sub._actions if a.option_strings and a.dest != "help"]
    for action in flags:
        assert action.help and len(action.help) > 8, f"{name} {action.option_strings} has no help"
        assert action.help.count("(default") <= 1, f"{name} {action.option_strings} states its default twice"
    sub.format_help()
    if COMMANDS[name].config:
        assert len(flags) >= len([f for f in COMMANDS[name].config_class().__dataclass_fields__])


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_stage_has_the_one_signature_and_is_public(name):
    function = STAGES[name].function()
    assert list(inspect.signature(function).parameters)[:4] == ["src", "out", "config", "data"]
    assert getattr(xlmr_compress, function.__name__) is function


def test_literal_fields_become_choices(capsys):
    sub = _subparser("quantize")
    mode = next(a for a in sub._actions if a.dest == "mode")
    assert set(mode.choices) == {"dynamic", "static", "torch-int8", "torch-fp16", "torch-bf16"}
    with pytest.raises(SystemExit) as e:
        main(["quantize", "somewhere", "--out", "x", "--mode", "int3"])
    assert e.value.code == 2
    assert "invalid choice: 'int3'" in capsys.readouterr().err


def test_api_refuses_a_value_outside_the_choices(tiny_dir, tmp_path):
    with pytest.raises(xlmr_compress.UserError, match="choose one of dynamic, static"):
        xlmr_compress.quantize(tiny_dir, tmp_path / "q", xlmr_compress.QuantizeConfig(mode="int3"))
    assert not (tmp_path / "q").exists()


def test_help_imports_no_heavy_backend():
    script = (
        "import json, sys\n"
        "from xlmr_compress.cli import COMMANDS, main\n"
        "for argv in [['--help']] + [[name, '--help'] for name in COMMANDS]:\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
    assert "usage: xlmr-compress" in done.stdout


def test_bad_input_is_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "does not exist" in err
    assert not (tmp_path / "o").exists()


def test_training_logs_reach_a_pipe_as_they_are_printed(tmp_path, tiny_encoder, toy_data):
    """A log file or pipe sees each training loss line while the epoch runs, not in a block after it."""
    out = tmp_path / "out"
    command = [sys.executable, "-m", "xlmr_compress.cli", "finetune", str(tiny_encoder), "--data", str(toy_data),
               "--epochs", "1", "--batch-size", "4", "--logging-steps", "1", "--out", str(out)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # Python's default: a pipe is buffered
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env) as run:
        first = next((line for line in run.stdout if "'loss'" in line), None)
        checkpoints = list(out.with_name("out.checkpoints").glob("checkpoint-*"))
        written = out.exists()
        run.communicate(timeout=300)
    assert first is not None and not checkpoints and not written and run.returncode == 0, \
        "the first loss line came only after the epoch's checkpoint"


def test_progress_bars_on_a_terminal_only(tmp_path, tiny_encoder, toy_data):
    import re
    import shlex
    import shutil

    if shutil.which("script") is None:
        pytest.skip("util-linux `script` is absent: no pseudo-terminal to run the commands in")
    rate = re.compile(r"\d+/\d+ \[[^]]*(it|batch)/s\]")  # a step or batch counter with its rate
    cli = [sys.executable, "-m", "xlmr_compress.cli"]
    for name, args in (("finetune", [str(tiny_encoder), "--epochs", "1"]), ("evaluate", [str(tmp_path / "piped")])):
        common = [*cli, name, *args, "--data", str(toy_data)]
        out = ["--out", str(tmp_path / "piped")] if name == "finetune" else []
        piped = subprocess.run(common + out, capture_output=True, text=True, timeout=300)
        out = ["--out", str(tmp_path / "tty")] if name == "finetune" else []
        # a pseudo-terminal with no size gives tqdm zero columns, and an empty bar
        terminal = subprocess.run(["script", "-qec", "stty cols 120 rows 40; " + shlex.join(common + out),
                                   "/dev/null"], capture_output=True, text=True, timeout=300)
        assert piped.returncode == 0 and terminal.returncode == 0, piped.stderr + terminal.stdout
        assert not rate.search(piped.stdout + piped.stderr), f"{name} drew a progress bar into a pipe"
        assert rate.search(terminal.stdout), f"{name} showed no progress bar on a terminal"

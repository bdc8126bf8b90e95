"""The main job on real data: fine-tune from the pretrained encoder, beat the majority class, reproduce on reload."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import DATA
from xlmr_compress.directory import read_lineage
from xlmr_compress.demo import majority_baseline


@pytest.mark.slow
def test_finetune_beats_majority_and_evaluate_reproduces(sib_teacher: Path, sib_slice, tmp_path: Path):
    recorded = read_lineage(sib_teacher)["stages"][-1]["measured"]["test"]["overall"]
    baseline = majority_baseline(sib_slice)["overall"]["macro_f1"]
    assert recorded["macro_f1"] > baseline + 0.25, (recorded, baseline)
    out = tmp_path / "metrics.json"
    res = subprocess.run([sys.executable, "-m", "xlmr_compress.cli", "evaluate", str(sib_teacher), "--data",
                          str(DATA / "sib200"), "--languages", "eng_Latn", "fra_Latn", "deu_Latn", "zho_Hans",
                          "--max-per-split", "400", "--max-length", "64", "--json", str(out)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(out.read_text())["overall"]["macro_f1"] == pytest.approx(recorded["macro_f1"], abs=1e-9)

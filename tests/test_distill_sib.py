"""Distillation on real data: a 2-layer student of a pretrained e5-small teacher fine-tuned on a SIB-200 slice,
distilled, against the same student trained on labels alone (same layers, seed, data and steps)."""
from __future__ import annotations

from pathlib import Path

import pytest

from xlmr_compress.directory import read_lineage
from xlmr_compress.distillation import DistillConfig, distill

RUN = dict(student_layers=2, epochs=3, batch_size=16, learning_rate=2e-4, max_length=64, freeze_embeddings=True,
           seed=0, logging_steps=1000)
LABELS_ONLY = ["soft=0", "hidden=0", "hard=1"]


@pytest.mark.slow
def test_distilled_student_is_not_worse_than_labels_alone(sib_teacher: Path, sib_slice, tmp_path: Path):
    distilled = distill(sib_teacher, tmp_path / "distilled", DistillConfig(**RUN), sib_slice)
    labels = distill(sib_teacher, tmp_path / "labels", DistillConfig(**RUN, losses=LABELS_ONLY), sib_slice)
    f1 = {name: read_lineage(path)["stages"][-1]["measured"]["test"]["overall"]["macro_f1"]
          for name, path in (("distilled", distilled), ("labels", labels))}
    teacher_f1 = read_lineage(distilled)["stages"][-1]["measured"]["teacher"]["test"]["overall"]["macro_f1"]
    print(f"test macro-F1: teacher {teacher_f1:.4f}, distilled {f1['distilled']:.4f}, labels only {f1['labels']:.4f}")
    assert teacher_f1 > 0.5  # the teacher learnt the task (7 topics: chance is about 0.14)
    # At 2 layers on this slice, distillation lands near labels alone, not reliably above: measured -0.020 and
    # -0.036 over two teacher heads. The full-size comparison (6 layers, full test split) is in benchmarks/RESULTS.md.
    assert f1["distilled"] > 0.4 and f1["distilled"] >= f1["labels"] - 0.05

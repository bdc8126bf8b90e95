"""The demo's guard: it stops before compressing a teacher that did not clearly beat the majority class."""
from __future__ import annotations

from pathlib import Path

import pytest

from xlmr_compress import UserError
from xlmr_compress.directory import record_stage
from xlmr_compress.data import load_data
from xlmr_compress.demo import TEACHER_MARGIN, check_teacher, majority_baseline


@pytest.mark.parametrize("above", [TEACHER_MARGIN / 2, TEACHER_MARGIN * 2])
def test_check_teacher_needs_a_clear_margin_over_the_majority_class(toy_data: Path, tmp_path: Path, above: float):
    data = load_data(str(toy_data))
    baseline = majority_baseline(data)["overall"]["macro_f1"]
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    record_stage(teacher, "finetune", {}, metrics={"test": {"overall": {"macro_f1": baseline + above}}})
    if above < TEACHER_MARGIN:
        with pytest.raises(UserError, match="did not learn.*majority class"):
            check_teacher(teacher, data)
    else:
        check_teacher(teacher, data)

"""bench/train_fit.py: its committed output scores the dev rows as compress does, so its training-row figures are
comparable with the reports beside them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

RUN = Path(__file__).resolve().parents[1] / "bench" / "results" / "front" / "rt-standard-steps540-hid10"


def test_the_dev_accuracies_equal_the_reports_of_the_same_checkpoints():
    lines = [json.loads(line) for line in (RUN / "train-fit.jsonl").read_text().splitlines()]
    by_checkpoint = {line["checkpoint"]: line for line in lines}
    report = json.loads((RUN / "report.json").read_text())["accuracy"]
    ta = by_checkpoint["work/rt-standard-steps540/ta"]
    student = by_checkpoint["work/rt-standard-steps540-hid10/h2-f160-rfull-uniform/recovered"]
    assert ta["validation"] == pytest.approx(report["ta_exits"], abs=5e-5)
    assert student["validation"] == pytest.approx(report["costeff_exits"], abs=5e-5)
    for line in lines:
        assert line["train_rows"] == 2000 and len(line["train"]) == len(line["validation"]) == 6
        assert all(0.5 < accuracy <= 1 for accuracy in line["train"] + line["validation"])

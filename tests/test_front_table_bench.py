"""bench/front_table.py: the front tables of bench/results/README.md come from the committed reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


@pytest.fixture
def front_table(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import front_table

    return front_table


def setting(accuracy: float, gflops_per_row: float, rows: int = 100) -> dict:
    return {"accuracy": accuracy, "gflops": gflops_per_row * rows}


def test_most_accurate_within_a_budget_takes_the_cheapest_of_equally_accurate_pairs(front_table):
    """Teacher at 1 GFLOP per row: at <= 1/10 only the 0.08 and 0.05 pairs qualify; of the two at 0.90 the cheaper
    wins, and the more accurate 0.2-GFLOP pair is out of budget."""
    sweep = [setting(0.95, 0.2), setting(0.90, 0.08), setting(0.90, 0.05), setting(0.85, 0.01)]
    best = front_table.most_accurate_within(sweep, 100, 1.0, 1 / 10)
    assert best == sweep[2]
    assert front_table.speedup(best, 100, 1.0) == pytest.approx(20.0)
    assert front_table.most_accurate_within(sweep, 100, 1.0, 1 / 200) is None


def test_a_point_that_misses_the_goal_is_marked_and_the_written_point_is_bold(front_table):
    point = {"name": "h2-f160", "fraction": 0.125, "exit_accuracies": [0.5, 0.6, 0.7, 0.8, 0.8, 0.8],
             "best_for_goal": {**setting(0.80, 0.1), "constraint_met": False},
             "best_for_goal_out_of_sample": {"accuracy": 0.79, "speedup_flops": 9.5},
             "sweep": [setting(0.80, 0.1), setting(0.70, 0.04)]}
    report = {"validation_rows": 100, "accuracy": {"teacher": 0.82}, "calibration": {"goal": {"max_drop": 0.01}},
              "flops_per_row": {"teacher_real_lengths": 1e9}, "front": {"chosen": "h2-f160", "points": [point]}}
    row = front_table.front_table(report).splitlines()[-1]
    assert row.startswith("| **h2-f160 (1/8), written** | 0.500 0.600 0.700 0.800 0.800 0.800 |")
    assert "0.8000, 10.0x (not within the goal) / 0.7900, 9.5x" in row
    # at <= 1/19 only the 0.04-GFLOP pair is cheap enough: 0.70 of a 0.82 teacher
    assert row.endswith("| 0.8000 (97.6 %), 10.0x | 0.7000 (85.4 %), 25.0x |")


def test_a_report_without_a_front_or_with_another_goal_is_refused(front_table):
    with pytest.raises(SystemExit, match="has no front"):
        front_table.front_table({"front": None})
    speedup_run = json.loads((RESULTS / "front" / "trec-standard-augment2" / "target-speedup-10.json").read_text())
    with pytest.raises(SystemExit, match="not --max-drop 0.01"):
        front_table.front_table(speedup_run)


@pytest.mark.parametrize("run", ["trec-standard", "rt-standard", "trec-standard-augment2", "trec-standard-augment2-hid10"])
def test_the_results_readme_tables_are_the_scripts_output(front_table, run):
    """Every row the script prints for a committed front report is in bench/results/README.md as printed."""
    report = json.loads((RESULTS / "front" / run / "report.json").read_text())
    readme = (RESULTS / "README.md").read_text()
    for row in front_table.front_table(report).splitlines()[2:]:
        assert row in readme, f"{run}: README lacks the row {row}"

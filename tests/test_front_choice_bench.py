"""bench/front_choice.py: the procedures it compares are the ones it names (issue 31, the front's choice)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from costeff_fast.training.calibrate import SweepOutcomes, cross_validate

BENCH = Path(__file__).resolve().parents[1] / "bench"


def outcomes(correct: torch.Tensor, gflops: list[float]) -> SweepOutcomes:
    settings, rows = correct.shape
    flops = torch.tensor(gflops, dtype=torch.float64)[:, None].expand(settings, rows) * 1e9
    return SweepOutcomes([0.1 * t for t in range(settings)], correct, torch.ones(settings, rows, dtype=torch.long),
                         flops.clone(), flops[0].clone(), None, 3)


@pytest.fixture
def front_choice(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import front_choice

    return front_choice


def test_width_first_takes_the_cheaper_of_two_equally_accurate_widths(front_choice):
    """Two widths with the same correctness per row at every setting, one at half the other's FLOPs: every fold's
    cross-validated figures tie on accuracy, so the cheaper width is taken everywhere, and the whole procedure
    equals the cheaper width's own cross-validated choice."""
    generator = torch.Generator().manual_seed(0)
    correct = torch.rand(4, 60, generator=generator) < torch.tensor([0.95, 0.9, 0.8, 0.6])[:, None]
    teacher = torch.rand(60, generator=generator) < 0.9
    base = torch.full((60,), 20e9, dtype=torch.float64)
    wide, narrow = outcomes(correct, [20, 12, 8, 4]), outcomes(correct, [10, 6, 4, 2])
    whole = front_choice.width_first({"wide": wide, "narrow": narrow}, teacher, base, 0.05, seed=0)
    alone = cross_validate(narrow, reference_correct=teacher, base_flops=base, max_drop=0.05, margin="auto")
    assert whole["accuracy"] == alone["accuracy"] and whole["gflops"] == pytest.approx(alone["gflops"])


def test_compare_reports_the_shipped_procedure_as_cross_validate_gives_it(front_choice):
    generator = torch.Generator().manual_seed(1)
    correct = torch.rand(3, 50, generator=generator) < torch.tensor([0.9, 0.85, 0.7])[:, None]
    teacher = torch.rand(50, generator=generator) < 0.88
    base = torch.full((50,), 30e9, dtype=torch.float64)
    points = {"h6": outcomes(correct, [15, 9, 5]), "h2": outcomes(correct.roll(1, dims=1), [6, 4, 2])}
    data = {"task": "rt", "budget": "quick", "teacher_correct": teacher, "teacher_flops": base, "outcomes": points}
    summary = front_choice.compare(data, [0.02], seeds=2)
    assert [r["procedure"] for r in summary["results"]] == [
        "joint, margin 0", "joint, margin by CV (compress)", "width first"]
    shipped = summary["results"][1]
    joined = SweepOutcomes.concat(points)
    for seed in range(2):
        held = cross_validate(joined, reference_correct=teacher, base_flops=base, max_drop=0.02, seed=seed,
                              margin="auto")
        drop = (summary["teacher_accuracy"] - held["accuracy"]) * 100
        assert shipped["points_under_teacher"][seed] == pytest.approx(drop)
    assert shipped["goal_met"] == sum(cross_validate(joined, reference_correct=teacher, base_flops=base, max_drop=0.02,
                                                     seed=seed, margin="auto")["goal_met"] for seed in range(2))

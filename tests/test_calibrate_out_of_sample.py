"""Honest calibration (issue 31 item 4): thresholds chosen on some dev rows are scored on the others.

The expected values are worked out by hand or recomputed here from first principles (per-row sums), never read
back from the functions under test.
"""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig

from costeff_fast import CostEffConfig
from costeff_fast.flops import cumulative_flops, model_flops
from costeff_fast.training.calibrate import (
    SweepOutcomes,
    choose_margin,
    cross_validate,
    fold_indices,
    pick_threshold,
    score_choice,
)


def outcomes_of(correct, flops, full_depth, thresholds=None, layers=None) -> SweepOutcomes:
    correct = torch.tensor(correct, dtype=torch.bool)
    flops = torch.tensor(flops, dtype=torch.float64)
    settings, rows = correct.shape
    layers = torch.ones(settings, rows, dtype=torch.long) if layers is None else torch.tensor(layers)
    thresholds = [0.1 * t for t in range(settings)] if thresholds is None else thresholds
    return SweepOutcomes(thresholds, correct, layers, flops, torch.tensor(full_depth, dtype=torch.float64),
                         [1.0] * settings, 3)


def test_fold_indices_deal_every_row_once_in_near_equal_seeded_folds():
    parts = fold_indices(23, 5, seed=3)
    assert len(parts) == 5 and sorted(len(p) for p in parts) == [4, 4, 5, 5, 5]  # 23 = 5 * 4 + 3
    assert sorted(torch.cat(parts).tolist()) == list(range(23))
    assert all(p.tolist() == sorted(p.tolist()) for p in parts)
    assert [p.tolist() for p in fold_indices(23, 5, seed=3)] == [p.tolist() for p in parts]
    assert [p.tolist() for p in fold_indices(23, 5, seed=4)] != [p.tolist() for p in parts]
    assert len(fold_indices(3, 5)) == 3  # never more folds than rows
    with pytest.raises(ValueError, match="at least two rows"):
        fold_indices(1, 5)
    with pytest.raises(ValueError, match="at least two folds"):
        fold_indices(10, 1)


def test_score_choice_by_hand():
    result = score_choice(torch.tensor([True, False, True, True]), torch.tensor([1e9, 2e9, 3e9, 2e9], dtype=torch.float64),
                          torch.tensor([1, 2, 3, 2]), reference_correct=torch.tensor([True, True, True, False]),
                          full_depth_flops=torch.full((4,), 4e9, dtype=torch.float64), max_drop=0.0)
    assert result["accuracy"] == 0.75 and result["reference_accuracy"] == 0.75 and result["goal_met"] is True
    assert result["gflops"] == pytest.approx(8.0) and result["gflops_per_row"] == pytest.approx(2.0)
    assert result["speedup_flops"] == pytest.approx(2.0) and result["mean_exit_layer"] == 2.0
    # per-row differences reference - choice: 0, 1, 0, -1; mean 0, sample variance 2/3, standard error sqrt(2/3)/2
    assert result["drop"] == 0.0 and result["drop_standard_error"] == pytest.approx((2 / 3) ** 0.5 / 2)
    slower = score_choice(torch.ones(4, dtype=torch.bool), torch.full((4,), 3e9, dtype=torch.float64),
                          torch.full((4,), 3), reference_correct=torch.ones(4, dtype=torch.bool),
                          full_depth_flops=torch.full((4,), 4e9, dtype=torch.float64), target_speedup=1.5)
    assert slower["goal_met"] is False  # 4/3 x fewer FLOPs, 1.5 x asked


def test_each_row_is_scored_by_the_threshold_chosen_without_it():
    """Two folds of two rows. Threshold 0 (full depth) is right everywhere at 10 GFLOP a row; threshold 0.5 costs
    1 GFLOP a row but misses one row of fold B. With max_drop 0 from a reference that is always right:

    - on all rows, 0.5 scores 3/4: threshold 0 is chosen, and looks perfect on the rows that chose it;
    - fold A's threshold is chosen on B, where 0.5 misses a row: threshold 0, so A scores 2/2 at 10 + 10;
    - fold B's threshold is chosen on A, where 0.5 is perfect: 0.5, so B scores 1/2 at 1 + 1.
    Out of sample: 3/4 accuracy, (20 + 2) / 4 = 5.5 GFLOP a row, the goal not met."""
    a, b = fold_indices(4, 2, seed=0)
    correct = torch.ones(2, 4, dtype=torch.bool)
    correct[1, b[0]] = False
    flops = torch.tensor([[10e9] * 4, [1e9] * 4], dtype=torch.float64)
    outcomes = outcomes_of(correct.tolist(), flops.tolist(), [10e9] * 4, thresholds=[0.0, 0.5])
    reference = torch.ones(4, dtype=torch.bool)
    in_sample = pick_threshold(outcomes.rows(), 1.0, 0.0)
    assert in_sample["entropy_threshold"] == 0.0 and in_sample["accuracy"] == 1.0
    result = cross_validate(outcomes, reference_correct=reference, max_drop=0.0, folds=2, seed=0)
    assert [f["entropy_threshold"] for f in result["per_fold"]] == [0.0, 0.5]
    assert [f["goal_met_on_choice_rows"] for f in result["per_fold"]] == [True, True]
    assert [f["accuracy"] for f in result["per_fold"]] == [1.0, 0.5]
    assert result["accuracy"] == 0.75 and result["goal_met"] is False
    assert result["gflops_per_row"] == pytest.approx(5.5) and result["rows"] == 4
    assert result["folds"] == 2 and "other 1 folds" in result["chosen_on"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cross_validation_agrees_with_a_brute_force_recount(seed):
    """Random outcomes over 5 thresholds and 37 rows: for each fold, the cheapest threshold whose accuracy on the
    other folds' rows is within max_drop of the teacher's there (else the most accurate) is recomputed from the
    per-row tables, and the pooled accuracy and FLOPs are summed row by row."""
    generator = torch.Generator().manual_seed(seed)
    settings, rows = 5, 37
    correct = torch.rand(settings, rows, generator=generator) < torch.linspace(0.9, 0.6, settings)[:, None]
    flops = torch.linspace(10, 2, settings, dtype=torch.float64)[:, None] * 1e9 * (1 + torch.rand(rows, generator=generator, dtype=torch.float64))
    teacher = torch.rand(rows, generator=generator) < 0.85
    outcomes = outcomes_of(correct.tolist(), flops.tolist(), flops[0].tolist())
    result = cross_validate(outcomes, reference_correct=teacher, max_drop=0.05, folds=4, seed=seed)
    parts = fold_indices(rows, 4, seed)
    expected_correct, expected_flops = torch.zeros(rows, dtype=torch.bool), torch.zeros(rows, dtype=torch.float64)
    for index, held in enumerate(parts):
        rest = [r for r in range(rows) if r not in held.tolist()]
        floor = sum(teacher[r].item() for r in rest) / len(rest) - 0.05
        accuracy = [sum(correct[t, r].item() for r in rest) / len(rest) for t in range(settings)]
        cost = [sum(flops[t, r].item() for r in rest) for t in range(settings)]
        ok = [t for t in range(settings) if accuracy[t] >= floor - 1e-12]
        t = min(ok, key=lambda t: cost[t]) if ok else max(range(settings), key=lambda t: (accuracy[t], -cost[t]))
        assert result["per_fold"][index]["entropy_threshold"] == outcomes.thresholds[t]
        expected_correct[held], expected_flops[held] = correct[t, held], flops[t, held]
    assert result["accuracy"] == pytest.approx(expected_correct.double().mean().item())
    assert result["gflops"] == pytest.approx(expected_flops.sum().item() / 1e9)
    assert result["reference_accuracy"] == pytest.approx(teacher.double().mean().item())


def test_cross_validation_for_a_speedup_goal_picks_within_the_fold_budget():
    # threshold 0: full depth (4 GFLOP); 0.1: 2 GFLOP, less accurate; 0.2: 1 GFLOP, least accurate
    correct = [[True] * 6, [True, True, True, True, False, False], [True, False, False, False, False, False]]
    flops = [[4e9] * 6, [2e9] * 6, [1e9] * 6]
    outcomes = outcomes_of(correct, flops, [4e9] * 6)
    result = cross_validate(outcomes, reference_correct=torch.ones(6, dtype=torch.bool), target_speedup=2.0,
                            folds=3, seed=0)
    assert all(f["entropy_threshold"] == pytest.approx(0.1) for f in result["per_fold"])  # the most accurate at 2x
    assert result["gflops_per_row"] == pytest.approx(2.0) and result["goal_met"] is True
    assert result["accuracy"] == pytest.approx(4 / 6)


def test_cross_validation_refuses_a_reference_of_the_wrong_shape_and_two_goals():
    outcomes = outcomes_of([[True, False, True]], [[1e9] * 3], [1e9] * 3, thresholds=[0.0])
    with pytest.raises(ValueError, match=r"reference_correct must be \[3\]"):
        cross_validate(outcomes, reference_correct=torch.ones(4, dtype=torch.bool), max_drop=0.01)
    with pytest.raises(ValueError, match="exactly one"):
        cross_validate(outcomes, reference_correct=torch.ones(3, dtype=torch.bool), max_drop=0.01, target_speedup=2.0)


def test_sweep_rows_over_a_subset_are_sums_over_those_rows():
    correct = [[True, False, True, True], [False, False, True, True]]
    flops = [[4e9, 4e9, 4e9, 4e9], [1e9, 2e9, 3e9, 1e9]]
    outcomes = outcomes_of(correct, flops, [4e9] * 4, layers=[[3, 3, 3, 3], [1, 2, 3, 1]])
    rows = outcomes.rows(torch.tensor([1, 2]))
    assert rows[1] == {"entropy_threshold": 0.1, "accuracy": 0.5, "mean_exit_layer": 2.5,
                       "exit_layer_counts": [0, 1, 1], "gflops": 5.0}
    every = outcomes.rows()
    assert every[0]["accuracy"] == 0.75 and every[0]["sentences_per_second"] == 4.0
    # the pickers' summary gives the same sums (by a mask product) with each setting's index
    assert outcomes.summary(torch.tensor([1, 2])) == [
        {"setting": 0, "entropy_threshold": 0.0, "accuracy": 0.5, "gflops": 8.0},
        {"setting": 1, "entropy_threshold": 0.1, "accuracy": 0.5, "gflops": 5.0}]
    assert [row["accuracy"] for row in outcomes.summary()] == [0.75, 0.5]


@pytest.mark.parametrize("seed", [0, 1])
def test_the_summary_equals_the_rows_on_random_subsets_of_real_sized_sweeps(seed):
    """FLOP counts of real magnitude (whole numbers near 1e9 per row, totals near 1e12): the mask product's sums are
    exact, so the picks do not depend on which of the two computed them."""
    generator = torch.Generator().manual_seed(seed)
    correct = (torch.rand(30, 1000, generator=generator) < 0.8).tolist()
    flops = torch.randint(10**8, 3 * 10**9, (30, 1000), generator=generator).double().tolist()
    outcomes = outcomes_of(correct, flops, flops[0])
    subset = torch.randperm(1000, generator=generator)[:640]
    for fast, full in zip(outcomes.summary(subset), outcomes.rows(subset)):
        assert fast["accuracy"] == full["accuracy"] and fast["gflops"] == full["gflops"]


@pytest.mark.parametrize("config", [
    BertConfig(hidden_size=64, num_attention_heads=4, intermediate_size=96, num_hidden_layers=3, num_labels=3),
    CostEffConfig(hidden_size=64, num_attention_heads=[2, 1, 3], attention_head_size=16, intermediate_size=[32, 16, 48],
                  num_hidden_layers=3, num_labels=2, exit_pooler=[False, False, True]),
], ids=["bert", "costeff"])
def test_cumulative_flops_are_model_flops_row_by_row(config):
    lengths = [5, 17, 5, 1]
    table = cumulative_flops(config, lengths)
    assert table.shape == (4, 3) and table.dtype == torch.float64
    for n, length in enumerate(lengths):
        for exit_layer in (1, 2, 3):
            assert table[n, exit_layer - 1].item() == model_flops(config, [length], [exit_layer])
    layers = torch.tensor([2, 3, 1, 3])
    assert table[torch.arange(4), layers - 1].sum().item() == model_flops(config, lengths, layers)


def test_a_margin_keeps_accuracy_in_hand_and_falls_back_to_the_most_accurate_row():
    """Teacher 0.82, max_drop 0.01: the goal is 0.81. Rows (accuracy, GFLOPs): (0.85, 10), (0.815, 5), (0.81, 3),
    (0.79, 1). No margin takes the 3-GFLOP row, which just meets the goal; half a point takes the 5-GFLOP row; five
    points leave nothing above 0.86, so the most accurate row is taken, and it meets the goal."""
    sweep = [{"entropy_threshold": 0.0, "accuracy": 0.85, "gflops": 10.0},
             {"entropy_threshold": 0.1, "accuracy": 0.815, "gflops": 5.0},
             {"entropy_threshold": 0.2, "accuracy": 0.81, "gflops": 3.0},
             {"entropy_threshold": 0.3, "accuracy": 0.79, "gflops": 1.0}]
    assert pick_threshold(sweep, 0.82, 0.01)["entropy_threshold"] == 0.2
    assert pick_threshold(sweep, 0.82, 0.01, margin=0.005)["entropy_threshold"] == 0.1
    wide = pick_threshold(sweep, 0.82, 0.01, margin=0.05)
    assert wide["entropy_threshold"] == 0.0 and wide["constraint_met"] is True
    unmet = pick_threshold(sweep, 0.90, 0.01, margin=0.005)
    assert unmet["entropy_threshold"] == 0.0 and unmet["constraint_met"] is False
    with pytest.raises(ValueError, match="margin must be >= 0"):
        pick_threshold(sweep, 0.82, 0.01, margin=-0.01)


def test_the_smallest_margin_that_holds_out_of_sample_is_chosen():
    """Two folds A and B of four rows, a reference always right, max_drop 0.25 (goal 0.75). Setting 1 costs 1
    GFLOP a row and is right on 3 of B's rows and 1 of A's; setting 2 the mirror image; setting 3 costs 5 and is
    always right; setting 0 (full depth) costs 10.

    - margin 0: fold A chooses on B, where setting 1 just meets 0.75, and scores 1/4 on A; fold B likewise takes
      setting 2 and scores 1/4. Out of sample 0.25: the goal is missed.
    - margin 0.0025: 0.75 no longer clears 0.7525, each fold takes setting 3: 1.0 out of sample at 5 GFLOP a row.
    """
    a, b = fold_indices(8, 2, seed=0)
    correct = torch.zeros(4, 8, dtype=torch.bool)
    correct[0], correct[3] = True, True
    correct[1, b[:3]], correct[1, a[:1]] = True, True
    correct[2, a[:3]], correct[2, b[:1]] = True, True
    flops = torch.tensor([[10e9] * 8, [1e9] * 8, [1e9] * 8, [5e9] * 8], dtype=torch.float64)
    outcomes = outcomes_of(correct.tolist(), flops.tolist(), [10e9] * 8)
    reference = torch.ones(8, dtype=torch.bool)
    plain = cross_validate(outcomes, reference_correct=reference, max_drop=0.25, folds=2, seed=0)
    assert plain["accuracy"] == 0.25 and plain["goal_met"] is False
    chosen = choose_margin(outcomes, reference_correct=reference, max_drop=0.25, margins=(0.005, 0.0, 0.0025),
                           folds=2, seed=0)
    assert chosen["margin"] == 0.0025 and chosen["goal_met"] is True
    assert [c["margin"] for c in chosen["candidates"]] == [0.0, 0.0025, 0.005]  # tried in ascending order
    assert [c["goal_met"] for c in chosen["candidates"]] == [False, True, True]
    assert chosen["candidates"][1]["accuracy"] == 1.0 and chosen["candidates"][1]["gflops_per_row"] == pytest.approx(5.0)
    never = choose_margin(outcomes, reference_correct=reference, max_drop=0.0, margins=(0.0, 0.0025), folds=2,
                          seed=0)  # setting 0 meets 0 only on all rows; setting 3 equals it: both margins hold
    assert never["goal_met"] is True and never["margin"] == 0.0
    with pytest.raises(ValueError, match="margins must be"):
        choose_margin(outcomes, reference_correct=reference, max_drop=0.25, margins=())
    with pytest.raises(ValueError, match="'auto'"):
        cross_validate(outcomes, reference_correct=reference, max_drop=0.25, margin="large")


def test_when_no_margin_holds_the_most_accurate_one_out_of_sample_is_taken():
    """Folds A and B of four rows, reference always right, goal 0.75. Rows right per fold (A, B) and cost:
    setting 0 (2, 3) at 10, setting 1 (1, 3) at 1, setting 2 (3, 1) at 1, setting 3 (2, 4) at 5.

    - margin 0: A chooses on B: setting 1 (3/4, cheapest), scores 1/4; B chooses on A: setting 2, scores 1/4.
    - margin 0.0025 (and 0.005): A chooses on B: only setting 3 (4/4) clears 0.7525, scores 2/4; B chooses on A:
      nothing clears it, the most accurate there is setting 2 (3/4), scores 1/4. Out of sample 3/8.
    No margin reaches 0.75: the most accurate, 0.0025 (the smaller of the tie), is returned, goal_met False."""
    a, b = fold_indices(8, 2, seed=0)
    correct = torch.zeros(4, 8, dtype=torch.bool)
    for setting, (in_a, in_b) in enumerate([(2, 3), (1, 3), (3, 1), (2, 4)]):
        correct[setting, a[:in_a]], correct[setting, b[:in_b]] = True, True
    flops = torch.tensor([[10e9] * 8, [1e9] * 8, [1e9] * 8, [5e9] * 8], dtype=torch.float64)
    outcomes = outcomes_of(correct.tolist(), flops.tolist(), [10e9] * 8)
    chosen = choose_margin(outcomes, reference_correct=torch.ones(8, dtype=torch.bool), max_drop=0.25,
                           margins=(0.0, 0.0025, 0.005), folds=2, seed=0)
    assert [c["accuracy"] for c in chosen["candidates"]] == [0.25, 0.375, 0.375]
    assert chosen["margin"] == 0.0025 and chosen["goal_met"] is False


def test_nested_cross_validation_of_two_rows_takes_no_margin():
    outcomes = outcomes_of([[True, True], [True, False]], [[2e9, 2e9], [1e9, 1e9]], [2e9, 2e9])
    result = cross_validate(outcomes, reference_correct=torch.ones(2, dtype=torch.bool), max_drop=0.0, folds=2,
                            margin="auto")
    assert [fold["margin"] for fold in result["per_fold"]] == [0.0, 0.0] and result["rows"] == 2
    one_row = choose_margin(outcomes.subset(torch.tensor([1])), reference_correct=torch.ones(1, dtype=torch.bool),
                            max_drop=0.0, margins=(0.005, 0.0025))
    assert one_row == {"margin": 0.0025, "goal_met": None, "candidates": []}


def _brute_choice(correct, flops, teacher, rows, max_drop, margin):
    """The setting the margin rule picks on ``rows`` (a list of column indices), from per-row sums."""
    settings = correct.shape[0]
    floor = sum(teacher[r].item() for r in rows) / len(rows) - max_drop
    accuracy = [sum(correct[t, r].item() for r in rows) / len(rows) for t in range(settings)]
    cost = [sum(flops[t, r].item() for r in rows) for t in range(settings)]
    ok = [t for t in range(settings) if accuracy[t] >= floor + margin - 1e-12]
    return min(ok, key=lambda t: cost[t]) if ok else max(range(settings), key=lambda t: (accuracy[t], -cost[t]))


def _brute_cv_accuracy(correct, flops, teacher, columns, max_drop, margin, folds, seed):
    """Pooled out-of-sample accuracy of the margin rule over ``columns``, recounted row by row."""
    parts = fold_indices(len(columns), folds, seed)
    hits = 0
    for index, held in enumerate(parts):
        rest = [columns[i] for j, part in enumerate(parts) if j != index for i in part.tolist()]
        t = _brute_choice(correct, flops, teacher, rest, max_drop, margin)
        hits += sum(correct[t, columns[i]].item() for i in held.tolist())
    return hits / len(columns)


@pytest.mark.parametrize("seed", [0, 1])
def test_nested_cross_validation_agrees_with_a_brute_force_recount(seed):
    """margin='auto': each outer fold's margin is the smallest (of three) whose inner cross-validation on the
    other folds' rows meets the goal (else the most accurate), then its threshold is picked at that margin on
    those rows and scores the fold. Recounted here from the per-row tables with the deal of fold_indices."""
    generator = torch.Generator().manual_seed(seed)
    settings, rows, folds, margins, drop = 6, 41, 3, (0.0, 0.02, 0.05), 0.03
    correct = torch.rand(settings, rows, generator=generator) < torch.linspace(0.9, 0.7, settings)[:, None]
    flops = torch.linspace(10, 2, settings, dtype=torch.float64)[:, None] * 1e9 * (1 + torch.rand(rows, generator=generator, dtype=torch.float64))
    teacher = torch.rand(rows, generator=generator) < 0.85
    outcomes = outcomes_of(correct.tolist(), flops.tolist(), flops[0].tolist())
    result = cross_validate(outcomes, reference_correct=teacher, max_drop=drop, folds=folds, seed=seed,
                            margin="auto", margins=margins)
    expected = torch.zeros(rows, dtype=torch.bool)
    for index, held in enumerate(fold_indices(rows, folds, seed)):
        rest = [r for part_index, part in enumerate(fold_indices(rows, folds, seed)) if part_index != index
                for r in part.tolist()]
        goal = sum(teacher[r].item() for r in rest) / len(rest) - drop
        scores = [_brute_cv_accuracy(correct, flops, teacher, rest, drop, m, folds, seed) for m in margins]
        met = [m for m, score in zip(margins, scores) if score >= goal - 1e-12]
        margin = met[0] if met else max(zip(margins, scores), key=lambda pair: (pair[1], -pair[0]))[0]
        t = _brute_choice(correct, flops, teacher, rest, drop, margin)
        assert result["per_fold"][index]["margin"] == margin
        assert result["per_fold"][index]["entropy_threshold"] == outcomes.thresholds[t]
        expected[held] = correct[t, held]
    assert result["accuracy"] == pytest.approx(expected.double().mean().item())
    assert result["margin"] == "auto" and "margin" in result["chosen_on"]

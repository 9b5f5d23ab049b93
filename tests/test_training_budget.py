"""Tests of the training budgets: keyword-only fields, documented units, named presets."""

from __future__ import annotations

import ast
import inspect
from dataclasses import FrozenInstanceError, astuple, fields

import pytest

from costeff_fast.training import budget as budget_module
from costeff_fast.training.budget import BUDGETS, DEMO, PAPER, QUICK, Budget, budget_with

# The presets' values as the pipeline used them before Budget took keywords (field order of the dataclass), plus
# the two ablation fields at the paper's plain sum (temperature 1, every exit weighted 1), batching at random, and
# recovery at the TA's temperature; quick's distillation steps per pruning event tripled (40 -> 120) on 2026-12-07
# after bench/results/gap-levers/.
EXPECTED = {
    "paper": ("paper", None, None, 128, 32, 5, 2e-5, 5 / 3, 5, 2e-5, None, None, 180, 1e-5, 10, 6, 3e-5, 1.0, 1.0,
              False, None),
    "quick": ("quick", 3000, None, 64, 32, 1, 5e-5, 0.5, 1, 5e-5, 5, 8, 120, 3e-5, 1, 1, 5e-5, 1.0, 1.0, False, None),
    "demo": ("demo", 2000, None, 64, 32, 1, 5e-5, 0, 1, 5e-5, 4, 4, 25, 3e-5, 0.5, 1, 5e-5, 1.0, 1.0, False, None),
}


def test_presets_keep_their_values():
    assert list(BUDGETS) == ["paper", "standard", "quick", "demo"]
    assert (BUDGETS["paper"], BUDGETS["quick"], BUDGETS["demo"]) == (PAPER, QUICK, DEMO)
    for name, values in EXPECTED.items():
        assert astuple(BUDGETS[name]) == values


def test_standard_budget_trains_on_the_whole_split_longer_than_quick():
    standard, quick = BUDGETS["standard"], QUICK
    assert standard.train_rows is None and standard.eval_rows is None and standard.max_length == 64
    for name in ("teacher_epochs", "ta_prediction_epochs", "recovery_prediction_epochs"):
        assert getattr(standard, name) >= 3 > getattr(quick, name)
    # Recovery distils longer than the TA (it was still gaining at three epochs); the exit losses stay the paper's
    # plain sum at temperature 1 (temperature 2 and weight 2 were level with it at this budget).
    assert standard.recovery_prediction_epochs > standard.ta_prediction_epochs
    assert (standard.kd_temperature, standard.early_exit_weight) == (PAPER.kd_temperature, PAPER.early_exit_weight)


def test_budget_takes_only_keywords_and_every_field():
    with pytest.raises(TypeError):
        Budget(*EXPECTED["quick"])
    values = dict(zip([f.name for f in fields(Budget)], EXPECTED["quick"]))
    assert Budget(**values) == QUICK
    del values["recovery_lr"]
    with pytest.raises(TypeError, match="recovery_lr"):
        Budget(**values)
    with pytest.raises(FrozenInstanceError):
        QUICK.batch_size = 8


def test_every_field_has_a_docstring():
    tree = ast.parse(inspect.getsource(budget_module))
    body = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Budget").body
    documented = {
        stmt.target.id
        for stmt, following in zip(body, body[1:])
        if isinstance(stmt, ast.AnnAssign)
        and isinstance(following, ast.Expr)
        and isinstance(following.value, ast.Constant)
        and isinstance(following.value.value, str)
    }
    assert documented == {f.name for f in fields(Budget)}


def test_presets_are_built_with_keywords():
    tree = ast.parse(inspect.getsource(budget_module))
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "Budget"]
    assert len(calls) == 4
    assert all(not call.args and len(call.keywords) == len(fields(Budget)) for call in calls)


def test_budget_with_changes_only_the_named_fields():
    changed = budget_with("quick", train_rows=100, distill_steps=3)
    assert (changed.train_rows, changed.distill_steps) == (100, 3)
    assert astuple(changed)[2:12] == astuple(QUICK)[2:12] and changed.recovery_lr == QUICK.recovery_lr
    assert QUICK.train_rows == 3000
    with pytest.raises(TypeError):
        budget_with("quick", epochs=3)
    with pytest.raises(KeyError):
        budget_with("huge")


def test_recovery_temperature_defaults_to_the_tas_and_names_only_the_recovered_directory():
    assert budget_module.recovery_temperature(budget_with("quick", kd_temperature=3.0)) == 3.0
    hotter = budget_with("quick", recovery_kd_temperature=2.0)
    assert budget_module.recovery_temperature(hotter) == 2.0 and hotter.kd_temperature == 1.0
    # the teacher, TA and slenderized stages stay shared; recovery gets its own directory
    assert budget_module.default_work_name("rt", hotter, "mean") == "rt-quick-len64-mean"
    assert budget_module.recovered_name(hotter) == "recovered-T2"
    assert budget_module.recovered_name(budget_with("quick", recovery_kd_temperature=1.0)) == "recovered"
    assert budget_module.recovered_name(QUICK) == "recovered"
    assert budget_module.default_work_name("rt", budget_with("quick", kd_temperature=2.0), "mean").endswith(
        "-kd_temperature2.0")
    with pytest.raises(ValueError, match="recovery_kd_temperature must be > 0"):
        budget_with("quick", recovery_kd_temperature=0.0)

"""Smoke run of the whole COST-EFF pipeline on a tiny teacher and a few hundred real rt rows; calibration."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from conftest import save_tiny_bert_teacher
from transformers import (
    AutoTokenizer,
    ElectraConfig,
    ElectraForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

import costeff_fast
from costeff_fast import cli
from costeff_fast.training import pipeline
from costeff_fast.training.budget import BUDGETS, budget_with, default_work_name
from costeff_fast.training.calibrate import pick_threshold
from costeff_fast.training.pipeline import CompressionSettings, compress
from costeff_fast.training.schedule import SCHEDULES, STEP_ALLOCATIONS
from costeff_fast.training.stage_cache import StageMismatchError


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory, minilm_dir):
    return save_tiny_bert_teacher(tmp_path_factory.mktemp("tiny_teacher"), minilm_dir, num_hidden_layers=3)


@pytest.mark.parametrize("family", ["roberta", "electra"])
def test_compress_end_to_end_with_other_teacher_families(family, tmp_path, minilm_dir):
    """A tiny RoBERTa / ELECTRA classifier (with the packaged tokenizer) goes through every stage; the checkpoint
    serves in the engine and matches the reference model."""
    torch.manual_seed(0)
    shape = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                 max_position_embeddings=80, num_labels=2)
    if family == "roberta":  # pad id 0: the packaged (BERT) tokenizer's
        source = RobertaForSequenceClassification(RobertaConfig(**shape, type_vocab_size=1, pad_token_id=0))
    else:
        source = ElectraForSequenceClassification(ElectraConfig(**shape, embedding_size=32))
    source.save_pretrained(tmp_path / "teacher")
    AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(tmp_path / "teacher")
    budget = budget_with("quick", train_rows=128, eval_rows=64, max_length=32, ta_hidden_epochs=0.25,
                         ta_prediction_epochs=0.25, num_events=1, importance_batches=1, distill_steps=2,
                         recovery_hidden_epochs=0.25, recovery_prediction_epochs=0.25)
    out = tmp_path / "out"
    report = compress("rt", out, teacher_dir=tmp_path / "teacher", budget=budget, work_dir=tmp_path / "work",
                      settings=CompressionSettings(heads=1, ffn=16, embedding_rank=16))
    config = json.loads((out / "config.json").read_text())
    assert config["num_attention_heads"] == [1, 1] and config["intermediate_size"] == [16, 16]
    assert len(report["accuracy"]["costeff_exits"]) == 2
    texts = ["a gripping film", "dull and overlong", "fine"]
    engine = costeff_fast.from_pretrained(out)
    reference = costeff_fast.CostEffForSequenceClassification.from_pretrained(out).eval()
    encoded = engine.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = reference(**encoded, entropy_threshold=0.0).logits
    torch.testing.assert_close(engine.generate_logits(texts, entropy_threshold=0.0), expected, atol=1e-5, rtol=0)


def test_compress_end_to_end_on_rt_rows(tiny_teacher, tmp_path):
    budget = budget_with("quick", train_rows=256, eval_rows=128, max_length=32, ta_hidden_epochs=0.25,
                         ta_prediction_epochs=0.5, num_events=2, importance_batches=2, distill_steps=3,
                         recovery_hidden_epochs=0.25, recovery_prediction_epochs=0.5)
    settings = CompressionSettings(heads=1, ffn=16, embedding_rank=16, allocation="global")
    out = tmp_path / "out"
    report = compress("rt", out, teacher_dir=tiny_teacher, settings=settings, budget=budget,
                      work_dir=tmp_path / "work")
    config = json.loads((out / "config.json").read_text())
    assert sum(config["num_attention_heads"]) == 3 and min(config["num_attention_heads"]) >= 1
    assert sum(config["intermediate_size"]) == 48 and config["embedding_rank"] == 16
    assert config["entropy_threshold"] == report["calibration"]["chosen"]["entropy_threshold"]
    assert (out / "report.png").stat().st_size > 10_000
    assert report["parameters"]["ratio_encoder"] < 0.5
    assert len(report["accuracy"]["costeff_exits"]) == 3
    chosen, sweep = report["calibration"]["chosen"], report["calibration"]["sweep"]
    teacher = report["accuracy"]["teacher"]
    # Whether a row keeps the teacher's accuracy within 1 point depends on training; both outcomes are checked.
    within = [r for r in sweep if r["accuracy"] >= teacher - 0.01 - 1e-12]
    assert chosen["constraint_met"] is bool(within)
    if within:  # the cheapest row that keeps the accuracy
        assert chosen["accuracy"] >= teacher - 0.01 - 1e-12 and chosen["gflops"] == min(r["gflops"] for r in within)
    else:  # none does: the most accurate row
        assert chosen["accuracy"] == max(r["accuracy"] for r in sweep)
    assert chosen["entropy_threshold"] in [r["entropy_threshold"] for r in sweep]
    # The paper's operating point: no sweep row that keeps 96.5 % of the teacher is cheaper (None when none keeps it).
    point = report["targets"]["cheapest_threshold_retaining_96.5_percent"]
    keeps = [r for r in sweep if r["accuracy"] >= 0.965 * teacher]
    if keeps:
        assert point is not None and point["gflops"] == min(r["gflops"] for r in keeps)
        # its FLOPs per row over the teacher's, both at the dev rows' real lengths
        teacher_per_row = report["flops_per_row"]["teacher_real_lengths"]
        assert point["flops_ratio_real_lengths"] == pytest.approx(
            point["gflops"] * 1e9 / report["validation_rows"] / teacher_per_row, rel=1e-9)
        assert point["flops_ratio_real_lengths"] < 1  # narrower than the teacher at every layer
    else:
        assert point is None
    # The headline drop is the out-of-sample one, with the paired standard error of a mean of per-row differences
    # in {-1, 0, 1} (between 0 and 1/sqrt(N - 1))
    targets, rows = report["targets"], report["validation_rows"]
    assert targets["points_under_teacher_out_of_sample"] == pytest.approx(
        (teacher - report["accuracy"]["costeff_calibrated"]) * 100)
    assert 0 <= targets["standard_error_points"] <= 100 / (rows - 1) ** 0.5
    # The calibrated checkpoint serves with its stored threshold and reproduces the reported accuracy.
    model = costeff_fast.from_pretrained(out)
    assert model.entropy_threshold == [chosen["entropy_threshold"]] * 3
    # A second run reuses every finished stage.
    again = compress("rt", tmp_path / "out2", teacher_dir=tiny_teacher, settings=settings, budget=budget,
                     work_dir=tmp_path / "work")
    assert again["accuracy"]["costeff_exits"] == report["accuracy"]["costeff_exits"]
    assert again["stage_seconds"]["slenderization"] == report["stage_seconds"]["slenderization"]
    # A changed budget in the same work directory is refused at the first stage built another way, and no
    # checkpoint is written.
    changed = replace(budget, recovery_prediction_epochs=1.0)
    with pytest.raises(StageMismatchError, match=r"recovered was built with prediction_epochs=0.5 \(this run: 1.0\)"):
        compress("rt", tmp_path / "out3", teacher_dir=tiny_teacher, settings=settings, budget=changed,
                 work_dir=tmp_path / "work")
    assert not (tmp_path / "out3").exists()


def sweep_rows(points):
    return [{"entropy_threshold": t, "accuracy": a, "gflops": g} for t, a, g in points]


def test_pick_threshold_takes_the_cheapest_admissible_row():
    sweep = sweep_rows([(0.0, 0.80, 10.0), (0.1, 0.795, 6.0), (0.2, 0.785, 3.0), (0.3, 0.70, 1.0)])
    chosen = pick_threshold(sweep, reference_accuracy=0.80, max_drop=0.01)
    assert chosen["entropy_threshold"] == 0.1 and chosen["constraint_met"]
    assert pick_threshold(sweep, 0.80, max_drop=0.02)["entropy_threshold"] == 0.2


def test_pick_threshold_reports_an_unmet_constraint():
    sweep = sweep_rows([(0.0, 0.70, 10.0), (0.1, 0.72, 6.0)])
    chosen = pick_threshold(sweep, reference_accuracy=0.80)
    assert not chosen["constraint_met"] and chosen["entropy_threshold"] == 0.1
    with pytest.raises(ValueError, match="empty"):
        pick_threshold([], 0.8)


def test_compress_rejects_unknown_task_and_budget(tmp_path):
    with pytest.raises(ValueError, match="unknown task"):
        compress("sst2", tmp_path)
    with pytest.raises(ValueError, match="budget must be one of"):
        compress("rt", tmp_path, budget="huge")


def test_changed_budget_gets_its_own_stage_cache():
    quick = BUDGETS["quick"]
    assert default_work_name("rt", quick, "mean") == "rt-quick-len64-mean"
    assert default_work_name("rt", replace(quick, max_length=128), "cls") == "rt-quick-len128-cls"
    changed = default_work_name("boolq", replace(quick, train_rows=1500, eval_rows=800), "mean")
    assert changed == "boolq-quick-len64-mean-train_rows1500-eval_rows800"
    ablation = default_work_name("rt", replace(quick, kd_temperature=2.0, early_exit_weight=3.0), "mean")
    assert ablation == "rt-quick-len64-mean-kd_temperature2.0-early_exit_weight3.0"


def test_cli_passes_row_overrides_to_the_budget(monkeypatch, tmp_path):
    seen = {}
    keys = ("parameters", "flops_per_row", "accuracy", "targets")
    report = {**dict.fromkeys(keys), "calibration": {"chosen": {"why": "the cheapest within 0.01"}}}
    monkeypatch.setattr(pipeline, "compress", lambda task, out, **kw: seen.update(kw) or report)
    cli.main(["compress", "--task-default", "--task", "boolq", "--train-rows", "1500", "--eval-rows", "800",
              "--max-length", "128", "--teacher-epochs", "3", "--ta-epochs", "2.5", "--out", str(tmp_path)])
    budget = seen["budget"]
    assert seen["teacher_dir"] is None  # --task-default: compress fine-tunes the packaged MiniLM itself
    assert (budget.train_rows, budget.eval_rows, budget.max_length, budget.teacher_epochs) == (1500, 800, 128, 3)
    assert budget.ta_prediction_epochs == 2.5
    assert budget.recovery_prediction_epochs == pipeline.BUDGETS["quick"].recovery_prediction_epochs
    assert (budget.kd_temperature, budget.early_exit_weight) == (1.0, 1.0)
    cli.main(["compress", "--task-default", "--task", "rt", "--kd-temperature", "2", "--early-exit-weight", "3",
              "--out", str(tmp_path)])
    assert (seen["budget"].kd_temperature, seen["budget"].early_exit_weight) == (2.0, 3.0)
    assert seen["budget"].recovery_kd_temperature is None
    cli.main(["compress", "--task-default", "--task", "rt", "--recovery-temperature", "4", "--out", str(tmp_path)])
    assert (seen["budget"].kd_temperature, seen["budget"].recovery_kd_temperature) == (1.0, 4.0)
    quick = pipeline.BUDGETS["quick"]
    assert (seen["budget"].num_events, seen["budget"].distill_steps) == (quick.num_events, quick.distill_steps)
    cli.main(["compress", "--task-default", "--task", "rt", "--budget", "standard", "--num-events", "10",
              "--distill-steps", "240", "--out", str(tmp_path)])
    assert (seen["budget"].num_events, seen["budget"].distill_steps) == (10, 240)
    assert seen["budget"].recovery_prediction_epochs == pipeline.BUDGETS["standard"].recovery_prediction_epochs
    assert (seen["max_drop"], seen["target_speedup"], seen["settings"].front) == (None, None, ())
    cli.main(["compress", "--task-default", "--task", "rt", "--front", "1/2, 0.25", "--target-speedup", "4",
              "--out", str(tmp_path)])
    assert (seen["max_drop"], seen["target_speedup"], seen["settings"].front) == (None, 4.0, (0.5, 0.25))
    assert (seen["settings"].schedule, seen["settings"].event_steps) == ("linear", "even")
    for schedule, steps in zip(SCHEDULES, reversed(STEP_ALLOCATIONS)):  # every shape and allocation the API knows
        cli.main(["compress", "--task-default", "--task", "rt", "--pruning-schedule", schedule, "--event-steps", steps,
                  "--out", str(tmp_path)])
        assert (seen["settings"].schedule, seen["settings"].event_steps) == (schedule, steps)
    with pytest.raises(SystemExit):
        cli.main(["compress", "--task-default", "--task", "rt", "--kd-temperature", "0", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        cli.main(["compress", "--task-default", "--task", "rt", "--num-events", "0", "--out", str(tmp_path)])

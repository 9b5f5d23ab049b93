"""costeff-fast calibrate: thresholds chosen on a user's file, written into config.json only, with a report."""

from __future__ import annotations

import hashlib
import json
import shutil

import pandas as pd
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import costeff_fast
from conftest import save_tiny_bert_teacher
from costeff_fast import CostEffForSequenceClassification, cli
from costeff_fast.convert import from_encoder_classifier
from costeff_fast.data import load_task
from costeff_fast.training import recalibrate
from costeff_fast.flops import model_flops
from costeff_fast.training.calibrate import (
    ExitTable,
    engine_sweep,
    per_layer_thresholds,
    pick_threshold_for_speedup,
    single_threshold_curve,
)
from costeff_fast.training.prediction import engine_predict, exit_logits
from costeff_fast.training.recalibrate import CalibrateArgumentError, calibrate_checkpoint, write_entropy_threshold

NAMES = ["fresh", "rotten"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, minilm_dir):
    """A COST-EFF checkpoint converted (untrained exits) from a tiny 3-layer BERT whose classes are named."""
    root = tmp_path_factory.mktemp("calibrate")
    teacher_dir = save_tiny_bert_teacher(root / "teacher", minilm_dir, num_hidden_layers=3)
    teacher = AutoModelForSequenceClassification.from_pretrained(
        teacher_dir, id2label=dict(enumerate(NAMES)), label2id={n: i for i, n in enumerate(NAMES)})
    torch.manual_seed(1)
    model = from_encoder_classifier(teacher, exit_pooling="mean")
    with torch.no_grad():  # spread the exits' confidence so thresholds matter
        for head in model.exits:
            for parameter in head.parameters():
                parameter.normal_(0, 2.0)
    model.save_pretrained(root / "model")
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    tokenizer.model_max_length = 32
    tokenizer.save_pretrained(root / "model")
    return root / "model"


@pytest.fixture
def model_dir(checkpoint, tmp_path):
    """A fresh copy per test, since calibration writes into it."""
    return shutil.copytree(checkpoint, tmp_path / "model")


@pytest.fixture(scope="module")
def reviews(tmp_path_factory):
    """200 real rt validation rows as a user's CSV with string labels."""
    splits = load_task("rt", max_eval_rows=200, seed=0)
    frame = splits["validation"].to_pandas()
    names = splits["validation"].features["label"].names
    path = tmp_path_factory.mktemp("reviews") / "reviews.csv"
    pd.DataFrame({"review": frame["text"], "verdict": [names[i] for i in frame["label"]]}).to_csv(path, index=False)
    return path


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_exit_table_gives_the_engines_exit_layers(checkpoint, reviews):
    engine = costeff_fast.from_pretrained(checkpoint)
    reference = CostEffForSequenceClassification.from_pretrained(checkpoint).eval()
    frame = pd.read_csv(reviews)
    texts, labels = frame["review"].tolist(), torch.tensor([NAMES.index(v) for v in frame["verdict"]])
    logits = exit_logits(reference, engine.tokenizer, texts, batch_size=64, max_length=engine.max_length)
    lengths = engine.encode(texts)[2]
    table = ExitTable.build(logits, labels, lengths, engine.config)
    entropies = table.entropies[:, :-1].flatten()
    for thresholds in (0.0, float(entropies.median()), 10.0, [float(entropies.quantile(0.3)), 0.0, 0.0],
                       [0.0, float(entropies.quantile(0.7)), 0.0]):
        expected = table.exit_layers(thresholds)
        _, layers = engine_predict(engine, texts, 64, thresholds)
        assert (layers == expected).double().mean() >= 0.99, thresholds
    assert table.exit_layers(0.0).eq(3).all() and table.exit_layers(10.0).eq(1).all()


def synthetic_table(seed=0, rows=400, layers=4):
    """Later exits are more accurate and more confident; costs grow with depth."""
    generator = torch.Generator().manual_seed(seed)
    depth = torch.arange(1, layers + 1, dtype=torch.float32)
    entropies = torch.rand(rows, layers, generator=generator) * (0.7 / depth)
    correct = torch.rand(rows, layers, generator=generator) < (0.55 + 0.1 * depth) - entropies * 0.3
    cumulative = torch.arange(1, layers + 1, dtype=torch.float64).expand(rows, layers) * 1e9
    return ExitTable(entropies, correct, cumulative.clone())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_per_layer_search_meets_the_goal_and_never_loses_to_its_start(seed):
    table = synthetic_table(seed)
    curve = single_threshold_curve(table)
    start = curve[len(curve) // 2]
    vector, result = per_layer_thresholds(table, [start["entropy_threshold"]] * 4, min_accuracy=start["accuracy"])
    assert result["accuracy"] >= start["accuracy"] and result["gflops"] <= start["gflops"]
    assert result == table.evaluate(vector) and vector[-1] == 0.0
    vector, result = per_layer_thresholds(table, [start["entropy_threshold"]] * 4, max_gflops=start["gflops"])
    assert result["gflops"] <= start["gflops"] * (1 + 1e-9) and result["accuracy"] >= start["accuracy"]
    with pytest.raises(ValueError, match="exactly one"):
        per_layer_thresholds(table, [0.0] * 4)


def test_pick_threshold_for_speedup():
    sweep = [{"entropy_threshold": t, "accuracy": a, "gflops": g}
             for t, a, g in [(0.0, 0.90, 12.0), (0.1, 0.89, 6.0), (0.2, 0.86, 3.9), (0.3, 0.80, 2.0)]]
    assert pick_threshold_for_speedup(sweep, 12.0, 2.0)["entropy_threshold"] == 0.1
    assert pick_threshold_for_speedup(sweep, 12.0, 3.0)["entropy_threshold"] == 0.2
    unmet = pick_threshold_for_speedup(sweep, 12.0, 100.0)
    assert unmet["entropy_threshold"] == 0.3 and not unmet["constraint_met"]
    with pytest.raises(ValueError, match=">= 1"):
        pick_threshold_for_speedup(sweep, 12.0, 0.5)


def test_calibrate_writes_the_threshold_into_config_only(model_dir, reviews, tmp_path):
    config_before = json.loads((model_dir / "config.json").read_text())
    weights = digest(model_dir / "model.safetensors")
    report = calibrate_checkpoint(model_dir, reviews, text_column="review", label_column="verdict", max_drop=0.02)
    config_after = json.loads((model_dir / "config.json").read_text())
    tau = report["single"]["entropy_threshold"]
    assert config_after.pop("entropy_threshold") == tau == report["written"]["entropy_threshold"]
    config_before.pop("entropy_threshold", None)
    assert config_after == config_before and digest(model_dir / "model.safetensors") == weights
    assert json.loads((model_dir / "calibration" / "calibration.json").read_text()) == json.loads(json.dumps(report))
    assert (model_dir / "calibration" / "calibration.png").stat().st_size > 10_000
    assert costeff_fast.from_pretrained(model_dir).entropy_threshold == [tau] * 3
    # The goal holds against the full-depth reference, and the chosen row is the cheapest that meets it.
    assert report["reference"] == "full_depth" and report["rows"] == 200
    # The goal can always be met here: the sweep starts at threshold 0 (full depth), whose accuracy is the
    # reference itself, so the chosen row must meet it and be the cheapest that does.
    full_depth = report["full_depth"]["accuracy"]
    assert report["sweep"][0]["entropy_threshold"] == 0.0 and report["sweep"][0]["accuracy"] == full_depth
    assert report["single"]["constraint_met"] is True
    assert report["single"]["accuracy"] >= full_depth - 0.02 - 1e-12
    # the cheapest that clears the goal plus the margin cross-validation chose (the smallest that held, if any)
    margin = report["single"]["margin"]
    met = [c["margin"] for c in margin["candidates"] if c["goal_met"]]
    assert margin["margin"] == (met[0] if met else max(margin["candidates"], key=lambda c: c["accuracy"])["margin"])
    cheaper = [r for r in report["sweep"] if r["gflops"] < report["single"]["gflops"]]
    assert all(r["accuracy"] < full_depth - 0.02 + margin["margin"] - 1e-12 for r in cheaper)
    # Out of sample: five folds of 40 rows, each scored by a threshold chosen on the other 160.
    held = report["single"]["out_of_sample"]
    assert held["rows"] == 200 and held["folds"] == 5 and [f["rows"] for f in held["per_fold"]] == [40] * 5
    assert held["accuracy"] == pytest.approx(sum(f["accuracy"] for f in held["per_fold"]) / 5)
    assert held["reference_accuracy"] == full_depth and held["margin"] == "auto"
    assert report["written"] == {"thresholds": "single", "asked": "single", "why": "a single threshold was asked for",
                                 "entropy_threshold": tau, "previous_entropy_threshold": None}


def test_calibrate_per_layer_and_target_speedup(model_dir, reviews):
    report = calibrate_checkpoint(model_dir, reviews, text_column="review", label_column="verdict",
                                  target_speedup=1.5, thresholds="per-layer", report_dir=model_dir / "r")
    written = json.loads((model_dir / "config.json").read_text())["entropy_threshold"]
    # per-layer thresholds are written only when they win out of sample (the decision is tested on its own below)
    wins = report["per_layer"]["out_of_sample"]["beats_single"]
    assert report["written"]["thresholds"] == ("per-layer" if wins else "single")
    assert written == (report["per_layer"]["entropy_threshold"] if wins else report["single"]["entropy_threshold"])
    # The fixture's exits are confident (heads drawn with std 2), so the sweep's largest threshold stops most rows
    # at layer 1 of 3: some sweep row is 1.5x cheaper than full depth, and the goal must be met.
    full_gflops = report["full_depth"]["gflops_per_row"] * report["rows"]
    admissible = [r for r in report["sweep"] if r["gflops"] <= full_gflops / 1.5 * (1 + 1e-9)]
    assert admissible, [full_gflops / r["gflops"] for r in report["sweep"]]
    assert report["single"]["constraint_met"] is True
    assert report["single"]["speedup_flops"] >= 1.5 - 1e-9
    assert report["single"]["accuracy"] == max(r["accuracy"] for r in admissible)  # the most accurate of those
    model = costeff_fast.from_pretrained(model_dir)
    assert model.entropy_threshold == pytest.approx(written if wins else [written] * 3)
    texts = pd.read_csv(reviews)["review"].tolist()
    _, layers = engine_predict(model, texts, 64, report["per_layer"]["entropy_threshold"])
    assert layers.double().mean().item() == pytest.approx(report["per_layer"]["mean_exit_layer"])
    held = report["per_layer"]["out_of_sample"]
    assert held["rows"] == 200 and len(held["per_fold"]) == 5 and held["goal_met"] is (
        held["speedup_flops"] >= 1.5 * (1 - 1e-9))


@pytest.mark.parametrize("held_out_accuracy", [0.0, 1.0])
def test_per_layer_thresholds_are_written_only_when_they_win_out_of_sample(model_dir, reviews, monkeypatch,
                                                                           held_out_accuracy):
    """The cross-validated per-layer result is replaced by one that loses to the cross-validated single threshold
    (accuracy 0) or beats it (accuracy 1 at no FLOPs, the goal met): only the latter is written."""
    real = recalibrate._per_layer_cross_validation

    def rigged(*args, **kwargs):
        result = {**real(*args, **kwargs), "accuracy": held_out_accuracy}
        return {**result, "gflops": 0.0, "gflops_per_row": 0.0, "goal_met": True} if held_out_accuracy else result

    monkeypatch.setattr(recalibrate, "_per_layer_cross_validation", rigged)
    report = calibrate_checkpoint(model_dir, reviews, text_column="review", label_column="verdict",
                                  max_drop=0.02, thresholds="per-layer", folds=3)
    written = json.loads((model_dir / "config.json").read_text())["entropy_threshold"]
    assert report["per_layer"]["out_of_sample"]["beats_single"] is (held_out_accuracy == 1.0)
    if held_out_accuracy == 1.0:
        assert report["written"]["thresholds"] == "per-layer" and written == report["per_layer"]["entropy_threshold"]
    else:
        assert report["written"]["thresholds"] == "single" and written == report["single"]["entropy_threshold"]
        assert "do not win out of sample" in report["written"]["why"]
    assert report["written"]["asked"] == "per-layer" and len(report["per_layer"]["out_of_sample"]["per_fold"]) == 3


def test_engine_sweep_keeps_each_rows_outcome(checkpoint, reviews):
    """Every row's exit layer and FLOPs at each threshold, against the engine run again and :func:`model_flops`."""
    engine = costeff_fast.from_pretrained(checkpoint)
    frame = pd.read_csv(reviews).head(70)
    texts, labels = frame["review"].tolist(), torch.tensor([NAMES.index(v) for v in frame["verdict"]])
    outcomes = engine_sweep(engine, texts, labels, [0.0, 0.4, [0.5, 0.1, 0.0]], batch_size=32)
    lengths = engine.encode(texts)[2]
    for t, tau in enumerate(outcomes.thresholds):
        logits, layers = engine_predict(engine, texts, 32, tau)
        assert outcomes.exit_layers[t].tolist() == layers.tolist()
        assert outcomes.correct[t].tolist() == (logits.argmax(-1) == labels).tolist()
        for n in (0, 33, 69):
            assert outcomes.row_flops[t, n].item() == model_flops(engine.config, [int(lengths[n])], [int(layers[n])])
        row = outcomes.rows()[t]
        assert row["gflops"] == pytest.approx(model_flops(engine.config, lengths, layers) / 1e9, rel=1e-12)
    assert outcomes.full_depth_flops.sum().item() == model_flops(engine.config, lengths)
    assert outcomes.exit_layers[0].eq(3).all()


def test_calibrate_refusals(model_dir, reviews, tmp_path):
    before = (model_dir / "config.json").read_text()
    with pytest.raises(CalibrateArgumentError, match=r"^--label-column verdict: label\(s\) \['stale'\] are not among "
                                                     r"the model's labels \['fresh', 'rotten'\]"):
        bad = tmp_path / "bad.csv"
        pd.read_csv(reviews).replace({"rotten": "stale"}).to_csv(bad, index=False)
        calibrate_checkpoint(model_dir, bad, text_column="review", label_column="verdict")
    with pytest.raises(CalibrateArgumentError, match=r"^--validation-file: column\(s\) \['text'\] not found"):
        calibrate_checkpoint(model_dir, reviews, label_column="verdict")
    with pytest.raises(CalibrateArgumentError, match=r"model_type 'bert' is not a COST-EFF model"):
        calibrate_checkpoint(_bert_dir(tmp_path), reviews)
    with pytest.raises(CalibrateArgumentError, match="both given"):
        calibrate_checkpoint(model_dir, reviews, max_drop=0.01, target_speedup=2.0)
    with pytest.raises(CalibrateArgumentError, match=r"--target-speedup 0.5: must be >= 1"):
        calibrate_checkpoint(model_dir, reviews, target_speedup=0.5)
    assert (model_dir / "config.json").read_text() == before and not (model_dir / "calibration").exists()


def test_a_teacher_that_cannot_be_the_reference_is_refused_before_any_forward(model_dir, reviews, tmp_path,
                                                                               minilm_dir, monkeypatch):
    def no_forward(*args, **kwargs):
        raise AssertionError("a forward ran before the teacher was checked")

    monkeypatch.setattr(recalibrate, "exit_logits", no_forward)
    before = (model_dir / "config.json").read_text()
    with pytest.raises(CalibrateArgumentError, match=r"^--teacher .*missing: no such directory.*leave out --teacher"):
        calibrate_checkpoint(model_dir, reviews, text_column="review", label_column="verdict",
                             teacher_dir=tmp_path / "missing")
    teacher = save_tiny_bert_teacher(tmp_path / "teacher", minilm_dir)
    config = json.loads((teacher / "config.json").read_text())
    for changes, shown in (({"id2label": {"0": "rotten", "1": "fresh"}}, r"\['rotten', 'fresh'\]"),
                           ({"id2label": {"0": "a", "1": "b", "2": "c"}}, r"\['a', 'b', 'c'\]")):
        (teacher / "config.json").write_text(json.dumps({**config, **changes}))
        with pytest.raises(CalibrateArgumentError, match=rf"^--teacher .*: its classes {shown} are not the model's "
                                                         r"\['fresh', 'rotten'\]"):
            calibrate_checkpoint(model_dir, reviews, text_column="review", label_column="verdict", teacher_dir=teacher)
    (teacher / "model.safetensors").unlink()
    with pytest.raises(CalibrateArgumentError, match=r"^--teacher .*: no model.safetensors"):
        calibrate_checkpoint(model_dir, reviews, text_column="review", label_column="verdict", teacher_dir=teacher)
    assert (model_dir / "config.json").read_text() == before


def _bert_dir(tmp_path):
    directory = tmp_path / "bert"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({"model_type": "bert"}))
    return directory


def test_a_failed_config_write_leaves_the_old_config(model_dir, monkeypatch):
    before = (model_dir / "config.json").read_text()

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(recalibrate.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        write_entropy_threshold(model_dir, 0.3)
    assert (model_dir / "config.json").read_text() == before
    assert not [p for p in model_dir.iterdir() if p.name.startswith(".config.")]


def test_cli_calibrate(model_dir, reviews, capsys):
    cli.main(["calibrate", "--model", str(model_dir), "--validation-file", str(reviews), "--text-column", "review",
              "--label-column", "verdict", "--max-drop", "0.05"])
    out = capsys.readouterr().out
    assert "200 rows; reference accuracy" in out and f"to {model_dir}/config.json" in out
    with pytest.raises(SystemExit) as info:
        cli.main(["calibrate", "--model", str(model_dir / "missing"), "--validation-file", str(reviews)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no config.json there" in err and "Traceback" not in err


def test_beats_out_of_sample_by_hand():
    single = {"accuracy": 0.80, "gflops": 10.0, "goal_met": True}
    assert recalibrate.beats_out_of_sample({"accuracy": 0.80, "gflops": 9.0, "goal_met": True}, single)  # cheaper
    assert recalibrate.beats_out_of_sample({"accuracy": 0.81, "gflops": 10.0, "goal_met": True}, single)  # better
    assert not recalibrate.beats_out_of_sample({"accuracy": 0.80, "gflops": 10.0, "goal_met": True}, single)  # tie
    assert not recalibrate.beats_out_of_sample({"accuracy": 0.82, "gflops": 11.0, "goal_met": True}, single)  # a trade
    assert not recalibrate.beats_out_of_sample({"accuracy": 0.81, "gflops": 9.0, "goal_met": False}, single)


def test_calibrate_on_two_rows_cross_validates_without_a_margin(model_dir, reviews, tmp_path):
    """The smallest data calibrate takes: two folds of one row each leave one row to choose on, too few to
    cross-validate a margin within; both procedures still run and report, with margin 0 in every fold."""
    two = tmp_path / "two.csv"
    pd.read_csv(reviews).head(2).to_csv(two, index=False)
    report = calibrate_checkpoint(model_dir, two, text_column="review", label_column="verdict", max_drop=0.01,
                                  thresholds="per-layer")
    assert report["rows"] == 2
    assert [fold["margin"] for fold in report["single"]["out_of_sample"]["per_fold"]] == [0.0, 0.0]
    assert [fold["margin"] for fold in report["per_layer"]["out_of_sample"]["per_fold"]] == [0.0, 0.0]

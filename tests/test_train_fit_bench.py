"""bench/train_fit.py: its committed output scores the dev rows as compress does, so its training-row figures are
comparable with the reports beside them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from conftest import make_tiny_model
from costeff_fast.training.budget import BUDGETS
from costeff_fast.training.data import prepare_data
from costeff_fast.training.prediction import exit_accuracies
from costeff_fast.training.validate import load_compress_data

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


def test_the_script_scores_a_checkpoint_on_training_and_dev_rows(tmp_path, minilm_dir, monkeypatch, capsys):
    """A tiny random checkpoint with the real tokenizer on rt at the demo budget: one JSON line with six exits per
    split, the dev figures those of compress's own evaluation (the validation loader of the same data)."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "bench"))
    import train_fit

    model = make_tiny_model(num_labels=2, attention_head_size=16, vocab_size=30522)
    model.save_pretrained(tmp_path / "checkpoint")
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    tokenizer.save_pretrained(tmp_path / "checkpoint")
    lines = train_fit.main(["--task", "rt", "--budget", "demo", "--rows", "40", str(tmp_path / "checkpoint")])

    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == lines
    (line,) = lines
    assert line["train_rows"] == 40 and len(line["train"]) == len(line["validation"]) == model.config.num_hidden_layers
    # every train figure is a count out of 40 rows
    assert all(abs(accuracy * 40 - round(accuracy * 40)) < 1e-2 for accuracy in line["train"])
    tokenizer.padding_side = "right"
    data, _ = prepare_data(load_compress_data("rt", None, teacher_config=None), BUDGETS["demo"], tokenizer)
    expected = exit_accuracies(model.eval(), data.eval_loader())
    assert line["validation"] == pytest.approx(expected, abs=5e-5)


def test_a_sample_of_no_rows_is_refused_before_any_data_is_read(tmp_path, minilm_dir, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "bench"))
    import train_fit

    with pytest.raises(SystemExit):
        train_fit.main(["--task", "rt", "--rows", "0", str(tmp_path)])
    assert "--rows 0: pass a positive number" in capsys.readouterr().err

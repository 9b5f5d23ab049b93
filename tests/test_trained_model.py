"""A real model trained in the test session (the ``trained_rt`` fixture of conftest.py: ``run_demo``, what
``make demo`` runs, on a small budget: the packaged MiniLM fine-tuned as the teacher, the ``--task-default`` path,
then TA, slenderization to compress's default widths, recovery and calibration on rt). Nothing here skips.

Bounds (each derived where it is used):

* chance: a predictor that ignores the text scores at most the majority-class rate ``p_maj`` in expectation, with
  a standard deviation of at most ``sqrt(0.25 / N)`` on ``N`` rows; the model must beat ``p_maj + 3 sqrt(0.25 / N)``
  on rows that took no part in training, checkpoint choice or calibration (one-sided, about 0.13 % of false alarms);
* reproduction: a re-evaluation of the saved checkpoint may differ from the reported figures only on rows whose
  decision sits on a tie (an entropy within 1e-5 nats of the threshold, docs/design.md) or whose two logits are
  within 2e-4 (the engine's logits are within 1e-4 of the reference forward's);
* early exit: at the calibrated threshold the held-out accuracy stays within the drop that calibration accepted on
  its own rows, plus the sampling noise of a paired difference (derived in the test);
* int8: :func:`test_int8.check_trained`'s statistical bounds (McNemar, no checkpoint tuned on);
* ONNX: every output within 1e-4 of the reference forward (the export's contract), the final logits within 2e-4 of
  the engine's at threshold 0 (1e-4 each from the reference).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoTokenizer

import costeff_fast
from costeff_fast import exit_entropy
from costeff_fast.data import TASKS
from costeff_fast.export import TOLERANCE, export_onnx, output_names
from costeff_fast.training.demo import DEFAULT_THRESHOLDS
from test_int8 import check_trained

TIE = 1e-5  # nats: two computations of one entropy may fall on either side of a threshold this close
MARGIN = 2e-4  # logits: two computations each within 1e-4 of the reference can disagree on the label only below it


def chance_bound(labels: torch.Tensor) -> float:
    """The majority-class rate plus three standard deviations of a text-blind predictor's accuracy on these rows."""
    majority = torch.bincount(labels).max().item() / len(labels)
    return majority + 3 * math.sqrt(0.25 / len(labels))


def batched(call, texts: list[str], size: int = 64) -> torch.Tensor:
    return torch.cat([call(texts[start:start + size]) for start in range(0, len(texts), size)])


@pytest.fixture(scope="module")
def exit_logits(trained_rt) -> torch.Tensor:
    """``[N, L, C]``: every exit's logits of the saved checkpoint's reference (padded PyTorch) forward on all of rt's
    validation rows, tokenized as the engine does (truncated at the budget's 64 tokens)."""
    model = costeff_fast.CostEffForSequenceClassification.from_pretrained(trained_rt.model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(trained_rt.model_dir)

    def forward(rows):
        encoded = tokenizer(rows, padding=True, truncation=True, max_length=trained_rt.budget.max_length,
                            return_tensors="pt")
        with torch.no_grad():
            return torch.stack(model(**encoded, entropy_threshold=0.0).exit_logits, dim=1)

    return batched(forward, trained_rt.texts)


@pytest.fixture(scope="module")
def engine(trained_rt):
    return costeff_fast.from_pretrained(trained_rt.model_dir)


def threshold_rule(logits: torch.Tensor, tau: float):
    """The exit rule written out (docs/design.md): a row answers at the first exit whose entropy is below ``tau``,
    the last exit always. Returns the answering layer (1-based), the label, and which rows are uncertain (a tie at
    some exit before the last, or a logit margin below :data:`MARGIN` at the answering exit)."""
    entropy = exit_entropy(logits)  # [N, L]
    confident = entropy < tau
    confident[:, -1] = True
    layer = confident.int().argmax(dim=1)  # the first True
    answer = logits[torch.arange(len(logits)), layer]
    top = answer.topk(2, dim=-1).values
    uncertain = ((entropy[:, :-1] - tau).abs() < TIE).any(dim=1) | (top[:, 0] - top[:, 1] < MARGIN)
    return layer + 1, answer.argmax(dim=-1), uncertain


def test_demo_returns_and_writes_the_run(trained_rt):
    results, config = trained_rt.results, json.loads((trained_rt.model_dir / "config.json").read_text())
    assert json.loads((trained_rt.work_dir / "demo_results.json").read_text()) == results
    assert (results["task"], results["budget"]) == ("rt", "ci")
    assert results["train_rows"] == trained_rt.budget.train_rows
    assert results["validation_rows"] == TASKS["rt"].validation_size == len(trained_rt.texts)
    # compress's defaults: 2 heads, FFN 160 per layer of the 6-layer MiniLM, the embedding not factorized; mean-pooled
    # exits
    layers = AutoConfig.from_pretrained(trained_rt.work_dir / "teacher").num_hidden_layers
    assert config["num_hidden_layers"] == layers == 6
    assert config["num_attention_heads"] == [2] * layers and config["intermediate_size"] == [160] * layers
    assert config["embedding_rank"] is None and config["exit_pooling"] == "mean"
    assert not all(config["exit_pooler"])  # some exit reads the token mean
    assert len(results["exit_accuracies"]) == len(results["ta_exit_accuracies"]) == layers
    # the --task-default path: the packaged MiniLM was fine-tuned here as the teacher, with rt's classes
    assert "teacher" in results["step_seconds"]
    teacher = AutoConfig.from_pretrained(trained_rt.work_dir / "teacher")
    assert [teacher.id2label[i] for i in range(teacher.num_labels)] == list(TASKS["rt"].label_names)
    # the sweep: the listed thresholds plus the calibrated one (stored in the checkpoint), marked once
    calibrated = trained_rt.report["calibration"]["chosen"]["entropy_threshold"]
    assert config["entropy_threshold"] == calibrated
    sweep = results["sweep"]
    assert [row["entropy_threshold"] for row in sweep] == sorted(set(DEFAULT_THRESHOLDS) | {calibrated})
    assert [row["entropy_threshold"] for row in sweep if row["calibrated"]] == [calibrated]
    # by the rule: threshold 0 answers every row at the last layer; a higher threshold never answers later
    assert sweep[0]["entropy_threshold"] == 0.0 and sweep[0]["mean_exit_layer"] == layers
    exits = [row["mean_exit_layer"] for row in sweep]
    assert all(1 <= e <= layers for e in exits) and exits == sorted(exits, reverse=True)


def test_reported_accuracies_reproduce_on_the_saved_checkpoint(trained_rt, exit_logits, engine):
    """demo_results.json (all validation rows, the engine) and report.json (compress's calibration rows) against
    the rule applied to the saved checkpoint's reference forward, up to the uncertain rows."""
    calibrated = trained_rt.report["calibration"]["chosen"]["entropy_threshold"]
    assert engine.entropy_threshold == [calibrated] * exit_logits.shape[1]
    labels, count = trained_rt.labels, len(trained_rt.labels)
    for row in trained_rt.results["sweep"]:
        layer, label, uncertain = threshold_rule(exit_logits, row["entropy_threshold"])
        assert abs(row["accuracy"] * count - (label == labels).sum().item()) <= uncertain.sum().item() + 1e-6, row
        ties = uncertain.sum().item() * (exit_logits.shape[1] - 1)  # a tie row may answer at any layer
        assert abs(row["mean_exit_layer"] * count - layer.sum().item()) <= ties + 1e-6, row
    # compress's own figures on its calibration rows: the rows rebuilt here are the ones it used
    index = trained_rt.eval_index
    for row in trained_rt.report["calibration"]["sweep"]:
        _, label, uncertain = threshold_rule(exit_logits[index], row["entropy_threshold"])
        correct = (label == labels[index]).sum().item()
        assert abs(row["accuracy"] * len(index) - correct) <= uncertain.sum().item() + 1e-6, row
    for layer, reported in enumerate(trained_rt.report["accuracy"]["costeff_exits"]):
        top = exit_logits[index, layer].topk(2, dim=-1).values
        correct = (exit_logits[index, layer].argmax(-1) == labels[index]).sum().item()
        assert abs(reported * len(index) - correct) <= (top[:, 0] - top[:, 1] < MARGIN).sum().item() + 1e-6


def test_compressed_model_beats_chance_on_held_out_rows(trained_rt, engine):
    """On the validation rows that took no part in training, checkpoint choice or calibration (1,020 rows: bound
    about p_maj + 0.047), at full depth and at the stored calibrated threshold (what users get)."""
    rows = trained_rt.held_out_index
    texts, labels = [trained_rt.texts[i] for i in rows], trained_rt.labels[rows]
    bound = chance_bound(labels)
    for tau in (0.0, None):
        accuracy = (batched(lambda chunk: engine.predict(chunk, entropy_threshold=tau), texts) == labels)
        assert accuracy.double().mean().item() > bound, (tau, bound)
    # the teacher the pipeline fine-tuned (reported on every validation row; its checkpoint was chosen on the
    # evaluation rows, a part of these, so this is a loose check of the fine-tuning, not a held-out score)
    assert trained_rt.results["teacher_accuracy"] > chance_bound(trained_rt.labels)


def test_early_exit_stays_near_full_depth_on_held_out_rows(trained_rt, engine, exit_logits):
    """Calibration picks the cheapest threshold whose accuracy on its rows (E) is at least the teacher's minus
    max_drop, else the most accurate one, so there cal_E >= min(full_E, teacher_E - max_drop): it accepts a drop
    D = max(0, full_E - cal_E) against full depth. On the held-out rows (H) the same drop plus noise: per row the
    paired difference d = correct_cal - correct_full lies in {-1, 0, 1} and is non-zero with probability p (the two
    disagree), so its variance is at most p and mean(d_H) - mean(d_E) has a standard deviation of at most
    sqrt(p (1/|E| + 1/|H|)). Four of them, not three, because the threshold was chosen on E among the sweep's
    <= 16 candidates (a union bound: 16 * P(Z > 4) ~ 5e-4); p is the disagreement rate on all rows plus three of
    its standard errors."""
    calibration = trained_rt.report["calibration"]
    predictions = {tau: batched(lambda chunk: engine.predict(chunk, entropy_threshold=tau), trained_rt.texts)
                   for tau in (0.0, None)}
    correct = {tau: (p == trained_rt.labels).double() for tau, p in predictions.items()}
    accuracy = {(tau, name): correct[tau][rows].mean().item() for tau in correct
                for name, rows in (("E", trained_rt.eval_index), ("H", trained_rt.held_out_index))}
    count_e, count_h = len(trained_rt.eval_index), len(trained_rt.held_out_index)
    floor = min(accuracy[0.0, "E"], trained_rt.report["accuracy"]["teacher"] - calibration["max_drop"])
    calibrated = calibration["chosen"]["entropy_threshold"]
    index = trained_rt.eval_index
    uncertain = sum(threshold_rule(exit_logits[index], tau)[2].sum().item() for tau in (0.0, calibrated))
    assert accuracy[None, "E"] >= floor - uncertain / count_e - 1e-9  # re-evaluated: up to the uncertain rows
    accepted = max(0.0, accuracy[0.0, "E"] - accuracy[None, "E"])
    disagree = (predictions[0.0] != predictions[None]).double().mean().item()
    count = len(trained_rt.labels)
    p = disagree + 3 * math.sqrt(disagree * (1 - disagree) / count) + 1 / count
    slack = 4 * math.sqrt(p * (1 / count_e + 1 / count_h))
    assert accuracy[None, "H"] >= accuracy[0.0, "H"] - accepted - slack, (accuracy, accepted, slack)


def test_onnx_export_of_the_trained_model_matches_the_engine(trained_rt, exit_logits, engine, tmp_path):
    """The trained checkpoint (mean-pooled exits, a pooled last exit, the full word embedding) through
    export_onnx and onnxruntime, on 64 real validation rows."""
    import onnxruntime

    exported = export_onnx(trained_rt.model_dir, tmp_path / "model.onnx")
    layers = exit_logits.shape[1]
    assert exported.max_abs_diff is not None and exported.max_abs_diff <= TOLERANCE  # its own check ran
    texts = trained_rt.texts[:64]
    batch = engine.tokenizer(texts, padding=True, truncation=True, max_length=engine.max_length, return_tensors="np")
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [node.name for node in session.get_outputs()] == output_names(layers)
    outputs = session.run(None, {name: batch[name] for name in ("input_ids", "attention_mask", "token_type_ids")})
    for layer in range(layers):
        np.testing.assert_allclose(outputs[layer], exit_logits[:64, layer].numpy(), atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(outputs[-1], engine.generate_logits(texts, entropy_threshold=0.0).numpy(),
                               atol=2 * TOLERANCE, rtol=0)


def test_int8_against_fp32_on_the_trained_model(trained_rt):
    """test_int8.check_trained on all 1,276 rt validation rows, at torch's thread count like the rest of CI."""
    check_trained(trained_rt.model_dir, trained_rt.texts, trained_rt.labels)

"""DistilBERT as a pipeline teacher: its own config names (``n_heads``, ``hidden_dim``, ``dim``, ``n_layers``) are
read by validation, its forward gets no ``token_type_ids``, and ``compress`` takes it through every stage."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from transformers import AutoTokenizer, DistilBertConfig, DistilBertForSequenceClassification

import costeff_fast
from costeff_fast import CostEffForSequenceClassification
from costeff_fast.convert import from_encoder_classifier
from costeff_fast.data import load_task
from costeff_fast.training.budget import budget_with
from costeff_fast.training.data import prepare_data
from costeff_fast.training.losses import classification_loss, distillation_loss
from costeff_fast.training.pipeline import CompressionSettings, compress
from costeff_fast.training.prediction import exit_accuracies, hf_predict
from costeff_fast.training.stages import distill_teaching_assistant, recover, slenderize_stage
from costeff_fast.training.trainer import forward_inputs
from costeff_fast.training.validate import CompressArgumentError, check_settings, read_teacher_config

#: 4 heads, FFN 64, hidden 32, 2 layers, 2 labels (rt's count)
SHAPE = dict(vocab_size=30522, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=80,
             num_labels=2)
BUDGET = budget_with("quick", train_rows=128, eval_rows=64, max_length=32, ta_hidden_epochs=0.25,
                     ta_prediction_epochs=0.25, num_events=1, importance_batches=1, distill_steps=2,
                     recovery_hidden_epochs=0.25, recovery_prediction_epochs=0.25)
TEXTS = ["a gripping film", "dull and overlong", "fine"]


def make_distilbert(seed: int = 0) -> DistilBertForSequenceClassification:
    torch.manual_seed(seed)
    return DistilBertForSequenceClassification(DistilBertConfig(**SHAPE))


@pytest.fixture(scope="module")
def distilbert_teacher(tmp_path_factory, minilm_dir):
    """A tiny random DistilBERT classifier saved with the packaged (BERT) tokenizer, which makes token_type_ids."""
    directory = tmp_path_factory.mktemp("distilbert_teacher")
    make_distilbert().save_pretrained(directory)
    AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(directory)
    return directory


def test_config_json_holds_distilbert_names_not_bert_names(distilbert_teacher):
    """The premise of the validation mapping: save_pretrained writes DistilBERT's own keys."""
    config = json.loads((distilbert_teacher / "config.json").read_text())
    assert (config["n_heads"], config["hidden_dim"], config["dim"], config["n_layers"]) == (4, 64, 32, 2)
    assert not {"num_attention_heads", "intermediate_size", "hidden_size"} & set(config)


def test_distilbert_widths_are_checked_under_their_own_names(distilbert_teacher, tmp_path):
    config, label = read_teacher_config(distilbert_teacher)
    check_settings(CompressionSettings(heads=4, ffn=64, embedding_rank=32), config, label)  # the full widths pass
    for settings, flag, limit in ((CompressionSettings(heads=5, ffn=16, embedding_rank=16), "--heads", 4),
                                  (CompressionSettings(heads=1, ffn=65, embedding_rank=16), "--ffn", 64),
                                  (CompressionSettings(heads=1, ffn=16, embedding_rank=33), "--embedding-rank", 32)):
        with pytest.raises(CompressArgumentError) as refused:
            check_settings(settings, config, label)
        message = str(refused.value)
        assert message.startswith(flag) and f"has {limit} " in message and "\n" not in message


def test_compress_refuses_too_many_heads_for_a_distilbert_teacher(distilbert_teacher, tmp_path):
    with pytest.raises(CompressArgumentError, match=r"^--heads 5: the teacher has 4 attention heads"):
        compress("rt", tmp_path / "out", teacher_dir=distilbert_teacher, work_dir=tmp_path / "work",
                 settings=CompressionSettings(heads=5, ffn=16, embedding_rank=16))
    assert not (tmp_path / "work").exists() and not (tmp_path / "out").exists()


def test_forward_inputs_drop_token_type_ids_only_for_a_forward_without_them():
    inputs = {"input_ids": torch.ones(2, 3, dtype=torch.long), "attention_mask": torch.ones(2, 3, dtype=torch.long),
              "token_type_ids": torch.zeros(2, 3, dtype=torch.long)}
    assert set(forward_inputs(make_distilbert(), inputs)) == {"input_ids", "attention_mask"}
    student = from_encoder_classifier(make_distilbert())
    assert set(forward_inputs(student, inputs)) == set(inputs)


def test_distilbert_teacher_losses_and_accuracy_see_the_same_logits(minilm_dir):
    """Through the loss and prediction helpers the teacher gives the logits of a plain call without token types,
    though the batch carries them (the BERT tokenizer makes them)."""
    teacher = make_distilbert().eval()
    student = from_encoder_classifier(teacher)
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    batch = dict(tokenizer(TEXTS, padding=True, return_tensors="pt"))
    batch["labels"] = torch.tensor([1, 0, 1])
    with torch.no_grad():
        expected = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(hf_predict(teacher, tokenizer, TEXTS, 2, 32), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(classification_loss(teacher, batch),
                               torch.nn.functional.cross_entropy(expected, batch["labels"]))
    assert exit_accuracies(teacher, [batch]) == [(expected.argmax(-1) == batch["labels"]).double().mean().item()]
    # The converted student reproduces the teacher's last exit, so its last-exit KD against the teacher is the
    # teacher's own soft-label entropy (no hidden-state mismatch either).
    loss = distillation_loss(student, teacher, batch, kd_weight=1.0, exits="last")
    entropy = -(expected.softmax(-1) * expected.log_softmax(-1)).sum(-1).mean()
    torch.testing.assert_close(loss, entropy, atol=1e-5, rtol=0)
    torch.testing.assert_close(distillation_loss(student, teacher, batch, kd_weight=1.0, exits="none"),
                               torch.zeros(()), atol=1e-8, rtol=0)


def assert_serves_like_the_reference(checkpoint):
    """The packed engine's logits at full depth equal the reference model's on a padded batch."""
    engine = costeff_fast.from_pretrained(checkpoint)
    reference = CostEffForSequenceClassification.from_pretrained(checkpoint).eval()
    encoded = engine.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = reference(**encoded, entropy_threshold=0.0).logits
    torch.testing.assert_close(engine.generate_logits(TEXTS, entropy_threshold=0.0), expected, atol=1e-5, rtol=0)


def test_every_stage_takes_a_distilbert_teacher(distilbert_teacher, tmp_path):
    """TA distillation, slenderization and recovery from a tiny DistilBERT classifier on rt rows (CPU); the
    recovered checkpoint serves in the engine and matches the reference model."""
    tokenizer = AutoTokenizer.from_pretrained(distilbert_teacher)
    data, _ = prepare_data(load_task("rt"), BUDGET, tokenizer)
    ta = distill_teaching_assistant(distilbert_teacher, data, tmp_path / "ta", hidden_epochs=BUDGET.ta_hidden_epochs,
                                    prediction_epochs=BUDGET.ta_prediction_epochs, exit_pooling="mean", device="cpu")
    assert len(ta["exit_accuracies"]) == 2
    ta_config = json.loads((tmp_path / "ta" / "config.json").read_text())
    assert ta_config["exit_pooler_activation"] == "relu"  # DistilBERT's pre_classifier head is the last exit
    slender = slenderize_stage(tmp_path / "ta", data, tmp_path / "slender", heads=1, ffn=16, embedding_rank=16,
                               importance_batches=1, distill_steps=2, num_events=1, device="cpu")
    assert slender["num_attention_heads"] == [1, 1] and slender["intermediate_size"] == [16, 16]
    params = json.loads((tmp_path / "slender" / "stage.json").read_text())["params"]
    assert "schedule" not in params and "event_steps" not in params
    # geometric over two events: heads 4 -> 4 x (1/4) ** (1/2) = 2 -> 1, FFN 64 -> 32 -> 16 (linear: 3, 40)
    geometric = slenderize_stage(tmp_path / "ta", data, tmp_path / "slender-geometric", heads=1, ffn=16,
                                 embedding_rank=None, importance_batches=1, distill_steps=1, num_events=2,
                                 schedule="geometric", device="cpu")
    assert [(event["heads"], event["ffn"]) for event in geometric["events"]] == [(2, 32), (1, 16)]
    stage = json.loads((tmp_path / "slender-geometric" / "stage.json").read_text())
    assert stage["params"]["schedule"] == "geometric" and "event_steps" not in stage["params"]
    assert [event["distill_steps"] for event in geometric["events"]] == [1, 1]
    # linear (3 heads / FFN 40, then 1 / 16) with 3 steps per event spread by share: hidden 32, heads of 8, so
    # weights per layer 4*32*8*h + 2*32*f: 8192, 5632, 2048; shares 0.3125 and 0.636 of 6 steps: 1.98, 4.02
    by_share = slenderize_stage(tmp_path / "ta", data, tmp_path / "slender-by-share", heads=1, ffn=16,
                                embedding_rank=None, importance_batches=1, distill_steps=3, num_events=2,
                                event_steps="by-share", device="cpu")
    assert [(event["heads"], event["ffn"], event["distill_steps"]) for event in by_share["events"]] == [
        (3, 40, 2), (1, 16, 4)]
    assert json.loads((tmp_path / "slender-by-share" / "stage.json").read_text())["params"]["event_steps"] == "by-share"
    recovered = recover(tmp_path / "ta", tmp_path / "slender", data, tmp_path / "recovered", hidden_epochs=0.25,
                        prediction_epochs=0.25, device="cpu")
    assert len(recovered["exit_accuracies"]) == 2
    assert_serves_like_the_reference(tmp_path / "recovered")


def test_compress_end_to_end_with_a_distilbert_teacher(distilbert_teacher, tmp_path):
    """``compress`` with a tiny DistilBERT classifier: every stage, calibration and the report; the checkpoint
    serves in the engine and matches the reference model."""
    out = tmp_path / "out"
    # a geometric schedule with steps by share: compress hands both to the slenderization stage
    settings = CompressionSettings(heads=1, ffn=16, embedding_rank=16, schedule="geometric", event_steps="by-share")
    report = compress("rt", out, teacher_dir=distilbert_teacher, budget=dataclasses.replace(BUDGET, num_events=2),
                      work_dir=tmp_path / "work", settings=settings)
    stage = json.loads((tmp_path / "work" / settings.name / "slender" / "stage.json").read_text())
    assert (stage["params"]["schedule"], stage["params"]["event_steps"]) == ("geometric", "by-share")
    # heads 4 -> 2 -> 1, FFN 64 -> 32 -> 16, rank 32 -> 23 -> 16 (32 x 0.707 = 22.6); each event removes half of
    # the encoder (more than its 28 % and 30 % of the rank), so the 2 x 2 steps split evenly
    assert [(e["heads"], e["ffn"], e["embedding_rank"], e["distill_steps"]) for e in stage["events"]] == [
        (2, 32, 23, 2), (1, 16, 16, 2)]
    config = json.loads((out / "config.json").read_text())
    assert config["num_attention_heads"] == [1, 1] and config["intermediate_size"] == [16, 16]
    assert len(report["accuracy"]["costeff_exits"]) == 2
    assert report["parameters"]["ratio_encoder"] < 0.5
    assert_serves_like_the_reference(out)

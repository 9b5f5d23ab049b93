"""Device placement and mixed precision of training: ``--device`` resolution, bf16 autocast of the forwards only,
fp32 losses, and training steps on the CPU (the tested default) and, where there is one, on a CUDA GPU."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from conftest import make_tiny_model, random_batch
from costeff_fast.training import stages
from costeff_fast.training.importance import compute_importance
from costeff_fast.training.losses import (
    classification_loss,
    distillation_loss,
    hidden_mse,
    multi_exit_loss,
    soft_cross_entropy,
)
from costeff_fast.training.prediction import exit_accuracies, exit_logits
from costeff_fast.training.slenderize import slenderize
from costeff_fast.training.trainer import (
    forward_context,
    model_device,
    place_model,
    resolve_autocast,
    resolve_device,
    train,
)

LABELS = 3
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def labelled_batch(seed: int = 0, vocab: int = 97, rows: int = 4) -> dict:
    batch = random_batch(seed, rows, vocab)
    batch["labels"] = torch.randint(0, LABELS, (rows,), generator=torch.Generator().manual_seed(seed))
    return batch


@pytest.fixture
def no_cuda(monkeypatch):
    """This process sees no GPU, whatever the machine has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_auto_is_the_cpu_without_cuda_and_explicit_cpu_stays(no_cuda):
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_auto_is_cuda_when_there_is_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


@pytest.mark.parametrize("device", ["cuda", "cuda:0", torch.device("cuda")])
def test_cuda_without_cuda_is_refused_in_one_line_naming_the_flag_and_the_fix(no_cuda, device):
    with pytest.raises(ValueError) as refused:
        resolve_device(device)
    message = str(refused.value)
    assert message.startswith("--device ") and "CUDA is not available" in message
    assert "--device cpu" in message and "\n" not in message


@pytest.mark.parametrize("device", ["gpu", "tpu", "cuda:x", "mps", 3.5])
def test_unknown_devices_are_refused_naming_the_flag(device):
    with pytest.raises(ValueError, match=r"^--device .*pass auto, cpu, cuda or cuda:N"):
        resolve_device(device)


def test_autocast_is_on_by_default_only_on_cuda_with_bf16(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_autocast(None, cpu) is False
    assert resolve_autocast(True, cpu) is True and resolve_autocast(False, cpu) is False
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert resolve_autocast(None, cuda) is True and resolve_autocast(False, cuda) is False
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert resolve_autocast(None, cuda) is False


def test_forward_context_runs_matmuls_in_bf16_only_when_on():
    linear = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4)
    with forward_context(torch.device("cpu"), True):
        assert linear(x).dtype == torch.bfloat16
    with forward_context(torch.device("cpu"), False):
        assert linear(x).dtype == torch.float32


def test_loss_primitives_are_fp32_for_bf16_inputs():
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(4, LABELS, generator=generator).bfloat16()
    teacher = torch.randn(4, LABELS, generator=generator).bfloat16()
    labels = torch.tensor([0, 1, 2, 0])
    states = [torch.randn(4, 5, 8, generator=generator).bfloat16() for _ in range(3)]
    targets = [torch.randn(4, 5, 8, generator=generator).bfloat16() for _ in range(3)]
    mask = torch.ones(4, 5, dtype=torch.long)
    for loss in (soft_cross_entropy(student, teacher, 2.0), hidden_mse(states, targets, mask),
                 multi_exit_loss((student, student), labels, teacher, kd_weight=0.5)):
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
    # the fp32 value of the bf16 inputs, not a bf16-rounded sum
    expected = sum(((s.float() - t.float()) ** 2).mean() for s, t in zip(states, targets))
    torch.testing.assert_close(hidden_mse(states, targets, mask), expected, rtol=1e-6, atol=0)


def test_distillation_loss_is_fp32_for_bf16_models_under_cpu_autocast():
    student = make_tiny_model(0, num_labels=LABELS).to(torch.bfloat16)
    teacher = make_tiny_model(1, num_labels=LABELS).to(torch.bfloat16)
    batch = labelled_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for kwargs in (dict(exits="none"), dict(exits="all"), dict(exits="last", hidden_weight=0.0)):
            loss = distillation_loss(student, teacher, batch, kd_weight=0.5, **kwargs)
            assert loss.dtype == torch.float32 and torch.isfinite(loss), kwargs


def test_autocast_changes_the_loss_only_by_bf16_rounding():
    student, teacher = make_tiny_model(0, num_labels=LABELS), make_tiny_model(1, num_labels=LABELS)
    batch = labelled_batch()
    exact = distillation_loss(student, teacher, batch, kd_weight=0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = distillation_loss(student, teacher, batch, kd_weight=0.5)
    assert mixed.dtype == torch.float32 and mixed.item() != exact.item()  # the matmuls did run in bf16
    torch.testing.assert_close(mixed, exact, rtol=5e-2, atol=0)


def test_classification_loss_is_fp32_for_a_bf16_classifier():
    bert = BertForSequenceClassification(BertConfig(vocab_size=97, hidden_size=16, num_hidden_layers=1,
                                                    num_attention_heads=2, intermediate_size=8,
                                                    num_labels=LABELS)).eval().to(torch.bfloat16)
    loss = classification_loss(bert, labelled_batch())
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


@pytest.mark.parametrize("autocast", [None, True])
def test_a_tiny_training_step_on_the_cpu(autocast):
    student, teacher = make_tiny_model(0, num_labels=LABELS), make_tiny_model(1, num_labels=LABELS)
    before = {name: p.detach().clone() for name, p in student.named_parameters()}
    seen = []

    def loss_fn(model, batch):
        seen.append(torch.is_autocast_enabled("cpu"))
        loss = distillation_loss(model, teacher, batch, kd_weight=0.5)
        seen.append(loss.dtype)
        return loss

    result = train(student, iter([labelled_batch(0), labelled_batch(1)]), loss_fn, steps=2, lr=1e-3,
                   device="cpu", autocast=autocast, progress=False)
    assert seen == [autocast is True, torch.float32] * 2  # None on the CPU: no autocast
    assert result.steps == 2 and math.isfinite(result.mean_loss)
    assert model_device(student) == torch.device("cpu")
    assert all(p.dtype == torch.float32 for p in student.parameters())  # master weights stay fp32
    changed = [name for name, p in student.named_parameters() if not torch.equal(p, before[name])]
    assert "layers.0.intermediate.weight" in changed and "exits.0.classifier.weight" in changed


def test_train_refuses_an_unavailable_device_before_any_step(no_cuda):
    model = make_tiny_model(0)
    batches = iter([labelled_batch()])
    with pytest.raises(ValueError, match=r"^--device 'cuda'"):
        train(model, batches, lambda m, b: distillation_loss(m, m, b, kd_weight=1.0), steps=1, lr=1e-3,
              device="cuda", progress=False)
    assert next(batches)["input_ids"].shape[0] == 4  # no batch was taken


@pytest.mark.parametrize("stage", ["finetune_teacher", "distill_teaching_assistant", "slenderize_stage", "recover"])
def test_every_stage_refuses_an_unavailable_device_before_any_work(no_cuda, tmp_path, stage):
    arguments = {
        "finetune_teacher": (tmp_path / "source", None, tmp_path / "out"),
        "distill_teaching_assistant": (tmp_path / "teacher", None, tmp_path / "out"),
        "slenderize_stage": (tmp_path / "ta", None, tmp_path / "out"),
        "recover": (tmp_path / "ta", tmp_path / "slender", None, tmp_path / "out"),
    }[stage]
    extra = {"slenderize_stage": dict(heads=1, ffn=1, embedding_rank=None),
             "recover": dict(hidden_epochs=1, prediction_epochs=1)}.get(stage, {})
    with pytest.raises(ValueError, match=r"^--device 'cuda'.*--device cpu"):
        getattr(stages, stage)(*arguments, device="cuda", **extra)
    assert not (tmp_path / "out").exists()


def test_importance_and_slenderization_run_under_cpu_autocast():
    ta = make_tiny_model(1, num_labels=LABELS, num_attention_heads=2, intermediate_size=16, exit_pooler=False)
    student = make_tiny_model(1, num_labels=LABELS, num_attention_heads=2, intermediate_size=16, exit_pooler=False)
    batches = [labelled_batch(seed) for seed in range(2)]
    exact = compute_importance(student, ta, batches, device="cpu")
    mixed = compute_importance(student, ta, batches, device="cpu", autocast=True)
    for scores in (mixed.heads, mixed.neurons):
        assert all(s.dtype == torch.float32 and bool(torch.isfinite(s).all()) for s in scores)
    assert not torch.equal(mixed.neurons[0], exact.neurons[0])  # the forwards did run in bf16
    torch.testing.assert_close(torch.cat(mixed.neurons), torch.cat(exact.neurons), rtol=0.2, atol=1e-3)
    slenderize(student, ta, lambda: batches, heads=1, ffn=8, embedding_rank=None, importance_batches=1,
               distill_steps_between_events=1, device="cpu", autocast=True, progress=False)
    assert student.config.num_attention_heads == [1] * 4 and student.config.intermediate_size == [8] * 4
    assert all(p.dtype == torch.float32 for p in student.parameters())


def test_prediction_helpers_return_fp32_on_the_cpu_under_autocast(minilm_dir):
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    model = make_tiny_model(0, vocab_size=tokenizer.vocab_size, num_labels=LABELS)
    texts = ["a fine film", "dull and slow", "yes"]
    exact = exit_logits(model, tokenizer, texts, batch_size=2, max_length=16, device="cpu")
    mixed = exit_logits(model, tokenizer, texts, batch_size=2, max_length=16, device="cpu", autocast=True)
    assert exact.dtype == mixed.dtype == torch.float32 and mixed.device.type == "cpu"
    assert not torch.equal(mixed, exact)
    torch.testing.assert_close(mixed, exact, rtol=0.1, atol=0.1)
    batch = labelled_batch(0, vocab=tokenizer.vocab_size)
    assert len(exit_accuracies(model, [batch], device="cpu", autocast=True)) == model.config.num_hidden_layers


@cuda_only
def test_a_training_step_on_cuda_uses_bf16_forwards_and_fp32_state():
    student, teacher = make_tiny_model(0, num_labels=LABELS), make_tiny_model(1, num_labels=LABELS)
    place_model(teacher, "cuda")
    seen = []

    def loss_fn(model, batch):
        seen.append(torch.is_autocast_enabled("cuda"))
        return distillation_loss(model, teacher, batch, kd_weight=0.5)

    result = train(student, iter([labelled_batch(0), labelled_batch(1)]), loss_fn, steps=2, lr=1e-3,
                   device="cuda", progress=False)
    assert seen == [torch.cuda.is_bf16_supported()] * 2 and math.isfinite(result.mean_loss)
    assert model_device(student).type == "cuda"
    assert all(p.dtype == torch.float32 for p in student.parameters())
    accuracies = exit_accuracies(student, [labelled_batch(2)])
    assert len(accuracies) == student.config.num_hidden_layers

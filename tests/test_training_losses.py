"""Tests of the batch losses every stage shares: distillation (all, last or no exits), slenderization."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from conftest import make_tiny_model, random_batch
from costeff_fast.training.losses import (
    check_distillation_pair,
    classification_loss,
    distillation_loss,
    hidden_mse,
    multi_exit_loss,
    slenderization_loss,
    soft_cross_entropy,
)

LABELS = 3


def labelled_batch(seed: int = 0, vocab: int = 97) -> dict:
    batch = random_batch(seed, 4, vocab)
    batch["labels"] = torch.randint(0, LABELS, (4,), generator=torch.Generator().manual_seed(seed))
    return batch


def inputs_of(batch):
    return {k: v for k, v in batch.items() if k != "labels"}


def test_distillation_loss_terms():
    student, teacher = make_tiny_model(0, num_labels=LABELS), make_tiny_model(1, num_labels=LABELS)
    batch = labelled_batch()
    with torch.no_grad():
        s = student(**inputs_of(batch), output_hidden_states=True)
        t = teacher(**inputs_of(batch), output_hidden_states=True)
    mse = hidden_mse(s.hidden_states, t.hidden_states, batch["attention_mask"])
    every = multi_exit_loss(s.exit_logits, batch["labels"], t.exit_logits, kd_weight=0.7, temperature=2.0)
    last = multi_exit_loss(s.exit_logits[-1:], batch["labels"], t.exit_logits[-1:], kd_weight=0.7, temperature=2.0)
    kw = dict(kd_weight=0.7, temperature=2.0)
    torch.testing.assert_close(distillation_loss(student, teacher, batch, hidden_weight=0.5, **kw), every + 0.5 * mse)
    torch.testing.assert_close(distillation_loss(student, teacher, batch, hidden_weight=0, exits="last", **kw), last)
    torch.testing.assert_close(distillation_loss(student, teacher, batch, exits="none", **kw), mse)
    torch.testing.assert_close(slenderization_loss(student, teacher, batch, hidden_weight=0.5, **kw), every + 0.5 * mse)
    torch.testing.assert_close(
        slenderization_loss(student, teacher, batch, hidden_weight=0.5, all_exits=False, **kw), last + 0.5 * mse
    )


def test_an_hf_teacher_teaches_every_exit_its_final_logits():
    bert = BertForSequenceClassification(BertConfig(vocab_size=97, hidden_size=32, num_hidden_layers=4,
                                                    num_attention_heads=2, intermediate_size=16,
                                                    max_position_embeddings=64, num_labels=LABELS)).eval()
    student = make_tiny_model(0, num_labels=LABELS)
    check_distillation_pair(student, bert)
    batch = labelled_batch()
    with torch.no_grad():
        target = bert(**inputs_of(batch)).logits
        exits = student(**inputs_of(batch)).exit_logits
    expected = multi_exit_loss(exits, batch["labels"], target, kd_weight=0.5)
    loss = distillation_loss(student, bert, batch, kd_weight=0.5, hidden_weight=0, gradient_equilibrium=True)
    torch.testing.assert_close(loss, expected)


def test_gradient_equilibrium_changes_gradients_not_the_loss():
    student, teacher = make_tiny_model(0, num_labels=LABELS), make_tiny_model(1, num_labels=LABELS)
    batch = labelled_batch()
    grads, losses = [], []
    for equilibrium in (False, True):
        loss = distillation_loss(student, teacher, batch, kd_weight=0.5, gradient_equilibrium=equilibrium)
        losses.append(loss.detach())
        grads.append(torch.autograd.grad(loss, student.layers[0].intermediate.weight)[0])
    torch.testing.assert_close(losses[0], losses[1])
    assert not torch.allclose(grads[0], grads[1])


def test_distillation_loss_errors():
    student, teacher = make_tiny_model(0, num_labels=LABELS), make_tiny_model(1, num_labels=LABELS)
    batch = labelled_batch()
    del batch["labels"]
    with pytest.raises(ValueError, match="labels"):
        distillation_loss(student, teacher, batch, kd_weight=0.5)
    distillation_loss(student, teacher, batch, kd_weight=1.0)  # pure KD needs no labels
    distillation_loss(student, teacher, batch, kd_weight=0.5, exits="none")  # nor do hidden states
    with pytest.raises(ValueError, match="no loss term"):
        distillation_loss(student, teacher, batch, kd_weight=1.0, hidden_weight=0, exits="none")
    with pytest.raises(ValueError, match="exits"):
        distillation_loss(student, teacher, batch, kd_weight=1.0, exits="first")
    with pytest.raises(ValueError, match="input_ids"):
        distillation_loss(student, teacher, {"attention_mask": batch["attention_mask"]}, kd_weight=1.0)
    with pytest.raises(ValueError, match="num_hidden_layers"):
        check_distillation_pair(student, make_tiny_model(1, num_labels=LABELS, num_hidden_layers=3,
                                                         num_attention_heads=2, intermediate_size=8,
                                                         exit_pooler=False))


def test_classification_loss_is_the_cross_entropy_of_the_logits():
    bert = BertForSequenceClassification(BertConfig(vocab_size=97, hidden_size=16, num_hidden_layers=1,
                                                    num_attention_heads=2, intermediate_size=8,
                                                    num_labels=LABELS)).eval()
    batch = labelled_batch()
    logits = bert(**inputs_of(batch)).logits
    torch.testing.assert_close(classification_loss(bert, batch),
                               torch.nn.functional.cross_entropy(logits, batch["labels"]))


def test_early_exit_weight_scales_every_exit_but_the_last():
    student, teacher = make_tiny_model(0, num_labels=LABELS), make_tiny_model(1, num_labels=LABELS)
    batch = labelled_batch(3)
    with torch.no_grad():
        s = student(**inputs_of(batch)).exit_logits
        t = teacher(**inputs_of(batch)).exit_logits
    kw = dict(kd_weight=0.7, temperature=2.0)
    per_exit = [multi_exit_loss((s[i],), batch["labels"], (t[i],), **kw) for i in range(len(s))]
    weighted = multi_exit_loss(s, batch["labels"], t, early_exit_weight=2.5, **kw)
    torch.testing.assert_close(weighted, 2.5 * sum(per_exit[:-1]) + per_exit[-1])
    torch.testing.assert_close(multi_exit_loss(s, batch["labels"], t, early_exit_weight=0.0, **kw), per_exit[-1])
    torch.testing.assert_close(
        distillation_loss(student, teacher, batch, hidden_weight=0, early_exit_weight=2.5, **kw), weighted)
    with pytest.raises(ValueError, match="early_exit_weight must be >= 0"):
        multi_exit_loss(s, batch["labels"], t, early_exit_weight=-1.0, **kw)


def test_soft_cross_entropy_is_scaled_by_temperature_squared():
    generator = torch.Generator().manual_seed(5)
    student, teacher = torch.randn(6, LABELS, generator=generator), torch.randn(6, LABELS, generator=generator)
    for temperature in (1.0, 2.0, 4.0):
        target = torch.softmax(teacher / temperature, dim=-1)
        plain = -(target * torch.log_softmax(student / temperature, dim=-1)).sum(-1).mean()
        torch.testing.assert_close(soft_cross_entropy(student, teacher, temperature), temperature**2 * plain)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        soft_cross_entropy(student, teacher, 0.0)


def test_budget_refuses_bad_ablation_values():
    from costeff_fast.training.budget import budget_with

    with pytest.raises(ValueError, match="kd_temperature must be > 0"):
        budget_with("quick", kd_temperature=0.0)
    with pytest.raises(ValueError, match="early_exit_weight must be >= 0"):
        budget_with("quick", early_exit_weight=-1.0)
    assert budget_with("quick", early_exit_weight=0.0).early_exit_weight == 0.0

"""Tests of the one training loop: weight-decay groups, schedules, best-checkpoint keeping, batch streams."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification

from conftest import make_tiny_model
from costeff_fast.training.trainer import (
    epoch_steps,
    model_mode,
    parameter_groups,
    repeat_epochs,
    train,
    weight_decay_mask,
)


class Toy(nn.Module):
    """An encoder matrix, a LayerNorm, a frozen buffer-like weight and one exit classifier."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)
        self.exits = nn.ModuleList([nn.Linear(4, 2)])
        with torch.no_grad():
            self.norm.weight.fill_(2.0)
            self.norm.bias.fill_(0.5)

    def forward(self, x):
        return self.exits[0](self.norm(self.encoder(x)))


def zero_gradient_loss(model, batch):
    """A loss with a graph through every trainable parameter and exactly zero gradients."""
    return 0.0 * sum(p.sum() for p in model.parameters() if p.requires_grad)


def test_weight_decay_mask_exempts_exactly_biases_and_layernorm_weights():
    model = make_tiny_model()
    mask = weight_decay_mask(model)
    assert set(mask) == {n for n, _ in model.named_parameters()}
    exempt = {n for n, decays in mask.items() if not decays}
    assert exempt == {n for n, _ in model.named_parameters() if n.endswith(".bias") or "LayerNorm" in n
                      or "layer_norm" in n}
    # On these models the rule is the same as "no decay on 1-D tensors" (the old slenderization rule).
    assert exempt == {n for n, p in model.named_parameters() if p.dim() < 2}
    bert = BertForSequenceClassification(BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                    intermediate_size=8, vocab_size=50))
    bert_exempt = {n for n, decays in weight_decay_mask(bert).items() if not decays}
    assert bert_exempt == {n for n, p in bert.named_parameters() if p.dim() < 2}
    assert "bert.embeddings.LayerNorm.weight" in bert_exempt and "classifier.weight" not in bert_exempt


def test_parameter_groups_cover_trainable_parameters_once_with_decay_and_exit_rate():
    model = Toy()
    groups = parameter_groups(model, lr=0.1, weight_decay=0.01, exit_lr_scale=20.0)
    seen = [id(p) for g in groups for p in g["params"]]
    assert len(seen) == len(set(seen))
    assert set(seen) == {id(p) for p in model.parameters() if p.requires_grad}
    assert all(g["params"] for g in groups)
    by_param = {id(p): g for g in groups for p in g["params"]}
    assert by_param[id(model.encoder.weight)]["weight_decay"] == 0.01
    assert by_param[id(model.encoder.bias)]["weight_decay"] == 0.0
    assert by_param[id(model.norm.weight)]["weight_decay"] == 0.0
    assert by_param[id(model.exits[0].weight)]["weight_decay"] == 0.01
    assert by_param[id(model.encoder.weight)]["lr"] == 0.1
    assert by_param[id(model.exits[0].weight)]["lr"] == pytest.approx(2.0)
    assert by_param[id(model.exits[0].bias)]["lr"] == pytest.approx(2.0)


@pytest.mark.parametrize("schedule", ["linear", "constant"])
def test_train_decays_only_the_decaying_group(schedule):
    # Zero gradients: Adam's update is 0, so only decoupled weight decay moves a weight, by (1 - lr * wd).
    model = Toy()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    lr, wd = 0.1, 0.5
    result = train(model, iter([{}]), zero_gradient_loss, steps=1, lr=lr, weight_decay=wd, schedule=schedule,
                   progress=False)
    assert result.steps == 1 and result.mean_loss == 0.0 and result.best_metric is None
    after = dict(model.named_parameters())
    for name in ("encoder.weight", "exits.0.weight"):
        torch.testing.assert_close(after[name], before[name] * (1 - lr * wd))
    for name in ("encoder.bias", "norm.weight", "norm.bias", "exits.0.bias", "frozen.weight", "frozen.bias"):
        torch.testing.assert_close(after[name], before[name], rtol=0, atol=0)


def decay_ratio(schedule: str, steps: int) -> float:
    """Zero gradients: a decaying weight shrinks by ``prod_t (1 - lr_t * wd)``, which reveals the schedule."""
    model = Toy()
    before = model.encoder.weight.detach().clone()
    train(model, iter([{}] * steps), zero_gradient_loss, steps=steps, lr=1.0, weight_decay=0.1, schedule=schedule,
          warmup_ratio=0.5, progress=False)
    return (model.encoder.weight.detach() / before).mean().item()


def test_linear_schedule_warms_up_and_decays_while_constant_stays():
    # Linear, 4 steps, 2 of them warmup: lr factors 0, 0.5, 1, 0.5.
    assert decay_ratio("linear", 4) == pytest.approx(1.0 * 0.95 * 0.9 * 0.95, rel=1e-5)
    assert decay_ratio("constant", 4) == pytest.approx(0.9**4, rel=1e-5)


def test_train_keeps_the_best_evaluated_weights_and_restores_mode():
    model = Toy().eval()
    snapshots, metrics = [], iter([0.5, 0.9, 0.1, 0.2])

    def evaluate(m):
        snapshots.append(m.encoder.weight.detach().clone())
        return next(metrics)

    def loss_fn(m, batch):
        assert m.training
        return m(batch).pow(2).mean()

    batches = repeat_epochs(lambda: [torch.randn(3, 4) for _ in range(2)])
    result = train(model, batches, loss_fn, steps=4, lr=0.05, schedule="constant", evaluate=evaluate,
                   eval_every=1, progress=False)
    # Evaluations after steps 1, 2, 3 (every step but the last) and once after step 4.
    assert len(snapshots) == 4 and result.best_metric == 0.9
    torch.testing.assert_close(model.encoder.weight, snapshots[1], rtol=0, atol=0)
    assert not model.training
    assert all(p.grad is None for p in model.parameters())
    assert math.isfinite(result.mean_loss) and result.mean_loss > 0


def test_train_takes_exactly_steps_batches_and_zero_steps_takes_none():
    stream = iter(range(10))
    model = Toy().train()
    train(model, stream, zero_gradient_loss, steps=3, lr=0.1, progress=False)
    assert next(stream) == 3  # a shared stream continues where the loop stopped
    result = train(model, stream, zero_gradient_loss, steps=0, lr=0.1, progress=False)
    assert result.steps == 0 and math.isnan(result.mean_loss)
    assert next(stream) == 4 and model.training


def test_train_rejects_bad_arguments_and_short_streams():
    with pytest.raises(ValueError, match="ran out after 2 of 3"):
        train(Toy(), iter([{}, {}]), zero_gradient_loss, steps=3, lr=0.1, progress=False)
    with pytest.raises(ValueError, match="steps"):
        train(Toy(), iter([]), zero_gradient_loss, steps=-1, lr=0.1, progress=False)
    with pytest.raises(ValueError, match="schedule"):
        train(Toy(), iter([]), zero_gradient_loss, steps=1, lr=0.1, schedule="cosine", progress=False)


def test_repeat_epochs_recalls_the_factory_and_rejects_an_empty_epoch():
    calls = []

    def epoch():
        calls.append(1)
        return [len(calls), len(calls)]

    stream = repeat_epochs(epoch)
    assert [next(stream) for _ in range(5)] == [1, 1, 2, 2, 3]
    with pytest.raises(ValueError, match="no batch"):
        next(repeat_epochs(lambda: []))


def test_epoch_steps_and_model_mode():
    assert epoch_steps(0.5, 7) == 4 and epoch_steps(2, 3) == 6 and epoch_steps(0.01, 3) == 1
    model = Toy().eval()
    with model_mode(model, True):
        assert model.training
    assert not model.training

"""Tests of slenderization: importance, physical pruning, embedding SVD, allocation, schedule, the loop."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import costeff_fast  # noqa: F401  (registers the Auto classes)
from costeff_fast.config import CostEffConfig
from costeff_fast.modeling import CostEffForSequenceClassification
from costeff_fast.training.allocation import allocate_widths
from costeff_fast.training.importance import Importance, compute_importance
from costeff_fast.training.losses import hidden_mse, multi_exit_loss
from costeff_fast.training.pruning import factorize_embedding, prune_heads, prune_neurons
from costeff_fast.training.schedule import PruningEvent
from costeff_fast.training.schedule import event_steps, plan_events, pruning_schedule
from costeff_fast.training.slenderize import slenderize

LAYERS, HEADS, HEAD_SIZE, HIDDEN, FFN, LABELS, VOCAB = 3, 4, 4, 16, 12, 3, 40


def tiny_model(seed: int = 0, **overrides) -> CostEffForSequenceClassification:
    torch.manual_seed(seed)
    fields = dict(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        attention_head_size=HEAD_SIZE,
        intermediate_size=FFN,
        max_position_embeddings=16,
        num_labels=LABELS,
        initializer_range=0.2,
    )
    fields.update(overrides)
    return CostEffForSequenceClassification(CostEffConfig(**fields)).eval()


def make_batches(count: int = 2, batch: int = 4, seq: int = 8, seed: int = 1) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        mask = torch.ones(batch, seq, dtype=torch.long)
        mask[0, seq // 2 :] = 0  # one padded row
        batches.append(
            dict(
                input_ids=torch.randint(1, VOCAB, (batch, seq), generator=generator) * mask,
                attention_mask=mask,
                token_type_ids=torch.zeros(batch, seq, dtype=torch.long),
                labels=torch.randint(0, LABELS, (batch,), generator=generator),
            )
        )
    return batches


def all_exit_logits(model, batches) -> torch.Tensor:
    with torch.no_grad():
        outputs = [model(**{k: v for k, v in b.items() if k != "labels"}) for b in batches]
    return torch.stack([torch.stack(out.exit_logits) for out in outputs])  # [batches, L, B, C]


# Physical pruning


def test_pruning_a_silent_head_keeps_every_exit_unchanged():
    model = tiny_model()
    with torch.no_grad():
        model.layers[1].attention_output.weight[:, 2 * HEAD_SIZE : 3 * HEAD_SIZE] = 0  # head 2 of layer 1
    batches = make_batches()
    before = all_exit_logits(model, batches)
    keep = [torch.arange(HEADS), torch.tensor([3, 0, 1]), torch.arange(HEADS)]  # unsorted on purpose
    prune_heads(model, keep)
    assert model.config.num_attention_heads == [4, 3, 4]
    layer = model.layers[1]
    assert layer.num_heads == 3
    assert layer.query.weight.shape == (3 * HEAD_SIZE, HIDDEN) and layer.value.bias.shape == (3 * HEAD_SIZE,)
    assert layer.attention_output.weight.shape == (HIDDEN, 3 * HEAD_SIZE)
    torch.testing.assert_close(all_exit_logits(model, batches), before, atol=1e-5, rtol=0)


def test_pruning_a_live_head_changes_outputs():
    model = tiny_model()
    batches = make_batches()
    before = all_exit_logits(model, batches)
    prune_heads(model, [torch.arange(HEADS), torch.tensor([0, 1, 3]), torch.arange(HEADS)])
    assert not torch.allclose(all_exit_logits(model, batches), before, atol=1e-3)


def test_pruning_a_silent_neuron_keeps_every_exit_unchanged():
    model = tiny_model()
    with torch.no_grad():
        model.layers[0].output.weight[:, 5] = 0  # W_2 column of neuron 5, layer 0
        model.layers[2].output.weight[:, [0, 11]] = 0
    batches = make_batches()
    before = all_exit_logits(model, batches)
    keep = [torch.tensor([i for i in range(FFN) if i != 5]), torch.arange(FFN), torch.arange(1, 11)]
    prune_neurons(model, keep)
    assert model.config.intermediate_size == [11, 12, 10]
    assert model.layers[0].intermediate.weight.shape == (11, HIDDEN)
    assert model.layers[0].intermediate.bias.shape == (11,)
    assert model.layers[2].output.weight.shape == (HIDDEN, 10)
    torch.testing.assert_close(all_exit_logits(model, batches), before, atol=1e-5, rtol=0)


@pytest.mark.parametrize("prune", [prune_heads, prune_neurons])
def test_prune_rejects_a_keep_list_that_empties_a_layer(prune):
    model = tiny_model()
    with pytest.raises(ValueError, match="at least one"):
        prune(model, [torch.tensor([0]), [], torch.tensor([1])])


@pytest.mark.parametrize(
    "keep, message",
    [
        ([torch.tensor([0])] * 2, "one index list per layer"),
        ([torch.tensor([0]), torch.tensor([0, 0]), torch.tensor([1])], "duplicate"),
        ([torch.tensor([0]), torch.tensor([HEADS]), torch.tensor([1])], "outside"),
        ([torch.tensor([0.0]), torch.tensor([1]), torch.tensor([1])], "integer"),
    ],
)
def test_prune_heads_rejects_bad_keep_lists(keep, message):
    model = tiny_model()
    with pytest.raises(ValueError, match=message):
        prune_heads(model, keep)
    assert model.config.num_attention_heads == [HEADS] * LAYERS  # nothing half-done


def test_pruned_model_round_trips_through_save_pretrained(tmp_path):
    model = tiny_model()
    prune_heads(model, [torch.tensor([0]), torch.tensor([1, 2, 3]), torch.tensor([0, 3])])
    prune_neurons(model, [torch.arange(5), torch.arange(12), torch.tensor([2, 7, 9])])
    factorize_embedding(model, 6)
    model.save_pretrained(tmp_path)
    loaded = CostEffForSequenceClassification.from_pretrained(tmp_path).eval()
    assert loaded.config.num_attention_heads == [1, 3, 2]
    assert loaded.config.intermediate_size == [5, 12, 3]
    assert loaded.config.embedding_rank == 6
    batches = make_batches()
    torch.testing.assert_close(all_exit_logits(loaded, batches), all_exit_logits(model, batches), atol=1e-6, rtol=0)


# Embedding SVD


def test_full_rank_factorization_reproduces_the_embedding():
    model = tiny_model()
    batches = make_batches()
    before_matrix = model.embeddings.word_embedding_matrix().detach().clone()
    before = all_exit_logits(model, batches)
    factorize_embedding(model, HIDDEN)
    assert model.embeddings.word_embeddings.weight.shape == (VOCAB, HIDDEN)
    assert model.embeddings.word_projection.weight.shape == (HIDDEN, HIDDEN)
    after_matrix = model.embeddings.word_embedding_matrix().detach()
    assert torch.linalg.norm(after_matrix - before_matrix) <= 1e-4 * torch.linalg.norm(before_matrix)
    torch.testing.assert_close(all_exit_logits(model, batches), before, atol=1e-4, rtol=0)


@pytest.mark.parametrize("rank", [1, 5, 11])
def test_truncated_factorization_error_is_the_discarded_spectrum(rank):
    model = tiny_model()
    matrix = model.embeddings.word_embedding_matrix().detach().double().clone()
    singular = torch.linalg.svdvals(matrix)
    returned = factorize_embedding(model, rank)
    torch.testing.assert_close(returned.double(), singular, atol=1e-4, rtol=1e-4)
    assert model.config.embedding_rank == rank
    assert model.embeddings.word_embeddings.weight.shape == (VOCAB, rank)
    assert model.embeddings.word_projection.weight.shape == (HIDDEN, rank)
    error = (torch.linalg.norm(model.embeddings.word_embedding_matrix().detach().double() - matrix) ** 2).item()
    discarded = (singular[rank:] ** 2).sum()
    assert error == pytest.approx(discarded.item(), rel=1e-4)


def test_refactorizing_to_a_smaller_rank_truncates_the_product():
    model = tiny_model()
    factorize_embedding(model, 10)
    product = model.embeddings.word_embedding_matrix().detach().double().clone()
    singular = torch.linalg.svdvals(product)
    assert singular[10:].abs().max() < 1e-4  # the product has rank 10
    factorize_embedding(model, 4)
    assert model.embeddings.word_embeddings.weight.shape == (VOCAB, 4)
    error = (torch.linalg.norm(model.embeddings.word_embedding_matrix().detach().double() - product) ** 2).item()
    assert error == pytest.approx((singular[4:] ** 2).sum().item(), rel=1e-4)


@pytest.mark.parametrize("rank", [0, HIDDEN + 1, 2.0])
def test_factorize_rejects_bad_ranks(rank):
    with pytest.raises(ValueError, match="rank"):
        factorize_embedding(tiny_model(), rank)


# Importance


def test_importance_shapes_follow_per_layer_widths():
    student, ta = tiny_model(0), tiny_model(1)
    prune_heads(student, [torch.tensor([0]), torch.tensor([1, 2, 3]), torch.arange(HEADS)])
    prune_neurons(student, [torch.arange(7), torch.arange(FFN), torch.arange(2)])
    importance = compute_importance(student, ta, make_batches())
    assert [s.shape for s in importance.heads] == [(1,), (3,), (4,)]
    assert [s.shape for s in importance.neurons] == [(7,), (12,), (2,)]
    assert importance.num_batches == 2
    for scores in importance.heads + importance.neurons:
        assert scores.dtype == torch.float32 and bool((scores >= 0).all()) and bool((scores > 0).any())


def test_importance_accumulates_absolute_gradients_per_batch():
    student, ta = tiny_model(0), tiny_model(1)
    batches = make_batches(count=3)
    importance = compute_importance(student, ta, batches, hidden_weight=0.5, temperature=2.0)
    # Manual reference for layer 1: |W| * sum_b |dL_b/dW| with the same loss built from losses.py.
    layer = student.layers[1]
    params = [layer.attention_output.weight, layer.intermediate.weight, layer.intermediate.bias, layer.output.weight]
    accumulated = [torch.zeros_like(p) for p in params]
    for batch in batches:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        with torch.no_grad():
            teacher = ta(**inputs, output_hidden_states=True)
        out = student(**inputs, output_hidden_states=True)
        loss = multi_exit_loss(out.exit_logits, batch["labels"], teacher.exit_logits, kd_weight=0.9, temperature=2.0)
        loss = loss + 0.5 * hidden_mse(out.hidden_states, teacher.hidden_states, batch["attention_mask"])
        for acc, grad in zip(accumulated, torch.autograd.grad(loss, params)):
            acc += grad.abs()
    w_o, w_1, b_1, w_2 = (p.detach().abs() * acc for p, acc in zip(params, accumulated))
    torch.testing.assert_close(importance.heads[1], w_o.sum(0).view(HEADS, HEAD_SIZE).sum(1), rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(importance.neurons[1], w_1.sum(1) + b_1 + w_2.sum(0), rtol=1e-5, atol=1e-8)
    assert all(p.grad is None for p in student.parameters())  # importance leaves .grad alone
    assert not student.training and not ta.training


def test_importance_runs_without_dropout_and_restores_the_mode():
    student, ta = tiny_model(0, hidden_dropout_prob=0.5), tiny_model(1)
    student.train()
    batches = make_batches()
    first = compute_importance(student, ta, batches)
    second = compute_importance(student, ta, batches)
    for a, b in zip(first.heads + first.neurons, second.heads + second.neurons):
        torch.testing.assert_close(a, b)  # deterministic: dropout was off
    assert student.training


def test_a_silent_head_scores_zero_and_is_pruned_first():
    student, ta = tiny_model(0), tiny_model(1)
    with torch.no_grad():
        student.layers[2].attention_output.weight[:, HEAD_SIZE : 2 * HEAD_SIZE] = 0  # head 1 of layer 2
    importance = compute_importance(student, ta, make_batches())
    assert importance.heads[2][1].item() == 0.0
    assert bool((importance.heads[2][[0, 2, 3]] > 0).all())
    keep = allocate_widths(importance, heads=HEADS - 1, ffn=FFN)
    assert keep.heads[2].tolist() == [0, 2, 3]


def test_exit_calibration_changes_the_importance():
    # The last exit is dead (zero classifier), so without calibration nothing but the (disabled) hidden MSE
    # could give a gradient: every score is exactly zero. With every exit in the loss, the early exits do.
    student, ta = tiny_model(0), tiny_model(1)
    with torch.no_grad():
        student.exits[-1].classifier.weight.zero_()
    batches = make_batches()
    blind = compute_importance(student, ta, batches, hidden_weight=0.0, calibrate_exits=False)
    calibrated = compute_importance(student, ta, batches, hidden_weight=0.0, calibrate_exits=True)
    assert all(bool((s == 0).all()) for s in blind.heads + blind.neurons)
    assert all(bool((s > 0).any()) for s in calibrated.heads[:-1] + calibrated.neurons[:-1])
    # The last layer feeds only the dead exit: it scores zero either way.
    assert bool((calibrated.heads[-1] == 0).all()) and bool((calibrated.neurons[-1] == 0).all())
    # With the hidden MSE on as well, the two criteria still rank differently.
    blind_mse = compute_importance(student, ta, batches, calibrate_exits=False)
    calibrated_mse = compute_importance(student, ta, batches, calibrate_exits=True)
    assert not torch.allclose(blind_mse.neurons[0], calibrated_mse.neurons[0])


# Importance against a hand-differentiated linear model: |w| * sum_b |dL_b/dw| with dL_b/dw worked out below by
# the chain rule (no autograd, no losses.py), summed over the head's W_O columns and the neuron's W_1 row, bias
# and W_2 column.

LIN_HIDDEN, LIN_HEADS, LIN_HEAD_SIZE, LIN_FFN, LIN_LAYERS = 4, 2, 2, 3, 2
LIN_FEATURES = torch.tensor([[1.0, -0.5, 0.25, 2.0], [-1.5, 0.5, 1.0, 0.0], [0.5, 2.0, -1.0, 1.0],
                             [0.0, -1.0, 0.5, -2.0]])


class LinearLayer(torch.nn.Module):
    def __init__(self, w_o, w_1, b_1, w_2):
        super().__init__()
        self.num_heads = LIN_HEADS
        self.attention_output = torch.nn.Linear(LIN_HIDDEN, LIN_HIDDEN, bias=False)
        self.intermediate = torch.nn.Linear(LIN_HIDDEN, LIN_FFN)
        self.output = torch.nn.Linear(LIN_FFN, LIN_HIDDEN, bias=False)
        with torch.no_grad():
            self.attention_output.weight.copy_(w_o)
            self.intermediate.weight.copy_(w_1)
            self.intermediate.bias.copy_(b_1)
            self.output.weight.copy_(w_2)


class LinearExits(torch.nn.Module):
    """What compute_importance reads of a COST-EFF model (``config``, ``layers[l]`` with ``attention_output``,
    ``intermediate``, ``output`` and ``num_heads``) around a linear network: ``x_0 = features[input_ids[:, 0]]``,
    per layer ``a = x W_O^T``, ``u = a W_1^T + b_1``, ``x_l = u W_2^T``; exit ``l``'s logits are ``x_l`` (4 classes
    = hidden size 4); the hidden states are ``x_0 .. x_L`` as ``[B, 1, H]``."""

    def __init__(self, weights):
        super().__init__()
        self.config = type("Config", (), dict(hidden_size=LIN_HIDDEN, num_hidden_layers=LIN_LAYERS,
                                              num_labels=LIN_HIDDEN, attention_head_size=LIN_HEAD_SIZE))()
        self.layers = torch.nn.ModuleList(LinearLayer(*w) for w in weights)
        self.register_buffer("features", LIN_FEATURES.clone())

    def forward(self, input_ids, attention_mask=None, output_hidden_states=False):
        x = self.features[input_ids[:, 0]]
        states = [x]
        for layer in self.layers:
            x = layer.output(layer.intermediate(layer.attention_output(x)))
            states.append(x)
        hidden = tuple(s[:, None, :] for s in states) if output_hidden_states else None
        return type("Out", (), dict(exit_logits=tuple(states[1:]), hidden_states=hidden))()


def linear_weights(seed: int) -> list[tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(seed)

    def draw(*shape):  # scaled so the logits stay O(1) and no softmax saturates
        return 0.5 * torch.randn(*shape, generator=g)

    return [(draw(LIN_HIDDEN, LIN_HIDDEN), draw(LIN_FFN, LIN_HIDDEN), draw(LIN_FFN), draw(LIN_HIDDEN, LIN_FFN))
            for _ in range(LIN_LAYERS)]


def log_softmax_rows(z: torch.Tensor) -> torch.Tensor:
    shifted = z - z.max(dim=-1, keepdim=True).values
    return shifted - torch.log(torch.exp(shifted).sum(dim=-1, keepdim=True))


def softmax_rows(z: torch.Tensor) -> torch.Tensor:
    return torch.exp(log_softmax_rows(z))


def importance_by_hand(weights, ta_weights, batches, *, kd_weight, temperature, hidden_weight, all_exits):
    """Heads, neurons and mean loss of compute_importance for LinearExits, by the chain rule.

    Per batch of B rows with student exit logits z_l = x_l and TA exits t_l (= the TA's states x^TA_l):
      L_b = sum_l [kd T^2 mean_rows CE(softmax(t_l/T), z_l/T) + (1 - kd) mean_rows CE(z_l, y)]  (l: exits in play)
            + hw * sum_l mean_{rows, features} (x_l - x^TA_l)^2                               (l = 1..L)
      dL_b/dz_l = kd T (softmax(z_l/T) - softmax(t_l/T)) / B + (1 - kd) (softmax(z_l) - onehot(y)) / B
                  + hw * 2 (x_l - x^TA_l) / (B H)
    then back through x_l = u W_2^T, u = a W_1^T + b_1, a = x_{l-1} W_O^T (x_{l-1} also feeds exit l - 1).
    """
    def forward(ws, x):
        trace = []
        for w_o, w_1, b_1, w_2 in ws:
            a = x @ w_o.T
            u = a @ w_1.T + b_1
            trace.append((x, a, u))
            x = u @ w_2.T
            trace[-1] += (x,)
        return trace

    kd, T, hw = kd_weight, temperature, hidden_weight
    accumulated = [[torch.zeros_like(w) for w in layer] for layer in weights]
    losses = []
    for batch in batches:
        x0, y = LIN_FEATURES[batch["input_ids"][:, 0]], batch["labels"]
        rows = len(y)
        onehot = torch.zeros(rows, LIN_HIDDEN)
        onehot[torch.arange(rows), y] = 1.0
        student, ta = forward(weights, x0), forward(ta_weights, x0)
        loss, grads_out = 0.0, []
        for index, ((_, _, _, z), (_, _, _, target)) in enumerate(zip(student, ta)):
            grad = hw * 2 * (z - target) / z.numel()
            loss += hw * float(((z - target) ** 2).mean())
            if all_exits or index == LIN_LAYERS - 1:
                q_t, log_q_s = softmax_rows(target / T), log_softmax_rows(z / T)
                loss += kd * T**2 * float(-(q_t * log_q_s).sum(-1).mean())
                loss += (1 - kd) * float(-(onehot * log_softmax_rows(z)).sum(-1).mean())
                grad = grad + kd * T * (softmax_rows(z / T) - q_t) / rows + (1 - kd) * (softmax_rows(z) - onehot) / rows
            grads_out.append(grad)
        losses.append(loss)
        carried = torch.zeros(rows, LIN_HIDDEN)
        for index in reversed(range(LIN_LAYERS)):
            (w_o, w_1, _, w_2), (x_in, a, u, _) = weights[index], student[index]
            g = grads_out[index] + carried  # dL/dx_l: its own exit and MSE, plus what layer l + 1 sends back
            d_u = g @ w_2
            d_a = d_u @ w_1
            carried = d_a @ w_o
            for acc, d in zip(accumulated[index], (d_a.T @ x_in, d_u.T @ a, d_u.sum(0), g.T @ u)):
                acc += d.abs()  # |dL_b/dw| per batch, then summed
    heads, neurons = [], []
    for (w_o, w_1, b_1, w_2), (g_o, g_1, g_b, g_2) in zip(weights, accumulated):
        columns = (w_o.abs() * g_o).sum(0)  # [H * d]: one score per W_O input column
        heads.append(columns.view(LIN_HEADS, LIN_HEAD_SIZE).sum(1))  # head h owns columns h*d .. (h+1)*d - 1
        neurons.append((w_1.abs() * g_1).sum(1) + b_1.abs() * g_b + (w_2.abs() * g_2).sum(0))
    return heads, neurons, sum(losses) / len(losses)


def linear_batches() -> list[dict]:
    # Batches 1 and 2 hold the same rows with other labels: the CE gradients change sign between them, so summing
    # |dL_b/dw| differs from |sum_b dL_b/dw|. Batch 3 is smaller (B = 2), so the 1/B of the means matters.
    ids = torch.tensor([[0], [1], [2]])
    return [dict(input_ids=ids, labels=torch.tensor([0, 3, 1])), dict(input_ids=ids, labels=torch.tensor([2, 1, 3])),
            dict(input_ids=torch.tensor([[3], [1]]), labels=torch.tensor([1, 0]))]


@pytest.mark.parametrize("kd_weight, temperature, hidden_weight, calibrate_exits", [
    (0.9, 2.0, 0.5, True),  # the paper's mix, tempered, with the hidden MSE, against every exit
    (0.9, 2.0, 0.5, False),  # the ablation: the last exit's KD + CE only (the MSE stays)
    (0.0, 1.0, 0.0, True),  # hard labels only
    (1.0, 3.0, 0.0, True),  # distillation only
    (0.3, 1.0, 2.0, False),
])
def test_importance_of_a_linear_model_by_hand(kd_weight, temperature, hidden_weight, calibrate_exits):
    weights, ta_weights = linear_weights(0), linear_weights(1)
    student, ta = LinearExits(weights), LinearExits(ta_weights)
    kw = dict(kd_weight=kd_weight, temperature=temperature, hidden_weight=hidden_weight)
    importance = compute_importance(student, ta, linear_batches(), calibrate_exits=calibrate_exits, **kw)
    heads, neurons, loss = importance_by_hand(weights, ta_weights, linear_batches(), all_exits=calibrate_exits, **kw)
    assert [h.shape for h in importance.heads] == [(LIN_HEADS,)] * LIN_LAYERS
    assert [n.shape for n in importance.neurons] == [(LIN_FFN,)] * LIN_LAYERS
    for actual, expected in zip(importance.heads + importance.neurons, heads + neurons):
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-6)
    assert importance.num_batches == 3 and importance.loss == pytest.approx(loss, rel=1e-5)
    # The two criteria differ on this model, so the comparison above tells every exit from the last one.
    other, _, _ = importance_by_hand(weights, ta_weights, linear_batches(), all_exits=not calibrate_exits, **kw)
    assert not torch.allclose(other[0], heads[0], rtol=1e-2)


def test_importance_rejects_empty_batches_and_mismatched_ta():
    student = tiny_model(0)
    with pytest.raises(ValueError, match="at least one batch"):
        compute_importance(student, tiny_model(1), [])
    with pytest.raises(ValueError, match="num_hidden_layers"):
        compute_importance(student, tiny_model(1, num_hidden_layers=2), make_batches())
    batch = make_batches(count=1)[0]
    del batch["labels"]
    with pytest.raises(ValueError, match="labels"):
        compute_importance(student, tiny_model(1), [batch])


# Width allocation


def scores_importance(heads: list[list[float]], neurons: list[list[float]]) -> Importance:
    return Importance(
        heads=[torch.tensor(h) for h in heads], neurons=[torch.tensor(n) for n in neurons], loss=0.0, num_batches=1
    )


def test_uniform_allocation_keeps_each_layers_best():
    importance = scores_importance(
        [[0.1, 0.9, 0.5, 0.2], [4.0, 3.0, 2.0, 1.0]], [[1.0, 0.0, 3.0, 2.0, 5.0], [0.0, 0.0, 1.0, 0.0, 0.0]]
    )
    keep = allocate_widths(importance, heads=2, ffn=3, allocation="uniform")
    assert [k.tolist() for k in keep.heads] == [[1, 2], [0, 1]]
    assert [k.tolist() for k in keep.neurons] == [[2, 3, 4], [0, 1, 2]]  # ties: lower index first
    assert keep.num_attention_heads == [2, 2] and keep.intermediate_size == [3, 3]


def test_global_allocation_moves_width_toward_layers_with_spread_importance():
    # Layer 0: importance concentrated in one head; layer 1: flat. Same total budget as uniform 2 + 2.
    importance = scores_importance([[100.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.1, 1.0]], [[5.0, 1, 1, 1], [1.0, 1, 1, 1]])
    keep = allocate_widths(importance, heads=2, ffn=2, allocation="global")
    assert keep.num_attention_heads == [1, 3]
    assert keep.heads[0].tolist() == [0]
    assert keep.intermediate_size == [1, 3]
    uniform = allocate_widths(importance, heads=2, ffn=2, allocation="uniform")
    assert uniform.num_attention_heads == [2, 2] and uniform.intermediate_size == [2, 2]


def test_global_allocation_honours_minimums_and_ignores_layer_scale():
    heads = [[50.0, 40.0, 30.0, 20.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    importance = scores_importance(heads, [[1.0, 2.0, 3.0]] * 3)
    keep = allocate_widths(importance, heads=2, ffn=2, allocation="global", min_heads=1, min_ffn=2)
    assert sum(keep.num_attention_heads) == 6 and min(keep.num_attention_heads) >= 1
    assert keep.intermediate_size == [2, 2, 2]
    scaled = scores_importance([[s * 1000 for s in heads[0]]] + heads[1:], [[1.0, 2.0, 3.0]] * 3)
    assert [k.tolist() for k in allocate_widths(scaled, heads=2, ffn=2, allocation="global").heads] == [
        k.tolist() for k in allocate_widths(importance, heads=2, ffn=2, allocation="global").heads
    ]


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    num_layers=st.integers(1, 5),
    minimum=st.integers(1, 3),
)
def test_global_allocation_properties(data, num_layers, minimum):
    widths = data.draw(st.lists(st.integers(minimum, 9), min_size=num_layers, max_size=num_layers))
    scores = [data.draw(st.lists(st.floats(0, 1e6), min_size=w, max_size=w)) for w in widths]
    target = data.draw(st.integers(minimum, sum(widths) // num_layers))
    importance = scores_importance(scores, scores)
    keep = allocate_widths(
        importance, heads=target, ffn=target, allocation="global", min_heads=minimum, min_ffn=minimum
    )
    for kept in (keep.heads, keep.neurons):
        assert sum(k.numel() for k in kept) == target * num_layers
        for k, width in zip(kept, widths):
            assert minimum <= k.numel() <= width
            assert k.tolist() == sorted(set(k.tolist())) and 0 <= k.min() and k.max() < width


def test_allocation_rejects_impossible_budgets():
    importance = scores_importance([[1.0, 2.0], [1.0, 2.0, 3.0]], [[1.0, 2.0], [1.0, 2.0]])
    with pytest.raises(ValueError, match="uniform"):
        allocate_widths(importance, heads=3, ffn=1, allocation="uniform")  # layer 0 has 2 heads
    with pytest.raises(ValueError, match="budget"):
        allocate_widths(importance, heads=3, ffn=1, allocation="global")  # 6 > 5 heads in total
    with pytest.raises(ValueError, match="budget"):
        allocate_widths(importance, heads=1, ffn=1, allocation="global", min_heads=2)
    with pytest.raises(ValueError, match="allocation"):
        allocate_widths(importance, heads=1, ffn=1, allocation="greedy")
    with pytest.raises(ValueError, match=">= 0"):
        allocate_widths(scores_importance([[1.0, -1.0]], [[1.0]]), heads=1, ffn=1)


# Schedule


def test_pruning_schedule_examples():
    assert pruning_schedule(12, 6, 6) == [11, 10, 9, 8, 7, 6]
    assert pruning_schedule(3072, 1536, 6) == [2816, 2560, 2304, 2048, 1792, 1536]
    assert pruning_schedule(10, 3, 2) == [7, 3]
    assert pruning_schedule(5, 5, 3) == [5, 5, 5]
    for args in [(4, 5, 1), (4, 0, 1), (4, 2, 0), (4.0, 2, 1)]:
        with pytest.raises(ValueError):
            pruning_schedule(*args)


@given(start=st.integers(1, 5000), data=st.data())
def test_pruning_schedule_properties(start, data):
    target = data.draw(st.integers(1, start))
    num_events = data.draw(st.integers(1, 60))
    widths = pruning_schedule(start, target, num_events)
    assert len(widths) == num_events
    assert widths[-1] == target
    assert all(isinstance(w, int) for w in widths)
    steps = [a - b for a, b in zip([start] + widths, widths)]
    assert all(step >= 0 for step in steps)  # monotone non-increasing, starting from start
    shrink = start - target
    assert all(shrink // num_events <= step <= -(-shrink // num_events) for step in steps)  # linear
    if num_events == shrink:
        assert steps == [1] * num_events


def test_geometric_schedule_examples():
    # 160 / 1536 = 0.10417; its 4th root 0.56811 removes 43 % per event: 1536 x 0.56811 = 872.6, x 0.32275 = 495.7,
    # x 0.18336 = 281.6, then the target (the linear schedule removes 22 %, 29 %, 41 %, 68 %: 1192, 848, 504, 160)
    assert pruning_schedule(1536, 160, 4, "geometric") == [873, 496, 282, 160]
    # 2 / 12 = 0.16667; its 4th root 0.63894: 7.67, 4.90, 3.13, 2
    assert pruning_schedule(12, 2, 4, "geometric") == [8, 5, 3, 2]
    assert pruning_schedule(1000, 10, 2, "geometric") == [100, 10]
    assert pruning_schedule(384, 160, 1, "geometric") == [160]
    assert pruning_schedule(5, 5, 3, "geometric") == [5, 5, 5]
    with pytest.raises(ValueError, match="shape 'cosine': unknown; use one of linear, geometric"):
        pruning_schedule(12, 2, 4, "cosine")


@given(start=st.integers(1, 5000), data=st.data())
def test_geometric_schedule_properties(start, data):
    target = data.draw(st.integers(1, start))
    num_events = data.draw(st.integers(1, 60))
    widths = pruning_schedule(start, target, num_events, "geometric")
    assert len(widths) == num_events and widths[-1] == target
    assert all(isinstance(w, int) for w in widths)
    assert all(a >= b for a, b in zip([start] + widths, widths))  # non-increasing, starting from start
    ratio = target / start
    for k, width in enumerate(widths[:-1], start=1):  # each the nearest integer to start * ratio ** (k / n)
        assert abs(width - start * ratio ** (k / num_events)) <= 0.5 + 1e-6


def test_event_steps_by_share_by_hand():
    """MiniLM (hidden 384, heads of 32) to 2 heads / FFN 160 in four linear events. Encoder weights per layer,
    4 * 384 * 32 * heads + 2 * 384 * FFN: 1769472 (12, 1536), 1406976 (10, 1192), 995328 (7, 848), 632832 (5, 504),
    221184 (2, 160); shares removed 0.205, 0.293, 0.364, 0.650 (sum 1.512) of 100 steps: 13.5, 19.3, 24.1, 43.0;
    the largest remainder (13.5) rounds up."""
    config = CostEffConfig(hidden_size=384, num_attention_heads=12, intermediate_size=1536, attention_head_size=32)
    events = plan_events(config, heads=2, ffn=160, embedding_rank=None, num_events=4)
    assert event_steps(config, events, 25, "by-share") == [14, 19, 24, 43]
    assert event_steps(config, events, 25) == [25, 25, 25, 25]
    assert event_steps(config, [], 25, "by-share") == []
    with pytest.raises(ValueError, match="allocation 'last': unknown; use one of even, by-share"):
        event_steps(config, events, 25, "last")
    with pytest.raises(ValueError, match="steps_per_event must be an int >= 0, got -1"):
        event_steps(config, events, -1, "by-share")
    # only the embedding shrinks in the first three events (rank 384 -> 320 -> 256 -> 192 -> 128: shares 1/6, 1/5,
    # 1/4, 1/3), the last one also drops a head (12 -> 11: 2.8 % of the encoder, less than its third of the rank):
    # 100 steps x (0.167, 0.2, 0.25, 0.333) / 0.95 = 17.5, 21.1, 26.3, 35.1
    rank_only = plan_events(config, heads=11, ffn=1536, embedding_rank=128, num_events=4)
    assert [e.embedding_rank for e in rank_only] == [320, 256, 192, 128]
    assert event_steps(config, rank_only, 25, "by-share") == [18, 21, 26, 35]
    # an event that removes nothing gets no steps
    assert event_steps(config, [PruningEvent(12, 1536, None), PruningEvent(6, 768, None)], 10, "by-share") == [0, 20]


@given(steps=st.integers(0, 500), num_events=st.integers(1, 12), heads=st.integers(1, 12), ffn=st.integers(1, 1536))
def test_event_steps_by_share_keeps_the_total_and_gives_more_to_larger_cuts(steps, num_events, heads, ffn):
    config = CostEffConfig(hidden_size=384, num_attention_heads=12, intermediate_size=1536, attention_head_size=32)
    events = plan_events(config, heads=heads, ffn=ffn, embedding_rank=None, num_events=num_events)
    allocated = event_steps(config, events, steps, "by-share")
    assert len(allocated) == num_events and sum(allocated) == steps * num_events and min(allocated) >= 0
    sizes = [4 * 384 * 32 * 12 + 2 * 384 * 1536] + [4 * 384 * 32 * e.heads + 2 * 384 * e.ffn for e in events]
    shares = [(a - b) / a for a, b in zip(sizes, sizes[1:])]
    for i in range(num_events):  # a strictly larger share never gets fewer steps (largest remainders)
        for j in range(num_events):
            if shares[i] > shares[j]:
                assert allocated[i] >= allocated[j]


def test_plan_events_follows_the_paper_schedule():
    config = CostEffConfig(hidden_size=768, num_attention_heads=12, intermediate_size=3072)
    events = plan_events(config, heads=6, ffn=1536, embedding_rank=384)
    assert [e.heads for e in events] == [11, 10, 9, 8, 7, 6]
    assert [e.ffn for e in events] == [2816, 2560, 2304, 2048, 1792, 1536]
    assert [e.embedding_rank for e in events] == [704, 640, 576, 512, 448, 384]
    assert events[-1] == PruningEvent(6, 1536, 384)
    assert [e.embedding_rank for e in plan_events(config, 6, 1536, None)] == [None] * 6
    assert len(plan_events(config, 6, 1536, 384, num_events=2)) == 2
    assert plan_events(config, 12, 3072, None) == []
    assert plan_events(config, 12, 2048, None) == [PruningEvent(12, 2048, None)]  # FFN only: one event
    with pytest.raises(ValueError, match="target"):
        plan_events(config, 13, 3072, None)
    with pytest.raises(ValueError, match="schedule 'cosine': unknown"):
        plan_events(config, 12, 3072, None, schedule="cosine")  # even when nothing would change
    geometric = plan_events(config, heads=2, ffn=160, embedding_rank=None, num_events=4, schedule="geometric")
    # 12 -> 2 heads: 12 x (1/6) ** (k/4) = 7.67, 4.90, 3.13, 2; FFN 3072 -> 160: 3072 x 0.05208 ** (k/4) =
    # 1467.6, 701.1, 334.9, 160
    assert geometric == [PruningEvent(8, 1468, None), PruningEvent(5, 701, None), PruningEvent(3, 335, None),
                         PruningEvent(2, 160, None)]


# The loop


@pytest.mark.parametrize("allocation", ["uniform", "global"])
def test_slenderize_reaches_the_targets(allocation, tmp_path):
    ta = tiny_model(1)
    student = copy.deepcopy(ta)
    batches = make_batches(count=3)
    calls = []
    slim = slenderize(
        student,
        ta,
        lambda: iter(batches),
        heads=2,
        ffn=6,
        embedding_rank=8,
        allocation=allocation,
        importance_batches=2,
        distill_steps_between_events=4,
        lr=1e-3,
        progress=False,
        on_event=lambda index, event, model, stats: calls.append((index, event, dict(stats))),
    )
    assert slim is student
    assert [c[1] for c in calls] == [PruningEvent(3, 9, 12), PruningEvent(2, 6, 8)]
    assert all(c[2]["distill_loss"] > 0 and c[2]["importance_loss"] > 0 for c in calls)
    assert sum(slim.config.num_attention_heads) == 2 * LAYERS
    assert sum(slim.config.intermediate_size) == 6 * LAYERS
    if allocation == "uniform":
        assert slim.config.num_attention_heads == [2] * LAYERS and slim.config.intermediate_size == [6] * LAYERS
    assert slim.config.embedding_rank == 8
    assert ta.config.num_attention_heads == [HEADS] * LAYERS  # the TA is untouched
    slim.save_pretrained(tmp_path)
    loaded = CostEffForSequenceClassification.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(all_exit_logits(loaded, batches), all_exit_logits(slim.eval(), batches))


def test_measure_sees_each_event_pruned_then_distilled_and_changes_no_training_step():
    """``measure`` runs right after each event's pruning (the event's widths, before any step) and after its
    distillation; one that draws random numbers and switches to eval mode leaves the trained weights exactly those
    of a run without it (dropout 0.3, so the training itself draws from the generator)."""
    ta = tiny_model(1, hidden_dropout_prob=0.3)
    batches = make_batches(count=3)
    seen, calls = [], []

    def measure(model):
        model.eval()
        torch.rand(1000)
        seen.append((model.config.num_attention_heads[0], model.training))
        return {"heads": model.config.num_attention_heads[0]}

    def run(**kwargs):
        torch.manual_seed(5)
        student = copy.deepcopy(ta).train()
        return slenderize(student, ta, lambda: iter(batches), heads=2, ffn=6, embedding_rank=None,
                          importance_batches=2, distill_steps_between_events=3, lr=1e-3, progress=False, **kwargs)

    measured = run(measure=measure, on_event=lambda index, event, model, stats: calls.append(stats))
    plain = run()
    assert seen == [(3, False), (3, False), (2, False), (2, False)]
    assert [(c["before_distill"], c["after_distill"]) for c in calls] == [({"heads": 3}, {"heads": 3}),
                                                                          ({"heads": 2}, {"heads": 2})]
    assert measured.training  # its mode restored after each measurement
    for (name, a), (_, b) in zip(measured.state_dict().items(), plain.state_dict().items()):
        assert torch.equal(a, b), name
    # the same measurement without restoring the generator would change the steps: dropout draws differ
    torch.manual_seed(5)
    drifted = copy.deepcopy(ta).train()
    slenderize(drifted, ta, lambda: iter(batches), heads=2, ffn=6, embedding_rank=None, importance_batches=2,
               distill_steps_between_events=3, lr=1e-3, progress=False,
               on_event=lambda index, event, model, stats: torch.rand(1000))
    assert not all(torch.equal(a, b) for a, b in zip(drifted.state_dict().values(), plain.state_dict().values()))


def test_slenderize_distillation_moves_the_student_toward_the_ta():
    ta = tiny_model(1)
    student = copy.deepcopy(ta)
    batches = make_batches(count=2)
    losses = []
    slenderize(
        student,
        ta,
        lambda: iter(batches),
        heads=3,
        ffn=FFN,
        embedding_rank=None,
        distill_steps_between_events=0,
        progress=False,
        on_event=lambda i, e, m, stats: losses.append(compute_importance(m, ta, batches).loss),
    )
    pruned_loss = losses[0]
    slenderize(  # already at the target: one explicit event that keeps everything, then distillation
        student,
        ta,
        lambda: iter(batches),
        heads=3,
        ffn=FFN,
        embedding_rank=None,
        num_events=1,
        distill_steps_between_events=30,
        lr=3e-3,
        progress=False,
        on_event=lambda i, e, m, stats: losses.append(compute_importance(m, ta, batches).loss),
    )
    assert losses[1] < pruned_loss


def test_slenderize_rejects_an_empty_factory():
    ta = tiny_model(1)
    with pytest.raises(ValueError):
        slenderize(copy.deepcopy(ta), ta, lambda: iter([]), heads=3, ffn=FFN, embedding_rank=None, progress=False)

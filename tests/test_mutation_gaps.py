"""Behaviour the rest of the suite left unchecked, found by mutation testing (``bench/mutation.py``; the mutants each
test kills are listed in ``bench/results/mutation/README.md``).

Every expected value is worked out by hand or with plain torch formulas, never taken from the code under test.
"""

from __future__ import annotations

import math

import pytest
import torch

from costeff_fast import reference
from costeff_fast.batch import PackedBatch

# costeff_fast.reference


def test_exit_entropy_of_logits_beyond_the_fp32_range_is_exactly_zero():
    # softmax([3e38, -3e38]) is [1, 0] with log-probabilities [0, -inf]: the p = 0 label adds 0, not 0 * -inf, and
    # nothing else ("finite for any finite logits, extreme ones included").
    entropy = reference.exit_entropy(torch.tensor([[3e38, -3e38], [0.0, 0.0]]))
    assert entropy[0].item() == 0.0
    assert math.isclose(entropy[1].item(), math.log(2.0), rel_tol=1e-6)


def test_a_threshold_of_zero_never_exits_even_a_certain_row():
    # logits [1e4, 0]: p = [1, exp(-1e4) = 0 in fp32], entropy exactly 0. "Strictly below": 0 < 0 is False, so a
    # threshold of 0 never exits (the documented "0.0 never exits early"); the last layer still answers.
    certain = torch.tensor([[1e4, 0.0], [1e4, 0.0]])
    assert torch.equal(reference.exit_entropy(certain), torch.zeros(2))
    assert not reference.exit_decision(certain, 0.0).any()
    classifier_weight, classifier_bias = 1e4 * torch.eye(2), torch.zeros(2)  # tanh(certain) @ W = [1e4, 0] again
    _, entropy, exits = reference.exit_head(certain, torch.arange(2), classifier_weight, classifier_bias,
                                            entropy_threshold=0.0)
    assert torch.equal(entropy, torch.zeros(2)) and not exits.any()
    assert torch.equal(reference.first_exit(torch.zeros(2, 3), [0.0, 0.0, 0.0]), torch.tensor([3, 3]))
    assert torch.equal(reference.first_exit(torch.zeros(2, 3), [0.0, 1e-6, 0.0]), torch.tensor([2, 2]))


def test_exit_head_without_a_threshold_returns_a_bool_mask_of_no_exits():
    hidden = torch.tensor([[1.0, -1.0], [0.5, 2.0]])
    logits, entropy, exits = reference.exit_head(hidden, torch.arange(2), torch.eye(2), torch.zeros(2))
    assert exits.dtype == torch.bool and exits.shape == (2,) and not exits.any()
    torch.testing.assert_close(logits, torch.tanh(hidden))  # no pooler: tanh, then the identity classifier


def test_the_pooler_activation_is_tanh_by_default_and_exit_head_passes_the_one_asked_for():
    # features [2, 2] through a pooler whose output has negative entries, then an identity classifier plus bias 1.
    features = torch.tensor([[1.0, -2.0], [-0.5, 0.25]])
    pooler_weight, pooler_bias = torch.tensor([[1.0, 0.0], [1.0, -1.0]]), torch.tensor([0.0, -0.5])
    pre = [[1.0 - 2.0, 2.0 - 0.5], [-0.5 + 0.25, -0.25 - 0.5]]  # features @ pooler_weight + pooler_bias, by hand
    classifier_weight, classifier_bias = torch.eye(2), torch.ones(2)
    tanh = torch.tensor([[math.tanh(v) + 1.0 for v in row] for row in pre])
    relu = torch.tensor([[max(v, 0.0) + 1.0 for v in row] for row in pre])
    torch.testing.assert_close(
        reference.exit_logits(features, classifier_weight, classifier_bias, pooler_weight, pooler_bias), tanh)
    logits, _, _ = reference.exit_head(features, torch.arange(2), classifier_weight, classifier_bias, pooler_weight,
                                       pooler_bias, pooler_activation="relu")
    torch.testing.assert_close(logits, relu)


def test_mean_features_keep_the_hidden_dtype_and_sum_in_fp32():
    # 300 bf16 tokens of value 1 + 2^-7 (exact in bf16) in row 0, one token of 3 in row 1. Summed in bf16 the row-0
    # sum would stall (bf16 has 8 bits of mantissa); in fp32 the mean is exactly 1 + 2^-7.
    value = 1.0 + 2.0**-7
    hidden = torch.full((301, 4), value, dtype=torch.bfloat16)
    hidden[300] = 3.0
    batch = PackedBatch.from_lengths(torch.tensor([300, 1]), "cpu")
    means = reference.segment_mean(hidden, batch.cu_seqlens)
    assert means.dtype == torch.float32
    torch.testing.assert_close(means, torch.tensor([[value] * 4, [3.0] * 4]), rtol=0, atol=0)
    features = reference.exit_features(hidden, batch, "mean")
    assert features.dtype == torch.bfloat16  # "[B, H] in hidden's dtype"
    torch.testing.assert_close(features.float(), torch.tensor([[value] * 4, [3.0] * 4]), rtol=0, atol=0)
    with pytest.raises(ValueError, match="pooling must be 'cls' or 'mean', got 'max'"):
        reference.exit_features(hidden, batch, "max")


def test_scatter_exits_casts_the_logits_to_the_outputs_dtype():
    logits_out, exit_layer = torch.zeros(3, 2), torch.zeros(3, dtype=torch.long)
    logits = torch.tensor([[1.5, -2.25], [3.0, 0.5]], dtype=torch.float16)  # exact in fp16
    reference.scatter_exits(logits_out, exit_layer, logits, torch.tensor([1]), torch.tensor([2, 0]), 4)
    assert torch.equal(logits_out, torch.tensor([[3.0, 0.5], [0.0, 0.0], [0.0, 0.0]]))
    assert torch.equal(exit_layer, torch.tensor([4, 0, 0]))


def test_varlen_attention_refuses_a_qkv_of_the_wrong_width_naming_both_widths():
    # 2 heads of 4: Q, K and V need 3 * 2 * 4 = 24 columns.
    with pytest.raises(ValueError, match=r"3 \* num_heads \* head_size = 24 columns, got 23"):
        reference.varlen_attention(torch.zeros(5, 23), torch.tensor([0, 2, 5]), 3, 2, 4)


def test_linear_residual_layernorm_int8_uses_the_given_eps():
    # x = 0 quantizes to exactly 0, so the GEMM adds nothing: out = LayerNorm(bias + residual) with eps = 0.5, by hand
    # (population variance); torch's default eps (1e-5) would give a visibly different result.
    from costeff_fast.packing import quantize_int8

    try:
        weight = quantize_int8(torch.randn(3, 4, generator=torch.Generator().manual_seed(0)))
    except RuntimeError as error:
        pytest.skip(f"no int8 engine: {error}")
    bias, residual = torch.tensor([1.0, 0.0, -1.0, 2.0]), torch.tensor([[0.0, 1.0, 1.0, 2.0]])
    norm_weight, norm_bias = torch.tensor([1.0, 2.0, 1.0, 1.0]), torch.tensor([0.0, 0.0, 0.5, 0.0])
    v = [1.0, 1.0, 0.0, 4.0]  # bias + residual
    mean = sum(v) / 4
    var = sum((a - mean) ** 2 for a in v) / 4
    expected = [(a - mean) / math.sqrt(var + 0.5) * w + b for a, w, b in zip(v, norm_weight.tolist(),
                                                                            norm_bias.tolist())]
    out = reference.linear_residual_layernorm_int8(torch.zeros(1, 3), weight, bias, residual, norm_weight, norm_bias,
                                                   0.5)
    torch.testing.assert_close(out, torch.tensor([expected]))


# costeff_fast.engine


def _packed(batch):
    real = batch["attention_mask"].bool()
    return batch["input_ids"][real], batch["token_type_ids"][real], batch["attention_mask"].sum(1)


def test_run_early_exit_returns_fp32_logits_and_int64_layers_whatever_the_default_dtype():
    from conftest import make_tiny_model, random_batch

    from costeff_fast.backends import TorchBackend
    from costeff_fast.engine import run_early_exit
    from costeff_fast.packing import PackedWeights

    backend = TorchBackend(PackedWeights.from_model(make_tiny_model(0, attention_head_size=16)))
    ids, types, lengths = _packed(random_batch(1, batch=5, vocab=97))
    previous = torch.get_default_dtype()
    for default in (torch.float32, torch.float64):
        torch.set_default_dtype(default)
        try:
            logits, exit_layer = run_early_exit(backend, ids, types, lengths, [0.5, 0.5, 0.5, 0.5])
        finally:
            torch.set_default_dtype(previous)
        assert logits.dtype == torch.float32 and logits.shape == (5, 3), default
        assert exit_layer.dtype == torch.int64 and exit_layer.shape == (5,), default
        assert ((exit_layer >= 1) & (exit_layer <= 4)).all()


def test_the_stream_runs_each_layer_on_at_most_batch_size_rows_and_yields_only_answers():
    # 18 rows in chunks of 3, batches of 4: the first layer runs as soon as its queue holds 4 rows, on exactly 4
    # (the rest wait), so it sees 4, 4, 4, 4 and, once the input is exhausted, the 2 left; no layer call ever
    # takes more than 4 rows ("on exactly batch_size rows"; a queue holds fewer than 2 * batch_size).
    from conftest import make_tiny_model, random_batch

    from costeff_fast.backends import TorchBackend
    from costeff_fast.engine import stream_early_exit
    from costeff_fast.packing import PackedWeights

    class Recording(TorchBackend):
        def __init__(self, weights):
            super().__init__(weights)
            self.rows = []

        def layer(self, index, hidden, batch):
            self.rows.append((index, batch.num_rows))
            return super().layer(index, hidden, batch)

    backend = Recording(PackedWeights.from_model(make_tiny_model(0, attention_head_size=16, weight_std=0.15)))
    ids, types, lengths = _packed(random_batch(2, batch=18, vocab=97))
    cu = [0, *torch.cumsum(lengths, 0).tolist()]
    chunks = [(ids[cu[s]:cu[s + 3]], types[cu[s]:cu[s + 3]], lengths[s:s + 3]) for s in range(0, 18, 3)]
    # tau 1e-6 at layer 1: its exit head runs and no row is that certain, so nobody answers there (and the stream
    # yields nothing for those calls: every answer has k >= 1 rows).
    answers = list(stream_early_exit(backend, chunks, 4, [1e-6, 0.9, 0.9, 0.0]))
    assert all(len(rows) >= 1 for rows, _, _ in answers)
    assert 1 not in {layer for _, _, layer in answers}
    assert sorted(row for rows, _, _ in answers for row in rows.tolist()) == list(range(18))
    assert sorted(n for index, n in backend.rows if index == 0) == [2, 4, 4, 4, 4]
    assert all(n <= 4 for _, n in backend.rows), backend.rows


def test_the_stream_pulls_the_next_chunk_only_when_no_queue_is_full():
    # Chunks of exactly batch_size rows and no early exit: each chunk fills the first queue to batch_size, so the
    # first layer runs on it before the next chunk is pulled ("chunks are pulled only when needed"; a queue holds
    # fewer than 2 * batch_size rows). The k-th call of the first layer comes after exactly k chunks.
    from conftest import make_tiny_model, random_batch

    from costeff_fast.backends import TorchBackend
    from costeff_fast.engine import stream_early_exit
    from costeff_fast.packing import PackedWeights

    pulled, first_layer_calls = [], []

    class Recording(TorchBackend):
        def layer(self, index, hidden, batch):
            if index == 0:
                first_layer_calls.append(len(pulled))
            return super().layer(index, hidden, batch)

    backend = Recording(PackedWeights.from_model(make_tiny_model(0, attention_head_size=16)))
    ids, types, lengths = _packed(random_batch(3, batch=16, vocab=97))
    cu = [0, *torch.cumsum(lengths, 0).tolist()]

    def chunks():
        for s in range(0, 16, 4):
            pulled.append(s)
            yield ids[cu[s]:cu[s + 4]], types[cu[s]:cu[s + 4]], lengths[s:s + 4]

    answers = list(stream_early_exit(backend, chunks(), 4, [0.0, 0.0, 0.0, 0.0]))
    assert sorted(row for rows, _, _ in answers for row in rows.tolist()) == list(range(16))
    assert first_layer_calls == [1, 2, 3, 4]


def test_the_stream_refuses_a_batch_size_below_1_naming_it():
    from costeff_fast.engine import stream_early_exit

    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        next(stream_early_exit(None, [], 0, [0.0]))


def test_a_layer_queue_returns_its_oldest_rows_first():
    # Three pieces of 3 rows (row ids 0-8): batches of 4 take rows 0-3, then 4-7 (the rest of the split piece goes
    # back to the front), then 8.
    from costeff_fast.engine import _RowQueue

    queue = _RowQueue()
    for first in (0, 3, 6):
        batch = PackedBatch.from_lengths(torch.tensor([2, 1, 3]), "cpu", torch.arange(first, first + 3))
        queue.push(torch.arange(first * 10, first * 10 + 6).float()[:, None], batch)
    popped = []
    while queue.num_rows:
        hidden, batch = queue.pop(4)
        assert hidden.shape[0] == int(batch.lengths.sum())
        popped.append(batch.row_ids.tolist())
    assert popped == [[0, 1, 2, 3], [4, 5, 6, 7], [8]]


def test_the_engine_gives_each_exit_head_the_features_its_layer_returned():
    # Backend contract: exit_logits gets ``features`` "as layer returned it" (a backend whose layer kernel also
    # pools the exit's features does not pool them twice).
    from conftest import make_tiny_model, random_batch

    from costeff_fast.backends import TorchBackend
    from costeff_fast.engine import run_early_exit, stream_early_exit
    from costeff_fast.packing import PackedWeights

    class PoolingInLayer(TorchBackend):
        def layer(self, index, hidden, batch):
            hidden, _ = super().layer(index, hidden, batch)
            self.features = reference.exit_features(hidden, batch, self.weights.exits[index].pooling)
            return hidden, self.features

        def exit_logits(self, index, hidden, batch, features):
            assert features is self.features
            return super().exit_logits(index, hidden, batch, features)

    backend = PoolingInLayer(PackedWeights.from_model(make_tiny_model(0, attention_head_size=16, exit_pooling="mean")))
    ids, types, lengths = _packed(random_batch(4, batch=6, vocab=97))
    tau = [0.9, 0.9, 0.9, 0.0]
    logits, _ = run_early_exit(backend, ids, types, lengths, tau)
    assert torch.isfinite(logits).all()
    assert sum(len(rows) for rows, _, _ in stream_early_exit(backend, [(ids, types, lengths)], 4, tau)) == 6


# costeff_fast.reference, continued (the reference-after survivors)


def test_first_exit_compares_in_the_entropies_dtype_whatever_the_default_dtype():
    # 0.7 rounds down in fp32, so an fp32 entropy of fp32(0.7) is strictly below the fp64 0.7 but not below the
    # threshold in the entropies' fp32. The decision must not follow torch's default dtype.
    entropies = torch.tensor([[0.7, 0.0]], dtype=torch.float32)
    assert float(entropies[0, 0]) < 0.7
    decisions = []
    default = torch.get_default_dtype()
    for dtype in (torch.float32, torch.float64):
        torch.set_default_dtype(dtype)
        try:
            decisions.append(reference.first_exit(entropies, [0.7, 0.0]))
        finally:
            torch.set_default_dtype(default)
    assert torch.equal(decisions[0], decisions[1]) and decisions[0].tolist() == [2]

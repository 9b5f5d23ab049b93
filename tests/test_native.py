"""Native CPU kernels (csrc/) against costeff_fast.reference, the native backend against the torch backend,
and the build fallback."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import make_tiny_model, random_batch
from test_engine import TIE, reference_entropies

from costeff_fast import exit_entropy, native, reference
from costeff_fast.backends import NativeBackend, TorchBackend
from costeff_fast.batch import PackedBatch
from costeff_fast.engine import run_early_exit
from costeff_fast import CostEffEngineForSequenceClassification
from costeff_fast.packing import PackedWeights

pytestmark = pytest.mark.skipif(not native.available(), reason="native kernels could not be built here")

LENGTHS = {
    "uneven": [5, 1, 17, 3, 33, 2],
    "single-tokens": [1, 1, 1],
    "one-row": [1],
    "long": [130, 7, 64, 65],
}


@pytest.fixture(scope="module")
def backends():
    """The same packed tiny model on the native backend and on the torch (reference) backend."""
    weights = PackedWeights.from_model(make_tiny_model(max_position_embeddings=256))
    return NativeBackend(weights), TorchBackend(weights)


@pytest.mark.parametrize("heads,head_size", [(1, 8), (2, 64), (12, 32), (1, 32), (3, 24), (2, 16), (1, 128)])
@pytest.mark.parametrize("lengths", LENGTHS.values(), ids=LENGTHS.keys())
def test_varlen_attention_matches_reference(heads, head_size, lengths):
    batch = PackedBatch.from_lengths(torch.tensor(lengths), "cpu")
    g = torch.Generator().manual_seed(len(lengths))
    qkv, bias = torch.randn(batch.num_tokens, 3 * heads * head_size, generator=g), torch.randn(3 * heads * head_size, generator=g)
    args = (batch.cu_seqlens, batch.max_seqlen, heads, head_size)
    expected = reference.varlen_attention(qkv + bias, *args)
    torch.testing.assert_close(native.varlen_attention(qkv + bias, *args), expected, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(native.varlen_attention(qkv, *args, qkv_bias=bias), expected, atol=2e-5, rtol=1e-5)
    scaled = reference.varlen_attention(qkv + bias, *args, softmax_scale=0.3)
    torch.testing.assert_close(native.varlen_attention(qkv + bias, *args, softmax_scale=0.3), scaled, atol=2e-5, rtol=1e-5)


def test_varlen_attention_is_stable_for_large_scores():
    """Scores in the thousands (peaked softmax) must not overflow the exp; the error against a float64
    computation stays within twice that of the fp32 reference (such softmaxes amplify fp32 rounding)."""
    batch = PackedBatch.from_lengths(torch.tensor([9, 40, 1]), "cpu")
    qkv = 30.0 * torch.randn(batch.num_tokens, 3 * 2 * 32, generator=torch.Generator().manual_seed(1))
    truth = torch.empty(batch.num_tokens, 64, dtype=torch.float64)
    bounds = batch.cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):  # float64, one row at a time
        q, k, v = qkv[start:end].double().view(end - start, 3, 2, 32).permute(1, 2, 0, 3)
        probs = torch.softmax(q @ k.transpose(-1, -2) / 32**0.5, dim=-1)
        truth[start:end] = (probs @ v).transpose(0, 1).reshape(end - start, 64)
    got = native.varlen_attention(qkv, batch.cu_seqlens, batch.max_seqlen, 2, 32)
    assert torch.isfinite(got).all()
    sdpa_error = (reference.varlen_attention(qkv, batch.cu_seqlens, batch.max_seqlen, 2, 32).double() - truth).abs().max()
    assert (got.double() - truth).abs().max() <= 2 * sdpa_error + 1e-5


@pytest.mark.parametrize("tokens,width,hidden", [(1, 8, 32), (37, 40, 32), (300, 256, 768)])
def test_bias_residual_layernorm_matches_reference(tokens, width, hidden):
    g = torch.Generator().manual_seed(tokens)
    x, weight = torch.randn(tokens, width, generator=g), torch.randn(width, hidden, generator=g) / 8
    residual = torch.randn(tokens, hidden, generator=g)
    bias, norm_weight, norm_bias = (torch.randn(hidden, generator=g) for _ in range(3))
    eps, before = 1e-12, residual.clone()
    expected = reference.linear_residual_layernorm(x, weight, bias, residual, norm_weight, norm_bias, eps)
    got = native.bias_residual_layernorm_(torch.mm(x, weight), bias, residual, norm_weight, norm_bias, eps)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-5)
    assert torch.equal(residual, before), "the residual must not be modified"


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("tile_tokens", [1, 16, 10_000])
@pytest.mark.parametrize("lengths", LENGTHS.values(), ids=LENGTHS.keys())
def test_encoder_layer_matches_reference(backends, lengths, tile_tokens, threads):
    """Every layer of the tiny model (2, 1, 3, 2 heads of 8; FFN 16, 40, 7, 24), tiles of one row to all rows."""
    weights = backends[1].weights
    batch = PackedBatch.from_lengths(torch.tensor(lengths), "cpu")
    hidden = torch.randn(batch.num_tokens, 32, generator=torch.Generator().manual_seed(len(lengths)))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for index, layer in enumerate(weights.layers):
            args = (hidden, batch.cu_seqlens, batch.max_seqlen, layer, weights.layer_norm_eps)
            expected = reference.encoder_layer(*args)
            got, means = native.encoder_layer(*args, tile_tokens=tile_tokens, row_mean=index % 2 == 1)
            torch.testing.assert_close(got, expected, atol=5e-5, rtol=1e-5)
            if index % 2 == 1:  # the per-tile row means equal the plain row mean of the output
                torch.testing.assert_close(means, reference.segment_mean(expected, batch.cu_seqlens), atol=5e-5, rtol=1e-5)
            else:
                assert means is None
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("lengths", LENGTHS.values(), ids=LENGTHS.keys())
def test_embedding_layernorm_matches_reference(backends, lengths):
    fast, plain = backends
    batch = PackedBatch.from_lengths(torch.tensor(lengths), "cpu")
    g = torch.Generator().manual_seed(len(lengths))
    input_ids = torch.randint(0, 97, (batch.num_tokens,), generator=g)
    token_type_ids = torch.randint(0, 2, (batch.num_tokens,), generator=g)
    expected = plain.embed(input_ids, token_type_ids, batch)
    torch.testing.assert_close(fast.embed(input_ids, token_type_ids, batch), expected, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("lengths", LENGTHS.values(), ids=LENGTHS.keys())
def test_compaction_matches_reference(lengths):
    batch = PackedBatch.from_lengths(torch.tensor(lengths), "cpu", row_ids=torch.arange(len(lengths)) + 10)
    hidden = torch.randn(batch.num_tokens, 32)
    for keep in (torch.arange(len(lengths)) % 2 == 0, torch.ones(len(lengths), dtype=torch.bool),
                 torch.zeros(len(lengths), dtype=torch.bool)):
        args = (hidden, batch.cu_seqlens, batch.row_ids, keep)
        for got, want in zip(native.compact_tokens(*args), reference.compact_tokens(*args)):
            assert torch.equal(got, want)


@pytest.mark.parametrize("labels", [1, 2, 6])
def test_exit_decision_matches_reference(labels):
    logits = torch.randn(200, labels, generator=torch.Generator().manual_seed(labels)) * 3
    logits[0] = 80.0  # a uniform row with large logits: entropy ln(C) without overflow
    entropy = exit_entropy(logits)
    for tau in [0.0, *entropy.quantile(torch.tensor([0.2, 0.5, 0.9])).tolist(), float("inf")]:
        ok = (entropy - tau).abs() > TIE  # rows on the threshold may round either way
        got = native.exit_decision(logits, tau)
        assert torch.equal(got[ok], reference.exit_decision(logits, tau)[ok])
    with pytest.raises(RuntimeError, match="exit_decision: logits"):
        native.exit_decision(logits.double(), 0.5)


@pytest.mark.parametrize("lengths", LENGTHS.values(), ids=LENGTHS.keys())
def test_backend_ops_match_the_torch_backend(backends, lengths):
    """The native backend's exit head, exit decision and compaction against the torch (reference) backend's."""
    fast, plain = backends
    rows = len(lengths)
    batch = PackedBatch.from_lengths(torch.tensor(lengths), "cpu", row_ids=torch.arange(rows) * 2 + 1)
    hidden = torch.randn(batch.num_tokens, 32, generator=torch.Generator().manual_seed(rows))
    for index in range(fast.num_layers):
        features = reference.segment_mean(hidden, batch.cu_seqlens) if index % 2 else None
        (logits, entropy), (ref_logits, ref_entropy) = (b.exit_logits(index, hidden, batch, features)
                                                        for b in (fast, plain))
        torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
        assert logits.shape == (rows, 3) and logits.dtype == torch.float32 and entropy is None
        tau = float(ref_entropy.median())
        ok = (ref_entropy - tau).abs() > TIE
        exits = fast.exit_decision(logits, tau)
        assert exits.dtype == torch.bool and torch.equal(exits[ok], plain.exit_decision(logits, tau)[ok])
    for keep in (torch.arange(rows) % 2 == 1, torch.arange(rows) == rows - 1, torch.arange(rows) > 0):
        if not 0 < int(keep.sum()) < rows:
            continue  # the engine compacts only when some, not all, rows leave
        (kept, kb), (kept_ref, kb_ref) = (b.compact(hidden, batch, keep) for b in (fast, plain))
        assert torch.equal(kept, kept_ref) and kb.num_rows == kb_ref.num_rows == int(keep.sum())
        assert torch.equal(kb.cu_seqlens, kb_ref.cu_seqlens) and torch.equal(kb.row_ids, kb_ref.row_ids)
        assert torch.equal(kb.lengths, kb_ref.lengths) and kb.lengths.device.type == "cpu"


@pytest.mark.parametrize("lengths", LENGTHS.values(), ids=LENGTHS.keys())
def test_segment_mean_matches_reference(lengths):
    batch = PackedBatch.from_lengths(torch.tensor(lengths), "cpu")
    hidden = torch.randn(batch.num_tokens, 40, generator=torch.Generator().manual_seed(len(lengths)))
    torch.testing.assert_close(native.segment_mean(hidden, batch.cu_seqlens), reference.segment_mean(hidden, batch.cu_seqlens),
                               atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_engine_native_backend_equals_torch_backend(seed, pooling):
    model = make_tiny_model(seed, weight_std=0.15, exit_pooling=pooling)
    batch = random_batch(seed, batch=20, vocab=97, max_len=40, pairs=True)
    entropies = reference_entropies(model, batch)
    tau = entropies.median(dim=0).values.tolist()
    ok = ~((entropies[:, :-1] - torch.tensor(tau[:-1])).abs() < TIE).any(dim=1)
    engine = CostEffEngineForSequenceClassification.from_model(model, None)
    assert engine.backend.name == "native", "auto must pick the native backend on the CPU when it is built"
    inputs = engine.encode(batch)
    weights = engine.backend.weights
    fast = run_early_exit(NativeBackend(weights), *inputs, tau)
    plain = run_early_exit(TorchBackend(weights), *inputs, tau)
    assert len(set(plain[1].tolist())) >= 2 and ok.sum() >= 5
    assert torch.equal(fast[1][ok], plain[1][ok])
    torch.testing.assert_close(fast[0][ok], plain[0][ok], atol=1e-5, rtol=0)


def test_kernels_reject_bad_inputs():
    qkv, bias = torch.randn(4, 12), torch.zeros(12)
    cu = torch.tensor([0, 4])
    with pytest.raises(RuntimeError, match="float32"):
        native.varlen_attention(qkv.double(), cu, 4, 2, 2)
    with pytest.raises(RuntimeError, match="3 \\* num_heads \\* head_size"):
        native.varlen_attention(qkv, cu, 4, 3, 2)
    with pytest.raises(RuntimeError, match="bias must have 12 values, got 6"):
        native.varlen_attention(qkv, cu, 4, 2, 2, qkv_bias=torch.zeros(6))
    with pytest.raises(RuntimeError, match="cu_seqlens must run from 0 to T"):
        native.varlen_attention(qkv, torch.tensor([0, 3]), 4, 2, 2)
    with pytest.raises(RuntimeError, match="row lengths"):
        native.varlen_attention(qkv, torch.tensor([0, 4, 4]), 4, 2, 2)
    with pytest.raises(RuntimeError, match="residual"):
        native.bias_residual_layernorm_(torch.randn(2, 3), torch.zeros(3), torch.randn(3, 3), torch.ones(3),
                                        torch.zeros(3), 1e-5)
    tables = [torch.randn(10, 3), torch.randn(4, 3), torch.randn(2, 3), torch.ones(3), torch.zeros(3)]
    with pytest.raises(RuntimeError, match="input_ids must lie in"):
        native.embedding_layernorm(torch.tensor([3, 10]), torch.zeros(2, dtype=torch.long), torch.tensor([0, 2]), *tables, 1e-5)
    with pytest.raises(RuntimeError, match="row lengths must lie in \\[1, 4\\]"):
        native.embedding_layernorm(torch.zeros(5, dtype=torch.long), torch.zeros(5, dtype=torch.long),
                                   torch.tensor([0, 5]), *tables, 1e-5)
    with pytest.raises(RuntimeError, match="keep"):
        native.compact_tokens(torch.randn(4, 3), cu, torch.arange(1), torch.ones(2, dtype=torch.bool))


def test_failed_build_logs_one_warning_and_falls_back(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(native, "CSRC", tmp_path)  # no sources there
    with caplog.at_level(logging.WARNING, logger="costeff_fast.native"):
        assert native.available.__wrapped__() is False
    warnings = [r for r in caplog.records if r.name == "costeff_fast.native"]
    assert len(warnings) == 1 and "using the pure-torch path" in warnings[0].getMessage()
    assert "sources not found" in warnings[0].getMessage()
    monkeypatch.setenv(native.DISABLE_ENV, "0")
    assert native.available.__wrapped__() is False

"""The batch early-exit engine against the per-sample reference, on every backend available here."""

from __future__ import annotations

import pytest
import torch
from conftest import AVAILABLE_BACKENDS, make_tiny_model, random_batch

from costeff_fast import exit_entropy
from costeff_fast.inference import CostEffInferenceModel

TIE = 1e-5
#: the Triton interpreter takes ~0.1 s per kernel call: it runs the first seed of each seeded test
SLOW = {"triton"} if not torch.cuda.is_available() else set()


def reference_entropies(model, batch) -> torch.Tensor:
    """``[B, L]`` entropy of every exit, computed by the padded full-depth forward."""
    with torch.no_grad():
        out = model(**batch)
    return exit_entropy(torch.stack(out.exit_logits, dim=1))


def engine_model(seed: int = 0, **overrides):
    """conftest's tiny model with head size 16 (the smallest the triton kernels take)."""
    return make_tiny_model(seed, attention_head_size=16, **overrides)


def assert_matches_reference(model, batch, tau, backend="torch"):
    """Engine == per-sample reference: same exit layer, logits within 1e-4, except entropy ties."""
    engine = CostEffInferenceModel(model, tokenizer=None, backend=backend)
    assert engine.backend.name == backend
    logits, layers = engine.generate_logits(batch, entropy_threshold=tau, return_exit_layers=True)
    ref_logits, ref_layers, _ = model.early_exit_reference(**batch, entropy_threshold=tau)
    entropies = reference_entropies(model, batch)
    taus = torch.tensor([tau] * entropies.shape[1] if isinstance(tau, float) else tau)
    ties = ((entropies[:, :-1] - taus[:-1]).abs() < TIE).any(dim=1)
    ok = ~ties
    assert ok.sum() > 0
    assert torch.equal(layers[ok], ref_layers[ok])
    torch.testing.assert_close(logits[ok], ref_logits[ok], atol=1e-4, rtol=0)
    return layers


@pytest.fixture(params=AVAILABLE_BACKENDS)
def backend(request):
    return request.param


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("pairs", [False, True])
@pytest.mark.parametrize("exit_pooling", ["cls", "mean"])
def test_mixed_exits_match_reference(backend, seed, pairs, exit_pooling):
    if backend in SLOW and seed > 0:
        pytest.skip("interpreter: first seed only")
    model = engine_model(seed, weight_std=0.15, exit_pooling=exit_pooling)
    batch = random_batch(seed, batch=24, vocab=97, pairs=pairs)
    # Per-layer thresholds at the median entropy of each layer make about half the rows leave at each exit.
    tau = reference_entropies(model, batch).median(dim=0).values.tolist()
    layers = assert_matches_reference(model, batch, tau, backend)
    assert len(set(layers.tolist())) >= 2, "the thresholds should produce mixed exit layers"


@pytest.mark.parametrize("seed", range(3))
def test_scalar_threshold_matches_reference(backend, seed):
    if backend in SLOW and seed > 0:
        pytest.skip("interpreter: first seed only")
    model = engine_model(seed, weight_std=0.15)
    batch = random_batch(100 + seed, batch=17, vocab=97, max_len=33)
    tau = float(reference_entropies(model, batch)[:, :-1].quantile(0.3))
    assert_matches_reference(model, batch, tau, backend)


def test_all_rows_exit_at_layer_one(backend):
    batch = random_batch(1, batch=9, vocab=97)
    layers = assert_matches_reference(engine_model(), batch, 50.0, backend)
    assert layers.tolist() == [1] * 9


def test_no_row_exits_early(backend):
    batch = random_batch(2, batch=9, vocab=97)
    layers = assert_matches_reference(engine_model(), batch, 0.0, backend)
    assert layers.tolist() == [4] * 9


def test_engine_equals_full_forward_without_early_exit(backend):
    model = engine_model()
    batch = random_batch(3, batch=12, vocab=97, pairs=True)
    logits = CostEffInferenceModel(model, None, backend=backend).generate_logits(batch, entropy_threshold=0.0)
    with torch.no_grad():
        expected = model(**batch).exit_logits[-1]
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)


def test_output_order_is_input_order(tiny_model):
    batch = random_batch(4, batch=10, vocab=97)
    engine = CostEffInferenceModel(tiny_model, None, backend="torch")
    tau = reference_entropies(tiny_model, batch).median(dim=0).values.tolist()
    logits, layers = engine.generate_logits(batch, entropy_threshold=tau, return_exit_layers=True)
    order = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    shuffled = {k: v[order] for k, v in batch.items()}
    logits2, layers2 = engine.generate_logits(shuffled, entropy_threshold=tau, return_exit_layers=True)
    torch.testing.assert_close(logits2, logits[order], atol=1e-5, rtol=0)
    assert torch.equal(layers2, layers[order])


def test_unpadded_lists_equal_padded_tensors(tiny_model):
    batch = random_batch(5, batch=6, vocab=97, pairs=True)
    lengths = batch["attention_mask"].sum(1).tolist()
    as_lists = {k: [row[:n].tolist() for row, n in zip(v, lengths)] for k, v in batch.items() if k != "attention_mask"}
    engine = CostEffInferenceModel(tiny_model, None, backend="torch")
    torch.testing.assert_close(engine.generate_logits(as_lists), engine.generate_logits(batch), atol=0, rtol=0)


def test_empty_batch_gives_empty_outputs(tiny_model):
    engine = CostEffInferenceModel(tiny_model, None, backend="torch")
    logits, layers = engine.generate_logits([], return_exit_layers=True)
    assert logits.shape == (0, 3) and logits.dtype == torch.float32
    assert layers.shape == (0,) and layers.dtype == torch.long
    assert engine.predict({"input_ids": torch.zeros(0, 5, dtype=torch.long)}).shape == (0,)

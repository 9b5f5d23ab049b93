"""The batch early-exit engine against the per-sample reference, on every backend available here."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import AVAILABLE_BACKENDS, make_tiny_model, random_batch

from costeff_fast import exit_entropy, transfer
from costeff_fast.backends import TorchBackend
from costeff_fast.engine import run_early_exit, stream_early_exit
from costeff_fast.packing import PackedWeights
from costeff_fast import CostEffEngineForSequenceClassification

TIE = 1e-5
#: the Triton interpreter takes ~0.1 s per kernel call: it runs the first seed of each seeded test (every seed with
#: COSTEFF_TEST_ALL_SEEDS=1 in the environment: about 90 s more on 2 cores)
SLOW = {"triton"} if not torch.cuda.is_available() else set()
ALL_SEEDS = os.environ.get("COSTEFF_TEST_ALL_SEEDS") == "1"


def backend_seeds(count: int) -> list:
    """``(backend, seed)`` cases: ``count`` seeds per backend, one for a :data:`SLOW` one unless :data:`ALL_SEEDS`
    (cases not generated, rather than generated and skipped)."""
    return [pytest.param(name, seed, id=f"{name}-{seed}") for name in AVAILABLE_BACKENDS
            for seed in range(count if ALL_SEEDS or name not in SLOW else 1)]


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
    engine = CostEffEngineForSequenceClassification.from_model(model, tokenizer=None, backend=backend)
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


@pytest.mark.parametrize("backend, seed", backend_seeds(6))
@pytest.mark.parametrize("pairs", [False, True])
@pytest.mark.parametrize("exit_pooling", ["cls", "mean"])
def test_mixed_exits_match_reference(backend, seed, pairs, exit_pooling):
    model = engine_model(seed, weight_std=0.15, exit_pooling=exit_pooling)
    batch = random_batch(seed, batch=24, vocab=97, pairs=pairs)
    # Per-layer thresholds at the median entropy of each layer make about half the rows leave at each exit.
    tau = reference_entropies(model, batch).median(dim=0).values.tolist()
    layers = assert_matches_reference(model, batch, tau, backend)
    assert len(set(layers.tolist())) >= 2, "the thresholds should produce mixed exit layers"


@pytest.mark.parametrize("backend, seed", backend_seeds(3))
def test_scalar_threshold_matches_reference(backend, seed):
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
    logits = CostEffEngineForSequenceClassification.from_model(model, None, backend=backend).generate_logits(batch, entropy_threshold=0.0)
    with torch.no_grad():
        expected = model(**batch).exit_logits[-1]
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)


def test_output_order_is_input_order(tiny_model):
    batch = random_batch(4, batch=10, vocab=97)
    engine = CostEffEngineForSequenceClassification.from_model(tiny_model, None, backend="torch")
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
    engine = CostEffEngineForSequenceClassification.from_model(tiny_model, None, backend="torch")
    torch.testing.assert_close(engine.generate_logits(as_lists), engine.generate_logits(batch), atol=0, rtol=0)


def test_empty_batch_gives_empty_outputs(tiny_model):
    engine = CostEffEngineForSequenceClassification.from_model(tiny_model, None, backend="torch")
    logits, layers = engine.generate_logits([], return_exit_layers=True)
    assert logits.shape == (0, 3) and logits.dtype == torch.float32
    assert layers.shape == (0,) and layers.dtype == torch.long
    assert engine.predict({"input_ids": torch.zeros(0, 5, dtype=torch.long)}).shape == (0,)


class RecordingBackend(TorchBackend):
    """The torch backend, recording which operations the engine asks for; with ``fused_entropy=False`` its exit
    head returns no entropy, as the native one, so the engine must ask :meth:`exit_decision`."""

    def __init__(self, weights, fused_entropy: bool = True):
        super().__init__(weights)
        self.fused_entropy = fused_entropy
        self.calls = []

    def layer(self, index, hidden, batch):
        self.calls.append(("layer", index))
        return super().layer(index, hidden, batch)

    def exit_logits(self, index, hidden, batch, features):
        self.calls.append(("exit_logits", index))
        logits, entropy = super().exit_logits(index, hidden, batch, features)
        return logits, (entropy if self.fused_entropy else None)

    def exit_decision(self, logits, entropy_threshold):
        self.calls.append(("exit_decision", self.calls[-1][1]))
        return super().exit_decision(logits, entropy_threshold)

    def compact(self, hidden, batch, keep):
        assert keep.device.type == "cpu" and 0 < int(keep.sum()) < batch.num_rows
        self.calls.append(("compact", self.calls[-1][1]))
        return super().compact(hidden, batch, keep)

    def count(self, op: str, index: int) -> int:
        return self.calls.count((op, index))


def _run(backend, batch, tau, loop):
    """``(logits, exit_layer)`` of ``run_early_exit`` or of ``stream_early_exit`` (chunks and batches of 4)."""
    real = batch["attention_mask"].bool()
    ids, types, lengths = batch["input_ids"][real], batch["token_type_ids"][real], batch["attention_mask"].sum(1)
    if loop == "run":
        return run_early_exit(backend, ids, types, lengths, tau)
    cu = [0, *torch.cumsum(lengths, 0).tolist()]
    chunks = [(ids[cu[s]:cu[min(s + 4, len(lengths))]], types[cu[s]:cu[min(s + 4, len(lengths))]], lengths[s:s + 4])
              for s in range(0, len(lengths), 4)]
    logits, layers = torch.zeros(len(lengths), backend.num_labels), torch.zeros(len(lengths), dtype=torch.long)
    for rows, row_logits, layer in stream_early_exit(backend, chunks, 4, tau):
        logits[rows], layers[rows] = row_logits, layer
    return logits, layers


@pytest.mark.parametrize("loop", ["run", "stream"])
@pytest.mark.parametrize("fused_entropy", [True, False])
@pytest.mark.parametrize("zeros", [(0, 2), (0, 1, 2), (1,)])
def test_the_engine_applies_the_threshold_rule_once(monkeypatch, loop, fused_entropy, zeros):
    """No exit head on a non-final layer with tau <= 0; elsewhere one head, one decision (entropy < tau, by the
    engine, or the backend's :meth:`exit_decision`) and one host copy of the mask per layer call; the last
    layer answers for every row without a decision. Outputs equal the plain torch backend's."""
    model = engine_model(weight_std=0.15)
    batch = random_batch(7, batch=19, vocab=97)
    tau = reference_entropies(model, batch).median(dim=0).values.tolist()
    for index in zeros:
        tau[index] = 0.0 if index % 2 else -1.0  # <= 0: nobody can exit there
    weights = PackedWeights.from_model(model)
    expected_logits, expected_layers = _run(TorchBackend(weights), batch, tau, loop)
    host_copies = []
    to_host = transfer.to_host
    monkeypatch.setattr(transfer, "to_host", lambda *tensors: host_copies.append(len(tensors)) or to_host(*tensors))
    recording = RecordingBackend(weights, fused_entropy)
    logits, layers = _run(recording, batch, tau, loop)
    assert torch.equal(logits, expected_logits) and torch.equal(layers, expected_layers)
    last = recording.num_layers - 1
    assert len(set(layers.tolist())) >= (2 if len(zeros) < last else 1)
    for index in range(recording.num_layers):
        calls = recording.count("layer", index)
        can_exit = index == last or tau[index] > 0
        assert recording.count("exit_logits", index) == (calls if can_exit else 0)
        decides = index != last and tau[index] > 0
        assert recording.count("exit_decision", index) == (calls if decides and not fused_entropy else 0)
    # one copy (one wait) per layer call that may answer; the stream's last layer brings its rows' logits down too
    waits = sum(recording.count("layer", i) for i in range(last) if tau[i] > 0)
    assert len(host_copies) == waits + (recording.count("layer", last) if loop == "stream" else 0)
    assert (layers[:, None] != torch.tensor([i + 1 for i in zeros])).all(), "no row leaves where tau <= 0"

"""Property-based tests (hypothesis) of the batch early-exit engine against the per-row reference.

Generated: per-layer widths (heads, FFN, pooled or unpooled exits, factorized or plain embedding, [CLS] or mean
exits), batch sizes 0 to 300, row lengths from 1 token to ``max_position_embeddings``, text pairs, and thresholds
(0, tiny, huge, a quantile of the entropies, per-layer vectors), on every backend that runs here. The engine must
give the reference's exit layer and logits (1e-4) for every row outside the documented tie band: rows whose
entropy at some layer up to their exit lies within ``TIE`` nats of that layer's threshold may round to either
side (docs/design.md, Engine). Small batches are checked against ``early_exit_reference`` (each row alone), larger
ones against the padded full-depth forward. Case counts: torch 240 + native 240 + triton (interpreter, small batches) 20.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import AVAILABLE_BACKENDS, make_tiny_model, random_batch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from costeff_fast import CostEffConfig, CostEffForSequenceClassification, exit_entropy
from costeff_fast import CostEffEngineForSequenceClassification

TIE = 1e-5
VOCAB = 61
CASES = {"torch": 240, "native": 240, "triton": 20}
MAX_BATCH = {"torch": 300, "native": 300, "triton": 12}
PER_ROW_ORACLE_ROWS = 12
"""Batches up to this size are checked against ``early_exit_reference`` (every row alone, padding removed);
larger ones against the padded full-depth forward read at each row's first confident exit (same math, no
per-row loop)."""


@st.composite
def models(draw):
    """A random COST-EFF model: 1-4 layers, per-layer heads (of size 16, the smallest Triton takes) and FFN."""
    layers = draw(st.integers(1, 4))
    config = CostEffConfig(
        vocab_size=VOCAB, hidden_size=draw(st.sampled_from([16, 32])), num_hidden_layers=layers,
        num_attention_heads=draw(st.lists(st.integers(1, 3), min_size=layers, max_size=layers)),
        attention_head_size=16,
        intermediate_size=draw(st.lists(st.integers(1, 48), min_size=layers, max_size=layers)),
        max_position_embeddings=draw(st.sampled_from([8, 24, 40])), type_vocab_size=2,
        num_labels=draw(st.integers(2, 5)),
        embedding_rank=draw(st.one_of(st.none(), st.integers(1, 16))),
        exit_pooler=draw(st.lists(st.booleans(), min_size=layers, max_size=layers)),
        exit_pooling=draw(st.sampled_from(["cls", "mean"])),
    )
    torch.manual_seed(draw(st.integers(0, 2**16)))
    model = CostEffForSequenceClassification(config).eval()
    std = draw(st.sampled_from([0.05, 0.2, 0.5]))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, std)
    return model


@st.composite
def batches(draw, max_length: int, max_batch: int):
    """Right-padded ``input_ids``, ``attention_mask`` and ``token_type_ids`` (pairs: a second segment of 1s)."""
    rows = draw(st.integers(0, max_batch))
    seed = draw(st.integers(0, 2**16))
    pairs = draw(st.booleans())
    generator = torch.Generator().manual_seed(seed)
    if rows == 0:
        empty = torch.zeros(0, 1, dtype=torch.long)
        return {"input_ids": empty, "attention_mask": empty, "token_type_ids": empty}
    extreme = draw(st.sampled_from(["random", "one", "max"]))
    if extreme == "one":
        lengths = torch.ones(rows, dtype=torch.long)
    elif extreme == "max":
        lengths = torch.full((rows,), max_length, dtype=torch.long)
    else:
        lengths = torch.randint(1, max_length + 1, (rows,), generator=generator)
    seq = int(lengths.max())
    mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
    ids = torch.randint(1, VOCAB, (rows, seq), generator=generator) * mask
    types = torch.zeros_like(ids)
    if pairs:
        split = (lengths.float() * torch.rand(rows, generator=generator)).long()
        types = (torch.arange(seq)[None, :] >= split[:, None]).long() * mask
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def thresholds(draw, entropies: torch.Tensor, layers: int):
    """0, tiny, huge, a quantile of the batch's entropies, or one value per layer."""
    kind = draw(st.sampled_from(["zero", "tiny", "huge", "quantile", "per-layer"]))
    if kind == "zero":
        return 0.0
    if kind == "tiny":
        return 1e-6
    if kind == "huge":
        return 1e6
    finite = entropies.flatten()
    if kind == "quantile" or finite.numel() == 0:
        level = draw(st.floats(0.0, 1.0))
        return float(finite.quantile(level)) if finite.numel() else 0.5
    return [float(entropies[:, layer].quantile(draw(st.floats(0.0, 1.0)))) if entropies.shape[0] else 0.3
            for layer in range(layers)]


def every_exit(model, batch) -> torch.Tensor:
    """``[B, L, C]`` fp32 logits of every exit from the padded full-depth forward (no packing, no early exit)."""
    if batch["input_ids"].shape[0] == 0:
        return torch.zeros(0, model.config.num_hidden_layers, model.config.num_labels)
    with torch.no_grad():
        out = model(**batch, entropy_threshold=0.0)
    return torch.stack(out.exit_logits, dim=1).float()


def padded_oracle(exit_logits: torch.Tensor, taus: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Early exit read off the full-depth padded forward: a row answers at its first exit whose entropy is below
    that layer's threshold, the last one otherwise (the layers never depend on the exit decisions)."""
    below = exit_entropy(exit_logits) < taus
    below[:, -1] = True
    layers = torch.stack([row.nonzero()[0, 0] for row in below]) + 1
    return exit_logits[torch.arange(len(layers)), layers - 1], layers


def check_case(backend: str, data) -> None:
    model = data.draw(models())
    batch = data.draw(batches(model.config.max_position_embeddings, MAX_BATCH[backend]))
    all_logits = every_exit(model, batch)
    entropies = exit_entropy(all_logits)
    tau = thresholds(data.draw, entropies, model.config.num_hidden_layers)
    engine = CostEffEngineForSequenceClassification.from_model(model, tokenizer=None, backend=backend)
    logits, layers = engine.generate_logits(batch, entropy_threshold=tau, return_exit_layers=True)
    rows = batch["input_ids"].shape[0]
    assert logits.shape == (rows, model.config.num_labels) and layers.shape == (rows,)
    assert bool(torch.isfinite(logits).all())
    if rows == 0:
        return
    taus = torch.tensor([tau] * entropies.shape[1] if isinstance(tau, float) else tau)
    if rows <= PER_ROW_ORACLE_ROWS:  # each row alone, stopping at its exit: the slow oracle
        ref_logits, ref_layers, _ = model.early_exit_reference(**batch, entropy_threshold=tau)
    else:
        ref_logits, ref_layers = padded_oracle(all_logits, taus)
    # A row is in the tie band when a layer up to its (reference) exit, the last layer aside (it always answers),
    # has an entropy within TIE of that layer's threshold.
    up_to_exit = torch.arange(entropies.shape[1])[None, :] < ref_layers[:, None]
    near = (entropies - taus).abs() < TIE
    ties = (near & up_to_exit)[:, :-1].any(dim=1)
    ok = ~ties
    assert torch.equal(layers[ok], ref_layers[ok])
    torch.testing.assert_close(logits[ok], ref_logits[ok], atol=1e-4, rtol=0)
    if isinstance(tau, float) and tau == 0.0:
        assert bool((layers == model.config.num_hidden_layers).all())
    if isinstance(tau, float) and tau >= math.log(model.config.num_labels):
        assert bool((layers == 1).all())  # every entropy is at most ln(C)


@pytest.mark.parametrize("backend", AVAILABLE_BACKENDS)
def test_engine_matches_the_per_row_reference(backend):
    @settings(max_examples=CASES[backend], deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.data())
    def run(data):
        check_case(backend, data)

    run()


def test_extreme_logits_give_finite_entropy():
    """Softmax entropy stays finite and in [0, ln C] for logits up to the fp32 range (the reference)."""
    for scale in (1.0, 1e4, 1e30, 3e38):
        logits = torch.tensor([[scale, -scale, 0.0], [scale, scale, -scale], [0.0, 0.0, 0.0]])
        entropy = exit_entropy(logits)
        assert bool(torch.isfinite(entropy).all()) and bool((entropy >= -1e-6).all())
        assert bool((entropy <= math.log(3) + 1e-6).all())


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the Triton interpreter's numpy, on
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # purpose: masked by tl.where
@pytest.mark.parametrize("backend", AVAILABLE_BACKENDS)
def test_extreme_exit_logits_still_exit(backend):
    """Exit logits at the edge of the fp32 range (3e38 and -3e38: their difference overflows to inf): every
    backend computes a finite entropy there, so every row leaves at layer 1 (a NaN entropy would never be below
    the threshold)."""
    model = make_tiny_model(attention_head_size=16, exit_pooler=[False] * 4, exit_pooling="mean")
    with torch.no_grad():
        for head in model.exits:
            head.classifier.weight.zero_()
            head.classifier.bias.copy_(torch.tensor([3e38, -3e38, 0.0]))
    batch = random_batch(5, batch=9, vocab=97)
    engine = CostEffEngineForSequenceClassification.from_model(model, tokenizer=None, backend=backend)
    logits, layers = engine.generate_logits(batch, entropy_threshold=0.5, return_exit_layers=True)
    assert bool(torch.isfinite(logits).all()) and layers.tolist() == [1] * 9


@pytest.mark.parametrize("backend", AVAILABLE_BACKENDS)
def test_same_inputs_threads_and_backend_give_identical_results(backend):
    model = make_tiny_model(attention_head_size=16, weight_std=0.15)
    batch = random_batch(11, batch=40, vocab=97, max_len=30, pairs=True)
    engine = CostEffEngineForSequenceClassification.from_model(model, tokenizer=None, backend=backend)
    tau = exit_entropy(every_exit(model, batch)).median(dim=0).values.tolist()  # about half leave at each exit
    first = engine.generate_logits(batch, entropy_threshold=tau, return_exit_layers=True)
    again = CostEffEngineForSequenceClassification.from_model(model, tokenizer=None, backend=backend).generate_logits(
        batch, entropy_threshold=tau, return_exit_layers=True)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert len(set(first[1].tolist())) >= 2  # mixed exits, so compaction is part of what repeats

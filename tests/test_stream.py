"""Streaming early exit (one queue per layer) against the per-batch engine on real text."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import AVAILABLE_BACKENDS, make_tiny_model
from test_engine import TIE, reference_entropies
from transformers import AutoTokenizer

from costeff_fast.data import load_task
from costeff_fast import CostEffEngineForSequenceClassification


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    return AutoTokenizer.from_pretrained(minilm_dir)


@pytest.fixture(scope="module")
def texts():
    return list(load_task("rt", max_eval_rows=40)["validation"]["text"])


@pytest.fixture(scope="module")
def model(tokenizer):
    """A tiny random model over the real uncased vocabulary, so real sentences tokenize for it."""
    return make_tiny_model(3, weight_std=0.15, vocab_size=tokenizer.vocab_size, max_position_embeddings=48)


@pytest.fixture(scope="module")
def engine(model, tokenizer):
    return CostEffEngineForSequenceClassification.from_model(model, tokenizer)


def median_thresholds(model, engine, items):
    """Per-layer median entropies of ``items`` (about half the rows leave at each exit), and all entropies."""
    texts = tuple(zip(*items)) if isinstance(items[0], tuple) else (items,)
    encoded = engine.tokenizer(*texts, truncation=True, max_length=engine.max_length, padding=True, return_tensors="pt")
    entropies = reference_entropies(model, dict(encoded))
    return entropies.median(dim=0).values.tolist(), entropies


def collect(stream, num_rows: int, num_labels: int):
    logits = torch.full((num_rows, num_labels), float("nan"))
    layers = torch.zeros(num_rows, dtype=torch.long)
    seen = []
    for index, row_logits, exit_layer in stream:
        assert row_logits.shape == (num_labels,) and row_logits.dtype == torch.float32
        assert isinstance(exit_layer, int)
        logits[index], layers[index] = row_logits, exit_layer
        seen.append(index)
    assert sorted(seen) == list(range(num_rows)), "every row must come out exactly once"
    return logits, layers


@pytest.mark.parametrize("batch_size", [1, 3, 8, 100])
@pytest.mark.parametrize("pairs", [False, True])
def test_stream_equals_batch_engine(model, engine, texts, batch_size, pairs):
    items = [(a, b) for a, b in zip(texts[::2], texts[1::2])] if pairs else texts
    tau, entropies = median_thresholds(model, engine, items)
    expected, expected_layers = engine.generate_logits(items, entropy_threshold=tau, return_exit_layers=True)
    stream = engine.generate_logits_stream(iter(items), batch_size=batch_size, entropy_threshold=tau)
    logits, layers = collect(stream, len(items), engine.config.num_labels)
    ties = ((entropies[:, :-1] - torch.tensor(tau[:-1])).abs() < TIE).any(dim=1)
    assert len(set(expected_layers.tolist())) >= 3, "the thresholds should produce mixed exit layers"
    assert torch.equal(layers[~ties], expected_layers[~ties])
    torch.testing.assert_close(logits[~ties], expected[~ties], atol=1e-4, rtol=0)


@pytest.mark.parametrize("backend", AVAILABLE_BACKENDS)
def test_stream_answers_rows_like_the_batch_engine_on_every_backend(tokenizer, texts, backend):
    """Both loops decide exits with the same engine code and compact through the same backend operation: equal
    results on each backend."""
    model = make_tiny_model(4, weight_std=0.15, vocab_size=tokenizer.vocab_size, max_position_embeddings=48,
                            attention_head_size=16)
    engine = CostEffEngineForSequenceClassification.from_model(model, tokenizer, backend=backend)
    items = texts[:20]
    tau, entropies = median_thresholds(model, engine, items)
    expected, expected_layers = engine.generate_logits(items, entropy_threshold=tau, return_exit_layers=True)
    logits, layers = collect(engine.generate_logits_stream(items, 6, entropy_threshold=tau), 20, 3)
    ok = ~((entropies[:, :-1] - torch.tensor(tau[:-1])).abs() < TIE).any(dim=1)
    assert len(set(expected_layers[ok].tolist())) >= 2
    assert torch.equal(layers[ok], expected_layers[ok])
    torch.testing.assert_close(logits[ok], expected[ok], atol=1e-4, rtol=0)


def test_stream_without_early_exit_reaches_the_last_layer(engine, texts):
    logits, layers = collect(engine.generate_logits_stream(texts[:10], 4, entropy_threshold=0.0), 10, 3)
    assert layers.tolist() == [4] * 10
    torch.testing.assert_close(logits, engine.generate_logits(texts[:10], entropy_threshold=0.0), atol=1e-4, rtol=0)


def test_empty_iterable_yields_nothing(engine):
    assert list(engine.generate_logits_stream([], batch_size=4)) == []
    assert list(engine.generate_logits_stream(iter(()), batch_size=1)) == []


def test_input_is_read_lazily_with_bounded_rows(model, engine, texts):
    """An endless input: the first results arrive after reading a bounded number of items."""
    read = [0]

    def endless():
        for text in itertools.cycle(texts):
            read[0] += 1
            yield text

    batch_size, wanted = 4, 30
    tau, _ = median_thresholds(model, engine, texts)
    stream = engine.generate_logits_stream(endless(), batch_size, entropy_threshold=tau)
    assert len(list(itertools.islice(stream, wanted))) == wanted
    assert read[0] <= wanted + 2 * batch_size * engine.config.num_hidden_layers + batch_size


def test_bad_arguments_raise(engine):
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        engine.generate_logits_stream(["a"], batch_size=0)
    with pytest.raises(TypeError, match="items must be an iterable"):
        engine.generate_logits_stream("a sentence", batch_size=2)
    with pytest.raises(ValueError, match="entropy_threshold"):
        engine.generate_logits_stream(["a"], entropy_threshold=-1.0)
    with pytest.raises(TypeError, match="strings or"):
        list(engine.generate_logits_stream(["fine", 3], batch_size=2))

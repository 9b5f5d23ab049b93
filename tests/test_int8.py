"""int8 GEMMs in the engine (``quantize="int8"``): the op against the arithmetic it stands for and against fp32,
the engine against the dequantized model's per-row reference and against fp32 on every CPU backend, exits taken on
the int8 model's own logits, real models (converted MiniLM; trained rt and trec checkpoints when present) and
the refusals.

Tolerances (stated once, used below):

* :func:`reference.linear_int8` equals its arithmetic (fake-quantized activations times the dequantized weight,
  fp32) within fp32 rounding: 1e-5 relative to the output's scale;
* against fp32 :func:`reference.linear` on unit-Gaussian activations and weights the error's RMS is below 2.5 % of
  the output's RMS (measured about 1.8 %: about 1 % from 8-bit activations per tensor, 1.4 % from 7-bit weights
  per channel);
* tiny random models: logits within 0.02 of fp32 (measured below 0.005 for logits up to about 0.5); within 3 % of
  the largest logit of the dequantized model's per-row reference (the activation rounding alone: measured about
  2 %, against about 4 % from fp32);
* the converted MiniLM: logits within 5 % of their largest magnitude, same argmax on at least 95 % of rows;
* trained checkpoints (the committed-run ones when present here; the one trained in the session, conftest.py's
  ``trained_rt``, in tests/test_trained_model.py, where every test of it runs in one xdist worker): int8 no less
  accurate than fp32 beyond chance, a McNemar bound on the rows where the two disagree (:func:`check_no_worse`), at
  threshold 0 and at the calibrated threshold; the labels at threshold 0 disagree on few rows
  (:func:`check_few_disagree`).
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
from pathlib import Path

import pytest
import torch
from conftest import AVAILABLE_BACKENDS, make_tiny_model, random_batch

import costeff_fast
from costeff_fast import exit_entropy, reference
from costeff_fast.backends import NativeBackend, TorchBackend, build_backend, check_quantize_target
from costeff_fast.batch import PackedBatch
from costeff_fast.convert import from_encoder_classifier
from costeff_fast import CostEffEngineForSequenceClassification
from costeff_fast.packing import INT8_WEIGHT_MAX, Int8Weight, PackedWeights, quantize_int8

INT8_BACKENDS = [name for name in AVAILABLE_BACKENDS if name in ("torch", "native")]
# Trained checkpoints, where bench/run_standard_all.sh and bench/run_user_csv.sh leave them (relative to the
# repository root); COSTEFF_TEST_RT_CHECKPOINT etc. point elsewhere. Without them their parametrizations are not
# collected (LOCAL_CHECKPOINTS); CI checks the session-trained one (tests/test_trained_model.py).
_ROOT = Path(__file__).resolve().parent.parent
RT_CHECKPOINT = Path(os.environ.get("COSTEFF_TEST_RT_CHECKPOINT", _ROOT / "work/out/rt-standard-uniform"))
TREC_CHECKPOINT = Path(os.environ.get("COSTEFF_TEST_TREC_CHECKPOINT", _ROOT / "work/user-csv/out"))
TREC_VALIDATION = Path(os.environ.get("COSTEFF_TEST_TREC_VALIDATION", _ROOT / "work/user-csv/validation.csv"))
TIE = 0.03  # nats: rows this close to a threshold may exit elsewhere (int8 moves these entropies by < 0.012)


@pytest.fixture(params=INT8_BACKENDS)
def backend(request):
    return request.param


@pytest.fixture
def one_thread():
    """One torch thread (restored after) for the slow tests (full validation splits, the per-row reference): on a
    shared 2-core machine with one core busy, two threads made them ~10x slower; results do not depend on it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def engine_model(seed: int = 0, **overrides):
    return make_tiny_model(seed, attention_head_size=16, weight_std=0.15, **overrides)


def exit_model(seed: int = 0, **overrides):
    """A tiny model whose exit entropies spread over rows (about 0.1 nats at every exit, where conftest's random
    LayerNorms make all rows alike deep down): unit LayerNorms, classifier weights x3."""
    model = engine_model(seed, **overrides)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "LayerNorm" in name or "layer_norm" in name:
                parameter.fill_(1.0 if name.endswith("weight") else 0.0)
        for head in model.exits:
            head.classifier.weight.mul_(3.0)
    return model


def dequantized_model(model, weights: PackedWeights):
    """``model`` with each layer's GEMM weights replaced by the int8 packing's dequantized ones (fp32)."""
    plain = copy.deepcopy(model)
    with torch.no_grad():
        for layer, packed in zip(plain.layers, weights.dequantized().layers):
            width = layer.num_heads * layer.head_size
            q, k, v = packed.qkv_weight.T.split(width)
            layer.query.weight.copy_(q)
            layer.key.weight.copy_(k)
            layer.value.weight.copy_(v)
            layer.attention_output.weight.copy_(packed.attention_output_weight.T)
            layer.intermediate.weight.copy_(packed.intermediate_weight.T)
            layer.output.weight.copy_(packed.output_weight.T)
    return plain


# The op


def test_int8_weights_are_symmetric_per_output_channel():
    torch.manual_seed(0)
    weight = torch.randn(40, 24) * torch.linspace(0.01, 2.0, 24)  # very different column ranges
    weight[:, 5] = 0.0
    packed = quantize_int8(weight)
    q = packed.qweight()
    assert packed.shape == (40, 24) and q.shape == (24, 40)
    ints = q.int_repr()
    assert ints.abs().max() == INT8_WEIGHT_MAX and torch.equal(q.q_per_channel_zero_points(), torch.zeros(24).long())
    nonzero = torch.arange(24) != 5
    assert (ints.abs().amax(dim=1)[nonzero] == INT8_WEIGHT_MAX).all() and (ints[5] == 0).all()
    scales = q.q_per_channel_scales()
    torch.testing.assert_close(scales[nonzero].float(), weight.abs().amax(dim=0)[nonzero] / INT8_WEIGHT_MAX)
    assert ((packed.dequantize() - weight).abs() <= scales.float() / 2 + 1e-7).all()


@pytest.mark.parametrize("gelu", [False, True])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_int8_is_fake_quantized_activations_times_dequantized_weight(gelu, with_bias):
    torch.manual_seed(1)
    x, weight, bias = torch.randn(70, 48) * 2 + 0.3, torch.randn(48, 20) * 0.2, torch.randn(20)
    packed = quantize_int8(weight)
    scale, zero_point = torch._choose_qparams_per_tensor(x, False)
    x_q = torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, 255)
    expected = reference.linear(x_q, packed.dequantize(), bias if with_bias else torch.zeros(20), gelu=gelu)
    got = reference.linear_int8(x, packed, bias if with_bias else None, gelu=gelu)
    assert got.dtype == torch.float32 and got.shape == (70, 20)
    torch.testing.assert_close(got, expected, atol=1e-5 * float(expected.abs().max()), rtol=0)


def test_linear_int8_does_not_depend_on_the_global_quantized_engine():
    torch.manual_seed(2)
    x, packed, bias = torch.randn(30, 32), quantize_int8(torch.randn(32, 16)), torch.randn(16)
    expected = reference.linear_int8(x, packed, bias)
    previous = torch.backends.quantized.engine
    try:
        for engine in torch.backends.quantized.supported_engines:
            torch.backends.quantized.engine = engine
            assert torch.equal(reference.linear_int8(x, packed, bias), expected), engine
    finally:
        torch.backends.quantized.engine = previous


def relative_rms(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got - expected).pow(2).mean().sqrt() / expected.pow(2).mean().sqrt())


@pytest.mark.parametrize("shape", [(384, 192), (64, 384), (384, 160), (160, 384)])  # the rt checkpoint's GEMMs
def test_linear_int8_against_fp32_linear(shape):
    torch.manual_seed(3)
    in_features, out_features = shape
    x, weight = torch.randn(300, in_features), torch.randn(in_features, out_features) / in_features**0.5
    bias = torch.randn(out_features) * 0.1
    packed = quantize_int8(weight)
    assert relative_rms(reference.linear_int8(x, packed, bias), reference.linear(x, weight, bias)) < 0.025
    gelu = reference.linear_int8(x, packed, bias, gelu=True)
    assert relative_rms(gelu, reference.linear(x, weight, bias, gelu=True)) < 0.025
    residual, norm_weight, norm_bias = torch.randn(300, out_features), torch.rand(out_features) + 0.5, torch.randn(
        out_features) * 0.1
    args = (residual, norm_weight, norm_bias, 1e-12)
    normed = reference.linear_residual_layernorm_int8(x, packed, bias, *args)
    assert relative_rms(normed, reference.linear_residual_layernorm(x, weight, bias, *args)) < 0.025


# Packing and the layer


def test_int8_packing_keeps_no_fp32_gemm_weights_and_dequantizes_to_the_fp32_shapes(tiny_model):
    fp32 = PackedWeights.from_model(tiny_model)
    int8 = PackedWeights.from_model(tiny_model, quantize="int8")
    assert int8.quantize == "int8" and fp32.quantize is None and fp32.dequantized() is fp32
    names = ("qkv_weight", "attention_output_weight", "intermediate_weight", "output_weight")
    plain = int8.dequantized()
    for layer8, layer32, layer_plain in zip(int8.layers, fp32.layers, plain.layers):
        for name in names:
            assert isinstance(getattr(layer8, name), Int8Weight)
            assert getattr(layer8, name).shape == tuple(getattr(layer32, name).shape)
            torch.testing.assert_close(getattr(layer_plain, name), getattr(layer32, name), atol=0.02, rtol=0)
        assert torch.equal(layer8.qkv_bias, layer32.qkv_bias)
    assert torch.equal(int8.word_embeddings, fp32.word_embeddings)
    assert torch.equal(int8.exits[1].pooler_weight, fp32.exits[1].pooler_weight)  # exits stay fp32


@pytest.mark.skipif("native" not in INT8_BACKENDS, reason="native kernels could not be built here")
@pytest.mark.parametrize("exit_pooling", ["cls", "mean"])
def test_native_int8_layer_matches_the_int8_reference_layer(exit_pooling):
    model = engine_model(4, exit_pooling=exit_pooling)
    weights = PackedWeights.from_model(model, quantize="int8")
    native_backend, torch_backend = NativeBackend(weights), TorchBackend(weights)
    batch = PackedBatch.from_lengths(torch.tensor([5, 1, 17, 9, 12]), "cpu")
    hidden = torch.randn(int(batch.cu_seqlens[-1]), 32)
    for index in range(len(weights.layers)):
        got, means = native_backend.layer(index, hidden, batch)
        expected, _ = torch_backend.layer(index, hidden, batch)
        torch.testing.assert_close(got, expected, atol=2e-3, rtol=0)  # one activation step where rounding ties flip
        if weights.exits[index].pooling == "mean":  # what the exit reads, from the layer's own pass
            torch.testing.assert_close(means, reference.segment_mean(got, batch.cu_seqlens), atol=1e-5, rtol=0)
        else:
            assert means is None


# The engine


@pytest.mark.parametrize("seed", range(3))
def test_int8_engine_against_fp32_on_tiny_models(backend, seed):
    model = engine_model(seed, exit_pooling="mean" if seed % 2 else "cls")
    batch = random_batch(seed, batch=24, vocab=97, pairs=bool(seed % 2))
    engine = CostEffEngineForSequenceClassification.from_model(model, None, backend=backend, quantize="int8")
    assert engine.backend.name == backend and engine.backend.quantize == "int8"
    logits = engine.generate_logits(batch, entropy_threshold=0.0)
    with torch.no_grad():
        expected = model(**batch).exit_logits[-1]
    torch.testing.assert_close(logits, expected, atol=0.02, rtol=0)
    assert float((logits - expected).abs().max()) > 0  # it did run in int8


@pytest.mark.parametrize("seed", range(3))
def test_int8_engine_against_the_dequantized_models_per_row_reference(backend, seed, one_thread):
    """Same exit layer as each row run alone through the model with the int8 weights dequantized, and logits
    within the activation rounding, except rows whose entropy lies within TIE of a threshold."""
    model = exit_model(seed)
    batch = random_batch(10 + seed, batch=64, vocab=97)
    engine = CostEffEngineForSequenceClassification.from_model(model, None, backend=backend, quantize="int8")
    plain = dequantized_model(model, engine.backend.weights)
    with torch.no_grad():
        entropies = exit_entropy(torch.stack(plain(**batch).exit_logits, dim=1))
    tau = entropies.median(dim=0).values.tolist()
    logits, layers = engine.generate_logits(batch, entropy_threshold=tau, return_exit_layers=True)
    ref_logits, ref_layers, _ = plain.early_exit_reference(**batch, entropy_threshold=tau)
    ok = ~((entropies[:, :-1] - torch.tensor(tau[:-1])).abs() < TIE).any(dim=1)
    assert ok.sum() >= 12 and len(set(layers[ok].tolist())) >= 3
    assert torch.equal(layers[ok], ref_layers[ok])
    assert float((logits[ok] - ref_logits[ok]).abs().max()) <= 0.03 * float(ref_logits.abs().max())


def exit_entropies(engine, batch) -> torch.Tensor:
    """``[B, L]`` entropy of every exit of the int8 engine: at layer l every row is made to exit (threshold
    1e9) after running layers 1..l on the whole batch, as the engine does before anyone leaves."""
    num_layers = engine.backend.num_layers
    columns = []
    for layer in range(num_layers):
        tau = [0.0] * layer + [1e9] + [0.0] * (num_layers - layer - 1)
        columns.append(exit_entropy(engine.generate_logits(batch, entropy_threshold=tau)))
    return torch.stack(columns, dim=1)


@pytest.mark.parametrize("seed", range(2))
def test_int8_rows_exit_when_their_own_int8_entropy_is_below_the_threshold(backend, seed):
    model = exit_model(seed, exit_pooling="mean")
    batch = random_batch(20 + seed, batch=64, vocab=97)
    engine = CostEffEngineForSequenceClassification.from_model(model, None, backend=backend, quantize="int8")
    entropies = exit_entropies(engine, batch)
    tau = entropies.median(dim=0).values.tolist()
    _, layers = engine.generate_logits(batch, entropy_threshold=tau, return_exit_layers=True)
    expected = reference.first_exit(entropies, tau)
    ok = ~((entropies[:, :-1] - torch.tensor(tau[:-1])).abs() < TIE).any(dim=1)
    assert ok.sum() >= 12 and len(set(layers[ok].tolist())) >= 3
    assert torch.equal(layers[ok], expected[ok])


def test_a_rows_int8_logits_alone_and_in_a_batch(backend):
    """One activation scale per GEMM call: a row's logits move with its batch, within the activation rounding."""
    model = engine_model(5)
    batch = random_batch(5, batch=16, vocab=97)
    engine = CostEffEngineForSequenceClassification.from_model(model, None, backend=backend, quantize="int8")
    together = engine.generate_logits(batch, entropy_threshold=0.0)
    ids = [row[: int(n)].tolist() for row, n in zip(batch["input_ids"], batch["attention_mask"].sum(1))]
    alone = torch.cat([engine.generate_logits({"input_ids": [row]}, entropy_threshold=0.0) for row in ids])
    torch.testing.assert_close(together, alone, atol=0.01, rtol=0)


def test_int8_stream_gives_every_row(backend):
    model = engine_model(6)
    batch = random_batch(6, batch=20, vocab=97)
    ids = [row[: int(n)].tolist() for row, n in zip(batch["input_ids"], batch["attention_mask"].sum(1))]
    engine = CostEffEngineForSequenceClassification.from_model(model, None, backend=backend, quantize="int8")
    expected = engine.generate_logits({"input_ids": ids}, entropy_threshold=0.0)
    engine.tokenizer = lambda texts, *args, **kwargs: {"input_ids": [ids[int(t)] for t in texts]}
    streamed = sorted(engine.generate_logits_stream([str(i) for i in range(20)], batch_size=6, entropy_threshold=0.0),
                      key=lambda item: item[0])
    assert [index for index, _, _ in streamed] == list(range(20))
    torch.testing.assert_close(torch.stack([row for _, row, _ in streamed]), expected, atol=0.01, rtol=0)


# Entry points and refusals


def test_from_pretrained_int8(tmp_path):
    model = engine_model(7)
    model.save_pretrained(tmp_path)
    loaded = costeff_fast.from_pretrained(tmp_path, quantize="int8")
    assert loaded.backend.quantize == "int8" and loaded.backend.name in INT8_BACKENDS
    batch = random_batch(7, batch=9, vocab=97)
    with torch.no_grad():
        expected = model(**batch).exit_logits[-1]
    torch.testing.assert_close(loaded.generate_logits(batch, entropy_threshold=0.0), expected, atol=0.02, rtol=0)
    assert costeff_fast.from_pretrained(tmp_path).backend.quantize is None


def test_auto_with_int8_on_a_gpu_machine_runs_on_the_cpu(tiny_model, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(costeff_fast.backends.importlib.util, "find_spec", lambda name: object())
    assert costeff_fast.backends.select_backend("auto")[0] == "triton"
    built = build_backend(tiny_model, "auto", quantize="int8")
    assert built.name in INT8_BACKENDS and built.device.type == "cpu" and built.quantize == "int8"


@pytest.mark.parametrize("value", ["int4", "INT8", "fp16", "", True, 8])
def test_quantize_values_other_than_none_and_int8_are_refused_in_one_line(tiny_model, tmp_path, value):
    for call in (
        lambda: build_backend(tiny_model, "torch", quantize=value),
        lambda: CostEffEngineForSequenceClassification.from_model(tiny_model, None, quantize=value),
        lambda: PackedWeights.from_model(tiny_model, quantize=value),
    ):
        with pytest.raises(ValueError, match="^quantize must be None or 'int8', got ") as error:
            call()
        assert "\n" not in str(error.value)
    (tmp_path / "config.json").write_text("{}")  # refused before the checkpoint is read
    with pytest.raises(ValueError, match="^quantize must be None or 'int8'"):
        costeff_fast.from_pretrained(tmp_path, quantize=value)


@pytest.mark.parametrize(("backend", "device", "match"), [
    ("triton", None, "backend='triton' has no int8 path"),
    ("auto", "cuda", "runs on the CPU .*got device cuda"),
    ("torch", "cuda", "runs on the CPU .*got device cuda"),
    ("native", "cuda:0", "runs on the CPU .*got device cuda:0"),
    ("torch", "meta", "runs on the CPU .*got device meta"),
])
def test_int8_on_cuda_or_triton_is_refused_in_one_line(tiny_model, tmp_path, backend, device, match):
    with pytest.raises(ValueError, match=match) as error:
        check_quantize_target("int8", backend, device)
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match=match):
        build_backend(tiny_model, backend, device, quantize="int8")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=match):
        costeff_fast.from_pretrained(tmp_path, backend=backend, device=device, quantize="int8")
    with pytest.raises(ValueError, match="packs for the CPU in fp32"):
        PackedWeights.from_model(tiny_model, dtype=torch.float16, quantize="int8")


# Real models


@pytest.fixture(scope="module")
def minilm_classifier():
    from transformers import AutoModelForSequenceClassification

    from costeff_fast.training.data import packaged_minilm_dir

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(packaged_minilm_dir(), num_labels=2).eval()


@pytest.fixture(scope="module")
def minilm_tokenizer():
    from transformers import AutoTokenizer

    from costeff_fast.training.data import packaged_minilm_dir

    return AutoTokenizer.from_pretrained(packaged_minilm_dir())


SENTENCES = [
    "a gorgeous , witty , seductive movie .",
    "the plot is nothing but boilerplate clichés from start to finish ,",
    "it's a charming and often affecting journey .",
    "unflinchingly bleak and desperate",
    "the story is also as unoriginal as they come , already having been recycled more times than i'd care to count .",
    "effective but too-tepid biopic",
    "if you sometimes like to go to the movies to have fun , wasabi is a good place to start .",
    "emerges as something rare , an issue movie that's so honest and keenly observed that it doesn't feel like one .",
] * 4


def test_converted_minilm_int8_against_fp32(minilm_classifier, minilm_tokenizer, backend):
    """Every layer's output of the converted MiniLM (12 heads, FFN 1536) in int8 against fp32, and its logits.

    Its FFN activations have outliers (GELU outputs up to ~25 against an RMS of ~0.3) that one activation scale
    per GEMM call resolves coarsely: the hidden states' relative RMS error is about 8 % after layer 1 and 15 %
    after layer 6 (the trained COST-EFF checkpoints: about 2 % per layer), while every [CLS] vector keeps a
    cosine above 0.99. Its head is untrained (logits about 0.03): logits within 0.01 (measured 0.006).
    """
    converted = from_encoder_classifier(minilm_classifier).eval()
    fp32 = CostEffEngineForSequenceClassification.from_model(converted, minilm_tokenizer, backend=backend)
    int8 = CostEffEngineForSequenceClassification.from_model(converted, minilm_tokenizer, backend=backend, quantize="int8")
    input_ids, token_type_ids, lengths = fp32.encode(SENTENCES)
    batch = PackedBatch.from_lengths(lengths, "cpu")
    hidden32 = fp32.backend.embed(input_ids, token_type_ids, batch)
    hidden8 = hidden32.clone()
    for index in range(fp32.backend.num_layers):
        hidden32, _ = fp32.backend.layer(index, hidden32, batch)
        hidden8, _ = int8.backend.layer(index, hidden8, batch)
        assert relative_rms(hidden8, hidden32) < 0.2, index
        cls = batch.cls_index
        assert torch.nn.functional.cosine_similarity(hidden8[cls], hidden32[cls]).min() > 0.98, index
    torch.testing.assert_close(int8.generate_logits(SENTENCES, entropy_threshold=0.0),
                               fp32.generate_logits(SENTENCES, entropy_threshold=0.0), atol=0.01, rtol=0)


def test_optimize_int8_against_the_hf_model(minilm_classifier, minilm_tokenizer):
    inputs = minilm_tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = minilm_classifier(**inputs).logits
    optimized = costeff_fast.optimize(minilm_classifier, quantize="int8")
    assert optimized.backend.quantize == "int8"
    torch.testing.assert_close(optimized(**inputs).logits, expected, atol=0.01, rtol=0)
    with pytest.raises(ValueError, match="^quantize must be None or 'int8'"):
        costeff_fast.optimize(minilm_classifier, quantize="int4")


def batched(engine_call, texts: list[str], size: int = 64) -> torch.Tensor:
    return torch.cat([engine_call(texts[start:start + size]) for start in range(0, len(texts), size)])


def check_no_worse(fp32: torch.Tensor, int8: torch.Tensor, labels: torch.Tensor) -> None:
    """int8 loses no accuracy beyond chance against fp32 (McNemar): of the n rows where exactly one of the two is
    right, fp32 is the right one on c and int8 on n - c. Quantization noise knows nothing of the labels, so under
    "int8 no worse" c is at most Binomial(n, 1/2): c - (n - c) = 2c - n has mean <= 0 and standard deviation
    sqrt(n). Refused above 3 standard deviations (one-sided, about 0.13 % of false alarms); the accuracy gap this
    allows is 3 sqrt(n) / N, small when the two disagree on few rows."""
    fp32_right, int8_right = fp32 == labels, int8 == labels
    c, b = (fp32_right & ~int8_right).sum().item(), (int8_right & ~fp32_right).sum().item()
    assert c - b <= 3 * math.sqrt(c + b), (c, b)


def check_few_disagree(fp32: torch.Tensor, int8: torch.Tensor, rate: float) -> None:
    """int8 and fp32 labels differ on at most ``rate`` of rows in expectation: the observed count of N rows stays
    below N rate + 3 sqrt(N rate (1 - rate)), the binomial's one-sided 3 standard deviations."""
    count = len(fp32)
    disagree = (fp32 != int8).sum().item()
    assert disagree <= count * rate + 3 * math.sqrt(count * rate * (1 - rate)), (disagree, count, rate)


def check_trained(directory: Path, texts: list[str], labels: torch.Tensor) -> None:
    """int8 against fp32 on a trained checkpoint. The accuracy test is statistical and tuned on nothing: int8 no
    worse than fp32 beyond chance (:func:`check_no_worse`, McNemar) at threshold 0 and at the checkpoint's
    calibrated threshold. The other two are gross-error bounds, set far from int8's own noise so that no checkpoint
    or CPU flips them, while a broken quantization (a wrong scale or zero point, a transposed block) errs by the
    logits' own size and flips about half the labels: mean |logit difference| at threshold 0 under a fifth of the
    mean |logit| (int8 noise: 1.6-4.1 % on the checkpoints measured), labels differing on at most 5 % of rows in
    expectation (:func:`check_few_disagree`; noise flips only rows at the decision boundary, 0-2 % measured)."""
    fp32 = costeff_fast.from_pretrained(directory)
    int8 = costeff_fast.from_pretrained(directory, quantize="int8")
    logits32 = batched(lambda rows: fp32.generate_logits(rows, entropy_threshold=0.0), texts)
    logits8 = batched(lambda rows: int8.generate_logits(rows, entropy_threshold=0.0), texts)
    difference = (logits8 - logits32).abs()
    assert difference.mean() < 0.2 * logits32.abs().mean()
    check_few_disagree(logits32.argmax(1), logits8.argmax(1), rate=0.05)
    check_no_worse(logits32.argmax(1), logits8.argmax(1), labels)
    check_no_worse(*(batched(engine.predict, texts) for engine in (fp32, int8)), labels)


def _rt_rows():
    from costeff_fast.data import load_task

    data = load_task("rt")["validation"]
    return list(data["text"]), torch.tensor(data["label"])


def _trec_rows():
    label2id = json.loads((TREC_CHECKPOINT / "config.json").read_text())["label2id"]
    with TREC_VALIDATION.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return [row["question"] for row in rows], torch.tensor([label2id[row["question_type"]] for row in rows])


#: runs of record checked on demand: collected only where the checkpoint is there (COSTEFF_TEST_RT_CHECKPOINT,
#: COSTEFF_TEST_TREC_CHECKPOINT), so CI, which has none, skips nothing; the session-trained model's check is in
#: tests/test_trained_model.py
LOCAL_CHECKPOINTS = [name for name, present in (
    ("rt", (RT_CHECKPOINT / "config.json").is_file()),
    ("trec", (TREC_CHECKPOINT / "config.json").is_file() and TREC_VALIDATION.is_file())) if present]


if LOCAL_CHECKPOINTS:  # defined only where one is present: an empty parameter set would be a skip in CI

    @pytest.mark.parametrize("name", LOCAL_CHECKPOINTS)
    def test_run_of_record_int8_against_fp32(name, one_thread):
        """:func:`check_trained` on the runs of record present here (one thread, :func:`one_thread`: they run on
        demand on shared machines)."""
        if name == "rt":
            check_trained(RT_CHECKPOINT, *_rt_rows())
        else:
            check_trained(TREC_CHECKPOINT, *_trec_rows())

"""Shared CPU benchmark workloads: real rt inputs, the issue's model shapes, FLOP counts and interleaved timing.

Used by the pytest-benchmark suites (``pytest bench/ --benchmark-only``) and by ``bench/run_cpu.py``, so both
measure the same things on the same inputs.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from functools import cache

import torch
import torch.nn.functional as F

from costeff_fast import CostEffConfig, CostEffForSequenceClassification, native
from costeff_fast.backends.torch_backend import TorchBackend
from costeff_fast.engine import PackedBatch
from costeff_fast.packing import PackedWeights

MAX_LENGTH = 128  # tokens per sentence after truncation (and the padded length of the "128 tokens" runs)

# Kernel shapes (hidden H, heads h, head size d, FFN F): the 8x COST-EFF model, the MiniLM teacher, BERT-base.
KERNEL_SHAPES = {
    "costeff-8x": (768, 2, 64, 256),
    "minilm": (384, 12, 32, 1536),
    "bert-base": (768, 12, 64, 3072),
}


@cache
def tokenizer():
    """The packaged MiniLM's uncased BERT WordPiece tokenizer (the BERT-base vocabulary)."""
    from transformers import AutoTokenizer

    from costeff_fast.training.trainer import packaged_minilm_dir

    return AutoTokenizer.from_pretrained(packaged_minilm_dir())


@cache
def rt_split(split: str = "validation") -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Texts and labels of the offline ``rt`` task (costeff_fast.data, ASSETS.md)."""
    from costeff_fast.data import load_task

    data = load_task("rt")[split]
    return tuple(data["text"]), tuple(data["label"])


def rt_lengths(num_rows: int = 64) -> torch.Tensor:
    """``[num_rows]`` int64 token counts of the first rt validation sentences (truncated to MAX_LENGTH)."""
    texts = list(rt_split()[0][:num_rows])
    encoded = tokenizer()(texts, truncation=True, max_length=MAX_LENGTH)
    return torch.tensor([len(ids) for ids in encoded["input_ids"]])


def interleaved_seconds(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median wall time (s) of each callable, timed round-robin so load changes hit all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def mm_peak_gflops(repeats: int = 5) -> float:
    """Best fp32 ``torch.mm`` GFLOP/s over square-ish shapes of this workload's sizes (the same-run peak)."""
    best = 0.0
    for m, k, n in ((2048, 768, 768), (2048, 384, 1536), (1024, 1024, 1024)):
        a, b = torch.randn(m, k), torch.randn(k, n)
        seconds = min(interleaved_seconds({"mm": lambda: torch.mm(a, b)}, repeats)["mm"] for _ in range(2))
        best = max(best, 2 * m * k * n / seconds / 1e9)
    return best


def one_layer_backends(shape: str) -> tuple[TorchBackend, TorchBackend]:
    """A random one-layer model of ``KERNEL_SHAPES[shape]`` packed twice: native path, plain torch path."""
    hidden_size, heads, head_size, ffn = KERNEL_SHAPES[shape]
    config = CostEffConfig(
        vocab_size=8, hidden_size=hidden_size, num_hidden_layers=1, num_attention_heads=heads,
        attention_head_size=head_size, intermediate_size=ffn, num_labels=2,
    )
    weights = PackedWeights.from_model(CostEffForSequenceClassification(config).eval())
    return TorchBackend(weights, native=True), TorchBackend(weights, native=False)


def kernel_candidates(shape: str, num_rows: int = 64) -> dict[str, tuple[Callable, Callable]]:
    """Each native kernel candidate next to the torch op it replaces, on rt-length packed inputs.

    Returns:
        ``{candidate: (torch_fn, native_fn)}``; each call runs the operation once on the same inputs.
        Candidates: ``attention`` (padded SDPA vs varlen kernel), ``residual_layernorm`` (``add`` +
        ``layer_norm`` on an ``addmm`` output vs the fused bias + residual + LayerNorm in place on an ``mm``
        output), ``linear_residual_layernorm`` (the same with the GEMM), ``compaction`` (boolean-mask gather vs span copy, half of the rows kept) and ``layer`` (a whole
        encoder layer, every kernel in use).

    Raises:
        RuntimeError: the native kernels are not available.
    """
    if not native.available():
        raise RuntimeError("the native kernels are not built here; see the costeff_fast.native warning")
    fast, plain = one_layer_backends(shape)
    w, eps = fast.weights.layers[0], fast.weights.layer_norm_eps
    hidden_size, heads, head_size, _ = KERNEL_SHAPES[shape]
    batch = PackedBatch.from_lengths(rt_lengths(num_rows), "cpu")
    tokens = batch.num_tokens
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(tokens, 3 * heads * head_size, generator=g)
    context = torch.randn(tokens, heads * head_size, generator=g)
    hidden, gemm_out = torch.randn(tokens, hidden_size, generator=g), torch.randn(tokens, hidden_size, generator=g)
    keep = torch.arange(batch.num_rows) % 2 == 0
    norm = (w.attention_norm_weight, w.attention_norm_bias)
    ln_args = (context, w.attention_output_weight, w.attention_output_bias, hidden, *norm)
    return {
        "attention": (
            lambda: plain.attention(qkv, heads, head_size, batch),
            lambda: fast.attention(qkv, heads, head_size, batch),
        ),
        "residual_layernorm": (
            lambda: F.layer_norm(torch.add(gemm_out, hidden), (hidden_size,), *norm, eps),
            lambda: native.bias_residual_layernorm_(gemm_out, w.attention_output_bias, hidden, *norm, eps),
        ),
        "linear_residual_layernorm": (
            lambda: plain.linear_residual_layernorm(*ln_args),
            lambda: fast.linear_residual_layernorm(*ln_args),
        ),
        "compaction": (
            lambda: plain.compact(hidden, batch, keep)[0],
            lambda: fast.compact(hidden, batch, keep)[0],
        ),
        "layer": (lambda: plain.layer(0, hidden, batch), lambda: fast.layer(0, hidden, batch)),
    }

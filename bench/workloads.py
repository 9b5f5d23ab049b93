"""Shared CPU benchmark workloads: real rt inputs, the issue's model shapes, FLOP counts and interleaved timing.

Used by the pytest-benchmark suites (``pytest bench/ --benchmark-only``) and by ``bench/run_cpu.py``, so both
measure the same things on the same inputs.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F

from costeff_fast import CostEffConfig, CostEffForSequenceClassification, exit_entropy, native, reference
from costeff_fast.backends import NativeBackend, TorchBackend
from costeff_fast.batch import PackedBatch
from costeff_fast.config import resolve_entropy_threshold
from costeff_fast.convert import from_bert, from_encoder_classifier
from costeff_fast.engine import run_early_exit
from costeff_fast.packing import PackedWeights

MAX_LENGTH = 128  # tokens per sentence after truncation (and the padded length of the "128 tokens" runs)

# Kernel shapes (hidden H, heads h, head size d, FFN F): the 8x COST-EFF model, the MiniLM teacher, its COST-EFF
# compression for rt (`costeff-fast compress --heads 2 --ffn 160`), BERT-base.
KERNEL_SHAPES = {
    "costeff-8x": (768, 2, 64, 256),
    "minilm": (384, 12, 32, 1536),
    "minilm-slender": (384, 2, 32, 160),
    "bert-base": (768, 12, 64, 3072),
}


@cache
def tokenizer():
    """The packaged MiniLM's uncased BERT WordPiece tokenizer (the BERT-base vocabulary)."""
    from transformers import AutoTokenizer

    from costeff_fast.training.data import packaged_minilm_dir

    return AutoTokenizer.from_pretrained(packaged_minilm_dir())


@cache
def rt_split(split: str = "validation") -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Texts and labels of the offline ``rt`` task (costeff_fast.data)."""
    from costeff_fast.data import load_task

    data = load_task("rt")[split]
    return tuple(data["text"]), tuple(data["label"])


@cache
def full_length_texts(num_rows: int = 64) -> tuple[str, ...]:
    """``num_rows`` texts of at least MAX_LENGTH tokens: consecutive rt validation sentences joined.

    After truncation every row has exactly MAX_LENGTH tokens, so a padding-free engine and a model padded to
    MAX_LENGTH execute the same token count (the paper's 128-token accounting on real words).
    """
    sentences, rows, current = rt_split()[0], [], []
    for sentence in sentences:
        current.append(sentence)
        if len(tokenizer()(" ".join(current))["input_ids"]) >= MAX_LENGTH:
            rows.append(" ".join(current))
            current = []
            if len(rows) == num_rows:
                return tuple(rows)
    raise ValueError(f"rt validation holds fewer than {num_rows} rows of {MAX_LENGTH} tokens; ask for fewer rows")


def rt_lengths(num_rows: int = 64) -> torch.Tensor:
    """``[num_rows]`` int64 token counts of the first rt validation sentences (truncated to MAX_LENGTH)."""
    texts = list(rt_split()[0][:num_rows])
    encoded = tokenizer()(texts, truncation=True, max_length=MAX_LENGTH)
    return torch.tensor([len(ids) for ids in encoded["input_ids"]])


#: seconds of rest before each timed call: thread pools that spin-wait after a call (ONNX Runtime's intra-op pool,
#: OpenMP's workers) would otherwise take cores from the next contender in the round
SETTLE_S = 0.05


def interleaved_seconds(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
                        settle: float = 0.0) -> dict[str, float]:
    """Median wall time (s) of each callable, timed round-robin so load changes hit all of them alike, each call
    after ``settle`` seconds of rest (not timed; :data:`SETTLE_S` for whole models from different runtimes,
    0 for kernel timings, where waking a sleeping thread team would dominate)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if settle:
                time.sleep(settle)
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


def one_layer_backends(shape: str) -> tuple[NativeBackend, TorchBackend]:
    """A random one-layer model of ``KERNEL_SHAPES[shape]`` packed once, on the native and the torch backend."""
    hidden_size, heads, head_size, ffn = KERNEL_SHAPES[shape]
    config = CostEffConfig(
        vocab_size=30522, hidden_size=hidden_size, num_hidden_layers=1, num_attention_heads=heads,
        attention_head_size=head_size, intermediate_size=ffn, num_labels=2,
    )
    weights = PackedWeights.from_model(CostEffForSequenceClassification(config).eval())
    return NativeBackend(weights), TorchBackend(weights)


def kernel_candidates(shape: str, num_rows: int = 64) -> dict[str, tuple[Callable, Callable]]:
    """Each native kernel candidate next to the torch op it replaces, on rt-length packed inputs.

    Returns:
        ``{candidate: (torch_fn, native_fn)}``; each call runs the operation once on the same inputs.
        Candidates: ``attention`` (bias add + the reference's padded SDPA vs varlen kernel with the bias inside),
        ``residual_layernorm`` (``add`` + ``layer_norm`` on an ``addmm`` output vs the fused bias + residual + LayerNorm in place on an ``mm``
        output), ``linear_residual_layernorm`` (the same with the GEMM), ``embedding`` (three gathers, two
        adds and ``layer_norm`` vs the one-pass kernel), ``segment_mean`` (scatter-add over tokens vs span
        sums, for mean-pooling exits), ``compaction`` (boolean-mask gather vs span copy, half of the rows kept),
        ``exit_decision`` (``exit_entropy(logits) < tau`` vs one pass over the logits), ``compact`` (the
        backends' ``compact``, what the engine calls when some rows exit: the compaction plus the new batch's
        ``cu_seqlens``, lengths and row ids, half of the rows kept) and ``encoder_layer`` (the reference layer
        vs the tiled native layer).

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
    input_ids = torch.randint(0, fast.weights.word_embeddings.shape[0], (tokens,), generator=g)
    token_type_ids = torch.zeros(tokens, dtype=torch.long)
    norm = (w.attention_norm_weight, w.attention_norm_bias)
    logits = torch.randn(batch.num_rows, 2, generator=g)
    ln_args = (context, w.attention_output_weight, w.attention_output_bias, hidden, *norm)
    return {
        "attention": (
            lambda: reference.varlen_attention(qkv + w.qkv_bias, batch.cu_seqlens, batch.max_seqlen, heads, head_size),
            lambda: native.varlen_attention(qkv, batch.cu_seqlens, batch.max_seqlen, heads, head_size,
                                            qkv_bias=w.qkv_bias),
        ),
        "residual_layernorm": (
            lambda: F.layer_norm(torch.add(gemm_out, hidden), (hidden_size,), *norm, eps),
            lambda: native.bias_residual_layernorm_(gemm_out, w.attention_output_bias, hidden, *norm, eps),
        ),
        "linear_residual_layernorm": (
            lambda: reference.linear_residual_layernorm(*ln_args, eps),
            lambda: native.bias_residual_layernorm_(torch.mm(context, ln_args[1]), *ln_args[2:], eps),
        ),
        "embedding": (
            lambda: plain.embed(input_ids, token_type_ids, batch),
            lambda: fast.embed(input_ids, token_type_ids, batch),
        ),
        "segment_mean": (
            lambda: reference.segment_mean(hidden, batch.cu_seqlens),
            lambda: native.segment_mean(hidden, batch.cu_seqlens),
        ),
        "compaction": (
            lambda: reference.compact_tokens(hidden, batch.cu_seqlens, batch.row_ids, keep)[0],
            lambda: native.compact_tokens(hidden, batch.cu_seqlens, batch.row_ids, keep)[0],
        ),
        "exit_decision": (
            lambda: reference.exit_decision(logits, 0.5), lambda: native.exit_decision(logits, 0.5)
        ),
        "compact": (lambda: plain.compact(hidden, batch, keep)[0], lambda: fast.compact(hidden, batch, keep)[0]),
        "encoder_layer": (lambda: plain.layer(0, hidden, batch), lambda: fast.layer(0, hidden, batch)),
    }


# ---------------------------------------------------------------------------------------------------------------
# Models and end-to-end contenders


@dataclass
class Contender:
    """One timed workload: ``fn()`` classifies ``sentences`` rows once.

    Attributes:
        gflop: executed matmul GFLOP per pass (2 x multiply-adds on real tokens and real exit layers; padded
            tokens count for the models that compute them).
        paper_gflop: the same rows counted at MAX_LENGTH (128) padded tokens each (the paper's accounting).
    """

    fn: Callable[[], object]
    sentences: int
    gflop: float
    paper_gflop: float


def report(contender: Contender, seconds: float, peak_gflops: float) -> dict:
    """sentences/s, executed GFLOP/s and its fraction of the same-run ``torch.mm`` peak for one timing."""
    gflops = contender.gflop / seconds
    return {
        "seconds_per_pass": seconds,
        "sentences": contender.sentences,
        "sentences_per_s": contender.sentences / seconds,
        "gflop_per_sentence": contender.gflop / contender.sentences,
        "paper_gflop_per_sentence": contender.paper_gflop / contender.sentences,
        "gflops": gflops,
        "fraction_of_mm_peak": gflops / peak_gflops,
    }


@torch.inference_mode()
def layer_gemm_gflops(weights: PackedWeights, num_tokens: int, repeats: int = 41) -> float:
    """GFLOP/s of one encoder layer's four GEMMs alone (QKV, W_O, W_1, W_2 as ``torch.mm``, nothing else) on
    ``num_tokens`` packed tokens, averaged over the layers of ``weights``: the ceiling of the executed-matmul
    rate for these widths, before attention, LayerNorm, GELU and early exit take their share of the time."""
    x = torch.randn(num_tokens, weights.layers[0].qkv_weight.shape[0])
    fns, flop = {}, 0.0
    for index, w in enumerate(weights.layers):
        inputs = (x, torch.randn(num_tokens, w.attention_output_weight.shape[0]), x,
                  torch.randn(num_tokens, w.output_weight.shape[0]))
        mats = (w.qkv_weight, w.attention_output_weight, w.intermediate_weight, w.output_weight)
        fns[str(index)] = lambda inputs=inputs, mats=mats: [torch.mm(a, b) for a, b in zip(inputs, mats)]
        flop += sum(2.0 * num_tokens * b.shape[0] * b.shape[1] for b in mats)
    seconds = sum(interleaved_seconds(fns, repeats).values())
    return flop / seconds / 1e9


def costeff_flops(config: CostEffConfig, lengths: torch.Tensor, exit_layers: torch.Tensor) -> float:
    """Executed matmul FLOPs of an engine run: ``2 x`` multiply-adds of QKV, W_O, W_1, W_2 on the real tokens of
    the rows that reach each layer, Q K^T and P V per row and head (``4 n^2 A``), and every evaluated exit
    head (optional pooler ``H x H`` and classifier ``H x C`` on the CLS row).

    Args:
        lengths: ``[B]`` tokens per row. exit_layers: ``[B]`` 1-based exit layer of each row.
    """
    hidden, head_size, labels = config.hidden_size, config.attention_head_size, config.num_labels
    n = lengths.double()
    total = 0.0
    for layer in range(config.num_hidden_layers):
        alive = exit_layers > layer
        tokens = n[alive]
        width, ffn = config.num_attention_heads[layer] * head_size, config.intermediate_size[layer]
        total += 2 * float(tokens.sum()) * (hidden * 3 * width + width * hidden + 2 * hidden * ffn)
        total += 4 * float((tokens * tokens).sum()) * width
        head = hidden * labels + (hidden * hidden if config.exit_pooler[layer] else 0)
        total += 2 * int(alive.sum()) * head
    return total


def bert_flops(config, padded_lengths: torch.Tensor) -> float:
    """Executed matmul FLOPs of an HF BERT classifier on rows of ``padded_lengths [B]`` tokens (padding computed):
    every layer's QKV, output, FFN GEMMs and attention, then pooler and classifier on each row."""
    hidden, ffn = config.hidden_size, config.intermediate_size
    n = padded_lengths.double()
    per_layer = 2 * float(n.sum()) * (4 * hidden * hidden + 2 * hidden * ffn) + 4 * float((n * n).sum()) * hidden
    return config.num_hidden_layers * per_layer + len(n) * 2 * (hidden * hidden + hidden * config.num_labels)


def chunks(items: list, size: int) -> list[list]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def hf_batches(texts: list[str], batch_size: int, pad_to_max: bool = False) -> list[dict]:
    """Tokenized ``[b, S]`` batches: dynamic padding (longest row), or every row padded to MAX_LENGTH."""
    padding = "max_length" if pad_to_max else "longest"
    return [
        dict(tokenizer()(chunk, truncation=True, max_length=MAX_LENGTH, padding=padding, return_tensors="pt"))
        for chunk in chunks(texts, batch_size)
    ]


def hf_contender(model, texts: list[str], batch_size: int, pad_to_max: bool = False, packed: bool = False,
                 config=None) -> Contender:
    """An HF-style classifier in inference mode on padded tokenized batches (tokenization not timed).

    ``packed``: the model skips padding (``costeff_fast.optimize``), so FLOPs count real tokens only.
    ``config``: the BERT config the FLOPs are counted on (default ``model.config``; for ``optimize(m)`` pass
    ``m.config``: the optimized model's own config is a ``CostEffConfig`` of the same shapes).
    """
    config = model.config if config is None else config
    batches = hf_batches(texts, batch_size, pad_to_max)

    @torch.inference_mode()
    def run():
        return [model(**batch).logits for batch in batches]

    if packed:
        executed = torch.cat([b["attention_mask"].sum(dim=1) for b in batches])
    else:
        executed = torch.cat([torch.full((len(b["input_ids"]),), b["input_ids"].shape[1]) for b in batches])
    return Contender(run, len(texts), bert_flops(config, executed) / 1e9,
                     bert_flops(config, torch.full_like(executed, MAX_LENGTH)) / 1e9)


def engine_batches(texts: list[str], batch_size: int) -> list[dict]:
    """Tokenized, unpadded batches (lists of ids) for :meth:`CostEffEngineForSequenceClassification.generate_logits`."""
    return [dict(tokenizer()(chunk, truncation=True, max_length=MAX_LENGTH)) for chunk in chunks(texts, batch_size)]


def engine_contender(engine, texts: list[str], batch_size: int, tau) -> Contender:
    """The engine at threshold ``tau`` on pre-tokenized batches; FLOPs from the rows' real exit layers."""
    batches = engine_batches(texts, batch_size)

    def run():
        return [engine.generate_logits(batch, entropy_threshold=tau, return_exit_layers=True) for batch in batches]

    exit_layers = torch.cat([layers for _, layers in run()])
    lengths = torch.tensor([len(ids) for batch in batches for ids in batch["input_ids"]])
    config = engine.config
    return Contender(run, len(texts), costeff_flops(config, lengths, exit_layers) / 1e9,
                     costeff_flops(config, torch.full_like(lengths, MAX_LENGTH), exit_layers) / 1e9)


def streaming_contenders(engine, texts: list[str], batch_size: int, tau) -> dict[str, Contender]:
    """Raw texts (tokenization timed in both) classified batch by batch, or by the streaming scheduler."""
    flops = engine_contender(engine, texts, batch_size, tau)

    def per_batch():
        return [engine.generate_logits(chunk, entropy_threshold=tau) for chunk in chunks(texts, batch_size)]

    def streaming():
        return list(engine.generate_logits_stream(texts, batch_size, entropy_threshold=tau))

    return {
        "per_batch_compaction": Contender(per_batch, len(texts), flops.gflop, flops.paper_gflop),
        "streaming": Contender(streaming, len(texts), flops.gflop, flops.paper_gflop),
    }


class _LayerRecorder:
    """Backend proxy recording the inputs of every layer call (a layer never modifies its input)."""

    def __init__(self, backend):
        self._backend = backend
        self.calls = []

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def layer(self, index, hidden, batch):
        self.calls.append((index, hidden, batch))
        return self._backend.layer(index, hidden, batch)


@torch.inference_mode()
def early_exit_overhead(engine, texts: list[str], batch_size: int, tau, repeats: int) -> dict:
    """Whole early-exit runs against their embedding plus the sum of their layer calls at the same rows.

    The remainder is what early exit adds: every exit head (pooling, classifier, entropy), the output
    scatter, compaction and the Python around them.

    Returns:
        median seconds for all batches of the whole runs (``early_exit_s``), of their embeddings
        (``embedding_s``) and of their layer calls alone (``sum_of_layers_s``); ``overhead`` =
        ``(early_exit_s - embedding_s) / sum_of_layers_s - 1``; ``rows_per_layer`` (rows entering each layer,
        summed over batches).
    """
    threshold = resolve_entropy_threshold(tau, engine.config)
    encoded = [engine.encode(batch) for batch in engine_batches(texts, batch_size)]
    recorder = _LayerRecorder(engine.backend)
    for inputs in encoded:
        run_early_exit(recorder, *inputs, threshold)
    rows = [0] * engine.config.num_hidden_layers
    for index, _, batch in recorder.calls:
        rows[index] += batch.num_rows
    batches = [PackedBatch.from_lengths(lengths, engine.backend.device) for _, _, lengths in encoded]

    def whole():
        for inputs in encoded:
            run_early_exit(engine.backend, *inputs, threshold)

    def embeddings():
        for (input_ids, token_type_ids, _), batch in zip(encoded, batches):
            engine.backend.embed(input_ids, token_type_ids, batch)

    def layers_only():
        for index, hidden, batch in recorder.calls:
            engine.backend.layer(index, hidden, batch)

    seconds = interleaved_seconds({"whole": whole, "embed": embeddings, "layers": layers_only}, repeats)
    return {
        "early_exit_s": seconds["whole"],
        "embedding_s": seconds["embed"],
        "sum_of_layers_s": seconds["layers"],
        "overhead": (seconds["whole"] - seconds["embed"]) / seconds["layers"] - 1.0,
        "rows_per_layer": rows,
    }


def costeff_8x_config() -> CostEffConfig:
    """The 8x COST-EFF shape: 12 layers, hidden 768, 2 heads of 64, FFN 256, embedding rank 128, BERT vocab."""
    return CostEffConfig(
        vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=2, attention_head_size=64,
        intermediate_size=256, embedding_rank=128, max_position_embeddings=512, num_labels=2,
    )


@cache
def random_bert_base():
    """HF BERT-base shapes (``BertConfig()``), random weights, 2 labels, sdpa attention, eval mode."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(num_labels=2, attn_implementation="sdpa")).eval()


def hf_teacher(directory=None):
    """The teacher: a fine-tuned HF BERT classifier directory, or the packaged MiniLM with a new 2-label head."""
    from transformers import AutoModelForSequenceClassification

    from costeff_fast.training.data import packaged_minilm_dir

    torch.manual_seed(0)
    source = directory or packaged_minilm_dir()
    kwargs = {} if directory else {"num_labels": 2}
    return AutoModelForSequenceClassification.from_pretrained(source, attn_implementation="sdpa", **kwargs).eval()


@torch.inference_mode()
def median_thresholds(model, texts: list[str]) -> list[float]:
    """Per-layer median exit entropy (nats) of ``texts`` under the reference ``model`` (every exit computed):
    a synthetic threshold that sends about half of the remaining rows out at every exit, for shape-only runs
    without a calibrated checkpoint."""
    entropies = [exit_entropy(torch.stack(model(**batch).exit_logits, dim=1)) for batch in hf_batches(texts, 64)]
    return torch.cat(entropies).median(dim=0).values.tolist()


def load_models(costeff_dir=None, teacher_dir=None):
    """Teacher, full-width multi-exit engine of it, COST-EFF engine and the COST-EFF reference model.

    Without directories: the packaged MiniLM (untrained 2-label head) and its full-width conversion stands in
    for the COST-EFF model (shape-only).
    """
    import costeff_fast
    from costeff_fast import CostEffEngineForSequenceClassification

    teacher = hf_teacher(teacher_dir)
    # num_threads=None: the benchmark sets torch's thread count itself (the default "auto" would pick its own)
    full_width = CostEffEngineForSequenceClassification.from_model(from_bert(teacher).eval(), tokenizer(), num_threads=None)
    if costeff_dir:
        costeff = costeff_fast.from_pretrained(costeff_dir, num_threads=None)
        reference = CostEffForSequenceClassification.from_pretrained(costeff_dir).eval()
    else:
        reference = from_bert(teacher).eval()
        costeff = CostEffEngineForSequenceClassification.from_model(reference, tokenizer(), num_threads=None)
    return teacher, full_width, costeff, reference


def teacher_group(teacher, full_width, costeff, tau, texts: list[str]) -> dict[str, Contender]:
    """rt batch 64: HF teacher, its full-width multi-exit engine and COST-EFF without and with early exit."""
    return {
        "hf_teacher": hf_contender(teacher, texts, 64),
        "costeff_full_width_no_exit": engine_contender(full_width, texts, 64, 0.0),
        "costeff_no_exit": engine_contender(costeff, texts, 64, 0.0),
        "costeff_early_exit": engine_contender(costeff, texts, 64, tau),
    }


def early_exit_threshold(costeff, reference, texts: list[str], trained: bool):
    """The checkpoint's calibrated threshold when ``trained`` and set, else the synthetic per-layer median.

    Returns:
        ``(threshold, kind)``: nats (float or one per layer) and a description for the results.
    """
    if trained and costeff.config.entropy_threshold is not None:
        return costeff.entropy_threshold, "calibrated (checkpoint config)"
    return median_thresholds(reference, texts), "synthetic: per-layer median entropy of the timed rows"


def converted_minilm(directory: Path) -> Path:
    """The packaged MiniLM as a full-width 6-exit COST-EFF checkpoint (random 2-label exits) with its tokenizer."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from costeff_fast.training.data import packaged_minilm_dir

    torch.manual_seed(0)
    hf = AutoModelForSequenceClassification.from_pretrained(packaged_minilm_dir(), num_labels=2).eval()
    from_encoder_classifier(hf).save_pretrained(directory)
    AutoTokenizer.from_pretrained(packaged_minilm_dir()).save_pretrained(directory)
    return directory

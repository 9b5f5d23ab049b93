"""GPU speed: HF fp16 sdpa against the triton backend, and every layer kernel against its roofline.

Run on a machine with a CUDA GPU (``bash bench/gpu_check.sh RESULTS_DIR`` runs the same measurements together
with the correctness checks; this script is the speed part alone)::

    python bench/bench_gpu.py                 # throughput grid + kernels; writes bench/results/gpu.json
    python bench/bench_gpu.py --roofline      # the per-layer roofline estimate of costeff_fast/kernels/README.md

**Throughput grid** (:func:`throughput_grid`): batches of 32-256 rows, two row sets, every contender timed
interleaved (A B C A B C ..., CUDA events, median ms per batch; docs/design.md, Measuring speed):

* row sets: ``real``: rt validation sentences at their own lengths (truncated to 128 tokens); ``128``: rows of
  exactly 128 tokens (consecutive sentences joined), so HF computes no padding. The texts come from the GPU
  payload (``bench/make_gpu_payload.py``); without one, random ids at random lengths stand in (said so);
* ``hf_bert_sdpa``: HF BERT-base (``BertConfig()``, random weights), fp16, ``attn_implementation="sdpa"``,
  each batch padded to its longest row;
* ``triton_bert_base``: the same weights converted with ``costeff_fast.convert.from_bert``, on the
  engine's triton backend (fp16 storage);
* ``triton_costeff_8x``: the 8x COST-EFF shape (12 layers, hidden 768, 2 heads of 64, FFN 256, rank 128);
* with a payload: ``hf_teacher_shape_sdpa`` (random HF BERT at the checkpoint's full width: hidden / head size
  heads, FFN 4 x hidden, its depth) and ``triton_checkpoint`` (the trained checkpoint);
* every triton contender ``_no_exit`` (threshold 0, full depth) and ``_early_exit``: the checkpoint at its
  calibrated threshold; the random models at a synthetic per-layer median exit entropy (about half of the
  remaining rows leave at every exit: random exits are never confident, so this only exercises the path).

Each row of the results gives ms per batch (CUDA events) with the host's wall time of the same calls,
sentences/s, the mean exit layer, executed GFLOP (``costeff_fast.flops.model_flops``: real tokens, real exit
layers; HF counts its padding) with the achieved TFLOP/s, and the speed-up over ``hf_bert_sdpa`` (and over
``hf_teacher_shape_sdpa`` for the checkpoint).

**Kernels** (:func:`kernel_rows`): the five launches of one layer, the whole ``TritonBackend.layer`` and cuBLAS
``addmm`` for each GEMM, timed with a flushed L2 and set against ``roofline.layer_roofline`` at the GPU's peaks
(``PEAKS``, ``peaks_for`` and ``layer_roofline`` live in ``bench/roofline.py`` with the rest of the prediction).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

# the peaks and the per-kernel roofline live with the rest of the prediction (bench/roofline.py, docs/design.md)
from roofline import PEAKS, layer_roofline, peaks_for  # noqa: E402,F401

RESULTS = Path(__file__).resolve().parent / "results" / "gpu.json"
MAX_LENGTH = 128  # tokens per row after truncation, and the length of the full-length row set

#: Kernel shapes (hidden H, heads h, head size d, FFN F) timed against the roofline.
KERNEL_SHAPES = {"costeff-8x": (768, 2, 64, 256), "bert-base": (768, 12, 64, 3072)}


def print_roofline(batch: int = 256, seq: int = 128, gpu: str = "H100") -> None:
    """Print the per-layer roofline of the 8x shape and, for scale, BERT-base, at ``PEAKS[gpu]`` (fp16)."""
    flops_peak, bytes_peak = PEAKS[gpu]
    print(f"{gpu} assumed: {flops_peak / 1e12:.0f} TFLOP/s fp16 dense, {bytes_peak / 1e12:.2f} TB/s "
          f"HBM -> ridge {flops_peak / bytes_peak:.0f} FLOP/byte; batch {batch} x {seq} tokens")
    shapes = {"COST-EFF 8x (h=2, d=64, F=256)": (2, 64, 256), "BERT-base (h=12, d=64, F=3072)": (12, 64, 3072)}
    for label, shape in shapes.items():
        rows = layer_roofline([seq] * batch, 768, *shape, peaks=PEAKS[gpu])
        print(f"\n{label}, one layer:")
        print(f"{'op':28s} {'GFLOP':>8s} {'MB':>8s} {'FLOP/B':>8s} {'bound':>8s} {'us':>8s}")
        for r in rows:
            print(f"{r['op']:28s} {r['gflop']:8.2f} {r['mbytes']:8.1f} {r['flop_per_byte']:8.0f} {r['bound']:>8s} "
                  f"{r['us']:8.1f}")
        gflop, mbytes, us = (sum(r[k] for r in rows) for k in ("gflop", "mbytes", "us"))
        print(f"{'layer total':28s} {gflop:8.2f} {mbytes:8.1f} {gflop * 1e3 / mbytes:8.0f} {'':>8s} {us:8.1f}"
              f"   (12 layers: {12 * us / 1e3:.2f} ms -> {batch / (12 * us * 1e-6):,.0f} sentences/s at the roofline)")


# ---------------------------------------------------------------------------------------------------------------
# Timing


def median_times(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
                 flush_l2: bool = False) -> dict[str, dict[str, float]]:
    """Median milliseconds per call of each callable, timed interleaved (A B C A B C ...): ``{"ms": CUDA-event
    time, "host_ms": host wall time}``.

    On CUDA each call sits between two CUDA events on the current stream and the host waits for the second, so
    ``ms`` covers the call's GPU work and any host time inside it (the engine's per-layer waits included);
    ``host_ms`` is the host's wall time from before the first event to after the wait for the second (the whole
    call as a caller sees it). ``flush_l2`` zeroes a 256 MiB buffer before every call (outside both) so no operand
    starts in L2. Without CUDA (the dry run under the Triton interpreter) both are wall time.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    cuda = torch.cuda.is_available()
    flush = torch.empty(64 * 2**20, dtype=torch.int32, device="cuda") if cuda and flush_l2 else None
    times: dict[str, list[float]] = {name: [] for name in fns}
    host: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if cuda:
                if flush is not None:
                    flush.zero_()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                begin = time.perf_counter()
                start.record()
                fn()
                end.record()
                end.synchronize()
                host[name].append(1e3 * (time.perf_counter() - begin))
                times[name].append(start.elapsed_time(end))
            else:
                begin = time.perf_counter()
                fn()
                times[name].append(1e3 * (time.perf_counter() - begin))
                host[name].append(times[name][-1])
    return {name: {"ms": statistics.median(times[name]), "host_ms": statistics.median(host[name])} for name in fns}


def median_ms(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
              flush_l2: bool = False) -> dict[str, float]:
    """The CUDA-event medians of :func:`median_times` (wall time without CUDA)."""
    return {name: t["ms"] for name, t in median_times(fns, repeats, warmup, flush_l2).items()}


# ---------------------------------------------------------------------------------------------------------------
# Rows


def real_rows(tokenizer, texts: Sequence[str], max_length: int = MAX_LENGTH) -> list[list[int]]:
    """Token ids of each text with its special tokens, truncated to ``max_length``."""
    return tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]


def full_rows(tokenizer, texts: Sequence[str], length: int = MAX_LENGTH) -> list[list[int]]:
    """Rows of exactly ``length`` tokens: the texts' tokens one after the other, cut every ``length - 2`` tokens
    and wrapped in ``[CLS] ... [SEP]``.

    Raises:
        ValueError: the texts hold fewer than ``length - 2`` tokens.
    """
    stream = [token for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"] for token in ids]
    body = length - 2
    rows = [[tokenizer.cls_token_id, *stream[start : start + body], tokenizer.sep_token_id]
            for start in range(0, len(stream) - body + 1, body)]
    if not rows:
        raise ValueError(f"the texts hold {len(stream)} tokens, fewer than one row of {length}; pass more texts")
    return rows


def synthetic_rows(count: int, vocab_size: int, min_length: int, max_length: int, seed: int = 0) -> list[list[int]]:
    """``count`` rows of random ids in ``[1, vocab_size)`` at uniform lengths in ``[min_length, max_length]``."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_length, max_length + 1, (count,), generator=generator)
    return [torch.randint(1, vocab_size, (int(n),), generator=generator).tolist() for n in lengths]


def padded(rows: Sequence[Sequence[int]], device=None) -> dict[str, torch.Tensor]:
    """``input_ids``, ``attention_mask``, ``token_type_ids`` ``[B, S]`` int64, right-padded to the longest row."""
    longest = max(len(row) for row in rows)
    ids = torch.zeros(len(rows), longest, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for index, row in enumerate(rows):
        ids[index, : len(row)] = torch.tensor(row)
        mask[index, : len(row)] = 1
    return {name: t.to(device) for name, t in
            {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}.items()}


def cycle(rows: Sequence, count: int) -> list:
    """The first ``count`` of ``rows`` repeated as often as needed."""
    return [rows[index % len(rows)] for index in range(count)]


# ---------------------------------------------------------------------------------------------------------------
# Contenders


@torch.inference_mode()
def median_thresholds(model, rows: Sequence[Sequence[int]]) -> list[float]:
    """Per-layer median exit entropy (nats) of ``rows`` under the fp32 reference ``model`` on the CPU: a
    synthetic threshold that sends about half of the remaining rows out at every exit (the last layer's value
    is unused: it always answers)."""
    from costeff_fast import exit_entropy

    logits = model.float().cpu()(**padded(rows)).exit_logits
    return exit_entropy(torch.stack(logits, dim=1)).median(dim=0).values.tolist()


@dataclass
class Contender:
    """One model of the throughput grid.

    Attributes:
        name: the results' ``contender``.
        model: an HF classifier (padded batches, no exit) or a ``TritonBackend`` (the engine).
        config: the model's config, for the FLOP count.
        threshold: the engine's entropy threshold, one float per layer (nats; zeros: no exit); None for HF.
        baseline: the HF contender whose speed-up it also reports, besides ``hf_bert_sdpa``.
    """

    name: str
    model: object
    config: object
    threshold: list[float] | None = None
    baseline: str | None = None

    def prepare(self, rows: Sequence[Sequence[int]], device) -> tuple[Callable[[], object], float, float, list | None]:
        """``(fn, executed GFLOP, mean exit layer, exit layers)`` of one batch of ``rows`` (token id lists); inputs
        are on the device before ``fn`` runs. The engine runs once here (for its exit layers, 1-based per row;
        None for HF)."""
        from costeff_fast.engine import run_early_exit
        from costeff_fast.flops import model_flops

        if self.threshold is None:
            batch = padded(rows, device)
            del batch["token_type_ids"]
            seq = batch["input_ids"].shape[1]
            gflop = model_flops(self.config, [seq] * len(rows), every_exit=False) / 1e9
            return (lambda: self.model(**batch).logits), gflop, float(self.config.num_hidden_layers), None
        lengths = torch.tensor([len(row) for row in rows])
        ids = torch.tensor([token for row in rows for token in row], device=device)
        types = torch.zeros_like(ids)

        def run():
            return run_early_exit(self.model, ids, types, lengths, self.threshold)

        exit_layers = run()[1].cpu()
        return (run, model_flops(self.config, lengths, exit_layers) / 1e9, float(exit_layers.float().mean()),
                exit_layers.tolist())


def bert_base_config(vocab_size: int = 30522):
    """HF BERT-base shapes (``BertConfig()``) with 2 labels."""
    from transformers import BertConfig

    return BertConfig(vocab_size=vocab_size, num_labels=2)


def teacher_shape_config(config):
    """An HF ``BertConfig`` at a COST-EFF checkpoint's full width: ``hidden / head size`` heads, FFN ``4 x hidden``,
    its depth, vocabulary and labels (the MiniLM teacher's shape for the rt checkpoints)."""
    from transformers import BertConfig

    hidden = config.hidden_size
    return BertConfig(vocab_size=config.vocab_size, hidden_size=hidden, num_hidden_layers=config.num_hidden_layers,
                      num_attention_heads=hidden // config.attention_head_size, intermediate_size=4 * hidden,
                      max_position_embeddings=config.max_position_embeddings, num_labels=config.num_labels)


@torch.inference_mode()
def build_contenders(device, dtype: torch.dtype, bert_config, costeff_config, checkpoint=None,
                     threshold_rows: Sequence[Sequence[int]] = ()) -> tuple[list[Contender], dict]:
    """The grid's contenders (see the module docstring) and a note of the thresholds they run with.

    Args:
        device, dtype: where and in which dtype every model runs (fp16 on the GPU; fp32 in the dry run).
        bert_config: the HF BERT shape (``bert_base_config()`` on the GPU).
        costeff_config: the random COST-EFF shape (``workloads.costeff_8x_config()`` on the GPU).
        checkpoint: a trained ``CostEffForSequenceClassification`` (fp32, CPU) or None.
        threshold_rows: rows whose per-layer median exit entropy is the random models' early-exit threshold.
    """
    from transformers import AutoModelForSequenceClassification

    from costeff_fast import CostEffForSequenceClassification
    from costeff_fast.backends.triton_backend import TritonBackend
    from costeff_fast.config import resolve_entropy_threshold
    from costeff_fast.convert import from_bert

    def hf(config):
        torch.manual_seed(0)
        return AutoModelForSequenceClassification.from_config(config, attn_implementation="sdpa").eval()

    def engine(name, model, baseline, early_threshold):
        backend = TritonBackend.from_model(model, device, dtype)
        return [Contender(f"{name}_no_exit", backend, model.config, [0.0] * model.config.num_hidden_layers, baseline),
                Contender(f"{name}_early_exit", backend, model.config, early_threshold, baseline)]

    bert = hf(bert_config)
    bert_costeff = from_bert(bert).eval()
    torch.manual_seed(0)
    slim = CostEffForSequenceClassification(costeff_config).eval()
    thresholds = {"triton_bert_base": median_thresholds(bert_costeff, threshold_rows[:64]),
                  "triton_costeff_8x": median_thresholds(slim, threshold_rows[:64])}
    notes = {name: {"kind": "synthetic: per-layer median exit entropy of 64 real rows", "nats": tau}
             for name, tau in thresholds.items()}
    contenders = [Contender("hf_bert_sdpa", bert.to(device=device, dtype=dtype), bert_config)]
    contenders += engine("triton_bert_base", bert_costeff, "hf_bert_sdpa", thresholds["triton_bert_base"])
    contenders += engine("triton_costeff_8x", slim, "hf_bert_sdpa", thresholds["triton_costeff_8x"])
    if checkpoint is not None:
        teacher_config = teacher_shape_config(checkpoint.config)
        contenders.append(Contender("hf_teacher_shape_sdpa", hf(teacher_config).to(device=device, dtype=dtype),
                                    teacher_config))
        calibrated = resolve_entropy_threshold(None, checkpoint.config)
        if any(calibrated[:-1]):
            notes["triton_checkpoint"] = {"kind": "calibrated (checkpoint config)", "nats": calibrated}
        else:
            calibrated = median_thresholds(checkpoint, threshold_rows[:64])
            notes["triton_checkpoint"] = {"kind": "synthetic: the checkpoint has no calibrated threshold",
                                          "nats": calibrated}
        contenders += engine("triton_checkpoint", checkpoint, "hf_teacher_shape_sdpa", calibrated)
        # the same checkpoint with every layer per op (five launches), to set against its fused layers
        per_op = TritonBackend.from_model(checkpoint, device, dtype, fused_layers=False)
        contenders.append(Contender("triton_checkpoint_per_op", per_op, checkpoint.config, calibrated,
                                    "hf_teacher_shape_sdpa"))
    return contenders, notes


@torch.inference_mode()
def throughput_grid(contenders: Sequence[Contender], row_sets: dict[str, list[list[int]]],
                    batch_sizes: Sequence[int], device, repeats: int, warmup: int = 2,
                    deadline: float | None = None, on_row: Callable[[list[dict]], None] | None = None,
                    predict: Callable[[Contender, list, list | None], dict] | None = None) -> list[dict]:
    """Time every contender on every row set at every batch size (interleaved, median ms per batch).

    Args:
        row_sets: ``{name: rows}``; a batch of ``b`` takes the first ``b`` rows (repeated when fewer).
        deadline: ``time.time()`` after which no new cell starts (the rows so far are returned).
        on_row: called with the results so far after every cell (the GPU check writes its JSON there).
        predict: ``(contender, batch rows, exit layers or None) -> dict`` merged into the contender's row (the GPU
            check's roofline prediction, bench/roofline.py).

    Returns:
        one dict per (row set, batch, contender): ``rows``, ``batch``, ``tokens`` (real), ``contender``,
        ``ms_per_batch`` (CUDA events), ``host_ms_per_batch`` (host wall time of the same calls),
        ``sentences_per_s``, ``mean_exit_layer``, ``gflop``, ``tflop_per_s``, ``speedup_vs_hf_bert_sdpa`` and, for
        a contender with another baseline, ``speedup_vs_<baseline>``.
    """
    results: list[dict] = []
    for set_name, rows in row_sets.items():
        for batch_size in batch_sizes:
            if deadline is not None and time.time() > deadline:
                return results
            batch = cycle(rows, batch_size)
            prepared = {c.name: c.prepare(batch, device) for c in contenders}
            timed = median_times({name: prepared[name][0] for name in prepared}, repeats, warmup)
            ms = {name: t["ms"] for name, t in timed.items()}
            tokens = sum(len(row) for row in batch)
            for contender in contenders:
                _, gflop, mean_exit, exit_layers = prepared[contender.name]
                row = {"rows": set_name, "batch": batch_size, "tokens": tokens, "contender": contender.name,
                       "ms_per_batch": ms[contender.name], "host_ms_per_batch": timed[contender.name]["host_ms"],
                       "sentences_per_s": batch_size / ms[contender.name] * 1e3,
                       "mean_exit_layer": mean_exit, "gflop": gflop,
                       "tflop_per_s": gflop / ms[contender.name],
                       "speedup_vs_hf_bert_sdpa": ms["hf_bert_sdpa"] / ms[contender.name]}
                if contender.baseline and contender.baseline != "hf_bert_sdpa":
                    row[f"speedup_vs_{contender.baseline}"] = ms[contender.baseline] / ms[contender.name]
                if predict is not None:
                    row.update(predict(contender, batch, exit_layers))
                results.append(row)
            if on_row is not None:
                on_row(results)
    return results


@torch.inference_mode()
def kernel_rows(shape_name: str, shape: tuple[int, int, int, int], lengths: Sequence[int], device,
                dtype: torch.dtype, peaks: tuple[float, float], repeats: int) -> list[dict]:
    """Each kernel of one random triton layer of ``shape`` on rows of ``lengths`` tokens against its roofline.

    Args:
        shape: ``(hidden, heads, head size, FFN)``.
        peaks: ``(FLOP/s, bytes/s)`` for :func:`layer_roofline`.

    Returns:
        one dict per kernel and one for the whole layer: ``shape``, ``tokens``, ``rows``, ``op``, ``us``
        (median CUDA-event time, flushed L2), ``host_us`` (the host's wall time of the same calls, the flush's wait
        included), ``roofline_us``, ``gflop`` and ``mbytes`` (of the roofline), ``fraction_of_roofline``
        (roofline / measured), ``bound``,
        ``achieved_gb_per_s``, ``achieved_tflop_per_s`` and, for the GEMMs, ``cublas_addmm_us`` (the GEMM + bias
        alone in cuBLAS). The layer row (the per-op path's five launches) adds ``sum_of_ops_us`` and ``fused_us`` /
        ``fused_host_us``: the fused layer + exit head of :mod:`costeff_fast.kernels.layer` on the same rows (None
        where :func:`~costeff_fast.kernels.layer.fused_layer_supported` leaves the shape per-op).
    """
    from costeff_fast import CostEffConfig, CostEffForSequenceClassification, kernels
    from costeff_fast.backends.triton_backend import TritonBackend
    from costeff_fast.batch import PackedBatch

    hidden_size, heads, head_size, ffn = shape
    torch.manual_seed(0)
    config = CostEffConfig(vocab_size=8, hidden_size=hidden_size, num_hidden_layers=1, num_attention_heads=heads,
                           attention_head_size=head_size, intermediate_size=ffn, num_labels=2,
                           max_position_embeddings=max(lengths))
    backend = TritonBackend.from_model(CostEffForSequenceClassification(config).eval(), device, dtype,
                                       fused_layers=False)
    fused = TritonBackend(backend.weights, backend.device)  # the same weights, narrow layers in one launch
    w, eps = backend.weights.layers[0], backend.weights.layer_norm_eps
    batch = PackedBatch.from_lengths(torch.tensor(lengths), device)
    hidden = torch.randn(sum(lengths), hidden_size, device=device).to(dtype)
    qkv = kernels.linear(hidden, w.qkv_weight, w.qkv_bias)
    context = kernels.varlen_attention(qkv, batch.cu_seqlens, batch.max_seqlen, heads, head_size)
    inter = kernels.linear(hidden, w.intermediate_weight, w.intermediate_bias, gelu=True)
    ops = {
        "QKV GEMM + bias": lambda: kernels.linear(hidden, w.qkv_weight, w.qkv_bias),
        "varlen attention": lambda: kernels.varlen_attention(qkv, batch.cu_seqlens, batch.max_seqlen, heads, head_size),
        "W_O GEMM + residual + LN": lambda: kernels.linear_residual_layernorm(
            context, w.attention_output_weight, w.attention_output_bias, hidden, w.attention_norm_weight,
            w.attention_norm_bias, eps),
        "W_1 GEMM + GELU": lambda: kernels.linear(hidden, w.intermediate_weight, w.intermediate_bias, gelu=True),
        "W_2 GEMM + residual + LN": lambda: kernels.linear_residual_layernorm(
            inter, w.output_weight, w.output_bias, hidden, w.output_norm_weight, w.output_norm_bias, eps),
    }
    cublas = {
        "QKV GEMM + bias": lambda: torch.addmm(w.qkv_bias, hidden, w.qkv_weight),
        "W_O GEMM + residual + LN": lambda: torch.addmm(w.attention_output_bias, context, w.attention_output_weight),
        "W_1 GEMM + GELU": lambda: torch.addmm(w.intermediate_bias, hidden, w.intermediate_weight),
        "W_2 GEMM + residual + LN": lambda: torch.addmm(w.output_bias, inter, w.output_weight),
    }
    fns = {**ops, **{f"cublas {name}": fn for name, fn in cublas.items()},
           "layer": lambda: backend.layer(0, hidden, batch)}
    if fused.fused(0, batch):
        fns["fused layer"] = lambda: fused.layer(0, hidden, batch)
    timed = median_times(fns, repeats, warmup=2, flush_l2=True)
    ms = {name: t["ms"] for name, t in timed.items()}
    roofline = {r["op"]: r for r in layer_roofline(lengths, *shape, peaks=peaks, bytes_per_value=hidden.element_size())}
    common = {"shape": shape_name, "tokens": sum(lengths), "rows": len(lengths)}
    rows = []
    for name in ops:
        r, us = roofline[name], 1e3 * ms[name]
        rows.append({**common, "op": name, "us": us, "host_us": 1e3 * timed[name]["host_ms"], "roofline_us": r["us"],
                     "gflop": r["gflop"], "mbytes": r["mbytes"], "fraction_of_roofline": r["us"] / us,
                     "bound": r["bound"], "achieved_gb_per_s": r["mbytes"] * 1e3 / us,
                     "achieved_tflop_per_s": r["gflop"] * 1e3 / us})
        if f"cublas {name}" in ms:
            rows[-1]["cublas_addmm_us"] = 1e3 * ms[f"cublas {name}"]
    total_roofline = sum(r["us"] for r in roofline.values())
    layer_us = 1e3 * ms["layer"]
    rows.append({**common, "op": "layer (5 launches)", "us": layer_us, "host_us": 1e3 * timed["layer"]["host_ms"],
                 "roofline_us": total_roofline,
                 "fraction_of_roofline": total_roofline / layer_us, "sum_of_ops_us": sum(r["us"] for r in rows),
                 # the same layer and its exit head in one launch (kernels.encoder_layer_exit), None when the rule
                 # leaves this shape per-op
                 "fused_us": 1e3 * ms["fused layer"] if "fused layer" in ms else None,
                 "fused_host_us": 1e3 * timed["fused layer"]["host_ms"] if "fused layer" in ms else None})
    return rows


def environment(device) -> dict:
    """Python, torch, CUDA, triton and transformers versions and the GPU's name, memory and peaks."""
    import transformers
    import triton

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "triton": triton.__version__, "transformers": transformers.__version__}
    if torch.device(device).type == "cuda":
        props = torch.cuda.get_device_properties(device)
        key, flops, bandwidth = peaks_for(props.name)
        info.update(gpu=props.name, capability=f"{props.major}.{props.minor}", memory_gib=props.total_memory / 2**30,
                    multiprocessors=props.multi_processor_count,
                    roofline_peaks={"board": key, "fp16_tflop_per_s": flops / 1e12, "hbm_tb_per_s": bandwidth / 1e12})
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--repeats", type=int, default=10, help="interleaved rounds per cell (median reported)")
    parser.add_argument("--payload", type=Path, default=Path(__file__).resolve().parent / "gpu_payload",
                        help="GPU payload of bench/make_gpu_payload.py (real rows + checkpoint); optional")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"results JSON (default {RESULTS})")
    parser.add_argument("--roofline", action="store_true", help="print the roofline estimate and exit (no GPU needed)")
    parser.add_argument("--gpu", choices=sorted(PEAKS), default="H100", help="peaks of --roofline (default H100)")
    args = parser.parse_args()
    if args.roofline:
        print_roofline(max(args.batch_sizes), MAX_LENGTH, args.gpu)
        return
    if not torch.cuda.is_available():
        sys.exit("bench_gpu.py needs a CUDA GPU (torch.cuda.is_available() is False); "
                 "`python bench/bench_gpu.py --roofline` prints the estimate without one")
    from make_gpu_payload import load_payload
    from workloads import costeff_8x_config

    device = torch.device("cuda")
    payload = load_payload(args.payload) if (args.payload / "manifest.json").is_file() else None
    if payload is not None:
        row_sets = {"real": real_rows(payload.tokenizer, payload.texts),
                    str(MAX_LENGTH): full_rows(payload.tokenizer, payload.texts)}
    else:
        row_sets = {"synthetic 8-64": synthetic_rows(256, 30522, 8, 64),
                    str(MAX_LENGTH): synthetic_rows(256, 30522, MAX_LENGTH, MAX_LENGTH)}
    contenders, thresholds = build_contenders(device, torch.float16, bert_base_config(), costeff_8x_config(),
                                              payload.model if payload else None, next(iter(row_sets.values())))
    grid = throughput_grid(contenders, row_sets, args.batch_sizes, device, args.repeats)
    peaks = PEAKS[peaks_for(torch.cuda.get_device_name(device))[0]]
    kernels = [row for name, shape in KERNEL_SHAPES.items()
               for row in kernel_rows(name, shape, [MAX_LENGTH] * max(args.batch_sizes), device, torch.float16,
                                      peaks, args.repeats)]
    for row in grid:
        print(f"{row['rows']:>14s} {row['batch']:4d} {row['contender']:34s} {row['ms_per_batch']:9.2f} ms "
              f"{row['sentences_per_s']:12,.0f}/s  x{row['speedup_vs_hf_bert_sdpa']:.2f} vs HF")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "command": "python bench/bench_gpu.py " + " ".join(sys.argv[1:]), **environment(device),
        "payload": payload.manifest if payload else None, "thresholds": thresholds, "throughput": grid,
        "kernels": kernels,
    }, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()

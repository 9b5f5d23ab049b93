"""Entropy-threshold calibration: sweep thresholds with the batch engine, pick the fastest accurate one.

COST-EFF (Shen et al., EMNLP 2022, arXiv 2210.15523, Sec. 3.4) exits a row at the first layer whose softmax
entropy is below a threshold; this module chooses the threshold on the dev set.
"""

from __future__ import annotations

import time

import torch

from costeff_fast import CostEffForSequenceClassification, CostEffInferenceModel, exit_entropy
from costeff_fast.flops import model_flops

from .prediction import engine_predict, exit_logits, minibatches, predict


def quantile_thresholds(model: CostEffForSequenceClassification, tokenizer, batch: list, *, max_length: int,
                        count: int = 24, batch_size: int = 64) -> list[float]:
    """Thresholds (nats) at evenly spaced quantiles of the dev entropies of exits 1..L-1, plus 0 (no exit).

    Each step of the sweep then lets about ``1/count`` more of the early-exit decisions through, wherever the
    entropies concentrate (near ``ln C`` for weak exits, near 0 for confident ones).

    Args:
        model: the reference model (one full-depth padded forward per chunk gives every exit's entropy).
        tokenizer: its tokenizer; ``batch`` holds strings or ``(text, text_pair)`` tuples.
        max_length: truncation, as in inference (tokens).
        count: quantile levels are ``linspace(0, 1, count)`` without 0, so at most ``count - 1`` thresholds
            besides 0 (equal quantiles merge).
        batch_size: rows per forward.

    Returns:
        Ascending thresholds in nats, the first one 0.0.
    """
    logits = exit_logits(model, tokenizer, batch, batch_size=batch_size, max_length=max_length)  # [N, L, C]
    entropies = exit_entropy(logits[:, :-1]).flatten()  # [N * (L - 1)] fp32 nats
    levels = torch.linspace(0, 1, count, dtype=torch.float64)[1:]
    quantiles = torch.quantile(entropies.double(), levels)
    # Just above each quantile, so rows whose entropy equals it exit too (the rule is entropy < tau).
    return [0.0] + sorted({float(q) * (1 + 1e-6) + 1e-9 for q in quantiles})


@torch.inference_mode()
def threshold_sweep(model: CostEffInferenceModel, batch: list, labels: torch.Tensor, thresholds: list[float],
                    *, batch_size: int = 64) -> list[dict]:
    """Accuracy, mean exit layer, executed FLOPs and throughput per threshold, with the batch engine.

    Args:
        model: a packed model (:func:`costeff_fast.from_pretrained`).
        batch: the dev inputs (strings or ``(text, text_pair)`` tuples), run in chunks of ``batch_size``.
        labels: ``[N]`` int64 gold labels.
        thresholds: entropy thresholds in nats (one float applied at every layer).

    Returns:
        One dict per threshold: ``entropy_threshold``, ``accuracy`` (0-1), ``mean_exit_layer``,
        ``exit_layer_counts`` (rows per exit layer), ``gflops`` (executed matmul GFLOP for all N rows at their
        real lengths and exit layers, exit heads included), ``sentences_per_second``.
    """
    lengths = predict(lambda chunk: model.encode(chunk)[2], minibatches(batch, batch_size))  # [N] tokens
    rows = []
    for tau in thresholds:
        started = time.perf_counter()
        logits, layers = engine_predict(model, batch, batch_size, tau)
        seconds = time.perf_counter() - started
        counts = torch.bincount(layers, minlength=model.config.num_hidden_layers + 1)[1:]
        rows.append({
            "entropy_threshold": tau,
            "accuracy": (logits.argmax(-1) == labels).double().mean().item(),
            "mean_exit_layer": layers.double().mean().item(),
            "exit_layer_counts": counts.tolist(),
            "gflops": model_flops(model.config, lengths, layers) / 1e9,
            "sentences_per_second": len(batch) / seconds,
        })
    return rows


def pick_threshold(sweep: list[dict], reference_accuracy: float, max_drop: float = 0.01) -> dict:
    """The sweep row with the fewest executed FLOPs whose accuracy is at least ``reference_accuracy - max_drop``.

    Args:
        sweep: rows of :func:`threshold_sweep`.
        reference_accuracy: the teacher's dev accuracy (0-1).
        max_drop: allowed accuracy drop, as a fraction (0.01 = one point).

    Returns:
        The chosen row plus ``constraint_met``. When no threshold meets the constraint, the most accurate
        row (ties: fewest FLOPs) is returned with ``constraint_met = False``.

    Raises:
        ValueError: an empty sweep or a negative ``max_drop``.
    """
    if not sweep:
        raise ValueError("the threshold sweep is empty")
    if max_drop < 0:
        raise ValueError(f"max_drop must be >= 0, got {max_drop}")
    admissible = [row for row in sweep if row["accuracy"] >= reference_accuracy - max_drop - 1e-12]
    if admissible:
        return {**min(admissible, key=lambda row: (row["gflops"], -row["accuracy"])), "constraint_met": True}
    return {**max(sweep, key=lambda row: (row["accuracy"], -row["gflops"])), "constraint_met": False}

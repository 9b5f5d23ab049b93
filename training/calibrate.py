"""Entropy-threshold calibration: sweep thresholds with the batch engine, pick the fastest accurate one."""

from __future__ import annotations

import math
import time

import torch

from costeff_fast.flops import model_flops
from costeff_fast.inference import CostEffInferenceModel


def default_thresholds(num_labels: int, count: int = 24) -> list[float]:
    """``count`` thresholds from 0 (no early exit) to ``ln(num_labels)`` (every row exits at layer 1), nats.

    Spaced quadratically so small thresholds, where accuracy changes fastest, are sampled densely.
    """
    top = math.log(num_labels) * 1.0001
    return [top * (i / (count - 1)) ** 2 for i in range(count)]


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
    chunks = [batch[i : i + batch_size] for i in range(0, len(batch), batch_size)]
    lengths = torch.cat([model.encode(chunk)[2] for chunk in chunks])
    rows = []
    for tau in thresholds:
        started = time.perf_counter()
        outputs = [model.generate_logits(chunk, entropy_threshold=tau, return_exit_layers=True) for chunk in chunks]
        seconds = time.perf_counter() - started
        logits = torch.cat([o[0] for o in outputs])
        layers = torch.cat([o[1] for o in outputs])
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

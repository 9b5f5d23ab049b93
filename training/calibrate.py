"""Entropy-threshold calibration: sweep thresholds with the batch engine, pick the fastest accurate one.

COST-EFF (Shen et al., EMNLP 2022, arXiv 2210.15523, Sec. 3.4) exits a row at the first layer whose softmax
entropy is below a threshold; this module chooses the threshold on the dev set.
"""

from __future__ import annotations

import time

import torch

from costeff_fast import CostEffForSequenceClassification, CostEffEngineForSequenceClassification, exit_entropy
from costeff_fast.flops import exit_flops, layer_flops, model_flops

from .prediction import engine_predict, exit_logits, minibatches, predict


def quantile_thresholds(model: CostEffForSequenceClassification, tokenizer, batch: list, *, max_length: int,
                        count: int = 24, batch_size: int = 64, device=None) -> list[float]:
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
        device: where the forwards run (None: where the model is); fp32, no autocast.

    Returns:
        Ascending thresholds in nats, the first one 0.0.
    """
    logits = exit_logits(model, tokenizer, batch, batch_size=batch_size, max_length=max_length, device=device,
                         autocast=False)  # [N, L, C]
    entropies = exit_entropy(logits[:, :-1]).flatten()  # [N * (L - 1)] fp32 nats
    levels = torch.linspace(0, 1, count, dtype=torch.float64)[1:]
    quantiles = torch.quantile(entropies.double(), levels)
    # Just above each quantile, so rows whose entropy equals it exit too (the rule is entropy < tau).
    return [0.0] + sorted({float(q) * (1 + 1e-6) + 1e-9 for q in quantiles})


@torch.inference_mode()
def threshold_sweep(model: CostEffEngineForSequenceClassification, batch: list, labels: torch.Tensor, thresholds: list[float],
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


def pick_threshold_for_speedup(sweep: list[dict], full_depth_gflops: float, target_speedup: float) -> dict:
    """The most accurate sweep row whose executed FLOPs are at most ``full_depth_gflops / target_speedup``.

    Speedup is counted in executed matmul FLOPs against the same model at full depth (threshold 0), which is
    deterministic; measured sentences/s follow it but depend on the machine.

    Returns:
        The chosen row (ties: fewest FLOPs) plus ``constraint_met``; when no row is cheap enough, the cheapest
        row with ``constraint_met = False``.

    Raises:
        ValueError: an empty sweep or ``target_speedup < 1``.
    """
    if not sweep:
        raise ValueError("the threshold sweep is empty")
    if not target_speedup >= 1:
        raise ValueError(f"target_speedup must be >= 1 (times fewer FLOPs than full depth), got {target_speedup}")
    budget = full_depth_gflops / target_speedup * (1 + 1e-9)
    admissible = [row for row in sweep if row["gflops"] <= budget]
    if admissible:
        return {**max(admissible, key=lambda row: (row["accuracy"], -row["gflops"])), "constraint_met": True}
    return {**min(sweep, key=lambda row: (row["gflops"], -row["accuracy"])), "constraint_met": False}


class ExitTable:
    """Every exit's entropy and correctness for a set of rows, and the FLOPs of stopping each row at each layer,
    so any threshold vector is evaluated without running the model again.

    Early exit (COST-EFF Sec. 3.4): a row stops at the first layer ``l`` whose exit entropy is below
    ``thresholds[l]``, else at the last layer. Evaluated on full-depth exit logits this gives the engine's exit
    layers (the engine computes the same entropies; rows within float noise of a threshold may differ).

    Args:
        entropies: ``[N, L]`` fp32 nats, exit 1 first.
        correct: ``[N, L]`` bool, whether each exit's argmax equals the gold label.
        cumulative_flops: ``[N, L]`` float64, matmul FLOPs of running row ``n`` through layers ``1..l+1`` and
            their exit heads (:func:`costeff_fast.flops.layer_flops` + :func:`~costeff_fast.flops.exit_flops`).
    """

    def __init__(self, entropies: torch.Tensor, correct: torch.Tensor, cumulative_flops: torch.Tensor):
        if not entropies.shape == correct.shape == cumulative_flops.shape or entropies.dim() != 2:
            raise ValueError(f"entropies, correct and cumulative_flops must share one [N, L] shape, got "
                             f"{tuple(entropies.shape)}, {tuple(correct.shape)}, {tuple(cumulative_flops.shape)}")
        self.entropies, self.correct, self.cumulative_flops = entropies.float(), correct.bool(), cumulative_flops.double()

    @classmethod
    def build(cls, exit_logits: torch.Tensor, labels: torch.Tensor, lengths: torch.Tensor, config) -> "ExitTable":
        """From full-depth exit logits ``[N, L, C]``, gold labels ``[N]`` and real token counts ``[N]``."""
        num_layers = exit_logits.shape[1]
        entropies = exit_entropy(exit_logits)  # [N, L] fp32
        correct = exit_logits.argmax(-1) == labels[:, None]
        per_length = {}
        for n in set(lengths.tolist()):
            steps = [layer_flops(config, layer, n) + exit_flops(config, layer) for layer in range(num_layers)]
            per_length[n] = torch.tensor(steps, dtype=torch.float64).cumsum(0)
        cumulative = torch.stack([per_length[n] for n in lengths.tolist()])
        return cls(entropies, correct, cumulative)

    def __len__(self) -> int:
        return self.entropies.shape[0]

    def subset(self, rows: torch.Tensor) -> "ExitTable":
        return ExitTable(self.entropies[rows], self.correct[rows], self.cumulative_flops[rows])

    def exit_layers(self, thresholds) -> torch.Tensor:
        """``[N]`` int64 1-based exit layers for one threshold (float) or one per layer (the last one unused)."""
        num_layers = self.entropies.shape[1]
        tau = torch.as_tensor(thresholds, dtype=torch.float32).expand(num_layers).clone()
        tau[-1] = float("inf")  # the last layer always answers
        exits = self.entropies < tau
        return exits.float().argmax(dim=1) + 1  # argmax: the first True (the last column is always True)

    def evaluate(self, thresholds) -> dict:
        """``accuracy`` (0-1), ``gflops`` (total over the rows) and ``mean_exit_layer`` of a threshold setting."""
        layers = self.exit_layers(thresholds)
        rows = torch.arange(len(self))
        return {
            "accuracy": self.correct[rows, layers - 1].double().mean().item(),
            "gflops": self.cumulative_flops[rows, layers - 1].sum().item() / 1e9,
            "mean_exit_layer": layers.double().mean().item(),
        }

    def candidates(self, layer: int, count: int = 48) -> list[float]:
        """Threshold values worth trying at ``layer`` (0-based): 0 and just above ``count`` quantiles of its
        entropies (each lets about ``1/count`` more of the rows exit there)."""
        levels = torch.linspace(0, 1, count + 1, dtype=torch.float64)[1:]
        quantiles = torch.quantile(self.entropies[:, layer].double(), levels)
        return [0.0] + sorted({float(q) * (1 + 1e-6) + 1e-9 for q in quantiles})


def _better(candidate: dict, best: dict, *, min_accuracy: float | None, max_gflops: float | None) -> bool:
    """Whether ``candidate`` beats ``best`` under the constraint: fewer FLOPs at ``accuracy >= min_accuracy``,
    or higher accuracy at ``gflops <= max_gflops``."""
    if min_accuracy is not None:
        if candidate["accuracy"] < min_accuracy - 1e-12:
            return False
        return (candidate["gflops"], -candidate["accuracy"]) < (best["gflops"], -best["accuracy"])
    if candidate["gflops"] > max_gflops * (1 + 1e-9):
        return False
    return (-candidate["accuracy"], candidate["gflops"]) < (-best["accuracy"], best["gflops"])


def per_layer_thresholds(table: ExitTable, start: list[float], *, min_accuracy: float | None = None,
                         max_gflops: float | None = None, passes: int = 4, count: int = 48) -> tuple[list[float], dict]:
    """One entropy threshold per exit, chosen by coordinate descent on ``table`` from the vector ``start``.

    Each pass visits layers 1..L-1 and sets each one's threshold to the candidate (:meth:`ExitTable.candidates`)
    that best meets the goal with the others fixed: the fewest FLOPs with accuracy at least ``min_accuracy``
    (``--max-drop``), or the highest accuracy within ``max_gflops`` (``--target-speedup``). Starting from the best
    single threshold, the result is never worse than it on ``table``'s rows.

    Returns:
        ``(thresholds, evaluation)``: ``L`` floats (the last layer's is unused and set to 0) and
        :meth:`ExitTable.evaluate` of them.

    Raises:
        ValueError: not exactly one of ``min_accuracy`` and ``max_gflops``, or ``start`` of the wrong length.
    """
    if (min_accuracy is None) == (max_gflops is None):
        raise ValueError("pass exactly one of min_accuracy and max_gflops")
    num_layers = table.entropies.shape[1]
    if len(start) != num_layers:
        raise ValueError(f"start has {len(start)} thresholds for {num_layers} layers")
    current = [float(t) for t in start[:-1]] + [0.0]
    best = table.evaluate(current)
    for _ in range(passes):
        changed = False
        for layer in range(num_layers - 1):
            for value in table.candidates(layer, count):
                trial = current.copy()
                trial[layer] = value
                result = table.evaluate(trial)
                if _better(result, best, min_accuracy=min_accuracy, max_gflops=max_gflops):
                    current, best, changed = trial, result, True
        if not changed:
            break
    return current, best


def single_threshold_curve(table: ExitTable, count: int = 48) -> list[dict]:
    """:meth:`ExitTable.evaluate` of one threshold shared by every layer, at 0 and the quantiles of all exits'
    entropies (layers 1..L-1), ascending."""
    levels = torch.linspace(0, 1, count + 1, dtype=torch.float64)[1:]
    quantiles = torch.quantile(table.entropies[:, :-1].double().flatten(), levels)
    values = [0.0] + sorted({float(q) * (1 + 1e-6) + 1e-9 for q in quantiles})
    return [{"entropy_threshold": tau, **table.evaluate(tau)} for tau in values]


def accuracy_at_flops(curve: list[dict], gflops: float) -> float | None:
    """The best accuracy of ``curve`` rows within ``gflops`` (None when every row costs more)."""
    within = [row["accuracy"] for row in curve if row["gflops"] <= gflops * (1 + 1e-9)]
    return max(within) if within else None


def compare_per_layer(table: ExitTable, *, max_drop: float | None, target_speedup: float | None,
                      reference_accuracy: float | None, folds: int = 2, seed: int = 0) -> dict:
    """Whether per-layer thresholds beat one shared threshold at equal FLOPs, on the rows they were chosen on
    and on held-out rows.

    For each of ``folds`` seeded halves: the single threshold and the per-layer vector are chosen on the other
    rows (same goal as calibration: ``max_drop`` below ``reference_accuracy`` — the chosen rows' own full-depth
    accuracy when None — or ``target_speedup`` times fewer FLOPs than full depth) and scored on the held-out half;
    per-layer "beats" single when its held-out accuracy exceeds the best single threshold's held-out accuracy at no
    more FLOPs.

    Returns:
        ``{"held_out": [per fold: single and per_layer (accuracy, gflops per row), single_accuracy_at_equal_flops,
        beats_single], "beats_single_held_out": count of folds}``.
    """
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(table), generator=generator)
    parts = [order[i::folds] for i in range(folds)]
    results = []
    for index, held in enumerate(parts):
        chosen_rows = torch.cat([part for i, part in enumerate(parts) if i != index])
        choose, test = table.subset(chosen_rows), table.subset(held)
        single, vector = choose_thresholds(choose, max_drop=max_drop, target_speedup=target_speedup,
                                           reference_accuracy=reference_accuracy)
        single_test, vector_test = test.evaluate(single["entropy_threshold"]), test.evaluate(vector)
        at_equal = accuracy_at_flops(single_threshold_curve(test), vector_test["gflops"])
        results.append({
            "rows": len(test),
            "single": {"entropy_threshold": single["entropy_threshold"], "accuracy": single_test["accuracy"],
                       "gflops_per_row": single_test["gflops"] / len(test)},
            "per_layer": {"entropy_threshold": vector, "accuracy": vector_test["accuracy"],
                          "gflops_per_row": vector_test["gflops"] / len(test)},
            "single_accuracy_at_equal_flops": at_equal,
            "beats_single": at_equal is None or vector_test["accuracy"] > at_equal + 1e-12,
        })
    return {"held_out": results, "beats_single_held_out": sum(r["beats_single"] for r in results)}


def choose_thresholds(table: ExitTable, *, max_drop: float | None, target_speedup: float | None,
                      reference_accuracy: float | None) -> tuple[dict, list[float]]:
    """The best single threshold (a :func:`single_threshold_curve` row, with ``constraint_met``) and the per-layer
    vector :func:`per_layer_thresholds` reaches from it, for one goal: ``max_drop`` below ``reference_accuracy``
    (None: the table's full-depth accuracy) or ``target_speedup`` times fewer FLOPs than full depth."""
    curve = single_threshold_curve(table)
    layers = table.entropies.shape[1]
    if target_speedup is not None:
        single = pick_threshold_for_speedup(curve, curve[0]["gflops"], target_speedup)
        max_gflops = curve[0]["gflops"] / target_speedup if single["constraint_met"] else single["gflops"]
        vector, _ = per_layer_thresholds(table, [single["entropy_threshold"]] * layers, max_gflops=max_gflops)
    else:
        reference = curve[0]["accuracy"] if reference_accuracy is None else reference_accuracy
        single = pick_threshold(curve, reference, max_drop)
        min_accuracy = reference - max_drop if single["constraint_met"] else single["accuracy"]
        vector, _ = per_layer_thresholds(table, [single["entropy_threshold"]] * layers, min_accuracy=min_accuracy)
    return single, vector

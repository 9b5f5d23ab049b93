"""Entropy-threshold calibration: sweep thresholds with the batch engine, pick the fastest accurate one.

COST-EFF (Shen et al., EMNLP 2022, arXiv 2210.15523, Sec. 3.4) exits a row at the first layer whose softmax
entropy is below a threshold; this module chooses the threshold on the dev set.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from costeff_fast import CostEffForSequenceClassification, CostEffEngineForSequenceClassification, exit_entropy
from costeff_fast.flops import cumulative_flops

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


@dataclass(frozen=True)
class SweepOutcomes:
    """What the batch engine did with every dev row at every threshold setting of a sweep, so that a threshold
    chosen on some rows can be scored on the others without running the model again (:func:`cross_validate`).

    Attributes:
        thresholds: the ``T`` settings swept, in nats (a float for every layer, or one per layer).
        correct: ``[T, N]`` bool, whether the engine's prediction for row ``n`` at setting ``t`` is the gold label.
        exit_layers: ``[T, N]`` int64, 1-based exit layer of each row at each setting.
        row_flops: ``[T, N]`` float64 executed matmul FLOPs of each row to its exit (exit heads included, real
            lengths; :func:`costeff_fast.flops.cumulative_flops`).
        full_depth_flops: ``[N]`` float64, each row's FLOPs through every layer (the ``target_speedup`` base).
        seconds: ``T`` engine wall-clock seconds over all ``N`` rows, one per setting (None for a :meth:`subset`).
        num_layers: the model's layers ``L`` (the deepest model's, for outcomes of several models joined by
            :meth:`concat`).
        points: for outcomes of several models (a front of widths), the model of each setting (its name), else
            None.
    """

    thresholds: list
    correct: torch.Tensor
    exit_layers: torch.Tensor
    row_flops: torch.Tensor
    full_depth_flops: torch.Tensor
    seconds: list[float] | None
    num_layers: int
    points: list[str] | None = None

    @classmethod
    def concat(cls, named: dict[str, "SweepOutcomes"]) -> "SweepOutcomes":
        """The settings of several models' sweeps over the same rows as one sweep (``{name: outcomes}``), each
        setting labelled with its model's name; ``full_depth_flops`` is the first model's."""
        parts = list(named.values())
        if len({part.num_rows for part in parts}) != 1:
            raise ValueError("outcomes to join must cover the same rows")
        return cls([t for part in parts for t in part.thresholds], torch.cat([p.correct for p in parts]),
                   torch.cat([p.exit_layers for p in parts]), torch.cat([p.row_flops for p in parts]),
                   parts[0].full_depth_flops,
                   None if any(p.seconds is None for p in parts) else [x for p in parts for x in p.seconds],
                   max(p.num_layers for p in parts),
                   [name for name, part in named.items() for _ in part.thresholds])

    @property
    def num_rows(self) -> int:
        return self.correct.shape[1]

    def summary(self, subset: torch.Tensor | None = None) -> list[dict]:
        """Per setting only what the pickers read, over the rows ``subset`` (``[M]`` distinct int64 indices; None: all):
        ``setting`` (its index), ``entropy_threshold``, ``accuracy`` (0-1), ``gflops`` (total over those rows) and
        ``point`` (for several models). The same figures as :meth:`rows`, for all settings at once: nested
        cross-validation picks thousands of times."""
        # sums as products with a 0/1 row mask: exact (0/1 and whole FLOP counts in float64) and about 40x faster
        # than gathering the columns
        mask = torch.ones(self.num_rows, dtype=torch.float64)
        if subset is not None:
            mask = torch.zeros(self.num_rows, dtype=torch.float64).index_fill_(0, subset, 1.0)
        accuracy = (self.correct.to(torch.float64) @ mask / mask.sum()).tolist()
        gflops = (self.row_flops @ mask / 1e9).tolist()
        return [{"setting": t, **({} if self.points is None else {"point": self.points[t]}), "entropy_threshold": tau,
                 "accuracy": accuracy[t], "gflops": gflops[t]} for t, tau in enumerate(self.thresholds)]

    def subset(self, rows: torch.Tensor) -> "SweepOutcomes":
        """The same settings over the rows ``rows`` only (``[M]`` int64 indices), in that order, without timings
        (``seconds`` None: the engine timed all rows together)."""
        return SweepOutcomes(self.thresholds, self.correct[:, rows], self.exit_layers[:, rows],
                             self.row_flops[:, rows], self.full_depth_flops[rows], None, self.num_layers,
                             self.points)

    def rows(self, subset: torch.Tensor | None = None) -> list[dict]:
        """One :func:`threshold_sweep` dict per setting over the rows ``subset`` (``[M]`` int64 indices; None: all
        rows). ``sentences_per_second`` is given for all rows of timed outcomes only (the engine timed them
        together)."""
        index = torch.arange(self.num_rows) if subset is None else subset
        result = []
        for t, tau in enumerate(self.thresholds):
            layers = self.exit_layers[t, index]
            row = {} if self.points is None else {"point": self.points[t]}
            row |= {
                "entropy_threshold": tau,
                "accuracy": self.correct[t, index].double().mean().item(),
                "mean_exit_layer": layers.double().mean().item(),
                "exit_layer_counts": torch.bincount(layers, minlength=self.num_layers + 1)[1:].tolist(),
                "gflops": self.row_flops[t, index].sum().item() / 1e9,
            }
            if subset is None and self.seconds is not None:
                row["sentences_per_second"] = self.num_rows / self.seconds[t]
            result.append(row)
        return result


@torch.inference_mode()
def engine_sweep(model: CostEffEngineForSequenceClassification, batch: list, labels: torch.Tensor, thresholds: list,
                 *, batch_size: int = 64) -> SweepOutcomes:
    """Run the batch engine over ``batch`` once per threshold setting and keep every row's outcome.

    Args:
        model: a packed model (:func:`costeff_fast.from_pretrained`).
        batch: the dev inputs (strings or ``(text, text_pair)`` tuples), run in chunks of ``batch_size``.
        labels: ``[N]`` int64 gold labels.
        thresholds: entropy thresholds in nats (each a float for every layer, or one per layer).

    Returns:
        :class:`SweepOutcomes` of the ``T`` settings.
    """
    lengths = predict(lambda chunk: model.encode(chunk)[2], minibatches(batch, batch_size))  # [N] tokens
    cumulative = cumulative_flops(model.config, lengths)  # [N, L] float64
    correct, exit_layers, row_flops, seconds = [], [], [], []
    for tau in thresholds:
        started = time.perf_counter()
        logits, layers = engine_predict(model, batch, batch_size, tau)
        seconds.append(time.perf_counter() - started)
        correct.append(logits.argmax(-1) == labels)
        exit_layers.append(layers)
        row_flops.append(cumulative[torch.arange(len(batch)), layers - 1])
    return SweepOutcomes(list(thresholds), torch.stack(correct), torch.stack(exit_layers), torch.stack(row_flops),
                         cumulative[:, -1].clone(), seconds, model.config.num_hidden_layers)


def threshold_sweep(model: CostEffEngineForSequenceClassification, batch: list, labels: torch.Tensor, thresholds: list,
                    *, batch_size: int = 64) -> list[dict]:
    """Accuracy, mean exit layer, executed FLOPs and throughput per threshold, with the batch engine.

    Args:
        model: a packed model (:func:`costeff_fast.from_pretrained`).
        batch: the dev inputs (strings or ``(text, text_pair)`` tuples), run in chunks of ``batch_size``.
        labels: ``[N]`` int64 gold labels.
        thresholds: entropy thresholds in nats (a float for every layer, or one per layer).

    Returns:
        One dict per threshold: ``entropy_threshold``, ``accuracy`` (0-1), ``mean_exit_layer``,
        ``exit_layer_counts`` (rows per exit layer), ``gflops`` (executed matmul GFLOP for all N rows at their
        real lengths and exit layers, exit heads included), ``sentences_per_second``.
    """
    return engine_sweep(model, batch, labels, thresholds, batch_size=batch_size).rows()


def pick_threshold(sweep: list[dict], reference_accuracy: float, max_drop: float = 0.01, margin: float = 0.0) -> dict:
    """The sweep row with the fewest executed FLOPs whose accuracy is at least
    ``reference_accuracy - max_drop + margin``.

    Args:
        sweep: rows of :func:`threshold_sweep`.
        reference_accuracy: the teacher's dev accuracy (0-1).
        max_drop: allowed accuracy drop, as a fraction (0.01 = one point).
        margin: accuracy (a fraction) the choice keeps in hand above the goal on these rows, so that it still
            meets the goal on new rows (:func:`choose_margin`); 0 takes the cheapest row that meets the goal here.

    Returns:
        The chosen row plus ``constraint_met`` (its accuracy meets ``reference_accuracy - max_drop`` on these
        rows). When no row clears the goal plus ``margin``, the most accurate row (ties: fewest FLOPs) is returned:
        it meets the goal if any row does.

    Raises:
        ValueError: an empty sweep, a negative ``max_drop`` or a negative ``margin``.
    """
    if not sweep:
        raise ValueError("the threshold sweep is empty")
    if max_drop < 0:
        raise ValueError(f"max_drop must be >= 0, got {max_drop}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    admissible = [row for row in sweep if row["accuracy"] >= reference_accuracy - max_drop + margin - 1e-12]
    if admissible:
        row = min(admissible, key=lambda row: (row["gflops"], -row["accuracy"]))
    else:
        row = max(sweep, key=lambda row: (row["accuracy"], -row["gflops"]))
    return {**row, "constraint_met": row["accuracy"] >= reference_accuracy - max_drop - 1e-12}


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


def pick_for_goal(sweep: list[dict], *, reference_accuracy: float, full_depth_gflops: float,
                  max_drop: float | None = None, target_speedup: float | None = None, margin: float = 0.0) -> dict:
    """:func:`pick_threshold` for a ``max_drop`` goal (below ``reference_accuracy``, keeping ``margin`` in hand),
    :func:`pick_threshold_for_speedup` for a ``target_speedup`` goal (against ``full_depth_gflops``, the same rows
    at full depth; FLOPs are counted, not estimated, so no margin applies).

    Raises:
        ValueError: not exactly one goal, or what the picker raises.
    """
    if (max_drop is None) == (target_speedup is None):
        raise ValueError("pass exactly one of max_drop and target_speedup")
    if target_speedup is not None:
        return pick_threshold_for_speedup(sweep, full_depth_gflops, target_speedup)
    return pick_threshold(sweep, reference_accuracy, max_drop, margin)


def fold_indices(num_rows: int, folds: int, seed: int = 0) -> list[torch.Tensor]:
    """``min(folds, num_rows)`` disjoint folds covering ``range(num_rows)``: a seeded permutation dealt round-robin,
    so fold sizes differ by at most one; each fold ``[M]`` int64, ascending.

    Raises:
        ValueError: fewer than two rows or ``folds < 2``.
    """
    if num_rows < 2:
        raise ValueError(f"cross-validation needs at least two rows, got {num_rows}")
    if folds < 2:
        raise ValueError(f"cross-validation needs at least two folds, got {folds}")
    order = torch.randperm(num_rows, generator=torch.Generator().manual_seed(seed))
    return [order[i::min(folds, num_rows)].sort().values for i in range(min(folds, num_rows))]


def score_choice(correct: torch.Tensor, row_flops: torch.Tensor, exit_layers: torch.Tensor, *,
                 reference_correct: torch.Tensor, full_depth_flops: torch.Tensor, max_drop: float | None = None,
                 target_speedup: float | None = None) -> dict:
    """Accuracy, FLOPs and goal of one outcome per row (``[N]`` bool correct, ``[N]`` float64 FLOPs, ``[N]``
    int64 1-based exit layers), against the reference's ``[N]`` bool correctness and the rows' ``[N]`` full-depth
    FLOPs. ``goal_met``: accuracy at least the reference's minus ``max_drop``, or FLOPs at most full depth's over
    ``target_speedup``. ``drop`` is the reference's accuracy minus this one (a fraction) and ``drop_standard_error``
    its standard error over these rows, paired (both scored on the same rows: the sample standard deviation of the
    per-row differences over the square root of N; 0 for one row), so a goal missed or met by less than about two
    of them is within what another draw of rows could change."""
    accuracy = correct.double().mean().item()
    reference = reference_correct.double().mean().item()
    differences = reference_correct.double() - correct.double()  # [N] in {-1, 0, 1}
    spread = differences.std().item() if len(differences) > 1 else 0.0
    gflops, full = row_flops.sum().item() / 1e9, full_depth_flops.sum().item() / 1e9
    if target_speedup is not None:
        met = gflops <= full / target_speedup * (1 + 1e-9)
    else:
        met = accuracy >= reference - max_drop - 1e-12
    return {"rows": len(correct), "accuracy": accuracy, "reference_accuracy": reference, "drop": reference - accuracy,
            "drop_standard_error": spread / len(correct) ** 0.5, "gflops": gflops,
            "gflops_per_row": gflops / len(correct), "speedup_flops": full / gflops,
            "mean_exit_layer": exit_layers.double().mean().item(), "goal_met": met}


MARGINS = tuple(i / 400 for i in range(9))
"""The margins :func:`choose_margin` tries: 0 to 2 points of accuracy in quarter points."""


def cross_validate(outcomes: SweepOutcomes, *, reference_correct: torch.Tensor, max_drop: float | None = None,
                   target_speedup: float | None = None, base_flops: torch.Tensor | None = None, folds: int = 5,
                   seed: int = 0, margin: float | str = 0.0, margins: tuple[float, ...] = MARGINS) -> dict:
    """Out-of-sample accuracy and FLOPs of choosing one entropy threshold on the dev rows, by k-fold
    cross-validation (e.g. Hastie, Tibshirani & Friedman, *The Elements of Statistical Learning*, Sec. 7.10).

    The rows are dealt into ``folds`` folds (:func:`fold_indices`). Each fold's threshold is picked from the sweep
    (:func:`pick_for_goal`) on the *other* folds' rows, against the reference's accuracy on those rows, and applied
    to the fold's own rows; so every row is scored exactly once, by a threshold chosen without it. The pooled
    figures estimate what the threshold chosen on all rows does on new rows like them; the accuracy of that
    threshold on the rows it was chosen on is optimistic by construction (it is the best of many on them).

    Args:
        outcomes: the engine's sweep over the ``N`` dev rows (:func:`engine_sweep`).
        reference_correct: ``[N]`` bool, the reference's correctness per row (the teacher's, or the model's own
            at full depth); ``max_drop`` counts from its accuracy.
        max_drop, target_speedup: the goal, exactly one (as in :func:`pick_for_goal`).
        base_flops: ``[N]`` float64, the per-row FLOPs ``target_speedup`` counts against (default: the model's own
            at full depth, ``outcomes.full_depth_flops``; compress passes the teacher's).
        folds: number of folds (at most ``N``); seed: seed of the deal.
        margin: the ``max_drop`` choice's margin (:func:`pick_threshold`), or ``"auto"``: each fold's margin is
            itself chosen by :func:`choose_margin` (over ``margins``) on the other folds' rows only, so the pooled
            figures are those of the whole procedure, margin choice included (nested cross-validation).

    Returns:
        :func:`score_choice` of the pooled out-of-sample outcomes plus ``method``, ``folds``, ``seed``,
        ``chosen_on``, ``scored_on`` (in words) and ``per_fold`` (each fold's rows, threshold, margin, whether it
        met the goal on the rows that chose it, and its accuracy and GFLOPs per row on its own rows).

    Raises:
        ValueError: fewer than two rows or folds, ``reference_correct`` not ``[N]``, not exactly one goal, or a
            negative or unknown ``margin``.
    """
    n = outcomes.num_rows
    if tuple(reference_correct.shape) != (n,):
        raise ValueError(f"reference_correct must be [{n}], got {tuple(reference_correct.shape)}")
    if isinstance(margin, str) and margin != "auto":
        raise ValueError(f"margin must be a fraction >= 0 or 'auto', got {margin!r}")
    base = outcomes.full_depth_flops if base_flops is None else base_flops
    parts = fold_indices(n, folds, seed)
    choice = torch.empty(n, dtype=torch.long)
    per_fold = []
    for index, held in enumerate(parts):
        rest = torch.cat([part for i, part in enumerate(parts) if i != index])
        fold_margin = margin
        if margin == "auto":
            fold_margin = 0.0 if max_drop is None else choose_margin(
                outcomes.subset(rest), reference_correct=reference_correct[rest], max_drop=max_drop,
                folds=len(parts), seed=seed, margins=margins)["margin"]
        pick = pick_for_goal(outcomes.summary(rest), reference_accuracy=reference_correct[rest].double().mean().item(),
                             full_depth_gflops=base[rest].sum().item() / 1e9,
                             max_drop=max_drop, target_speedup=target_speedup, margin=fold_margin)
        t = pick["setting"]
        choice[held] = t
        per_fold.append({"rows": len(held), **({} if outcomes.points is None else {"point": pick["point"]}),
                         "entropy_threshold": pick["entropy_threshold"], "margin": fold_margin,
                         "goal_met_on_choice_rows": pick["constraint_met"],
                         "accuracy": outcomes.correct[t, held].double().mean().item(),
                         "gflops_per_row": outcomes.row_flops[t, held].mean().item() / 1e9})
    rows = torch.arange(n)
    result = score_choice(outcomes.correct[choice, rows], outcomes.row_flops[choice, rows],
                          outcomes.exit_layers[choice, rows], reference_correct=reference_correct,
                          full_depth_flops=base, max_drop=max_drop, target_speedup=target_speedup)
    how = "threshold" if margin == 0 or max_drop is None else (
        "margin (by cross-validation within those rows) and threshold" if margin == "auto"
        else f"threshold at margin {margin:g}")
    return {**result, "method": f"{len(parts)}-fold cross-validation", "folds": len(parts), "seed": seed,
            "margin": margin if max_drop is not None else None,
            "chosen_on": f"each fold's {how} on the other {len(parts) - 1} folds' rows",
            "scored_on": "each fold's own rows (every dev row scored once, by a choice made without it)",
            "per_fold": per_fold}


def choose_margin(outcomes: SweepOutcomes, *, reference_correct: torch.Tensor, max_drop: float,
                  margins: tuple[float, ...] = MARGINS, folds: int = 5, seed: int = 0) -> dict:
    """The smallest margin whose choice meets a ``max_drop`` goal out of sample, by k-fold cross-validation.

    Choosing the cheapest of many (width, threshold) settings whose dev accuracy clears the goal favours the ones
    whose accuracy happens to be high on these rows: on new rows the choice lands below the goal (on rt at the
    quick budget, 0.70 points under the teacher in sample and 1.49 out of sample with ``max_drop=0.01``). Keeping
    a margin in hand trades some speed for a choice that holds. For each margin (ascending),
    :func:`cross_validate` scores the choice at that margin; the first whose pooled out-of-sample accuracy meets
    the goal wins. When none does, the margin with the highest out-of-sample accuracy (ties: the smaller) is
    returned with ``goal_met`` False. Fewer than two rows cannot be cross-validated: the smallest margin is returned
    with ``goal_met`` None and no candidates.

    Args:
        outcomes, reference_correct, folds, seed: as in :func:`cross_validate`.
        max_drop: the goal (a fraction; 0.01 = one point).
        margins: candidate margins (fractions >= 0), tried in ascending order.

    Returns:
        ``{"margin", "goal_met", "candidates"}``, ``candidates`` one dict per margin with its cross-validated
        ``accuracy``, ``gflops_per_row`` and ``goal_met``.

    Raises:
        ValueError: an empty ``margins`` or a negative one, or what :func:`cross_validate` raises.
    """
    if not margins or min(margins) < 0:
        raise ValueError(f"margins must be a non-empty list of fractions >= 0, got {margins}")
    if outcomes.num_rows < 2:
        return {"margin": min(margins), "goal_met": None, "candidates": []}
    candidates = []
    for margin in sorted(set(margins)):
        held = cross_validate(outcomes, reference_correct=reference_correct, max_drop=max_drop, folds=folds,
                              seed=seed, margin=margin)
        candidates.append({"margin": margin, "accuracy": held["accuracy"], "gflops_per_row": held["gflops_per_row"],
                           "goal_met": held["goal_met"]})
    met = [c for c in candidates if c["goal_met"]]
    best = met[0] if met else max(candidates, key=lambda c: (c["accuracy"], -c["margin"]))
    return {"margin": best["margin"], "goal_met": best["goal_met"], "candidates": candidates}


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
        entropies = exit_entropy(exit_logits)  # [N, L] fp32
        correct = exit_logits.argmax(-1) == labels[:, None]
        return cls(entropies, correct, cumulative_flops(config, lengths))

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

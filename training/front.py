"""A front of widths from one compress run: the slenderization path stopped at chosen fractions of the teacher.

COST-EFF's slenderization (Shen et al., EMNLP 2022, arXiv 2210.15523, Sec. 3.2) is progressive: pruning events
narrow the model step by step from the TA's widths to the target. Stopping along that path at chosen fractions of
the teacher's encoder gives checkpoints of several widths for the price of one path; each is recovered and
calibrated, and the compress goal (``--max-drop``, ``--target-speedup``) then picks the (width, threshold) pair
(issue 31 item 1). This module plans the points and splits the pruning events between the path's segments.

Size is counted in encoder matmul weights per layer, ``4 * hidden * (heads * head_size) + 2 * hidden * ffn``
(Q, K, V, output; FFN in and out), the quantity the engine's per-token FLOPs follow (attention scores add a
length-dependent term the report counts separately).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .calibrate import SweepOutcomes, choose_margin, cross_validate, pick_for_goal


@dataclass(frozen=True)
class FrontPoint:
    """One width of the front: per-layer ``heads`` and ``ffn`` (the mean per layer under global allocation),
    ``embedding_rank`` (None: the embedding as it is), the ``fraction`` of the teacher's encoder matmul weights
    these widths keep, the ``fraction_asked`` (None for the final target) and the ``events`` of the segment that
    reaches it from the previous point (None: one per removed head, :func:`~.schedule.plan_events`)."""

    heads: int
    ffn: int
    embedding_rank: int | None
    fraction: float
    fraction_asked: float | None
    events: int | None

    @property
    def name(self) -> str:
        rank = "" if self.embedding_rank is None else f"-r{self.embedding_rank}"
        return f"h{self.heads}-f{self.ffn}{rank}"

    def to_dict(self) -> dict:
        return {**asdict(self), "name": self.name}


def encoder_fraction(hidden_size: int, head_size: int, heads: float, ffn: float, teacher_heads: float,
                     teacher_ffn: float) -> float:
    """Encoder matmul weights per layer at (``heads``, ``ffn``) over the teacher's at (``teacher_heads``,
    ``teacher_ffn``), same ``hidden_size`` and ``head_size``."""
    def weights(h, f):
        return 4 * hidden_size * h * head_size + 2 * hidden_size * f

    return weights(heads, ffn) / weights(teacher_heads, teacher_ffn)


def plan_front(*, hidden_size: int, head_size: int, teacher_heads: int, teacher_ffn: int, heads: int, ffn: int,
               embedding_rank: int | None, teacher_rank: int, fractions, num_events: int | None) -> list[FrontPoint]:
    """The front's points, widest first, ending with the target (``heads``, ``ffn``, ``embedding_rank``).

    A fraction ``f`` becomes the point ``t = (1 - f) / (1 - f_target)`` of the way along the linear path from the
    teacher's widths to the target's (the path the pruning schedule follows): heads rounded to the nearest
    integer there, then the FFN width that brings the encoder to ``f`` with those heads (clamped to the path's
    range), and the embedding rank interpolated at ``t``. The pruning events are split between the segments in
    proportion to their share of the path (at least one each); with ``num_events`` None every segment takes
    :func:`~costeff_fast.training.schedule.plan_events`' default (one event per removed head).

    Args:
        hidden_size, head_size: of the teacher (and so of every point).
        teacher_heads, teacher_ffn, teacher_rank: the starting widths (the TA's, equal to the teacher's).
        heads, ffn, embedding_rank: the target, the last point.
        fractions: fractions of the teacher's encoder matmul weights, each strictly between the target's and 1;
            the target's own fraction, or one whose widths round to the target's, names the target and adds no
            point (``--front 0.5,0.25,0.125`` with ``--heads 2 --ffn 160`` of MiniLM's 12 / 1536).
        num_events: the events of the whole path (None: one per removed head).

    Returns:
        The points, in decreasing width; the last one is the target (``fraction_asked`` None).

    Raises:
        ValueError: (one line naming ``--front`` as given and the fix) a fraction outside (target's fraction, 1)
            other than the target's own, two fractions that land on the same widths, or a repeated fraction.
    """
    target_fraction = encoder_fraction(hidden_size, head_size, heads, ffn, teacher_heads, teacher_ffn)
    asked = [float(f) for f in fractions]
    if len(set(asked)) != len(asked):
        raise ValueError(f"--front {_listing(asked)}: a fraction is repeated; give each once")

    def planned(f: float) -> tuple:
        t = (1 - f) / (1 - target_fraction)
        point_heads = min(max(round(teacher_heads - t * (teacher_heads - heads)), heads), teacher_heads)
        attention = 4 * hidden_size * point_heads * head_size
        total = f * (4 * hidden_size * teacher_heads * head_size + 2 * hidden_size * teacher_ffn)
        point_ffn = min(max(round((total - attention) / (2 * hidden_size)), ffn), teacher_ffn)
        rank = None if embedding_rank is None else round(teacher_rank - t * (teacher_rank - embedding_rank))
        return t, f, point_heads, point_ffn, rank

    points = []
    for f in sorted(asked, reverse=True):
        if abs(f - target_fraction) <= 1e-9:
            continue  # the target's own size, as given (0.125)
        if not target_fraction < f < 1:
            raise ValueError(
                f"--front {_listing(asked)}: {f:g} is not between the target's size ({target_fraction:.4f} of the "
                f"teacher's encoder at --heads {heads} --ffn {ffn}) and 1; pass fractions in that range")
        point = planned(f)
        if point[2:4] != (heads, ffn):  # one that rounds to the target's widths names the target too
            points.append(point)
    points.append((1.0, None, heads, ffn, embedding_rank))
    widths = [(h, fw) for _, _, h, fw, _ in points]
    for (a, b) in zip(widths, widths[1:]):
        if a == b or a[0] < b[0] or a[1] < b[1]:
            raise ValueError(f"--front {_listing(asked)}: two points land on the same or crossing widths "
                             f"(heads, ffn) {a} and {b}; pass fractions further apart")
    if len(points) > 1 and widths[0] == (teacher_heads, teacher_ffn):
        raise ValueError(f"--front {_listing(asked)}: {points[0][1]:g} rounds to the teacher's own widths; "
                         "pass a smaller fraction")
    result, previous_t = [], 0.0
    for t, fraction, h, fw, rank in points:
        events = None if num_events is None else max(1, round(num_events * (t - previous_t)))
        result.append(FrontPoint(h, fw, rank, encoder_fraction(hidden_size, head_size, h, fw, teacher_heads, teacher_ffn),
                                 fraction, events))
        previous_t = t
    return result


def _listing(fractions) -> str:
    return ",".join(f"{f:g}" for f in fractions)


def goal_explanation(chosen: dict, goal: dict, teacher_accuracy: float, teacher_gflops: float,
                     held: dict | None = None) -> str:
    """Which (width, threshold) the goal picked on the dev rows and why, or that no point meets the goal and which
    one, the closest, is written instead; with ``held``, a second sentence on whether the whole choice keeps the
    goal out of sample. ``chosen`` is a sweep row with ``constraint_met``; ``goal`` is ``{"max_drop": x}`` or
    ``{"target_speedup": x}``; FLOPs are totals over the same rows; ``held`` is
    :func:`~costeff_fast.training.calibrate.cross_validate`'s result against the teacher (``base_flops`` the
    teacher's)."""
    choice = _choice_explanation(chosen, goal, teacher_accuracy, teacher_gflops)
    if held is None:
        return choice
    verdict = "the goal holds there" if held["goal_met"] else "the goal does NOT hold there"
    return (f"{choice}. Out of sample ({held['method']}, each dev row scored by a choice made without it): accuracy "
            f"{held['accuracy']:.4f}, {held['drop'] * 100:.2f} ± {held['drop_standard_error'] * 100:.2f} points under "
            f"the teacher, {held['speedup_flops']:.1f}x fewer executed FLOPs: {verdict}")


def _choice_explanation(chosen: dict, goal: dict, teacher_accuracy: float, teacher_gflops: float) -> str:
    where = f"width {chosen['point']}, " if "point" in chosen else ""
    what = (f"{where}entropy threshold {chosen['entropy_threshold']:.4f}: accuracy {chosen['accuracy']:.4f} "
            f"(teacher {teacher_accuracy:.4f}), {teacher_gflops / chosen['gflops']:.1f}x fewer executed FLOPs than "
            f"the teacher")
    if "max_drop" in goal:
        drop = goal["max_drop"]
        if not chosen["constraint_met"]:
            return (f"goal NOT met: nothing is within {drop:g} of the teacher's accuracy on the dev rows; the closest "
                    f"(most accurate) is written, {(teacher_accuracy - chosen['accuracy']) * 100:.2f} points below: "
                    f"{what}")
        margin_choice = chosen.get("margin") or {}
        margin = margin_choice.get("margin", 0.0)
        if not margin:
            return f"the cheapest within {drop:g} of the teacher's accuracy on the dev rows: {what}"
        points = f"{margin * 100:.2f} points"
        if chosen["accuracy"] < teacher_accuracy - drop + margin - 1e-12:
            return (f"within {drop:g} of the teacher's accuracy on the dev rows, but nothing clears the goal by the "
                    f"margin of {points} that cross-validation asked for, so the most accurate is written: {what}")
        why = ("the smallest margin whose choice held out of sample in cross-validation" if margin_choice.get("goal_met")
               else "no margin held out of sample in cross-validation; this one came closest")
        return (f"the cheapest within {drop:g} of the teacher's accuracy on the dev rows keeping {points} in hand "
                f"({why}): {what}")
    speedup = goal["target_speedup"]
    if chosen["constraint_met"]:
        return f"the most accurate at {speedup:g}x or more fewer executed FLOPs than the teacher: {what}"
    return (f"goal NOT met: nothing runs {speedup:g}x fewer executed FLOPs than the teacher; the closest "
            f"(cheapest) is written: {what}")


def summarize_front(front: dict[str, dict], outcomes: dict[str, SweepOutcomes], goal: dict,
                    teacher_correct: torch.Tensor, teacher_flops: torch.Tensor, chosen: dict, seed: int) -> dict:
    """The report's ``front``: per point its widths, checkpoint directory, exit accuracies, its best threshold for
    the goal on the dev rows (with the margin :func:`~costeff_fast.training.calibrate.choose_margin` gives a
    ``max_drop`` goal) and out of sample (nested over the margin), and its sweep; which point was chosen; how to get
    another.

    Args:
        front: ``{name: {"point": FrontPoint, "dir": Path, "recovery_record": dict, ...}}``, widest first.
        outcomes: each point's :func:`~costeff_fast.training.calibrate.engine_sweep` over the same dev rows.
        goal: ``{"max_drop": x}`` or ``{"target_speedup": x}``.
        teacher_correct, teacher_flops: ``[N]`` bool and float64 per dev row (the reference and the speed base).
        chosen: the sweep row written (with its ``point``).
    """
    teacher_accuracy = teacher_correct.double().mean().item()
    teacher_gflops = teacher_flops.sum().item() / 1e9
    rows = teacher_correct.shape[0]
    points = []
    for name, entry in front.items():
        sweep = [{"point": name, **row} for row in outcomes[name].rows()]
        margin = None if "max_drop" not in goal else choose_margin(
            outcomes[name], reference_correct=teacher_correct, max_drop=goal["max_drop"], seed=seed)
        best = pick_for_goal(sweep, reference_accuracy=teacher_accuracy, full_depth_gflops=teacher_gflops,
                             margin=0.0 if margin is None else margin["margin"], **goal)
        held = cross_validate(outcomes[name], reference_correct=teacher_correct, base_flops=teacher_flops, seed=seed,
                              margin="auto", **goal)
        points.append({
            **entry["point"].to_dict(),
            "checkpoint": str(entry["dir"]),
            "exit_accuracies": entry["recovery_record"]["exit_accuracies"],
            "best_for_goal": {**best, "margin": margin, "gflops_per_row": best["gflops"] / rows,
                              "speedup_over_teacher": teacher_gflops / best["gflops"]},
            "best_for_goal_out_of_sample": held,
            "sweep": sweep,
        })
    return {
        "points": points,
        "chosen": chosen.get("point"),
        "another_point": (
            "every point's recovered checkpoint stays in its 'checkpoint' directory under --work-dir (do not "
            "calibrate it there: it is the stage cache); to write another point to --out, rerun the same compress "
            "command with --front-point NAME (that width, its threshold chosen for the goal) or with another goal "
            "(--max-drop or --target-speedup): every training stage is cached, only calibration runs again"),
    }

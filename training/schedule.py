"""Pruning schedule: the widths after each pruning event, shrinking to the targets linearly or geometrically.

COST-EFF (Shen et al., EMNLP 2022, arXiv 2210.15523, Sec. 3.2) removes one head per layer per event; the
authors' released code (GitHub sbwww/COST-EFF) shrinks the FFN width and the embedding rank by the same
linear rule over the same events. A linear schedule removes the same number of units per event, so the last
events remove the largest share of what is left (1536 -> 160 FFN in four events: 22 %, 29 %, 41 %, then 68 %);
the geometric one removes about the same share each time (43 % per event there). Measured on rt and trec
(bench/results/README.md, "Where the points go"), neither the geometric shape nor more steps after the larger
cuts (:func:`event_steps`) ends more accurate than the linear schedule with even steps, the default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from costeff_fast.config import CostEffConfig


@dataclass(frozen=True)
class PruningEvent:
    """Targets of one pruning event: per-layer (or, global, average per-layer) ``heads`` and ``ffn`` widths,
    and the word-embedding rank (None: leave the embedding as it is)."""

    heads: int
    ffn: int
    embedding_rank: int | None


#: the shapes :func:`pruning_schedule` knows (``--pruning-schedule``)
SCHEDULES = ("linear", "geometric")


def pruning_schedule(start: int, target: int, num_events: int, shape: str = "linear") -> list[int]:
    """Widths after each of ``num_events`` events, shrinking from ``start`` to ``target``.

    ``linear`` (the paper's code): event ``k`` (1-based) reaches ``start - floor((start - target) * k /
    num_events)``, in exact integer arithmetic: each step removes ``floor`` or ``ceil`` of ``(start - target) /
    num_events``. With ``num_events = start - target`` each event removes exactly one unit (the paper's head
    schedule). ``geometric``: event ``k`` reaches ``round(start * (target / start) ** (k / num_events))``, the
    same share of the width removed by every event up to rounding (with few units per event, e.g. heads, one event
    may repeat the width before it and the next remove two). Either way the widths are non-increasing and event
    ``num_events`` hits ``target`` exactly.

    Args:
        start: current width, >= 1.
        target: final width in ``[1, start]``.
        num_events: number of events, >= 1.
        shape: ``"linear"`` or ``"geometric"`` (:data:`SCHEDULES`).

    Returns:
        ``num_events`` ints, the width after each event.

    Raises:
        ValueError: a non-int argument, ``target`` outside ``[1, start]``, ``num_events < 1`` or an unknown
            ``shape``.
    """
    for name, value in (("start", start), ("target", target), ("num_events", num_events)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an int, got {value!r}")
    if not 1 <= target <= start:
        raise ValueError(f"target must lie in [1, start={start}] (widths only shrink), got {target}")
    if num_events < 1:
        raise ValueError(f"num_events must be >= 1, got {num_events}")
    if shape == "linear":
        return [start - (start - target) * k // num_events for k in range(1, num_events + 1)]
    if shape != "geometric":
        raise ValueError(f"shape {shape!r}: unknown; use one of {', '.join(SCHEDULES)}")
    # rounding a decreasing sequence keeps it non-increasing; max() only guards the float arithmetic at the end
    return [max(target, round(start * math.exp(math.log(target / start) * k / num_events)))
            for k in range(1, num_events)] + [target]


#: how :func:`event_steps` spreads the distillation steps over the events (``--event-steps``)
STEP_ALLOCATIONS = ("even", "by-share")


def event_steps(config: CostEffConfig, events: list[PruningEvent], steps_per_event: int,
                allocation: str = "even") -> list[int]:
    """Distillation steps after each event: ``steps_per_event`` each (``"even"``), or the same total split in
    proportion to the share each event removes (``"by-share"``), largest remainders rounded up, so an event that
    removes two thirds of what is left trains about three times as long as one that removes a fifth.

    An event's share is the larger of two: the share of the encoder's matmul weights per layer it removes (heads
    cost ``4 * hidden_size * attention_head_size`` weights, FFN neurons ``2 * hidden_size``) and the share of the
    factorized embedding's rank it removes (0 when the event leaves the embedding as it is). An event that
    removes nothing gets no steps; when none removes anything every event gets ``steps_per_event``.

    Args:
        config: the model before the first event (its per-layer widths averaged and rounded down, as
            :func:`plan_events` takes them; its rank ``embedding_rank``, ``hidden_size`` when not factorized).
        events: :func:`plan_events`' output.
        steps_per_event: steps per event (>= 0); the total is ``steps_per_event * len(events)`` either way.
        allocation: ``"even"`` or ``"by-share"`` (:data:`STEP_ALLOCATIONS`).

    Returns:
        One step count per event.

    Raises:
        ValueError: an unknown ``allocation`` or a negative ``steps_per_event``.
    """
    if allocation not in STEP_ALLOCATIONS:
        raise ValueError(f"allocation {allocation!r}: unknown; use one of {', '.join(STEP_ALLOCATIONS)}")
    if isinstance(steps_per_event, bool) or not isinstance(steps_per_event, int) or steps_per_event < 0:
        raise ValueError(f"steps_per_event must be an int >= 0, got {steps_per_event!r}")
    if allocation == "even" or not events:
        return [steps_per_event] * len(events)
    num_layers = config.num_hidden_layers

    def weights(heads: float, ffn: float) -> float:
        return 4 * config.hidden_size * heads * config.attention_head_size + 2 * config.hidden_size * ffn

    sizes = [weights(sum(config.num_attention_heads) // num_layers, sum(config.intermediate_size) // num_layers)]
    sizes += [weights(event.heads, event.ffn) for event in events]
    ranks = [config.embedding_rank or config.hidden_size]
    for event in events:
        ranks.append(ranks[-1] if event.embedding_rank is None else event.embedding_rank)
    shares = [max((before - after) / before, (rank_before - rank_after) / rank_before, 0.0)
              for before, after, rank_before, rank_after in zip(sizes, sizes[1:], ranks, ranks[1:])]
    total = steps_per_event * len(events)
    if sum(shares) == 0:
        return [steps_per_event] * len(events)
    exact = [total * share / sum(shares) for share in shares]
    steps = [math.floor(value) for value in exact]
    for index in sorted(range(len(events)), key=lambda i: steps[i] - exact[i])[:total - sum(steps)]:
        steps[index] += 1
    return steps


def plan_events(
    config: CostEffConfig, heads: int, ffn: int, embedding_rank: int | None, num_events: int | None = None,
    schedule: str = "linear",
) -> list[PruningEvent]:
    """Per-event targets that take ``config``'s widths to (``heads``, ``ffn``, ``embedding_rank``).

    Start widths are the per-layer means of ``config.num_attention_heads`` and ``config.intermediate_size``
    rounded down (the widths themselves for a uniform model) and the current embedding rank
    (``config.embedding_rank``, or ``hidden_size`` when not factorized). By default there is one event per
    removed head, ``num_events = start_heads - heads`` (the paper), or a single event when no head is removed
    but FFN or embedding shrink, and none when nothing changes. Each width follows
    :func:`pruning_schedule` over the same events, in the shape ``schedule``; e.g. 12 heads -> 6, FFN 3072 ->
    1536, rank 768 -> 384, linear: 6 events with heads 11, 10, ..., 6, FFN 2816, 2560, ..., 1536 and rank 704,
    640, ..., 384.
    ``embedding_rank=None`` leaves the embedding alone (every event's rank is None).

    Args:
        config: configuration of the model to slenderize.
        heads, ffn: final per-layer (or average per-layer) widths, ``1 <= target <= start``.
        embedding_rank: final rank in ``[1, current rank]`` or None.
        num_events: override the number of events (>= 1).
        schedule: the shape of every width's schedule, ``"linear"`` or ``"geometric"``.

    Returns:
        List of :class:`PruningEvent`, in order; the last one holds the final targets.

    Raises:
        ValueError: a target outside ``[1, start]``, ``num_events < 1`` or an unknown ``schedule`` (via
            :func:`pruning_schedule`).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule {schedule!r}: unknown; use one of {', '.join(SCHEDULES)}")
    num_layers = config.num_hidden_layers
    start_heads = sum(config.num_attention_heads) // num_layers
    start_ffn = sum(config.intermediate_size) // num_layers
    start_rank = config.embedding_rank or config.hidden_size
    if num_events is None:
        changes = (start_heads != heads, start_ffn != ffn, embedding_rank is not None and embedding_rank != start_rank)
        num_events = max(start_heads - heads, 1) if any(changes) else 0
        if num_events == 0:
            return []
    head_widths = pruning_schedule(start_heads, heads, num_events, schedule)
    ffn_widths = pruning_schedule(start_ffn, ffn, num_events, schedule)
    ranks = ([None] * num_events if embedding_rank is None
             else pruning_schedule(start_rank, embedding_rank, num_events, schedule))
    return [PruningEvent(h, f, r) for h, f, r in zip(head_widths, ffn_widths, ranks)]


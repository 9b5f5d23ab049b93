"""The slenderization loop: prune, re-factorize, distill, event after event, until the target widths.

COST-EFF (Shen et al., EMNLP 2022, arXiv 2210.15523, Sec. 3.2-3.3) narrows a full-width multi-exit model (a
copy of the TA) in repeated pruning events while keeping its depth. Each event composes the other modules:
Taylor importance against every exit (:mod:`~costeff_fast.training.importance`), width allocation
(:mod:`~costeff_fast.training.allocation`), physical pruning and the embedding SVD
(:mod:`~costeff_fast.training.pruning`), at the widths of the pruning schedule
(:mod:`~costeff_fast.training.schedule`); the student is then distilled from the TA with the slenderization
objective (:func:`~costeff_fast.training.losses.slenderization_loss`) by the training loop
(:func:`~costeff_fast.training.trainer.train`) until the next event.
"""

from __future__ import annotations

import itertools
from typing import Callable, Iterable, Literal

import torch

from costeff_fast.modeling import CostEffForSequenceClassification

from .allocation import allocate_widths
from .importance import compute_importance
from .losses import Batch, check_distillation_pair, slenderization_loss
from .pruning import factorize_embedding, prune_heads, prune_neurons
from .schedule import PruningEvent, event_steps, plan_events
from .trainer import Device, model_mode, place_model, repeat_epochs, train


def slenderize(
    student: CostEffForSequenceClassification,
    ta: CostEffForSequenceClassification,
    train_batches_factory: Callable[[], Iterable[Batch]],
    *,
    heads: int,
    ffn: int,
    embedding_rank: int | None,
    allocation: Literal["uniform", "global"] = "uniform",
    calibrate_exits: bool = True,
    importance_batches: int | None = None,
    distill_steps_between_events: int = 100,
    num_events: int | None = None,
    schedule: str = "linear",
    event_steps_allocation: str = "even",
    lr: float = 2e-5,
    weight_decay: float = 0.01,
    max_grad_norm: float | None = 1.0,
    kd_weight: float = 0.9,
    temperature: float = 1.0,
    hidden_weight: float = 1.0,
    min_heads: int = 1,
    min_ffn: int = 1,
    progress: bool = True,
    device: Device | None = None,
    autocast: bool | None = None,
    on_event: Callable[[int, PruningEvent, CostEffForSequenceClassification, dict], None] | None = None,
    measure: Callable[[CostEffForSequenceClassification], dict] | None = None,
) -> CostEffForSequenceClassification:
    """Slenderize ``student`` in place by iterative exit-calibrated pruning (COST-EFF Sec. 3.2-3.3).

    For each :class:`~costeff_fast.training.schedule.PruningEvent` of
    :func:`~costeff_fast.training.schedule.plan_events` (by default one head removed per layer per event; FFN
    width and embedding rank shrink alongside, linearly unless ``schedule`` says otherwise):

    1. :func:`compute_importance` over ``importance_batches`` batches of a fresh ``train_batches_factory()``
       (every batch of one pass when None, as the paper's code) with the exit-calibrated loss
       (``calibrate_exits=False``: last exit only, the ablation);
    2. :func:`allocate_widths` to the event's targets (``allocation``);
    3. :func:`prune_heads`, :func:`prune_neurons`;
    4. :func:`factorize_embedding` to the event's rank (skipped when ``embedding_rank`` is None);
    5. :func:`~costeff_fast.training.trainer.train` with a new AdamW (the optimizer reset: pruning replaced
       the parameters and stale moments would not match them): ``distill_steps_between_events`` steps in
       train mode (dropout on) on batches from ``train_batches_factory()`` (re-called when exhausted; the
       stream continues across events), loss :func:`~costeff_fast.training.losses.slenderization_loss` over
       all exits ``sum_l [kd_weight * KD(exit l, TA exit l) + (1 - kd_weight) * CE] + hidden_weight * hidden
       MSE``, gradient norm clipped to ``max_grad_norm``, constant ``lr``. ``calibrate_exits`` only changes
       step 1, so the ablation isolates the importance criterion.

    The first event happens before any training (the student is normally a copy of the TA); the last event
    is followed by its distillation steps too; when the student already has the target widths there is no
    event and it is returned unchanged. Recovery distillation is a separate stage.

    Args:
        student: model to slenderize (modified in place and returned); normally a copy of the TA.
        ta: teaching assistant, same ``hidden_size``, ``num_hidden_layers``, ``num_labels``; not modified
            (kept in eval mode during the call, its mode restored after).
        train_batches_factory: ``() -> iterable of batch dicts`` (``input_ids``, ``attention_mask``,
            ``token_type_ids`` ``[B, S]``, ``labels [B]``), one epoch per call, on any device (batches are
            moved to the student's device).
        heads, ffn: final heads and FFN neurons per layer (the average per layer for ``global``).
        embedding_rank: final word-embedding rank, or None to keep the embedding as it is.
        allocation: ``"uniform"`` (the paper) or ``"global"`` (ours), see :func:`allocate_widths`.
        calibrate_exits: importance against every exit (True) or the last exit only.
        importance_batches: batches per importance pass (None: one full pass of the factory).
        distill_steps_between_events: optimizer steps after each event (>= 0).
        num_events: override the number of events (default: one per removed head).
        schedule: the widths' shape over the events, ``"linear"`` (the paper's code) or ``"geometric"`` (the same
            share removed by every event), :func:`~costeff_fast.training.schedule.pruning_schedule`.
        event_steps_allocation: ``"even"`` (``distill_steps_between_events`` after every event) or ``"by-share"``
            (the same total, in proportion to the share of the encoder each event removes),
            :func:`~costeff_fast.training.schedule.event_steps`.
        lr, weight_decay, max_grad_norm: AdamW learning rate, decoupled weight decay (not on biases and
            LayerNorm weights), gradient clipping (None: off).
        kd_weight, temperature, hidden_weight: loss weights, see :func:`compute_importance`.
        min_heads, min_ffn: per-layer minimums of the global allocation.
        progress: show a tqdm bar with the loss during distillation.
        device: move the student and the TA there first and run every importance pass and distillation step
            there (:func:`~costeff_fast.training.trainer.resolve_device`: ``"auto"``, ``"cpu"``, ``"cuda"``;
            None: where the student is, the TA moved to it). Both stay there on return.
        autocast: bf16 autocast of the forwards of the importance passes and the distillation (None: on for
            CUDA, :func:`~costeff_fast.training.trainer.resolve_autocast`); losses and weights stay fp32.
        on_event: called after each event's distillation as ``on_event(index, event, student, stats)`` with
            ``index`` 0-based and ``stats = {"importance_loss", "distill_steps", "distill_loss"}`` (mean
            losses, the event's step count; distill_loss is NaN when no step ran), e.g. to save a checkpoint or
            log widths; with ``measure``, also ``before_distill`` and ``after_distill``.
        measure: called on the student right after each event's pruning and again after its distillation
            steps (e.g. dev accuracy per exit), its results passed to ``on_event``; it runs with the random
            number generators' state saved and restored (:func:`torch.random.fork_rng`), so measuring leaves the
            training itself unchanged.

    Returns:
        ``student``, slender: per-layer widths in its config (``num_attention_heads``, ``intermediate_size``,
        ``embedding_rank``), ready for ``save_pretrained``.

    Raises:
        ValueError: incompatible student and TA, bad targets (see :func:`plan_events`,
            :func:`allocate_widths`), a negative step count, an empty batch factory, or a ``device`` that
            ``resolve_device`` refuses.
    """
    check_distillation_pair(student, ta)
    if distill_steps_between_events < 0:
        raise ValueError(f"distill_steps_between_events must be >= 0, got {distill_steps_between_events}")
    if importance_batches is not None and importance_batches < 1:
        raise ValueError(f"importance_batches must be >= 1 or None, got {importance_batches}")
    events = plan_events(student.config, heads, ffn, embedding_rank, num_events, schedule)
    steps = event_steps(student.config, events, distill_steps_between_events, event_steps_allocation)
    device = place_model(student, device)
    place_model(ta, device)
    loss_kwargs = dict(kd_weight=kd_weight, temperature=temperature, hidden_weight=hidden_weight)
    train_batches = repeat_epochs(train_batches_factory)

    def distillation(model: CostEffForSequenceClassification, batch: Batch):
        return slenderization_loss(model, ta, batch, all_exits=True, **loss_kwargs)

    for index, event in enumerate(events):
        importance = compute_importance(
            student,
            ta,
            itertools.islice(train_batches_factory(), importance_batches),
            calibrate_exits=calibrate_exits,
            device=device,
            autocast=autocast,
            **loss_kwargs,
        )
        keep = allocate_widths(
            importance, heads=event.heads, ffn=event.ffn, allocation=allocation, min_heads=min_heads, min_ffn=min_ffn
        )
        prune_heads(student, keep.heads)
        prune_neurons(student, keep.neurons)
        if event.embedding_rank is not None:
            factorize_embedding(student, event.embedding_rank)
        measuring = measure is not None and on_event is not None  # the results go to on_event only
        before = _measured(measure, student) if measuring else None
        with model_mode(ta, False):
            result = train(
                student,
                train_batches,
                distillation,
                steps=steps[index],
                lr=lr,
                schedule="constant",
                weight_decay=weight_decay,
                max_grad_norm=max_grad_norm,
                desc=f"slenderize event {index + 1}/{len(events)} (heads {event.heads}, ffn {event.ffn})",
                progress=progress,
                device=device,
                autocast=autocast,
            )
        if on_event is not None:
            stats = {"importance_loss": importance.loss, "distill_steps": steps[index],
                     "distill_loss": result.mean_loss}
            if measuring:
                stats.update(before_distill=before, after_distill=_measured(measure, student))
            on_event(index, event, student, stats)
    return student


def _measured(measure: Callable[[CostEffForSequenceClassification], dict],
              student: CostEffForSequenceClassification) -> dict:
    """``measure(student)`` with every random number generator (CPU and the student's CUDA device) restored after,
    and the student's train/eval mode too."""
    device = next(student.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
            model_mode(student, student.training):
        return measure(student)

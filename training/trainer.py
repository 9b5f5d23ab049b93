"""The training loop every stage uses: AdamW with one weight-decay rule, a learning-rate schedule, clipping.

Teacher fine-tuning, the TA's and recovery's distillation phases (COST-EFF, Shen et al., EMNLP 2022, arXiv
2210.15523, Sec. 3.4 and 4.1) and the distillation between pruning events (Sec. 3.3) all run :func:`train`.
Weight decay follows the usual BERT fine-tuning recipe (Devlin et al., NAACL 2019): decoupled decay (AdamW,
Loshchilov and Hutter, ICLR 2019) on every weight except biases and LayerNorm weights.
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Literal, Mapping

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import get_constant_schedule, get_linear_schedule_with_warmup

Batch = Mapping[str, torch.Tensor]

EXIT_PREFIX = "exits."
"""Parameters whose name starts with this belong to the exit classifiers (``exit_lr_scale`` applies)."""


@contextlib.contextmanager
def model_mode(model: nn.Module, training: bool) -> Iterator[None]:
    """Put ``model`` in train (``training=True``) or eval mode for the block, then restore its previous mode."""
    previous = model.training
    model.train(training)
    try:
        yield
    finally:
        model.train(previous)


def weight_decay_mask(model: nn.Module) -> dict[str, bool]:
    """Which trainable parameters get weight decay: all but biases and LayerNorm weights.

    A parameter is exempt when its own name (the last dotted component) is ``bias`` or it belongs to an
    ``nn.LayerNorm``; everything else (linear and embedding matrices) decays.

    Returns:
        ``{parameter name: decays}`` for every parameter with ``requires_grad``, in ``named_parameters`` order.
    """
    norms = {id(p) for module in model.modules() if isinstance(module, nn.LayerNorm) for p in module.parameters()}
    return {
        name: not (name.rsplit(".", 1)[-1] == "bias" or id(parameter) in norms)
        for name, parameter in model.named_parameters()
        if parameter.requires_grad
    }


def parameter_groups(model: nn.Module, *, lr: float, weight_decay: float, exit_lr_scale: float = 1.0) -> list[dict]:
    """AdamW parameter groups of ``model``: decay per :func:`weight_decay_mask`, exit classifiers at a scaled rate.

    Args:
        model: any module; frozen parameters (``requires_grad=False``) are left out.
        lr: learning rate of the encoder (and of every parameter when ``exit_lr_scale == 1``).
        weight_decay: decoupled weight decay of the decaying group (0 for biases and LayerNorm weights).
        exit_lr_scale: learning-rate multiplier for parameters under ``exits.`` (freshly initialized exit
            classifiers learn from scratch while the encoder is only adapted).

    Returns:
        Up to four dicts ``{"params", "weight_decay", "lr"}``, in first-parameter order, none empty.
    """
    decay = weight_decay_mask(model)
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            groups.setdefault((decay[name], name.startswith(EXIT_PREFIX)), []).append(parameter)
    return [
        {"params": params, "weight_decay": weight_decay if decayed else 0.0,
         "lr": lr * (exit_lr_scale if is_exit else 1.0)}
        for (decayed, is_exit), params in groups.items()
    ]


def repeat_epochs(make_epoch: Callable[[], Iterable[Batch]]) -> Iterator[Batch]:
    """Yield the batches of ``make_epoch()`` and call it again whenever an epoch ends, without end.

    ``make_epoch`` may return the same DataLoader each time (each pass draws its next shuffle) or a new
    iterable (e.g. a factory that builds a fresh loader).

    Raises:
        ValueError: an epoch yields no batch (raised when the next batch is requested).
    """
    while True:
        empty = True
        for batch in make_epoch():
            empty = False
            yield batch
        if empty:
            raise ValueError("an epoch of training batches yielded no batch")


def epoch_steps(epochs: float, batches_per_epoch: int) -> int:
    """Optimizer steps of ``epochs`` passes (fractions allowed) over ``batches_per_epoch`` batches, at least 1:
    ``max(1, round(epochs * batches_per_epoch))``."""
    return max(1, int(round(epochs * batches_per_epoch)))


@dataclass
class TrainResult:
    """What :func:`train` did.

    Attributes:
        steps: optimizer steps taken.
        mean_loss: mean training loss over the steps (NaN when no step ran).
        best_metric: best ``evaluate`` value (higher is better), or None without ``evaluate``.
    """

    steps: int
    mean_loss: float
    best_metric: float | None


def train(
    model: nn.Module,
    batches: Iterator[Batch],
    loss_fn: Callable[[nn.Module, Batch], torch.Tensor],
    *,
    steps: int,
    lr: float,
    schedule: Literal["linear", "constant"] = "linear",
    warmup_ratio: float = 0.1,
    weight_decay: float = 0.01,
    max_grad_norm: float | None = 1.0,
    exit_lr_scale: float = 1.0,
    evaluate: Callable[[nn.Module], float] | None = None,
    eval_every: int | None = None,
    desc: str = "train",
    progress: bool = True,
) -> TrainResult:
    """Train ``model`` in place for ``steps`` AdamW steps; keep the best weights by ``evaluate``.

    Each step: train mode (dropout on), ``loss_fn(model, batch).backward()``, gradient norm clipped to
    ``max_grad_norm`` over all parameters, an AdamW step with the groups of :func:`parameter_groups` (no
    weight decay on biases and LayerNorm weights), a scheduler step, gradients cleared (set to None).
    ``schedule="linear"``: linear warmup over ``warmup_ratio * steps`` steps, then linear decay to 0 (the
    BERT recipe, every stage of the pipeline); ``"constant"``: ``lr`` throughout (the distillation between
    pruning events).

    With ``evaluate``, the model is evaluated every ``eval_every`` steps (not again at the last one) and after
    the last step; on return it holds the weights with the best metric (ties: the earlier). A fresh optimizer
    is built per call, so a model whose parameters were replaced (pruning) can be trained again. The model's
    train/eval mode is restored on return and its ``.grad`` fields are None.

    Args:
        model: trained in place.
        batches: an iterator with at least ``steps`` batches (e.g. :func:`repeat_epochs`); exactly ``steps``
            batches are taken, so a shared iterator continues where the last call stopped.
        loss_fn: ``(model, batch) -> scalar loss``.
        steps: optimizer steps, >= 0 (0: only the final evaluation runs).
        lr: peak learning rate.
        schedule: ``"linear"`` or ``"constant"``.
        warmup_ratio: fraction of ``steps`` spent warming up (linear schedule).
        weight_decay: decoupled weight decay of the decaying parameters.
        max_grad_norm: clip the global gradient norm (None: no clipping).
        exit_lr_scale: learning-rate multiplier of the exit classifiers (``exits.*``).
        evaluate: ``model -> metric`` (higher is better).
        eval_every: steps between evaluations (None: only after the last step).
        desc: progress-bar label.
        progress: show a tqdm bar with the running loss.

    Returns:
        :class:`TrainResult`.

    Raises:
        ValueError: negative ``steps``, an unknown ``schedule``, ``eval_every < 1``, or ``batches`` runs out.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if schedule not in ("linear", "constant"):
        raise ValueError(f"schedule must be 'linear' or 'constant', got {schedule!r}")
    if eval_every is not None and eval_every < 1:
        raise ValueError(f"eval_every must be >= 1 or None, got {eval_every}")
    optimizer = torch.optim.AdamW(
        parameter_groups(model, lr=lr, weight_decay=weight_decay, exit_lr_scale=exit_lr_scale), lr=lr
    )
    if schedule == "linear":
        scheduler = get_linear_schedule_with_warmup(optimizer, int(warmup_ratio * steps), steps)
    else:
        scheduler = get_constant_schedule(optimizer)
    best_metric, best_state = None, None
    bar = tqdm(total=steps, desc=desc, unit="step", disable=not progress)

    def checkpoint(step: int) -> None:
        nonlocal best_metric, best_state
        metric = evaluate(model)
        bar.write(f"{desc}: step {step}/{steps} dev metric {metric:.4f}")
        if best_metric is None or metric > best_metric:
            best_metric, best_state = metric, copy.deepcopy(model.state_dict())

    total = 0.0
    previous_mode = model.training
    model.zero_grad(set_to_none=True)
    try:
        for step in range(1, steps + 1):
            try:
                batch = next(batches)
            except StopIteration:
                raise ValueError(f"batches ran out after {step - 1} of {steps} steps") from None
            model.train()
            loss = loss_fn(model, batch)
            loss.backward()
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
            scheduler.step()
            model.zero_grad(set_to_none=True)
            total += loss.item()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if evaluate is not None and eval_every is not None and step % eval_every == 0 and step < steps:
                checkpoint(step)
        if evaluate is not None:
            checkpoint(steps)
    finally:
        bar.close()
        model.zero_grad(set_to_none=True)
        model.train(previous_mode)
    if best_state is not None:
        model.load_state_dict(best_state)
    return TrainResult(steps=steps, mean_loss=total / steps if steps else math.nan, best_metric=best_metric)

"""Losses of every COST-EFF stage: classification, prediction and hidden-state distillation, the slenderization
objective (Shen et al., EMNLP 2022, arXiv 2210.15523, Sec. 3.3-3.4, Eq. 4-7).

The primitives (:func:`soft_cross_entropy`, :func:`hidden_mse`, :func:`multi_exit_loss`) work on tensors; the
batch losses (:func:`classification_loss`, :func:`distillation_loss`, :func:`slenderization_loss`) run the
models on one batch and are what the training loop and the importance pass differentiate. Every loss is fp32
whatever the dtype of the logits and hidden states (bf16 under the training loop's autocast): inputs are cast
with ``.float()`` before any softmax, log-softmax, cross-entropy or squared error.
"""

from __future__ import annotations

from typing import Literal, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .data import model_inputs
from .trainer import forward_inputs, model_device

Batch = Mapping[str, torch.Tensor]


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Prediction distillation: ``-T^2 * sum softmax(t/T) * log_softmax(s/T)``, mean over the batch.

    The ``T^2`` factor (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network", Sec. 2) keeps the
    gradients' scale independent of T, so a temperature ablation changes the targets' softness and not the
    term's weight against the hidden-state and hard-label terms; at T = 1 it is the plain soft cross-entropy.

    Args:
        student_logits, teacher_logits: ``[B, C]`` (teacher detached by the caller or here).
        temperature: T > 0.

    Returns:
        Scalar fp32 loss (nats, times T^2).

    Raises:
        ValueError: ``temperature <= 0``.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    target = torch.softmax(teacher_logits.detach().float() / temperature, dim=-1)
    cross = -(target * torch.log_softmax(student_logits.float() / temperature, dim=-1)).sum(-1).mean()
    return cross * temperature**2


def hidden_mse(
    student_hidden: tuple[torch.Tensor, ...], teacher_hidden: tuple[torch.Tensor, ...], attention_mask: torch.Tensor
) -> torch.Tensor:
    """Hidden-state distillation: MSE over all ``L + 1`` states, padding masked, summed over states.

    Args:
        student_hidden, teacher_hidden: ``L + 1`` tensors ``[B, S, H]`` each (same hidden_size), any float
            dtype (cast to fp32 here).
        attention_mask: ``[B, S]`` 1 for tokens, 0 for padding.

    Returns:
        Scalar fp32: ``sum_l mean_over_real_tokens_and_features (h_s - h_t)^2``.
    """
    if len(student_hidden) != len(teacher_hidden):
        raise ValueError(f"{len(student_hidden)} student states vs {len(teacher_hidden)} teacher states")
    mask = attention_mask.to(torch.float32)[..., None]
    denom = mask.sum() * student_hidden[0].shape[-1]
    return sum(((s.float() - t.detach().float()) ** 2 * mask).sum() / denom
               for s, t in zip(student_hidden, teacher_hidden))


def multi_exit_loss(
    exit_logits: tuple[torch.Tensor, ...],
    labels: torch.Tensor | None,
    teacher_logits: tuple[torch.Tensor, ...] | torch.Tensor | None,
    *,
    kd_weight: float,
    temperature: float = 1.0,
    early_exit_weight: float = 1.0,
) -> torch.Tensor:
    """Joint loss of every exit: ``sum_l w_l [kd_weight * KD(exit_l, teacher_l) + (1 - kd_weight) * CE(exit_l, y)]``
    with ``w_l = early_exit_weight`` for every exit but the last and ``w_L = 1`` (the paper: all 1).

    Args:
        exit_logits: ``L`` tensors ``[B, C]``, exit 1 first (any float dtype; the loss is fp32).
        labels: ``[B]`` int64 hard labels (needed when ``kd_weight < 1``).
        teacher_logits: one ``[B, C]`` tensor (the teacher's final logits for every exit, as in TA training)
            or ``L`` tensors (exit-to-exit distillation from the TA, as in slenderization and recovery).
        kd_weight: weight of the distillation term in ``[0, 1]`` (COST-EFF uses 0.9 when pruning).
        temperature: distillation temperature T.
        early_exit_weight: weight of the exits before the last (>= 0).

    Returns:
        Scalar fp32 loss summed over exits.

    Raises:
        ValueError: ``kd_weight`` outside ``[0, 1]`` or a negative ``early_exit_weight``.
    """
    if not 0.0 <= kd_weight <= 1.0:
        raise ValueError(f"kd_weight must be in [0, 1], got {kd_weight}")
    if not early_exit_weight >= 0.0:
        raise ValueError(f"early_exit_weight must be >= 0, got {early_exit_weight}")
    if isinstance(teacher_logits, torch.Tensor):
        teacher_logits = (teacher_logits,) * len(exit_logits)
    total = exit_logits[0].new_zeros((), dtype=torch.float32)
    last = len(exit_logits) - 1
    for index, logits in enumerate(exit_logits):
        term = logits.new_zeros((), dtype=torch.float32)
        if kd_weight > 0:
            term = term + kd_weight * soft_cross_entropy(logits, teacher_logits[index], temperature)
        if kd_weight < 1:
            term = term + (1 - kd_weight) * F.cross_entropy(logits.float(), labels)
        total = total + (term if index == last else early_exit_weight * term)
    return total


def classification_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Teacher fine-tuning: mean cross-entropy of ``model(**inputs).logits [B, C]`` against ``labels [B]``.

    The batch is moved to the model's device; ``token_type_ids`` are dropped for a model whose forward has none
    (:func:`~costeff_fast.training.trainer.forward_inputs`); the logits are cast to fp32 first.

    Returns:
        Scalar fp32 loss (nats).

    Raises:
        ValueError: the batch has no ``input_ids``.
    """
    device = model_device(model)
    logits = model(**forward_inputs(model, model_inputs(batch, device))).logits
    return F.cross_entropy(logits.float(), batch["labels"].to(device))


def check_distillation_pair(student: nn.Module, teacher: nn.Module) -> None:
    """Raise ValueError unless ``student`` can be distilled from ``teacher`` state by state and exit by exit.

    Both configs must agree on ``hidden_size`` (hidden MSE), ``num_hidden_layers`` (``L + 1`` states, one exit
    per layer) and ``num_labels``; the teacher may be a multi-exit model or an HF classifier.
    """
    for name in ("hidden_size", "num_hidden_layers", "num_labels"):
        if getattr(student.config, name) != getattr(teacher.config, name):
            raise ValueError(
                f"student and teacher must share {name}: "
                f"{getattr(student.config, name)} vs {getattr(teacher.config, name)}"
            )


def distillation_loss(
    student: nn.Module,
    teacher: nn.Module,
    batch: Batch,
    *,
    kd_weight: float,
    temperature: float = 1.0,
    hidden_weight: float = 1.0,
    exits: Literal["all", "last", "none"] = "all",
    gradient_equilibrium: bool = False,
    early_exit_weight: float = 1.0,
) -> torch.Tensor:
    """Distillation of a multi-exit student from a frozen teacher on one batch (COST-EFF Sec. 3.3-3.4).

    ``sum_l [kd_weight * KD(exit_l, teacher_l) + (1 - kd_weight) * CE(exit_l, y)] + hidden_weight * MSE``
    (:func:`multi_exit_loss` plus :func:`hidden_mse` over the ``L + 1`` hidden states, padding masked), where
    ``l`` runs over every exit (``exits="all"``), the last one (``"last"``) or none (``"none"``: hidden states
    only). ``teacher_l`` is the teacher's exit ``l`` for a multi-exit teacher (exit-to-exit KD, as the TA
    teaches in slenderization and recovery) or its final logits for an HF classifier (distilled into every
    exit, as the teacher teaches the TA). The teacher runs under ``torch.no_grad`` in its current mode, on
    the student's device (where it must already be), without ``token_type_ids`` when its forward has none
    (DistilBERT: :func:`~costeff_fast.training.trainer.forward_inputs`); the batch is moved to the student's
    device. Both forwards run in the caller's autocast context; the loss terms are computed in fp32.

    Args:
        student: a :class:`~costeff_fast.CostEffForSequenceClassification`.
        teacher: a multi-exit model or an HF classifier with the same hidden size and depth.
        batch: ``input_ids [B, S]`` int64 (required), ``attention_mask [B, S]`` (default ones),
            ``token_type_ids [B, S]`` (default zeros), ``labels [B]`` int64 (required when an exit term has
            ``kd_weight < 1``).
        kd_weight: weight of distillation vs hard cross-entropy in ``[0, 1]``.
        temperature: distillation temperature T > 0.
        hidden_weight: weight of the hidden-state MSE (0 drops it).
        exits: which exits enter the prediction term.
        gradient_equilibrium: rescale gradients between layers in the student's backward (Sec. 3.3).
        early_exit_weight: weight of every exit but the last in the prediction term (:func:`multi_exit_loss`).

    Returns:
        Scalar fp32 loss (nats plus squared hidden units).

    Raises:
        ValueError: a batch without ``input_ids``; without ``labels`` while ``kd_weight < 1`` and an exit term
            is on; an unknown ``exits``; ``exits="none"`` with ``hidden_weight == 0`` (nothing to learn); a
            ``kd_weight`` outside ``[0, 1]`` or ``temperature <= 0``.
    """
    if exits not in ("all", "last", "none"):
        raise ValueError(f"exits must be 'all', 'last' or 'none', got {exits!r}")
    if exits == "none" and not hidden_weight:
        raise ValueError("exits='none' with hidden_weight=0 leaves no loss term")
    device = model_device(student)
    inputs = model_inputs(batch, device)
    labels = batch.get("labels")
    if labels is None and exits != "none" and kd_weight < 1:
        raise ValueError(f"kd_weight={kd_weight} < 1 needs hard labels: the batch has no 'labels'")
    labels = None if labels is None else labels.to(device)
    hidden = bool(hidden_weight)
    with torch.no_grad():
        target = teacher(**forward_inputs(teacher, inputs), output_hidden_states=hidden)
    extra = {"gradient_equilibrium": True} if gradient_equilibrium else {}
    out = student(**inputs, output_hidden_states=hidden, **extra)
    loss = None
    if exits != "none":
        chosen = slice(None) if exits == "all" else slice(-1, None)
        teacher_exits = getattr(target, "exit_logits", None)
        teacher_logits = target.logits if teacher_exits is None else teacher_exits[chosen]
        loss = multi_exit_loss(
            out.exit_logits[chosen], labels, teacher_logits, kd_weight=kd_weight, temperature=temperature,
            early_exit_weight=early_exit_weight,
        )
    if hidden:
        mse = hidden_weight * hidden_mse(out.hidden_states, target.hidden_states, inputs["attention_mask"])
        loss = mse if loss is None else loss + mse
    return loss


def slenderization_loss(
    student: nn.Module,
    ta: nn.Module,
    batch: Batch,
    *,
    kd_weight: float = 0.9,
    temperature: float = 1.0,
    hidden_weight: float = 1.0,
    all_exits: bool = True,
) -> torch.Tensor:
    """The COST-EFF slenderization objective on one batch (Sec. 3.3), for importance and for distillation.

    ``sum_l [kd_weight * KD(exit_l, TA exit_l) + (1 - kd_weight) * CE(exit_l, y)] + hidden_weight * MSE`` with
    ``l`` over every exit (``all_exits``, exit calibration) or only the last one (the ablation); the paper's
    ``kd_weight`` is 0.9. This is :func:`distillation_loss` with a multi-exit teacher and no gradient
    equilibrium.

    Args:
        student: the model being slenderized.
        ta: the teaching assistant (same ``hidden_size``, ``num_hidden_layers``, ``num_labels``).
        batch: as in :func:`distillation_loss`.

    Returns:
        Scalar fp32 loss.

    Raises:
        ValueError: as :func:`distillation_loss`.
    """
    return distillation_loss(
        student,
        ta,
        batch,
        kd_weight=kd_weight,
        temperature=temperature,
        hidden_weight=hidden_weight,
        exits="all" if all_exits else "last",
    )

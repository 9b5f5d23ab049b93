"""Distillation losses of COST-EFF (Shen et al., EMNLP 2022, Sec. 3.3-3.4, Eq. 4-7)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Prediction distillation: ``-sum softmax(t/T) * log_softmax(s/T)``, mean over the batch.

    Args:
        student_logits, teacher_logits: ``[B, C]`` (teacher detached by the caller or here).
        temperature: T > 0.

    Returns:
        Scalar fp32 loss (nats).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    target = torch.softmax(teacher_logits.detach().float() / temperature, dim=-1)
    return -(target * torch.log_softmax(student_logits.float() / temperature, dim=-1)).sum(-1).mean()


def hidden_mse(
    student_hidden: tuple[torch.Tensor, ...], teacher_hidden: tuple[torch.Tensor, ...], attention_mask: torch.Tensor
) -> torch.Tensor:
    """Hidden-state distillation: MSE over all ``L + 1`` states, padding masked, summed over states.

    Args:
        student_hidden, teacher_hidden: ``L + 1`` tensors ``[B, S, H]`` each (same hidden_size).
        attention_mask: ``[B, S]`` 1 for tokens, 0 for padding.

    Returns:
        Scalar: ``sum_l mean_over_real_tokens_and_features (h_s - h_t)^2``.
    """
    if len(student_hidden) != len(teacher_hidden):
        raise ValueError(f"{len(student_hidden)} student states vs {len(teacher_hidden)} teacher states")
    mask = attention_mask.to(student_hidden[0].dtype)[..., None]
    denom = mask.sum() * student_hidden[0].shape[-1]
    return sum(((s - t.detach()) ** 2 * mask).sum() / denom for s, t in zip(student_hidden, teacher_hidden))


def multi_exit_loss(
    exit_logits: tuple[torch.Tensor, ...],
    labels: torch.Tensor | None,
    teacher_logits: tuple[torch.Tensor, ...] | torch.Tensor | None,
    *,
    kd_weight: float,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Joint loss of every exit: ``sum_l kd_weight * KD(exit_l, teacher_l) + (1 - kd_weight) * CE(exit_l, y)``.

    Args:
        exit_logits: ``L`` tensors ``[B, C]``, exit 1 first.
        labels: ``[B]`` int64 hard labels (needed when ``kd_weight < 1``).
        teacher_logits: one ``[B, C]`` tensor (the teacher's final logits for every exit, as in TA training)
            or ``L`` tensors (exit-to-exit distillation from the TA, as in slenderization and recovery).
        kd_weight: weight of the distillation term in ``[0, 1]`` (COST-EFF uses 0.9 when pruning).
        temperature: distillation temperature T.

    Returns:
        Scalar loss summed over exits.
    """
    if not 0.0 <= kd_weight <= 1.0:
        raise ValueError(f"kd_weight must be in [0, 1], got {kd_weight}")
    if isinstance(teacher_logits, torch.Tensor):
        teacher_logits = (teacher_logits,) * len(exit_logits)
    total = exit_logits[0].new_zeros((), dtype=torch.float32)
    for index, logits in enumerate(exit_logits):
        if kd_weight > 0:
            total = total + kd_weight * soft_cross_entropy(logits, teacher_logits[index], temperature)
        if kd_weight < 1:
            total = total + (1 - kd_weight) * F.cross_entropy(logits.float(), labels)
    return total

"""Taylor importance against every exit: first-order scores of every attention head and FFN neuron.

COST-EFF (Shen et al., EMNLP 2022, arXiv 2210.15523, Sec. 3.2-3.3) scores each weight by the first-order
Taylor term ``|w| * sum over batches |dL/dw|`` where ``L`` covers *every* exit (exit calibration), and sums the
weight scores over the structure a head or a neuron owns. The scores feed
:func:`~costeff_fast.training.allocation.allocate_widths`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch

from costeff_fast.modeling import CostEffForSequenceClassification

from .losses import Batch, check_distillation_pair, slenderization_loss
from .trainer import Device, forward_context, model_mode, place_model, resolve_autocast


@dataclass
class Importance:
    """Structured Taylor importance of one model (COST-EFF Sec. 3.2-3.3).

    Attributes:
        heads: one fp32 tensor ``[h_l]`` per layer: importance of each head, the sum over the head's column
            block ``[:, h*d:(h+1)*d]`` of the attention output matrix ``W_O`` of ``|w| * sum_b |dL_b/dw|``.
        neurons: one fp32 tensor ``[F_l]`` per layer: importance of each FFN neuron ``f``, the same quantity
            summed over ``W_1`` row ``intermediate.weight[f, :]``, its bias ``intermediate.bias[f]`` and
            ``W_2`` column ``output.weight[:, f]``.
        loss: mean loss over the batches (nats + squared hidden units), for logs.
        num_batches: number of batches accumulated.
    """

    heads: list[torch.Tensor]
    neurons: list[torch.Tensor]
    loss: float
    num_batches: int



def compute_importance(
    student: CostEffForSequenceClassification,
    ta: CostEffForSequenceClassification,
    batches: Iterable[Batch],
    *,
    kd_weight: float = 0.9,
    temperature: float = 1.0,
    hidden_weight: float = 1.0,
    calibrate_exits: bool = True,
    device: Device | None = None,
    autocast: bool | None = None,
) -> Importance:
    """Exit-calibrated first-order Taylor importance of every head and FFN neuron (COST-EFF Sec. 3.2-3.3).

    One pass over ``batches`` with dropout off (``student.eval()``, gradients on; the TA in eval mode, no
    gradients). Per batch ``b`` the loss is
    ``L_b = sum_exits [kd_weight * KD(student exit l, TA exit l) + (1 - kd_weight) * CE(exit l, y)]
    + hidden_weight * hidden MSE(student states, TA states)``; ``|dL_b/dw|`` is accumulated per batch and the
    weight importance is ``|w| * sum_b |dL_b/dw|`` (as the paper's code, Taylor score with accumulated absolute
    gradients). ``calibrate_exits=False`` is the ablation without exit calibration: only the last exit's
    KD + CE enters the loss (the hidden MSE stays).

    Only the weights that define the structured scores are differentiated (``W_O``, ``W_1`` and its bias,
    ``W_2``); the model's ``.grad`` fields are left untouched and its train/eval mode is restored. The forwards
    run under bf16 autocast when ``autocast`` resolves on; the gradients of the fp32 weights and the scores are
    fp32.

    Args:
        student: model to score (any per-layer widths, possibly factorized embedding).
        ta: teaching assistant with the same ``hidden_size``, ``num_hidden_layers`` and ``num_labels``.
        batches: iterable of dicts: ``input_ids [B, S]`` int64, ``attention_mask [B, S]``,
            ``token_type_ids [B, S]``, ``labels [B]`` int64 (needed when ``kd_weight < 1``).
        kd_weight: weight of exit-to-exit distillation vs hard cross-entropy (paper: 0.9).
        temperature: distillation temperature T.
        hidden_weight: weight of the hidden-state MSE (0 drops it).
        calibrate_exits: score against every exit (True, the paper) or only the last one (ablation).
        device: move the student and the TA there first (:func:`~costeff_fast.training.trainer.resolve_device`;
            None: leave them where they are, the TA on the student's device).
        autocast: bf16 autocast of the forwards (None: on for CUDA,
            :func:`~costeff_fast.training.trainer.resolve_autocast`).

    Returns:
        :class:`Importance` with per-layer head scores ``[h_l]`` and neuron scores ``[F_l]`` (fp32, >= 0, on
        the student's device).

    Raises:
        ValueError: ``batches`` is empty, the student and TA are incompatible, a batch is malformed, or a
            ``device`` that ``resolve_device`` refuses.
    """
    check_distillation_pair(student, ta)
    device = place_model(student, device)
    place_model(ta, device)
    use_autocast = resolve_autocast(autocast, device)
    params = []
    for layer in student.layers:
        params += [layer.attention_output.weight, layer.intermediate.weight, layer.intermediate.bias]
        params.append(layer.output.weight)
    accumulated = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    total_loss, num_batches = 0.0, 0
    with model_mode(student, False), model_mode(ta, False):
        for batch in batches:
            with forward_context(device, use_autocast):
                loss = slenderization_loss(
                    student,
                    ta,
                    batch,
                    kd_weight=kd_weight,
                    temperature=temperature,
                    hidden_weight=hidden_weight,
                    all_exits=calibrate_exits,
                )
            grads = torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True)
            for acc, grad in zip(accumulated, grads):
                acc += grad.detach().float().abs()
            total_loss += loss.item()
            num_batches += 1
    if num_batches == 0:
        raise ValueError("compute_importance needs at least one batch")

    heads, neurons = [], []
    head_size = student.config.attention_head_size
    scores = [p.detach().float().abs() * acc for p, acc in zip(params, accumulated)]  # |w| * sum_b |dL_b/dw|
    for index, layer in enumerate(student.layers):
        w_o, w_1, b_1, w_2 = scores[4 * index : 4 * index + 4]
        heads.append(w_o.sum(dim=0).view(layer.num_heads, head_size).sum(dim=1))  # [H, h*d] -> [h]
        neurons.append(w_1.sum(dim=1) + b_1 + w_2.sum(dim=0))  # [F, H] rows + [F] + [H, F] columns -> [F]
    return Importance(heads=heads, neurons=neurons, loss=total_loss / num_batches, num_batches=num_batches)


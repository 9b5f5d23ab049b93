"""Width allocation: which heads and FFN neurons every layer keeps, uniform (the paper) or global (ours).

Given the Taylor scores of :mod:`costeff_fast.training.importance`, COST-EFF (Shen et al., EMNLP 2022, arXiv
2210.15523, Sec. 3.2) and the authors' released code (GitHub sbwww/COST-EFF) give every layer the same width;
``allocation="global"`` lets widths differ per layer under the same budget of heads and neurons.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch

from .importance import Importance


@dataclass
class Allocation:
    """Per-layer kept indices, ascending: ``heads[l]`` int64 ``[h'_l]``, ``neurons[l]`` int64 ``[F'_l]``."""

    heads: list[torch.Tensor]
    neurons: list[torch.Tensor]

    @property
    def num_attention_heads(self) -> list[int]:
        """Per-layer head counts after pruning."""
        return [keep.numel() for keep in self.heads]

    @property
    def intermediate_size(self) -> list[int]:
        """Per-layer FFN widths after pruning."""
        return [keep.numel() for keep in self.neurons]


def _check_scores(scores: Sequence[torch.Tensor], what: str) -> list[torch.Tensor]:
    checked = []
    for layer, values in enumerate(scores):
        values = torch.as_tensor(values).detach().float().cpu()
        if values.dim() != 1 or values.numel() == 0:
            raise ValueError(
                f"{what} scores of layer {layer} must be a non-empty 1-D tensor, got shape {tuple(values.shape)}"
            )
        if not bool(torch.isfinite(values).all()) or bool((values < 0).any()):
            raise ValueError(f"{what} scores of layer {layer} must be finite and >= 0")
        checked.append(values)
    return checked


def _top(values: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the ``count`` largest values (ties: lower index first), ascending."""
    return torch.sort(torch.argsort(values, descending=True, stable=True)[:count]).values


def _uniform_keep(scores: list[torch.Tensor], width: int, what: str) -> list[torch.Tensor]:
    for layer, values in enumerate(scores):
        if not 1 <= width <= values.numel():
            raise ValueError(f"uniform allocation of {width} {what}s per layer: layer {layer} has {values.numel()}")
    return [_top(values, width) for values in scores]


def _global_keep(scores: list[torch.Tensor], width: int, minimum: int, what: str) -> list[torch.Tensor]:
    """Keep ``width * L`` units across layers by per-layer mean-normalized score, at least ``minimum`` per layer."""
    num_layers = len(scores)
    budget = width * num_layers
    widths = [values.numel() for values in scores]
    if minimum < 1:
        raise ValueError(f"the minimum number of {what}s per layer must be >= 1, got {minimum}")
    if min(widths) < minimum:
        raise ValueError(f"a layer has {min(widths)} {what}s, fewer than the minimum {minimum}")
    if not minimum * num_layers <= budget <= sum(widths):
        raise ValueError(
            f"global budget {width} {what}s x {num_layers} layers = {budget} must lie in "
            f"[{minimum * num_layers}, {sum(widths)}] (minimum per layer x layers, current total)"
        )
    normalized = [values / values.mean() if values.mean() > 0 else torch.zeros_like(values) for values in scores]
    reserved = [torch.argsort(values, descending=True, stable=True)[:minimum] for values in normalized]
    candidate_layer, candidate_index, candidate_value = [], [], []
    for layer, (values, taken) in enumerate(zip(normalized, reserved)):
        free = torch.ones_like(values, dtype=torch.bool)
        free[taken] = False
        index = free.nonzero().flatten()
        candidate_layer.append(torch.full_like(index, layer))
        candidate_index.append(index)
        candidate_value.append(values[index])
    order = torch.argsort(torch.cat(candidate_value), descending=True, stable=True)[: budget - minimum * num_layers]
    chosen_layer, chosen_index = torch.cat(candidate_layer)[order], torch.cat(candidate_index)[order]
    return [
        torch.sort(torch.cat([reserved[layer], chosen_index[chosen_layer == layer]])).values
        for layer in range(num_layers)
    ]


def allocate_widths(
    importance: Importance,
    *,
    heads: int,
    ffn: int,
    allocation: Literal["uniform", "global"] = "uniform",
    min_heads: int = 1,
    min_ffn: int = 1,
) -> Allocation:
    """Choose which heads and FFN neurons every layer keeps.

    ``uniform`` (the paper, COST-EFF Sec. 3.2 and its code): layer ``l`` keeps its ``heads`` best heads and
    ``ffn`` best neurons, so every layer has the same width.

    ``global`` (ours): one budget of ``heads * L`` heads and, separately, ``ffn * L`` neurons (the uniform
    totals, hence the same encoder parameter count and FLOPs, every head and every neuron costing the same)
    is filled across layers. Taylor scores are not comparable across layers as they are (gradient magnitudes
    differ with depth, all the more with a loss on every exit), so each layer's scores are divided by that
    layer's mean score (a layer with all-zero scores gets zeros); a unit then ranks by its importance relative
    to the average unit of its own layer. This makes the allocation invariant to rescaling one layer's
    scores, and moves width toward layers whose importance is spread over many units and away from layers
    where a few units carry it. (Molchanov et al., ICLR 2017, normalize by the layer's L2 norm instead; the
    L2 norm of ``n`` equal scores shrinks like ``1/sqrt(n)``, which would favour pruning the wider layers
    whatever their scores, so we use the mean.) Every layer first reserves its top ``min_heads`` heads and
    ``min_ffn`` neurons; the rest of the budget goes to the highest normalized scores, ties to the lower
    layer, then the lower index.

    Args:
        importance: per-layer scores from :func:`~costeff_fast.training.importance.compute_importance`
            (``heads[l] [h_l]``, ``neurons[l] [F_l]``, finite, >= 0).
        heads: heads kept per layer (uniform) or on average per layer (global), >= 1.
        ffn: FFN neurons kept per layer (uniform) or on average per layer (global), >= 1.
        allocation: ``"uniform"`` or ``"global"``.
        min_heads, min_ffn: per-layer minimums of the global allocation (>= 1; ignored by uniform).

    Returns:
        :class:`Allocation`: ascending kept indices per layer, ready for
        :func:`~costeff_fast.training.pruning.prune_heads` and :func:`~costeff_fast.training.pruning.prune_neurons`.

    Raises:
        ValueError: an unknown allocation, a width < 1 or above a layer's current width (uniform), a budget
            outside ``[minimum * L, current total]`` (global), or malformed scores.
    """
    head_scores = _check_scores(importance.heads, "head")
    neuron_scores = _check_scores(importance.neurons, "neuron")
    if len(head_scores) != len(neuron_scores):
        raise ValueError(f"{len(head_scores)} layers of head scores vs {len(neuron_scores)} of neuron scores")
    if allocation == "uniform":
        return Allocation(_uniform_keep(head_scores, heads, "head"), _uniform_keep(neuron_scores, ffn, "neuron"))
    if allocation == "global":
        return Allocation(
            _global_keep(head_scores, heads, min_heads, "head"), _global_keep(neuron_scores, ffn, min_ffn, "neuron")
        )
    raise ValueError(f"allocation must be 'uniform' or 'global', got {allocation!r}")


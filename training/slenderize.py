"""Exit-calibrated slenderization: importance against every exit, physical pruning, embedding SVD, width allocation.

COST-EFF (Shen et al., EMNLP 2022, arXiv 2210.15523, Sec. 3.2-3.3) narrows a full-width multi-exit model (the
TA copy) in repeated pruning events while keeping its depth. Before each event every weight gets the
first-order Taylor importance ``|w| * sum over batches |dL/dw|`` where ``L`` covers *every* exit (exit
calibration); heads and FFN neurons with the lowest summed importance are removed physically, the word
embedding is re-factorized by truncated SVD, and the student is distilled from the TA until the next event.
The paper's public code (github.com/sbwww/COST-EFF, ``Costeff/pruning.py``, ``run_glue_costeff.py``) gives
every layer the same width; :func:`allocate_widths` with ``allocation="global"`` lets widths differ per layer
under the same budget.

Pipeline entry point: :func:`slenderize`. Building blocks: :func:`compute_importance`,
:func:`allocate_widths`, :func:`prune_heads`, :func:`prune_neurons`, :func:`factorize_embedding`,
:func:`pruning_schedule`, :func:`plan_events`.
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Literal, Mapping, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from costeff_fast.config import CostEffConfig
from costeff_fast.modeling import CostEffForSequenceClassification

from .losses import hidden_mse, multi_exit_loss

Batch = Mapping[str, torch.Tensor]


# Loss shared by importance estimation and the distillation between events


@contextlib.contextmanager
def _mode(model: nn.Module, training: bool) -> Iterator[None]:
    """Put ``model`` in train/eval mode for the block, then restore its previous mode."""
    previous = model.training
    model.train(training)
    try:
        yield
    finally:
        model.train(previous)


def _check_pair(student: CostEffForSequenceClassification, ta: CostEffForSequenceClassification) -> None:
    """Raise ValueError unless the student can be distilled from ``ta`` state by state and exit by exit."""
    for name in ("hidden_size", "num_hidden_layers", "num_labels"):
        if getattr(student.config, name) != getattr(ta.config, name):
            raise ValueError(
                f"student and TA must share {name}: {getattr(student.config, name)} vs {getattr(ta.config, name)}"
            )


def _slenderization_loss(
    student: CostEffForSequenceClassification,
    ta: CostEffForSequenceClassification,
    batch: Batch,
    *,
    kd_weight: float,
    temperature: float,
    hidden_weight: float,
    all_exits: bool,
) -> torch.Tensor:
    """COST-EFF slenderization objective on one batch (Sec. 3.3).

    ``sum_l [kd_weight * KD(exit_l, TA exit_l) + (1 - kd_weight) * CE(exit_l, y)] + hidden_weight * MSE`` where
    ``l`` runs over every exit (``all_exits``) or only the last one, and MSE is :func:`hidden_mse` over the
    ``L + 1`` hidden states. The TA runs without gradients in its current mode.

    Args:
        batch: ``input_ids [B, S]`` int64 (required), ``attention_mask [B, S]`` (default ones),
            ``token_type_ids [B, S]`` (default zeros), ``labels [B]`` int64 (required when ``kd_weight < 1``).

    Returns:
        Scalar fp32 loss.

    Raises:
        ValueError: a batch without ``input_ids``, or without ``labels`` while ``kd_weight < 1``.
    """
    if "input_ids" not in batch:
        raise ValueError(f"a batch needs input_ids, got keys {sorted(batch)}")
    device = student.embeddings.position_embeddings.weight.device
    input_ids = batch["input_ids"].to(device)
    attention_mask = batch.get("attention_mask")
    attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(device)
    token_type_ids = batch.get("token_type_ids")
    token_type_ids = None if token_type_ids is None else token_type_ids.to(device)
    labels = batch.get("labels")
    if labels is None and kd_weight < 1:
        raise ValueError(f"kd_weight={kd_weight} < 1 needs hard labels: the batch has no 'labels'")
    labels = None if labels is None else labels.to(device)
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
    with torch.no_grad():
        teacher = ta(**inputs, output_hidden_states=True)
    student_out = student(**inputs, output_hidden_states=True)
    exits = slice(None) if all_exits else slice(-1, None)
    loss = multi_exit_loss(
        student_out.exit_logits[exits],
        labels,
        teacher.exit_logits[exits],
        kd_weight=kd_weight,
        temperature=temperature,
    )
    if hidden_weight:
        loss = loss + hidden_weight * hidden_mse(student_out.hidden_states, teacher.hidden_states, attention_mask)
    return loss


# Importance


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
    ``W_2``); the model's ``.grad`` fields are left untouched and its train/eval mode is restored.

    Args:
        student: model to score (any per-layer widths, possibly factorized embedding).
        ta: teaching assistant with the same ``hidden_size``, ``num_hidden_layers`` and ``num_labels``.
        batches: iterable of dicts: ``input_ids [B, S]`` int64, ``attention_mask [B, S]``,
            ``token_type_ids [B, S]``, ``labels [B]`` int64 (needed when ``kd_weight < 1``).
        kd_weight: weight of exit-to-exit distillation vs hard cross-entropy (paper: 0.9).
        temperature: distillation temperature T.
        hidden_weight: weight of the hidden-state MSE (0 drops it).
        calibrate_exits: score against every exit (True, the paper) or only the last one (ablation).

    Returns:
        :class:`Importance` with per-layer head scores ``[h_l]`` and neuron scores ``[F_l]`` (fp32, >= 0).

    Raises:
        ValueError: ``batches`` is empty, the student and TA are incompatible, or a batch is malformed.
    """
    _check_pair(student, ta)
    params = []
    for layer in student.layers:
        params += [layer.attention_output.weight, layer.intermediate.weight, layer.intermediate.bias]
        params.append(layer.output.weight)
    accumulated = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    total_loss, num_batches = 0.0, 0
    with _mode(student, False), _mode(ta, False):
        for batch in batches:
            loss = _slenderization_loss(
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


# Physical pruning


def _check_keep(keep: Sequence, widths: list[int], what: str) -> list[torch.Tensor]:
    """Validate per-layer keep indices and return them as sorted int64 tensors."""
    if len(keep) != len(widths):
        raise ValueError(f"keep must hold one index list per layer ({len(widths)}), got {len(keep)}")
    checked = []
    for layer, (indices, width) in enumerate(zip(keep, widths)):
        indices = torch.as_tensor(indices)
        if indices.numel() == 0:
            raise ValueError(f"keep[{layer}] is empty: every layer must keep at least one {what}")
        if indices.dim() != 1 or indices.dtype.is_floating_point or indices.dtype == torch.bool:
            raise ValueError(
                f"keep[{layer}] must be a 1-D integer tensor, got dtype {indices.dtype}, shape {tuple(indices.shape)}"
            )
        indices = torch.sort(indices.long().cpu()).values
        if indices[0] < 0 or indices[-1] >= width:
            raise ValueError(f"keep[{layer}] has indices outside [0, {width}) for {width} {what}s: {indices.tolist()}")
        if bool((indices[1:] == indices[:-1]).any()):
            raise ValueError(f"keep[{layer}] has duplicate indices: {indices.tolist()}")
        checked.append(indices)
    return checked


def _select_(linear: nn.Linear, dim: int, index: torch.Tensor) -> None:
    """Keep only ``index`` along ``dim`` of ``linear.weight`` (0: output rows, also the bias; 1: input columns)."""
    index = index.to(linear.weight.device)
    weight = linear.weight
    linear.weight = nn.Parameter(weight.detach().index_select(dim, index).clone(), requires_grad=weight.requires_grad)
    if dim == 0:
        linear.out_features = index.numel()
        if linear.bias is not None:
            bias = linear.bias
            linear.bias = nn.Parameter(bias.detach().index_select(0, index).clone(), requires_grad=bias.requires_grad)
    else:
        linear.in_features = index.numel()


@torch.no_grad()
def prune_heads(model: CostEffForSequenceClassification, keep: Sequence[torch.Tensor]) -> None:
    """Remove attention heads physically, in place (COST-EFF Sec. 3.2).

    For layer ``l`` with kept heads ``k`` (sorted ascending, so survivors keep their order) the kept units
    are ``u = [h*d + j for h in k for j in range(d)]``: ``query``/``key``/``value`` keep rows ``u`` of their
    weight ``[h_l*d, H]`` and bias ``[h_l*d]``; ``attention_output`` (``W_O [H, h_l*d]``) keeps columns ``u``.
    ``config.num_attention_heads[l]`` and ``layer.num_heads`` become ``len(k)``. Parameters are replaced, so an
    optimizer built before the call must be re-created.

    Args:
        model: the model to prune.
        keep: one 1-D integer tensor (or list) of head indices per layer, each in ``[0, h_l)``, any order.

    Raises:
        ValueError: a wrong number of lists, an empty list (every layer keeps >= 1 head), an index out of
            range, a duplicate, or a non-integer list.
    """
    keep = _check_keep(keep, list(model.config.num_attention_heads), "head")
    head_size = model.config.attention_head_size
    for layer, heads in zip(model.layers, keep):
        units = (heads[:, None] * head_size + torch.arange(head_size)).flatten()
        for linear in (layer.query, layer.key, layer.value):
            _select_(linear, 0, units)
        _select_(layer.attention_output, 1, units)
        layer.num_heads = heads.numel()
    model.config.num_attention_heads = [heads.numel() for heads in keep]


@torch.no_grad()
def prune_neurons(model: CostEffForSequenceClassification, keep: Sequence[torch.Tensor]) -> None:
    """Remove FFN neurons physically, in place (COST-EFF Sec. 3.2).

    For layer ``l`` with kept neurons ``k`` (sorted ascending): ``intermediate`` (``W_1 [F_l, H]``, bias
    ``[F_l]``) keeps rows ``k``, ``output`` (``W_2 [H, F_l]``) keeps columns ``k``;
    ``config.intermediate_size[l]`` becomes ``len(k)``. Parameters are replaced (re-create optimizers).

    Args:
        model: the model to prune.
        keep: one 1-D integer tensor (or list) of neuron indices per layer, each in ``[0, F_l)``, any order.

    Raises:
        ValueError: a wrong number of lists, an empty list (every layer keeps >= 1 neuron), an index out of
            range, a duplicate, or a non-integer list.
    """
    keep = _check_keep(keep, list(model.config.intermediate_size), "neuron")
    for layer, neurons in zip(model.layers, keep):
        _select_(layer.intermediate, 0, neurons)
        _select_(layer.output, 1, neurons)
    model.config.intermediate_size = [neurons.numel() for neurons in keep]


@torch.no_grad()
def factorize_embedding(model: CostEffForSequenceClassification, rank: int) -> torch.Tensor:
    """Replace the word embedding by its best rank-``r`` factorization ``E ~ A @ B`` (COST-EFF Sec. 3.2).

    ``E = model.embeddings.word_embedding_matrix()`` ``[V, H]`` (the product ``A_old @ B_old`` when already
    factorized, so re-factorizing to a smaller rank works) is decomposed in fp32 with a thin SVD
    (``torch.linalg.svd(E, full_matrices=False)``: ``U [V, k]``, ``S [k]``, ``Vh [k, H]``, ``k = min(V, H)``).
    ``A = U[:, :r] * S[:r]`` ``[V, r]`` becomes ``word_embeddings`` (an ``Embedding(V, r)``) and
    ``B = Vh[:r]`` ``[r, H]`` becomes ``word_projection`` (``Linear(r, H, bias=False)``, weight ``B^T [H, r]``);
    ``config.embedding_rank = r``. By Eckart-Young, ``||E - A B||_F^2 = sum_{i >= r} S_i^2``, the minimum over
    rank-``r`` matrices; at ``r = H`` the embedding is reproduced up to rounding. A rank above the current
    one is allowed and adds only zero singular directions.

    Args:
        model: the model to modify in place (parameters keep their dtype and device).
        rank: ``r`` in ``[1, hidden_size]``.

    Returns:
        All singular values ``S [min(V, H)]`` fp32 of the embedding before truncation (for logs).

    Raises:
        ValueError: ``rank`` is not an int in ``[1, hidden_size]``.
    """
    hidden_size = model.config.hidden_size
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= hidden_size:
        raise ValueError(f"rank must be an int in [1, hidden_size={hidden_size}], got {rank!r}")
    embeddings = model.embeddings
    old = embeddings.word_embeddings
    matrix = embeddings.word_embedding_matrix().detach().float()
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    dtype, device = old.weight.dtype, old.weight.device
    words = nn.Embedding(matrix.shape[0], rank, padding_idx=old.padding_idx, device=device, dtype=dtype)
    words.weight.copy_(u[:, :rank] * s[:rank])
    projection = nn.Linear(rank, hidden_size, bias=False, device=device, dtype=dtype)
    projection.weight.copy_(vh[:rank].T)
    embeddings.word_embeddings = words
    embeddings.word_projection = projection
    model.config.embedding_rank = rank
    return s


# Width allocation


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
        importance: per-layer scores from :func:`compute_importance` (``heads[l] [h_l]``,
            ``neurons[l] [F_l]``, finite, >= 0).
        heads: heads kept per layer (uniform) or on average per layer (global), >= 1.
        ffn: FFN neurons kept per layer (uniform) or on average per layer (global), >= 1.
        allocation: ``"uniform"`` or ``"global"``.
        min_heads, min_ffn: per-layer minimums of the global allocation (>= 1; ignored by uniform).

    Returns:
        :class:`Allocation`: ascending kept indices per layer, ready for :func:`prune_heads` and
        :func:`prune_neurons`.

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


# Schedule


@dataclass(frozen=True)
class Event:
    """Targets of one pruning event: per-layer (or, global, average per-layer) ``heads`` and ``ffn`` widths,
    and the word-embedding rank (None: leave the embedding as it is)."""

    heads: int
    ffn: int
    embedding_rank: int | None


def pruning_schedule(start: int, target: int, num_events: int) -> list[int]:
    """Widths after each of ``num_events`` events, shrinking linearly from ``start`` to ``target``.

    Event ``k`` (1-based) reaches ``start - floor((start - target) * k / num_events)``, in exact integer
    arithmetic: non-increasing, each step removes ``floor`` or ``ceil`` of ``(start - target) / num_events``,
    and event ``num_events`` hits ``target`` exactly. With ``num_events = start - target`` each event removes
    exactly one unit (the paper's head schedule); the paper's code shrinks FFN width and embedding rank by
    the same linear rule (``run_glue_costeff.py``, ``pruning_schedule``).

    Args:
        start: current width, >= 1.
        target: final width in ``[1, start]``.
        num_events: number of events, >= 1.

    Returns:
        ``num_events`` ints, the width after each event.

    Raises:
        ValueError: a non-int argument, ``target`` outside ``[1, start]`` or ``num_events < 1``.
    """
    for name, value in (("start", start), ("target", target), ("num_events", num_events)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an int, got {value!r}")
    if not 1 <= target <= start:
        raise ValueError(f"target must lie in [1, start={start}] (widths only shrink), got {target}")
    if num_events < 1:
        raise ValueError(f"num_events must be >= 1, got {num_events}")
    return [start - (start - target) * k // num_events for k in range(1, num_events + 1)]


def plan_events(
    config: CostEffConfig, heads: int, ffn: int, embedding_rank: int | None, num_events: int | None = None
) -> list[Event]:
    """Per-event targets that take ``config``'s widths to (``heads``, ``ffn``, ``embedding_rank``).

    Start widths are the per-layer means of ``config.num_attention_heads`` and ``config.intermediate_size``
    rounded down (the widths themselves for a uniform model) and the current embedding rank
    (``config.embedding_rank``, or ``hidden_size`` when not factorized). By default there is one event per
    removed head, ``num_events = start_heads - heads`` (the paper), or a single event when no head is removed
    but FFN or embedding shrink, and none when nothing changes. Each width follows
    :func:`pruning_schedule` over the same events; e.g. 12 heads -> 6, FFN 3072 -> 1536, rank 768 -> 384:
    6 events with heads 11, 10, ..., 6, FFN 2816, 2560, ..., 1536 and rank 704, 640, ..., 384.
    ``embedding_rank=None`` leaves the embedding alone (every event's rank is None).

    Args:
        config: configuration of the model to slenderize.
        heads, ffn: final per-layer (or average per-layer) widths, ``1 <= target <= start``.
        embedding_rank: final rank in ``[1, current rank]`` or None.
        num_events: override the number of events (>= 1).

    Returns:
        List of :class:`Event`, in order; the last one holds the final targets.

    Raises:
        ValueError: a target outside ``[1, start]`` or ``num_events < 1`` (via :func:`pruning_schedule`).
    """
    num_layers = config.num_hidden_layers
    start_heads = sum(config.num_attention_heads) // num_layers
    start_ffn = sum(config.intermediate_size) // num_layers
    start_rank = config.embedding_rank or config.hidden_size
    if num_events is None:
        changes = (start_heads != heads, start_ffn != ffn, embedding_rank is not None and embedding_rank != start_rank)
        num_events = max(start_heads - heads, 1) if any(changes) else 0
        if num_events == 0:
            return []
    head_widths = pruning_schedule(start_heads, heads, num_events)
    ffn_widths = pruning_schedule(start_ffn, ffn, num_events)
    ranks = [None] * num_events if embedding_rank is None else pruning_schedule(start_rank, embedding_rank, num_events)
    return [Event(h, f, r) for h, f, r in zip(head_widths, ffn_widths, ranks)]


# The slenderization loop


def _new_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over every trainable parameter; no weight decay on biases and LayerNorm weights (1-D tensors)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr)


def _batches_forever(factory: Callable[[], Iterable[Batch]]) -> Iterator[Batch]:
    """Yield batches from ``factory()``, calling it again whenever an epoch ends."""
    while True:
        empty = True
        for batch in factory():
            empty = False
            yield batch
        if empty:
            raise ValueError("train_batches_factory() yielded no batch")


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
    lr: float = 2e-5,
    weight_decay: float = 0.01,
    max_grad_norm: float | None = 1.0,
    kd_weight: float = 0.9,
    temperature: float = 1.0,
    hidden_weight: float = 1.0,
    min_heads: int = 1,
    min_ffn: int = 1,
    progress: bool = True,
    on_event: Callable[[int, Event, CostEffForSequenceClassification, dict[str, float]], None] | None = None,
) -> CostEffForSequenceClassification:
    """Slenderize ``student`` in place by iterative exit-calibrated pruning (COST-EFF Sec. 3.2-3.3).

    For each :class:`Event` of :func:`plan_events` (by default one head removed per layer per event; FFN
    width and embedding rank shrink linearly alongside):

    1. :func:`compute_importance` over ``importance_batches`` batches of a fresh ``train_batches_factory()``
       (every batch of one pass when None, as the paper's code) with the exit-calibrated loss
       (``calibrate_exits=False``: last exit only, the ablation);
    2. :func:`allocate_widths` to the event's targets (``allocation``);
    3. :func:`prune_heads`, :func:`prune_neurons`;
    4. :func:`factorize_embedding` to the event's rank (skipped when ``embedding_rank`` is None);
    5. a new AdamW (the optimizer reset: pruning replaced the parameters and stale moments would not match
       them), then ``distill_steps_between_events`` steps in train mode (dropout on) on batches from
       ``train_batches_factory()`` (re-called when exhausted), loss ``sum over all exits
       [kd_weight * KD(exit l, TA exit l) + (1 - kd_weight) * CE] + hidden_weight * hidden MSE``, gradient
       norm clipped to ``max_grad_norm``, constant ``lr``. ``calibrate_exits`` only changes step 1, so the
       ablation isolates the importance criterion.

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
        lr, weight_decay, max_grad_norm: AdamW learning rate, decoupled weight decay (not on 1-D tensors),
            gradient clipping (None: off).
        kd_weight, temperature, hidden_weight: loss weights, see :func:`compute_importance`.
        min_heads, min_ffn: per-layer minimums of the global allocation.
        progress: show a tqdm bar with the loss during distillation.
        on_event: called after each event's distillation as ``on_event(index, event, student, stats)`` with
            ``index`` 0-based and ``stats = {"importance_loss", "distill_loss"}`` (mean losses; distill_loss
            is NaN when no step ran), e.g. to save a checkpoint or log widths.

    Returns:
        ``student``, slender: per-layer widths in its config (``num_attention_heads``, ``intermediate_size``,
        ``embedding_rank``), ready for ``save_pretrained``.

    Raises:
        ValueError: incompatible student and TA, bad targets (see :func:`plan_events`,
            :func:`allocate_widths`), a negative step count, or an empty batch factory.
    """
    _check_pair(student, ta)
    if distill_steps_between_events < 0:
        raise ValueError(f"distill_steps_between_events must be >= 0, got {distill_steps_between_events}")
    if importance_batches is not None and importance_batches < 1:
        raise ValueError(f"importance_batches must be >= 1 or None, got {importance_batches}")
    events = plan_events(student.config, heads, ffn, embedding_rank, num_events)
    loss_kwargs = dict(kd_weight=kd_weight, temperature=temperature, hidden_weight=hidden_weight)
    train_batches = _batches_forever(train_batches_factory)
    for index, event in enumerate(events):
        importance = compute_importance(
            student,
            ta,
            itertools.islice(train_batches_factory(), importance_batches),
            calibrate_exits=calibrate_exits,
            **loss_kwargs,
        )
        keep = allocate_widths(
            importance, heads=event.heads, ffn=event.ffn, allocation=allocation, min_heads=min_heads, min_ffn=min_ffn
        )
        prune_heads(student, keep.heads)
        prune_neurons(student, keep.neurons)
        if event.embedding_rank is not None:
            factorize_embedding(student, event.embedding_rank)

        optimizer = _new_optimizer(student, lr, weight_decay)
        total = 0.0
        bar = tqdm(
            range(distill_steps_between_events),
            desc=f"slenderize event {index + 1}/{len(events)} (heads {event.heads}, ffn {event.ffn})",
            disable=not progress,
        )
        with _mode(student, True), _mode(ta, False):
            for _ in bar:
                loss = _slenderization_loss(student, ta, next(train_batches), all_exits=True, **loss_kwargs)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(student.parameters(), max_grad_norm)
                optimizer.step()
                total += loss.item()
                bar.set_postfix(loss=f"{loss.item():.4f}")
        student.zero_grad(set_to_none=True)
        if on_event is not None:
            steps = distill_steps_between_events
            stats = {"importance_loss": importance.loss, "distill_loss": total / steps if steps else float("nan")}
            on_event(index, event, student, stats)
    return student

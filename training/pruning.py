"""Physical pruning: removal of attention heads and FFN neurons, word-embedding re-factorization by truncated SVD.

COST-EFF (Shen et al., EMNLP 2022, arXiv 2210.15523, Sec. 3.2) slims the model structurally: the pruned
rows and columns leave the weight matrices (no masks), so a pruned checkpoint is smaller and faster, and its
per-layer widths are recorded in the config (``num_attention_heads``, ``intermediate_size``,
``embedding_rank``).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from costeff_fast.modeling import CostEffForSequenceClassification


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


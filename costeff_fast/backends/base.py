"""The backend interface the engine drives: pure operations on packed tokens, tensors in and tensors out.

A backend holds :class:`~costeff_fast.packing.PackedWeights` on its device and runs, on the packed tokens
``hidden [T, H]`` (the weights' storage dtype) of the ``B`` rows a :class:`~costeff_fast.batch.PackedBatch`
lays out:

1. :meth:`Backend.embed` -- token ids ``[T]`` to ``hidden [T, H]``;
2. :meth:`Backend.layer` -- one encoder layer, ``hidden -> (hidden, features)``;
3. :meth:`Backend.exit_logits` -- one exit head, ``-> (logits [B, C] fp32, entropy [B] fp32 or None)``;
4. :meth:`Backend.exit_decision` -- ``entropy(logits) < tau``, for backends whose exit head gives no entropy;
5. :meth:`Backend.compact` -- keep the token spans of some rows, ``-> (hidden [T', H], batch)``.

No operation knows about thresholds, layers that cannot exit, the last layer, outputs or syncs: that policy
lives once, in :mod:`costeff_fast.engine`. A backend's fused fast path hides behind one of these signatures
(the native layer returns its rows' token means as ``features``; the Triton exit head returns the entropy from
the same kernel). Every implementation is checked against :mod:`costeff_fast.reference`, which the ``torch``
backend runs as it is.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from .. import reference
from ..batch import PackedBatch
from ..packing import PackedWeights


@dataclass(frozen=True)
class LayerExit:
    """What a fused layer computed for its exit in the same launch (a backend's ``features``, see
    :class:`Backend`): the ``[B, H]`` fp32 vectors the exit reads and, when the layer ran the exit head too, its
    ``logits [B, C]`` fp32 and ``entropy [B]`` fp32 (nats), else None."""

    features: torch.Tensor
    logits: torch.Tensor | None = None
    entropy: torch.Tensor | None = None


class Backend(ABC):
    """One way to run the engine's operations (see the module docstring).

    ``features``, what :meth:`layer` returns beside ``hidden`` and :meth:`exit_logits` takes back, opaque to the
    engine: the ``[B, H]`` vectors exit ``index`` reads (each row's token mean for a mean-pooling exit) when the
    layer computed them in its own pass, a :class:`LayerExit` when it ran the exit head too, else None (the exit
    head then reads ``hidden``).

    Args:
        weights: packed weights, already on ``device`` in the backend's storage dtype (int8 GEMM weights, when
            ``weights.quantize == "int8"``, are checked at packing time: :meth:`PackedWeights.from_model`).
        device: where the weights live and the work runs.

    Attributes:
        name: the backend's name in ``from_pretrained(..., backend=name)``.
        num_layers, num_labels: L and C of the packed model.
    """

    name: str = "abstract"

    def __init__(self, weights: PackedWeights, device: torch.device | str):
        self.weights = weights
        self.device = torch.device(device)
        self.num_layers = len(weights.layers)
        self.num_labels = weights.exits[0].classifier_weight.shape[1]

    @property
    def quantize(self) -> str | None:
        """The weights' :attr:`~costeff_fast.packing.PackedWeights.quantize`: None, or ``"int8"``."""
        return self.weights.quantize

    @abstractmethod
    def embed(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        """Word + position + token-type embeddings, then LayerNorm: ``[T]`` int64 ids on the device ->
        ``hidden [T, H]`` in the storage dtype."""

    @abstractmethod
    def layer(
        self, index: int, hidden: torch.Tensor, batch: PackedBatch
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encoder layer ``index`` (0-based): ``hidden [T, H]`` -> ``(hidden [T, H], features [B, H] or None)``
        (``features``: see the class docstring)."""

    @abstractmethod
    def exit_logits(
        self, index: int, hidden: torch.Tensor, batch: PackedBatch, features: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Exit head ``index`` on the rows of ``batch``: ``(logits [B, C] fp32, entropy [B] fp32 or None)`` on the
        device.

        ``entropy`` is the softmax entropy of ``logits`` in nats (:func:`costeff_fast.reference.exit_entropy`)
        when the head computes it anyway, else None (the engine then asks :meth:`exit_decision`).
        ``features`` as :meth:`layer` returned it.
        """

    def exit_decision(self, logits: torch.Tensor, entropy_threshold: float) -> torch.Tensor:
        """``[B]`` bool on the device: the softmax entropy (nats) of ``logits [B, C]`` fp32 is strictly below
        ``entropy_threshold`` (:func:`costeff_fast.reference.exit_decision`; a backend may fuse it)."""
        return reference.exit_decision(logits, entropy_threshold)

    @abstractmethod
    def compact(self, hidden: torch.Tensor, batch: PackedBatch, keep: torch.Tensor) -> tuple[torch.Tensor, PackedBatch]:
        """The rows where ``keep [B]`` (bool, **on the host**) is True, in order:
        ``(hidden [T', H], batch)`` with the new batch's ``row_ids`` those of the kept rows
        (:func:`costeff_fast.reference.compact_tokens`). The engine calls it with ``0 < keep.sum() < B``.
        """

    def exit_source(
        self, index: int, hidden: torch.Tensor, batch: PackedBatch, features: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """What exit ``index`` reads as ``(source, rows)``: the ``[B, H]`` vectors ``source[rows]``, for exit
        kernels that gather their rows themselves (:func:`costeff_fast.reference.exit_head`).

        [CLS] pooling reads ``hidden`` at ``batch.cls_index`` (no copy); mean pooling reads ``features`` (else
        :func:`costeff_fast.reference.exit_features`) at ``arange(B)``.
        """
        pooling = self.weights.exits[index].pooling
        if features is None and pooling == "cls":
            return hidden, batch.cls_index
        if features is None:
            features = reference.exit_features(hidden, batch, pooling)
        return features, torch.arange(batch.num_rows, device=features.device)

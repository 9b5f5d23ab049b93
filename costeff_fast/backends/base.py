"""The backend interface the engine drives: four operations on packed tokens, one signature each.

A backend holds :class:`~costeff_fast.packing.PackedWeights` on its device and runs, on packed tokens
``hidden [T, H]`` laid out by a :class:`~costeff_fast.batch.PackedBatch`:

1. :meth:`Backend.embed` -- token ids to ``hidden``;
2. :meth:`Backend.layer` -- one encoder layer, plus the exit's input when the layer gets it for free;
3. :meth:`Backend.exit` -- one exit: logits on the device and the exit mask on the host (the layer's one
   device-to-host wait);
4. :meth:`Backend.retire` -- write the exited rows' outputs and compact the survivors.

Both engine loops (:mod:`costeff_fast.engine`) call exactly these, the same way. Every implementation is
checked against :mod:`costeff_fast.reference`, which the ``torch`` backend runs as it is.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from .. import reference
from ..batch import PackedBatch
from ..packing import PackedWeights


class Backend(ABC):
    """One way to run the engine's four operations (see the module docstring).

    Args:
        weights: packed weights, already on ``device`` in the backend's storage dtype.
        device: where the weights live and the work runs.

    Attributes:
        name: the backend's name in ``from_pretrained(..., backend=name)``.
        num_layers, num_labels: L and C of the packed model.
        quantize: ``weights.quantize``: None, or ``"int8"`` when the layers' GEMMs run in int8 (CPU only).
    """

    name: str = "abstract"

    def __init__(self, weights: PackedWeights, device: torch.device | str):
        self.weights = weights
        self.device = torch.device(device)
        self.quantize = weights.quantize
        if self.quantize is not None and self.device.type != "cpu":
            raise ValueError(f"quantize={self.quantize!r} runs on the CPU (torch's int8 GEMMs), got device {self.device}")
        self.num_layers = len(weights.layers)
        self.num_labels = weights.exits[0].classifier_weight.shape[1]

    @abstractmethod
    def embed(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        """Word + position + token-type embeddings, then LayerNorm: ``[T]`` int64 ids -> ``hidden [T, H]``."""

    @abstractmethod
    def layer(
        self, index: int, hidden: torch.Tensor, batch: PackedBatch
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encoder layer ``index`` (0-based): ``hidden [T, H]`` -> ``(hidden [T, H], features)``.

        ``features`` is what exit ``index`` reads (``[B, H]``) when the backend computes it in the layer's own
        pass (the native tiled layer's row means), else None.
        """

    @abstractmethod
    def exit(
        self,
        index: int,
        hidden: torch.Tensor,
        batch: PackedBatch,
        features: torch.Tensor | None,
        entropy_threshold: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Exit ``index``: ``logits [B, C]`` fp32 on the device and the exit mask ``[B]`` bool **on the host**.

        A row exits when its softmax entropy (nats) is strictly below ``entropy_threshold``; at ``<= 0`` no
        row can, and the mask is all False without a device wait. ``features`` as :meth:`layer` returned it.
        """

    @abstractmethod
    def retire(
        self,
        hidden: torch.Tensor,
        batch: PackedBatch,
        logits: torch.Tensor,
        exits: torch.Tensor,
        logits_out: torch.Tensor,
        exit_layer: torch.Tensor,
        layer: int,
    ) -> tuple[torch.Tensor, PackedBatch]:
        """After exit ``layer`` (1-based): write ``logits[exits]`` and ``layer`` into ``logits_out [N, C]`` and
        ``exit_layer [N]`` at the exited rows' ``batch.row_ids``, and keep only the survivors.

        Returns:
            ``(hidden [T', H], batch)`` of the survivors: the inputs themselves when no row exited,
            ``batch.num_rows == 0`` when none is left (:func:`costeff_fast.reference.retire`).
        """

    def exit_source(
        self, index: int, hidden: torch.Tensor, batch: PackedBatch, features: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """What exit ``index`` reads as ``(source, rows)``: it reads ``source[rows]`` (``[B, H]``).

        [CLS] pooling reads ``hidden`` at ``batch.cls_index`` (no copy); mean pooling reads the row means
        (``features`` when the layer gave them, else :func:`costeff_fast.reference.exit_features`) at
        ``arange(B)``.
        """
        pooling = self.weights.exits[index].pooling
        if features is None and pooling == "cls":
            return hidden, batch.cls_index
        if features is None:
            features = reference.exit_features(hidden, batch, pooling)
        return features, torch.arange(batch.num_rows, device=features.device)


def no_exits(batch: PackedBatch) -> torch.Tensor:
    """The all-False host exit mask ``[B]`` of a layer where no row can exit."""
    return torch.zeros(batch.num_rows, dtype=torch.bool)

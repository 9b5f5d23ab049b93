"""The small interface the engine drives; plain torch implementations of the steps every backend shares.

A backend holds :class:`~costeff_fast.packing.PackedWeights` on its device and implements five steps on
packed tokens ``hidden [T, H]`` laid out by a :class:`~costeff_fast.engine.PackedBatch`: ``embed``,
``layer``, ``exit_head``, ``scatter_exits`` and ``compact``. Only ``layer`` has no default here;
``layer_and_exit_features`` lets a backend hand the exit its input from the layer's own pass, and
``exit_rows`` (scatter, count, compact) lets it do a layer's exit bookkeeping in one step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..engine import PackedBatch
from ..modeling import exit_entropy
from ..packing import PackedWeights


class Backend:
    """Base backend: torch implementations of embedding, exit head, output scatter and compaction.

    Args:
        weights: packed weights, already on ``device`` in the backend's storage dtype.
        device: where the weights live and the work runs.
    """

    name = "base"

    def __init__(self, weights: PackedWeights, device: torch.device | str = "cpu"):
        self.weights = weights
        self.device = torch.device(device)
        self.num_layers = len(weights.layers)
        self.num_labels = weights.exits[0].classifier_weight.shape[1]

    def embed(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        """Word + position + token-type embeddings, then LayerNorm: ``[T]`` ids -> ``[T, H]``."""
        w = self.weights
        hidden = w.word_embeddings[input_ids]
        hidden += w.position_embeddings[batch.position_ids]
        hidden += w.token_type_embeddings[token_type_ids]
        return F.layer_norm(
            hidden, hidden.shape[-1:], w.embedding_norm_weight, w.embedding_norm_bias, w.layer_norm_eps
        )

    def layer(self, index: int, hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        """Encoder layer ``index`` (0-based) on packed tokens: ``[T, H]`` -> ``[T, H]``."""
        raise NotImplementedError

    def layer_and_exit_features(
        self, index: int, hidden: torch.Tensor, batch: PackedBatch
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Layer ``index`` and, when the backend gets it for free in the same pass, what exit ``index`` reads.

        Returns:
            ``(hidden [T, H], features [B, H] or None)``; None lets :meth:`exit_head` compute the features.
        """
        return self.layer(index, hidden, batch), None

    def exit_logits(self, index: int, features: torch.Tensor) -> torch.Tensor:
        """Exit ``index`` on its per-row features (see :meth:`exit_features`): ``[B, H]`` -> fp32 logits ``[B, C]``."""
        head = self.weights.exits[index]
        if head.pooler_weight is not None:
            features = torch.addmm(head.pooler_bias, features, head.pooler_weight)
        return torch.addmm(head.classifier_bias, torch.tanh(features), head.classifier_weight).float()

    def exit_features(self, index: int, hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        """What exit ``index`` reads: each row's [CLS] vector or its token mean, ``[B, H]``."""
        if self.weights.exits[index].pooling == "mean":
            return batch.row_mean(hidden)
        return hidden[batch.cls_index]

    def exit_head(
        self, index: int, hidden: torch.Tensor, batch: PackedBatch, entropy_threshold: float | None,
        features: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``[B, C]`` fp32 of exit ``index`` and the exit mask ``[B]`` bool (entropy < tau, nats).

        ``features``: the exit's input ``[B, H]`` if already computed (:meth:`layer_and_exit_features`).
        """
        if features is None:
            features = self.exit_features(index, hidden, batch)
        logits = self.exit_logits(index, features)
        if entropy_threshold is None:
            return logits, torch.zeros(len(logits), dtype=torch.bool, device=logits.device)
        return logits, self.exit_decision(logits, entropy_threshold)

    def exit_decision(self, logits: torch.Tensor, entropy_threshold: float) -> torch.Tensor:
        """``[B]`` bool: softmax entropy of ``logits [B, C]`` (nats) below ``entropy_threshold``."""
        return exit_entropy(logits) < entropy_threshold

    def scatter_exits(
        self,
        logits_out: torch.Tensor,
        exit_layer: torch.Tensor,
        logits: torch.Tensor,
        exits: torch.Tensor,
        row_ids: torch.Tensor,
        layer: int,
    ) -> None:
        """Write the exited rows' logits and their 1-based ``layer`` into the outputs at ``row_ids``."""
        rows = row_ids[exits]
        logits_out[rows] = logits[exits]
        exit_layer[rows] = layer

    def exit_rows(
        self,
        logits_out: torch.Tensor,
        exit_layer: torch.Tensor,
        logits: torch.Tensor,
        exits: torch.Tensor,
        hidden: torch.Tensor,
        batch: PackedBatch,
        layer: int,
    ) -> tuple[torch.Tensor, PackedBatch]:
        """After exit ``layer`` (1-based): write the exited rows' outputs, then keep only the survivors.

        Returns:
            ``(hidden [T', H], batch)`` of the surviving rows (``batch.num_rows == 0`` when none is left;
            the inputs themselves when none exited). Counting the survivors is the layer's one host sync.
        """
        self.scatter_exits(logits_out, exit_layer, logits, exits, batch.row_ids, layer)
        keep = ~exits
        survivors = int(keep.sum())
        if survivors == batch.num_rows:
            return hidden, batch
        if survivors == 0:
            return hidden[:0], batch.keep(keep)
        return self.compact(hidden, batch, keep)

    def compact(
        self, hidden: torch.Tensor, batch: PackedBatch, keep: torch.Tensor
    ) -> tuple[torch.Tensor, PackedBatch]:
        """Keep the token spans of the rows where ``keep [B]`` is True: new ``hidden [T', H]`` and batch."""
        token_keep = keep[batch.token_row]
        return hidden[token_keep], batch.keep(keep)

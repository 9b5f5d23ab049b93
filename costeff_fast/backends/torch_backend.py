"""The ``torch`` backend: the reference math of :mod:`costeff_fast.reference` run as the engine's backend.

Plain PyTorch on packed tokens, on any device and float dtype (computed in fp32, stored in the weights'
dtype). It is the path every other backend is checked against, and the fallback where neither the native
kernels nor Triton can run. No linear layer touches padding; the attention core pads rows to ``max_seqlen``
for ``scaled_dot_product_attention``, so its cost grows with ``B * max_seqlen``. Weights packed with
``quantize="int8"`` (CPU) run :func:`costeff_fast.reference.encoder_layer_int8`: the four GEMMs of a layer in
int8 through torch's fbgemm kernels, everything else as in fp32.
"""

from __future__ import annotations

import torch

from .. import reference, transfer
from ..batch import PackedBatch
from .base import Backend


class TorchBackend(Backend):
    """Runs every operation with :mod:`costeff_fast.reference` (see the module docstring).

    Args:
        weights: packed weights on ``device`` (any float dtype; fp32 on the CPU when packed with
            ``quantize="int8"``).
        device: any torch device (the CPU for int8 weights).
    """

    name = "torch"

    def __init__(self, weights, device: torch.device | str = "cpu"):
        super().__init__(weights, device)
        self.dtype = weights.word_embeddings.dtype
        self._encoder_layer = reference.encoder_layer_int8 if weights.quantize == "int8" else reference.encoder_layer

    def embed(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        w = self.weights
        hidden = reference.embedding_layernorm(
            input_ids, token_type_ids, batch.cu_seqlens, w.word_embeddings, w.position_embeddings,
            w.token_type_embeddings, w.embedding_norm_weight, w.embedding_norm_bias, w.layer_norm_eps,
        )
        return hidden.to(self.dtype)

    def layer(self, index: int, hidden: torch.Tensor, batch: PackedBatch) -> tuple[torch.Tensor, None]:
        layer = self.weights.layers[index]
        out = self._encoder_layer(hidden, batch.cu_seqlens, batch.max_seqlen, layer, self.weights.layer_norm_eps)
        return out.to(self.dtype), None

    def exit_logits(self, index, hidden, batch, features):
        head = self.weights.exits[index]
        source, rows = self.exit_source(index, hidden, batch, features)
        logits, entropy, _ = reference.exit_head(
            source, rows, head.classifier_weight, head.classifier_bias, head.pooler_weight, head.pooler_bias, None,
            head.pooler_activation,
        )
        return logits, entropy

    def compact(self, hidden, batch, keep):
        new_hidden, cu_seqlens, row_ids = reference.compact_tokens(
            hidden, batch.cu_seqlens, batch.row_ids, transfer.to_device(keep, batch.device)
        )
        return new_hidden, PackedBatch(cu_seqlens=cu_seqlens, lengths=batch.lengths[keep], row_ids=row_ids)

"""The ``native`` backend: the C++ CPU kernels of ``csrc/`` (:mod:`costeff_fast.native`), fp32 on the CPU.

One native call per operation: embedding + LayerNorm in one pass; the whole encoder layer tile by tile
(GEMMs, varlen attention with the QKV bias fused, bias + residual + LayerNorm), returning the rows' token
means on the way for mean-pooling exits; the exit decision in one pass over the logits; the exit bookkeeping
(output scatter + survivor count + span-copy compaction) in one call. The exit classifier itself is a
``torch.addmm`` (:func:`costeff_fast.reference.exit_logits`).
"""

from __future__ import annotations

import torch

from .. import native, reference
from ..batch import PackedBatch
from .base import Backend, no_exits


class NativeBackend(Backend):
    """Runs every operation with the native kernels (see the module docstring).

    Args:
        weights: packed fp32 weights on the CPU.
        device: must be the CPU.

    Raises:
        RuntimeError: the kernels are not built here (the log says why), or weights not fp32 on the CPU.
    """

    name = "native"

    def __init__(self, weights, device: torch.device | str = "cpu"):
        super().__init__(weights, device)
        if self.device.type != "cpu" or weights.word_embeddings.dtype != torch.float32:
            raise RuntimeError(
                f"backend='native' runs fp32 weights on the CPU, got {weights.word_embeddings.dtype} on "
                f"{self.device}; use backend='torch' or 'triton' elsewhere"
            )
        if not native.available():
            raise RuntimeError(
                "backend='native': the native CPU kernels are unavailable (disabled by "
                f"{native.DISABLE_ENV}=0, or their build failed: see the costeff_fast.native warning); "
                "use backend='torch' or 'auto'"
            )

    def embed(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        w = self.weights
        return native.embedding_layernorm(
            input_ids, token_type_ids, batch.cu_seqlens, w.word_embeddings, w.position_embeddings,
            w.token_type_embeddings, w.embedding_norm_weight, w.embedding_norm_bias, w.layer_norm_eps,
        )

    def layer(self, index: int, hidden: torch.Tensor, batch: PackedBatch):
        return native.encoder_layer(
            hidden, batch.cu_seqlens, batch.max_seqlen, self.weights.layers[index], self.weights.layer_norm_eps,
            row_mean=self.weights.exits[index].pooling == "mean",
        )

    def exit(self, index, hidden, batch, features, entropy_threshold: float):
        head = self.weights.exits[index]
        if features is None:
            features = reference.exit_features(hidden, batch, head.pooling)
        logits = reference.exit_logits(
            features, head.classifier_weight, head.classifier_bias, head.pooler_weight, head.pooler_bias,
            pooler_activation=head.pooler_activation,
        )
        if entropy_threshold <= 0:
            return logits, no_exits(batch)
        return logits, native.exit_decision(logits, entropy_threshold)

    def retire(self, hidden, batch, logits, exits, logits_out, exit_layer, layer: int):
        out, cu_seqlens, lengths, row_ids = native.retire(
            hidden, batch.cu_seqlens, batch.row_ids, logits, exits, logits_out, exit_layer, layer
        )
        if len(row_ids) == batch.num_rows:  # no row exited: keep the batch and its cached layout
            return hidden, batch
        return out, PackedBatch(cu_seqlens=cu_seqlens, lengths=lengths, row_ids=row_ids)

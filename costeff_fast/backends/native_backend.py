"""The ``native`` backend: the C++ CPU kernels of ``csrc/`` (:mod:`costeff_fast.native`), fp32 on the CPU.

One native call per operation: embedding + LayerNorm in one pass; the whole encoder layer tile by tile
(GEMMs, varlen attention with the QKV bias fused, bias + residual + LayerNorm), returning the rows' token
means on the way (as ``features``) for mean-pooling exits; the exit decision (entropy below the threshold) in
one pass over the logits; the compaction as span copies. The exit classifier itself is a ``torch.addmm``
(:func:`costeff_fast.reference.exit_logits`).

Weights packed with ``quantize="int8"``: each layer's four GEMMs run in int8 through torch's fbgemm kernels
(:func:`costeff_fast.reference.linear_int8`) around the native varlen attention (QKV bias fused), bias +
residual + LayerNorm and span-mean kernels; embedding, exits and compaction are as in fp32. The int8 layer
runs on the whole packed batch (one activation scale per GEMM call), not tile by tile.
"""

from __future__ import annotations

import torch

from .. import native, reference
from ..batch import PackedBatch
from .base import Backend


class NativeBackend(Backend):
    """Runs every operation with the native kernels (see the module docstring).

    Args:
        weights: packed fp32 weights on the CPU (the layers' GEMM weights int8 when packed with
            ``quantize="int8"``).
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
        if self.weights.quantize == "int8":
            return self._layer_int8(index, hidden, batch)
        return native.encoder_layer(
            hidden, batch.cu_seqlens, batch.max_seqlen, self.weights.layers[index], self.weights.layer_norm_eps,
            row_mean=self.weights.exits[index].pooling == "mean",
        )

    def _layer_int8(self, index: int, hidden: torch.Tensor, batch: PackedBatch):
        """:func:`costeff_fast.reference.encoder_layer_int8` with native kernels between the int8 GEMMs:
        ``hidden [T, H]`` fp32 -> ``(out [T, H], row means [B, H] or None)`` fp32, as :meth:`layer`."""
        w, eps = self.weights.layers[index], self.weights.layer_norm_eps
        qkv = reference.linear_int8(hidden, w.qkv_weight, None)  # bias added by the attention kernel
        context = native.varlen_attention(
            qkv, batch.cu_seqlens, batch.max_seqlen, w.num_heads, w.head_size, qkv_bias=w.qkv_bias
        )
        attention = native.bias_residual_layernorm_(
            reference.linear_int8(context, w.attention_output_weight, None), w.attention_output_bias, hidden,
            w.attention_norm_weight, w.attention_norm_bias, eps,
        )
        inter = reference.linear_int8(attention, w.intermediate_weight, w.intermediate_bias, gelu=True)
        out = native.bias_residual_layernorm_(
            reference.linear_int8(inter, w.output_weight, None), w.output_bias, attention,
            w.output_norm_weight, w.output_norm_bias, eps,
        )
        means = native.segment_mean(out, batch.cu_seqlens) if self.weights.exits[index].pooling == "mean" else None
        return out, means

    def exit_logits(self, index, hidden, batch, features):
        """Logits from ``torch.addmm`` (:func:`costeff_fast.reference.exit_logits`); no entropy: the engine asks
        :meth:`exit_decision`, one native pass over the logits."""
        head = self.weights.exits[index]
        if features is None:
            features = reference.exit_features(hidden, batch, head.pooling)
        logits = reference.exit_logits(
            features, head.classifier_weight, head.classifier_bias, head.pooler_weight, head.pooler_bias,
            pooler_activation=head.pooler_activation,
        )
        return logits, None

    def exit_decision(self, logits, entropy_threshold: float):
        return native.exit_decision(logits, entropy_threshold)

    def compact(self, hidden, batch, keep):
        new_hidden, cu_seqlens, row_ids = native.compact_tokens(hidden, batch.cu_seqlens, batch.row_ids, keep)
        return new_hidden, PackedBatch(cu_seqlens=cu_seqlens, lengths=batch.lengths[keep], row_ids=row_ids)

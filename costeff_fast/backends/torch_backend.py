"""CPU backend: torch ops on packed tokens, no linear layer ever touches padding; native kernels where faster."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import native as native_kernels
from ..engine import PackedBatch
from .base import Backend

TILE_TOKENS = 256  # tokens per tile of the native encoder layer (its activations then stay in L2)


class TorchBackend(Backend):
    """Runs every encoder layer with torch ops, or with the native kernels of ``csrc/`` on fp32 CPU tensors.

    * native (``native=True``; the default when :func:`costeff_fast.native.available`): one
      :func:`~costeff_fast.native.encoder_layer` call per layer (tiles of rows through GEMMs, varlen
      attention on the packed QKV and fused bias + residual + LayerNorm; whole tiles per thread), one-pass
      embedding + LayerNorm, span-copy compaction, span mean for mean-pooling exits;
    * plain torch (``native=False``; the reference the kernels are tested against, and the path on other
      devices and dtypes): linear layers are ``torch.mm``/``torch.addmm`` on the ``T`` real tokens, GELU in
      place; the attention core adds the QKV bias while scattering Q, K, V into a ``[B, h_l, max_seqlen, d]``
      buffer for ``scaled_dot_product_attention`` with a key-padding mask and gathers the result back (its
      cost grows with ``B * max_seqlen``); residual + LayerNorm are ``add_`` and ``layer_norm``.

    Args:
        weights, device: as :class:`~costeff_fast.backends.base.Backend`.
        native: True, False, or None (use the kernels when they are built and the weights are fp32 on the
            CPU).

    Raises:
        RuntimeError: ``native=True`` but the kernels are unavailable or the weights are not fp32 on the CPU.
    """

    name = "torch"

    def __init__(self, weights, device: torch.device | str = "cpu", native: bool | None = None):
        super().__init__(weights, device)
        fits = self.device.type == "cpu" and weights.word_embeddings.dtype == torch.float32
        if native is None:
            native = fits and native_kernels.available()
        elif native and not (fits and native_kernels.available()):
            raise RuntimeError(
                "native=True needs fp32 weights on the CPU and built native kernels (see the costeff_fast.native "
                "warning in the log); pass native=None to fall back to plain torch"
            )
        self.native = native

    def embed(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        """Word + position + token-type embeddings, then LayerNorm: ``[T]`` ids -> ``[T, H]``."""
        if not self.native:
            return super().embed(input_ids, token_type_ids, batch)
        w = self.weights
        return native_kernels.embedding_layernorm(
            input_ids, token_type_ids, batch.cu_seqlens, w.word_embeddings, w.position_embeddings,
            w.token_type_embeddings, w.embedding_norm_weight, w.embedding_norm_bias, w.layer_norm_eps,
        )

    def exit_features(self, index: int, hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        """What exit ``index`` reads, ``[B, H]``: the mean-pooling exits use the native span mean."""
        if self.native and self.weights.exits[index].pooling == "mean":
            return native_kernels.segment_mean(hidden, batch.cu_seqlens)
        return super().exit_features(index, hidden, batch)

    def attention(
        self, qkv: torch.Tensor, bias: torch.Tensor, num_heads: int, head_size: int, batch: PackedBatch
    ) -> torch.Tensor:
        """Varlen self-attention of ``qkv + bias`` with torch ops: ``qkv [T, 3 * h * d]`` (columns Q | K | V, no
        bias yet), ``bias [3 * h * d]`` -> context ``[T, h * d]``."""
        rows, seq = batch.num_rows, batch.max_seqlen
        width = num_heads * head_size
        padded_index = batch.padded_index
        padded = bias.repeat(rows * seq, 1)  # padding slots hold the bias: finite, and masked out below
        padded.index_add_(0, padded_index, qkv)
        q, k, v = padded.view(rows, seq, 3, num_heads, head_size).permute(2, 0, 3, 1, 4)
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=batch.key_padding_mask[:, None, None, :])
        return context.transpose(1, 2).reshape(rows * seq, width).index_select(0, padded_index)

    def linear_residual_layernorm(
        self,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        residual: torch.Tensor,
        norm_weight: torch.Tensor,
        norm_bias: torch.Tensor,
    ) -> torch.Tensor:
        """``LayerNorm(x @ weight + bias + residual)`` with torch ops: ``x [T, in]``, ``weight [in, H]``,
        ``residual [T, H]``."""
        out = torch.addmm(bias, x, weight).add_(residual)
        return F.layer_norm(out, out.shape[-1:], norm_weight, norm_bias, self.weights.layer_norm_eps)

    def layer(self, index: int, hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        w = self.weights.layers[index]
        if self.native:
            return native_kernels.encoder_layer(
                hidden, batch.cu_seqlens, batch.max_seqlen, w, self.weights.layer_norm_eps, TILE_TOKENS
            )[0]
        context = self.attention(torch.mm(hidden, w.qkv_weight), w.qkv_bias, w.num_heads, w.head_size, batch)
        hidden = self.linear_residual_layernorm(
            context, w.attention_output_weight, w.attention_output_bias, hidden,
            w.attention_norm_weight, w.attention_norm_bias,
        )
        inter = torch.ops.aten.gelu_(torch.addmm(w.intermediate_bias, hidden, w.intermediate_weight))
        return self.linear_residual_layernorm(
            inter, w.output_weight, w.output_bias, hidden, w.output_norm_weight, w.output_norm_bias
        )

    def layer_and_exit_features(
        self, index: int, hidden: torch.Tensor, batch: PackedBatch
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Native path with a mean-pooling exit: the layer also returns its rows' token means (computed tile
        by tile while in cache, so the exit skips a pass over ``[T, H]``)."""
        if not (self.native and self.weights.exits[index].pooling == "mean"):
            return super().layer_and_exit_features(index, hidden, batch)
        return native_kernels.encoder_layer(
            hidden, batch.cu_seqlens, batch.max_seqlen, self.weights.layers[index], self.weights.layer_norm_eps,
            TILE_TOKENS, row_mean=True,
        )

    def exit_decision(self, logits: torch.Tensor, entropy_threshold: float) -> torch.Tensor:
        """``[B]`` bool, entropy below the threshold: one native pass over the logits on the native path."""
        if not self.native:
            return super().exit_decision(logits, entropy_threshold)
        return native_kernels.entropy_below(logits, entropy_threshold)

    def exit_rows(self, logits_out, exit_layer, logits, exits, hidden, batch, layer: int):
        """Native path: outputs of the exited rows and compaction of the rest in one call (see the base)."""
        if not self.native:
            return super().exit_rows(logits_out, exit_layer, logits, exits, hidden, batch, layer)
        return native_kernels.exit_rows(hidden, batch, logits, exits, logits_out, exit_layer, layer)

    def compact(
        self, hidden: torch.Tensor, batch: PackedBatch, keep: torch.Tensor
    ) -> tuple[torch.Tensor, PackedBatch]:
        """Keep the token spans of the rows where ``keep [B]`` is True: new ``hidden [T', H]`` and batch."""
        if self.native:
            return native_kernels.compact_tokens(hidden, batch.cu_seqlens, keep), batch.keep(keep)
        return super().compact(hidden, batch, keep)

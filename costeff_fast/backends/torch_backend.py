"""CPU backend: torch ops on packed tokens; no linear layer ever touches padding."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..engine import PackedBatch
from .base import Backend


class TorchBackend(Backend):
    """Runs every encoder layer with torch ops (fp32 on this CPU; any dtype and device torch supports).

    Linear layers run on the ``T`` real tokens only. The attention core scatters Q, K, V into a
    ``[B, h_l, max_seqlen, d]`` buffer for ``scaled_dot_product_attention`` with a key-padding mask and
    gathers the result back, so its cost grows with ``B * max_seqlen`` while the GEMMs grow with T.
    """

    name = "torch"

    def attention(self, qkv: torch.Tensor, num_heads: int, head_size: int, batch: PackedBatch) -> torch.Tensor:
        """Varlen self-attention: ``qkv [T, 3 * h * d]`` (columns Q | K | V) -> context ``[T, h * d]``."""
        rows, seq = batch.num_rows, batch.max_seqlen
        width = num_heads * head_size
        padded_index = batch.padded_index
        padded = qkv.new_zeros(rows * seq, 3 * width)
        padded.index_copy_(0, padded_index, qkv)
        q, k, v = padded.view(rows, seq, 3, num_heads, head_size).permute(2, 0, 3, 1, 4)
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=batch.key_padding_mask[:, None, None, :])
        return context.transpose(1, 2).reshape(rows * seq, width).index_select(0, padded_index)

    def layer(self, index: int, hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        w = self.weights.layers[index]
        eps = self.weights.layer_norm_eps
        qkv = torch.addmm(w.qkv_bias, hidden, w.qkv_weight)
        context = self.attention(qkv, w.num_heads, w.head_size, batch)
        attn = torch.addmm(w.attention_output_bias, context, w.attention_output_weight)
        hidden = F.layer_norm(attn.add_(hidden), hidden.shape[-1:], w.attention_norm_weight, w.attention_norm_bias, eps)
        inter = F.gelu(torch.addmm(w.intermediate_bias, hidden, w.intermediate_weight))
        out = torch.addmm(w.output_bias, inter, w.output_weight)
        return F.layer_norm(out.add_(hidden), hidden.shape[-1:], w.output_norm_weight, w.output_norm_bias, eps)

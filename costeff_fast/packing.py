"""Inference weight layout: a trained model packed into contiguous per-layer buffers for the engine.

Weights are stored input-major (``[in_features, out_features]``) so a layer is ``x @ W + b`` on packed
tokens ``x [T, in]``. Q, K and V of a layer are fused into one ``[H, 3 * h_l * d]`` matrix whose columns are
``[Q heads | K heads | V heads]``; a factorized word embedding is folded back to ``[vocab, H]`` (a gather is
cheaper than a rank-r matmul per token). Layers keep their own widths (docs/design.md, Data flow).
This module sits on the ground floor: it reads a model's modules by name and imports no model code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class PackedLayer:
    """One encoder layer. Shapes: H = hidden_size, A = h_l * d, F = F_l."""

    num_heads: int
    head_size: int
    qkv_weight: torch.Tensor  # [H, 3A]
    qkv_bias: torch.Tensor  # [3A]
    attention_output_weight: torch.Tensor  # [A, H]
    attention_output_bias: torch.Tensor  # [H]
    attention_norm_weight: torch.Tensor  # [H]
    attention_norm_bias: torch.Tensor  # [H]
    intermediate_weight: torch.Tensor  # [H, F]
    intermediate_bias: torch.Tensor  # [F]
    output_weight: torch.Tensor  # [F, H]
    output_bias: torch.Tensor  # [H]
    output_norm_weight: torch.Tensor  # [H]
    output_norm_bias: torch.Tensor  # [H]


@dataclass(frozen=True)
class PackedExit:
    """One exit: features (``pooling``: the [CLS] row or the row's token mean), optional pooler ``[H, H]``
    and its activation (tanh without a pooler), then classifier ``[H, C]``."""

    pooling: str
    pooler_weight: torch.Tensor | None
    pooler_bias: torch.Tensor | None
    classifier_weight: torch.Tensor  # [H, C]
    classifier_bias: torch.Tensor  # [C]
    pooler_activation: str = "tanh"  # after the pooler (costeff_fast.reference.POOLER_ACTIVATIONS)


@dataclass(frozen=True)
class PackedWeights:
    """All weights of a :class:`~costeff_fast.modeling.CostEffForSequenceClassification` in the engine's layout."""

    word_embeddings: torch.Tensor  # [V, H] (folded A @ B when factorized)
    position_embeddings: torch.Tensor  # [P, H]
    token_type_embeddings: torch.Tensor  # [types, H]
    embedding_norm_weight: torch.Tensor
    embedding_norm_bias: torch.Tensor
    layer_norm_eps: float
    layers: tuple[PackedLayer, ...]
    exits: tuple[PackedExit, ...]

    @classmethod
    @torch.no_grad()
    def from_model(
        cls, model: nn.Module, dtype: torch.dtype = torch.float32, device="cpu"
    ) -> "PackedWeights":
        """Pack a :class:`~costeff_fast.modeling.CostEffForSequenceClassification` (any device and dtype) into
        new contiguous ``dtype`` tensors on ``device``."""

        def put(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.detach().to(device=device, dtype=dtype).contiguous()

        def input_major(linear) -> torch.Tensor:
            return put(linear.weight.T)

        emb = model.embeddings
        layers = []
        for layer in model.layers:
            layers.append(
                PackedLayer(
                    num_heads=layer.num_heads,
                    head_size=layer.head_size,
                    qkv_weight=put(torch.cat([layer.query.weight, layer.key.weight, layer.value.weight]).T),
                    qkv_bias=put(torch.cat([layer.query.bias, layer.key.bias, layer.value.bias])),
                    attention_output_weight=input_major(layer.attention_output),
                    attention_output_bias=put(layer.attention_output.bias),
                    attention_norm_weight=put(layer.attention_layer_norm.weight),
                    attention_norm_bias=put(layer.attention_layer_norm.bias),
                    intermediate_weight=input_major(layer.intermediate),
                    intermediate_bias=put(layer.intermediate.bias),
                    output_weight=input_major(layer.output),
                    output_bias=put(layer.output.bias),
                    output_norm_weight=put(layer.output_layer_norm.weight),
                    output_norm_bias=put(layer.output_layer_norm.bias),
                )
            )
        exits = []
        for head in model.exits:
            dense = head.dense
            exits.append(
                PackedExit(
                    pooling=head.pooling,
                    pooler_weight=None if dense is None else input_major(dense),
                    pooler_bias=None if dense is None else put(dense.bias),
                    classifier_weight=input_major(head.classifier),
                    classifier_bias=put(head.classifier.bias),
                    pooler_activation=head.pooler_activation,
                )
            )
        return cls(
            word_embeddings=put(emb.word_embedding_matrix()),
            position_embeddings=put(emb.position_embeddings.weight),
            token_type_embeddings=put(emb.token_type_embeddings.weight),
            embedding_norm_weight=put(emb.LayerNorm.weight),
            embedding_norm_bias=put(emb.LayerNorm.bias),
            layer_norm_eps=model.config.layer_norm_eps,
            layers=tuple(layers),
            exits=tuple(exits),
        )

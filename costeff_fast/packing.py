"""Inference weight layout: a trained model packed into contiguous per-layer buffers for the engine.

Weights are stored input-major (``[in_features, out_features]``) so a layer is ``x @ W + b`` on packed
tokens ``x [T, in]``. Q, K and V of a layer are fused into one ``[H, 3 * h_l * d]`` matrix whose columns are
``[Q heads | K heads | V heads]``; a factorized word embedding is folded back to ``[vocab, H]`` (a gather is
cheaper than a rank-r matmul per token). Layers keep their own widths (docs/design.md, Data flow).

With ``quantize="int8"`` the four GEMM weights of every layer (QKV, attention output, FFN in and out) are
stored as :class:`Int8Weight` (int8 per output channel, prepacked for torch's fbgemm kernels) at packing time;
embeddings, biases, LayerNorms and exits stay fp32 (docs/design.md, Backends).
This module sits on the ground floor: it reads a model's modules by name and imports no model code.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields, replace

import torch
from torch import nn

#: what ``quantize=`` accepts: None (fp32) or ``"int8"`` (the layers' GEMMs in int8, see :class:`Int8Weight`)
QUANTIZE_MODES = (None, "int8")

#: largest |q| of an int8 weight: 7 bits. With activations in the full 8-bit range ``[0, 255]``, a pair of
#: ``u8 * s8`` products then fits the int16 sum of AVX2's ``vpmaddubsw`` (2 * 255 * 63 = 32130 <= 32767), so
#: fbgemm never saturates and gives the same int32 sums on every x86 CPU, VNNI or not. (Full-range weights
#: would need 7-bit activations, fbgemm's ``reduce_range``: twice the activation step, and on the converted
#: rt and trec checkpoints a larger logit error than this choice.)
INT8_WEIGHT_MAX = 63

#: torch's int8 engines able to prepack a per-channel qint8 linear weight, in order of preference
INT8_ENGINES = ("fbgemm", "x86", "onednn")


def check_quantize(quantize) -> None:
    """Raise ValueError (one line) unless ``quantize`` is one of :data:`QUANTIZE_MODES`."""
    if not (quantize is None or (isinstance(quantize, str) and quantize in QUANTIZE_MODES)):
        raise ValueError(f"quantize must be None or 'int8', got {quantize!r}")


def int8_engine() -> str:
    """The torch quantized engine that prepacks :class:`Int8Weight` (the first of :data:`INT8_ENGINES` here).

    Raises:
        RuntimeError: this torch build has none of them (e.g. not an x86 CPU build).
    """
    for name in INT8_ENGINES:
        if name in torch.backends.quantized.supported_engines:
            return name
    raise RuntimeError(
        f"quantize='int8' needs torch's fbgemm or oneDNN int8 kernels (x86 CPU builds); this torch has "
        f"{torch.backends.quantized.supported_engines}"
    )


@dataclass(frozen=True, eq=False)
class Int8Weight:
    """A linear layer's weight ``[in_features, out_features]`` (the fp32 layout's shape) stored in int8.

    Per output channel ``n``, symmetric: ``W[:, n] ~= scale[n] * q[:, n]`` with ``scale[n] = max|W[:, n]| /``
    :data:`INT8_WEIGHT_MAX` and ``q`` int8 in ``[-63, 63]`` (round to nearest). ``packed`` is the weight as
    ``torch.ops.quantized.linear_prepack`` returns it for fbgemm (its ``[out, in]`` qint8 tensor plus the
    kernel's blocked copy, about 2 bytes per weight; no bias, no fp32 copy). It runs through
    ``torch.ops.quantized.linear_dynamic`` (:func:`costeff_fast.reference.linear_int8`). Source: the
    per-channel symmetric weight / dynamic per-tensor activation scheme of ``torch.ao.nn.quantized.dynamic``.
    """

    packed: torch.ScriptObject
    in_features: int
    out_features: int

    @property
    def shape(self) -> tuple[int, int]:
        """``(in_features, out_features)``, as the fp32 weight it replaces."""
        return (self.in_features, self.out_features)

    def qweight(self) -> torch.Tensor:
        """The ``[out, in]`` per-channel qint8 tensor inside ``packed`` (``int_repr()``, ``q_per_channel_scales()``)."""
        return torch.ops.quantized.linear_unpack(self.packed)[0]

    def dequantize(self) -> torch.Tensor:
        """``scale[n] * q[:, n]`` as a new fp32 ``[in_features, out_features]`` tensor (what the GEMM multiplies by)."""
        return self.qweight().dequantize().T.contiguous()


@torch.no_grad()
def quantize_int8(weight: torch.Tensor) -> Int8Weight:
    """Quantize an input-major weight ``[in, out]`` (any float dtype and device) to an :class:`Int8Weight`.

    Raises:
        RuntimeError: no int8 engine in this torch build (:func:`int8_engine`).
    """
    engine = int8_engine()
    w = weight.detach().to(device="cpu", dtype=torch.float32).T.contiguous()  # [out, in]
    scale = (w.abs().amax(dim=1) / INT8_WEIGHT_MAX).clamp_min(1e-12).double()  # an all-zero channel stays 0
    previous = torch.backends.quantized.engine
    try:
        torch.backends.quantized.engine = engine  # prepack dispatches on it; the packed weight keeps its kernel
        with warnings.catch_warnings():  # torch >= 2.11 warns that quantized tensor factories are deprecated
            warnings.filterwarnings("ignore", message=".*quantize_per_channel.*", category=UserWarning)
            q = torch.quantize_per_channel(w, scale, torch.zeros(len(scale), dtype=torch.long), 0, torch.qint8)
        packed = torch.ops.quantized.linear_prepack(q, None)
    finally:
        torch.backends.quantized.engine = previous
    return Int8Weight(packed=packed, in_features=w.shape[1], out_features=w.shape[0])


@dataclass(frozen=True)
class PackedLayer:
    """One encoder layer. Shapes: H = hidden_size, A = h_l * d, F = F_l. The four ``*_weight`` GEMM matrices
    are :class:`Int8Weight` (of the same shape) in an int8 packing, else tensors."""

    num_heads: int
    head_size: int
    qkv_weight: torch.Tensor | Int8Weight  # [H, 3A]
    qkv_bias: torch.Tensor  # [3A]
    attention_output_weight: torch.Tensor | Int8Weight  # [A, H]
    attention_output_bias: torch.Tensor  # [H]
    attention_norm_weight: torch.Tensor  # [H]
    attention_norm_bias: torch.Tensor  # [H]
    intermediate_weight: torch.Tensor | Int8Weight  # [H, F]
    intermediate_bias: torch.Tensor  # [F]
    output_weight: torch.Tensor | Int8Weight  # [F, H]
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
    quantize: str | None = None  # "int8": the layers' GEMM weights are Int8Weight (QUANTIZE_MODES)

    @classmethod
    @torch.no_grad()
    def from_model(
        cls, model: nn.Module, dtype: torch.dtype = torch.float32, device="cpu", quantize: str | None = None
    ) -> "PackedWeights":
        """Pack a :class:`~costeff_fast.modeling.CostEffForSequenceClassification` (any device and dtype) into
        new contiguous ``dtype`` tensors on ``device``.

        With ``quantize="int8"`` (fp32 on the CPU only) each layer's four GEMM weights are quantized straight
        from the model's parameters into :class:`Int8Weight` (no fp32 copy of them is kept).

        Raises:
            ValueError: ``quantize`` not in :data:`QUANTIZE_MODES`, or ``"int8"`` with another dtype or device.
            RuntimeError: ``"int8"`` without an int8 engine in this torch build.
        """
        check_quantize(quantize)
        if quantize is not None and (dtype != torch.float32 or torch.device(device).type != "cpu"):
            raise ValueError(f"quantize='int8' packs for the CPU in fp32, got {dtype} on {device}")

        def put(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.detach().to(device=device, dtype=dtype).contiguous()

        def input_major(linear) -> torch.Tensor:
            return put(linear.weight.T)

        def gemm(weight_in_out: torch.Tensor) -> torch.Tensor | Int8Weight:
            return quantize_int8(weight_in_out) if quantize == "int8" else put(weight_in_out)

        emb = model.embeddings
        layers = []
        for layer in model.layers:
            layers.append(
                PackedLayer(
                    num_heads=layer.num_heads,
                    head_size=layer.head_size,
                    qkv_weight=gemm(torch.cat([layer.query.weight, layer.key.weight, layer.value.weight]).T),
                    qkv_bias=put(torch.cat([layer.query.bias, layer.key.bias, layer.value.bias])),
                    attention_output_weight=gemm(layer.attention_output.weight.T),
                    attention_output_bias=put(layer.attention_output.bias),
                    attention_norm_weight=put(layer.attention_layer_norm.weight),
                    attention_norm_bias=put(layer.attention_layer_norm.bias),
                    intermediate_weight=gemm(layer.intermediate.weight.T),
                    intermediate_bias=put(layer.intermediate.bias),
                    output_weight=gemm(layer.output.weight.T),
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
            quantize=quantize,
        )

    def dequantized(self) -> "PackedWeights":
        """These weights in fp32 with every :class:`Int8Weight` replaced by its :meth:`~Int8Weight.dequantize`
        tensor: the int8 model's weights without its activation rounding (``self`` when not quantized)."""
        if self.quantize is None:
            return self

        def plain(layer: PackedLayer) -> PackedLayer:
            return replace(layer, **{
                f.name: getattr(layer, f.name).dequantize()
                for f in fields(layer) if isinstance(getattr(layer, f.name), Int8Weight)
            })

        return replace(self, layers=tuple(plain(layer) for layer in self.layers), quantize=None)

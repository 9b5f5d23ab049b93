"""GPU backend: every encoder layer, exit head and compaction step runs in the fused Triton kernels.

A narrow layer (:func:`~costeff_fast.kernels.layer.fused_layer_supported`: COST-EFF's widths, rows of at most 128
tokens) is one launch that also runs its exit head (:func:`~costeff_fast.kernels.layer.encoder_layer_exit`). A
wider one is five launches on packed tokens (no padding anywhere): QKV GEMM + bias, varlen attention,
``W_O`` GEMM + bias + residual + LayerNorm, ``W_1`` GEMM + bias + GELU, ``W_2`` GEMM + bias + residual +
LayerNorm; its exit head is one more (logits and entropy). The compaction is two (plan, span copy). The
embedding is the reference's torch gather. Storage is fp16 (or bf16) on CUDA with fp32 accumulation; under the Triton
interpreter (``TRITON_INTERPRET=1``) the same kernels run on the CPU in fp32 (docs/design.md, Backends).
"""

from __future__ import annotations

import torch

from torch import nn

from .. import kernels, reference, transfer
from ..batch import PackedBatch
from ..kernels.attention import HEAD_SIZES
from ..kernels.ffn import MAX_LAYERNORM_WIDTH
from ..kernels.utils import FLOAT_DTYPES, interpreting
from ..packing import PackedWeights
from .base import Backend, LayerExit


def _check_device(device: torch.device) -> None:
    """Raise RuntimeError unless the kernels can run on ``device`` (CUDA, or anything under the interpreter)."""
    if device.type != "cuda" and not interpreting():
        raise RuntimeError(
            f"backend='triton' needs a CUDA GPU, got device {device}; to run its kernels on the CPU through the "
            "(slow) Triton interpreter, start Python with TRITON_INTERPRET=1 in the environment (it must be set "
            "before costeff_fast.kernels is imported)"
        )


class TritonBackend(Backend):
    """Runs the engine's steps with the kernels of :mod:`costeff_fast.kernels`.

    Synchronization: no operation waits for the device. :meth:`compact` takes the engine's host copy of the
    keep mask, sends it back asynchronously and sizes the new batch from it and the row lengths the
    :class:`~costeff_fast.batch.PackedBatch` keeps on the CPU.

    Args:
        weights: packed weights on ``device`` in one float dtype (fp16/bf16 on CUDA, fp32 for the
            interpreter).
        device: a CUDA device, or the CPU when ``TRITON_INTERPRET=1``.
        fused_layers: run the layers the fused kernel takes in one launch (default); False: always per-op.

    Raises:
        RuntimeError: a non-CUDA device without the Triton interpreter.
        ValueError: a head size not in :data:`~costeff_fast.kernels.attention.HEAD_SIZES`, a hidden size
            above 1024, or an unsupported dtype.
    """

    name = "triton"

    def __init__(self, weights: PackedWeights, device: torch.device | str = "cuda", fused_layers: bool = True):
        super().__init__(weights, device)
        self.fused_layers = fused_layers
        _check_device(self.device)
        if weights.word_embeddings.dtype not in FLOAT_DTYPES:
            raise ValueError(
                f"triton backend storage must be one of {FLOAT_DTYPES}, got {weights.word_embeddings.dtype}"
            )
        hidden_size = weights.word_embeddings.shape[1]
        if hidden_size > MAX_LAYERNORM_WIDTH:
            raise ValueError(f"the triton backend supports hidden_size <= {MAX_LAYERNORM_WIDTH}, got {hidden_size}")
        head_size = weights.layers[0].head_size
        if head_size not in HEAD_SIZES:
            raise ValueError(
                f"the triton backend supports attention_head_size in {HEAD_SIZES}, got {head_size}; "
                "use backend='torch'"
            )

    @classmethod
    def from_model(
        cls, model: nn.Module, device=None, dtype: torch.dtype | None = None, fused_layers: bool = True
    ) -> "TritonBackend":
        """Pack ``model`` for the kernels.

        Args:
            model: a :class:`~costeff_fast.modeling.CostEffForSequenceClassification` (any device and dtype).
            device: default ``cuda`` when available, else the CPU (which needs ``TRITON_INTERPRET=1``).
            dtype: storage dtype; default fp16 on CUDA, fp32 elsewhere (the interpreter).
            fused_layers: as the constructor's.

        Raises:
            RuntimeError / ValueError: as the constructor.
        """
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if dtype is None:
            dtype = torch.float16 if device.type == "cuda" else torch.float32
        _check_device(device)  # before packing the weights
        return cls(PackedWeights.from_model(model, dtype=dtype, device=device), device, fused_layers=fused_layers)

    def embed(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        w = self.weights
        hidden = reference.embedding_layernorm(
            input_ids, token_type_ids, batch.cu_seqlens, w.word_embeddings, w.position_embeddings,
            w.token_type_embeddings, w.embedding_norm_weight, w.embedding_norm_bias, w.layer_norm_eps,
        )
        return hidden.to(w.word_embeddings.dtype)

    def fused(self, index: int, batch: PackedBatch) -> bool:
        """Whether layer ``index`` runs as one launch on ``batch`` (the one rule:
        :func:`~costeff_fast.kernels.layer.fused_layer_supported` of its widths and ``batch.max_seqlen``)."""
        w = self.weights.layers[index]
        return self.fused_layers and kernels.fused_layer_supported(
            self.weights.word_embeddings.shape[1], w.num_heads, w.head_size, w.intermediate_weight.shape[1],
            batch.max_seqlen)

    def layer(self, index: int, hidden: torch.Tensor, batch: PackedBatch) -> tuple[torch.Tensor, LayerExit | None]:
        w = self.weights.layers[index]
        eps = self.weights.layer_norm_eps
        if self.fused(index, batch):
            out, features, logits, entropy = kernels.encoder_layer_exit(
                hidden, batch.cu_seqlens, batch.max_seqlen, w, eps, self.weights.exits[index])
            return out, LayerExit(features, logits, entropy)
        qkv = kernels.linear(hidden, w.qkv_weight, w.qkv_bias)
        context = kernels.varlen_attention(qkv, batch.cu_seqlens, batch.max_seqlen, w.num_heads, w.head_size)
        hidden = kernels.linear_residual_layernorm(
            context, w.attention_output_weight, w.attention_output_bias, hidden,
            w.attention_norm_weight, w.attention_norm_bias, eps,
        )
        inter = kernels.linear(hidden, w.intermediate_weight, w.intermediate_bias, gelu=True)
        out = kernels.linear_residual_layernorm(
            inter, w.output_weight, w.output_bias, hidden, w.output_norm_weight, w.output_norm_bias, eps
        )
        return out, None

    def exit_logits(self, index, hidden, batch, features):
        """Logits ``[B, C]`` fp32 and entropy ``[B]`` fp32 (nats) on the device: those the fused layer computed,
        else one kernel."""
        if isinstance(features, LayerExit):
            if features.logits is not None:
                return features.logits, features.entropy
            features = features.features.to(hidden.dtype)  # an exit with a pooler reads what the layer pooled
        head = self.weights.exits[index]
        source, rows = self.exit_source(index, hidden, batch, features)
        args = (source, rows, head.classifier_weight, head.classifier_bias, head.pooler_weight, head.pooler_bias)
        if head.pooler_activation == "tanh":
            logits, entropy, _ = kernels.exit_head(*args)
        else:  # the kernel computes tanh only: a converted DistilBERT/ELECTRA head (the last exit) runs in torch
            logits, entropy, _ = reference.exit_head(*args, None, head.pooler_activation)
        return logits, entropy

    def compact(self, hidden, batch, keep):
        """Plan and span-copy kernels, sized on the host from ``keep`` and ``batch.lengths`` (no wait)."""
        lengths = batch.lengths[keep]
        new_hidden, cu_seqlens, row_ids = kernels.compact_tokens(
            hidden, batch.cu_seqlens, batch.row_ids, transfer.to_device(keep, self.device),
            num_rows=len(lengths), num_tokens=int(lengths.sum()), max_seqlen=int(lengths.max()),
        )
        return new_hidden, PackedBatch(cu_seqlens=cu_seqlens, lengths=lengths, row_ids=row_ids)

"""GPU backend: every encoder layer, exit head and compaction step runs in the fused Triton kernels.

A layer is five launches on packed tokens (no padding anywhere): QKV GEMM + bias, varlen attention,
``W_O`` GEMM + bias + residual + LayerNorm, ``W_1`` GEMM + bias + GELU, ``W_2`` GEMM + bias + residual +
LayerNorm; the exit head is one more, compaction two. The embedding stays the base class's torch gather.
Storage is fp16 (or bf16) on CUDA with fp32 accumulation; under the Triton interpreter
(``TRITON_INTERPRET=1``) the same kernels run on the CPU in fp32 (DESIGN.md, Backends).
"""

from __future__ import annotations

import torch

from .. import kernels
from ..engine import PackedBatch
from ..kernels.attention import HEAD_SIZES
from ..kernels.ffn import MAX_LAYERNORM_WIDTH
from ..kernels.utils import FLOAT_DTYPES, interpreting
from ..modeling import CostEffForSequenceClassification
from ..packing import PackedWeights
from .base import Backend


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

    Synchronization: :meth:`exit_head` returns the exit mask **on the host**. Copying it there is the
    layer's one device-to-host wait; the engine counts the survivors on that copy, :meth:`scatter_exits`
    and :meth:`compact` send it back asynchronously, and :meth:`compact` sizes the new batch from it and
    the row lengths the :class:`~costeff_fast.engine.PackedBatch` keeps on the CPU, without waiting again.

    Args:
        weights: packed weights on ``device`` in one float dtype (fp16/bf16 on CUDA, fp32 for the
            interpreter).
        device: a CUDA device, or the CPU when ``TRITON_INTERPRET=1``.

    Raises:
        RuntimeError: a non-CUDA device without the Triton interpreter.
        ValueError: a head size not in :data:`~costeff_fast.kernels.attention.HEAD_SIZES`, a hidden size
            above 1024, or an unsupported dtype.
    """

    name = "triton"

    def __init__(self, weights: PackedWeights, device: torch.device | str = "cuda"):
        super().__init__(weights, device)
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
        cls, model: CostEffForSequenceClassification, device=None, dtype: torch.dtype | None = None
    ) -> "TritonBackend":
        """Pack ``model`` for the kernels.

        Args:
            model: the reference model (any device and dtype).
            device: default ``cuda`` when available, else the CPU (which needs ``TRITON_INTERPRET=1``).
            dtype: storage dtype; default fp16 on CUDA, fp32 elsewhere (the interpreter).

        Raises:
            RuntimeError / ValueError: as the constructor.
        """
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if dtype is None:
            dtype = torch.float16 if device.type == "cuda" else torch.float32
        _check_device(device)  # before packing the weights
        return cls(PackedWeights.from_model(model, dtype=dtype, device=device), device)

    def layer(self, index: int, hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        w = self.weights.layers[index]
        eps = self.weights.layer_norm_eps
        qkv = kernels.linear(hidden, w.qkv_weight, w.qkv_bias)
        context = kernels.varlen_attention(qkv, batch.cu_seqlens, batch.max_seqlen, w.num_heads, w.head_size)
        hidden = kernels.linear_residual_layernorm(
            context, w.attention_output_weight, w.attention_output_bias, hidden,
            w.attention_norm_weight, w.attention_norm_bias, eps,
        )
        inter = kernels.linear(hidden, w.intermediate_weight, w.intermediate_bias, gelu=True)
        return kernels.linear_residual_layernorm(
            inter, w.output_weight, w.output_bias, hidden, w.output_norm_weight, w.output_norm_bias, eps
        )

    def exit_head(
        self, index: int, hidden: torch.Tensor, batch: PackedBatch, entropy_threshold: float | None,
        features: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``[B, C]`` fp32 on the device and the exit mask ``[B]`` bool **on the host** (one wait).

        ``features`` is unused: this backend's layers return none (the exit kernel reads ``hidden``).
        """
        head = self.weights.exits[index]
        rows = batch.cls_index
        if head.pooling == "mean":  # the kernel then reads row b of the [B, H] token means
            hidden = batch.row_mean(hidden)
            rows = torch.arange(batch.num_rows, device=hidden.device)
        logits, _, exits = kernels.exit_head(
            hidden, rows, head.classifier_weight, head.classifier_bias,
            head.pooler_weight, head.pooler_bias, entropy_threshold,
        )
        if entropy_threshold is None:  # nobody exits: no copy, no wait
            return logits, torch.zeros(batch.num_rows, dtype=torch.bool)
        if exits.device.type == "cpu":
            return logits, exits
        host = torch.empty(batch.num_rows, dtype=torch.bool, pin_memory=True)
        host.copy_(exits)  # blocking: the layer's one device-to-host wait
        return logits, host

    def scatter_exits(self, logits_out, exit_layer, logits, exits, row_ids, layer: int) -> None:
        """Write exited rows' logits and ``layer`` at ``row_ids`` (``exits`` may be on the host)."""
        kernels.scatter_exits(logits_out, exit_layer, logits, exits.to(self.device, non_blocking=True), row_ids, layer)

    def compact(
        self, hidden: torch.Tensor, batch: PackedBatch, keep: torch.Tensor
    ) -> tuple[torch.Tensor, PackedBatch]:
        """Keep the rows where ``keep [B]`` is True; a host mask (as :meth:`exit_head` returns) costs no wait."""
        keep_host = keep.cpu()
        lengths = batch.lengths[keep_host]
        new_hidden, cu_seqlens, row_ids = kernels.compact_tokens(
            hidden, batch.cu_seqlens, batch.row_ids, keep.to(self.device, non_blocking=True),
            num_rows=len(lengths), num_tokens=int(lengths.sum()), max_seqlen=int(lengths.max()) if len(lengths) else 0,
        )
        return new_hidden, PackedBatch(cu_seqlens=cu_seqlens, lengths=lengths, row_ids=row_ids)

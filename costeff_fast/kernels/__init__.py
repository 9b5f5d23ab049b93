"""Fused Triton kernels of the ``triton`` backend: one kernel family per module.

Each launcher takes the arguments of its plain-PyTorch reference in :mod:`costeff_fast.reference` in the same
order, and the tests compare the two. The kernels import nothing from the rest of the package (leaves).

Importing this package imports triton and defines the kernels; set ``TRITON_INTERPRET=1`` before the first
import to run them on the CPU through the Triton interpreter (tiny fp32 shapes, for tests). See README.md.
"""

from .attention import varlen_attention
from .compaction import compact_tokens
from .exit_head import exit_head
from .ffn import linear, linear_residual_layernorm
from .layer import encoder_layer_exit, fused_layer_supported

__all__ = ["compact_tokens", "encoder_layer_exit", "exit_head", "fused_layer_supported", "linear",
           "linear_residual_layernorm", "varlen_attention"]

"""Native CPU kernels from ``csrc/``: built with ninja at first use and cached, with a pure-torch fallback.

The C++ sources are compiled by ``torch.utils.cpp_extension.load`` into ``$TORCH_EXTENSIONS_DIR`` (default
``~/.cache/torch_extensions``) on first use and reloaded from there afterwards (the first build takes about
half a minute). They register ops under ``torch.ops.costeff_native``. When the build is impossible (no
compiler, no ninja, sources not shipped) one warning is logged and :func:`available` returns False; callers
then take their plain torch path. Set ``COSTEFF_FAST_NATIVE=0`` to skip the kernels altogether.

Only kernels that beat their torch counterpart by >= 1.2x on their own operation are kept
(``bench/test_cpu_kernels.py``, ``bench/run_cpu.py``); a fused bias + GELU did not (about 1.0x against
``addmm`` + in-place ``gelu_``) and was removed.
"""

from __future__ import annotations

import hashlib
import logging
import os
from functools import cache
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

CSRC = Path(__file__).resolve().parent.parent / "csrc"
SOURCES = ("varlen_attention.cpp", "residual_layernorm.cpp", "compact_tokens.cpp")
DISABLE_ENV = "COSTEFF_FAST_NATIVE"


def _extension_name() -> str:
    """``costeff_native_<cpu tag>``: the build uses ``-march=native``, so each CPU feature set gets its own."""
    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            flags = next((line for line in info if line.startswith("flags")), "")
    except OSError:
        pass
    return "costeff_native_" + hashlib.sha1(flags.encode()).hexdigest()[:10]


@cache
def available() -> bool:
    """Build (first call) or load the kernels; True when ``torch.ops.costeff_native`` is ready.

    Never raises: a failed build logs one warning naming the cause and returns False.
    """
    if os.environ.get(DISABLE_ENV, "1") == "0":
        logger.info("costeff_fast: native CPU kernels disabled by %s=0; using the pure-torch path", DISABLE_ENV)
        return False
    sources = [CSRC / name for name in SOURCES]
    try:
        missing = [str(path) for path in sources if not path.is_file()]
        if missing:
            raise FileNotFoundError(f"sources not found: {', '.join(missing)}")
        from torch.utils import cpp_extension

        cpp_extension.load(
            name=_extension_name(),
            sources=[str(path) for path in sources],
            extra_cflags=["-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"],
            extra_ldflags=["-fopenmp"],
            is_python_module=False,
            verbose=False,
        )
    except Exception as error:  # any build failure means "use the torch path"
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        logger.warning(
            "costeff_fast: native CPU kernels unavailable (%s: %s); using the pure-torch path",
            type(error).__name__, reason[:200],
        )
        return False
    return True


def varlen_attention(
    qkv: torch.Tensor, bias: torch.Tensor, cu_seqlens: torch.Tensor, num_heads: int, head_size: int, max_seqlen: int
) -> torch.Tensor:
    """Self-attention of each packed row over its own tokens, without padding; the QKV bias is added on the fly.

    Args:
        qkv: ``[T, 3 * num_heads * head_size]`` fp32 contiguous CPU, columns ``[Q heads | K heads | V heads]``,
            without bias (e.g. ``hidden @ W_qkv``).
        bias: ``[3 * num_heads * head_size]`` fp32, the QKV bias.
        cu_seqlens: ``[B + 1]`` int64 CPU prefix sums of the row lengths (each row >= 1 token).
        num_heads, head_size: h and d.
        max_seqlen: the longest row (sizes the per-thread scratch buffers).

    Returns:
        ``[T, num_heads * head_size]`` fp32: ``softmax(Q K^T / sqrt(d)) V`` per row and head.

    Raises:
        RuntimeError: wrong dtype, device, layout or lengths.
    """
    return torch.ops.costeff_native.varlen_attention(qkv, bias, cu_seqlens, num_heads, head_size, max_seqlen)


def bias_residual_layernorm_(
    x: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, norm_bias: torch.Tensor,
    eps: float,
) -> torch.Tensor:
    """In place: ``x <- LayerNorm(x + bias + residual) * weight + norm_bias`` over the last dimension.

    Args:
        x, residual: ``[T, H]`` fp32 contiguous CPU (``x`` is typically a fresh ``torch.mm`` output).
        bias, weight, norm_bias: ``[H]`` fp32.
        eps: LayerNorm epsilon.

    Returns:
        ``x``.

    Raises:
        RuntimeError: wrong dtype, device, layout or shapes.
    """
    return torch.ops.costeff_native.bias_residual_layernorm_(x, bias, residual, weight, norm_bias, eps)


def compact_tokens(hidden: torch.Tensor, cu_seqlens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The token spans of the rows where ``keep`` is True, in order: ``[T, H]`` -> ``[T', H]``.

    Args:
        hidden: ``[T, H]`` fp32 contiguous CPU.
        cu_seqlens: ``[B + 1]`` int64 CPU prefix sums of the row lengths.
        keep: ``[B]`` bool CPU.

    Raises:
        RuntimeError: wrong dtype, device, layout or shapes.
    """
    return torch.ops.costeff_native.compact_tokens(hidden, cu_seqlens, keep)

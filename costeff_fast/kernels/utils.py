"""Helpers shared by the kernel files: interpreter detection, input checks, interpreter-safe reductions."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

#: storage dtypes the kernels accept (bf16 is for real GPUs only: the interpreter's bf16 ``tl.dot`` is wrong)
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_matrix(name: str, tensor: torch.Tensor, rows: int | None = None, cols: int | None = None) -> None:
    """Check that ``tensor`` is a 2-D float matrix with unit column stride and the given sizes.

    Raises:
        ValueError: wrong rank, dtype, shape, or a column stride other than 1.
    """
    if tensor.dim() != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(tensor.shape)}")
    if tensor.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be one of {FLOAT_DTYPES}, got {tensor.dtype}")
    if (rows is not None and tensor.shape[0] != rows) or (cols is not None and tensor.shape[1] != cols):
        raise ValueError(f"{name} must have shape [{rows}, {cols}] (None = any), got {tuple(tensor.shape)}")
    if tensor.shape[1] > 1 and tensor.stride(1) != 1:
        raise ValueError(f"{name} must have contiguous rows (column stride 1); call .contiguous()")


def check_vector(name: str, tensor: torch.Tensor, size: int) -> None:
    """Check that ``tensor`` is a contiguous 1-D tensor of ``size`` elements.

    Raises:
        ValueError: wrong shape or not contiguous.
    """
    if tensor.dim() != 1 or tensor.shape[0] != size or not tensor.is_contiguous():
        raise ValueError(f"{name} must be a contiguous [{size}] vector, got shape {tuple(tensor.shape)}")


# Reductions without triton.language's @jit helpers (tl.zeros, tl.sum, tl.max, tl.cumsum): when triton was
# imported before TRITON_INTERPRET=1 was set (torch._dynamo imports it early), those helpers stay
# compile-only and the interpreter cannot call them. tl.reduce / tl.associative_scan are builtins in both
# modes, and with triton's own combine functions the interpreter runs them as numpy sum / max / cumsum.
@triton.jit
def reduce_sum(x, axis: tl.constexpr):
    """``tl.sum(x, axis)``."""
    return tl.reduce(x, axis, tl.standard._sum_combine)


@triton.jit
def reduce_max(x, axis: tl.constexpr):
    """``tl.max(x, axis)`` of a float tensor."""
    return tl.reduce(x, axis, tl.standard._elementwise_max)


@triton.jit
def prefix_sum(x, axis: tl.constexpr):
    """Inclusive ``tl.cumsum(x, axis)``."""
    return tl.associative_scan(x, axis, tl.standard._sum_combine)


# @triton.jit picks the interpreter when a function is defined (TRITON_INTERPRET=1 at import of this package),
# so a later change of the variable does not affect the kernels: ask one of them.
_INTERPRETED = isinstance(reduce_sum, InterpretedFunction)


def interpreting() -> bool:
    """True when the kernels were defined for the Triton interpreter (``TRITON_INTERPRET=1``: CPU, one config)."""
    return _INTERPRETED

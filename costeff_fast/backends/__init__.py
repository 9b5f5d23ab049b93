"""Backends that run the packed layers for the engine: ``torch`` (CPU and any torch device), ``triton`` (CUDA)."""

from __future__ import annotations

import torch

from ..modeling import CostEffForSequenceClassification
from ..packing import PackedWeights
from .base import Backend
from .torch_backend import TorchBackend

BACKENDS = ("auto", "torch", "triton")


def _triton_gpu_available() -> bool:
    """True when a CUDA GPU is visible and triton imports."""
    if not torch.cuda.is_available():
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend_name(backend: str) -> str:
    """Map ``"auto"`` to ``"triton"`` on a CUDA machine with triton installed, else ``"torch"``; check the name.

    Raises:
        ValueError: an unknown backend name.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    return "triton" if _triton_gpu_available() else "torch"


def build_backend(model: CostEffForSequenceClassification, backend: str = "auto", device=None) -> Backend:
    """Pack ``model`` for ``backend`` and return the backend instance.

    ``torch``: fp32 storage on ``device`` (default CPU). ``triton``: fp16 on CUDA (default ``cuda``), or fp32
    on the CPU when ``TRITON_INTERPRET=1`` (see :class:`~costeff_fast.backends.triton_backend.TritonBackend`).
    ``auto`` with an explicit non-CUDA ``device`` means ``torch``.

    Raises:
        ValueError: an unknown backend name.
        RuntimeError: ``triton`` without CUDA and without ``TRITON_INTERPRET=1``.
    """
    name = resolve_backend_name(backend)
    if backend == "auto" and device is not None and torch.device(device).type != "cuda":
        name = "torch"
    if name == "triton":
        from .triton_backend import TritonBackend  # imports triton only when asked for

        return TritonBackend.from_model(model, device)
    device = torch.device(device or "cpu")
    weights = PackedWeights.from_model(model, dtype=torch.float32, device=device)
    return TorchBackend(weights, device)


__all__ = ["BACKENDS", "Backend", "TorchBackend", "build_backend", "resolve_backend_name"]

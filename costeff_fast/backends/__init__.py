"""Backends that run the packed layers for the engine: ``torch`` (CPU and any torch device), ``triton`` (CUDA)."""

from __future__ import annotations

import torch

from ..modeling import CostEffForSequenceClassification
from ..packing import PackedWeights
from .base import Backend
from .torch_backend import TorchBackend

BACKENDS = ("auto", "torch")


def resolve_backend_name(backend: str) -> str:
    """Map ``"auto"`` to a concrete backend name; check the name.

    Raises:
        ValueError: an unknown backend name.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return "torch" if backend == "auto" else backend


def build_backend(model: CostEffForSequenceClassification, backend: str = "auto", device=None) -> Backend:
    """Pack ``model`` for ``backend`` (fp32 storage on the CPU) and return the backend instance."""
    name = resolve_backend_name(backend)
    device = torch.device(device or "cpu")
    weights = PackedWeights.from_model(model, dtype=torch.float32, device=device)
    return TorchBackend(weights, device)


__all__ = ["BACKENDS", "Backend", "TorchBackend", "build_backend", "resolve_backend_name"]

"""The backend table: ``torch`` (reference path), ``native`` (csrc, CPU), ``triton`` (CUDA); ``auto`` picks one.

:func:`select_backend` resolves a name and says why; :func:`build_backend` packs a model for it, in fp32 or
(``quantize="int8"``, ``native`` and ``torch`` on the CPU) with int8 GEMM weights. The
``triton`` backend module imports triton, an optional dependency, so it is imported only when chosen.
"""

from __future__ import annotations

import importlib.util
import logging

import torch
from torch import nn

from .. import native
from ..packing import PackedWeights, check_quantize, int8_engine
from .base import Backend
from .native_backend import NativeBackend
from .torch_backend import TorchBackend

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "native", "triton")


def select_backend(backend: str = "auto", device=None) -> tuple[str, str]:
    """Resolve a backend name: ``(name, reason)``.

    ``auto``: ``triton`` on a CUDA device (or with no device given and a visible GPU) when triton is
    installed; ``torch`` on an explicit CUDA device without triton and on any other non-CPU device; otherwise
    the CPU: ``native`` when the native kernels build (and ``COSTEFF_FAST_NATIVE=0`` is not set), else
    ``torch``. An explicit name is returned as given.

    Raises:
        ValueError: an unknown backend name.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend, "asked for"
    target = torch.device(device) if device is not None else None
    wants_cuda = target.type == "cuda" if target is not None else torch.cuda.is_available()
    if wants_cuda and torch.cuda.is_available() and importlib.util.find_spec("triton") is not None:
        return "triton", "CUDA GPU and triton found"
    if target is not None and target.type == "cuda":
        return "torch", "CUDA without triton installed (pip install costeff_fast[gpu])"
    if target is not None and target.type != "cpu":
        return "torch", f"device {target} has no dedicated kernels"
    if native.available():
        return "native", "CPU and the native kernels are built"
    return "torch", f"CPU without native kernels (disabled by {native.DISABLE_ENV}=0 or build failed, see the log)"


def check_quantize_target(quantize, backend: str = "auto", device=None) -> None:
    """Refuse, in one line, a ``quantize`` value :func:`build_backend` cannot run.

    The one check of where int8 weights run, before anything is loaded or packed; past it, ``quantize`` is a
    property of the packed weights (:attr:`~costeff_fast.packing.PackedWeights.quantize`, whose
    :meth:`~costeff_fast.packing.PackedWeights.from_model` packs int8 only in fp32 on the CPU), which the
    backends read without checking again.

    Raises:
        ValueError: ``quantize`` not None or ``"int8"``; ``"int8"`` with ``backend="triton"`` or a device other
            than the CPU (the int8 GEMMs are torch's fbgemm/oneDNN CPU kernels).
        RuntimeError: ``"int8"`` in a torch build without those kernels.
    """
    check_quantize(quantize)
    if quantize is None:
        return
    if backend == "triton":
        raise ValueError(f"quantize={quantize!r} runs on the CPU (torch's int8 GEMMs); backend='triton' has no int8 "
                         "path: use backend='auto', 'native' or 'torch' on the CPU, or quantize=None")
    if device is not None and torch.device(device).type != "cpu":
        raise ValueError(f"quantize={quantize!r} runs on the CPU (torch's int8 GEMMs), got device {device}; "
                         "use device='cpu' or quantize=None")
    int8_engine()


def build_backend(model: nn.Module, backend: str = "auto", device=None, quantize: str | None = None) -> Backend:
    """Pack ``model`` for ``backend`` and return the backend instance; logs which backend and why.

    Storage: ``torch`` fp32 on ``device`` (default CPU); ``native`` fp32 on the CPU; ``triton`` fp16 on CUDA
    (default ``cuda``), or fp32 on the CPU under ``TRITON_INTERPRET=1``. With ``quantize="int8"`` (``native`` or
    ``torch`` on the CPU; ``auto`` then resolves on the CPU) each layer's four GEMM weights are stored int8 per
    output channel and run with dynamically quantized int8 activations
    (:class:`~costeff_fast.packing.Int8Weight`); embeddings, LayerNorms, attention and exits stay fp32.

    Args:
        model: a :class:`~costeff_fast.modeling.CostEffForSequenceClassification`.
        backend: one of :data:`BACKENDS`.
        device: torch device; None picks the backend's default.
        quantize: None (fp32) or ``"int8"``.

    Raises:
        ValueError: an unknown backend name, ``native`` on a device other than the CPU, or a ``quantize`` it
            cannot run (:func:`check_quantize_target`).
        RuntimeError: ``native`` without built kernels; ``triton`` without CUDA and without
            ``TRITON_INTERPRET=1``; ``quantize="int8"`` without torch's int8 CPU kernels.
    """
    check_quantize_target(quantize, backend, device)
    if quantize is not None and device is None:
        device = "cpu"  # auto on a GPU machine: the int8 path is the CPU's
    name, reason = select_backend(backend, device)
    logger.info("costeff_fast: backend %r (%s)%s", name, reason, "" if quantize is None else f", {quantize} GEMMs")
    if name == "triton":
        from .triton_backend import TritonBackend  # imports triton, an optional dependency

        return TritonBackend.from_model(model, device)
    device = torch.device(device or "cpu")
    if name == "native" and device.type != "cpu":
        raise ValueError(f"backend='native' runs on the CPU, got device {device}; use backend='torch' or 'triton'")
    weights = PackedWeights.from_model(model, dtype=torch.float32, device=device, quantize=quantize)
    return NativeBackend(weights, device) if name == "native" else TorchBackend(weights, device)


__all__ = [
    "BACKENDS", "Backend", "NativeBackend", "TorchBackend", "build_backend", "check_quantize_target", "select_backend",
]

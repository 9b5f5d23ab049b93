"""The engine's host <-> device copies: the only places where it may wait for the device.

Early exit needs a few small things on the host (which rows answered, to size the survivors' batch) and the rows'
lengths on the device; a blocking copy either way drains the device's queue. On a CUDA device:

* :func:`to_device` sends a host tensor through pinned memory without waiting (``non_blocking=True`` from a pinned
  buffer: PyTorch's caching host allocator keeps the buffer until the copy has run);
* :func:`to_host` brings any number of device tensors down into pinned buffers with asynchronous copies and
  then waits once, on one event, for all of them.

So one :func:`to_host` call is one host synchronisation, and the engine's sync budget (docs/design.md, Engine)
counts its calls. On the CPU both functions return their inputs (there is nothing to wait for). Source: CUDA
runtime API, "API synchronization behavior"; PyTorch, "Pinned memory" (``torch.Tensor.pin_memory``).
"""

from __future__ import annotations

import torch


def to_device(host: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``host`` (any shape and dtype, on the CPU) on ``device``, without waiting for the device.

    Returns ``host.to(device)`` when ``device`` is not a CUDA device or ``host`` is on one already.
    """
    device = torch.device(device)
    if device.type != "cuda" or host.device.type == "cuda":
        return host.to(device)
    # always a fresh pinned buffer: the copy runs after this returns, so it must not read the caller's memory (a
    # tensor pinned already would be used as it is by pin_memory() and could be refilled before the copy ran)
    staging = torch.empty(host.shape, dtype=host.dtype, pin_memory=True)
    staging.copy_(host)
    return staging.to(device, non_blocking=True)


def to_host(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Every tensor of ``tensors`` on the host, after one wait for the device (none when all are on the CPU).

    Returns:
        CPU tensors of the same shapes and dtypes, in order (CPU inputs are returned as they are; from a GPU they
        are pinned buffers of their own).

    Raises:
        ValueError: tensors on more than one CUDA device (one event waits for one device's stream).
    """
    if all(tensor.device.type != "cuda" for tensor in tensors):
        return tuple(tensor.cpu() for tensor in tensors)
    devices = {tensor.device for tensor in tensors if tensor.device.type == "cuda"}
    if len(devices) > 1:
        raise ValueError(f"to_host waits on one device's stream; got tensors on {sorted(map(str, devices))}")
    (device,) = devices
    copies = []
    for tensor in tensors:
        if tensor.device.type != "cuda":
            copies.append(tensor.cpu())
            continue
        host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        host.copy_(tensor, non_blocking=True)
        copies.append(host)
    done = torch.cuda.Event()
    done.record(torch.cuda.current_stream(device))
    done.synchronize()
    return tuple(copies)

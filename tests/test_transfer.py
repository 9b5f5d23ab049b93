"""costeff_fast.transfer: the engine's host <-> device copies give the same values as plain copies (CPU here; the
asynchronous CUDA path where a GPU is present)."""

from __future__ import annotations

import pytest
import torch

from costeff_fast import transfer

CUDA = torch.cuda.is_available()


def _inputs():
    return [torch.arange(12).reshape(3, 4).t(),  # not contiguous
            torch.tensor([True, False, True]), torch.zeros(0, 5), torch.linspace(-1, 1, 8).reshape(4, 2)]


def test_on_the_cpu_both_directions_keep_values_dtypes_and_order():
    for host in _inputs():
        moved = transfer.to_device(host, "cpu")
        assert moved.dtype == host.dtype and torch.equal(moved, host)
    inputs = _inputs()
    back = transfer.to_host(*inputs)
    assert len(back) == 4 and all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(back, inputs))


@pytest.mark.skipif(not CUDA, reason="the asynchronous path needs a CUDA device")
def test_on_a_gpu_the_copies_equal_plain_ones_and_never_read_the_callers_buffer_late():
    for host in _inputs():
        assert torch.equal(transfer.to_device(host, "cuda").cpu(), host)
    pinned = torch.arange(1 << 20, dtype=torch.int64).pin_memory()
    expected = pinned.clone()
    device = transfer.to_device(pinned, "cuda")
    pinned.fill_(-1)  # the caller refills its buffer at once (double buffering)
    assert torch.equal(device.cpu(), expected)
    tensors = [host.cuda() for host in _inputs()]
    back = transfer.to_host(*tensors)
    assert all(b.device.type == "cpu" and torch.equal(b, t.cpu()) for b, t in zip(back, tensors))

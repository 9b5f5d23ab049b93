"""The engine's sync budget, counted on the CPU: how often the host would wait for a GPU, per layer.

A CUDA device runs work asynchronously; the host waits for it whenever it needs a device value (``.item()``,
``bool()``, ``.tolist()``, ``.cpu()``, ``nonzero``, indexing with a device bool mask, ``repeat_interleave``
without ``output_size``), and whenever it copies host memory to the device without ``non_blocking`` (the copy
is followed by a stream synchronisation), which includes indexing a device tensor with a host index tensor. Each
such wait drains the device's queue. Here the "device" is the CPU, and :class:`OnDevice` marks the tensors that
would live on the GPU: what :func:`costeff_fast.transfer.to_device` sends, what a factory creates with a
``device=`` argument, and (torch keeps a subclass through every operation) all that is computed from them.
:class:`SyncAudit` counts every operation above on such a tensor, and every :func:`costeff_fast.transfer.to_host`
call (one wait for all the tensors it brings down).

The budget (docs/design.md, Engine): on the triton backend, at most one wait per layer that may answer, none on a
layer where no row can exit (threshold <= 0), none at the last layer of ``run_early_exit`` (its outputs stay on the
device) and none to embed; the streaming loop also one per layer call (its rows' logits come down with the mask).
The kernels are leaves: a launch is asynchronous, so each launcher call counts as a launch, and what the launcher
does inside (under the Triton interpreter here) is not audited. Limitation: ``.to(device)`` on a tensor already
marked is taken as staying on the device (the CPU stands for both sides here); the engine brings values down only
through ``transfer.to_host``, ``.cpu()`` or the operations above.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
from torch.overrides import TorchFunctionMode  # noqa: E402
from torch.utils._pytree import tree_leaves, tree_map  # noqa: E402

pytest.importorskip("triton")

from conftest import make_tiny_model, random_batch  # noqa: E402

from costeff_fast import exit_entropy, kernels, transfer  # noqa: E402
from costeff_fast.backends.triton_backend import TritonBackend  # noqa: E402
from costeff_fast.engine import run_early_exit, stream_early_exit  # noqa: E402
from costeff_fast.packing import PackedWeights  # noqa: E402

if torch.cuda.is_available():
    pytest.skip("the audit stands the CPU in for the device; on a GPU, bench/gpu_check.sh times the real thing",
                allow_module_level=True)


class OnDevice(torch.Tensor):
    """A CPU tensor standing for one in the GPU's memory (results of operations on it are OnDevice too)."""


def _plain(value):
    return value.as_subclass(torch.Tensor) if isinstance(value, OnDevice) else value


def _mark(value):
    return value.as_subclass(OnDevice) if isinstance(value, torch.Tensor) and not isinstance(value, OnDevice) else value


#: operations that need a device value on the host
READS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "numpy", "cpu", "nonzero", "argwhere",
         "masked_select", "unique", "unique_consecutive", "equal", "allclose", "bincount"}
INDEXING = {"__getitem__", "__setitem__", "index_select", "index_put_", "index_put", "index_add_", "index_copy_"}


class SyncAudit(TorchFunctionMode):
    """Records ``("wait", what)``, ``("launch", kernel)`` and ``("layer", index)`` / ``("embed", None)`` events."""

    def __init__(self):
        super().__init__()
        self.events: list[tuple[str, object]] = []
        self.off = False

    @contextmanager
    def paused(self):
        """Audit nothing for the duration (a kernel's own run under the interpreter)."""
        self.off = True
        try:
            yield
        finally:
            self.off = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.off:
            return func(*args, **kwargs)
        name = getattr(func, "__name__", str(func))
        leaves = [leaf for leaf in tree_leaves((args, kwargs)) if isinstance(leaf, torch.Tensor)]
        on_device = any(isinstance(leaf, OnDevice) for leaf in leaves)
        if on_device and self._waits(name, args, kwargs):
            self.events.append(("wait", name))
        if not on_device and name in ("to", "cuda") and self._moves(args, kwargs):
            if not kwargs.get("non_blocking", False):
                self.events.append(("wait", "blocking host-to-device copy"))
            return _mark(func(*args, **kwargs))
        out = func(*args, **kwargs)
        if not on_device and kwargs.get("device") is not None:  # a factory on the device
            out = tree_map(_mark, out)
        if name in ("cpu", "numpy", "tolist", "item"):
            out = tree_map(_plain, out)
        return out

    @staticmethod
    def _moves(args, kwargs) -> bool:
        return kwargs.get("device") is not None or any(isinstance(a, (torch.device, str)) for a in args[1:])

    @staticmethod
    def _waits(name, args, kwargs) -> bool:
        if name in READS:
            return True
        if name == "where" and len(args) + len(kwargs) == 1:  # where(mask): nonzero
            return True
        if name == "copy_" and isinstance(args[0], OnDevice) != isinstance(args[1], OnDevice):
            return not kwargs.get("non_blocking", False)  # a blocking copy between host and device memory
        if name == "repeat_interleave":
            repeats = args[1] if len(args) > 1 else kwargs.get("repeats")
            return isinstance(repeats, torch.Tensor) and kwargs.get("output_size") is None
        if name in INDEXING:
            indices = [leaf for leaf in tree_leaves(args[1:] + tuple(kwargs.values())) if isinstance(leaf, torch.Tensor)]
            # a device bool mask needs its count; a host index tensor is copied up with a wait
            return any(index.dtype == torch.bool and isinstance(index, OnDevice) for index in indices) or any(
                not isinstance(index, OnDevice) and index.dim() > 0 for index in indices)
        return False

    def per_step(self, kind: str) -> list[tuple[str, int | None, list[str]]]:
        """``(step, index, [events of kind])`` per embed / layer call in order (``("before", None, ...)`` for events
        of ``kind`` before the first step); ``kind`` is ``"wait"`` or ``"launch"``."""
        steps = []
        for event, what in self.events:
            if event in ("embed", "layer"):
                steps.append((event, what, []))
            elif event == kind:
                if not steps:
                    steps.append(("before", None, []))
                steps[-1][2].append(what)
        return steps

    def waits(self):
        return self.per_step("wait")

    def launches(self):
        return self.per_step("launch")


@pytest.fixture
def audit(monkeypatch):
    """A :class:`SyncAudit`, with ``transfer`` and the kernels' launchers patched to report to it."""
    audit = SyncAudit()
    real_to_host = transfer.to_host

    def to_host(*tensors):
        audit.events.append(("wait", "transfer.to_host"))
        with audit.paused():
            return tuple(_plain(t).clone() for t in real_to_host(*tensors))

    monkeypatch.setattr(transfer, "to_host", to_host)
    monkeypatch.setattr(transfer, "to_device", lambda host, device: _mark(_plain(host).clone()))
    for name in ("linear", "linear_residual_layernorm", "varlen_attention", "exit_head", "compact_tokens",
                 "encoder_layer_exit"):
        monkeypatch.setattr(kernels, name, _launcher(audit, name, getattr(kernels, name)))
    return audit


def _launcher(audit: SyncAudit, name: str, run):
    def launch(*args, **kwargs):
        audit.events.append(("launch", name))
        with audit.paused():  # the kernel itself is asynchronous on a GPU: not audited
            out = run(*tree_map(_plain, args), **tree_map(_plain, kwargs))
        return tree_map(_mark, out)

    return launch


class AuditedBackend(TritonBackend):
    """The triton backend, marking the embed and layer calls in the audit."""

    def __init__(self, weights, audit, fused_layers=True):
        super().__init__(weights, "cpu", fused_layers=fused_layers)
        self.audit = audit

    def embed(self, input_ids, token_type_ids, batch):
        self.audit.events.append(("embed", None))
        return super().embed(input_ids, token_type_ids, batch)

    def layer(self, index, hidden, batch):
        self.audit.events.append(("layer", index))
        return super().layer(index, hidden, batch)


def _setup(seed: int, exit_pooling: str, rows: int = 13):
    model = make_tiny_model(seed, attention_head_size=32, weight_std=0.15, exit_pooling=exit_pooling)
    batch = random_batch(seed, batch=rows, vocab=97)
    with torch.no_grad():
        entropy = exit_entropy(torch.stack(model(**batch).exit_logits, dim=1))
    tau = entropy.median(dim=0).values.tolist()
    tau[1] = 0.0  # no row can exit at layer 2: no exit head, no wait
    real = batch["attention_mask"].bool()
    packed = batch["input_ids"][real], batch["token_type_ids"][real], batch["attention_mask"].sum(1)
    return PackedWeights.from_model(model), packed, tau


def _budget(tau, index, last, stream):
    if index == last:
        return 1 if stream else 0
    return 1 if tau[index] > 0 else 0


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "per-op"])
@pytest.mark.parametrize("exit_pooling", ["cls", "mean"])
def test_run_early_exit_waits_once_per_layer_that_may_answer(audit, exit_pooling, fused):
    weights, (ids, types, lengths), tau = _setup(0, exit_pooling)
    expected = run_early_exit(TritonBackend(weights, "cpu", fused_layers=fused), ids, types, lengths, tau)
    backend = AuditedBackend(weights, audit, fused_layers=fused)
    audit.events.clear()  # the unaudited run above went through the patched launchers too
    with audit:
        logits, layers = run_early_exit(backend, ids, types, lengths, tau)
    assert torch.equal(_plain(logits), expected[0]) and torch.equal(_plain(layers), expected[1])
    steps = audit.waits()
    last = backend.num_layers - 1
    assert steps[0] == ("embed", None, []), steps
    ran = [index for kind, index, _ in steps if kind == "layer"]
    assert len(set(_plain(layers).tolist())) >= 2 and ran == list(range(len(ran)))  # rows left at several exits
    for kind, index, waits in steps[1:]:
        assert len(waits) == _budget(tau, index, last, False) and set(waits) <= {"transfer.to_host"}, (index, waits)
    if fused:  # one launch per layer, its exit head included unless the exit has a pooler (the converted last one)
        for kind, index, launched in audit.launches()[1:]:
            assert launched[0] == "encoder_layer_exit" and set(launched[1:]) <= {"exit_head", "compact_tokens"}, launched
            pooler = weights.exits[index].pooler_weight is not None
            assert ("exit_head" in launched) == (pooler and (index == last or tau[index] > 0)), (index, launched)
        assert any(weights.exits[i].pooler_weight is None for i in range(last))
        return
    # the per-op path: five launches per layer, then the exit head where rows may answer, compaction where some left
    layer_kernels = ["linear", "varlen_attention", "linear_residual_layernorm", "linear", "linear_residual_layernorm"]
    for kind, index, launched in audit.launches()[1:]:
        assert launched[:5] == layer_kernels and set(launched[5:]) <= {"exit_head", "compact_tokens"}, launched
        assert ("exit_head" in launched) == (index == last or tau[index] > 0), (index, launched)


@pytest.mark.parametrize("exit_pooling", ["cls", "mean"])
def test_the_stream_waits_once_per_layer_call_that_may_answer(audit, exit_pooling):
    weights, (ids, types, lengths), tau = _setup(1, exit_pooling, rows=17)
    cu = [0, *torch.cumsum(lengths, 0).tolist()]
    chunks = [(ids[cu[s]:cu[min(s + 5, len(lengths))]], types[cu[s]:cu[min(s + 5, len(lengths))]], lengths[s:s + 5])
              for s in range(0, len(lengths), 5)]
    expected = sorted((int(r), layer) for rows, _, layer in stream_early_exit(TritonBackend(weights, "cpu"), chunks, 4, tau)
                      for r in rows)
    backend = AuditedBackend(weights, audit)
    audit.events.clear()  # the unaudited run above went through the patched launchers too
    with audit:
        answered = [(rows, layer) for rows, _, layer in stream_early_exit(backend, chunks, 4, tau)]
    assert sorted((int(r), layer) for rows, layer in answered for r in _plain(rows)) == expected
    last = backend.num_layers - 1
    steps = audit.waits()
    assert sum(kind == "embed" for kind, _, _ in steps) == len(chunks)
    for kind, index, waits in steps:
        budget = 0 if kind == "embed" else _budget(tau, index, last, True)
        assert len(waits) == budget and set(waits) <= {"transfer.to_host"}, (kind, index, waits)


# ------------------------------------------------------------------------------------------ the audit can fail

@pytest.mark.parametrize("operation, what", [
    (lambda x: x.sum().item(), "item"),
    (lambda x: bool((x > 0).any()), "__bool__"),
    (lambda x: x[x > 0], "__getitem__"),
    (lambda x: x[torch.tensor([0, 2])], "__getitem__"),
    (lambda x: torch.repeat_interleave(x, x), "repeat_interleave"),
    (lambda x: x.cpu(), "cpu"),
    (lambda x: torch.arange(3).to("cpu") + x[:3], "blocking host-to-device copy"),
    (lambda x: torch.where(x > 0), "where"),
    (lambda x: torch.bincount(x), "bincount"),
    (lambda x: x.copy_(torch.tensor([4, 5, 6, 7])), "copy_"),
])
def test_the_audit_sees_each_kind_of_wait(audit, operation, what):
    x = torch.tensor([1, 0, 2, 3]).as_subclass(OnDevice)
    with audit:
        operation(x)
    assert ("wait", what) in audit.events, audit.events


def test_the_audit_lets_asynchronous_work_pass(audit):
    x = torch.tensor([1, 0, 2, 3]).as_subclass(OnDevice)
    host_mask = torch.tensor([True, False, True, True])
    with audit:
        y = (x * 2 + 1)[1:]
        torch.repeat_interleave(x, x, output_size=6)
        positions = transfer.to_device(host_mask.nonzero().squeeze(1), "cpu")
        x[positions]
        torch.arange(3, device="cpu").to("cpu", non_blocking=True)
        host_mask.sum().item()  # a host value: no wait
    assert isinstance(y, OnDevice) and audit.events == [], audit.events


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA's own detector of synchronizing operations")
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "per-op"])
@pytest.mark.parametrize("exit_pooling", ["cls", "mean"])
def test_cuda_flags_no_more_waits_than_the_budget(exit_pooling, fused):
    """On a GPU the audit above cannot see inside torch, so torch's own detector
    (``torch.cuda.set_sync_debug_mode("warn")``) counts the synchronizing operations of one batch after a warm-up
    (kernels compiled): at most the budget, one per layer that may answer (an event wait may or may not count)."""
    import warnings

    model = make_tiny_model(0, attention_head_size=32, weight_std=0.15, exit_pooling=exit_pooling)
    _, (ids, types, lengths), tau = _setup(0, exit_pooling)
    backend = TritonBackend.from_model(model, "cuda", fused_layers=fused)
    run_early_exit(backend, ids, types, lengths, tau)
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run_early_exit(backend, ids, types, lengths, tau)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    synced = [str(w.message) for w in caught if "synchroniz" in str(w.message).lower()]
    budget = sum(_budget(tau, index, backend.num_layers - 1, False) for index in range(backend.num_layers))
    assert len(synced) <= budget, synced

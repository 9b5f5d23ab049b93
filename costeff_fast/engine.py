"""Batch-level early exit with compaction on packed, padding-free tokens (docs/design.md, Engine).

The loop knows nothing of how a layer is computed: a :class:`~costeff_fast.backends.base.Backend` runs pure
operations (tensors in, tensors out), and every rule of early exit lives here, once. Per layer l (1-based,
threshold ``tau_l`` in nats) on the ``B`` active rows' ``T`` real tokens:

1. ``hidden, features = backend.layer(l - 1, hidden, batch)``;
2. which rows answer here: at the last layer every row, without a decision; on an earlier layer with
   ``tau_l <= 0`` none, and the exit head is not run at all; otherwise ``logits, entropy =
   backend.exit_logits(...)`` and ``exits = entropy < tau_l`` (:meth:`~costeff_fast.backends.base.Backend.
   exit_decision` when the backend's head gives no entropy), copied to the host by
   :func:`costeff_fast.transfer.to_host`: the layer's one wait for the device;
3. the answering rows' logits ``[k, C]`` fp32 and ``l`` go to the outputs at their ``row_ids``
   (:func:`costeff_fast.reference.scatter_exits`) and ``backend.compact`` packs the survivors' token spans
   into a new buffer (only when some, not all, rows left); the loop stops when no row is left.

The sync budget (tested in ``tests/test_sync_budget.py``): one host wait on a layer where rows may exit,
none on a layer where none can (``tau_l <= 0``) and none at the last layer of :func:`run_early_exit`. Everything the
host sends goes through :func:`costeff_fast.transfer.to_device` (pinned, asynchronous), the survivors' sizes
come from the host mask and the lengths the batch keeps on the host, and the streaming loop brings the answering
rows' logits down with the mask, in the same wait.

:func:`run_early_exit` runs one batch this way; :func:`stream_early_exit` runs an unbounded stream with one
queue per layer, so every layer keeps running batches of about the same size as rows leave.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch

from . import reference, transfer
from .backends.base import Backend
from .batch import PackedBatch


def _layer_and_exit(
    backend: Backend, index: int, hidden: torch.Tensor, batch: PackedBatch, entropy_threshold: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Layer ``index`` (0-based) and its exit decision (steps 1-2 of the module docstring), without waiting.

    Returns:
        ``(hidden [T, H], logits, exits)`` on the device: ``logits`` None when no row can answer here (the exit head
        did not run); else ``logits [B, C]`` fp32 and ``exits`` the ``[B]`` bool mask of the rows that answer, or
        None at the last layer, where every row does.
    """
    hidden, features = backend.layer(index, hidden, batch)
    last = index == backend.num_layers - 1
    tau = entropy_threshold[index]
    if not last and tau <= 0:
        return hidden, None, None
    logits, entropy = backend.exit_logits(index, hidden, batch, features)
    if last:
        return hidden, logits, None
    return hidden, logits, entropy < tau if entropy is not None else backend.exit_decision(logits, tau)


def _answering(exits: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``[k]`` int64 positions, on ``device``, of the rows where the host mask ``exits [B]`` is True (indexing
    with positions sized on the host, unlike a device mask, never waits for the device)."""
    return transfer.to_device(exits.nonzero().squeeze(1), device)


def _survivors(
    backend: Backend, hidden: torch.Tensor, batch: PackedBatch, exits: torch.Tensor
) -> tuple[torch.Tensor, PackedBatch]:
    """The rows where the host mask ``exits [B]`` is False: ``(hidden, batch)`` itself when none left, an empty
    batch when all did, else ``backend.compact``."""
    keep = ~exits
    survivors = int(keep.sum())
    if survivors == batch.num_rows:
        return hidden, batch
    if survivors == 0:
        return hidden[:0], PackedBatch.from_lengths(batch.lengths[:0], batch.device, batch.row_ids[:0])
    return backend.compact(hidden, batch, keep)


def run_early_exit(
    backend: Backend,
    input_ids: torch.Tensor,
    token_type_ids: torch.Tensor,
    lengths: torch.Tensor,
    entropy_threshold: Sequence[float],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a packed batch through ``backend`` with batch-level early exit and compaction.

    Args:
        backend: the :class:`~costeff_fast.backends.base.Backend` holding the packed weights.
        input_ids: ``[T]`` int64 token ids of all rows, concatenated without padding.
        token_type_ids: ``[T]`` int64 segment ids.
        lengths: ``[B]`` int64 tokens per row (each >= 1), summing to T.
        entropy_threshold: one threshold per layer in nats, as
            :func:`~costeff_fast.config.resolve_entropy_threshold` returns it (<= 0: no row exits at that
            layer, whose exit head is then skipped; the last layer answers for every row whatever its value).

    Returns:
        ``logits [B, num_labels]`` fp32 in input order and ``exit_layer [B]`` int64 (1-based).
    """
    device = backend.device
    num_layers, num_labels = backend.num_layers, backend.num_labels
    num_rows = len(lengths)
    logits_out = torch.zeros(num_rows, num_labels, dtype=torch.float32, device=device)
    exit_layer = torch.zeros(num_rows, dtype=torch.long, device=device)
    if num_rows == 0:
        return logits_out, exit_layer
    batch = PackedBatch.from_lengths(lengths, device)
    hidden = backend.embed(transfer.to_device(input_ids, device), transfer.to_device(token_type_ids, device), batch)
    for index in range(num_layers):
        hidden, logits, exits = _layer_and_exit(backend, index, hidden, batch, entropy_threshold)
        if logits is None:
            continue
        if exits is None:  # the last layer: every row left answers
            answering = torch.arange(batch.num_rows, device=device)
            reference.scatter_exits(logits_out, exit_layer, logits, answering, batch.row_ids, index + 1)
            break
        (exits,) = transfer.to_host(exits)  # the layer's one wait
        if not exits.any():
            continue
        reference.scatter_exits(logits_out, exit_layer, logits, _answering(exits, device), batch.row_ids, index + 1)
        hidden, batch = _survivors(backend, hidden, batch, exits)
        if batch.num_rows == 0:
            break
    return logits_out, exit_layer


class _RowQueue:
    """Rows waiting for one layer: packed ``hidden`` pieces with their batches, oldest first."""

    def __init__(self):
        self.pieces: list[tuple[torch.Tensor, PackedBatch]] = []
        self.num_rows = 0

    def push(self, hidden: torch.Tensor, batch: PackedBatch) -> None:
        self.pieces.append((hidden, batch))
        self.num_rows += batch.num_rows

    def pop(self, max_rows: int) -> tuple[torch.Tensor, PackedBatch]:
        """Remove and return the oldest ``min(max_rows, num_rows)`` rows as one packed batch."""
        taken, rows = [], 0
        while rows < max_rows and self.pieces:
            taken.append(self.pieces.pop(0))
            rows += taken[-1][1].num_rows
        hidden = taken[0][0] if len(taken) == 1 else torch.cat([h for h, _ in taken])
        batch = taken[0][1] if len(taken) == 1 else PackedBatch.concat([b for _, b in taken])
        if rows > max_rows:
            batch, rest, num_tokens = batch.split(max_rows)
            hidden, rest_hidden = hidden[:num_tokens], hidden[num_tokens:]
            self.pieces.insert(0, (rest_hidden, rest))
        self.num_rows -= batch.num_rows
        return hidden, batch


def stream_early_exit(
    backend: Backend,
    chunks: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    batch_size: int,
    entropy_threshold: Sequence[float],
) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """Early exit over a stream of rows, keeping every layer's batch near ``batch_size`` (docs/design.md, Engine).

    There is one queue per layer. Rows that survive layer l wait in queue l+1; a layer runs when its queue
    holds ``batch_size`` rows (the deepest such layer first), on exactly ``batch_size`` rows. When no queue
    is full, the next chunk of input is embedded into queue 0; once the input is exhausted the shallowest
    non-empty queue runs, so the leftovers merge on their way down.

    Memory: a queue holds fewer than ``2 * batch_size`` rows, so at most ``2 * batch_size * num_layers``
    rows (plus one chunk) are alive at any time; chunks are pulled only when needed.

    Args:
        backend: the :class:`~costeff_fast.backends.base.Backend`.
        chunks: ``(input_ids [T], token_type_ids [T], lengths [B])`` int64 pieces of the stream, packed as
            for :func:`run_early_exit` (at most ``batch_size`` rows each keeps the bound above). Rows are
            numbered 0, 1, 2 ... across chunks in order.
        batch_size: target rows per layer call (>= 1).
        entropy_threshold: one threshold per layer in nats, as for :func:`run_early_exit`.

    Yields:
        ``(row_ids [k] int64, logits [k, num_labels] fp32, exit_layer)`` on the CPU for the k >= 1 rows that
        answered at the 1-based layer ``exit_layer`` in one layer call. Rows come out as they finish, not
        in input order: ``row_ids`` say where each belongs.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device, num_layers = backend.device, backend.num_layers
    queues = [_RowQueue() for _ in range(num_layers)]
    chunks = iter(chunks)
    exhausted, next_row = False, 0
    while True:
        index = next((i for i in reversed(range(num_layers)) if queues[i].num_rows >= batch_size), None)
        if index is None and not exhausted:
            chunk = next(chunks, None)
            if chunk is None:
                exhausted = True
            elif len(chunk[2]):
                input_ids, token_type_ids, lengths = chunk
                row_ids = torch.arange(next_row, next_row + len(lengths), device=device)
                next_row += len(lengths)
                batch = PackedBatch.from_lengths(lengths, device, row_ids)
                input_ids, token_type_ids = (transfer.to_device(ids, device) for ids in (input_ids, token_type_ids))
                queues[0].push(backend.embed(input_ids, token_type_ids, batch), batch)
            continue
        if index is None:
            index = next((i for i in range(num_layers) if queues[i].num_rows), None)
            if index is None:
                return
        hidden, batch = queues[index].pop(batch_size)
        hidden, logits, exits = _layer_and_exit(backend, index, hidden, batch, entropy_threshold)
        if logits is not None and exits is None:  # the last layer: every row answers
            row_ids, logits = transfer.to_host(batch.row_ids, logits)  # the layer's one wait
            # copies, as the other layers' indexing makes: the caller may keep them, and on a GPU these are pinned
            # buffers the caching allocator could not reuse while held
            yield row_ids.clone(), logits.clone(), index + 1
            continue
        if logits is not None:
            # the mask, and every row's logits and row id with it: the layer's one wait
            exits, row_ids, logits = transfer.to_host(exits, batch.row_ids, logits)
            if exits.any():
                yield row_ids[exits], logits[exits], index + 1
                hidden, batch = _survivors(backend, hidden, batch, exits)
        if batch.num_rows:
            queues[index + 1].push(hidden, batch)

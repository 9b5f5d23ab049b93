"""Batch-level early exit with compaction on packed, padding-free tokens (docs/design.md, Engine).

The loop knows nothing of how a layer is computed: a :class:`~costeff_fast.backends.base.Backend` runs its
four operations. Per layer l (1-based):

1. ``hidden, features = backend.layer(l - 1, hidden, batch)`` on the ``T`` real tokens of the active rows;
2. ``logits, exits = backend.exit(...)``: the exit head, entropy (nats) and ``exits = entropy < tau_l``
   (every row at the last layer);
3. ``backend.retire(...)`` writes the exited rows' logits and ``l`` to the outputs at their ``row_ids`` and
   compacts the survivors' token spans into a new packed buffer; the loop stops when no row is left.

:func:`run_early_exit` runs one batch this way; :func:`stream_early_exit` runs an unbounded stream with one
queue per layer, so every layer keeps running batches of about the same size as rows leave.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch

from .backends.base import Backend
from .batch import PackedBatch


def _layer_and_exit(
    backend: Backend, index: int, hidden: torch.Tensor, batch: PackedBatch, entropy_threshold: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Layer ``index`` (0-based) and its exit: new ``hidden [T, H]``, ``logits [B, C]`` fp32 and the host exit
    mask ``[B]`` bool (entropy < tau; all True at the last layer, which always answers)."""
    hidden, features = backend.layer(index, hidden, batch)
    if index == backend.num_layers - 1:
        logits, _ = backend.exit(index, hidden, batch, features, 0.0)
        return hidden, logits, torch.ones(batch.num_rows, dtype=torch.bool)
    logits, exits = backend.exit(index, hidden, batch, features, entropy_threshold[index])
    return hidden, logits, exits


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
            :func:`~costeff_fast.config.resolve_entropy_threshold` returns it (0.0: no exit at that layer).

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
    hidden = backend.embed(input_ids.to(device), token_type_ids.to(device), batch)
    for index in range(num_layers):
        hidden, logits, exits = _layer_and_exit(backend, index, hidden, batch, entropy_threshold)
        hidden, batch = backend.retire(hidden, batch, logits, exits, logits_out, exit_layer, index + 1)
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
    device, num_layers, num_labels = backend.device, backend.num_layers, backend.num_labels
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
                queues[0].push(backend.embed(input_ids.to(device), token_type_ids.to(device), batch), batch)
            continue
        if index is None:
            index = next((i for i in range(num_layers) if queues[i].num_rows), None)
            if index is None:
                return
        hidden, batch = queues[index].pop(batch_size)
        hidden, logits, exits = _layer_and_exit(backend, index, hidden, batch, entropy_threshold)
        num_exited = int(exits.sum())
        if num_exited:  # retire as run_early_exit does, into per-call outputs indexed by position in the call
            logits_out = logits.new_empty(batch.num_rows, num_labels)
            exit_layer = torch.empty(batch.num_rows, dtype=torch.long, device=logits.device)
            local = batch.with_row_ids(torch.arange(batch.num_rows, device=device))
            hidden, kept = backend.retire(hidden, local, logits, exits, logits_out, exit_layer, index + 1)
            exited = exits.to(device)
            yield batch.row_ids[exited].cpu(), logits_out[exited].cpu(), index + 1
            batch = kept.with_row_ids(batch.row_ids[kept.row_ids])
        if batch.num_rows:
            queues[index + 1].push(hidden, batch)

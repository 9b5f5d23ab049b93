"""Batch-level early exit with compaction on packed, padding-free tokens (DESIGN.md, Engine).

The loop knows nothing of how a layer is computed: a :class:`~costeff_fast.backends.base.Backend` runs the
layers, the exit heads and the compaction. Per layer l (1-based):

1. ``hidden = backend.layer(l, hidden, batch)`` on the ``T`` real tokens of the active rows;
2. the exit head on the CLS rows gives logits, entropy (nats) and ``exits = entropy < tau_l``;
3. exited rows' logits and ``l`` are written to the outputs at their original positions (``row_ids``);
4. the survivors' token spans are compacted into a new packed buffer; the loop stops when no row is left.

:func:`run_early_exit` runs one batch this way; :func:`stream_early_exit` runs an unbounded stream with one
queue per layer, so every layer keeps running batches of about the same size as rows leave.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property

import torch


@dataclass
class PackedBatch:
    """Layout of the active rows' tokens in a packed ``[T, H]`` buffer (flash-attention varlen style).

    Attributes:
        cu_seqlens: ``[B + 1]`` int64 prefix sums of the row lengths, ``cu_seqlens[0] = 0``.
        lengths: ``[B]`` int64 row lengths (tokens), on the CPU.
        row_ids: ``[B]`` int64 positions of the active rows in the caller's batch.
    """

    cu_seqlens: torch.Tensor
    lengths: torch.Tensor
    row_ids: torch.Tensor

    @classmethod
    def from_lengths(cls, lengths: torch.Tensor, device, row_ids: torch.Tensor | None = None) -> "PackedBatch":
        """Build a batch from ``lengths [B]`` (CPU int64); ``row_ids`` default ``arange(B)``."""
        lengths = lengths.to(torch.long).cpu()
        cu = torch.zeros(len(lengths) + 1, dtype=torch.long)
        torch.cumsum(lengths, 0, out=cu[1:])
        if row_ids is None:
            row_ids = torch.arange(len(lengths), device=device)
        return cls(cu_seqlens=cu.to(device), lengths=lengths, row_ids=row_ids)

    @property
    def num_rows(self) -> int:
        return len(self.lengths)

    @cached_property
    def num_tokens(self) -> int:
        return int(self.lengths.sum())

    @cached_property
    def max_seqlen(self) -> int:
        return int(self.lengths.max()) if len(self.lengths) else 0

    @cached_property
    def cls_index(self) -> torch.Tensor:
        """``[B]`` int64 index of each row's first ([CLS]) token in the packed buffer."""
        return self.cu_seqlens[:-1]

    @cached_property
    def token_row(self) -> torch.Tensor:
        """``[T]`` int64 row of every packed token."""
        device = self.cu_seqlens.device
        return torch.repeat_interleave(torch.arange(self.num_rows, device=device), self.lengths.to(device))

    @cached_property
    def position_ids(self) -> torch.Tensor:
        """``[T]`` int64 position of every packed token inside its row (0 = [CLS])."""
        return torch.arange(self.num_tokens, device=self.cu_seqlens.device) - self.cu_seqlens[self.token_row]

    def row_mean(self, hidden: torch.Tensor) -> torch.Tensor:
        """Mean of each row's token vectors: packed ``[T, H]`` -> ``[B, H]`` (same dtype)."""
        sums = hidden.new_zeros(self.num_rows, hidden.shape[1]).index_add_(0, self.token_row, hidden)
        return sums / self.lengths.to(device=hidden.device, dtype=hidden.dtype)[:, None]

    @cached_property
    def padded_index(self) -> torch.Tensor:
        """``[T]`` int64 index of every packed token in a padded ``[B * max_seqlen]`` layout."""
        return self.token_row * self.max_seqlen + self.position_ids

    @cached_property
    def key_padding_mask(self) -> torch.Tensor:
        """``[B, max_seqlen]`` bool, True where the padded layout holds a real token."""
        positions = torch.arange(self.max_seqlen, device=self.cu_seqlens.device)
        return positions[None, :] < self.lengths.to(self.cu_seqlens.device)[:, None]

    def keep(self, keep: torch.Tensor) -> "PackedBatch":
        """The batch of the rows where ``keep [B]`` (bool) is True, in the same order."""
        keep_cpu = keep.cpu()
        return PackedBatch.from_lengths(self.lengths[keep_cpu], self.cu_seqlens.device, self.row_ids[keep])

    @classmethod
    def concat(cls, batches: list["PackedBatch"]) -> "PackedBatch":
        """The rows of ``batches`` one after the other (their hidden buffers concatenate in the same order)."""
        lengths = torch.cat([b.lengths for b in batches])
        return cls.from_lengths(lengths, batches[0].cu_seqlens.device, torch.cat([b.row_ids for b in batches]))

    def split(self, num_rows: int) -> tuple["PackedBatch", "PackedBatch", int]:
        """The first ``num_rows`` rows, the rest, and the number of tokens of the first part."""
        device = self.cu_seqlens.device
        head, tail = self.lengths[:num_rows], self.lengths[num_rows:]
        first = PackedBatch.from_lengths(head, device, self.row_ids[:num_rows])
        return first, PackedBatch.from_lengths(tail, device, self.row_ids[num_rows:]), int(head.sum())


def _layer_and_exit(
    backend, index: int, hidden: torch.Tensor, batch: PackedBatch, entropy_threshold: list[float] | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Layer ``index`` (0-based) and its exit head: new ``hidden [T, H]``, ``logits [B, C]`` fp32 and the exit
    mask ``[B]`` bool (entropy < tau; all True at the last layer, which always answers)."""
    hidden, features = backend.layer_and_exit_features(index, hidden, batch)
    last = index == backend.num_layers - 1
    tau = None if (last or entropy_threshold is None) else entropy_threshold[index]
    logits, exits = backend.exit_head(index, hidden, batch, tau, features=features)
    if last:
        exits = torch.ones_like(exits)
    return hidden, logits, exits


def run_early_exit(
    backend,
    input_ids: torch.Tensor,
    token_type_ids: torch.Tensor,
    lengths: torch.Tensor,
    entropy_threshold: list[float] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a packed batch through ``backend`` with batch-level early exit and compaction.

    Args:
        backend: a :class:`~costeff_fast.backends.base.Backend` holding the packed weights.
        input_ids: ``[T]`` int64 token ids of all rows, concatenated without padding.
        token_type_ids: ``[T]`` int64 segment ids.
        lengths: ``[B]`` int64 tokens per row (each >= 1), summing to T.
        entropy_threshold: one threshold per layer in nats (already validated), or None (no early exit).

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
        hidden, batch = backend.exit_rows(logits_out, exit_layer, logits, exits, hidden, batch, index + 1)
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
    backend,
    chunks: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    batch_size: int,
    entropy_threshold: list[float] | None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """Early exit over a stream of rows, keeping every layer's batch near ``batch_size`` (DESIGN.md, Engine).

    There is one queue per layer. Rows that survive layer l wait in queue l+1; a layer runs when its queue
    holds ``batch_size`` rows (the deepest such layer first), on exactly ``batch_size`` rows. When no queue
    is full, the next chunk of input is embedded into queue 0; once the input is exhausted the shallowest
    non-empty queue runs, so the leftovers merge on their way down.

    Memory: a queue holds fewer than ``2 * batch_size`` rows, so at most ``2 * batch_size * num_layers``
    rows (plus one chunk) are alive at any time; chunks are pulled only when needed.

    Args:
        backend: a :class:`~costeff_fast.backends.base.Backend`.
        chunks: ``(input_ids [T], token_type_ids [T], lengths [B])`` int64 pieces of the stream, packed as
            for :func:`run_early_exit` (at most ``batch_size`` rows each keeps the bound above). Rows are
            numbered 0, 1, 2 ... across chunks in order.
        batch_size: target rows per layer call (>= 1).
        entropy_threshold: one threshold per layer in nats (already validated), or None (no early exit).

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
                queues[0].push(backend.embed(input_ids.to(device), token_type_ids.to(device), batch), batch)
            continue
        if index is None:
            index = next((i for i in range(num_layers) if queues[i].num_rows), None)
            if index is None:
                return
        hidden, batch = queues[index].pop(batch_size)
        hidden, logits, exits = _layer_and_exit(backend, index, hidden, batch, entropy_threshold)
        keep = ~exits
        survivors = int(keep.sum())
        if survivors < batch.num_rows:
            exits_here = exits.to(logits.device)
            yield batch.row_ids[exits_here].cpu(), logits[exits_here].cpu(), index + 1
        if survivors == 0:
            continue
        if survivors < batch.num_rows:
            hidden, batch = backend.compact(hidden, batch, keep)
        queues[index + 1].push(hidden, batch)

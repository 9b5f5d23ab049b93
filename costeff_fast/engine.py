"""Batch-level early exit with compaction on packed, padding-free tokens (DESIGN.md, Engine).

The loop knows nothing of how a layer is computed: a :class:`~costeff_fast.backends.base.Backend` runs the
layers, the exit heads and the compaction. Per layer l (1-based):

1. ``hidden = backend.layer(l, hidden, batch)`` on the ``T`` real tokens of the active rows;
2. the exit head on the CLS rows gives logits, entropy (nats) and ``exits = entropy < tau_l``;
3. exited rows' logits and ``l`` are written to the outputs at their original positions (``row_ids``);
4. the survivors' token spans are compacted into a new packed buffer; the loop stops when no row is left.
"""

from __future__ import annotations

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
        hidden = backend.layer(index, hidden, batch)
        last = index == num_layers - 1
        tau = None if (last or entropy_threshold is None) else entropy_threshold[index]
        logits, exits = backend.exit_head(index, hidden, batch, tau)
        if last:
            exits = torch.ones_like(exits)
        backend.scatter_exits(logits_out, exit_layer, logits, exits, batch.row_ids, index + 1)
        keep = ~exits
        survivors = int(keep.sum())  # the one host sync per layer
        if survivors == 0:
            break
        if survivors < batch.num_rows:
            hidden, batch = backend.compact(hidden, batch, keep)
    return logits_out, exit_layer

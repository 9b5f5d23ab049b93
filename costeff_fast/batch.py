"""The packed, padding-free batch layout every layer of the engine works on (flash-attention's varlen layout).

The ``B`` active rows' ``T`` real tokens sit one after the other in a ``[T, H]`` buffer; ``cu_seqlens [B + 1]``
marks where each row starts (Dao et al., flash-attention, varlen interface), ``row_ids [B]`` where each row
belongs in the caller's output. Nothing here knows about weights, layers or backends.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from . import transfer


@dataclass
class PackedBatch:
    """Layout of the active rows' tokens in a packed ``[T, H]`` buffer.

    Attributes:
        cu_seqlens: ``[B + 1]`` int64 prefix sums of the row lengths on the work device, ``cu_seqlens[0] = 0``.
        lengths: ``[B]`` int64 row lengths (tokens) on the host, so sizes are known without a device wait.
        row_ids: ``[B]`` int64 positions of the active rows in the caller's output, on the work device.
    """

    cu_seqlens: torch.Tensor
    lengths: torch.Tensor
    row_ids: torch.Tensor

    @classmethod
    def from_lengths(cls, lengths: torch.Tensor, device, row_ids: torch.Tensor | None = None) -> "PackedBatch":
        """Build a batch from ``lengths [B]`` (int64, any device; kept on the host); ``row_ids`` default
        ``arange(B)``. ``cu_seqlens`` goes to ``device`` without a wait (:func:`costeff_fast.transfer.to_device`)."""
        lengths = lengths.to(torch.long).cpu()
        cu = torch.zeros(len(lengths) + 1, dtype=torch.long)
        torch.cumsum(lengths, 0, out=cu[1:])
        if row_ids is None:
            row_ids = torch.arange(len(lengths), device=device)
        return cls(cu_seqlens=transfer.to_device(cu, device), lengths=lengths, row_ids=row_ids)

    @property
    def device(self) -> torch.device:
        """The work device (where ``cu_seqlens`` and ``row_ids`` live)."""
        return self.cu_seqlens.device

    @property
    def num_rows(self) -> int:
        return len(self.lengths)

    @cached_property
    def num_tokens(self) -> int:
        return int(self.lengths.sum())

    @cached_property
    def max_seqlen(self) -> int:
        """The longest row in tokens (0 for an empty batch)."""
        return int(self.lengths.max()) if len(self.lengths) else 0

    @cached_property
    def cls_index(self) -> torch.Tensor:
        """``[B]`` int64 index of each row's first ([CLS]) token in the packed buffer."""
        return self.cu_seqlens[:-1]

    @classmethod
    def concat(cls, batches: list["PackedBatch"]) -> "PackedBatch":
        """The rows of ``batches`` one after the other (their hidden buffers concatenate in the same order)."""
        lengths = torch.cat([b.lengths for b in batches])
        return cls.from_lengths(lengths, batches[0].device, torch.cat([b.row_ids for b in batches]))

    def split(self, num_rows: int) -> tuple["PackedBatch", "PackedBatch", int]:
        """The first ``num_rows`` rows, the rest, and the number of tokens of the first part."""
        head, tail = self.lengths[:num_rows], self.lengths[num_rows:]
        first = PackedBatch.from_lengths(head, self.device, self.row_ids[:num_rows])
        return first, PackedBatch.from_lengths(tail, self.device, self.row_ids[num_rows:]), int(head.sum())

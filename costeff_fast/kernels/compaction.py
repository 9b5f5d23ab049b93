"""Batch compaction after an exit: gather the survivors' token spans into a new packed batch.

:func:`compact_tokens` is the ``triton`` backend's ``compact`` (docs/design.md, Engine, step 3): a one-program
kernel runs prefix sums over the keep mask and the kept row lengths (new slot of each row, new ``cu_seqlens``,
new ``row_ids``), then a copy kernel moves each survivor's token span to its new place.

Synchronization: the launcher reads no device memory on the host. The sizes of the compacted batch (rows,
tokens, longest row) must be passed in; the triton backend derives them from the engine's host copy of the
exit mask and the row lengths it keeps on the CPU, so a layer costs exactly one device-to-host wait: the
engine's copy of the exit mask.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .utils import check_matrix, interpreting, prefix_sum, reduce_sum


@triton.jit
def _compact_plan_kernel(keep_ptr, cu_seqlens_ptr, row_ids_ptr, new_cu_seqlens_ptr, new_row_ids_ptr, src_start_ptr,
                         B, BLOCK: tl.constexpr):
    """One program: exclusive prefix sum of ``keep`` (new slots) and inclusive one of kept lengths (new ends)."""
    tl.store(new_cu_seqlens_ptr, 0)
    kept_rows = tl.full([], 0, tl.int32)
    kept_tokens = tl.full([], 0, tl.int64)
    for b0 in range(0, B, BLOCK):
        rb = b0 + tl.arange(0, BLOCK)
        ok = rb < B
        keep = tl.load(keep_ptr + rb, mask=ok, other=0).to(tl.int32)
        start = tl.load(cu_seqlens_ptr + rb, mask=ok, other=0).to(tl.int64)
        length = (tl.load(cu_seqlens_ptr + rb + 1, mask=ok, other=0).to(tl.int64) - start) * keep
        slot = kept_rows + prefix_sum(keep, 0) - keep
        kept = ok & (keep != 0)
        tl.store(new_cu_seqlens_ptr + slot + 1, kept_tokens + prefix_sum(length, 0), mask=kept)
        tl.store(new_row_ids_ptr + slot, tl.load(row_ids_ptr + rb, mask=kept), mask=kept)
        tl.store(src_start_ptr + slot, start, mask=kept)
        kept_rows += reduce_sum(keep, 0)
        kept_tokens += reduce_sum(length, 0)


@triton.jit
def _gather_spans_kernel(src_ptr, dst_ptr, src_start_ptr, new_cu_seqlens_ptr, H, stride_src, stride_dst,
                         BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr):
    row = tl.program_id(1)
    dst_start = tl.load(new_cu_seqlens_ptr + row).to(tl.int64)
    length = tl.load(new_cu_seqlens_ptr + row + 1).to(tl.int64) - dst_start
    first = tl.program_id(0) * BLOCK_T
    if first >= length:
        return
    t = first + tl.arange(0, BLOCK_T)
    src_start = tl.load(src_start_ptr + row).to(tl.int64)
    for h0 in range(0, H, BLOCK_H):
        rh = h0 + tl.arange(0, BLOCK_H)
        mask = (t < length)[:, None] & (rh < H)[None, :]
        x = tl.load(src_ptr + (src_start + t)[:, None] * stride_src + rh[None, :], mask=mask)
        tl.store(dst_ptr + (dst_start + t)[:, None] * stride_dst + rh[None, :], x, mask=mask)


def _check_index(name: str, tensor: torch.Tensor, size: int, device: torch.device) -> None:
    if tensor.dim() != 1 or tensor.shape[0] != size or not tensor.is_contiguous() or tensor.device != device:
        raise ValueError(f"{name} must be a contiguous [{size}] tensor on {device}, got shape "
                         f"{tuple(tensor.shape)} on {tensor.device}")
    if tensor.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{name} must be int32 or int64, got {tensor.dtype}")


def _check_mask(name: str, mask: torch.Tensor, size: int, device: torch.device) -> None:
    if mask.dtype != torch.bool or mask.shape != (size,) or mask.device != device:
        raise ValueError(f"{name} must be a [{size}] bool tensor on {device}, got {mask.dtype} "
                         f"{tuple(mask.shape)} on {mask.device}")


def compact_tokens(
    hidden: torch.Tensor,
    cu_seqlens: torch.Tensor,
    row_ids: torch.Tensor,
    keep: torch.Tensor,
    num_rows: int,
    num_tokens: int,
    max_seqlen: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pack the token spans of the rows where ``keep`` is True into a new buffer, order preserved.

    No device-to-host synchronization: the kept batch's sizes come from the caller, who must have them on
    the host already (see the module docstring).

    Args:
        hidden: ``[T, H]`` packed hidden states (any float dtype), rows contiguous.
        cu_seqlens: ``[B + 1]`` int32/int64 row boundaries in ``hidden``.
        row_ids: ``[B]`` int32/int64 positions of the rows in the caller's batch.
        keep: ``[B]`` bool on the device.
        num_rows: ``keep.sum()``; num_tokens: tokens of the kept rows; max_seqlen: the longest kept row.

    Returns:
        ``hidden [num_tokens, H]``, ``cu_seqlens [num_rows + 1]`` (dtype of the input) and
        ``row_ids [num_rows]`` of the kept rows.

    Raises:
        ValueError: shapes, dtypes or devices that do not match, or negative sizes.
    """
    check_matrix("hidden", hidden)
    B = cu_seqlens.shape[0] - 1
    _check_index("cu_seqlens", cu_seqlens, B + 1, hidden.device)
    _check_index("row_ids", row_ids, B, hidden.device)
    _check_mask("keep", keep, B, hidden.device)
    if min(num_rows, num_tokens, max_seqlen) < 0 or num_rows > B or num_tokens > hidden.shape[0]:
        raise ValueError(f"bad kept sizes: {num_rows} rows, {num_tokens} tokens, longest {max_seqlen} "
                         f"(batch has {B} rows, {hidden.shape[0]} tokens)")
    device = hidden.device
    new_hidden = torch.empty(num_tokens, hidden.shape[1], dtype=hidden.dtype, device=device)
    new_cu_seqlens = torch.empty(num_rows + 1, dtype=cu_seqlens.dtype, device=device)
    new_row_ids = torch.empty(num_rows, dtype=row_ids.dtype, device=device)
    src_start = torch.empty(num_rows, dtype=torch.int64, device=device)
    if B == 0:
        new_cu_seqlens.zero_()
        return new_hidden, new_cu_seqlens, new_row_ids
    # under the interpreter, 16-row chunks make small test batches exercise the carried prefix sums
    block = 16 if interpreting() else max(16, min(1024, triton.next_power_of_2(B)))
    _compact_plan_kernel[(1,)](
        keep, cu_seqlens, row_ids, new_cu_seqlens, new_row_ids, src_start, B, BLOCK=block, num_warps=4,
    )
    if num_tokens > 0:
        block_t = 16 if interpreting() else 32
        block_h = min(128, triton.next_power_of_2(hidden.shape[1]))
        _gather_spans_kernel[(triton.cdiv(max_seqlen, block_t), num_rows)](
            hidden, new_hidden, src_start, new_cu_seqlens, hidden.shape[1], hidden.stride(0), new_hidden.stride(0),
            BLOCK_T=block_t, BLOCK_H=block_h, num_warps=4,
        )
    return new_hidden, new_cu_seqlens, new_row_ids

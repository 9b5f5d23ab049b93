"""Varlen self-attention on packed, padding-free tokens with an online softmax (flash-attention style).

The input is the fused QKV projection ``qkv [T, 3 * h * d]`` (columns ``Q heads | K heads | V heads``, as
:mod:`costeff_fast.packing` lays them out) of B rows concatenated without padding; ``cu_seqlens [B + 1]``
marks where each row starts (the varlen interface of flash-attention, Dao et al.). Each program owns one
block of queries of one (row, head) and streams that row's keys and values block by block, keeping a
running maximum and normalizer (online softmax), so no ``[S, S]`` score matrix is ever stored. Rows attend
only to their own tokens; any head count ``h >= 1`` works, so slenderized layers with 1, 2 or 3 heads
need no padding heads.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .utils import check_matrix, interpreting, reduce_max, reduce_sum

#: head sizes the kernel accepts (powers of two; ``tl.dot`` needs at least 16)
HEAD_SIZES = (16, 32, 64, 128)


#: CUDA's limit on a launch grid's y (and z) dimension; x takes up to 2^31 - 1
MAX_GRID_Y = 65_535


def attention_config(max_seqlen: int, head_size: int) -> tuple[int, int, int, int]:
    """``(BLOCK_M, BLOCK_N, num_warps, num_stages)`` of the attention launch for rows of at most ``max_seqlen``
    tokens and heads of ``head_size``.

    Query and key tiles no longer than the rows need (COST-EFF's rows are mostly 20-30 tokens: a 64-row tile
    would be half masked), and warps matched to the tile (a warp's tensor-core MMA covers 16 query rows). Every
    choice compiles for sm_80 and sm_90 without register spills: ``bench/gpu_compile.py`` records registers, stack
    and shared memory per configuration in ``bench/results/gpu-compile.json``. Under the interpreter: 16 x 16
    tiles, so rows longer than 16 tokens exercise the online-softmax rescaling.
    """
    if interpreting():
        return 16, 16, 4, 1
    if max_seqlen <= 16:
        return 16, 16, (1 if head_size <= 64 else 2), 1
    if max_seqlen <= 32:  # one key block: nothing to pipeline
        return 32, 32, (2 if head_size <= 32 else 4), 1
    if head_size <= 32:
        return 64, 64, 4, 2
    return 64, 32, (4 if head_size <= 64 else 8), 2


def attention_grid(num_rows: int, num_heads: int, max_seqlen: int, block_m: int) -> tuple[int, int]:
    """The launch grid: ``(num_rows * num_heads, query blocks per row)``.

    (row, head) pairs go on the x axis, which takes 2^31 - 1 programs (with 12 heads, more than 5,461 rows in one
    call would pass the y axis's 65,535); the query blocks, at most ``ceil(max_seqlen / block_m)``, on y.

    Raises:
        ValueError: more query blocks than the y axis takes (rows of more than 65,535 x ``block_m`` tokens).
    """
    blocks = triton.cdiv(max_seqlen, block_m)
    if blocks > MAX_GRID_Y:
        raise ValueError(f"rows of {max_seqlen} tokens need {blocks} query blocks, more than CUDA's grid takes "
                         f"({MAX_GRID_Y}); split the rows")
    return num_rows * num_heads, blocks


@triton.jit
def _attention_block(tokens, stride_qkv, length, head, first_query, width, scale_log2,
                     HEAD_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """fp32 context ``[BLOCK_M, HEAD_SIZE]`` of queries ``first_query + arange(BLOCK_M)`` of one row and head, and
    those query positions; ``tokens`` points at the row's first ``qkv`` row, the row has ``length`` tokens."""
    rm = first_query + tl.arange(0, BLOCK_M)
    rd = tl.arange(0, HEAD_SIZE)
    rn = tl.arange(0, BLOCK_N)
    q = tl.load(tokens + rm[:, None] * stride_qkv + head * HEAD_SIZE + rd[None, :],
                mask=(rm < length)[:, None], other=0.0)
    k_ptrs = tokens + rn[None, :] * stride_qkv + width + head * HEAD_SIZE + rd[:, None]  # [d, BLOCK_N]
    v_ptrs = tokens + rn[:, None] * stride_qkv + 2 * width + head * HEAD_SIZE + rd[None, :]  # [BLOCK_N, d]
    running_max = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    normalizer = tl.full([BLOCK_M], 0.0, tl.float32)
    acc = tl.full([BLOCK_M, HEAD_SIZE], 0.0, tl.float32)
    for n0 in range(0, length, BLOCK_N):
        key_ok = (n0 + rn) < length
        k = tl.load(k_ptrs + n0 * stride_qkv, mask=key_ok[None, :], other=0.0)
        scores = tl.dot(q, k, input_precision="ieee") * scale_log2  # log2 units: softmax via exp2
        scores = tl.where(key_ok[None, :], scores, float("-inf"))
        new_max = tl.maximum(running_max, reduce_max(scores, axis=1))  # finite: key n0 is always valid
        correction = tl.exp2(running_max - new_max)
        p = tl.exp2(scores - new_max[:, None])
        normalizer = normalizer * correction + reduce_sum(p, 1)
        v = tl.load(v_ptrs + n0 * stride_qkv, mask=key_ok[:, None], other=0.0)
        acc = acc * correction[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        running_max = new_max
    return acc / normalizer[:, None], rm


@triton.jit
def _varlen_attention_kernel(qkv_ptr, cu_seqlens_ptr, out_ptr, stride_qkv, stride_out, num_heads, scale_log2,
                             HEAD_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # grid axis 0: (row, head), up to 2^31 - 1 programs; axis 1 (at most 65,535): query blocks of the row
    row = tl.program_id(0) // num_heads
    head = tl.program_id(0) % num_heads
    start = tl.load(cu_seqlens_ptr + row).to(tl.int64)
    length = (tl.load(cu_seqlens_ptr + row + 1) - start).to(tl.int32)
    first_query = tl.program_id(1) * BLOCK_M
    if first_query >= length:
        return
    acc, rm = _attention_block(qkv_ptr + start * stride_qkv, stride_qkv, length, head, first_query,
                               num_heads * HEAD_SIZE, scale_log2, HEAD_SIZE, BLOCK_M, BLOCK_N)
    rd = tl.arange(0, HEAD_SIZE)
    out = out_ptr + (start + rm.to(tl.int64))[:, None] * stride_out + head * HEAD_SIZE + rd[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=(rm < length)[:, None])


def varlen_attention(
    qkv: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    num_heads: int,
    head_size: int,
    softmax_scale: float | None = None,
) -> torch.Tensor:
    """Bidirectional multi-head attention of every packed row over its own tokens.

    ``softmax(Q K^T * softmax_scale) V`` per row and head, softmax statistics in fp32.

    Args:
        qkv: ``[T, 3 * num_heads * head_size]`` fp32/fp16/bf16, columns ``Q | K | V`` (each head-major),
            rows contiguous.
        cu_seqlens: ``[B + 1]`` int32 or int64 on ``qkv``'s device, ``cu_seqlens[0] = 0``,
            ``cu_seqlens[B] = T``, non-decreasing.
        max_seqlen: the longest row (tokens), known on the host; sizes the launch grid.
        num_heads: ``h >= 1``.
        head_size: ``d``, one of :data:`HEAD_SIZES`.
        softmax_scale: default ``1 / sqrt(head_size)``.

    Returns:
        context ``[T, num_heads * head_size]`` in ``qkv``'s dtype, heads side by side (the input layout of
        the attention output projection ``W_O``).

    Raises:
        ValueError: an unsupported head size, ``num_heads < 1``, a ``qkv`` width other than ``3 h d``, or a
            ``cu_seqlens`` that is not a 1-D int32/int64 tensor.

    Source: flash-attention's online softmax (Dao et al., 2022) and varlen interface.
    """
    if head_size not in HEAD_SIZES:
        raise ValueError(f"attention head size must be one of {HEAD_SIZES} for the triton kernels, got {head_size}")
    if num_heads < 1:
        raise ValueError(f"num_heads must be >= 1, got {num_heads}")
    width = num_heads * head_size
    check_matrix("qkv", qkv, cols=3 * width)
    if (cu_seqlens.dim() != 1 or cu_seqlens.dtype not in (torch.int32, torch.int64) or not cu_seqlens.is_contiguous()
            or cu_seqlens.device != qkv.device):
        raise ValueError(f"cu_seqlens must be a contiguous 1-D int32/int64 tensor on {qkv.device}, got "
                         f"{cu_seqlens.dtype} of shape {tuple(cu_seqlens.shape)} on {cu_seqlens.device}")
    out = torch.empty(qkv.shape[0], width, dtype=qkv.dtype, device=qkv.device)
    num_rows = cu_seqlens.shape[0] - 1
    if num_rows <= 0 or max_seqlen <= 0:
        return out
    block_m, block_n, warps, stages = attention_config(max_seqlen, head_size)
    scale = 1.0 / math.sqrt(head_size) if softmax_scale is None else float(softmax_scale)
    grid = attention_grid(num_rows, num_heads, max_seqlen, block_m)
    _varlen_attention_kernel[grid](
        qkv, cu_seqlens, out, qkv.stride(0), out.stride(0), num_heads, math.log2(math.e) * scale,
        HEAD_SIZE=head_size, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps, num_stages=stages,
    )
    return out

"""costeff_fast.kernels.attention against costeff_fast.reference (CPU: Triton interpreter, fp32/fp16)."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():  # the kernels pick the interpreter when they are defined: set it first
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

pytest.importorskip("triton")

from costeff_fast import reference  # noqa: E402
import costeff_fast.kernels.attention as attention_module  # noqa: E402
from costeff_fast.kernels.attention import (  # noqa: E402
    HEAD_SIZES, MAX_GRID_Y, attention_config, attention_grid, varlen_attention,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
GPU_ONLY = pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 tl.dot is wrong in the interpreter")
DTYPES = [torch.float32, torch.float16, pytest.param(torch.bfloat16, marks=GPU_ONLY)]
ATOL = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 4e-2}  # |values| up to ~8


def _packed(lengths: list[int], num_heads: int, head_size: int, dtype, index_dtype=torch.int64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    cu_seqlens = torch.tensor([0] + lengths, dtype=index_dtype).cumsum(0).to(index_dtype)
    qkv = torch.randn(sum(lengths), 3 * num_heads * head_size, generator=generator) * 2.0
    return qkv.to(device=DEVICE, dtype=dtype), cu_seqlens.to(DEVICE)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_heads,head_size", [(1, 16), (3, 16), (2, 32), (1, 64)])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_matches_reference(dtype, num_heads, head_size, index_dtype):
    lengths = [1, 7, 33, 3, 1, 16, 17]  # one-token rows, rows spanning 1, 2 and 3 blocks of 16
    qkv, cu_seqlens = _packed(lengths, num_heads, head_size, dtype, index_dtype)
    out = varlen_attention(qkv, cu_seqlens, max(lengths), num_heads, head_size)
    expected = reference.varlen_attention(qkv, cu_seqlens, max(lengths), num_heads, head_size)
    assert out.dtype == dtype and out.shape == (sum(lengths), num_heads * head_size)
    err = (out.float() - expected).abs().max().item()
    print(f"max abs err attention h={num_heads} d={head_size} {dtype} cu_seqlens {index_dtype}: {err:.2e}")
    assert err <= ATOL[dtype]


def test_softmax_scale_matches_reference():
    lengths = [5, 20, 2]
    qkv, cu_seqlens = _packed(lengths, 2, 16, torch.float32)
    default = varlen_attention(qkv, cu_seqlens, max(lengths), 2, 16)
    out = varlen_attention(qkv, cu_seqlens, max(lengths), 2, 16, softmax_scale=0.05)
    expected = reference.varlen_attention(qkv, cu_seqlens, max(lengths), 2, 16, softmax_scale=0.05)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    assert (out - default).abs().max() > 1e-2, "a different scale must change the result"


def test_one_token_row_returns_its_value_vector():
    qkv, cu_seqlens = _packed([1], 2, 16, torch.float32)
    out = varlen_attention(qkv, cu_seqlens, 1, 2, 16)
    torch.testing.assert_close(out, qkv[:, 64:], atol=1e-6, rtol=0)


def test_rows_do_not_attend_to_each_other():
    qkv, cu_seqlens = _packed([5, 9], 1, 32, torch.float32)
    alone = varlen_attention(qkv[5:].contiguous(), torch.tensor([0, 9], device=DEVICE), 9, 1, 32)
    changed = qkv.clone()
    changed[:5] += 10.0  # the first row's tokens must not affect the second row
    out = varlen_attention(changed, cu_seqlens, 9, 1, 32)
    torch.testing.assert_close(out[5:], alone, atol=1e-5, rtol=0)


def test_bad_inputs_raise():
    qkv, cu_seqlens = _packed([3, 4], 2, 16, torch.float32)
    with pytest.raises(ValueError, match="head size must be one of"):
        varlen_attention(qkv, cu_seqlens, 4, 4, 8)
    with pytest.raises(ValueError, match="qkv must have shape"):
        varlen_attention(qkv, cu_seqlens, 4, 1, 16)
    with pytest.raises(ValueError, match="cu_seqlens"):
        varlen_attention(qkv, cu_seqlens.float(), 4, 2, 16)


def test_the_grid_keeps_rows_and_heads_on_the_axis_without_the_65535_limit():
    """12 heads and 100,000 rows: 1.2 million (row, head) programs on x (up to 2^31 - 1); y holds the query blocks.
    Before, rows x heads went on y and passed CUDA's 65,535 from 5,462 rows of 12 heads on."""
    assert attention_grid(100_000, 12, 128, 64) == (1_200_000, 2)
    assert attention_grid(3, 2, 1, 16) == (6, 1)
    with pytest.raises(ValueError, match="split the rows"):
        attention_grid(1, 1, 64 * (MAX_GRID_Y + 1), 64)


@pytest.mark.parametrize("head_size", HEAD_SIZES)
@pytest.mark.parametrize("max_seqlen", [1, 16, 17, 32, 33, 128, 512])
def test_gpu_tiles_fit_the_rows_and_the_warps_fit_the_tiles(monkeypatch, head_size, max_seqlen):
    """On a GPU (not the interpreter): rows of up to 32 tokens take one query tile no larger than 32 (a 64-row
    tile on 20-30 token rows is half masked), and no warp idles: a warp's MMA covers 16 query rows, so
    num_warps * 16 <= BLOCK_M, except for heads of 64 and 128, whose accumulators spill registers with that few
    warps (bench/gpu_compile.py's report): there twice as many at most."""
    monkeypatch.setattr(attention_module, "interpreting", lambda: False)
    block_m, block_n, warps, stages = attention_config(max_seqlen, head_size)
    if max_seqlen <= 32:
        assert max_seqlen <= block_m <= 32 and block_n == block_m and stages == 1
    else:
        assert block_m == 64
    assert warps * 16 <= (block_m if head_size <= 32 else 2 * block_m), (block_m, warps)


@GPU_ONLY
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("head_size", HEAD_SIZES)
@pytest.mark.parametrize("longest", [16, 32, 100])
def test_every_gpu_tile_matches_reference(dtype, head_size, longest):
    """The GPU's own launch configurations (attention_config: 16- and 32-row tiles for short rows, 64-row tiles with
    more warps for heads of 64 and 128), which the interpreter never takes, on rows up to ``longest`` tokens."""
    lengths = [1, longest, longest // 2 + 1, 3, longest - 1, 7]
    qkv, cu_seqlens = _packed(lengths, 2, head_size, dtype)
    out = varlen_attention(qkv, cu_seqlens, longest, 2, head_size)
    expected = reference.varlen_attention(qkv, cu_seqlens, longest, 2, head_size)
    assert (out.float() - expected).abs().max().item() <= ATOL[dtype]


@GPU_ONLY
def test_a_launch_of_more_than_65535_row_head_programs():
    """6,000 rows of 12 heads: 72,000 (row, head) programs on the grid's x axis (the y axis takes 65,535)."""
    lengths = [(i % 7) + 1 for i in range(6000)]
    qkv, cu_seqlens = _packed(lengths, 12, 32, torch.float16)
    assert attention_grid(6000, 12, 7, attention_config(7, 32)[0])[0] > MAX_GRID_Y
    out = varlen_attention(qkv, cu_seqlens, 7, 12, 32)
    expected = reference.varlen_attention(qkv, cu_seqlens, 7, 12, 32)
    assert (out.float() - expected).abs().max().item() <= ATOL[torch.float16]

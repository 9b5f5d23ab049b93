"""costeff_fast.kernels.compaction against costeff_fast.reference (CPU: Triton interpreter)."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():  # the kernels pick the interpreter when they are defined: set it first
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

pytest.importorskip("triton")

from costeff_fast import reference  # noqa: E402
from costeff_fast.kernels.compaction import compact_tokens  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _batch(lengths, keep, index_dtype=torch.int64, dtype=torch.float32, width=40, seed=0):
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    cu_seqlens = torch.zeros(len(lengths) + 1, dtype=index_dtype)
    cu_seqlens[1:] = lengths.cumsum(0)
    hidden = torch.randn(int(lengths.sum()), width, generator=generator).to(dtype)
    row_ids = torch.randperm(len(lengths), generator=generator).to(index_dtype)
    keep = torch.tensor(keep, dtype=torch.bool)
    kept = lengths[keep]
    sizes = dict(num_rows=len(kept), num_tokens=int(kept.sum()), max_seqlen=int(kept.max()) if len(kept) else 0)
    return [t.to(DEVICE) for t in (hidden, cu_seqlens, row_ids, keep)], sizes


LENGTHS_20 = [1, 5, 17, 2, 1, 9, 3, 3, 33, 1, 4, 6, 1, 12, 2, 7, 1, 1, 20, 5]  # 20 rows: two 16-row chunks


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(
    "lengths,keep",
    [
        ([1, 7, 20, 3, 1, 5], [True, False, True, False, True, True]),
        ([4, 1, 2], [True, True, True]),
        ([4, 1, 2], [False, False, False]),
        ([1], [True]),
        (LENGTHS_20, [i % 3 != 1 for i in range(20)]),
    ],
)
def test_compact_tokens_matches_reference(index_dtype, dtype, lengths, keep):
    (hidden, cu_seqlens, row_ids, keep), sizes = _batch(lengths, keep, index_dtype, dtype)
    out = compact_tokens(hidden, cu_seqlens, row_ids, keep, **sizes)
    expected = reference.compact_tokens(hidden, cu_seqlens, row_ids, keep)
    for got, want in zip(out, expected):
        assert got.dtype == want.dtype
        assert torch.equal(got, want)  # a copy: exact


def test_bad_inputs_raise():
    (hidden, cu_seqlens, row_ids, keep), sizes = _batch([3, 4], [True, False])
    with pytest.raises(ValueError, match="keep must be a \\[2\\] bool"):
        compact_tokens(hidden, cu_seqlens, row_ids, keep.int(), **sizes)
    with pytest.raises(ValueError, match="bad kept sizes"):
        compact_tokens(hidden, cu_seqlens, row_ids, keep, num_rows=3, num_tokens=3, max_seqlen=3)

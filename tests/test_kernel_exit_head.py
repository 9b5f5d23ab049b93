"""costeff_fast.kernels.exit_head against costeff_fast.reference.exit_head (CPU: Triton interpreter, fp32/fp16)."""

from __future__ import annotations

import math
import os

import torch

if not torch.cuda.is_available():  # the kernels pick the interpreter when they are defined: set it first
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

pytest.importorskip("triton")

from costeff_fast import reference  # noqa: E402
from costeff_fast.kernels.exit_head import exit_head  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
GPU_ONLY = pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 tl.dot is wrong in the interpreter")
DTYPES = [torch.float32, torch.float16, pytest.param(torch.bfloat16, marks=GPU_ONLY)]
ATOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2}
TIE = 1e-5


def _inputs(T, H, C, B, pooler, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=generator) * scale).to(device=DEVICE, dtype=dtype)

    hidden = randn(T, H)
    cls_index = torch.sort(torch.randperm(T, generator=generator)[:B]).values.to(DEVICE)
    weights = dict(classifier_weight=randn(H, C, scale=2 * H**-0.5), classifier_bias=randn(C))
    if pooler:
        weights.update(pooler_weight=randn(H, H, scale=2 * H**-0.5), pooler_bias=randn(H))
    return hidden, cls_index, weights


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pooler", [False, True])
@pytest.mark.parametrize("T,H,C,B", [(1, 16, 2, 1), (90, 48, 3, 70), (40, 160, 20, 9)])
def test_matches_reference(dtype, pooler, T, H, C, B):
    hidden, cls_index, weights = _inputs(T, H, C, B, pooler, dtype)
    _, ref_entropy, _ = reference.exit_head(hidden, cls_index, **weights)
    tau = float(ref_entropy.median())  # about half the rows exit
    logits, entropy, exits = exit_head(hidden, cls_index, **weights, entropy_threshold=tau)
    ref_logits, ref_entropy, ref_exits = reference.exit_head(hidden, cls_index, **weights, entropy_threshold=tau)
    assert logits.dtype == entropy.dtype == torch.float32 and exits.dtype == torch.bool
    logit_err = (logits - ref_logits).abs().max().item()
    entropy_err = (entropy - ref_entropy).abs().max().item()
    print(f"max abs err exit_head pooler={pooler} {dtype} H={H} C={C}: "
          f"logits {logit_err:.2e} entropy {entropy_err:.2e}")
    assert logit_err <= ATOL[dtype] and entropy_err <= ATOL[dtype]
    clear = (ref_entropy - tau).abs() > (TIE if dtype == torch.float32 else 3 * ATOL[dtype])
    assert torch.equal(exits[clear], ref_exits[clear])
    assert entropy.min() >= -1e-6 and entropy.max() <= math.log(C) + 1e-5


def test_no_threshold_means_no_exit_and_int32_index():
    hidden, cls_index, weights = _inputs(30, 32, 4, 6, False, torch.float32)
    logits, entropy, exits = exit_head(hidden, cls_index.to(torch.int32), **weights)
    ref_logits, ref_entropy, _ = reference.exit_head(hidden, cls_index, **weights)
    assert not exits.any()
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(entropy, ref_entropy, atol=1e-5, rtol=0)


def test_confident_logits_have_zero_entropy_and_exit():
    hidden = torch.full((2, 16), 3.0, device=DEVICE)  # tanh(3) ~ 0.995 on every feature
    weight = torch.zeros(16, 3, device=DEVICE)
    weight[:, 1] = 10.0
    _, entropy, exits = exit_head(hidden, torch.tensor([0, 1], device=DEVICE), weight, torch.zeros(3, device=DEVICE),
                                  entropy_threshold=1e-3)
    assert entropy.abs().max() < 1e-6 and exits.all()


def test_bad_inputs_raise():
    hidden, cls_index, weights = _inputs(10, 16, 2, 3, True, torch.float32)
    with pytest.raises(ValueError, match="pooler_weight and pooler_bias"):
        exit_head(hidden, cls_index, weights["classifier_weight"], weights["classifier_bias"], weights["pooler_weight"])
    with pytest.raises(ValueError, match="cls_index"):
        exit_head(hidden, cls_index.float(), weights["classifier_weight"], weights["classifier_bias"])
    with pytest.raises(ValueError, match="classifier_weight must have shape"):
        exit_head(hidden, cls_index, weights["classifier_weight"][:8], weights["classifier_bias"])

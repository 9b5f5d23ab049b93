"""costeff_fast.kernels.ffn against costeff_fast.reference (CPU: Triton interpreter, fp32/fp16)."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():  # the kernels pick the interpreter when they are defined: set it first
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

pytest.importorskip("triton")

from costeff_fast import reference  # noqa: E402
from costeff_fast.kernels.ffn import linear, linear_residual_layernorm  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
GPU_ONLY = pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 tl.dot is wrong in the interpreter")
DTYPES = [torch.float32, torch.float16, pytest.param(torch.bfloat16, marks=GPU_ONLY)]
ATOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 6e-2}


def _randn(*shape, dtype, scale=1.0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=generator) * scale).to(device=DEVICE, dtype=dtype)


def _linear_inputs(M, K, N, dtype):
    """x [M, K], weight [K, N] scaled by 1/sqrt(K), bias [N]."""
    return _randn(M, K, dtype=dtype), _randn(K, N, dtype=dtype, scale=K**-0.5, seed=1), _randn(N, dtype=dtype, seed=2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gelu", [False, True])
@pytest.mark.parametrize("M,K,N", [(1, 16, 32), (37, 40, 50), (70, 33, 150)])
def test_linear_matches_reference(dtype, gelu, M, K, N):
    x, w, b = _linear_inputs(M, K, N, dtype)
    out = linear(x, w, b, gelu=gelu)
    expected = reference.linear(x, w, b, gelu=gelu)
    assert out.dtype == dtype and out.shape == (M, N)
    err = (out.float() - expected).abs().max().item()
    print(f"max abs err ffn.linear gelu={gelu} {dtype} {M}x{K}x{N}: {err:.2e}")
    assert err <= ATOL[dtype]


def test_linear_gelu_is_exact_erf_gelu():
    x = torch.linspace(-6, 6, 64, device=DEVICE)[:, None]
    out = linear(x, torch.ones(1, 16, device=DEVICE), torch.zeros(16, device=DEVICE), gelu=True)
    tanh_gelu = torch.nn.functional.gelu(x, approximate="tanh").expand(-1, 16)
    exact = torch.nn.functional.gelu(x).expand(-1, 16)
    assert (out - exact).abs().max() < 1e-6 < (out - tanh_gelu).abs().max()


def test_linear_reads_row_strided_input():
    base = _randn(20, 64, dtype=torch.float32)
    x = base[:, 5:45]  # rows 64 apart
    w, b = _randn(40, 24, dtype=torch.float32, seed=1), _randn(24, dtype=torch.float32, seed=2)
    torch.testing.assert_close(linear(x, w, b), reference.linear(x, w, b), atol=1e-4, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,K,N", [(1, 16, 32), (45, 37, 48), (70, 50, 24)])
def test_linear_residual_layernorm_matches_reference(dtype, M, K, N):
    x, w, b = _linear_inputs(M, K, N, dtype)
    residual = _randn(M, N, dtype=dtype, scale=3.0, seed=3)
    gamma, beta = _randn(N, dtype=dtype, seed=4), _randn(N, dtype=dtype, seed=5)
    out = linear_residual_layernorm(x, w, b, residual, gamma, beta, 1e-12)
    expected = reference.linear_residual_layernorm(x, w, b, residual, gamma, beta, 1e-12)
    err = (out.float() - expected).abs().max().item()
    print(f"max abs err ffn.linear_residual_layernorm {dtype} {M}x{K}x{N}: {err:.2e}")
    assert err <= ATOL[dtype]


def test_linear_residual_layernorm_normalizes_each_row():
    x, w, b = _linear_inputs(9, 16, 24, torch.float32)
    ones, zeros = torch.ones(24, device=DEVICE), torch.zeros(24, device=DEVICE)
    out = linear_residual_layernorm(x, w, b, _randn(9, 24, dtype=torch.float32, seed=2), ones, zeros, 1e-12)
    torch.testing.assert_close(out.mean(dim=1), torch.zeros(9, device=DEVICE), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.var(dim=1, unbiased=False), torch.ones(9, device=DEVICE), atol=1e-4, rtol=0)


def test_bad_inputs_raise():
    x, w, b = _linear_inputs(4, 8, 16, torch.float32)
    with pytest.raises(ValueError, match="weight must have shape"):
        linear(x, w[:7], b)
    with pytest.raises(ValueError, match="dtype"):
        linear(x, w.half(), b)
    with pytest.raises(ValueError, match="bias"):
        linear(x, w, b[:3])
    wide, vec = _randn(8, 1040, dtype=torch.float32), _randn(1040, dtype=torch.float32)
    with pytest.raises(ValueError, match="hidden size must be <= 1024"):
        linear_residual_layernorm(x, wide, vec, _randn(4, 1040, dtype=torch.float32), vec, vec, 1e-12)

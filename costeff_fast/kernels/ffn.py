"""Fused linear layers of an encoder layer: GEMM + bias (+ exact GELU), and GEMM + bias + residual + LayerNorm.

Every linear layer of a post-LN BERT layer is one of these two kernels (docs/design.md, Backends):

* :func:`linear` -- ``y = x @ W + b``, optionally followed by exact (erf) GELU: the fused QKV projection
  and the first FFN matrix ``W_1``.
* :func:`linear_residual_layernorm` -- ``y = LayerNorm(x @ W + b + residual)``: the attention output
  projection ``W_O`` and the second FFN matrix ``W_2``. The LayerNorm runs in the GEMM's epilogue, so one
  tile spans all ``N = hidden_size`` columns (``BLOCK_N = next_power_of_2(N)``, ``N <= 1024``).

Weights are input-major ``[K, N]`` (:mod:`costeff_fast.packing`); accumulation is fp32 whatever the storage
dtype. Each launcher has a plain PyTorch reference of the same name in :mod:`costeff_fast.reference`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .utils import check_matrix, check_vector, interpreting, reduce_sum

#: widest row the LayerNorm epilogue keeps in registers (BERT-large's hidden size)
MAX_LAYERNORM_WIDTH = 1024


@triton.jit
def _matmul_tile(x_ptr, w_ptr, rm, rn, M, N, K, stride_xm, stride_wk,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """fp32 ``[BLOCK_M, BLOCK_N]`` tile of ``x[rm, :] @ w[:, rn]`` (rows/columns out of range give 0)."""
    rk = tl.arange(0, BLOCK_K)
    row_offsets = rm.to(tl.int64)[:, None] * stride_xm
    acc = tl.full([BLOCK_M, BLOCK_N], 0.0, tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + rk
        a = tl.load(x_ptr + row_offsets + k[None, :], mask=(rm < M)[:, None] & (k < K)[None, :], other=0.0)
        b = tl.load(w_ptr + k.to(tl.int64)[:, None] * stride_wk + rn[None, :],
                    mask=(k < K)[:, None] & (rn < N)[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision="ieee")
    return acc


@triton.jit
def _linear_kernel(x_ptr, w_ptr, b_ptr, out_ptr, M, N, K, stride_xm, stride_wk, stride_om,
                   GELU: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = _bias_gelu(_matmul_tile(x_ptr, w_ptr, rm, rn, M, N, K, stride_xm, stride_wk, BLOCK_M, BLOCK_N, BLOCK_K),
                     b_ptr, rn, N, GELU)
    mask = (rm < M)[:, None] & (rn < N)[None, :]
    tl.store(out_ptr + rm.to(tl.int64)[:, None] * stride_om + rn[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bias_gelu(acc, b_ptr, rn, N, GELU: tl.constexpr):
    """``acc + b[rn]`` (fp32), then exact GELU, as BERT's hidden_act="gelu": ``x * Phi(x)``, if ``GELU``."""
    acc += tl.load(b_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    if GELU:
        acc = 0.5 * acc * (1.0 + tl.math.erf(acc * 0.7071067811865476))
    return acc


@triton.jit
def _bias_residual_layernorm(acc, rm, rn, M, N, b_ptr, res_ptr, stride_rm, gamma_ptr, beta_ptr, eps):
    """``LayerNorm(acc + b + residual[rm])`` over the ``N`` real columns of an fp32 ``[BLOCK_M, BLOCK_N]`` tile that
    spans a whole row (``rn = arange(BLOCK_N)``); padded columns come out 0."""
    col_ok = rn < N
    mask = (rm < M)[:, None] & col_ok[None, :]
    acc += tl.load(b_ptr + rn, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    acc += tl.load(res_ptr + rm.to(tl.int64)[:, None] * stride_rm + rn[None, :], mask=mask, other=0.0).to(tl.float32)
    mean = reduce_sum(acc, 1) / N  # padded columns hold 0
    centered = tl.where(col_ok[None, :], acc - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(reduce_sum(centered * centered, 1) / N + eps)
    gamma = tl.load(gamma_ptr + rn, mask=col_ok, other=0.0).to(tl.float32)
    beta = tl.load(beta_ptr + rn, mask=col_ok, other=0.0).to(tl.float32)
    return centered * rstd[:, None] * gamma[None, :] + beta[None, :]


@triton.jit
def _linear_residual_layernorm_kernel(x_ptr, w_ptr, b_ptr, res_ptr, gamma_ptr, beta_ptr, out_ptr,
                                      M, N, K, stride_xm, stride_wk, stride_rm, stride_om, eps,
                                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.arange(0, BLOCK_N)
    acc = _matmul_tile(x_ptr, w_ptr, rm, rn, M, N, K, stride_xm, stride_wk, BLOCK_M, BLOCK_N, BLOCK_K)
    y = _bias_residual_layernorm(acc, rm, rn, M, N, b_ptr, res_ptr, stride_rm, gamma_ptr, beta_ptr, eps)
    mask = (rm < M)[:, None] & (rn < N)[None, :]
    tl.store(out_ptr + rm.to(tl.int64)[:, None] * stride_om + rn[None, :], y.to(out_ptr.dtype.element_ty), mask=mask)


def _check_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> tuple[int, int, int]:
    check_matrix("x", x)
    M, K = x.shape
    check_matrix("weight", weight, rows=K)
    N = weight.shape[1]
    check_vector("bias", bias, N)
    if weight.dtype != x.dtype or bias.dtype != x.dtype:
        raise ValueError(f"weight and bias must have x's dtype {x.dtype}, got {weight.dtype} and {bias.dtype}")
    return M, N, K


def _block_k(K: int, block_mn: int) -> int:
    """Inner tile: wide under the interpreter (fewer Python steps), narrower when the output tile is wide."""
    cap = 128 if interpreting() else (32 if block_mn <= 512 else 16)
    return max(16, min(cap, triton.next_power_of_2(K)))


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, gelu: bool = False) -> torch.Tensor:
    """``x @ weight + bias``, then exact GELU (``0.5 x (1 + erf(x / sqrt 2))``) if ``gelu``.

    Args:
        x: ``[M, K]`` fp32/fp16/bf16 activations (e.g. packed tokens ``[T, H]``), rows contiguous.
        weight: ``[K, N]`` input-major, same dtype, row-major.
        bias: ``[N]``.
        gelu: apply GELU to the fp32 result before it is stored.

    Returns:
        ``[M, N]`` in ``x``'s dtype (fp32 accumulation).

    Raises:
        ValueError: mismatched shapes or dtypes, a non-float dtype, non-contiguous rows.
    """
    M, N, K = _check_linear(x, weight, bias)
    out = torch.empty(M, N, dtype=x.dtype, device=x.device)
    if M == 0:
        return out
    if interpreting():
        block_m, block_n, warps, stages = max(16, min(64, triton.next_power_of_2(M))), 128, 4, 1
    else:  # spill-free for sm_80 and sm_90 (ptxas register report of the compiled kernel)
        block_m, block_n, warps, stages = (128, 128, 8, 3) if M >= 8192 else (64, 128, 4, 3)
    block_n = max(16, min(block_n, triton.next_power_of_2(N)))
    grid = (triton.cdiv(M, block_m), triton.cdiv(N, block_n))
    _linear_kernel[grid](
        x, weight, bias, out, M, N, K, x.stride(0), weight.stride(0), out.stride(0),
        GELU=gelu, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=_block_k(K, block_n),
        num_warps=warps, num_stages=stages,
    )
    return out


def linear_residual_layernorm(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    residual: torch.Tensor,
    norm_weight: torch.Tensor,
    norm_bias: torch.Tensor,
    eps: float,
) -> torch.Tensor:
    """``LayerNorm(x @ weight + bias + residual)`` over the last dimension, in one kernel.

    The post-LN sub-layer output of BERT (``BertSelfOutput`` / ``BertOutput``): the LayerNorm statistics
    are computed in fp32 from the fp32 accumulator, so the pre-norm sum is never rounded to storage.

    Args:
        x: ``[M, K]`` sub-layer input (attention context ``[T, h*d]`` or GELU output ``[T, F]``).
        weight: ``[K, N]`` input-major, same dtype as ``x``; ``N`` is the hidden size, at most 1024.
        bias: ``[N]``.
        residual: ``[M, N]`` the sub-layer's input hidden states.
        norm_weight, norm_bias: ``[N]`` LayerNorm gain and shift.
        eps: LayerNorm epsilon (``config.layer_norm_eps``).

    Returns:
        ``[M, N]`` in ``x``'s dtype.

    Raises:
        ValueError: mismatched shapes or dtypes, or ``N > 1024`` (a row must fit one tile).
    """
    M, N, K = _check_linear(x, weight, bias)
    check_matrix("residual", residual, rows=M, cols=N)
    check_vector("norm_weight", norm_weight, N)
    check_vector("norm_bias", norm_bias, N)
    if N > MAX_LAYERNORM_WIDTH:
        raise ValueError(f"the fused LayerNorm keeps a row in one tile: hidden size must be <= "
                         f"{MAX_LAYERNORM_WIDTH}, got {N}")
    out = torch.empty(M, N, dtype=x.dtype, device=x.device)
    if M == 0:
        return out
    block_n = max(16, triton.next_power_of_2(N))
    if interpreting():
        block_m, warps, stages = max(16, min(64, triton.next_power_of_2(M))), 4, 1
    else:  # a row's whole width in one fp32 tile: 32 rows up to 512 columns, 16 at 1024 (no register spills on
        # sm_80/sm_90 at either: bench/results/gpu-compile.json)
        block_m, warps, stages = (32 if block_n <= 512 else 16), (4 if block_n <= 256 else 8), 2
    _linear_residual_layernorm_kernel[(triton.cdiv(M, block_m),)](
        x, weight, bias, residual, norm_weight, norm_bias, out, M, N, K,
        x.stride(0), weight.stride(0), residual.stride(0), out.stride(0), float(eps),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=_block_k(K, block_n), num_warps=warps, num_stages=stages,
    )
    return out

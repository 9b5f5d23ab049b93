"""A whole narrow encoder layer and its exit head in one launch: one program per row (issue 29 item 2).

COST-EFF's slenderized layers are narrow (1-4 heads, FFN of a few hundred) and its rows short (20-30 tokens), so
the per-op path's five layer launches plus the exit head cost more in launch and dispatch time than in work. Here
one program owns one packed row and runs, in order, with a barrier between steps (each step reads what the
previous one wrote, through a scratch buffer in global memory that stays in L2 at these sizes):

1. ``qkv = x @ W_qkv + b`` (token tiles of ``BLOCK_T`` rows, column blocks of ``BLOCK_N``);
2. attention of the row's tokens per head, online softmax (the same block function as
   :mod:`~costeff_fast.kernels.attention`);
3. ``mid = LayerNorm(context @ W_O + b_O + x)``;
4. ``inter = GELU(mid @ W_1 + b_1)``;
5. ``out = LayerNorm(inter @ W_2 + b_2 + mid)``, summing the row's stored output tokens (or taking its [CLS]) for
   the exit's features;
6. the exit head without pooler, ``logits = tanh(features) @ W_c + b_c``, and its softmax entropy in nats.

Intermediates are rounded to the storage dtype where the per-op kernels store them, so the fused layer computes
what the per-op path computes. Rows are independent; a batch of B rows is B programs, so a batch of fewer rows
than the GPU has SMs leaves SMs idle (the rule does not look at the batch size: the first GPU run decides whether
it should). :func:`fused_layer_supported` is the one rule that picks this kernel over the per-op ones. Reference: :func:`costeff_fast.reference.encoder_layer_exit`.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .attention import _attention_block
from .exit_head import _tanh
from .ffn import _bias_gelu, _bias_residual_layernorm, _matmul_tile
from .utils import check_matrix, interpreting, reduce_max, reduce_sum

#: the widths the fused kernel takes (COST-EFF's narrow layers of MiniLM-sized models); wider layers run the
#: per-op kernels. Measured with ``bench/gpu_compile.py`` at 8 warps: hidden 384 compiles without spills for heads
#: of 32 and 64 on sm_80 and sm_90; hidden 768 (a 1024-column LayerNorm tile) spills 48 bytes per thread on sm_90,
#: heads of 128 spill 16 and heads of 16 spill 8 on sm_80, so those stay per-op until a two-pass LayerNorm frees
#: the registers.
MAX_FUSED_HIDDEN = 512
MAX_FUSED_HEADS = 4
FUSED_HEAD_SIZES = (32, 64)
MAX_FUSED_FFN = 512
MAX_FUSED_SEQLEN = 128


def fused_layer_supported(hidden_size: int, num_heads: int, head_size: int, intermediate_size: int,
                          max_seqlen: int) -> bool:
    """Whether :func:`encoder_layer_exit` takes a layer of these widths on rows of at most ``max_seqlen`` tokens:
    hidden at most 512, at most 4 heads of 32 or 64, FFN at most 512, rows of at most 128 tokens (the widths
    COST-EFF produces from MiniLM; a wider layer does not fit one program's registers and runs the per-op
    kernels)."""
    return (hidden_size <= MAX_FUSED_HIDDEN and 1 <= num_heads <= MAX_FUSED_HEADS and head_size in FUSED_HEAD_SIZES
            and intermediate_size <= MAX_FUSED_FFN and max_seqlen <= MAX_FUSED_SEQLEN)


@triton.jit
def _rows_linear(x, w_ptr, b_ptr, out, length, N, K, GELU: tl.constexpr,
                 BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """``out[:length] = x[:length] @ w + b`` (then GELU), one row's tokens: ``x`` ``[length, K]`` and ``out``
    ``[length, N]`` contiguous, ``w`` ``[K, N]``; stored in ``out``'s dtype."""
    rt = tl.arange(0, BLOCK_T)
    rn = tl.arange(0, BLOCK_N)
    for t0 in range(0, length, BLOCK_T):
        rm = t0 + rt
        for n0 in range(0, N, BLOCK_N):
            cols = n0 + rn
            acc = _bias_gelu(_matmul_tile(x, w_ptr, rm, cols, length, N, K, K, N, BLOCK_T, BLOCK_N, BLOCK_K),
                             b_ptr, cols, N, GELU)
            tl.store(out + rm.to(tl.int64)[:, None] * N + cols[None, :], acc.to(out.dtype.element_ty),
                     mask=(rm < length)[:, None] & (cols < N)[None, :])


@triton.jit
def _encoder_layer_exit_kernel(
    x_ptr, cu_seqlens_ptr, out_ptr, qkv_ptr, context_ptr, mid_ptr, inter_ptr,
    qkv_w_ptr, qkv_b_ptr, o_w_ptr, o_b_ptr, norm1_w_ptr, norm1_b_ptr,
    ffn1_w_ptr, ffn1_b_ptr, ffn2_w_ptr, ffn2_b_ptr, norm2_w_ptr, norm2_b_ptr,
    cls_w_ptr, cls_b_ptr, features_ptr, logits_ptr, entropy_ptr,
    H, F, C, num_heads, eps, scale_log2,
    HEAD_SIZE: tl.constexpr, MEAN_POOL: tl.constexpr, HAS_EXIT: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_KEYS: tl.constexpr, BLOCK_C: tl.constexpr,
):
    row = tl.program_id(0)
    start = tl.load(cu_seqlens_ptr + row).to(tl.int64)
    length = (tl.load(cu_seqlens_ptr + row + 1) - start).to(tl.int32)
    W = num_heads * HEAD_SIZE
    W3 = 3 * W
    dtype = out_ptr.dtype.element_ty
    x, out = x_ptr + start * H, out_ptr + start * H
    qkv, context = qkv_ptr + start * W3, context_ptr + start * W
    mid, inter = mid_ptr + start * H, inter_ptr + start * F
    rt = tl.arange(0, BLOCK_T)
    rn = tl.arange(0, BLOCK_N)
    rh = tl.arange(0, BLOCK_H)
    rd = tl.arange(0, HEAD_SIZE)
    # 1. QKV projection
    _rows_linear(x, qkv_w_ptr, qkv_b_ptr, qkv, length, W3, H, False, BLOCK_T, BLOCK_N, BLOCK_K)
    tl.debug_barrier()
    # 2. attention over the row's own tokens, head by head
    for head in range(0, num_heads):
        for q0 in range(0, length, BLOCK_T):
            acc, rm = _attention_block(qkv, W3, length, head, q0, W, scale_log2, HEAD_SIZE, BLOCK_T, BLOCK_KEYS)
            tl.store(context + rm.to(tl.int64)[:, None] * W + head * HEAD_SIZE + rd[None, :], acc.to(dtype),
                     mask=(rm < length)[:, None])
    tl.debug_barrier()
    # 3. output projection + residual + LayerNorm
    for t0 in range(0, length, BLOCK_T):
        rm = t0 + rt
        acc = _matmul_tile(context, o_w_ptr, rm, rh, length, H, W, W, H, BLOCK_T, BLOCK_H, BLOCK_K)
        y = _bias_residual_layernorm(acc, rm, rh, length, H, o_b_ptr, x, H, norm1_w_ptr, norm1_b_ptr, eps)
        tl.store(mid + rm.to(tl.int64)[:, None] * H + rh[None, :], y.to(dtype),
                 mask=(rm < length)[:, None] & (rh < H)[None, :])
    tl.debug_barrier()
    # 4. FFN up + GELU
    _rows_linear(mid, ffn1_w_ptr, ffn1_b_ptr, inter, length, F, H, True, BLOCK_T, BLOCK_N, BLOCK_K)
    tl.debug_barrier()
    # 5. FFN down + residual + LayerNorm, and the exit's features from the stored tokens
    features = tl.full([BLOCK_H], 0.0, tl.float32)
    for t0 in range(0, length, BLOCK_T):
        rm = t0 + rt
        acc = _matmul_tile(inter, ffn2_w_ptr, rm, rh, length, H, F, F, H, BLOCK_T, BLOCK_H, BLOCK_K)
        y = _bias_residual_layernorm(acc, rm, rh, length, H, ffn2_b_ptr, mid, H, norm2_w_ptr, norm2_b_ptr, eps)
        stored = y.to(dtype)
        tl.store(out + rm.to(tl.int64)[:, None] * H + rh[None, :], stored,
                 mask=(rm < length)[:, None] & (rh < H)[None, :])
        if MEAN_POOL:
            take = rm < length
        else:  # [CLS]: the row's first token
            take = rm == 0
        features += reduce_sum(tl.where(take[:, None], stored.to(tl.float32), 0.0), 0)
    if MEAN_POOL:
        features = features / length
    tl.store(features_ptr + row * H + rh, features, mask=rh < H)
    # 6. the exit head: tanh, classifier, softmax entropy in nats (the features read back in blocks of BLOCK_N,
    # so no [BLOCK_H, BLOCK_C] weight tile sits in registers)
    if HAS_EXIT:
        tl.debug_barrier()
        rc = tl.arange(0, BLOCK_C)
        class_ok = rc < C
        logits = tl.full([BLOCK_C], 0.0, tl.float32)
        for h0 in range(0, H, BLOCK_N):
            cols = h0 + rn
            f = tl.load(features_ptr + row * H + cols, mask=cols < H, other=0.0)
            w = tl.load(cls_w_ptr + cols[:, None] * C + rc[None, :], mask=(cols < H)[:, None] & class_ok[None, :],
                        other=0.0)
            # rounded where the per-op path stores them: the features, then tanh's output (its tl.dot operand)
            pooled = _tanh(f.to(dtype).to(tl.float32)).to(dtype).to(tl.float32)
            logits += reduce_sum(pooled[:, None] * w.to(tl.float32), 0)
        logits += tl.load(cls_b_ptr + rc, mask=class_ok, other=0.0).to(tl.float32)
        tl.store(logits_ptr + row * C + rc, logits, mask=class_ok)
        top = reduce_max(tl.where(class_ok, logits, float("-inf")), 0)
        shifted = tl.where(class_ok, logits - top, 0.0)
        e = tl.where(class_ok, tl.exp(shifted), 0.0)
        total = reduce_sum(e, 0)
        tl.store(entropy_ptr + row, tl.log(total) - reduce_sum(tl.where(e > 0.0, e * shifted, 0.0), 0) / total)


def encoder_layer_exit(hidden: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int, layer, eps: float,
                       exit=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """One post-LN encoder layer on packed tokens and, with ``exit``, its exit head, in one launch.

    Args:
        hidden: ``[T, H]`` packed tokens (fp32/fp16/bf16), contiguous.
        cu_seqlens: ``[B + 1]`` int32/int64 row offsets on ``hidden``'s device.
        max_seqlen: the longest row (tokens), at most 128.
        layer: the layer's weights, as :class:`costeff_fast.packing.PackedLayer` holds them (``[K, N]``
            input-major, ``hidden``'s dtype).
        eps: LayerNorm epsilon.
        exit: the exit read after this layer (a :class:`costeff_fast.packing.PackedExit`), or None (features are
            then the token means). Its head runs in the kernel when it has no pooler (tanh, then the classifier:
            COST-EFF's exits); an exit with a pooler (a converted classifier's last exit) gets its features only.

    Returns:
        ``(out [T, H] in hidden's dtype, features [B, H] fp32, logits [B, C] fp32 or None, entropy [B] fp32 or
        None)``: ``features`` are the rows' token means of ``out`` (or their [CLS] vectors for a ``"cls"`` exit);
        logits and entropy (nats) of the exit head on them when the kernel ran it.

    Raises:
        ValueError: widths :func:`fused_layer_supported` refuses, an exit pooling other than mean or [CLS], or
            mismatched shapes or dtypes.
    """
    check_matrix("hidden", hidden)
    if not hidden.is_contiguous():
        raise ValueError("hidden must be contiguous")
    T, H = hidden.shape
    heads, head_size = layer.num_heads, layer.head_size
    W, F = heads * head_size, layer.intermediate_weight.shape[1]
    if not fused_layer_supported(H, heads, head_size, F, max_seqlen):
        raise ValueError(f"the fused layer takes hidden <= {MAX_FUSED_HIDDEN}, <= {MAX_FUSED_HEADS} heads of a size "
                         f"in {FUSED_HEAD_SIZES}, FFN <= {MAX_FUSED_FFN} and rows <= {MAX_FUSED_SEQLEN} tokens; got hidden "
                         f"{H}, {heads} heads of {head_size}, FFN {F}, rows of {max_seqlen}: use the per-op kernels")
    shapes = {"qkv_weight": (H, 3 * W), "attention_output_weight": (W, H), "intermediate_weight": (H, F),
              "output_weight": (F, H), "qkv_bias": (3 * W,), "attention_output_bias": (H,),
              "attention_norm_weight": (H,), "attention_norm_bias": (H,), "intermediate_bias": (F,),
              "output_bias": (H,), "output_norm_weight": (H,), "output_norm_bias": (H,)}
    for name, shape in shapes.items():
        tensor = getattr(layer, name)
        if tuple(tensor.shape) != shape or tensor.dtype != hidden.dtype or not tensor.is_contiguous():
            raise ValueError(f"layer.{name} must be a contiguous {list(shape)} {hidden.dtype} tensor, got "
                             f"{tensor.dtype} of shape {tuple(tensor.shape)}")
    pooling = "mean" if exit is None else exit.pooling
    has_exit = exit is not None and exit.pooler_weight is None and exit.pooler_activation == "tanh"
    if has_exit and (exit.classifier_weight.dtype != hidden.dtype or exit.classifier_weight.shape[0] != H
                     or not exit.classifier_weight.is_contiguous()):
        raise ValueError(f"exit.classifier_weight must be a contiguous [{H}, C] {hidden.dtype} tensor")
    if pooling not in ("mean", "cls"):
        raise ValueError(f"exit pooling must be 'mean' or 'cls', got {pooling!r}")
    B = cu_seqlens.shape[0] - 1
    device = hidden.device
    C = exit.classifier_weight.shape[1] if has_exit else 1
    out = torch.empty_like(hidden)
    features = torch.empty(B, H, dtype=torch.float32, device=device)
    logits = torch.empty(B, C, dtype=torch.float32, device=device) if has_exit else None
    entropy = torch.empty(B, dtype=torch.float32, device=device) if has_exit else None
    if B <= 0 or T == 0:
        return out, features, logits, entropy
    # per-call scratch: each program's steps hand over through its own rows of these
    qkv = torch.empty(T, 3 * W, dtype=hidden.dtype, device=device)
    context = torch.empty(T, W, dtype=hidden.dtype, device=device)
    mid = torch.empty_like(hidden)
    inter = torch.empty(T, F, dtype=hidden.dtype, device=device)
    block_h = max(16, triton.next_power_of_2(H))
    if interpreting():
        block_t, block_n, block_k, block_keys, warps = 16, 64, 128, 16, 4
    else:
        # no register spills on sm_90 at the widths fused_layer_supported takes (bench/results/gpu-compile.json)
        block_t, block_n, block_k, block_keys = 16, 64, 32, 16
        warps = 4 if block_h <= 128 else 8
    dummy = features  # stands in for the exit's tensors when there is no exit (never read)
    _encoder_layer_exit_kernel[(B,)](
        hidden, cu_seqlens, out, qkv, context, mid, inter,
        layer.qkv_weight, layer.qkv_bias, layer.attention_output_weight, layer.attention_output_bias,
        layer.attention_norm_weight, layer.attention_norm_bias, layer.intermediate_weight, layer.intermediate_bias,
        layer.output_weight, layer.output_bias, layer.output_norm_weight, layer.output_norm_bias,
        exit.classifier_weight if has_exit else dummy, exit.classifier_bias if has_exit else dummy,
        features, logits if has_exit else dummy, entropy if has_exit else dummy,
        H, F, C, heads, float(eps), math.log2(math.e) / math.sqrt(head_size),
        HEAD_SIZE=head_size, MEAN_POOL=pooling == "mean", HAS_EXIT=has_exit,
        BLOCK_T=block_t, BLOCK_N=block_n, BLOCK_H=block_h, BLOCK_K=block_k, BLOCK_KEYS=block_keys,
        BLOCK_C=max(16, triton.next_power_of_2(C)), num_warps=warps, num_stages=1,
    )
    return out, features, logits, entropy

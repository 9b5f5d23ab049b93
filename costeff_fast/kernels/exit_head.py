"""Exit head in one kernel: gather each row's feature vector, optional pooler, tanh, classifier, softmax
entropy, threshold.

The rows read are ``hidden[cls_index]``: the [CLS] tokens of packed hidden states, or, for mean-pooling exits,
the ``[B, H]`` row means with ``cls_index = arange(B)``.

COST-EFF's exit l is ``Linear(H, C)(tanh(hidden_l[CLS]))``; a converted HF classifier's last exit has a
BERT pooler first, ``Linear(H, C)(tanh(dense(hidden_l[CLS])))`` (docs/design.md, Terms). One program owns a
block of rows: it walks the hidden (or pooler output) columns block by block, applies tanh and
accumulates the classifier product, so the pooled vector never leaves registers; then it computes the
fp32 softmax entropy in nats and compares it with the layer's threshold tau.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .utils import check_matrix, check_vector, interpreting, reduce_max, reduce_sum


@triton.jit
def _tanh(x):
    """tanh from exp (the interpreter has no tl.tanh and no libdevice); exact to fp32 rounding for all x."""
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def _exit_head_kernel(hidden_ptr, cls_index_ptr, pool_w_ptr, pool_b_ptr, cls_w_ptr, cls_b_ptr,
                      logits_ptr, entropy_ptr, exits_ptr, B, H, C, stride_hidden, tau,
                      HAS_POOLER: tl.constexpr, HAS_TAU: tl.constexpr,
                      BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr):
    rb = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rb < B
    rc = tl.arange(0, BLOCK_C)
    class_ok = rc < C
    rows = hidden_ptr + tl.load(cls_index_ptr + rb, mask=row_ok, other=0).to(tl.int64)[:, None] * stride_hidden
    logits = tl.full([BLOCK_B, BLOCK_C], 0.0, tl.float32)
    for h0 in range(0, H, BLOCK_H):
        rh = h0 + tl.arange(0, BLOCK_H)
        if HAS_POOLER:  # pooled[:, rh] = x @ pooler_weight[:, rh] + pooler_bias[rh]
            rk = tl.arange(0, BLOCK_K)
            pooled = tl.full([BLOCK_B, BLOCK_H], 0.0, tl.float32)
            for k0 in range(0, H, BLOCK_K):
                k = k0 + rk
                x = tl.load(rows + k[None, :], mask=row_ok[:, None] & (k < H)[None, :], other=0.0)
                w = tl.load(pool_w_ptr + k[:, None] * H + rh[None, :], mask=(k < H)[:, None] & (rh < H)[None, :],
                            other=0.0)
                pooled = tl.dot(x, w, pooled, input_precision="ieee")
            pooled += tl.load(pool_b_ptr + rh, mask=rh < H, other=0.0).to(tl.float32)[None, :]
        else:
            pooled = tl.load(rows + rh[None, :], mask=row_ok[:, None] & (rh < H)[None, :], other=0.0).to(tl.float32)
        w = tl.load(cls_w_ptr + rh[:, None] * C + rc[None, :], mask=(rh < H)[:, None] & class_ok[None, :], other=0.0)
        logits = tl.dot(_tanh(pooled).to(w.dtype), w, logits, input_precision="ieee")  # tanh(0) = 0 on padding
    logits += tl.load(cls_b_ptr + rc, mask=class_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(logits_ptr + rb[:, None] * C + rc[None, :], logits, mask=row_ok[:, None] & class_ok[None, :])
    # entropy of softmax in nats: ln(sum e^z') - sum p z'  with z' = z - max z
    top = reduce_max(tl.where(class_ok[None, :], logits, float("-inf")), axis=1)
    shifted = tl.where(class_ok[None, :], logits - top[:, None], 0.0)
    e = tl.where(class_ok[None, :], tl.exp(shifted), 0.0)
    total = reduce_sum(e, 1)
    # e == 0 where z' underflows or is -inf (logits more than the fp32 range apart): p ln p -> 0, not 0 * -inf
    entropy = tl.log(total) - reduce_sum(tl.where(e > 0.0, e * shifted, 0.0), 1) / total
    tl.store(entropy_ptr + rb, entropy, mask=row_ok)
    if HAS_TAU:
        tl.store(exits_ptr + rb, entropy < tau, mask=row_ok)


def exit_head(
    hidden: torch.Tensor,
    cls_index: torch.Tensor,
    classifier_weight: torch.Tensor,
    classifier_bias: torch.Tensor,
    pooler_weight: torch.Tensor | None = None,
    pooler_bias: torch.Tensor | None = None,
    entropy_threshold: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits, entropy and exit decision of one exit on the CLS rows of packed tokens, in one kernel.

    Args:
        hidden: ``[T, H]`` packed hidden states (fp32/fp16/bf16), rows contiguous.
        cls_index: ``[B]`` int32/int64 index of each row's feature vector in ``hidden`` (``cu_seqlens[:-1]`` for
            [CLS]; ``arange(B)`` when ``hidden`` holds the row means).
        classifier_weight: ``[H, C]`` input-major, ``hidden``'s dtype; ``classifier_bias``: ``[C]``.
        pooler_weight, pooler_bias: ``[H, H]`` and ``[H]`` of a BERT pooler, or both None.
        entropy_threshold: tau in nats, or None (no row exits).

    Returns:
        ``logits [B, C]`` fp32, ``entropy [B]`` fp32 (nats, ``-sum p ln p`` of ``softmax(logits)``) and
        ``exits [B]`` bool (``entropy < tau``; all False without a threshold).

    Raises:
        ValueError: mismatched shapes or dtypes, only one of the pooler tensors, a bad ``cls_index``.
    """
    check_matrix("hidden", hidden)
    H = hidden.shape[1]
    check_matrix("classifier_weight", classifier_weight, rows=H)
    C = classifier_weight.shape[1]
    check_vector("classifier_bias", classifier_bias, C)
    if (pooler_weight is None) != (pooler_bias is None):
        raise ValueError("pass both pooler_weight and pooler_bias, or neither")
    if pooler_weight is not None:
        check_matrix("pooler_weight", pooler_weight, rows=H, cols=H)
        check_vector("pooler_bias", pooler_bias, H)
        if not pooler_weight.is_contiguous():
            raise ValueError("pooler_weight must be contiguous")
    weights = [classifier_weight, classifier_bias] + ([pooler_weight, pooler_bias] if pooler_weight is not None else [])
    if any(w.dtype != hidden.dtype for w in weights):
        raise ValueError(f"exit weights must have hidden's dtype {hidden.dtype}")
    if not classifier_weight.is_contiguous():
        raise ValueError("classifier_weight must be contiguous")
    if (cls_index.dim() != 1 or cls_index.dtype not in (torch.int32, torch.int64) or not cls_index.is_contiguous()
            or cls_index.device != hidden.device):
        raise ValueError(f"cls_index must be a contiguous 1-D int32/int64 tensor on {hidden.device}, got "
                         f"{cls_index.dtype} of shape {tuple(cls_index.shape)} on {cls_index.device}")
    B = cls_index.shape[0]
    device = hidden.device
    logits = torch.empty(B, C, dtype=torch.float32, device=device)
    entropy = torch.empty(B, dtype=torch.float32, device=device)
    exits = torch.zeros(B, dtype=torch.bool, device=device)
    if B == 0:
        return logits, entropy, exits
    block_c = max(16, triton.next_power_of_2(C))
    if interpreting():
        block_b, block_h = max(16, min(64, triton.next_power_of_2(B))), max(16, min(128, triton.next_power_of_2(H)))
    else:
        block_b, block_h = 16, 64
    has_pooler = pooler_weight is not None
    _exit_head_kernel[(triton.cdiv(B, block_b),)](
        hidden, cls_index,
        pooler_weight if has_pooler else classifier_weight, pooler_bias if has_pooler else classifier_bias,
        classifier_weight, classifier_bias, logits, entropy, exits, B, H, C, hidden.stride(0),
        0.0 if entropy_threshold is None else float(entropy_threshold),
        HAS_POOLER=has_pooler, HAS_TAU=entropy_threshold is not None,
        BLOCK_B=block_b, BLOCK_H=block_h, BLOCK_K=block_h, BLOCK_C=block_c, num_warps=4, num_stages=1,
    )
    return logits, entropy, exits

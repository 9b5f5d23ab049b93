"""The plain-PyTorch math of every engine operation: the one reference each fast path is checked against.

The arithmetic runs in fp32 (inputs of any float dtype are upcast; fp32 inputs are used as they are) and
returns fp32, except where a function only selects or copies (:func:`exit_features` of [CLS],
:func:`compact_tokens` keep the input's dtype) or is the trainable model's (:func:`exit_logits`
runs in its inputs' dtype). The fast counterparts in :mod:`costeff_fast.native` (C++ CPU kernels) and
:mod:`costeff_fast.kernels` (Triton) take the reference's arguments in the same order, any extra argument
after them (e.g. the host-side sizes the Triton compaction needs to avoid a device wait), and the tests call
both on the same inputs. The ``torch`` backend
runs the engine with these functions, and :mod:`costeff_fast.modeling` takes its exit math from here.

Operations (COST-EFF, Shen et al., EMNLP 2022, arXiv 2210.15523, Sec. 3; BERT's post-LN layer as in
``transformers.models.bert.modeling_bert``), on packed tokens laid out by ``cu_seqlens``
(:class:`~costeff_fast.batch.PackedBatch`):

* embedding: :func:`embedding_layernorm`;
* encoder layer: :func:`linear`, :func:`varlen_attention`, :func:`linear_residual_layernorm`,
  composed by :func:`encoder_layer`; with int8 GEMM weights (``quantize="int8"``, :mod:`costeff_fast.packing`)
  :func:`linear_int8` and :func:`linear_residual_layernorm_int8`, composed by :func:`encoder_layer_int8`;
* exit: :func:`exit_features`, :func:`exit_logits`, :func:`exit_entropy`, :func:`exit_decision`, fused as
  :func:`exit_head`; :func:`first_exit` for a padded full-depth forward;
* bookkeeping after an exit: :func:`scatter_exits` (run by the engine for every backend), :func:`compact_tokens`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from .batch import PackedBatch
from .packing import Int8Weight, PackedExit, PackedLayer

# Exit head

#: what an exit's pooler may apply after its dense layer: BERT/RoBERTa/XLM-R heads tanh, DistilBERT's
#: ``pre_classifier`` ReLU, ELECTRA's head dense the exact (erf) GELU
POOLER_ACTIVATIONS = {"tanh": torch.tanh, "relu": F.relu, "gelu": F.gelu}


def exit_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of ``softmax(logits)`` in nats, computed in fp32.

    Args:
        logits: ``[..., num_labels]`` any float dtype.

    Returns:
        ``[...]`` fp32, ``-sum p ln p`` (>= 0: ``log_softmax`` is <= 0 in fp32, so every term is >= 0), finite for
        any finite logits, extreme ones included (a term with ``p = 0`` adds 0).
        Source: COST-EFF Sec. 3.4 (entropy-based early exit, as DeeBERT).
    """
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    # p ln p -> 0 as p -> 0: a label whose log-probability is -inf (logits more than the fp32 range apart) adds 0,
    # not 0 * -inf = NaN.
    terms = torch.where(torch.isneginf(log_probs), 0.0, log_probs.exp() * log_probs)
    return -terms.sum(dim=-1)


def exit_decision(logits: torch.Tensor, entropy_threshold: float) -> torch.Tensor:
    """``[B]`` bool: the softmax entropy of ``logits [B, C]`` (nats) is strictly below ``entropy_threshold``."""
    return exit_entropy(logits) < entropy_threshold


def exit_features(hidden: torch.Tensor, batch: PackedBatch, pooling: str) -> torch.Tensor:
    """What an exit reads from packed ``hidden [T, H]``: each row's [CLS] vector (``"cls"``) or the mean of its
    tokens (``"mean"``, summed in fp32 by :func:`segment_mean`), ``[B, H]`` in ``hidden``'s dtype.

    Raises:
        ValueError: an unknown ``pooling``.
    """
    if pooling == "mean":
        return segment_mean(hidden, batch.cu_seqlens).to(hidden.dtype)
    if pooling == "cls":
        return hidden[batch.cls_index]
    raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")


def exit_logits(
    features: torch.Tensor,
    classifier_weight: torch.Tensor,
    classifier_bias: torch.Tensor,
    pooler_weight: torch.Tensor | None = None,
    pooler_bias: torch.Tensor | None = None,
    dropout: Callable[[torch.Tensor], torch.Tensor] | None = None,
    pooler_activation: str = "tanh",
) -> torch.Tensor:
    """An exit classifier: ``act(features [@ pooler_weight + pooler_bias]) @ classifier_weight + classifier_bias``.

    COST-EFF's exit is ``Linear(H, C)(tanh(x))`` (Sec. 3.4); a converted HF classifier's last exit has its
    head's dense layer first, followed by ``pooler_activation`` (BERT's pooler: tanh). Computed in
    ``features``' dtype (the trainable model's; autograd works).

    Args:
        features: ``[B, H]`` (see :func:`exit_features`).
        classifier_weight: ``[H, C]`` input-major; classifier_bias: ``[C]``.
        pooler_weight, pooler_bias: ``[H, H]`` input-major and ``[H]``, or both None.
        dropout: applied to the activation's output before the classifier (training); None for inference.
        pooler_activation: one of :data:`POOLER_ACTIVATIONS`, applied after the pooler (an exit without a
            pooler always applies tanh).

    Returns:
        logits ``[B, C]``.

    Raises:
        KeyError: an unknown ``pooler_activation``.
    """
    activation = torch.tanh
    if pooler_weight is not None:
        features = torch.addmm(pooler_bias, features, pooler_weight)
        activation = POOLER_ACTIVATIONS[pooler_activation]
    pooled = activation(features)
    if dropout is not None:
        pooled = dropout(pooled)
    return torch.addmm(classifier_bias, pooled, classifier_weight)


def exit_head(
    hidden: torch.Tensor,
    cls_index: torch.Tensor,
    classifier_weight: torch.Tensor,
    classifier_bias: torch.Tensor,
    pooler_weight: torch.Tensor | None = None,
    pooler_bias: torch.Tensor | None = None,
    entropy_threshold: float | None = None,
    pooler_activation: str = "tanh",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One exit on the rows ``hidden[cls_index]`` in fp32: logits, entropy and exit decision.

    Args:
        hidden: ``[T, H]`` any float dtype.
        cls_index: ``[B]`` int index of each row's feature vector in ``hidden`` (``cu_seqlens[:-1]`` for [CLS];
            ``arange(B)`` when ``hidden`` already holds the ``[B, H]`` token means).
        classifier_weight, classifier_bias, pooler_weight, pooler_bias: as :func:`exit_logits`.
        entropy_threshold: tau in nats, or None (no row exits).
        pooler_activation: as :func:`exit_logits` (the Triton kernel computes tanh only).

    Returns:
        ``logits [B, C]`` fp32, ``entropy [B]`` fp32 nats and ``exits [B]`` bool (``entropy < tau``).
    """
    upcast = [None if t is None else t.float() for t in (pooler_weight, pooler_bias)]
    logits = exit_logits(hidden[cls_index].float(), classifier_weight.float(), classifier_bias.float(), *upcast,
                         pooler_activation=pooler_activation)
    entropy = exit_entropy(logits)
    if entropy_threshold is None:
        return logits, entropy, torch.zeros_like(entropy, dtype=torch.bool)
    return logits, entropy, entropy < entropy_threshold


def first_exit(entropies: torch.Tensor, entropy_threshold: Sequence[float]) -> torch.Tensor:
    """1-based exit layer of each row: the first layer whose entropy is strictly below its threshold.

    Args:
        entropies: ``[B, L]`` fp32 entropies of every exit (nats).
        entropy_threshold: one threshold per layer (nats); 0.0 never exits early.

    Returns:
        ``[B]`` int64 in ``1..L``; the last layer always answers.
    """
    tau = torch.tensor(list(entropy_threshold), dtype=entropies.dtype, device=entropies.device)
    confident = entropies < tau
    confident[:, -1] = True
    return confident.int().argmax(dim=1) + 1


# Embedding and encoder layer


def embedding_layernorm(
    input_ids: torch.Tensor,
    token_type_ids: torch.Tensor,
    cu_seqlens: torch.Tensor,
    word: torch.Tensor,
    position: torch.Tensor,
    token_type: torch.Tensor,
    norm_weight: torch.Tensor,
    norm_bias: torch.Tensor,
    eps: float,
) -> torch.Tensor:
    """BERT embedding of packed tokens: ``LayerNorm(word[id] + position[p] + token_type[type])`` -> ``[T, H]`` fp32.

    Args:
        input_ids, token_type_ids: ``[T]`` int64.
        cu_seqlens: ``[B + 1]`` int64; positions restart at 0 at every row start.
        word ``[V, H]``, position ``[P, H]``, token_type ``[types, H]``: the tables (a factorized word
            embedding already folded, see :mod:`costeff_fast.packing`).
        norm_weight, norm_bias: ``[H]``. eps: LayerNorm epsilon.
    """
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    starts = torch.repeat_interleave(cu_seqlens[:-1], lengths, output_size=len(input_ids))  # sized: no device wait
    positions = torch.arange(len(input_ids), device=input_ids.device) - starts
    hidden = word[input_ids].float() + position[positions].float() + token_type[token_type_ids].float()
    return F.layer_norm(hidden, hidden.shape[-1:], norm_weight.float(), norm_bias.float(), eps)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, gelu: bool = False) -> torch.Tensor:
    """``x [M, K] @ weight [K, N] + bias [N]``, then exact (erf) GELU when ``gelu``, -> ``[M, N]`` fp32."""
    out = torch.addmm(bias.float(), x.float(), weight.float())
    return torch.ops.aten.gelu_(out) if gelu else out


def linear_residual_layernorm(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    residual: torch.Tensor,
    norm_weight: torch.Tensor,
    norm_bias: torch.Tensor,
    eps: float,
) -> torch.Tensor:
    """``LayerNorm(x [M, K] @ weight [K, N] + bias + residual [M, N])`` -> ``[M, N]`` fp32 (post-LN BERT)."""
    out = torch.addmm(bias.float(), x.float(), weight.float()).add_(residual.float())
    return F.layer_norm(out, out.shape[-1:], norm_weight.float(), norm_bias.float(), eps)


def varlen_attention(
    qkv: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    num_heads: int,
    head_size: int,
    softmax_scale: float | None = None,
) -> torch.Tensor:
    """Bidirectional attention of every packed row over its own tokens, ``softmax(Q K^T * scale) V`` per head.

    Args:
        qkv: ``[T, 3 * num_heads * head_size]``, columns ``[Q heads | K heads | V heads]``, bias included.
        cu_seqlens: ``[B + 1]`` int prefix sums of the row lengths (rows >= 1 token).
        max_seqlen: the longest row.
        num_heads, head_size: h and d.
        softmax_scale: default ``1 / sqrt(head_size)``.

    Returns:
        context ``[T, num_heads * head_size]`` fp32, heads side by side.

    Computed by scattering the rows into a ``[B, h, max_seqlen, d]`` buffer for
    ``scaled_dot_product_attention`` with a key-padding mask. Source: flash-attention's varlen interface
    (Dao et al., 2022) for the layout.
    """
    width = num_heads * head_size
    if qkv.shape[1] != 3 * width:
        raise ValueError(f"qkv must have 3 * num_heads * head_size = {3 * width} columns, got {qkv.shape[1]}")
    cu_seqlens = cu_seqlens.to(device=qkv.device, dtype=torch.long)
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    rows = len(lengths)
    token_row = torch.repeat_interleave(torch.arange(rows, device=qkv.device), lengths, output_size=qkv.shape[0])
    padded_index = token_row * max_seqlen + torch.arange(qkv.shape[0], device=qkv.device) - cu_seqlens[token_row]
    padded = qkv.new_zeros(rows * max_seqlen, 3 * width, dtype=torch.float32)
    padded.index_copy_(0, padded_index, qkv.float())
    q, k, v = padded.view(rows, max_seqlen, 3, num_heads, head_size).permute(2, 0, 3, 1, 4)
    key_ok = torch.arange(max_seqlen, device=qkv.device)[None, :] < lengths[:, None]
    scale = 1.0 / math.sqrt(head_size) if softmax_scale is None else softmax_scale
    context = F.scaled_dot_product_attention(q, k, v, attn_mask=key_ok[:, None, None, :], scale=scale)
    return context.transpose(1, 2).reshape(rows * max_seqlen, width).index_select(0, padded_index)


def encoder_layer(
    hidden: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int, layer: PackedLayer, eps: float
) -> torch.Tensor:
    """One post-LN BERT layer on packed tokens: ``[T, H]`` -> ``[T, H]`` fp32; no linear layer sees padding.

    ``a = LN(attention(hidden @ W_qkv + b_qkv) @ W_O + b_O + hidden)``, ``out = LN(GELU(a @ W_1 + b_1) @ W_2 +
    b_2 + a)`` with the layer's own widths (``layer.num_heads`` heads of ``layer.head_size``, FFN ``F_l``).
    """
    return _post_ln_layer(hidden, cu_seqlens, max_seqlen, layer, eps, linear, linear_residual_layernorm)


def encoder_layer_exit(
    hidden: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int, layer: PackedLayer, eps: float,
    exit: PackedExit | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """:func:`encoder_layer`, then what exit ``exit`` reads and, for an exit without pooler, its head.

    Returns:
        ``(out [T, H] fp32, features [B, H] fp32, logits [B, C] fp32 or None, entropy [B] fp32 or None)``:
        ``features`` the rows' token means of ``out`` (:func:`segment_mean`; their [CLS] vectors for a ``"cls"``
        exit; the means when ``exit`` is None); logits and entropy (nats, :func:`exit_head`) when ``exit`` has no
        pooler (tanh, then the classifier), else None.
    """
    out = encoder_layer(hidden, cu_seqlens, max_seqlen, layer, eps)
    if exit is None or exit.pooling == "mean":
        features = segment_mean(out, cu_seqlens)
    else:
        features = out[cu_seqlens[:-1].long()].float()
    if exit is None or exit.pooler_weight is not None or exit.pooler_activation != "tanh":
        return out, features, None, None
    rows = torch.arange(features.shape[0], device=features.device)
    logits, entropy, _ = exit_head(features, rows, exit.classifier_weight, exit.classifier_bias)
    return out, features, logits, entropy


def _post_ln_layer(hidden, cu_seqlens, max_seqlen, layer: PackedLayer, eps: float, gemm, gemm_residual_layernorm):
    """The post-LN layer of :func:`encoder_layer` with its two GEMM steps given (fp32 or int8)."""
    qkv = gemm(hidden, layer.qkv_weight, layer.qkv_bias)
    context = varlen_attention(qkv, cu_seqlens, max_seqlen, layer.num_heads, layer.head_size)
    hidden = gemm_residual_layernorm(
        context, layer.attention_output_weight, layer.attention_output_bias, hidden,
        layer.attention_norm_weight, layer.attention_norm_bias, eps,
    )
    inter = gemm(hidden, layer.intermediate_weight, layer.intermediate_bias, gelu=True)
    return gemm_residual_layernorm(
        inter, layer.output_weight, layer.output_bias, hidden, layer.output_norm_weight, layer.output_norm_bias, eps
    )


def linear_int8(x: torch.Tensor, weight: Int8Weight, bias: torch.Tensor | None, gelu: bool = False) -> torch.Tensor:
    """:func:`linear` with an int8 weight and dynamically quantized int8 activations -> ``[M, N]`` fp32.

    ``x [M, K]`` (fp32 CPU) is quantized per call to uint8 over its whole range (asymmetric, per tensor:
    ``scale = (max(x, 0) - min(x, 0)) / 255``, zero point such that 0 is exact, as
    ``torch._choose_qparams_per_tensor(x, reduce_range=False)``); the int8 x int8 products are summed in int32 by
    fbgemm (``torch.ops.quantized.linear_dynamic``), scaled back by ``x_scale * w_scale[n]``; then ``+ bias [N]``
    and exact (erf) GELU when ``gelu``. Equal, up to fp32 rounding, to :func:`linear` of the fake-quantized ``x``
    and ``weight.dequantize()`` (tests/test_int8.py). The rows of ``x`` share one scale, so a row's output
    depends (within one activation step) on the other rows of the call. Source: dynamic quantization as in
    ``torch.ao.nn.quantized.dynamic.Linear`` and ONNX Runtime's ``quantize_dynamic``.

    Args:
        x: ``[M, K]`` any float dtype (computed in fp32). weight: an :class:`Int8Weight` of shape ``[K, N]``.
        bias: ``[N]``, or None when the caller adds it in a later fused pass (the native backend's attention
            and LayerNorm kernels do). gelu: apply GELU after the bias.
    """
    out = torch.ops.quantized.linear_dynamic(x.float().contiguous(), weight.packed, False)  # 8-bit activations
    if bias is not None:
        out.add_(bias.float())
    return torch.ops.aten.gelu_(out) if gelu else out


def linear_residual_layernorm_int8(
    x: torch.Tensor,
    weight: Int8Weight,
    bias: torch.Tensor,
    residual: torch.Tensor,
    norm_weight: torch.Tensor,
    norm_bias: torch.Tensor,
    eps: float,
) -> torch.Tensor:
    """:func:`linear_residual_layernorm` with the GEMM of :func:`linear_int8`: ``LayerNorm(x [M, K] @ weight +
    bias + residual [M, N])`` -> ``[M, N]`` fp32; the residual add and the LayerNorm stay fp32."""
    out = linear_int8(x, weight, bias).add_(residual.float())
    return F.layer_norm(out, out.shape[-1:], norm_weight.float(), norm_bias.float(), eps)


def encoder_layer_int8(
    hidden: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int, layer: PackedLayer, eps: float
) -> torch.Tensor:
    """:func:`encoder_layer` of a layer packed with ``quantize="int8"``: its four GEMMs (QKV, attention output,
    FFN in and out) run :func:`linear_int8`; attention, GELU, residuals and LayerNorms stay fp32.
    ``[T, H]`` fp32 CPU -> ``[T, H]`` fp32."""
    return _post_ln_layer(hidden, cu_seqlens, max_seqlen, layer, eps, linear_int8, linear_residual_layernorm_int8)


def segment_mean(hidden: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Mean of each packed row's token vectors: ``hidden [T, H]`` -> ``[B, H]`` fp32."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).to(hidden.device)
    token_row = torch.repeat_interleave(
        torch.arange(len(lengths), device=hidden.device), lengths, output_size=hidden.shape[0]
    )
    sums = hidden.new_zeros(len(lengths), hidden.shape[1], dtype=torch.float32).index_add_(0, token_row, hidden.float())
    return sums / lengths[:, None]


# Bookkeeping after an exit


def scatter_exits(
    logits_out: torch.Tensor,
    exit_layer: torch.Tensor,
    logits: torch.Tensor,
    exits: torch.Tensor,
    row_ids: torch.Tensor,
    layer: int,
) -> None:
    """In place: ``logits_out[row_ids[exits]] = logits[exits]`` and ``exit_layer[row_ids[exits]] = layer``.

    ``exits`` selects the exited rows of ``logits [B, C]``: a ``[B]`` bool mask, or ``[k]`` int64 positions (what
    the engine passes: sized on the host, so indexing with them never waits for the device).
    """
    rows = row_ids[exits]
    logits_out[rows] = logits[exits].to(logits_out.dtype)
    exit_layer[rows] = layer


def compact_tokens(
    hidden: torch.Tensor, cu_seqlens: torch.Tensor, row_ids: torch.Tensor, keep: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The token spans of the rows where ``keep [B]`` is True, in order.

    Returns:
        ``hidden [T', H]`` (``hidden``'s dtype: a copy, no arithmetic), ``cu_seqlens [B' + 1]`` and
        ``row_ids [B']`` of the kept rows.
    """
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    new_cu_seqlens = torch.zeros(int(keep.sum()) + 1, dtype=cu_seqlens.dtype, device=cu_seqlens.device)
    torch.cumsum(lengths[keep], 0, out=new_cu_seqlens[1:])
    return hidden[torch.repeat_interleave(keep, lengths)], new_cu_seqlens, row_ids[keep]

"""FLOP and parameter accounting of (slenderized, multi-exit) BERT classifiers.

FLOPs count ``2 * multiply-adds`` of the matmuls (docs/design.md, Measuring speed); softmax, GELU, LayerNorm and
embedding gathers are not counted. Attention counts ``Q K^T`` and ``P V`` over a row's own tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def layer_flops(config, layer: int, seq_len: int) -> int:
    """Matmul FLOPs of encoder layer ``layer`` (0-based) for one row of ``seq_len`` tokens.

    Works for a :class:`~costeff_fast.config.CostEffConfig` (per-layer widths) and the configs of the supported
    Hugging Face encoders (BERT, RoBERTa, XLM-R, ELECTRA; DistilBERT's ``hidden_dim``).
    """
    hidden = config.hidden_size
    heads = config.num_attention_heads
    heads = heads[layer] if isinstance(heads, Sequence) else heads
    head_size = getattr(config, "attention_head_size", None) or hidden // heads
    ffn = getattr(config, "intermediate_size", None) or config.hidden_dim  # DistilBERT names it hidden_dim
    ffn = ffn[layer] if isinstance(ffn, Sequence) else ffn
    width = heads * head_size
    projections = 2 * seq_len * hidden * (3 * width) + 2 * seq_len * width * hidden
    attention = 2 * 2 * seq_len * seq_len * width
    feed_forward = 2 * 2 * seq_len * hidden * ffn
    return projections + attention + feed_forward


def exit_flops(config, layer: int) -> int:
    """Matmul FLOPs of exit ``layer`` (0-based) for one row: optional pooler plus classifier."""
    pooler = getattr(config, "exit_pooler", None)
    has_pooler = pooler[layer] if pooler is not None else layer == config.num_hidden_layers - 1
    return 2 * config.hidden_size * config.num_labels + (2 * config.hidden_size**2 if has_pooler else 0)


def embedding_flops(config, seq_len: int) -> int:
    """FLOPs of a factorized word embedding's projection (rank r -> hidden) as trained; 0 when unfactorized.

    The engine folds the factorization into one ``[vocab, hidden]`` table, so it executes no embedding FLOPs;
    this term is reported for the paper's accounting only.
    """
    rank = getattr(config, "embedding_rank", None)
    return 2 * seq_len * rank * config.hidden_size if rank else 0


def model_flops(config, seq_lens: Sequence[int] | torch.Tensor, exit_layers: Sequence[int] | torch.Tensor | None = None,
                *, every_exit: bool = True, count_embedding: bool = False) -> int:
    """Matmul FLOPs of running rows of the given lengths to their exit layers.

    Args:
        config: model config (COST-EFF or BERT).
        seq_lens: ``[B]`` real tokens per row (or 128 for the paper's padded accounting).
        exit_layers: ``[B]`` 1-based exit layer per row; None = full depth.
        every_exit: count the exit head of every layer a row passes (multi-exit inference); False counts
            only the final classifier (a plain BERT classifier).
        count_embedding: add the factorized embedding projection (the paper's accounting).

    Returns:
        Total FLOPs (int).
    """
    num_layers = config.num_hidden_layers
    seq_lens = [int(n) for n in seq_lens]
    exits = [num_layers] * len(seq_lens) if exit_layers is None else [int(e) for e in exit_layers]
    if len(exits) != len(seq_lens):
        raise ValueError(f"{len(exits)} exit layers for {len(seq_lens)} rows")
    total = 0
    for n, depth in zip(seq_lens, exits):
        if not 1 <= depth <= num_layers:
            raise ValueError(f"exit layer must be in 1..{num_layers}, got {depth}")
        total += sum(layer_flops(config, layer, n) for layer in range(depth))
        if every_exit:
            total += sum(exit_flops(config, layer) for layer in range(depth))
        else:
            total += exit_flops(config, num_layers - 1)
        if count_embedding:
            total += embedding_flops(config, n)
    return total


def row_flops(config, seq_lens: Sequence[int] | torch.Tensor, *, every_exit: bool = True) -> torch.Tensor:
    """:func:`model_flops` of each row at full depth on its own: ``[N]`` float64 (e.g. the teacher's per-row cost,
    ``every_exit=False``, that a speed-up is counted against)."""
    per_length: dict[int, float] = {}
    values = []
    for n in (int(n) for n in seq_lens):
        if n not in per_length:
            per_length[n] = float(model_flops(config, [n], every_exit=every_exit))
        values.append(per_length[n])
    return torch.tensor(values, dtype=torch.float64)


def cumulative_flops(config, seq_lens: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Executed matmul FLOPs of stopping each row at each exit: ``[N, L]`` float64, entry ``[n, l]`` the FLOPs of
    layers ``1..l+1`` and their exit heads for row ``n`` (of ``seq_lens[n]`` real tokens).

    ``cumulative_flops(config, lens)[n, e - 1]`` equals ``model_flops(config, [lens[n]], [e])``; a sum over rows of
    entries at their exit layers equals :func:`model_flops` of those rows (float64 holds the integer sums exactly
    below 2**53, about 9e15 FLOPs).
    """
    num_layers = config.num_hidden_layers
    per_length = {}
    rows = []
    for n in (int(n) for n in seq_lens):
        if n not in per_length:
            steps = [layer_flops(config, layer, n) + exit_flops(config, layer) for layer in range(num_layers)]
            per_length[n] = torch.tensor(steps, dtype=torch.float64).cumsum(0)
        rows.append(per_length[n])
    return torch.stack(rows) if rows else torch.zeros(0, num_layers, dtype=torch.float64)


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """``total`` parameters and ``encoder`` parameters (the transformer layers, without embeddings and heads).

    Works for :class:`~costeff_fast.modeling.CostEffForSequenceClassification` (``layers``) and HF encoder
    classifiers (``base_model.encoder``; DistilBERT's ``base_model.transformer``).
    """
    total = sum(p.numel() for p in model.parameters())
    if hasattr(model, "layers"):
        encoder = model.layers
    else:
        base = model.base_model
        encoder = base.encoder if hasattr(base, "encoder") else base.transformer
    return {"total": total, "encoder": sum(p.numel() for p in encoder.parameters())}

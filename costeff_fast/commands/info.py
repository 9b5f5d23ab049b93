"""``costeff-fast info``: what a COST-EFF checkpoint holds: widths per layer, parameters, FLOPs, threshold, labels."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from costeff_fast.checkpoint import load_config, load_tokenizer
from costeff_fast.config import resolve_entropy_threshold
from costeff_fast.flops import exit_flops, layer_flops, model_flops, parameter_counts
from costeff_fast.modeling import CostEffForSequenceClassification

from .common import positive_int, refuse

NAME = "info"
HELP = "print a COST-EFF checkpoint's widths per layer, parameters, FLOPs, threshold and labels"

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = (
        "Print what a COST-EFF checkpoint holds, read from its config.json and tokenizer files (the weights are\n"
        "not loaded): the attention heads, attention width and FFN width of every layer with its parameters and\n"
        "its matmul FLOPs per token, what each exit reads, the parameter counts, the FLOPs of one row at full\n"
        "depth, the stored entropy threshold, the labels and the longest row the engine takes.\n\n"
        "FLOPs count 2 x multiply-adds of the matmuls (costeff_fast/flops.py): per token of a row of --seq-len\n"
        "tokens, attention included (its share grows with the row's length); softmax, GELU, LayerNorm and\n"
        "the embedding gather are not counted.")
    parser.epilog = ("A directory that is not a COST-EFF checkpoint prints one 'costeff-fast: error:' line and\n"
                     "exits with status 2 (-v adds the traceback).")
    parser.add_argument("model", type=Path, metavar="DIR", help="a COST-EFF checkpoint directory")
    parser.add_argument("--seq-len", type=positive_int, default=None,
                        help="row length in tokens the FLOPs are counted at (default 128, the paper's padded length, "
                             "or the checkpoint's max length when that is shorter)")
    parser.add_argument("--json", action="store_true", help="print the same facts as one JSON object")


def checkpoint_info(directory: str | Path, seq_len: int | None = None) -> dict:
    """The facts ``info`` prints, as a JSON-ready dict.

    Args:
        directory: a COST-EFF checkpoint directory (``config.json``; tokenizer files optional).
        seq_len: row length in tokens the FLOPs are counted at (int >= 1); None: 128 (the paper's padded
            length) or ``max_length`` when shorter.

    Returns:
        ``layers`` (one dict per layer: 1-based ``layer``, ``heads``, ``attention_width`` = heads x head size,
        ``ffn``, ``parameters``, ``flops_per_token`` at ``seq_len``, ``exit`` = what the exit reads and
        ``exit_flops`` per row), ``parameters`` (``total``, ``encoder``, ``embeddings``, ``exits``),
        ``flops_per_row`` (one row of ``seq_len`` tokens through every layer and exit), ``entropy_threshold``
        (as stored: None, a float or one per layer; nats) and ``entropy_threshold_per_layer`` (the rule's
        resolution), ``labels`` (id -> name), ``max_length`` and the model's sizes.

    Raises:
        FileNotFoundError: no ``config.json``.
        CheckpointError: not a COST-EFF checkpoint, or a config or tokenizer that cannot be loaded.
    """
    config = load_config(directory)
    logger.debug("read %s", Path(directory) / "config.json")
    tokenizer = load_tokenizer(directory, config)
    limits = {"max_position_embeddings": config.max_position_embeddings}
    if tokenizer is not None and tokenizer.model_max_length:
        limits["tokenizer"] = int(min(tokenizer.model_max_length, 1 << 30))
    seq_len = min(128, *limits.values()) if seq_len is None else seq_len
    with torch.device("meta"):  # shapes only: no memory, no weights read
        model = CostEffForSequenceClassification(config)
    counts = parameter_counts(model)
    embeddings = sum(p.numel() for p in model.embeddings.parameters())
    exits = sum(p.numel() for p in model.exits.parameters())
    layers = []
    for index, (layer, exit_head) in enumerate(zip(model.layers, model.exits)):
        pooled = "pooler + " + config.exit_pooler_activation if exit_head.dense is not None else "tanh"
        layers.append({
            "layer": index + 1,
            "heads": config.num_attention_heads[index],
            "attention_width": config.all_head_sizes[index],
            "ffn": config.intermediate_size[index],
            "parameters": sum(p.numel() for p in layer.parameters()),
            "flops_per_token": layer_flops(config, index, seq_len) / seq_len,
            "exit": f"{exit_head.pooling} -> {pooled}",
            "exit_flops": exit_flops(config, index),
        })
    return {
        "model": str(directory),
        "num_hidden_layers": config.num_hidden_layers,
        "hidden_size": config.hidden_size,
        "attention_head_size": config.attention_head_size,
        "vocab_size": config.vocab_size,
        "embedding_rank": config.embedding_rank,
        "layers": layers,
        "parameters": {"total": counts["total"], "encoder": counts["encoder"], "embeddings": embeddings,
                       "exits": exits},
        "seq_len": seq_len,
        "flops_per_row": model_flops(config, [seq_len]),
        "entropy_threshold": config.entropy_threshold,
        "entropy_threshold_per_layer": resolve_entropy_threshold(None, config),
        "labels": {int(k): v for k, v in sorted(config.id2label.items(), key=lambda item: int(item[0]))},
        "max_length": min(limits.values()),
        "max_length_limits": limits,
        "tokenizer": tokenizer is not None,
    }


def format_info(info: dict) -> str:
    """``info`` as the plain-text report ``costeff-fast info`` prints."""
    rank = info["embedding_rank"]
    threshold = info["entropy_threshold"]
    if threshold is None:
        threshold_line = f"none stored: every row runs to layer {info['num_hidden_layers']} (0.0)"
    elif isinstance(threshold, (int, float)):
        threshold_line = f"{threshold:.4f} nats at every exit"
    else:
        threshold_line = "per exit " + ", ".join(f"{value:.4f}" for value in threshold) + " nats"
    limits = info["max_length_limits"]
    source = " and ".join(f"{name} {value}" for name, value in limits.items())
    params = info["parameters"]
    lines = [
        f"{info['model']}: COST-EFF classifier, {info['num_hidden_layers']} layers, hidden {info['hidden_size']}, "
        f"head size {info['attention_head_size']}, vocabulary {info['vocab_size']}"
        + (f" (word embedding factorized to rank {rank})" if rank else ""),
        "labels: " + ", ".join(f"{index} {name}" for index, name in info["labels"].items()),
        f"entropy threshold: {threshold_line}",
        f"max length: {info['max_length']} tokens (the least of {source})"
        + ("" if info["tokenizer"] else "; no tokenizer files"),
        f"parameters: {params['total']:,} ({params['encoder']:,} in the layers, {params['embeddings']:,} in the "
        f"embeddings, {params['exits']:,} in the exits)",
        f"FLOPs of one row of {info['seq_len']} tokens through every layer and exit: {info['flops_per_row'] / 1e6:,.1f} M",
        "",
        f"{'layer':>5}  {'heads':>5}  {'attention':>9}  {'FFN':>6}  {'parameters':>10}  "
        f"{'MFLOPs/token':>12}  exit (reads -> head; FLOPs/row)",
    ]
    for layer in info["layers"]:
        lines.append(f"{layer['layer']:>5}  {layer['heads']:>5}  {layer['attention_width']:>9}  {layer['ffn']:>6}  "
                     f"{layer['parameters']:>10,}  {layer['flops_per_token'] / 1e6:>12.3f}  "
                     f"{layer['exit']}; {layer['exit_flops']:,}")
    lines.append(f"(MFLOPs per token of a {info['seq_len']}-token row, attention included; --seq-len changes it)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> None:
    try:
        info = checkpoint_info(args.model, seq_len=args.seq_len)
    except (FileNotFoundError, ValueError) as error:
        refuse(error)
    print(json.dumps(info, indent=2) if args.json else format_info(info))

"""``costeff-fast info``: what a COST-EFF checkpoint holds (widths per layer, parameters, FLOPs, threshold, labels),
or what a predict job did (its ``_manifest.json``: rows, speed, exit layers, the agreement audit) with a PNG."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from costeff_fast.checkpoint import load_config, load_tokenizer
from costeff_fast.config import resolve_entropy_threshold
from costeff_fast.jobs.shards import ERRORS, MANIFEST
from costeff_fast.flops import exit_flops, layer_flops, model_flops, parameter_counts
from costeff_fast.modeling import CostEffForSequenceClassification

from .common import positive_int, refuse

NAME = "info"
HELP = ("print a COST-EFF checkpoint's widths per layer, parameters, FLOPs, threshold and labels, or a predict job's "
        "summary and audit")
#: the figure ``info`` writes for a job's output directory, unless --plot says where
JOB_PLOT = "_summary.png"

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
        "the embedding gather are not counted.\n\n"
        "Given a predict job's output directory (it holds _manifest.json), print what the job did instead: rows\n"
        "written and failed, truncated rows, speed, backend and threads, the exit-layer histogram and the\n"
        "agreement audit (--audit-rate), and draw them into OUT/_summary.png (--plot).")
    parser.epilog = ("A directory that is not a COST-EFF checkpoint prints one 'costeff-fast: error:' line and\n"
                     "exits with status 2 (-v adds the traceback).")
    parser.add_argument("model", type=Path, metavar="DIR",
                        help="a COST-EFF checkpoint directory, or a predict job's output directory")
    parser.add_argument("--plot", type=Path, default=None, metavar="PNG",
                        help=f"job output only: where the figure goes (default DIR/{JOB_PLOT})")
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


def read_job(directory: str | Path) -> dict:
    """A predict job's ``_manifest.json`` (:mod:`costeff_fast.jobs.shards`).

    Raises:
        FileNotFoundError: no manifest there.
        ValueError: the manifest is unreadable or has no ``summary`` (written by an older costeff_fast).
    """
    path = Path(directory) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except ValueError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    if "summary" not in manifest:
        raise ValueError(f"{path}: has no job summary (written before costeff_fast recorded one); rerun the job "
                         f"to get it")
    return manifest


def format_job(manifest: dict, directory: str | Path) -> str:
    """A job's manifest as the plain-text report ``costeff-fast info OUT`` prints."""
    totals, summary, job = manifest["totals"], manifest["summary"], manifest["job"]
    state = "complete" if manifest["complete"] else f"stopped at row {manifest['next_row']:,} (--resume continues)"
    speed = summary["rows_per_second"]
    lines = [
        f"{directory}: {manifest['engine']} predict job, {state}",
        f"model: {job['model']['path']}",
        f"rows: {totals['rows']:,} read, {totals['written']:,} written, {totals['failed']:,} failed"
        + (f" (reasons in {ERRORS})" if totals["failed"] else "")
        + f", {summary['truncated']:,} truncated to the model's max length",
        f"speed: {speed:,.0f} rows/s over {summary['seconds']:.1f} s" if speed else "speed: no rows run",
        f"ran on: backend {summary['backend']}, {summary['num_threads']} threads, device {summary['device']}",
    ]
    histogram = summary["exit_layer_histogram"]
    written = sum(histogram)
    if written:
        mean = sum((i + 1) * n for i, n in enumerate(histogram)) / written
        lines.append(f"exit layers (mean {mean:.2f} of {len(histogram)}):")
        lines += [f"  {i + 1:>3}  {n:>10,}  {n / written:6.1%}  " + "#" * round(40 * n / written)
                  for i, n in enumerate(histogram)]
    audit = manifest.get("audit")
    if audit is None:
        lines.append("audit: off (--audit-rate R runs a sample of the rows again at full depth)")
        return "\n".join(lines)
    level = f"{audit['confidence']:.0%}"
    lines.append(f"audit: {audit['rows']:,} rows (rate {audit['rate']}, seed {audit['seed']})"
                 + (f", {audit['rows_per_second']:,.0f} rows/s" if audit["rows_per_second"] else ""))

    def agreement(share) -> str:
        if share is None or share["agreement"] is None:
            return "-"
        low, high = share["interval"]
        return f"{share['agreement']:.4f} [{low:.3f}, {high:.3f}]"

    lines.append(f"  agreement with full depth: {agreement(audit['full_depth'])} ({level} Wilson interval)")
    if audit["teacher_agreement"] is not None:
        lines.append(f"  agreement with the teacher {audit['teacher']}: {agreement(audit['teacher_agreement'])}")
    lines.append(f"  {'layer':>5}  {'rows':>7}  {'full depth':>24}" + ("  teacher" if audit["teacher"] else ""))
    for entry in audit["per_exit_layer"]:
        lines.append(f"  {entry['exit_layer']:>5}  {entry['rows']:>7,}  {agreement(entry['full_depth']):>24}"
                     + (f"  {agreement(entry['teacher'])}" if audit["teacher"] else ""))
    return "\n".join(lines)


def plot_job(manifest: dict, path: str | Path) -> Path:
    """Draw a job's exit-layer histogram and, with an audit, its agreement per exit layer (Wilson intervals as
    error bars) into a PNG at ``path``; return the path. A standalone :class:`matplotlib.figure.Figure` (no
    pyplot, no global backend change)."""
    from matplotlib.figure import Figure  # matplotlib loads only when a figure is drawn

    histogram = manifest["summary"]["exit_layer_histogram"]
    layers = list(range(1, len(histogram) + 1))
    audit = manifest.get("audit")
    figure = Figure(figsize=(9 if audit else 5, 3.6), layout="constrained")
    axes = figure.subplots(1, 2 if audit else 1, squeeze=False)[0]
    axes[0].bar(layers, histogram, color="#4c72b0")
    axes[0].set(xlabel="exit layer", ylabel="rows", title=f"exit layers ({sum(histogram):,} rows)", xticks=layers)
    if audit:
        ax = axes[1]
        for key, label, offset, color in (("full_depth", "full depth", -0.1, "#4c72b0"),
                                          ("teacher", "teacher", 0.1, "#dd8452")):
            points = [(e["exit_layer"], e[key]) for e in audit["per_exit_layer"]
                      if e[key] is not None and e[key]["agreement"] is not None]
            if not points:
                continue
            xs = [x + offset for x, _ in points]
            ys = [share["agreement"] for _, share in points]
            errors = [[y - share["interval"][0] for y, (_, share) in zip(ys, points)],
                      [share["interval"][1] - y for y, (_, share) in zip(ys, points)]]
            ax.errorbar(xs, ys, yerr=errors, fmt="o", capsize=3, color=color, label=f"agreement with {label}")
        ax.set(xlabel="exit layer", ylabel="agreement", xticks=layers, ylim=(None, 1.01),
               title=f"audit: {audit['rows']:,} rows, {audit['confidence']:.0%} Wilson intervals")
        ax.legend(loc="lower right")
    figure.savefig(path, dpi=100)
    return Path(path)


def run(args: argparse.Namespace) -> None:
    if (args.model / MANIFEST).is_file():
        try:
            manifest = read_job(args.model)
        except (OSError, ValueError) as error:
            refuse(error)
        if args.json:
            print(json.dumps({key: manifest.get(key) for key in ("engine", "complete", "totals", "summary", "audit")},
                             indent=2))
        else:
            print(format_job(manifest, args.model))
        if manifest["summary"]["exit_layer_histogram"]:
            print(f"figure: {plot_job(manifest, args.plot or args.model / JOB_PLOT)}")
        return
    try:
        info = checkpoint_info(args.model, seq_len=args.seq_len)
    except (FileNotFoundError, ValueError) as error:
        refuse(error)
    print(json.dumps(info, indent=2) if args.json else format_info(info))

"""The GPU check's payload: a trained COST-EFF checkpoint and its rt validation rows, small enough to carry.

The GPU machine has no ``datasets``, no network and only the working tree plus up to 64 MiB of named ignored
paths, so the real checkpoint and its evaluation rows travel as files. Build the payload here (CPU, where
``costeff_fast.data`` works)::

    python bench/make_gpu_payload.py --model /path/to/costeff/checkpoint --out bench/gpu_payload

and carry ``bench/gpu_payload`` (ignored by git) with ``bash bench/gpu_check.sh "$OUT"``. The folder holds:

* ``config.json`` + ``model.safetensors``: the checkpoint with fp16 weights (the triton backend stores fp16 on
  the GPU anyway; the fp32 reference is run from the same fp16 values cast back to fp32);
* the tokenizer files ``save_pretrained`` writes (``tokenizer.json``, ``tokenizer_config.json``);
* ``rt_validation.jsonl``: one ``{"text": str, "label": int}`` per line, the whole rt validation split
  (1,276 rows) in ``costeff_fast.data`` order;
* ``manifest.json``: source, row count, label names, each file's size in bytes and the total, and the
  calibrated accuracy and exit layers the checkpoint's ``report.json`` recorded on the CPU (when it has one).

This module owns the format: :func:`write_payload` writes it, :func:`load_payload` (used by ``bench/gpu_check.py``
and ``bench/bench_gpu.py``) reads it; neither imports ``datasets`` (only :func:`main` does, through
``costeff_fast.data``).
"""

from __future__ import annotations

import argparse
import json
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

DEFAULT_OUT = Path(__file__).resolve().parent / "gpu_payload"
ROWS_FILE = "rt_validation.jsonl"
MANIFEST_FILE = "manifest.json"
MAX_BYTES = 48 * 2**20  # the carry limit is 64 MiB for everything; leave room for the rest


@dataclass
class Payload:
    """A loaded payload.

    Attributes:
        directory: the payload folder.
        model: the checkpoint as a :class:`~costeff_fast.modeling.CostEffForSequenceClassification`, fp32 on the
            CPU, eval mode (its weights are the fp16 values of the payload).
        tokenizer: its fast tokenizer.
        texts, labels: the rt validation rows (labels are class indices).
        manifest: the contents of ``manifest.json``.
    """

    directory: Path
    model: torch.nn.Module
    tokenizer: object
    texts: list[str]
    labels: list[int]
    manifest: dict


def write_payload(model_dir, out, texts: list[str], labels: list[int], label_names: list[str], source: str) -> dict:
    """Write the payload of the checkpoint in ``model_dir`` and the rows ``texts``/``labels`` into ``out``.

    Args:
        model_dir: a COST-EFF checkpoint directory (config, weights, tokenizer files).
        out: the payload folder (created; files of the same names are replaced).
        texts, labels: the evaluation rows (``labels`` as class indices in ``[0, num_labels)``).
        label_names: the class names, for the manifest.
        source: where the rows come from, for the manifest (e.g. ``costeff_fast.data rt validation``).

    Returns:
        the manifest (also written as ``manifest.json``), with ``files`` (bytes per file) and ``total_bytes``.

    Raises:
        ValueError: texts and labels of different lengths, a label outside the model's classes, weights that
            overflow fp16, or a payload over ``MAX_BYTES`` (48 MiB).
    """
    from transformers import AutoTokenizer

    from costeff_fast import CostEffForSequenceClassification

    if len(texts) != len(labels):
        raise ValueError(f"got {len(texts)} texts but {len(labels)} labels; pass one label per text")
    model = CostEffForSequenceClassification.from_pretrained(model_dir).eval()
    num_labels = model.config.num_labels
    bad = [label for label in labels if not 0 <= int(label) < num_labels]
    if bad:
        raise ValueError(f"labels must lie in [0, num_labels={num_labels}), got {bad[0]}")
    model = model.to(torch.float16)
    overflow = [name for name, tensor in model.state_dict().items() if not torch.isfinite(tensor).all()]
    if overflow:
        raise ValueError(f"weights overflow fp16 (first: {overflow[0]}); this checkpoint cannot travel as fp16")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    with open(out / ROWS_FILE, "w", encoding="utf-8") as rows:
        for text, label in zip(texts, labels):
            rows.write(json.dumps({"text": text, "label": int(label)}, ensure_ascii=False) + "\n")
    import transformers

    manifest = {
        "checkpoint": str(Path(model_dir).resolve()),
        "rows_source": source,
        "rows": len(texts),
        "label_names": list(label_names),
        "weights_dtype": "float16",
        "entropy_threshold": model.config.entropy_threshold,
        "built_with": {"python": platform.python_version(), "torch": torch.__version__,
                       "transformers": transformers.__version__},
    }
    report = Path(model_dir) / "report.json"
    if report.is_file():  # what `costeff-fast compress` measured on the CPU, for comparison (its own max_length)
        chosen = json.loads(report.read_text()).get("calibration", {}).get("chosen", {})
        manifest["compress_report"] = {key: chosen[key] for key in ("accuracy", "mean_exit_layer", "exit_layer_counts")
                                       if key in chosen}
    files = sorted(p for p in out.iterdir() if p.is_file() and p.name != MANIFEST_FILE)
    manifest["files"] = {p.name: p.stat().st_size for p in files}
    manifest["total_bytes"] = sum(manifest["files"].values())
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    if manifest["total_bytes"] > MAX_BYTES:
        raise ValueError(
            f"payload is {manifest['total_bytes'] / 2**20:.1f} MiB, over {MAX_BYTES / 2**20:.0f} MiB "
            f"(the GPU machine takes 64 MiB of carried files); use a smaller checkpoint"
        )
    return manifest


def load_payload(directory) -> Payload:
    """Read a payload folder written by :func:`write_payload` (imports no ``datasets``).

    Raises:
        FileNotFoundError: the folder or one of its files is missing (build it with this script).
    """
    from transformers import AutoTokenizer

    from costeff_fast import CostEffForSequenceClassification

    directory = Path(directory)
    for name in (MANIFEST_FILE, ROWS_FILE, "config.json", "model.safetensors"):
        if not (directory / name).is_file():
            raise FileNotFoundError(
                f"{directory / name} not found; build the payload with "
                f"`python bench/make_gpu_payload.py --model CHECKPOINT --out {directory}`"
            )
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    model = CostEffForSequenceClassification.from_pretrained(directory).float().eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    rows = [json.loads(line) for line in (directory / ROWS_FILE).read_text(encoding="utf-8").splitlines() if line]
    return Payload(directory, model, tokenizer, [row["text"] for row in rows], [int(row["label"]) for row in rows],
                   manifest)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path, help="trained COST-EFF checkpoint directory (rt)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"payload folder (default {DEFAULT_OUT})")
    parser.add_argument("--rows", type=int, default=None, help="first N validation rows only (default: all)")
    args = parser.parse_args(argv)
    from costeff_fast.data import load_task

    validation = load_task("rt")["validation"]
    texts, labels = list(validation["text"]), list(validation["label"])
    if args.rows is not None:
        texts, labels = texts[: args.rows], labels[: args.rows]
    manifest = write_payload(args.model, args.out, texts, labels, validation.features["label"].names,
                             "costeff_fast.data.load_task('rt')['validation']")
    sizes = ", ".join(f"{name} {size / 2**20:.2f} MiB" for name, size in manifest["files"].items())
    print(f"wrote {args.out}: {manifest['rows']} rows; {sizes}; total {manifest['total_bytes'] / 2**20:.2f} MiB")
    return manifest


if __name__ == "__main__":
    main()

"""Hugging Face ``pipeline("text-classification")`` on a COST-EFF checkpoint against ``generate_logits``, same rows.

    python bench/bench_hf_pipeline.py                      # the packaged MiniLM converted, rt validation rows
    python bench/bench_hf_pipeline.py --model runs/rt-quick-uniform --threads 2

Contenders, timed interleaved in one process on the same rows (docs/design.md, Measuring speed), median of
``--repeats``:

* ``generate_logits``: ``costeff_fast.from_pretrained(dir)`` (backend auto), ``--batch-size`` rows per call;
* ``pipeline, batch_size=B``: ``pipeline("text-classification", model=dir, batch_size=B)``: the engine model the
  Auto classes load (:class:`costeff_fast.CostEffEngineForSequenceClassification`), rows padded by the pipeline;
* ``pipeline, batch_size=1``: the same pipeline called as HF's default does, one row per forward;
* ``reference pipeline, batch_size=1``: the pipeline over the reference padded model (every layer and exit), what
  ``pipeline`` ran before the engine model was registered (one row per forward: with ``batch_size`` > 1 the
  pipeline cannot split the reference output's ``exit_logits`` tuple into rows and raises an IndexError).

Without ``--model`` the packaged MiniLM is converted with ``from_encoder_classifier`` (full width, random exits,
no stored threshold: every row runs to the last layer) and saved with its tokenizer in a temporary directory.
Writes ``--output`` (JSON: machine, versions, rows/s of each contender, label agreement with generate_logits).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

sys.path.insert(0, str(Path(__file__).resolve().parent))

import costeff_fast  # noqa: E402  (registers the Auto classes)
from costeff_fast import CostEffForSequenceClassification  # noqa: E402
from costeff_fast.data import load_task  # noqa: E402
from costeff_fast.training.data import packaged_minilm_dir  # noqa: E402
from workloads import interleaved_seconds, mm_peak_gflops  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None,
                        help="a COST-EFF checkpoint directory (default: the packaged MiniLM converted, full depth)")
    parser.add_argument("--rows", type=int, default=None, help="first N rt validation rows (default: all)")
    parser.add_argument("--batch-size", type=int, default=64, help="rows per call (default 64)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per contender (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--output", type=Path, default=Path("bench/results/hf_pipeline.json"))
    return parser.parse_args(argv)


def lscpu_model() -> str:
    """``Model name`` as ``lscpu`` prints it."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")),
                "unknown")


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    texts = list(load_task("rt")["validation"]["text"])[: args.rows]
    with tempfile.TemporaryDirectory() as scratch:
        directory = args.model or wl.converted_minilm(Path(scratch) / "minilm-costeff")
        engine = costeff_fast.from_pretrained(directory)
        classifier = pipeline("text-classification", model=str(directory))
        reference = pipeline("text-classification", model=CostEffForSequenceClassification.from_pretrained(directory),
                             tokenizer=AutoTokenizer.from_pretrained(directory))
        batches = [texts[i: i + args.batch_size] for i in range(0, len(texts), args.batch_size)]
        contenders = {
            "generate_logits": lambda: [engine.generate_logits(batch) for batch in batches],
            f"pipeline, batch_size={args.batch_size}": lambda: classifier(texts, batch_size=args.batch_size),
            "pipeline, batch_size=1": lambda: classifier(texts, batch_size=1),
            "reference pipeline, batch_size=1": lambda: reference(texts, batch_size=1),
        }
        seconds = interleaved_seconds(contenders, args.repeats)
        expected = torch.cat([engine.generate_logits(batch) for batch in batches]).argmax(dim=-1).tolist()
        label2id = classifier.model.config.label2id
        agreement = {name: sum(label2id[a["label"]] == e for a, e in zip(run(), expected)) / len(texts)
                     for name, run in (("pipeline", lambda: classifier(texts, batch_size=args.batch_size)),
                                       ("reference pipeline", lambda: reference(texts, batch_size=1)))}
        results = {
            "cpu": lscpu_model(),
            "threads": torch.get_num_threads(),
            "load_average_1min": round(os.getloadavg()[0], 2),  # other jobs on the machine while it ran
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "mm_peak_gflops": round(mm_peak_gflops(), 1),
            "model": str(args.model) if args.model else "packaged MiniLM-L6 converted (full width, full depth)",
            "backend": engine.backend.name,
            "entropy_threshold": engine.entropy_threshold,
            "rows": len(texts),
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "rows_per_second": {name: round(len(texts) / s, 1) for name, s in seconds.items()},
            "vs_generate_logits": {name: round(seconds["generate_logits"] / s, 3) for name, s in seconds.items()},
            "label_agreement_with_generate_logits": agreement,
            "command": "python bench/bench_hf_pipeline.py " + " ".join(sys.argv[1:] if argv is None else argv),
        }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"{results['cpu']}, {results['threads']} threads, torch {results['torch']}, backend {results['backend']}, "
          f"{len(texts)} rt validation rows")
    for name, rate in results["rows_per_second"].items():
        print(f"  {name:<34} {rate:>8.1f} rows/s  ({results['vs_generate_logits'][name]:.2f}x generate_logits)")
    print(f"label agreement with generate_logits: {agreement}")
    return results


if __name__ == "__main__":
    main()

"""``costeff-fast predict`` (the batch job: read a file, classify, write shards) next to ``generate_logits`` on the
same rows: the rt validation split, every contender in one process, interleaved repeats, medians.

Usage (from the repository root)::

    python bench/bench_predict.py --model runs/rt-uniform        # a trained checkpoint (its calibrated threshold)
    python bench/bench_predict.py                                # no checkpoint: the packaged MiniLM converted

Without ``--model`` the model is the packaged MiniLM converted with
``costeff_fast.convert.from_encoder_classifier`` (full width, untrained exits, no stored threshold,
so every row runs all 6 layers): speed only, said so in the output.

Contenders, each over all rows, timed wall-clock:

* ``generate_logits``: the rows in memory, ``batch_size`` strings per call (tokenization included);
* ``generate_logits_stream``: the same rows through the streaming scheduler, which the job uses;
* ``predict job``: :func:`costeff_fast.jobs.run_predict` on a Parquet file of the rows (model load, reading,
  validation, classification, writing shards and manifest), as ``costeff-fast predict`` runs it minus the
  interpreter start; ``predict job minus load`` subtracts the median ``from_pretrained`` time.

Prints one JSON object (CPU model as ``lscpu`` gives it, threads, torch version, rows, mean exit layer, rows/s
of each contender and the ratios to ``generate_logits``); ``--json PATH`` also writes it.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

import costeff_fast
import workloads as wl  # bench/ is sys.path[0] when run as a script
from costeff_fast.data import load_task
from costeff_fast.jobs import run_predict


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None,
                        help="a COST-EFF checkpoint directory (default: the packaged MiniLM converted, untrained)")
    parser.add_argument("--batch-size", type=int, default=64, help="rows per call / per layer call (default 64)")
    parser.add_argument("--backend", default="auto", help="engine backend (default auto)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (median reported; default 3)")
    parser.add_argument("--json", type=Path, default=None, help="also write the result to this file")
    return parser.parse_args(argv)


def cpu_model() -> str:
    """``Model name`` as ``lscpu`` prints it, else the architecture."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.machine()
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")),
                platform.machine())


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    split = load_task("rt")["validation"]
    texts, gold = list(split["text"]), list(split["label"])
    gold_names = split.features["label"].names
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        model_dir = args.model or wl.converted_minilm(scratch / "minilm-costeff")
        source = scratch / "rt-validation.parquet"
        pq.write_table(pa.table({"text": texts}), source)
        model = costeff_fast.from_pretrained(model_dir, backend=args.backend)
        model.generate_logits(texts[: args.batch_size])  # warm-up (native kernels loaded, allocator primed)

        def batched():
            return [model.generate_logits(texts[i:i + args.batch_size], return_exit_layers=True)
                    for i in range(0, len(texts), args.batch_size)]

        def streamed():
            return list(model.generate_logits_stream(texts, batch_size=args.batch_size))

        def job(repeat=[0]):  # noqa: B006  (a fresh output directory per run)
            repeat[0] += 1
            return run_predict(model_dir, source, scratch / f"out{repeat[0]}", batch_size=args.batch_size,
                               backend=args.backend, progress=False)

        def load():
            return costeff_fast.from_pretrained(model_dir, backend=args.backend)

        times = {"generate_logits": [], "generate_logits_stream": [], "predict job": [], "from_pretrained": []}
        for _ in range(args.repeats):  # interleaved: A B C D A B C D ...
            times["generate_logits"].append(timed(batched))
            times["generate_logits_stream"].append(timed(streamed))
            times["predict job"].append(timed(job))
            times["from_pretrained"].append(timed(load))
        median = {name: statistics.median(values) for name, values in times.items()}
        median["predict job minus load"] = median["predict job"] - median["from_pretrained"]

        results = batched()
        logits, layers = torch.cat([r[0] for r in results]), torch.cat([r[1] for r in results])
        output = pq.read_table(sorted((scratch / "out1").glob("part-*"))[0])
        names = [model.config.id2label[i] for i in range(model.config.num_labels)]
        agree = sum(a == names[b] for a, b in zip(output["label"].to_pylist(), logits.argmax(-1).tolist()))
        result = {
            "cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "backend": model.backend.name, "batch_size": args.batch_size, "repeats": args.repeats,
            "model": str(args.model) if args.model else "packaged MiniLM converted by from_encoder_classifier "
                                                          "(untrained exits, full depth): speed only",
            "rows": len(texts), "mean_exit_layer": round(layers.float().mean().item(), 3),
            "num_layers": model.config.num_hidden_layers, "entropy_threshold": model.entropy_threshold,
            "predict_labels_equal_generate_logits": f"{agree}/{len(texts)}",
            "seconds": {name: round(value, 4) for name, value in median.items()},
            "rows_per_second": {name: round(len(texts) / value, 1) for name, value in median.items()
                                if name != "from_pretrained"},
        }
        if set(names) == set(gold_names):
            predicted = output["label"].to_pylist()
            result["accuracy"] = round(sum(p == gold_names[g] for p, g in zip(predicted, gold)) / len(gold), 4)
        base = result["rows_per_second"]["generate_logits"]
        result["ratio_to_generate_logits"] = {name: round(value / base, 3)
                                              for name, value in result["rows_per_second"].items()}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    sys.exit(main() and 0)

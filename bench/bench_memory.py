"""Peak resident memory of batch inference as the number of rows grows (bounded memory, issue "reliability").

Each measurement runs in a fresh subprocess so ``ru_maxrss`` (the process's peak RSS) belongs to that workload
alone. The model has the COST-EFF shape of the runs of record (MiniLM-L6 geometry: hidden 384, 6 layers, 2 heads
of 32, FFN 160, embedding rank 128) with random weights and the packaged MiniLM tokenizer; rows are rt texts
cycled to the requested count. Workloads:

* ``stream``: ``generate_logits_stream`` over a generator of N rows (batch 64), results discarded as they come;
* ``call``: one ``generate_logits`` call on N rows (split internally into ``max_batch_tokens`` chunks);
* ``call-unsplit``: the same call with ``max_batch_tokens`` above the call's token count (the old behaviour);
* ``predict``: the batch job (``costeff_fast.jobs.predict.run_predict``) from a Parquet file of N rows to shards.

Usage::

    python bench/bench_memory.py                      # stream at 20k and 200k rows, call at 20k; prints JSON
    python bench/bench_memory.py --out bench/results/memory.json

Prints, per workload and N: peak RSS after loading and warming up (MiB), peak RSS at the end (MiB), the
growth, rows/s, and the CPU model.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def build_checkpoint(directory: Path) -> None:
    import torch
    from transformers import AutoTokenizer

    from costeff_fast import CostEffConfig, CostEffForSequenceClassification
    from costeff_fast.training.data import packaged_minilm_dir

    torch.manual_seed(0)
    config = CostEffConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=2,
                           attention_head_size=32, intermediate_size=160, embedding_rank=128, num_labels=2,
                           exit_pooling="mean", exit_pooler=[False] * 5 + [True], entropy_threshold=0.45)
    model = CostEffForSequenceClassification(config).eval()
    with torch.no_grad():
        for head in model.exits:  # spread the exits' confidence so rows leave at several layers
            head.classifier.weight.normal_(0, 0.5)
    model.save_pretrained(directory)
    tokenizer = AutoTokenizer.from_pretrained(packaged_minilm_dir())
    tokenizer.model_max_length = 64
    tokenizer.save_pretrained(directory)


_WRITE_INPUT = """
import itertools, sys
import pyarrow as pa, pyarrow.parquet as pq
from costeff_fast.data import load_task
texts = list(load_task("rt")["validation"]["text"])
rows = int(sys.argv[2])
pq.write_table(pa.table({"text": list(itertools.islice(itertools.cycle(texts), rows))}), sys.argv[1],
               row_group_size=16384)
"""


def child(directory: str, workload: str, rows: int) -> None:
    """Run one workload and print its JSON line (in a subprocess)."""
    import costeff_fast
    from costeff_fast.data import load_task

    texts = load_task("rt")["validation"]["text"]
    texts = list(texts)
    budget = 1 << 40 if workload == "call-unsplit" else costeff_fast.inference.DEFAULT_MAX_BATCH_TOKENS
    model = costeff_fast.from_pretrained(directory, max_batch_tokens=budget)
    model.generate_logits(texts[:64])
    before = peak_rss_mib()
    started = time.perf_counter()
    if workload == "predict":
        from costeff_fast.jobs.predict import run_predict

        work = Path(tempfile.mkdtemp(prefix="bench-memory-"))
        # Written by a child of this process so the input table never counts in this process's peak; row groups
        # of 16,384 rows, as writers commonly produce (a reader holds one row group at a time).
        subprocess.run([sys.executable, "-c", _WRITE_INPUT, str(work / "input.parquet"), str(rows)], check=True)
        before = peak_rss_mib()
        started = time.perf_counter()
        summary = run_predict(directory, work / "input.parquet", work / "out", batch_size=64, progress=False)
        assert summary.rows == rows, summary
    elif workload == "stream":
        count = 0
        for _ in model.generate_logits_stream(itertools.islice(itertools.cycle(texts), rows), batch_size=64):
            count += 1
        assert count == rows
    else:
        batch = list(itertools.islice(itertools.cycle(texts), rows))
        logits = model.generate_logits(batch)
        assert logits.shape[0] == rows
    seconds = time.perf_counter() - started
    after = peak_rss_mib()
    print(json.dumps({"workload": workload, "rows": rows, "peak_rss_mib_after_warmup": round(before, 1),
                      "peak_rss_mib_at_end": round(after, 1), "growth_mib": round(after - before, 1),
                      "rows_per_second": round(rows / seconds, 1)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="also write the results to this JSON file")
    parser.add_argument("--only", default=None, help="comma-separated workloads to run (default: all)")
    parser.add_argument("--child", nargs=3, metavar=("DIR", "WORKLOAD", "ROWS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return
    runs = [("stream", 20_000), ("stream", 200_000), ("call", 20_000), ("call-unsplit", 20_000),
            ("predict", 20_000), ("predict", 200_000)]
    if args.only:
        runs = [run for run in runs if run[0] in args.only.split(",")]
    results = []
    with tempfile.TemporaryDirectory() as directory:
        build_checkpoint(Path(directory))
        for workload, rows in runs:
            out = subprocess.run([sys.executable, __file__, "--child", directory, workload, str(rows)],
                                 capture_output=True, text=True, check=True).stdout
            results.append(json.loads(out.strip().splitlines()[-1]))
            print(json.dumps(results[-1]), flush=True)
    report = {"cpu": cpu_model(), "results": results}
    if args.out:
        if args.out.exists() and args.only:  # keep the other workloads' rows
            kept = [r for r in json.loads(args.out.read_text())["results"] if r["workload"] not in args.only.split(",")]
            report["results"] = kept + results
        args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

"""The agreement audit of ``costeff-fast predict`` measured: does its interval cover the truth, what does it cost, and
does a long job with the audit on stay flat in memory and near the speed of the bare stream.

Usage (from the repository root; ``make demo`` writes the checkpoint and teacher used by default)::

    python bench/bench_audit.py coverage --model work/demo/model --teacher work/demo/teacher
    python bench/bench_audit.py job --model work/demo/model --rows 1000000

``coverage``: on the rt validation split, the early-exit labels at several thresholds are compared with the
full-depth labels (and the teacher's) on *all* rows: the agreement the audit estimates. Then for ``--seeds``
seeds the audit's sample at ``--rate`` gives a Wilson 95 % interval; the fraction of seeds whose interval holds
the all-rows agreement is its coverage (nominal 0.95; sampling rows of a finite split without replacement makes
it slightly conservative). The audit's counting is the job's own (:class:`costeff_fast.audit.AuditCounts`); the
labels are computed once.

``job``: ``--rows`` rows (the rt training texts repeated) in a Parquet file, classified three ways in one process,
interleaved ``--repeats`` times (medians reported; the model is loaded anew for each repeat of the stream): ``generate_logits_stream`` alone (the job's engine, nothing read or written), the predict job without
the audit and with ``--audit-rate`` (default 0.01). Reports rows/s of each, the audit's share of the job's time,
and the job's peak RSS while its first and its last shard ran (sampled every 0.2 s by a thread reading
``/proc/self/status`` and the job's manifest).

Prints one JSON object (CPU model as ``lscpu`` gives it, torch threads, the figures); ``--json PATH`` also
writes it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

import costeff_fast
from bench_predict import cpu_model  # bench/ is sys.path[0] when run as a script
from costeff_fast.audit import AuditCounts, TeacherClassifier, audit_sample, wilson_interval
from costeff_fast.data import load_task
from costeff_fast.jobs import run_predict
from costeff_fast.jobs.predict import label_names
from costeff_fast.jobs.shards import MANIFEST


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["coverage", "job"])
    parser.add_argument("--model", type=Path, default=Path("work/demo/model"), help="a COST-EFF checkpoint")
    parser.add_argument("--teacher", type=Path, default=None, help="coverage: its teacher (HF directory)")
    parser.add_argument("--thresholds", default="0.3,0.5,0.6,calibrated,0.69",
                        help="coverage: entropy thresholds (nats; 'calibrated' = the checkpoint's)")
    parser.add_argument("--rate", type=float, default=None,
                        help="audit rate (default: 0.1 for coverage, about 107 of the 1,066 rows; 0.01 for job)")
    parser.add_argument("--seeds", type=int, default=400, help="coverage: samples drawn (default 400)")
    parser.add_argument("--rows", type=int, default=1_000_000, help="job: rows in the job (default 1,000,000)")
    parser.add_argument("--shard-rows", type=int, default=50_000, help="job: rows per shard (default 50,000)")
    parser.add_argument("--repeats", type=int, default=1, help="job: interleaved repeats, medians (default 1)")
    parser.add_argument("--json", type=Path, default=None, help="also write the result to this file")
    return parser.parse_args(argv)


def coverage(args) -> dict:
    model = costeff_fast.from_pretrained(args.model)
    split = load_task("rt")["validation"]
    texts = list(split["text"])
    full = model.predict(texts, entropy_threshold=0.0).numpy()
    teacher = TeacherClassifier(args.teacher, label_names(model)).predict(texts) if args.teacher else None
    rate = args.rate or 0.1
    rows = np.arange(len(texts))
    out = {"rows": len(texts), "rate": rate, "seeds": args.seeds,
           "teacher_accuracy": None if teacher is None else float((teacher == np.array(split["label"])).mean()),
           "thresholds": []}
    for entry in args.thresholds.split(","):
        tau = model.entropy_threshold if entry == "calibrated" else float(entry)
        logits, layers = model.generate_logits(texts, entropy_threshold=tau, return_exit_layers=True)
        early, layers = logits.argmax(-1).numpy(), layers.numpy()
        truth = {"full_depth": float((early == full).mean())}
        if teacher is not None:
            truth["teacher"] = float((early == teacher).mean())
        covered = {key: 0 for key in truth}
        widths = {key: [] for key in truth}
        sizes = []
        for seed in range(args.seeds):
            taken = audit_sample(rows, rate, seed)
            counts = AuditCounts(model.config.num_hidden_layers, teacher=teacher is not None)
            counts.add(early[taken], layers[taken], full[taken], None if teacher is None else teacher[taken])
            sizes.append(counts.rows)
            for key, agreeing in (("full_depth", counts.agree_full), ("teacher", counts.agree_teacher)):
                if key in truth:
                    low, high = wilson_interval(agreeing, counts.rows)
                    covered[key] += low <= truth[key] <= high
                    widths[key].append(high - low)
        out["thresholds"].append({
            "entropy_threshold": tau if isinstance(tau, float) else tau[0], "mean_exit_layer": float(layers.mean()),
            "agreement_all_rows": truth, "audited_rows_mean": float(np.mean(sizes)),
            "coverage": {key: covered[key] / args.seeds for key in truth},
            "interval_width_mean": {key: float(np.mean(widths[key])) for key in truth}})
        print(json.dumps(out["thresholds"][-1]), file=sys.stderr)
    return out


class RssByShard:
    """Peak resident memory (MiB) of this process per number of committed shards of a job's output."""

    def __init__(self, output: Path):
        self.output, self.peaks, self.done = output, {}, threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self):
        while not self.done.wait(0.2):
            try:
                shards = len(json.loads((self.output / MANIFEST).read_text())["shards"])
            except (OSError, ValueError, KeyError):
                continue
            rss = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS"))
            self.peaks[shards] = max(self.peaks.get(shards, 0), rss / 1024)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()


def job(args) -> dict:
    base = list(load_task("rt")["train"]["text"])
    texts = [base[i % len(base)] for i in range(args.rows)]
    rate = args.rate or 0.01
    work = Path(tempfile.mkdtemp(prefix="bench_audit_"))
    source = work / "rows.parquet"
    pq.write_table(pa.table({"text": texts}), source, row_group_size=10_000)
    result = {"rows": args.rows, "rate": rate, "shard_rows": args.shard_rows, "repeats": args.repeats}
    runs = {"generate_logits_stream": [], "job": [], "job_audited": []}
    for repeat in range(args.repeats):  # interleaved, so a change of the machine's load hits every contender
        model = costeff_fast.from_pretrained(args.model)
        started = time.perf_counter()
        layers = 0
        for _, _, layer in model.generate_logits_stream(texts, batch_size=64):
            layers += layer
        seconds = time.perf_counter() - started
        runs["generate_logits_stream"].append({"seconds": seconds, "rows_per_second": args.rows / seconds,
                                               "mean_exit_layer": layers / args.rows})
        del model
        for name, audit_rate in (("job", 0.0), ("job_audited", rate)):
            output = work / f"{name}-{repeat}"
            with RssByShard(output) as watch:
                started = time.perf_counter()
                summary = run_predict(args.model, source, output, shard_rows=args.shard_rows, progress=False,
                                      audit_rate=audit_rate)
                seconds = time.perf_counter() - started
            manifest = json.loads((output / MANIFEST).read_text())
            peaks = [watch.peaks[k] for k in sorted(watch.peaks) if k < len(manifest["shards"])]
            entry = {"seconds": seconds, "rows_per_second": args.rows / seconds,
                     "mean_exit_layer": summary.mean_exit_layer, "summary": manifest["summary"],
                     "peak_rss_mib_first_shard": peaks[0] if peaks else None,
                     "peak_rss_mib_last_shard": peaks[-1] if peaks else None}
            if manifest.get("audit"):
                audit = manifest["audit"]
                entry["audit"] = {"rows": audit["rows"], "full_depth": audit["full_depth"],
                                  "seconds": audit["seconds"], "share_of_job_time": audit["seconds"] / seconds}
            runs[name].append(entry)
        print(json.dumps({name: entries[-1]["rows_per_second"] for name, entries in runs.items()}), file=sys.stderr)
    result["runs"] = runs
    median = {name: statistics.median(e["rows_per_second"] for e in entries) for name, entries in runs.items()}
    result["median_rows_per_second"] = median
    result["audited_job_vs_stream"] = median["job_audited"] / median["generate_logits_stream"]
    result["audited_job_vs_job"] = median["job_audited"] / median["job"]
    result["audit_share_of_job_time"] = statistics.median(e["audit"]["share_of_job_time"] for e in runs["job_audited"])
    growth = [(e["peak_rss_mib_last_shard"] - e["peak_rss_mib_first_shard"]) / e["peak_rss_mib_first_shard"]
              for e in runs["job_audited"] if e["peak_rss_mib_first_shard"]]
    result["rss_growth_first_to_last_shard"] = max(growth) if growth else None
    return result


def main(argv=None) -> None:
    args = parse_args(argv)
    out = {"cpu": cpu_model(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
           "model": str(args.model)}
    out.update(coverage(args) if args.what == "coverage" else job(args))
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()

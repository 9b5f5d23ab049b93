"""int8 against fp32 in the engine (``from_pretrained(..., quantize="int8")``) on the rt validation rows: sentences/s at
the same thresholds and accuracy, in one process, fp32 and int8 interleaved, medians.

Usage (from the repository root)::

    python bench/bench_int8.py --model work/out/rt-standard-rec3-uniform --threads 2 --out int8.json
    python bench/bench_int8.py --model CKPT --teacher TEACHER_DIR --out int8.json  # also optimize(teacher)
    python bench/bench_int8.py --out int8.json        # no checkpoint: the packaged MiniLM converted
    python bench/bench_int8.py --model work/user-csv/out --csv work/user-csv/validation.csv \
        --text-column question --label-column question_type --threads 1 --out int8-trec.json  # other rows

Measured for the COST-EFF checkpoint, fp32 and int8 on the same backend (``--backend``, default ``auto``: the
native kernels), at threshold 0 (full depth) and at the checkpoint's calibrated threshold:

* ``engine``: sentences/s of ``generate_logits`` on pre-tokenized batches of ``--batch-size`` rows (tokenization not
  timed, as ``bench/run_cpu.py`` times the engine);
* ``from_strings``: the same with tokenization inside the call (what a user sees);
* accuracy on the rt labels, mean exit layer, share of rows whose label equals fp32's;
* one profiled pass per mode at threshold 0: the ops taking the most self time (where int8 saves and where not,
  the exit heads included).

``--csv`` replaces the rt validation rows by a CSV's (``--text-column``; ``--label-column`` holds label names of
the model's ``label2id``, or ids). With ``--teacher`` (a Hugging Face classifier directory, e.g. the rt teacher): ``optimize(teacher)`` fp32 and int8 on
padded batches, speed and accuracy. Without ``--model`` the COST-EFF model is the packaged MiniLM converted with
``from_encoder_classifier`` (untrained 2-label exits, no calibrated threshold): speed only, said so in the output.

Prints the CPU model (``lscpu``), its int8-relevant flags, threads, torch version and the load average before and
after (the numbers are only as good as the machine was quiet), then one JSON object, also written to ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

import costeff_fast
import workloads as wl  # bench/ is sys.path[0] when run as a script
from costeff_fast.data import load_task

MAX_LENGTH = 128  # tokens per sentence after truncation, as bench/run_cpu.py
INT8_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_int8")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None,
                        help="a COST-EFF checkpoint directory (default: the packaged MiniLM converted, untrained)")
    parser.add_argument("--teacher", type=Path, default=None,
                        help="also time optimize() of this Hugging Face classifier in fp32 and int8")
    parser.add_argument("--out", type=Path, required=True, help="write the JSON result here")
    parser.add_argument("--csv", type=Path, default=None, help="rows from this CSV instead of rt validation")
    parser.add_argument("--text-column", default="text", help="the CSV's text column (default text)")
    parser.add_argument("--label-column", default="label", help="the CSV's label column (default label)")
    parser.add_argument("--batch-size", type=int, default=64, help="rows per call (default 64)")
    parser.add_argument("--backend", default="auto", help="engine backend for both modes (default auto)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats, median reported (default 5)")
    return parser.parse_args(argv)


def cpu_description() -> dict:
    """``Model name`` as ``lscpu`` prints it (else the architecture) and which int8-relevant ISA flags it has."""
    model = platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")),
                     model)
    except (OSError, subprocess.CalledProcessError):
        pass
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            flags = set(next((line for line in info if line.startswith("flags")), "").split())
    except OSError:
        pass
    return {"model": model, "logical_cpus": os.cpu_count(), "int8_flags": {flag: flag in flags for flag in INT8_FLAGS}}


def interleaved(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each callable, run round-robin after one warm-up each (load changes hit all alike)."""
    for fn in fns.values():
        fn()
    times = defaultdict(list)
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def csv_rows(path: Path, text_column: str, label_column: str, model_dir: Path | None) -> tuple[list[str], torch.Tensor]:
    """Texts and label ids of a CSV; label names are mapped through the checkpoint's ``label2id``."""
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    label2id = {}
    if model_dir is not None:
        label2id = json.loads((model_dir / "config.json").read_text()).get("label2id", {})
    labels = [int(label2id[row[label_column]]) if row[label_column] in label2id else int(row[label_column])
              for row in rows]
    return [row[text_column] for row in rows], torch.tensor(labels)


def chunks(items: list, size: int) -> list[list]:
    return [items[start:start + size] for start in range(0, len(items), size)]


def top_ops(run, count: int = 8) -> list[dict]:
    """One profiled call of ``run``: the ``count`` ops with the most self CPU time (ms and share)."""
    from torch.profiler import profile

    with profile() as prof:
        run()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    return [{"op": e.key, "ms": round(e.self_cpu_time_total / 1e3, 1), "share": round(e.self_cpu_time_total / total, 3),
             "calls": e.count} for e in events[:count]]


def costeff_section(model_dir: Path, trained: bool, texts: list[str], labels: torch.Tensor, args) -> dict:
    """fp32 and int8 of one checkpoint at threshold 0 and its calibrated threshold: speed, accuracy, profile."""
    engines = {mode: costeff_fast.from_pretrained(model_dir, backend=args.backend, quantize=quantize,
                                                  num_threads=None)
               for mode, quantize in (("fp32", None), ("int8", "int8"))}
    tokenizer = engines["fp32"].tokenizer
    batches = [dict(tokenizer(rows, truncation=True, max_length=MAX_LENGTH)) for rows in chunks(texts, args.batch_size)]
    calibrated = engines["fp32"].entropy_threshold
    thresholds = {"0": 0.0}
    if any(tau > 0 for tau in calibrated):
        thresholds["calibrated"] = calibrated
    section = {"backend": {mode: engine.backend.name for mode, engine in engines.items()},
               "calibrated_threshold": calibrated, "thresholds": {}}
    for label, tau in thresholds.items():
        def engine_run(engine, tau=tau):
            return [engine.generate_logits(batch, entropy_threshold=tau, return_exit_layers=True) for batch in batches]

        def string_run(engine, tau=tau):
            return [engine.generate_logits(rows, entropy_threshold=tau) for rows in chunks(texts, args.batch_size)]

        contenders = {}
        for mode, engine in engines.items():
            contenders[f"{mode} engine"] = lambda engine=engine: engine_run(engine)
            contenders[f"{mode} from_strings"] = lambda engine=engine: string_run(engine)
        seconds = interleaved(contenders, args.repeats)
        outputs = {mode: engine_run(engine) for mode, engine in engines.items()}
        predictions = {mode: torch.cat([logits for logits, _ in out]).argmax(-1) for mode, out in outputs.items()}
        entry = {}
        for mode in engines:
            layers = torch.cat([layer for _, layer in outputs[mode]]).float()
            entry[mode] = {
                "sentences_per_s_engine": round(len(texts) / seconds[f"{mode} engine"], 1),
                "sentences_per_s_from_strings": round(len(texts) / seconds[f"{mode} from_strings"], 1),
                "accuracy": round(float((predictions[mode] == labels).float().mean()), 4) if trained else None,
                "mean_exit_layer": round(float(layers.mean()), 3),
            }
        entry["int8_over_fp32_engine"] = round(seconds["fp32 engine"] / seconds["int8 engine"], 3)
        entry["int8_over_fp32_from_strings"] = round(seconds["fp32 from_strings"] / seconds["int8 from_strings"], 3)
        entry["labels_equal_to_fp32"] = round(float((predictions["int8"] == predictions["fp32"]).float().mean()), 4)
        if trained:
            entry["accuracy_difference_points"] = round(100 * (entry["int8"]["accuracy"] - entry["fp32"]["accuracy"]), 2)
        section["thresholds"][label] = entry
        print(f"  threshold {label}: {json.dumps(entry)}", flush=True)
    section["profile_threshold_0"] = {
        mode: top_ops(lambda engine=engine: [engine.generate_logits(b, entropy_threshold=0.0) for b in batches])
        for mode, engine in engines.items()
    }
    return section


def teacher_section(teacher_dir: Path, texts: list[str], labels: torch.Tensor, args) -> dict:
    """``optimize(teacher)`` fp32 and int8 on padded batches: speed and accuracy."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    hf = AutoModelForSequenceClassification.from_pretrained(teacher_dir, use_safetensors=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    batches = [tokenizer(rows, truncation=True, max_length=MAX_LENGTH, padding=True, return_tensors="pt")
               for rows in chunks(texts, args.batch_size)]
    models = {"fp32": costeff_fast.optimize(hf), "int8": costeff_fast.optimize(hf, quantize="int8")}

    def run(model):
        return torch.cat([model(**batch).logits for batch in batches])

    seconds = interleaved({mode: lambda model=model: run(model) for mode, model in models.items()}, args.repeats)
    predictions = {mode: run(model).argmax(-1) for mode, model in models.items()}
    entry = {mode: {"sentences_per_s": round(len(texts) / seconds[mode], 1),
                    "accuracy": round(float((predictions[mode] == labels).float().mean()), 4)} for mode in models}
    entry["int8_over_fp32"] = round(seconds["fp32"] / seconds["int8"], 3)
    entry["accuracy_difference_points"] = round(100 * (entry["int8"]["accuracy"] - entry["fp32"]["accuracy"]), 2)
    print(f"  optimize(teacher): {json.dumps(entry)}", flush=True)
    return entry


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu = cpu_description()
    load_before = os.getloadavg()
    print(f"CPU: {cpu['model']} ({cpu['logical_cpus']} logical CPUs), int8 flags {cpu['int8_flags']}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; load average {load_before}", flush=True)
    if args.csv is None:
        split = load_task("rt")["validation"]
        texts, labels = list(split["text"]), torch.tensor(split["label"])
    else:
        texts, labels = csv_rows(args.csv, args.text_column, args.label_column, args.model)
    result = {
        "cpu": cpu, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "quantized_engines": torch.backends.quantized.supported_engines,
        "rows_source": str(args.csv) if args.csv else "rt validation", "rows": len(texts), "batch_size": args.batch_size, "repeats": args.repeats, "max_length": MAX_LENGTH,
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
    }
    with tempfile.TemporaryDirectory() as scratch:
        trained = args.model is not None
        model_dir = args.model or wl.converted_minilm(Path(scratch) / "minilm-costeff")
        result["model"] = str(args.model) if trained else (
            "packaged MiniLM converted by from_encoder_classifier (untrained exits, no calibrated threshold): speed only")
        print(f"COST-EFF model: {result['model']}", flush=True)
        result["costeff"] = costeff_section(model_dir, trained, texts, labels, args)
    if args.teacher is not None:
        result["teacher"] = str(args.teacher)
        result["optimize_teacher"] = teacher_section(args.teacher, texts, labels, args)
    result["load_average"] = {"before": load_before, "after": os.getloadavg()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()

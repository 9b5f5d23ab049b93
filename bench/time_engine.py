"""Engine-only throughput of a COST-EFF checkpoint: a short A/B probe between two checkouts of costeff_fast.

Times ``costeff_fast.engine.run_early_exit`` alone (tokenization done beforehand) on the first ``--rows`` rt
validation sentences in batches of 64, at threshold 0 (no exit) and at the checkpoint's calibrated threshold,
and prints the median sentences/s over ``--repeats`` runs. It uses only names that exist before and after
the core redesign, so the same file times either checkout::

    PYTHONPATH=/path/to/other/checkout python bench/time_engine.py --costeff work/demo/model --label before
    python bench/time_engine.py --costeff work/demo/model --label after

Alternate the two a few times and compare medians: the machines here are shared and a single run moves by
10-20 %. ``bench/run_cpu.py`` is the measurement of record.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import costeff_fast
from costeff_fast.data import load_task
from costeff_fast.engine import run_early_exit


def main(argv=None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--costeff", required=True, help="COST-EFF checkpoint directory")
    parser.add_argument("--rows", type=int, default=512, help="rt validation rows (default 512)")
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per threshold (default 15)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--label", default="", help="printed first (e.g. before / after)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = costeff_fast.from_pretrained(args.costeff)
    texts = list(load_task("rt")["validation"]["text"])[: args.rows]
    encoded = [model.encode(texts[i : i + 64]) for i in range(0, len(texts), 64)]
    layers = model.config.num_hidden_layers
    calibrated = model.config.entropy_threshold or 0.0
    results = {}
    for name, tau in (("no_exit", 0.0), ("early_exit", calibrated)):
        taus = [float(t) for t in tau] if isinstance(tau, list) else [float(tau)] * layers
        seconds = []
        for repeat in range(args.repeats + 1):  # the first run warms up
            start = time.perf_counter()
            with torch.inference_mode():
                for inputs in encoded:
                    run_early_exit(model.backend, *inputs, taus)
            if repeat:
                seconds.append(time.perf_counter() - start)
        results[name] = len(texts) / statistics.median(seconds)
    print(args.label, " ".join(f"{name} {value:.0f} sentences/s" for name, value in results.items()), flush=True)
    return results


if __name__ == "__main__":
    main()

"""The paper's operating points for COST-EFF checkpoints written by ``costeff-fast compress``: single against
per-layer entropy thresholds, on the task's validation rows, against the teacher's accuracy and executed FLOPs.

Usage (from the repository root)::

    python bench/accuracy_of_record.py work/out/rt-standard-uniform work/out/rt-standard-global ... \
        --out bench/results/accuracy-of-record

For each checkpoint directory (``report.json`` names the task, the budget's ``max_length`` and ``eval_rows``,
the teacher's accuracy and its executed FLOPs per row at real lengths), one full-depth forward of the
reference model gives every exit's entropy and correctness per validation row
(``costeff_fast.training.calibrate.ExitTable``), and for the two targets of the paper's operating point:

* ``at_1_19``: the most accurate setting with at most 1/19 of the teacher's executed FLOPs;
* ``within_1_point``: the cheapest setting with accuracy at least teacher - 0.01;

it reports the best single threshold (one shared by every layer, 48 quantiles of the exit entropies) and the
per-layer vector found from it by coordinate descent (``per_layer_thresholds``), each also run through the
batch engine (``generate_logits``), whose accuracy and exit layers are what users get. Per-layer vectors are
chosen on the rows they are scored on, so they are also compared on held-out halves: chosen on one half and
scored on the other, for both halves, against the single threshold chosen the same way.

Writes ``summary.json`` and ``summary.png`` (accuracy against FLOPs as a fraction of the teacher's, per run:
the single-threshold curve, the per-layer points, the teacher's accuracy, 97 % of it and one point below it)
to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

import costeff_fast
from costeff_fast import CostEffForSequenceClassification
from costeff_fast.data import load_task
from costeff_fast.flops import model_flops
from costeff_fast.training.calibrate import (
    ExitTable,
    per_layer_thresholds,
    single_threshold_curve,
)
from costeff_fast.training.data import dev_inputs
from costeff_fast.training.prediction import exit_logits, minibatches, predict

FLOP_TARGET = 1 / 19  # the paper: about 1/19 of BERT's FLOPs
RETAINED_TARGET = 0.97  # issue target: at least 97 % of the teacher's accuracy at that budget
WITHIN = 0.01  # one point


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="COST-EFF checkpoint directories with a report.json")
    parser.add_argument("--out", type=Path, required=True, help="directory for summary.json and summary.png")
    parser.add_argument("--batch-size", type=int, default=64)
    return parser.parse_args(argv)


def best_single(curve: list[dict], *, min_accuracy: float | None = None, max_gflops: float | None = None):
    """The single-threshold row meeting the goal (cheapest at ``>= min_accuracy``, or most accurate within
    ``max_gflops``), or None when no row meets it."""
    if min_accuracy is not None:
        rows = [r for r in curve if r["accuracy"] >= min_accuracy - 1e-12]
        return min(rows, key=lambda r: (r["gflops"], -r["accuracy"])) if rows else None
    rows = [r for r in curve if r["gflops"] <= max_gflops * (1 + 1e-9)]
    return max(rows, key=lambda r: (r["accuracy"], -r["gflops"])) if rows else None


def goal_settings(table: ExitTable, goal: str, teacher_accuracy: float, teacher_gflops: float):
    """(single row or None, per-layer vector or None, its evaluation) for ``goal`` on ``table``'s rows;
    ``teacher_gflops`` is the teacher's total over the same rows."""
    curve = single_threshold_curve(table)
    layers = table.entropies.shape[1]
    if goal == "at_1_19":
        budget = teacher_gflops * FLOP_TARGET
        single = best_single(curve, max_gflops=budget)
        if single is None:
            return None, None, None
        vector, result = per_layer_thresholds(table, [single["entropy_threshold"]] * layers, max_gflops=budget)
    else:
        floor = teacher_accuracy - WITHIN
        single = best_single(curve, min_accuracy=floor)
        if single is None:
            return None, None, None
        vector, result = per_layer_thresholds(table, [single["entropy_threshold"]] * layers, min_accuracy=floor)
    return single, vector, result


def engine_point(engine, inputs: list, labels: torch.Tensor, lengths: torch.Tensor, teacher_gflops_per_row: float,
                 thresholds, config, batch_size: int) -> dict:
    """Accuracy, mean exit layer and executed FLOPs (fraction of the teacher's) of the engine at ``thresholds``."""
    logits, layers = [], []
    for chunk in minibatches(inputs, batch_size):
        out, exit_layer = engine.generate_logits(chunk, entropy_threshold=thresholds, return_exit_layers=True)
        logits.append(out)
        layers.append(exit_layer)
    logits, layers = torch.cat(logits), torch.cat(layers)
    flops = float(model_flops(config, lengths, layers)) / len(labels)  # as ExitTable and the compress report
    return {"accuracy": (logits.argmax(-1) == labels).double().mean().item(),
            "mean_exit_layer": layers.double().mean().item(),
            "flops_fraction_of_teacher": flops / teacher_gflops_per_row / 1e9}


def held_out(table: ExitTable, goal: str, teacher_accuracy: float, teacher_gflops_per_row: float) -> list[dict]:
    """Both halves: settings chosen on one, scored on the other (single vs per-layer)."""
    order = torch.randperm(len(table), generator=torch.Generator().manual_seed(0))
    halves = [order[0::2], order[1::2]]
    folds = []
    for index in (0, 1):
        choose, test = table.subset(halves[index]), table.subset(halves[1 - index])
        single, vector, _ = goal_settings(choose, goal, teacher_accuracy, teacher_gflops_per_row * len(choose))
        if single is None:
            folds.append({"single": None, "per_layer": None})
            continue
        fold = {}
        for name, setting in (("single", single["entropy_threshold"]), ("per_layer", vector)):
            result = test.evaluate(setting)
            fold[name] = {"accuracy": result["accuracy"],
                          "flops_fraction_of_teacher": result["gflops"] / len(test) / teacher_gflops_per_row}
        folds.append(fold)
    return folds


def analyse(run: Path, batch_size: int) -> dict:
    report = json.loads((run / "report.json").read_text())
    task, budget = report["task"], report["budget"]
    teacher_accuracy = report["accuracy"]["teacher"]
    teacher_gflops_per_row = report["flops_per_row"]["teacher_real_lengths"] / 1e9
    validation = load_task(task, max_eval_rows=budget.get("eval_rows"), seed=0)["validation"]
    inputs, labels = dev_inputs(validation)
    engine = costeff_fast.from_pretrained(run, num_threads=None)
    reference = CostEffForSequenceClassification.from_pretrained(run, use_safetensors=True).eval()
    logits = exit_logits(reference, engine.tokenizer, inputs, batch_size=batch_size, max_length=engine.max_length,
                         device="cpu", autocast=False)
    lengths = predict(lambda chunk: engine.encode(chunk)[2], minibatches(inputs, batch_size))
    table = ExitTable.build(logits, labels, lengths, engine.config)
    teacher_gflops = teacher_gflops_per_row * len(table)
    curve = single_threshold_curve(table)
    result = {
        "run": run.name, "task": task, "rows": len(table), "teacher_accuracy": teacher_accuracy,
        "teacher_gflops_per_row": teacher_gflops_per_row, "widths": report.get("widths"),
        "exit_accuracies": [table.correct[:, i].double().mean().item() for i in range(table.correct.shape[1])],
        "full_depth": {"accuracy": curve[0]["accuracy"],
                       "flops_fraction_of_teacher": curve[0]["gflops"] / teacher_gflops},
        "single_curve": [{"entropy_threshold": r["entropy_threshold"], "accuracy": r["accuracy"],
                          "flops_fraction_of_teacher": r["gflops"] / teacher_gflops} for r in curve],
        "goals": {},
    }
    for goal in ("at_1_19", "within_1_point"):
        single, vector, per_layer = goal_settings(table, goal, teacher_accuracy, teacher_gflops)
        entry = {"single": None, "per_layer": None}
        if single is not None:
            entry["single"] = {"entropy_threshold": single["entropy_threshold"], "table_accuracy": single["accuracy"],
                               "engine": engine_point(engine, inputs, labels, lengths, teacher_gflops_per_row,
                                                      single["entropy_threshold"], engine.config, batch_size)}
            entry["per_layer"] = {"entropy_threshold": vector, "table_accuracy": per_layer["accuracy"],
                                  "engine": engine_point(engine, inputs, labels, lengths, teacher_gflops_per_row,
                                                         vector, engine.config, batch_size)}
        entry["held_out"] = held_out(table, goal, teacher_accuracy, teacher_gflops_per_row)
        result["goals"][goal] = entry
    at = result["goals"]["at_1_19"]
    best_at = max((at[k]["engine"]["accuracy"] for k in ("single", "per_layer") if at[k]), default=None)
    within = result["goals"]["within_1_point"]
    cheapest = min((within[k]["engine"]["flops_fraction_of_teacher"] for k in ("single", "per_layer")
                    if within[k] and within[k]["engine"]["accuracy"] >= teacher_accuracy - WITHIN - 1e-12),
                   default=None)
    result["targets"] = {
        "retained_at_1_19": None if best_at is None else best_at / teacher_accuracy,
        "retains_97_percent_at_1_19": best_at is not None and best_at >= RETAINED_TARGET * teacher_accuracy,
        "cheapest_within_1_point_flops_fraction": cheapest,
        "within_1_point_at_most_1_10": cheapest is not None and cheapest <= 0.1 + 1e-12,
    }
    return result


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 4), squeeze=False)
    for ax, r in zip(axes[0], results):
        curve = r["single_curve"]
        ax.plot([p["flops_fraction_of_teacher"] for p in curve], [p["accuracy"] for p in curve], "-", color="gray",
                lw=1, label="single threshold")
        for goal, marker in (("at_1_19", "o"), ("within_1_point", "s")):
            entry = r["goals"][goal]
            for kind, color in (("single", "tab:blue"), ("per_layer", "tab:red")):
                if entry[kind]:
                    e = entry[kind]["engine"]
                    ax.scatter(e["flops_fraction_of_teacher"], e["accuracy"], marker=marker, color=color, s=30,
                               label=f"{kind.replace('_', '-')} ({goal.replace('_', ' ')})")
        t = r["teacher_accuracy"]
        ax.axhline(t, color="black", lw=0.8, label=f"teacher {t:.3f}")
        ax.axhline(RETAINED_TARGET * t, color="tab:green", ls=":", lw=1, label="97 % of teacher")
        ax.axhline(t - WITHIN, color="tab:orange", ls=":", lw=1, label="teacher - 1 point")
        ax.axvline(FLOP_TARGET, color="tab:green", ls="--", lw=0.8, label="1/19 FLOPs")
        ax.axvline(0.1, color="tab:orange", ls="--", lw=0.8, label="1/10 FLOPs")
        ax.set_xlim(0, max(0.16, 1.05 * r["full_depth"]["flops_fraction_of_teacher"]))
        ax.set_ylim(t - 0.12, t + 0.02)
        ax.set_title(r["run"], fontsize=9)
        ax.set_xlabel("executed FLOPs / teacher's (real lengths)")
        ax.set_ylabel("validation accuracy")
        ax.legend(fontsize=5, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    torch.manual_seed(0)
    results = []
    for run in args.runs:
        print(f"[{time.strftime('%H:%M:%S')}] {run}", file=sys.stderr, flush=True)
        results.append(analyse(run, args.batch_size))
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {"command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
               "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": platform.processor() or platform.machine(),
               "runs": results}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(results, args.out / "summary.png")
    for r in results:
        t = r["targets"]
        retained = "none" if t["retained_at_1_19"] is None else f"{100 * t['retained_at_1_19']:.1f} %"
        cheapest = t["cheapest_within_1_point_flops_fraction"]
        cheapest = "none" if cheapest is None else f"1/{1 / cheapest:.1f}"
        print(f"{r['run']}: teacher {r['teacher_accuracy']:.4f}; at 1/19 FLOPs keeps {retained}; "
              f"cheapest within 1 point: {cheapest}")
    return results


if __name__ == "__main__":
    main()

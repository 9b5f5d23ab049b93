"""How to pick the (width, threshold) pair of a front for ``--max-drop``: the procedure compress ships against the
alternatives tried, each scored out of sample over several fold deals.

Usage (from the repository root, after ``bash bench/run_front.sh rt-quick``)::

    python bench/front_choice.py work/front/rt-quick --out bench/results/front-choice/rt-quick.json

For a compress output with a front (``report.json`` names the task, the budget and every point's recovered
checkpoint under the work directory, whose ``teacher`` is read), the engine sweeps every point over the dev rows
with the thresholds compress uses (``quantile_thresholds``), as compress's calibration does. Then, for each goal
and each of ``--seeds`` deals of the rows into 5 folds, every procedure is cross-validated as a whole (each fold's
pair chosen on the other folds' rows only, scored on the fold's own):

* ``joint, margin 0``: the cheapest of all (width, threshold) pairs within the goal on the choosing rows;
* ``joint, margin by CV`` (what compress ships, ``cross_validate(..., margin="auto")``): the same, keeping in hand
  the smallest margin whose choice meets the goal in a cross-validation within the choosing rows;
* ``width first``: each width's own threshold choice (margin by CV) is cross-validated within the choosing rows;
  the cheapest width whose out-of-sample accuracy meets the goal (else the most accurate) is taken, then its
  threshold as for one model.

The spread over deals is the point: with about a thousand dev rows, one 5-fold estimate of a procedure moves by
a point between deals.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from costeff_fast import CostEffForSequenceClassification, from_pretrained
from costeff_fast.data import load_task
from costeff_fast.flops import row_flops
from costeff_fast.training.budget import Budget
from costeff_fast.training.calibrate import (
    SweepOutcomes,
    choose_margin,
    cross_validate,
    engine_sweep,
    fold_indices,
    pick_threshold,
    quantile_thresholds,
    score_choice,
)
from costeff_fast.training.data import dev_inputs, prepare_data
from costeff_fast.training.prediction import hf_predict, minibatches, predict


def front_outcomes(out_dir: Path) -> dict:
    """The teacher's correctness and FLOPs per dev row and every point's engine sweep, as compress computes them."""
    report = json.loads((out_dir / "report.json").read_text())
    if not report.get("front"):
        raise SystemExit(f"{out_dir}/report.json has no front: run compress with --front first")
    budget = Budget(**report["budget"])
    checkpoints = {point["name"]: Path(point["checkpoint"]) for point in report["front"]["points"]}
    teacher_dir = next(iter(checkpoints.values())).parents[2] / "teacher"
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    tokenizer.padding_side = "right"
    _, validation = prepare_data(load_task(report["task"], seed=0), budget, tokenizer, 0)
    inputs, labels = dev_inputs(validation)
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir, use_safetensors=True).eval()
    teacher_correct = hf_predict(teacher, tokenizer, inputs, 64, budget.max_length, device="cpu",
                                 autocast=False).argmax(-1) == labels
    outcomes = {}
    for name, directory in checkpoints.items():
        model = from_pretrained(directory)
        reference = CostEffForSequenceClassification.from_pretrained(directory, use_safetensors=True)
        thresholds = quantile_thresholds(reference, tokenizer, inputs, max_length=budget.max_length)
        outcomes[name] = engine_sweep(model, inputs, labels, thresholds)
    lengths = predict(lambda chunk: model.encode(chunk)[2], minibatches(inputs, 256))
    return {"task": report["task"], "budget": budget.name, "teacher_correct": teacher_correct,
            "teacher_flops": row_flops(teacher.config, lengths, every_exit=False), "outcomes": outcomes}


def width_first(outcomes: dict[str, SweepOutcomes], teacher_correct, teacher_flops, max_drop: float, seed: int):
    """The width-first procedure, cross-validated as a whole over 5 folds of the seed's deal."""
    names = list(outcomes)
    rows = teacher_correct.shape[0]
    parts = fold_indices(rows, 5, seed)
    joined = SweepOutcomes.concat(outcomes)
    offsets = dict(zip(names, [sum(len(outcomes[n].thresholds) for n in names[:i]) for i in range(len(names))]))
    choice = torch.empty(rows, dtype=torch.long)
    for index, held in enumerate(parts):
        rest = torch.cat([part for i, part in enumerate(parts) if i != index])
        reference = teacher_correct[rest]
        scores = {name: cross_validate(outcomes[name].subset(rest), reference_correct=reference,
                                       base_flops=teacher_flops[rest], max_drop=max_drop, seed=seed, margin="auto")
                  for name in names}
        met = [name for name in names if scores[name]["goal_met"]]
        name = (min(met, key=lambda n: (scores[n]["gflops_per_row"], -scores[n]["accuracy"])) if met
                else max(names, key=lambda n: (scores[n]["accuracy"], -scores[n]["gflops_per_row"])))
        own = outcomes[name].subset(rest)
        margin = choose_margin(own, reference_correct=reference, max_drop=max_drop, seed=seed)["margin"]
        pick = pick_threshold(own.summary(), reference.double().mean().item(), max_drop, margin)
        choice[held] = offsets[name] + pick["setting"]
    every = torch.arange(rows)
    return score_choice(joined.correct[choice, every], joined.row_flops[choice, every],
                        joined.exit_layers[choice, every], reference_correct=teacher_correct,
                        full_depth_flops=teacher_flops, max_drop=max_drop)


def compare(data: dict, goals: list[float], seeds: int) -> dict:
    outcomes, correct, flops = data["outcomes"], data["teacher_correct"], data["teacher_flops"]
    joined = SweepOutcomes.concat(outcomes)
    teacher = correct.double().mean().item()
    procedures = {
        "joint, margin 0": lambda drop, seed: cross_validate(joined, reference_correct=correct, base_flops=flops,
                                                             max_drop=drop, seed=seed, margin=0.0),
        "joint, margin by CV (compress)": lambda drop, seed: cross_validate(
            joined, reference_correct=correct, base_flops=flops, max_drop=drop, seed=seed, margin="auto"),
        "width first": lambda drop, seed: width_first(outcomes, correct, flops, drop, seed),
    }
    results = []
    for drop in goals:
        for name, procedure in procedures.items():
            held = [procedure(drop, seed) for seed in range(seeds)]
            under = [(teacher - h["accuracy"]) * 100 for h in held]
            results.append({"max_drop": drop, "procedure": name, "points_under_teacher": under,
                            "mean_points_under": statistics.mean(under),
                            "speedup_flops": [h["speedup_flops"] for h in held],
                            "mean_speedup_flops": statistics.mean(h["speedup_flops"] for h in held),
                            "goal_met": sum(h["goal_met"] for h in held)})
            print(f"max_drop {drop:g}  {name:32s} {statistics.mean(under):5.2f} points under the teacher "
                  f"(deals: {min(under):.2f} to {max(under):.2f}), {results[-1]['mean_speedup_flops']:.1f}x fewer "
                  f"FLOPs, goal met in {results[-1]['goal_met']} of {seeds} deals", flush=True)
    return {"task": data["task"], "budget": data["budget"], "teacher_accuracy": teacher, "rows": correct.shape[0],
            "points": list(outcomes), "seeds": seeds, "folds": 5, "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="a compress output with a front (its report.json)")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--max-drop", type=float, nargs="+", default=[0.01, 0.02])
    parser.add_argument("--seeds", type=int, default=8, help="fold deals per procedure (default 8)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the procedures are bookkeeping on small tensors
    summary = compare(front_outcomes(args.out_dir), args.max_drop, args.seeds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()

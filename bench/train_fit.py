"""Does a student fit its TA on the training rows? Per-exit accuracy of checkpoints on training and dev rows.

Usage (from the repository root)::

    python bench/train_fit.py --task rt --budget standard work/rt-standard-steps540/ta \\
        work/rt-standard-steps540/h2-f160-rfull-uniform/recovered

For each COST-EFF checkpoint directory (a TA or a recovered student), one line: its exit accuracies on a seeded
sample of ``--rows`` rows of the task's training split, tokenized as the budget's ``compress`` run tokenizes them
(:func:`costeff_fast.training.data.prepare_data`, the same split and row cap), then on the whole validation split.
A student level with its TA on the training rows but under it on the dev rows has a generalisation gap, not a
fitting one. Prints a JSON object per checkpoint; runs on one CPU thread (it can share the machine with a job).
"""

from __future__ import annotations

import argparse
import json

import torch
from transformers import AutoTokenizer

from costeff_fast import CostEffForSequenceClassification
from costeff_fast.data import load_task
from costeff_fast.training.budget import BUDGETS, budget_with
from costeff_fast.training.data import make_loader, prepare_data
from costeff_fast.training.prediction import exit_accuracies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", help="COST-EFF checkpoint directories (the first one's tokenizer "
                        "is used for every one: they must share it, as the stages of one compress run do)")
    parser.add_argument("--task", required=True, help="a packaged task: rt, trec or boolq")
    parser.add_argument("--budget", default="standard", choices=sorted(BUDGETS), help="the compress run's budget")
    parser.add_argument("--max-length", type=int, default=None, help="the compress run's --max-length, if set")
    parser.add_argument("--rows", type=int, default=2000, help="training rows sampled (default 2000)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the training-row sample")
    args = parser.parse_args()
    torch.set_num_threads(1)
    budget = BUDGETS[args.budget] if args.max_length is None else budget_with(args.budget, max_length=args.max_length)
    tokenizer = AutoTokenizer.from_pretrained(args.checkpoints[0])
    tokenizer.padding_side = "right"
    data, _ = prepare_data(load_task(args.task, seed=0), budget, tokenizer, seed=0)
    if not 0 < args.rows <= len(data.train):
        parser.error(f"--rows {args.rows}: pass 1 to {len(data.train)} (the training split's rows)")
    train_sample = data.train.shuffle(seed=args.seed).select(range(args.rows))
    loaders = {"train": make_loader(train_sample, tokenizer, 128, shuffle=False),
               "validation": make_loader(data.validation, tokenizer, 128, shuffle=False)}
    for directory in args.checkpoints:
        model = CostEffForSequenceClassification.from_pretrained(directory, use_safetensors=True).eval()
        result = {name: [round(a, 4) for a in exit_accuracies(model, loader)] for name, loader in loaders.items()}
        print(json.dumps({"checkpoint": directory, "train_rows": args.rows, **result}), flush=True)


if __name__ == "__main__":
    main()

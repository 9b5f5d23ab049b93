"""Does a student fit its TA on the training rows? Per-exit accuracy of checkpoints on training and dev rows.

Usage (from the repository root)::

    python bench/train_fit.py --task rt --budget standard work/rt-standard-steps540/ta \\
        work/rt-standard-steps540/h2-f160-rfull-uniform/recovered

For each COST-EFF checkpoint directory (a TA or a recovered student), one line: its exit accuracies on a seeded
sample of ``--rows`` rows of the task's training split, tokenized as the budget's ``compress`` run tokenizes them
(:func:`costeff_fast.training.validate.load_compress_data` and :func:`costeff_fast.training.data.prepare_data`:
the same split, de-duplication and row cap), then on the validation split compress scores its exits on.
A student level with its TA on the training rows but under it on the dev rows has a generalisation gap, not a
fitting one. Prints a JSON object per checkpoint; its model passes run on one CPU thread (it can share the machine
with a job; the tokenizer may use more while it tokenizes).
"""

from __future__ import annotations

import argparse
import json

import torch
from transformers import AutoTokenizer

from costeff_fast import CostEffForSequenceClassification
from costeff_fast.data import TASKS
from costeff_fast.training.budget import BUDGETS, budget_with
from costeff_fast.training.data import make_loader, prepare_data
from costeff_fast.training.prediction import exit_accuracies
from costeff_fast.training.validate import load_compress_data


def main(argv: list[str] | None = None) -> list[dict]:
    """Parse ``argv`` (None: the command line), print one JSON line per checkpoint and return them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", help="COST-EFF checkpoint directories (the first one's tokenizer "
                        "is used for every one: they must share it, as the stages of one compress run do)")
    parser.add_argument("--task", required=True, choices=sorted(TASKS), help="the compress run's --task")
    parser.add_argument("--budget", default="standard", choices=sorted(BUDGETS), help="the compress run's budget")
    parser.add_argument("--max-length", type=int, default=None, help="the compress run's --max-length, if set")
    parser.add_argument("--group-by-length", action="store_true", help="the compress run's --group-by-length")
    parser.add_argument("--rows", type=int, default=2000, help="training rows sampled (default 2000)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the training-row sample")
    args = parser.parse_args(argv)
    if args.rows < 1:
        parser.error(f"--rows {args.rows}: pass a positive number of training rows")
    torch.set_num_threads(1)
    changes = {"group_by_length": True} if args.group_by_length else {}
    if args.max_length is not None:
        changes["max_length"] = args.max_length
    budget = budget_with(args.budget, **changes)
    tokenizer = AutoTokenizer.from_pretrained(args.checkpoints[0])
    tokenizer.padding_side = "right"  # as compress: the COST-EFF model's positions count from each row's start
    splits = load_compress_data(args.task, None, teacher_config=None, seed=0)
    data, _ = prepare_data(splits, budget, tokenizer, seed=0)
    if args.rows > len(data.train):
        parser.error(f"--rows {args.rows}: the training split has {len(data.train)} rows; pass at most that")
    train_sample = data.train.shuffle(seed=args.seed).select(range(args.rows))
    loaders = {"train": make_loader(train_sample, tokenizer, data.batch_size, shuffle=False),
               "validation": data.eval_loader()}
    lines = []
    for directory in args.checkpoints:
        model = CostEffForSequenceClassification.from_pretrained(directory, use_safetensors=True).eval()
        result = {name: [round(a, 4) for a in exit_accuracies(model, loader)] for name, loader in loaders.items()}
        lines.append({"checkpoint": str(directory), "train_rows": args.rows, **result})
        print(json.dumps(lines[-1]), flush=True)
    return lines


if __name__ == "__main__":
    main()

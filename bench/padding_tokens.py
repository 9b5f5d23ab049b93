"""How many of the tokens a training epoch computes are padding, batched at random or grouped by length.

For each built-in task at its standard length (rt and trec 64 tokens, boolq 256), the full training split and the
validation split are tokenized with the packaged MiniLM tokenizer as ``compress --budget standard`` does, then
iterated once through :meth:`costeff_fast.training.data.TrainingData.train_loader` and ``eval_loader`` with
``group_by_length`` off (the presets: training rows batched at random, batch 32; validation rows in order, batch
128) and on (length-grouped batches for training, longest first for validation). Counts only, no model: the
result does not depend on the machine.

Usage::

    python bench/padding_tokens.py --out bench/results/padding-tokens.json

Per task, loader (``train``, ``eval``) and batching (``plain``: random or in order; ``grouped``): rows, real
tokens (attention mask ones), computed tokens (batch x padded length) and the padding share; and per task and
loader the ratio of computed tokens plain / grouped.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from transformers import AutoTokenizer

from costeff_fast.data import load_task
from costeff_fast.training.budget import budget_with
from costeff_fast.training.data import TrainingData, packaged_minilm_dir, prepare_data

LENGTHS = {"rt": 64, "trec": 64, "boolq": 256}
"""Tokens per row of each task at the standard budget (boolq: ``--max-length 256``)."""


def count(loader) -> dict:
    rows = real = computed = 0
    for batch in loader:
        rows += len(batch["input_ids"])
        real += int(batch["attention_mask"].sum())
        computed += batch["input_ids"].numel()
    return {"rows": rows, "real_tokens": real, "computed_tokens": computed,
            "padding_share": round(1 - real / computed, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(LENGTHS), choices=list(LENGTHS))
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(packaged_minilm_dir())
    result = {}
    for task in args.tasks:
        splits = load_task(task)
        entry = {"max_length": LENGTHS[task]}
        for grouped in (False, True):
            budget = budget_with("standard", max_length=LENGTHS[task], group_by_length=grouped)
            data, _ = prepare_data(splits, budget, tokenizer)
            for name, make in (("train", TrainingData.train_loader), ("eval", TrainingData.eval_loader)):
                entry.setdefault(name, {})["grouped" if grouped else "plain"] = count(make(data))
        for name in ("train", "eval"):
            pair = entry[name]
            pair["plain_over_grouped"] = round(pair["plain"]["computed_tokens"] / pair["grouped"]["computed_tokens"], 3)
        result[task] = entry
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

"""``costeff-fast demo``: the main job on real data (a COST-EFF model of the packaged MiniLM on rt, then batch
early-exit inference next to the Hugging Face teacher)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_num_threads, positive_int, refuse, set_num_threads

NAME = "demo"
HELP = "COST-EFF model of the packaged MiniLM on rt, then early-exit inference vs HF"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--work-dir", type=Path, default=Path("work/demo"), help="checkpoint cache (default work/demo)")
    parser.add_argument("--budget", choices=["demo", "quick"], default="demo", help="training budget (default demo)")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="inference batch size (default 64)")
    add_num_threads(parser)


def run(args: argparse.Namespace) -> None:
    # The training stack loads only for the commands that train.
    from costeff_fast.training.demo import run_demo
    from costeff_fast.training.stage_cache import StageMismatchError

    set_num_threads(args.num_threads)
    try:
        run_demo(args.work_dir, budget=args.budget, batch_size=args.batch_size)
    except StageMismatchError as error:  # e.g. --budget quick after a demo-budget run in the same --work-dir
        refuse(error)

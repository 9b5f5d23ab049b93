"""Command line: ``costeff-fast demo`` (the main job on real data), ``costeff-fast compress`` and
``costeff-fast calibrate``."""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="costeff-fast", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="COST-EFF model of the packaged MiniLM on rt, then early-exit inference vs HF")
    demo.add_argument("--work-dir", type=Path, default=Path("work/demo"), help="checkpoint cache (default work/demo)")
    demo.add_argument("--budget", choices=["demo", "quick"], default="demo", help="training budget (default demo)")
    demo.add_argument("--batch-size", type=_positive_int, default=64, help="inference batch size (default 64)")
    demo.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads (default: torch's)")
    compress = commands.add_parser("compress", help="run the COST-EFF pipeline and write a calibrated checkpoint")
    source = compress.add_mutually_exclusive_group(required=True)
    source.add_argument("--teacher", type=Path, help="a fine-tuned HF BERT classifier directory")
    source.add_argument("--task-default", action="store_true", help="fine-tune the packaged MiniLM as the teacher")
    data = compress.add_argument_group(
        "data", "a built-in task, or your own labelled file or saved dataset (exactly one of --task, --train-file, "
        "--dataset)")
    data.add_argument("--task", help="a built-in task: rt, boolq or trec")
    data.add_argument("--train-file", type=Path,
                      help="your training rows: .csv, .jsonl/.json or .parquet with a text and a label column")
    data.add_argument("--validation-file", type=Path,
                      help="your validation rows (same columns); without it 10%% of --train-file, stratified by label "
                           "and seeded with --seed, is held out")
    data.add_argument("--dataset", type=Path,
                      help="a directory written by datasets' save_to_disk (a DatasetDict with 'train' and optionally "
                           "'validation', or one Dataset)")
    data.add_argument("--text-column", default="text", help="column holding the text (default text)")
    data.add_argument("--text-pair-column", default=None,
                      help="column holding the second text of a pair (e.g. the passage; default: none)")
    data.add_argument("--label-column", default="label",
                      help="column holding the label: strings (mapped through the teacher's label2id when it names "
                           "its classes), integer class ids or bools (default label)")
    compress.add_argument("--seed", type=int, default=0,
                          help="seed of the validation split, the row subsets and every stage (default 0)")
    compress.add_argument("--heads", type=_positive_int, default=2, help="attention heads per layer (default 2)")
    compress.add_argument("--ffn", type=_positive_int, default=160, help="FFN width per layer (default 160)")
    compress.add_argument("--embedding-rank", type=_positive_int, default=128, help="word embedding rank (default 128)")
    compress.add_argument("--allocation", choices=["uniform", "global"], default="uniform")
    compress.add_argument("--final-exit-importance", action="store_true",
                          help="ablation: importance from the final exit only (no exit calibration)")
    compress.add_argument("--budget", choices=["quick", "paper", "demo"], default="quick")
    compress.add_argument("--max-length", type=_positive_int, default=None,
                          help="tokens per row in training and inference (default: the budget's)")
    compress.add_argument("--train-rows", type=_positive_int, default=None,
                          help="training rows (default: the budget's; quick uses 3,000)")
    compress.add_argument("--eval-rows", type=_positive_int, default=None,
                          help="dev rows for checkpoint choice, calibration and the report (default: the budget's)")
    compress.add_argument("--teacher-epochs", type=float, default=None,
                          help="teacher fine-tuning epochs with --task-default (default: the budget's; quick uses 1)")
    compress.add_argument("--ta-epochs", type=float, default=None,
                          help="epochs of the TA's exit (prediction) distillation (default: the budget's; quick uses 1)")
    compress.add_argument("--recovery-epochs", type=float, default=None,
                          help="epochs of recovery's exit (prediction) distillation (default: the budget's; quick uses 1)")
    compress.add_argument("--exit-pooling", choices=["mean", "cls"], default="mean",
                          help="what non-pooled exits read: token mean (default) or [CLS] (the paper)")
    compress.add_argument("--max-drop", type=float, default=0.01, help="allowed dev accuracy drop (default 0.01)")
    compress.add_argument("--work-dir", type=Path, default=None, help="stage cache (default work/<task>-<budget>-len<max length>-<exit pooling>, "
                          "plus a suffix per overridden budget field)")
    compress.add_argument("--out", type=Path, required=True,
                          help="output checkpoint directory: new, empty, or a previous COST-EFF output (config.json "
                               "with model_type costeff plus report.json), which is replaced; any other existing "
                               "directory is refused unless --overwrite. Written to a temporary sibling and renamed "
                               "into place at the end, so a failed run leaves the old --out as it was")
    compress.add_argument("--overwrite", action="store_true",
                          help="replace an existing --out even if it holds other files (they are deleted at the end)")
    compress.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
    compress.add_argument("-v", "--verbose", action="store_true",
                          help="show the traceback of a refused argument (refusals otherwise print one line "
                               "and exit with status 2)")
    compress.epilog = ("Every argument is checked before the first training step (teacher config, widths against "
                       "the teacher, --out, --work-dir); a refused argument prints one 'error: <message>' line and "
                       "exits with status 2 (-v adds the traceback).")
    calibrate = commands.add_parser(
        "calibrate", help="choose a COST-EFF checkpoint's entropy threshold on your labelled rows",
        description="Sweep entropy thresholds of a COST-EFF checkpoint with the batch engine on labelled rows, write "
                    "the chosen one into its config.json (atomically; nothing else in the checkpoint changes) and a "
                    "report (calibration.json + calibration.png of accuracy against executed FLOPs). Per-layer "
                    "thresholds are searched too and compared with the single one at equal FLOPs.")
    calibrate.add_argument("--model", type=Path, required=True, help="a COST-EFF checkpoint directory")
    calibrate.add_argument("--validation-file", type=Path, required=True,
                           help="labelled rows: .csv, .jsonl/.json, .parquet, or a save_to_disk directory (its "
                                "validation split, else train)")
    calibrate.add_argument("--text-column", default="text", help="column holding the text (default text)")
    calibrate.add_argument("--text-pair-column", default=None, help="column holding the second text of a pair")
    calibrate.add_argument("--label-column", default="label",
                           help="column holding the label: the model's class names, or integer class ids")
    goal = calibrate.add_mutually_exclusive_group()
    goal.add_argument("--max-drop", type=float, default=None,
                      help="fewest FLOPs within this accuracy drop of the reference (a fraction; default 0.01)")
    goal.add_argument("--target-speedup", type=float, default=None,
                      help="most accurate threshold with this many times fewer executed FLOPs than full depth")
    calibrate.add_argument("--teacher", type=Path, default=None,
                           help="HF classifier whose accuracy on the rows is the --max-drop reference (default: the "
                                "checkpoint at full depth)")
    calibrate.add_argument("--thresholds", choices=["single", "per-layer"], default="single",
                           help="write one threshold for every layer (default, the paper) or one per exit")
    calibrate.add_argument("--report-dir", type=Path, default=None,
                           help="where calibration.json and calibration.png go (default MODEL/calibration)")
    calibrate.add_argument("--batch-size", type=_positive_int, default=64, help="rows per engine call (default 64)")
    calibrate.add_argument("--seed", type=int, default=0, help="seed of the held-out halves (default 0)")
    calibrate.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
    calibrate.add_argument("-v", "--verbose", action="store_true", help="show the traceback of a refused argument")
    return parser


def _refuse(error: Exception, verbose: bool) -> None:
    """Print a refused argument as one ``costeff-fast: error:`` line (after the traceback when ``verbose``); exit 2."""
    if verbose:
        traceback.print_exception(error)
    message = " ".join(str(error).split())
    print(f"costeff-fast: error: {message}", file=sys.stderr)
    sys.exit(2)


def _compress_data(args):
    """``compress``'s ``data`` argument from ``--train-file`` / ``--validation-file`` / ``--dataset`` (None with
    ``--task``); refuses combinations that name two sources."""
    from costeff_fast.training.validate import CompressArgumentError

    sources = [flag for flag, value in (("--task", args.task), ("--train-file", args.train_file),
                                         ("--dataset", args.dataset)) if value is not None]
    if len(sources) != 1:
        given = " and ".join(sources) if sources else "none of them"
        raise CompressArgumentError(f"{given}: pass exactly one of --task, --train-file, --dataset")
    if args.validation_file is not None and args.train_file is None:
        raise CompressArgumentError("--validation-file: needs --train-file (a --dataset carries its own "
                                    "'validation' split)")
    if args.train_file is not None:
        if args.validation_file is None:
            return {"train": args.train_file}
        return {"train": args.train_file, "validation": args.validation_file}
    return args.dataset


def format_calibration(report: dict) -> str:
    """The calibration report as a few lines: reference, full depth, single and per-layer choice, what was written."""
    single, per_layer = report["single"], report["per_layer"]
    held = report["held_out_comparison"]
    taus = ", ".join(f"{t:.3f}" for t in per_layer["entropy_threshold"][:-1])
    lines = [
        f"{report['rows']} rows; reference accuracy {report['reference_accuracy']:.4f} ({report['reference']}); "
        f"full depth {report['full_depth']['accuracy']:.4f} at {report['full_depth']['gflops_per_row']:.4f} GFLOPs/row",
        f"single threshold {single['entropy_threshold']:.4f}: accuracy {single['accuracy']:.4f}, "
        f"{single['speedup_flops']:.2f}x fewer FLOPs, {single['sentences_per_second']:.0f} rows/s"
        + ("" if single["constraint_met"] else " (goal not met: closest threshold)"),
        f"per-layer thresholds [{taus}]: accuracy {per_layer['accuracy']:.4f}, {per_layer['speedup_flops']:.2f}x fewer "
        f"FLOPs; beats the single threshold at equal FLOPs: {'yes' if per_layer['beats_single'] else 'no'} on these "
        f"rows, {held['beats_single_held_out']} of {len(held['held_out'])} held-out halves",
        f"wrote {report['written']['thresholds']} entropy_threshold to {report['model']}/config.json "
        f"(was {report['written']['previous_entropy_threshold']})",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.command == "demo":
        from costeff_fast.training.demo import run_demo

        run_demo(args.work_dir, budget=args.budget, batch_size=args.batch_size)
    elif args.command == "compress":
        from dataclasses import replace

        from costeff_fast.training.pipeline import BUDGETS, CompressionSettings, compress
        from costeff_fast.training.validate import CompressArgumentError

        settings = CompressionSettings(heads=args.heads, ffn=args.ffn, embedding_rank=args.embedding_rank,
                                       allocation=args.allocation, calibrate_exits=not args.final_exit_importance)
        budget = BUDGETS[args.budget]
        overrides = {"max_length": args.max_length, "train_rows": args.train_rows, "eval_rows": args.eval_rows,
                     "teacher_epochs": args.teacher_epochs, "ta_prediction_epochs": args.ta_epochs,
                     "recovery_prediction_epochs": args.recovery_epochs}
        budget = replace(budget, **{k: v for k, v in overrides.items() if v is not None})
        try:
            data = _compress_data(args)
            report = compress(args.task, args.out, data=data, text_column=args.text_column,
                              text_pair_column=args.text_pair_column, label_column=args.label_column,
                              teacher_dir=args.teacher, settings=settings, budget=budget, work_dir=args.work_dir,
                              max_drop=args.max_drop, exit_pooling=args.exit_pooling, seed=args.seed,
                              overwrite=args.overwrite)
        except CompressArgumentError as error:
            _refuse(error, args.verbose)
        print(json.dumps({k: report[k] for k in ("parameters", "flops_per_row", "accuracy", "targets")}, indent=2))
        print(f"checkpoint, report.json and report.png in {args.out}")
    elif args.command == "calibrate":
        from costeff_fast.training.recalibrate import CalibrateArgumentError, calibrate_checkpoint

        try:
            report = calibrate_checkpoint(
                args.model, args.validation_file, text_column=args.text_column, text_pair_column=args.text_pair_column,
                label_column=args.label_column, max_drop=args.max_drop, target_speedup=args.target_speedup,
                teacher_dir=args.teacher, thresholds=args.thresholds, report_dir=args.report_dir,
                batch_size=args.batch_size, seed=args.seed)
        except CalibrateArgumentError as error:
            _refuse(error, args.verbose)
        print(format_calibration(report))


if __name__ == "__main__":
    main()

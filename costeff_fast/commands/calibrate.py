"""``costeff-fast calibrate``: a checkpoint's entropy threshold(s) chosen on the user's labelled rows."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_num_threads, positive_int, refuse, set_num_threads

NAME = "calibrate"
HELP = "choose a COST-EFF checkpoint's entropy threshold on your labelled rows"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Sweep entropy thresholds of a COST-EFF checkpoint with the batch engine on labelled rows, write the chosen "
        "one into its config.json (atomically; nothing else in the checkpoint changes) and a report "
        "(calibration.json + calibration.png of accuracy against executed FLOPs). Per-layer thresholds are searched "
        "too and compared with the single one at equal FLOPs. Both are also scored out of sample by k-fold "
        "cross-validation (each row by thresholds chosen on the other folds); per-layer thresholds are written only "
        "when they win there.")
    parser.add_argument("--model", type=Path, required=True, help="a COST-EFF checkpoint directory")
    parser.add_argument("--validation-file", type=Path, required=True,
                        help="labelled rows: .csv, .jsonl/.json, .parquet, or a save_to_disk directory (its "
                             "validation split, else train)")
    parser.add_argument("--text-column", default="text", help="column holding the text (default text)")
    parser.add_argument("--text-pair-column", default=None, help="column holding the second text of a pair")
    parser.add_argument("--label-column", default="label",
                        help="column holding the label: the model's class names, or integer class ids")
    goal = parser.add_mutually_exclusive_group()
    goal.add_argument("--max-drop", type=float, default=None,
                      help="fewest FLOPs within this accuracy drop of the reference (a fraction; default 0.01), with "
                           "the accuracy margin cross-validation says holds")
    goal.add_argument("--target-speedup", type=float, default=None,
                      help="most accurate threshold with this many times fewer executed FLOPs than full depth")
    parser.add_argument("--teacher", type=Path, default=None,
                        help="HF classifier whose accuracy on the rows is the --max-drop reference (default: the "
                             "checkpoint at full depth)")
    parser.add_argument("--thresholds", choices=["single", "per-layer"], default="single",
                        help="write one threshold for every layer (default, the paper) or one per exit (written only "
                             "when they beat the single threshold out of sample)")
    parser.add_argument("--report-dir", type=Path, default=None,
                        help="where calibration.json and calibration.png go (default MODEL/calibration)")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="rows per engine call (default 64)")
    parser.add_argument("--folds", type=positive_int, default=5,
                        help="folds of the out-of-sample cross-validation (at least 2; default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the folds (default 0)")
    parser.add_argument("--device", default="auto",
                        help="where the model runs: auto (a CUDA GPU when there is one, else the CPU; default), "
                             "cpu, cuda or cuda:N")
    add_num_threads(parser)


def run(args: argparse.Namespace) -> None:
    # The training stack (datasets, matplotlib) loads only for the commands that need it.
    from costeff_fast.training.recalibrate import CalibrateArgumentError, calibrate_checkpoint

    set_num_threads(args.num_threads)
    try:
        report = calibrate_checkpoint(
            args.model, args.validation_file, text_column=args.text_column, text_pair_column=args.text_pair_column,
            label_column=args.label_column, max_drop=args.max_drop, target_speedup=args.target_speedup,
            teacher_dir=args.teacher, thresholds=args.thresholds, report_dir=args.report_dir,
            batch_size=args.batch_size, folds=args.folds, seed=args.seed, device=args.device)
    except CalibrateArgumentError as error:
        refuse(error)
    print(format_calibration(report))


def format_calibration(report: dict) -> str:
    """The calibration report as a few lines: reference, full depth, single and per-layer choice (on all rows and
    out of sample), what was written and why."""
    single, per_layer = report["single"], report["per_layer"]
    single_held, per_layer_held = single["out_of_sample"], per_layer["out_of_sample"]
    taus = ", ".join(f"{t:.3f}" for t in per_layer["entropy_threshold"][:-1])
    written = report["written"]
    lines = [
        f"{report['rows']} rows; reference accuracy {report['reference_accuracy']:.4f} ({report['reference']}); "
        f"full depth {report['full_depth']['accuracy']:.4f} at {report['full_depth']['gflops_per_row']:.4f} GFLOPs/row",
        f"single threshold {single['entropy_threshold']:.4f}: accuracy {single['accuracy']:.4f}, "
        f"{single['speedup_flops']:.2f}x fewer FLOPs, {single['sentences_per_second']:.0f} rows/s"
        + ("" if single["constraint_met"] else " (goal not met: closest threshold)"),
        f"  out of sample ({single_held['method']}): accuracy {single_held['accuracy']:.4f}, "
        f"{single_held['speedup_flops']:.2f}x fewer FLOPs, {single_held['drop'] * 100:.2f} points under the "
        f"reference (standard error {single_held['drop_standard_error'] * 100:.2f}); "
        f"goal {'met' if single_held['goal_met'] else 'NOT met'}",
        f"per-layer thresholds [{taus}]: accuracy {per_layer['accuracy']:.4f}, {per_layer['speedup_flops']:.2f}x fewer "
        f"FLOPs",
        f"  out of sample: accuracy {per_layer_held['accuracy']:.4f}, {per_layer_held['speedup_flops']:.2f}x fewer "
        f"FLOPs; beats the single threshold out of sample: {'yes' if per_layer_held['beats_single'] else 'no'}",
        f"wrote {written['thresholds']} entropy_threshold to {report['model']}/config.json "
        f"(was {written['previous_entropy_threshold']}): {written['why']}",
    ]
    return "\n".join(lines)

"""``costeff-fast compress``: the COST-EFF pipeline from a teacher and labelled data to a calibrated checkpoint."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from .common import (add_num_threads, add_out, fraction, non_negative_float, positive_float, positive_int, refuse,
                     set_num_threads)

NAME = "compress"
HELP = "run the COST-EFF pipeline and write a calibrated checkpoint"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--teacher", type=Path,
                        help="a fine-tuned HF encoder classifier directory (BERT/MiniLM, RoBERTa, XLM-R, ELECTRA, "
                             "DistilBERT)")
    source.add_argument("--task-default", action="store_true", help="fine-tune the packaged MiniLM as the teacher")
    data = parser.add_argument_group(
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
    more = parser.add_argument_group(
        "more rows to distil on",
        "labelled by the teacher; used by the TA, slenderization and recovery stages (--extra-rows-for)")
    more.add_argument("--unlabeled-file", type=Path, default=None,
                      help="text rows without labels (.csv, .jsonl/.json, .parquet or a save_to_disk directory), "
                           "typically your production job's own rows; rows equal to a validation row are dropped")
    more.add_argument("--unlabeled-text-column", default=None,
                      help="its text column (default: --text-column); pairs read --text-pair-column too")
    more.add_argument("--augment", type=int, default=0, metavar="N",
                      help="add N perturbed copies of every training row (tokens masked, replaced by random "
                           "vocabulary tokens, a span deleted; default 0)")
    more.add_argument("--extra-rows-for", choices=["all", "ta"], default="all",
                      help="the stages that distil on these rows: all (default) or ta, the teaching assistant only "
                           "(slenderization and recovery then distil on the labelled rows)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the validation split, the row subsets and every stage (default 0)")
    parser.add_argument("--heads", type=positive_int, default=2, help="attention heads per layer (default 2)")
    parser.add_argument("--ffn", type=positive_int, default=160, help="FFN width per layer (default 160)")
    parser.add_argument("--embedding-rank", type=positive_int, default=None,
                        help="factorize the word embedding to this rank (default: not factorized; the paper's 128 "
                             "saves parameters but no speed, since the engine folds the factors into one table, "
                             "and cost a narrow student 1.4-2.9 points at exits 4-6 on rt and trec)")
    parser.add_argument("--allocation", choices=["uniform", "global"], default="uniform",
                        help="uniform: every layer keeps --heads heads and --ffn neurons (default); global: the same "
                             "totals spread over the layers by importance ranked across the whole model, so widths "
                             "differ per layer")
    parser.add_argument("--pruning-schedule", choices=["linear", "geometric"], default="linear",
                        help="how the widths shrink over the pruning events: linear, the same number of heads and "
                             "neurons per event (the paper's code; default), or geometric, the same share of the "
                             "width per event, so the last event is no harsher than the first")
    parser.add_argument("--event-steps", choices=["even", "by-share"], default="even",
                        help="the distillation steps after the pruning events: even, the budget's steps after each "
                             "(default), or by-share, the same total in proportion to the share of the encoder "
                             "each event removes")
    parser.add_argument("--final-exit-importance", action="store_true",
                        help="ablation: importance from the final exit only (no exit calibration)")
    parser.add_argument("--budget", choices=["quick", "standard", "paper", "demo"], default="quick",
                        help="training budget: quick (3,000 rows, about one epoch per phase; default), standard (the "
                             "full training split, three epochs per phase, six for recovery), paper (the authors' "
                             "SST-2 schedule, 128 tokens), demo (2,000 rows)")
    parser.add_argument("--max-length", type=positive_int, default=None,
                        help="tokens per row in training and inference (default: the budget's)")
    parser.add_argument("--train-rows", type=positive_int, default=None,
                        help="training rows (default: the budget's; quick uses 3,000)")
    parser.add_argument("--eval-rows", type=positive_int, default=None,
                        help="dev rows for checkpoint choice, calibration and the report (default: the budget's)")
    parser.add_argument("--teacher-epochs", type=positive_float, default=None,
                        help="teacher fine-tuning epochs with --task-default (default: the budget's; quick uses 1)")
    parser.add_argument("--ta-epochs", type=positive_float, default=None,
                        help="epochs of the TA's exit (prediction) distillation (default: the budget's; quick uses 1)")
    parser.add_argument("--recovery-epochs", type=positive_float, default=None,
                        help="epochs of recovery's exit (prediction) distillation (default: the budget's; "
                             "quick uses 1)")
    parser.add_argument("--recovery-hidden-epochs", type=non_negative_float, default=None,
                        help="epochs of recovery's hidden-state-only distillation before its exit distillation "
                             "(default: the budget's; quick and standard use 1, the paper 10)")
    parser.add_argument("--num-events", type=positive_int, default=None,
                        help="pruning events of slenderization, the widths shrinking linearly over them (default: the "
                             "budget's; quick and standard use 5; the paper uses one per removed head)")
    parser.add_argument("--distill-steps", type=positive_int, default=None,
                        help="optimizer steps of distillation from the TA after each pruning event (default: the "
                             "budget's; quick uses 120, standard and the paper 180)")
    parser.add_argument("--kd-temperature", type=positive_float, default=None,
                        help="distillation temperature of the TA's and (without --recovery-temperature) recovery's "
                             "exit distillation (default: the budget's, 1)")
    parser.add_argument("--recovery-temperature", type=positive_float, default=None,
                        help="distillation temperature of recovery's exit distillation alone (default: "
                             "--kd-temperature's; the TA keeps its own)")
    parser.add_argument("--early-exit-weight", type=non_negative_float, default=None,
                        help="loss weight of exits 1..L-1 against the last exit in that distillation (default: the "
                             "budget's, 1)")
    parser.add_argument("--group-by-length", action="store_true", default=None,
                        help="batch training rows of similar length together: much less padding when lengths vary "
                             "(boolq at 256 tokens: 1.8 times fewer tokens per epoch; default: the budget's, off)")
    parser.add_argument("--exit-pooling", choices=["mean", "cls"], default="mean",
                        help="what non-pooled exits read: token mean (default) or [CLS] (the paper)")
    goal = parser.add_mutually_exclusive_group()
    goal.add_argument("--max-drop", type=fraction, default=None,
                      help="goal: the fewest executed FLOPs within this dev accuracy drop of the teacher, a fraction "
                           "(default 0.01: one point), with the accuracy margin cross-validation says holds")
    goal.add_argument("--target-speedup", type=positive_float, default=None,
                      help="goal: the most accurate model with this many times fewer executed FLOPs than the teacher "
                           "on the dev rows")
    parser.add_argument("--front", type=front_fractions, default=(),
                        help="also stop the slenderization at these fractions of the teacher's encoder (e.g. "
                             "0.5,0.25 or 1/2,1/4; each between the --heads/--ffn target's size and 1), recover and "
                             "calibrate each, and write the (width, threshold) that best meets the goal; report.json's "
                             "front lists every point (default: the target only)")
    parser.add_argument("--front-point", default=None, metavar="NAME",
                        help="write this point of the front (a name in report.json's front.points, e.g. h3-f384) "
                             "instead of the width the goal picks; its threshold is still chosen for the goal. Rerun "
                             "the same command with it: every stage is cached, only calibration runs")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="stage cache (default work/<task>-<budget>-len<max length>-<exit pooling>, plus a suffix "
                             "per overridden budget field; for your data the task is <file name>-<content hash>, and "
                             "--teacher adds -teacher<hash>). Run the same command again after a crash or kill to "
                             "resume: finished stages are reused, a stage cut short continues from its last progress "
                             "save (every 10 minutes and every evaluation)")
    add_out(parser, help="output checkpoint directory: new, empty, or a previous COST-EFF output (config.json "
                         "with model_type costeff plus report.json), which is replaced; any other existing "
                         "directory is refused unless --overwrite. Written to a temporary sibling and renamed "
                         "into place at the end, so a failed run leaves the old --out as it was")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --out even if it holds other files (they are deleted at the end)")
    parser.add_argument("--device", default="auto",
                        help="where the stages train and calibration runs: auto (a CUDA GPU when there is one, else "
                             "the CPU; default), cpu, cuda or cuda:N; on CUDA the forwards run under bf16 autocast "
                             "with fp32 losses")
    add_num_threads(parser)
    parser.epilog = ("Every argument is checked before the first training step (teacher config, widths against "
                     "the teacher, --out, --work-dir, the data and its labels); a refused argument prints one "
                     "'costeff-fast: error: <message>' line and exits with status 2 (-v adds the traceback).")


def front_fractions(text: str) -> tuple[float, ...]:
    """``--front``'s value: ``"0.5,0.25"`` or ``"1/2,1/4"`` -> ``(0.5, 0.25)`` (argparse type; the range is checked
    against the teacher and the target by the pipeline)."""
    values = []
    for item in (part.strip() for part in text.split(",")):
        try:
            numerator, _, denominator = item.partition("/")
            values.append(float(numerator) / (float(denominator) if denominator else 1.0))
        except (ValueError, ZeroDivisionError):
            raise argparse.ArgumentTypeError(f"{item!r} is not a fraction; pass e.g. 0.5,0.25 or 1/2,1/4") from None
    return tuple(values)


def compress_data(args: argparse.Namespace, error_type: type[ValueError]):
    """``compress``'s ``data`` argument from ``--train-file`` / ``--validation-file`` / ``--dataset`` (None with
    ``--task``); refuses combinations that name two sources."""
    sources = [flag for flag, value in (("--task", args.task), ("--train-file", args.train_file),
                                         ("--dataset", args.dataset)) if value is not None]
    if len(sources) != 1:
        given = " and ".join(sources) if sources else "none of them"
        raise error_type(f"{given}: pass exactly one of --task, --train-file, --dataset")
    if args.validation_file is not None and args.train_file is None:
        raise error_type("--validation-file: needs --train-file (a --dataset carries its own "
                                    "'validation' split)")
    if args.train_file is not None:
        if args.validation_file is None:
            return {"train": args.train_file}
        return {"train": args.train_file, "validation": args.validation_file}
    return args.dataset



def run(args: argparse.Namespace) -> None:
    # The training stack (datasets, matplotlib) loads only for the commands that train.
    from costeff_fast.training import pipeline
    from costeff_fast.training.stage_cache import StageMismatchError
    from costeff_fast.training.validate import CompressArgumentError

    set_num_threads(args.num_threads)
    settings = pipeline.CompressionSettings(heads=args.heads, ffn=args.ffn, embedding_rank=args.embedding_rank,
                                            allocation=args.allocation, calibrate_exits=not args.final_exit_importance,
                                            front=args.front, schedule=args.pruning_schedule,
                                            event_steps=args.event_steps)
    overrides = {"max_length": args.max_length, "train_rows": args.train_rows, "eval_rows": args.eval_rows,
                 "teacher_epochs": args.teacher_epochs, "ta_prediction_epochs": args.ta_epochs,
                 "recovery_prediction_epochs": args.recovery_epochs,
                 "recovery_hidden_epochs": args.recovery_hidden_epochs, "kd_temperature": args.kd_temperature,
                 "recovery_kd_temperature": args.recovery_temperature, "early_exit_weight": args.early_exit_weight,
                 "num_events": args.num_events, "distill_steps": args.distill_steps,
                 "group_by_length": args.group_by_length}
    budget = replace(pipeline.BUDGETS[args.budget], **{k: v for k, v in overrides.items() if v is not None})
    try:
        data = compress_data(args, CompressArgumentError)
        report = pipeline.compress(args.task, args.output, data=data, text_column=args.text_column,
                                   text_pair_column=args.text_pair_column, label_column=args.label_column,
                                   teacher_dir=args.teacher, settings=settings, budget=budget, work_dir=args.work_dir,
                                   max_drop=args.max_drop, target_speedup=args.target_speedup,
                                   exit_pooling=args.exit_pooling, unlabeled=args.unlabeled_file, unlabeled_text_column=args.unlabeled_text_column,
                                   augment=args.augment, extra_rows_for=args.extra_rows_for,
                                   front_point=args.front_point, seed=args.seed,
                                   overwrite=args.overwrite, device=args.device)
    except (CompressArgumentError, StageMismatchError) as error:
        refuse(error)
    print(json.dumps({k: report[k] for k in ("parameters", "flops_per_row", "accuracy", "targets")}, indent=2))
    print(f"written: {report['calibration']['chosen']['why']}")
    dropped = (report.get("distillation_rows") or {}).get("unlabeled_dropped_as_validation", 0)
    if dropped:
        print(f"--unlabeled-file: {dropped:,} rows equal to a validation row were left out, so the dev rows stay "
              "unseen (report.json's distillation_rows)")
    print(f"checkpoint, report.json and report.png in {args.output}")

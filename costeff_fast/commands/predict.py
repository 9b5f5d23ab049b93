"""``costeff-fast predict``: classify every row of a CSV, JSON Lines or Parquet file (or a directory of them) into a
directory of shards: id, label, one probability column per label, exit layer, in input order.

The input is streamed (memory stays bounded by a shard whatever its size). Shards are committed atomically with
a manifest, so --resume continues a job stopped at any point (a crash, kill -9) with no row lost or written
twice. A row that cannot be processed (text missing, null, not a string or empty) goes to OUT/_errors.jsonl
with its id and the reason; the job goes on and exits with status 1 when any row failed. --engine ray runs the
same per-batch step on a Ray cluster (pip install costeff_fast[ray]).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from costeff_fast.audit import SUGGESTED_RATE
from costeff_fast.integrations import ray as ray_integration
from costeff_fast.jobs import DEFAULT_SHARD_ROWS, AgreementBelowMinimum, JobArgumentError, PredictJob, run_local

from .common import RowsFailed, add_num_threads, add_out, positive_int, refuse

NAME = "predict"
HELP = "classify a CSV, JSON Lines or Parquet file into resumable shards (early exit; local or Ray)"


def entropy_threshold(text: str) -> float | list[float]:
    """An argparse type: one float (every layer) or comma-separated floats (one per layer), in nats."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a float or comma-separated floats (nats), got {text!r}") from None
    return values[0] if len(values) == 1 else values


def column_list(text: str) -> tuple[str, ...]:
    """An argparse type: comma-separated column names."""
    names = tuple(part.strip() for part in text.split(","))
    if not all(names):
        raise argparse.ArgumentTypeError(f"must be comma-separated column names, got {text!r}")
    return names


def fraction_of_rows(text: str) -> float:
    """An argparse type: a float in [0, 1]."""
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1], got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="a COST-EFF checkpoint directory with its tokenizer")
    parser.add_argument("--input", type=Path, required=True,
                        help="a .csv, .jsonl/.json (JSON Lines) or .parquet file, or a directory of files of one "
                             "format (read recursively in sorted path order)")
    add_out(parser, help="output directory: part-NNNNNN files, _errors.jsonl, _manifest.json; must be new or empty "
                         "unless --resume or --overwrite")
    parser.add_argument("--text-column", default="text", help="column holding the text (default text)")
    parser.add_argument("--text-pair-column", default=None,
                        help="column holding the second text of a pair (default: none)")
    parser.add_argument("--id-column", default=None,
                        help="column copied to the output's id (default: the 0-based row number); CSV and JSON "
                             "Lines ids are written as text, Parquet ids keep their type")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="rows per layer call (default 64)")
    parser.add_argument("--entropy-threshold", type=entropy_threshold, default=None,
                        help="exit threshold in nats, one float or one per layer separated by commas "
                             "(default: the checkpoint's calibrated one; 0 runs every layer)")
    parser.add_argument("--backend", choices=["auto", "torch", "native", "triton"], default="auto",
                        help="engine backend (default auto: triton on CUDA, native on the CPU when its kernels "
                             "build, else torch)")
    add_num_threads(parser, help="torch CPU threads (per Ray worker with --engine ray; default: as many as other "
                                 "processes leave cores free, re-read at most once a second, or 1 per Ray worker)")
    parser.add_argument("--output-format", choices=["parquet", "csv", "jsonl"], default=None,
                        help="format of the output files (default: the input's)")
    parser.add_argument("--shard-rows", type=positive_int, default=DEFAULT_SHARD_ROWS,
                        help=f"input rows per shard, the most work a crash can lose (default {DEFAULT_SHARD_ROWS:,})")
    again = parser.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue the job in --out after its last committed shard (a missing or empty "
                            "--out starts it); the input, model, columns, threshold, output format and "
                            "--shard-rows must be unchanged")
    again.add_argument("--overwrite", action="store_true", help="delete a previous job's files in --out first")
    output = parser.add_argument_group("output columns")
    output.add_argument("--keep-columns", type=column_list, default=(), metavar="COL[,COL...]",
                        help="input columns copied to the output after exit_layer (comma-separated)")
    output.add_argument("--logits", dest="output_logits", action="store_true",
                        help="add one logit_<label> column per label (the answering exit's logits)")
    output.add_argument("--entropy", dest="output_entropy", action="store_true",
                        help="add an entropy column: the answering exit's entropy in nats (what the threshold "
                             "compares)")
    parser.add_argument("--device", default=None,
                        help="cpu, cuda or cuda:N (default: the backend's: CUDA for triton, else the CPU); with "
                             "--engine ray a CUDA device gives each worker one GPU")
    audit = parser.add_argument_group(
        "agreement audit", "run a seeded sample of the rows again at full depth (and through the teacher) and "
                           "report how often the early-exit label agrees, with a Wilson 95% interval, in "
                           "OUT/_manifest.json and `costeff-fast info OUT`")
    audit.add_argument("--audit-rate", type=fraction_of_rows, default=0.0, metavar="R",
                       help=f"fraction of rows audited (default 0: off; {SUGGESTED_RATE} audits 1 row in "
                            f"{round(1 / SUGGESTED_RATE)} for about 2-3%% more work)")
    audit.add_argument("--audit-seed", type=int, default=0, help="which rows the audit samples (default 0)")
    audit.add_argument("--audit-teacher", type=Path, default=None, metavar="DIR",
                       help="also run the audited rows through this Hugging Face classifier (the teacher the "
                            "model was compressed from)")
    audit.add_argument("--min-agreement", type=fraction_of_rows, default=None, metavar="A",
                       help="end with status 3 when an audited agreement's 95%% interval lies wholly "
                            "below A (e.g. 0.97)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar (default: a tqdm bar with rows/s on a terminal)")
    ray_group = parser.add_argument_group("Ray", "run on a Ray cluster through ray.data (pip install "
                                                 "costeff_fast[ray])")
    ray_group.add_argument("--engine", choices=["local", "ray"], default="local",
                           help="local (default): this process, resumable; ray: ray.data reads, one model per "
                                "worker actor, ray.data writes")
    ray_group.add_argument("--num-workers", type=positive_int, default=1,
                           help="Ray actors, each holding one copy of the model (default 1)")
    ray_group.add_argument("--address", default=None,
                           help="a running Ray cluster: 'auto' on one of its nodes, or host:port of its head (default: "
                                "start a local Ray); --input, --out and --model must be readable there")
    parser.epilog = ("Exit status: 0 when every row was written, 1 when some rows failed (see _errors.jsonl; every "
                     "other row was written), 2 when an argument was refused (one 'error:' line, before any row "
                     "is classified), 3 when --min-agreement is not met (the output is complete); see "
                     "costeff-fast --help for every status.")


def run(args: argparse.Namespace) -> None:
    try:
        if args.engine == "ray":  # a missing Ray Data is refused before the input is read
            ray_integration.require_ray()
        job = PredictJob(  # every flag checked once, for either engine
            model=args.model, input=args.input, output=args.output, text_column=args.text_column,
            text_pair_column=args.text_pair_column, id_column=args.id_column, batch_size=args.batch_size,
            entropy_threshold=args.entropy_threshold, backend=args.backend, num_threads=args.num_threads,
            output_format=args.output_format, shard_rows=args.shard_rows, resume=args.resume,
            overwrite=args.overwrite, progress=False if args.no_progress else None, engine=args.engine,
            num_workers=args.num_workers, address=args.address, device=args.device,
            keep_columns=args.keep_columns, output_logits=args.output_logits, output_entropy=args.output_entropy,
            audit_rate=args.audit_rate, audit_seed=args.audit_seed, audit_teacher=args.audit_teacher,
            min_agreement=args.min_agreement)
        summary = ray_integration.run_ray(job) if job.engine == "ray" else run_local(job)
    except (JobArgumentError, ray_integration.RayNotInstalledError) as error:
        refuse(error, args.verbose)
    except AgreementBelowMinimum as low:  # the job is complete: its summary first, then exit status 3
        print(low.summary.format())
        raise
    print(summary.format())
    if summary.failed:
        raise RowsFailed(f"{summary.failed:,} of {summary.rows:,} rows failed; their ids and reasons are in "
                         f"{summary.output / '_errors.jsonl'}")

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

from costeff_fast.integrations import ray as ray_integration
from costeff_fast.jobs import DEFAULT_SHARD_ROWS, JobArgumentError, PredictJob, run_local

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
                     "is classified); see costeff-fast --help for every status.")


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
            num_workers=args.num_workers, address=args.address)
        summary = ray_integration.run_ray(job) if job.engine == "ray" else run_local(job)
    except (JobArgumentError, ray_integration.RayNotInstalledError) as error:
        refuse(error, args.verbose)
    print(summary.format())
    if summary.failed:
        raise RowsFailed(f"{summary.failed:,} of {summary.rows:,} rows failed; their ids and reasons are in "
                         f"{summary.output / '_errors.jsonl'}")

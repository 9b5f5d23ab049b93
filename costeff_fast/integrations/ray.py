"""Ray Data: COST-EFF early-exit classification inside ``ray.data`` pipelines (``pip install costeff_fast[ray]``).

:class:`CostEffPredictor` is a callable class for :meth:`ray.data.Dataset.map_batches`: each actor loads the
model once, and every batch (pyarrow, pandas or a dict of numpy arrays) goes through the same per-batch step
as ``costeff-fast predict`` (:func:`costeff_fast.jobs.predict_rows`), so the output columns and the reasons
of failed rows are the same::

    import ray
    from costeff_fast.integrations.ray import CostEffPredictor

    ds = ray.data.read_parquet("reviews/")
    predictions = ds.map_batches(
        CostEffPredictor, fn_constructor_kwargs={"model_dir": "runs/rt-uniform", "id_column": "review_id"},
        compute=ray.data.ActorPoolStrategy(size=4), batch_size=2048, num_cpus=1)
    predictions.filter(expr=ray.data.expressions.col("error").is_null()).write_parquet("predictions/")

:func:`run_ray` is ``costeff-fast predict --engine ray``: it runs a :class:`~costeff_fast.jobs.PredictJob` (the
one job description of both engines): ray.data reads the input, the actors classify, ray.data writes the shards,
and the manifest is the local engine's (:mod:`costeff_fast.jobs.shards`). :func:`run_ray_predict` builds the job
and runs it. Ray itself is imported only when they run; importing this module, or using
:class:`CostEffPredictor` outside Ray, does not need it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from ..audit import AgreementAudit
from ..jobs.predict import (AgreementBelowMinimum, BatchStats, PredictSummary, check_keep_columns, job_identity,
                            job_summary, label_names, load_job_model, load_model, predict_rows, run_description,
                            shard_stats, summarize)
from ..jobs.shards import (ERRORS, JobLock, SUFFIXES, count_output_rows, new_manifest, prepare_output, shard_record,
                           write_manifest)
from ..jobs.sources import JobArgumentError
from ..jobs.spec import PredictJob

logger = logging.getLogger(__name__)

#: the id column added to an input without --id-column: the 0-based row number
ROW_NUMBER_COLUMN = "__costeff_row__"
#: the column in which :class:`CostEffPredictor` (``stats=True``) returns each batch's counts to :func:`run_ray`
STATS_COLUMN = "__costeff_stats__"


class RayNotInstalledError(ImportError):
    """Ray Data is needed and missing; the message gives the pip command."""


def require_ray():
    """Import and return :mod:`ray` with :mod:`ray.data`.

    Raises:
        RayNotInstalledError: Ray Data is not installed (``pip install costeff_fast[ray]``).
    """
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as error:
        raise RayNotInstalledError(f"the Ray engine needs Ray Data, which is not installed ({error}); run "
                                   f"`pip install 'costeff_fast[ray]'`") from error
    return ray


class CostEffPredictor:
    """A callable class for ``ray.data.Dataset.map_batches``: one loaded model per actor, one output row per row.

    Args:
        model_dir: a COST-EFF checkpoint directory with its tokenizer, readable on every node.
        id_column: the column copied to the output's ``id`` (required: a distributed dataset has no row numbers;
            ``costeff-fast predict --engine ray`` adds one).
        text_column, text_pair_column: the text and optional second-text columns.
        batch_size: rows per layer call of the engine (the Ray batch, ``map_batches(batch_size=...)``, is split
            into layer calls of this size).
        entropy_threshold: nats, a float or one per layer; None uses the checkpoint's.
        backend: as for :func:`~costeff_fast.inference.from_pretrained`.
        num_threads: torch CPU threads of this actor (default 1: give each actor ``num_cpus`` to match).
        id_type: the Arrow type of ``id``; ``pa.string()`` writes non-string ids as text (as ``predict`` does for
            CSV and JSON Lines inputs); None keeps what the batch holds.
        device: where this actor runs the model (as for :func:`~costeff_fast.inference.from_pretrained`).
        keep_columns, output_logits, output_entropy: extra output columns, as ``costeff-fast predict``'s.
        audit_rate, audit_seed, audit_teacher: an agreement audit (:class:`~costeff_fast.audit.AgreementAudit`)
            of each batch's sampled rows. The sample is drawn on ``row_column``'s values (0-based row numbers)
            when given, else on the ids: integer ids >= 0 as they are, other ids by the CRC-32 of their text.
        stats: append the column :data:`STATS_COLUMN`: on each batch's first row, the batch's counts as JSON
            (:func:`~costeff_fast.jobs.predict.shard_stats`), null on the others; :func:`run_ray` sums them into
            the manifest's summary and audit.

    Calling it on a batch returns the same kind of batch (a ``pyarrow.Table``, a ``pandas.DataFrame`` or a dict
    of numpy arrays) with the columns of ``predict`` (``id``, ``label``, ``prob_<label>`` per label,
    ``exit_layer``) plus ``error``: null for a classified row, the reason for a row that could not be processed
    (whose other columns, ``id`` aside, are null; NaN in numpy and pandas).

    Raises:
        JobArgumentError: (at construction) the model cannot be loaded, or a bad threshold or backend.
        KeyError: a batch lacks a column.
    """

    def __init__(self, model_dir: str | os.PathLike, *, id_column: str, text_column: str = "text",
                 text_pair_column: str | None = None, batch_size: int = 64, entropy_threshold=None,
                 backend: str = "auto", num_threads: int | None = 1, id_type: pa.DataType | None = None,
                 device: str | None = None, keep_columns: tuple[str, ...] = (), output_logits: bool = False,
                 output_entropy: bool = False, audit_rate: float = 0.0, audit_seed: int = 0,
                 audit_teacher: str | None = None, row_column: str | None = None, stats: bool = False):
        self.model = load_model(model_dir, entropy_threshold=entropy_threshold, backend=backend,
                                num_threads=num_threads, device=device)
        self.labels = label_names(self.model)
        check_keep_columns(self.labels, keep_columns, output_logits=output_logits, output_entropy=output_entropy)
        self.id_column, self.text_column, self.text_pair_column = id_column, text_column, text_pair_column
        self.batch_size, self.id_type = batch_size, id_type
        self.keep_columns, self.output_logits, self.output_entropy = tuple(keep_columns), output_logits, output_entropy
        self.audit = AgreementAudit(self.model, audit_rate, audit_seed, audit_teacher) if audit_rate else None
        self.row_column, self.stats = row_column, stats

    def __call__(self, batch):
        """Classify one batch; see the class docstring."""
        names = [self.id_column, self.text_column] + ([self.text_pair_column] if self.text_pair_column else [])
        names += list(self.keep_columns) + ([self.row_column] if self.row_column else [])
        columns = {name: _column(batch, name) for name in dict.fromkeys(names)}
        stats = BatchStats()
        table = predict_rows(
            self.model, columns[self.text_column], columns[self.id_column],
            pairs=columns[self.text_pair_column] if self.text_pair_column else None, id_type=self.id_type,
            batch_size=self.batch_size, text_column=self.text_column, text_pair_column=self.text_pair_column,
            keep={name: columns[name] for name in self.keep_columns}, output_logits=self.output_logits,
            output_entropy=self.output_entropy, audit=self.audit,
            row_numbers=_sample_keys(columns[self.row_column or self.id_column]) if self.audit else None,
            stats=stats)
        if self.stats:
            counts = shard_stats(table.filter(pc.is_null(table["error"])), stats, self.model.config.num_hidden_layers)
            counts["rows"] = table.num_rows
            values = [json.dumps(counts)] + [None] * (table.num_rows - 1)
            table = table.append_column(STATS_COLUMN, pa.array(values[:table.num_rows], type=pa.string()))
        if isinstance(batch, pa.Table):
            return table
        if isinstance(batch, Mapping):
            return {name: table[name].to_numpy(zero_copy_only=False) for name in table.column_names}
        return table.to_pandas()


def run_ray(job: PredictJob) -> PredictSummary:
    """``costeff-fast predict --engine ray``: run a :class:`~costeff_fast.jobs.PredictJob` (``engine="ray"``) on
    Ray Data; the outputs and the ``_manifest.json`` are those of :func:`~costeff_fast.jobs.run_local`.

    ray.data reads the input (``read_csv`` with the text and id columns as strings, ``read_json`` for JSON Lines,
    ``read_parquet``, in sorted file order), ``job.num_workers`` :class:`CostEffPredictor` actors classify it, the
    predictions are materialized in Ray's object store (ids, labels, probabilities: no text), and ray.data writes
    the classified rows to ``job.output`` in input order (``part-NNNNNN`` files); failed rows go to
    ``_errors.jsonl``. The manifest (:mod:`costeff_fast.jobs.shards`) is written when the job starts
    (``complete`` false: a failed job's output can be replaced with ``overwrite``) and when it ends, with the rows
    of every file. Without ``job.id_column`` the rows are numbered from 0 as in the local engine, which
    materializes the input first (spilled to disk by Ray when larger than memory); pass an id column for a fully
    streamed job. Ray retries failed tasks itself, so there is no resume (:class:`PredictJob` refuses it).

    Differences from the local engine: a JSON Lines field whose type changes between rows, or a malformed CSV
    line, fails the job in ray.data's (pyarrow's) reader instead of failing that row.

    The Ray knobs of the job: ``num_workers`` actors, each with one copy of the model and
    :attr:`~costeff_fast.jobs.PredictJob.worker_threads` torch threads, requesting that many CPUs from Ray;
    ``address``, a running cluster (``"auto"`` on one of its nodes, or its head's ``host:port``), or None to start
    a local Ray (or use the one this process already started). The input, output and model paths must be readable
    (output: writable) on every node, and costeff_fast installed there.

    Returns:
        A :class:`~costeff_fast.jobs.PredictSummary`.

    Raises:
        RayNotInstalledError: Ray Data is not installed.
        JobArgumentError: the job is not a Ray job, or its model, output directory or --address is refused, before
            any row is classified.
    """
    ray = require_ray()
    if job.engine != "ray":
        raise JobArgumentError(f"--engine {job.engine}: run_ray runs Ray jobs; build the job with engine='ray' "
                               f"or run it with costeff_fast.jobs.run_local")
    started = time.perf_counter()
    output_dir = job.output
    # The model and its flags are checked before --overwrite deletes anything: a refused run leaves the output.
    model = load_job_model(job, num_threads=job.num_threads)
    manifest = new_manifest("ray", job_identity(job, model), job.parameters())
    with JobLock(output_dir):  # no second job writes to this output until this one ends
        prepare_output(output_dir, resume=False, overwrite=job.overwrite)

        started_ray = not ray.is_initialized()
        if started_ray:
            try:
                ray.init(address=job.address, log_to_driver=False, logging_level=logging.WARNING,
                         **({} if job.address else {"include_dashboard": False}))
            except (ConnectionError, RuntimeError) as error:
                raise JobArgumentError(f"--address {job.address}: cannot connect to the Ray cluster "
                                       f"({error})") from error
        if not logger.isEnabledFor(logging.DEBUG):  # ray.data logs every execution plan at INFO: shown with -v only
            logging.getLogger("ray.data").setLevel(logging.WARNING)
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
            write_manifest(output_dir, manifest)
            context = ray.data.DataContext.get_current()
            context.execution_options.preserve_order = True
            context.enable_progress_bars = sys.stderr.isatty() if job.progress is None else job.progress
            dataset = _read(ray, job.files, list(job.columns))
            id_column = job.id_column
            if id_column is None:
                dataset, id_column = _with_row_numbers(ray, dataset, ROW_NUMBER_COLUMN), ROW_NUMBER_COLUMN
            threads = job.worker_threads
            gpus = 1 if job.device is not None and job.device.startswith("cuda") else 0
            predictions = dataset.map_batches(
                CostEffPredictor,
                fn_constructor_kwargs=dict(model_dir=str(job.model), id_column=id_column, text_column=job.text_column,
                                           text_pair_column=job.text_pair_column, batch_size=job.batch_size,
                                           entropy_threshold=job.entropy_threshold, backend=job.backend,
                                           num_threads=threads, id_type=job.id_type, device=job.device,
                                           keep_columns=job.keep_columns, output_logits=job.output_logits,
                                           output_entropy=job.output_entropy, audit_rate=job.audit_rate,
                                           audit_seed=job.audit_seed,
                                           audit_teacher=str(job.audit_teacher) if job.audit_teacher else None,
                                           row_column=ROW_NUMBER_COLUMN if job.id_column is None else None,
                                           stats=True),
                batch_size=32 * job.batch_size, batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=job.num_workers), num_cpus=threads,
                **({"num_gpus": gpus} if gpus else {}),
            ).materialize()
            written = predictions.filter(expr=ray.data.expressions.col("error").is_null()).drop_columns(
                ["error", STATS_COLUMN])
            _write(ray, written, output_dir, job.output_format)
            num_written, num_failed, layer_sum, batches = _write_errors(predictions, output_dir / ERRORS)
        finally:
            if started_ray:
                ray.shutdown()
        data_files = sorted(p.name for p in output_dir.iterdir() if p.name.startswith("part-"))
        manifest["shards"] = [  # the local engine's keys; what Ray does not attribute to a file is null
            shard_record(name, count_output_rows(output_dir / name, job.output_format))
            | {"exit_layers": None, "truncated": None, "seconds": None, "audit": None} for name in data_files]
        rows = num_written + num_failed
        num_layers = model.config.num_hidden_layers
        summary, audit = job_summary(batches, num_layers=num_layers, run=run_description(model, job), audit=job.audit())
        # the actors ran side by side: the job's speed is its rows over its wall time, not over the actors' summed time
        summary.update(seconds=time.perf_counter() - started, rows_per_second=rows / (time.perf_counter() - started))
        manifest.update(complete=True, next_row=rows, errors_bytes=(output_dir / ERRORS).stat().st_size,
                        totals={"rows": rows, "written": num_written, "failed": num_failed,
                                "exit_layer_sum": layer_sum},
                        summary=summary, audit=audit)
        write_manifest(output_dir, manifest)
    summary = summarize(job, manifest, model, rows_this_run=rows, started=started)
    if job.min_agreement is not None and summary.shortfalls:
        raise AgreementBelowMinimum(summary, job.min_agreement)
    return summary


def run_ray_predict(model_dir: str | os.PathLike, input_path: str | os.PathLike, output_dir: str | os.PathLike,
                    **options) -> PredictSummary:
    """``run_ray(PredictJob(model_dir, input_path, output_dir, engine="ray", **options))``.

    Args:
        model_dir, input_path, output_dir: :attr:`~costeff_fast.jobs.PredictJob.model`, ``input``, ``output``.
        options: the other fields of :class:`~costeff_fast.jobs.PredictJob` (``id_column``, ``batch_size``,
            ``num_workers``, ``address``, ``overwrite``, ...).

    Raises:
        RayNotInstalledError: Ray Data is not installed (checked first).
        JobArgumentError: a refused field or input, model, output directory or --address, before any row is
            classified.
    """
    require_ray()
    return run_ray(PredictJob(model_dir, input_path, output_dir, engine="ray", **options))


def _column(batch, name: str) -> list:
    """Column ``name`` of a pyarrow, pandas or numpy-dict batch as a list of Python values (None for missing)."""
    if isinstance(batch, pa.Table):
        if name not in batch.column_names:
            raise KeyError(f"the batch has no column {name!r} (columns: {', '.join(batch.column_names)})")
        return batch.column(name).to_pylist()
    if isinstance(batch, Mapping):
        if name not in batch:
            raise KeyError(f"the batch has no column {name!r} (columns: {', '.join(batch)})")
        return np.asarray(batch[name]).tolist()
    if name not in batch.columns:  # a pandas DataFrame
        raise KeyError(f"the batch has no column {name!r} (columns: {', '.join(map(str, batch.columns))})")
    series = batch[name]
    return series.astype(object).where(series.notna(), None).tolist()


def _sample_keys(values: list) -> np.ndarray:
    """The audit's sample keys of a batch: integer values >= 0 as they are, others the CRC-32 of their text."""
    keys = np.empty(len(values), dtype=np.int64)
    for index, value in enumerate(values):
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 0:
            keys[index] = int(value)
        else:
            keys[index] = zlib.crc32(str(value).encode())
    return keys


def _read(ray, files, columns: list[str]):
    """The input as a ray.data Dataset of ``columns``, in file order. Reads request no CPU, so actors holding
    every CPU of a small cluster cannot starve them."""
    paths = [str(path) for path in files.paths]
    if files.format == "parquet":
        return ray.data.read_parquet(paths, columns=columns, num_cpus=0)
    if files.format == "csv":
        convert = pacsv.ConvertOptions(column_types={name: pa.string() for name in columns}, include_columns=columns,
                                       strings_can_be_null=False)
        return ray.data.read_csv(paths, convert_options=convert,
                                 parse_options=pacsv.ParseOptions(newlines_in_values=True), num_cpus=0)
    return ray.data.read_json(paths, lines=True, num_cpus=0).select_columns(columns)


def _with_row_numbers(ray, dataset, column: str):
    """``dataset`` with its 0-based row numbers in ``column``: the blocks are materialized in order, counted, and
    each block numbers its rows from its offset."""
    # The task functions are defined here so that Ray ships them by value: a worker running them imports
    # pyarrow and numpy, not costeff_fast (and torch).
    def count(table):
        return table.num_rows

    def number(table, first_row):
        return table.append_column(column, pa.array(np.arange(first_row, first_row + table.num_rows, dtype=np.int64)))

    blocks = dataset.to_arrow_refs()
    counts = ray.get([ray.remote(num_cpus=0)(count).remote(block) for block in blocks])
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int).tolist()
    number = ray.remote(num_cpus=0)(number)
    return ray.data.from_arrow_refs([number.remote(block, offset) for block, offset in zip(blocks, offsets)])


def _write(ray, dataset, directory: Path, output_format: str) -> None:
    from ray.data.datasource import FilenameProvider

    class PartNames(FilenameProvider):
        def get_filename_for_task(self, write_uuid, task_index):
            return f"part-{task_index:06d}-{write_uuid}{SUFFIXES[output_format]}"

    names = PartNames()
    if output_format == "parquet":
        dataset.write_parquet(str(directory), filename_provider=names)
    elif output_format == "csv":
        dataset.write_csv(str(directory), filename_provider=names)
    else:
        dataset.write_json(str(directory), filename_provider=names, double_precision=15, force_ascii=False)


def _write_errors(predictions, path: Path) -> tuple[int, int, int, list[dict]]:
    """Write the failed rows of ``predictions`` to ``path`` as ``{"id", "reason"}`` lines; return the numbers of
    written and failed rows, the sum of the written rows' exit layers and the batches' counts (the
    :data:`STATS_COLUMN` entries)."""
    written = failed = layer_sum = 0
    batches = []
    with open(path, "wb") as handle:
        for batch in predictions.select_columns(["id", "exit_layer", "error", STATS_COLUMN]).iter_batches(
                batch_format="pyarrow"):
            bad = batch.filter(pc.is_valid(batch["error"]))
            handle.write("".join(json.dumps({"id": i, "reason": r}, ensure_ascii=False, default=str) + "\n"
                                 for i, r in zip(bad["id"].to_pylist(), bad["error"].to_pylist())).encode())
            failed += bad.num_rows
            written += batch.num_rows - bad.num_rows
            layer_sum += int(pc.sum(batch["exit_layer"]).as_py() or 0)
            batches += [json.loads(text) for text in batch[STATS_COLUMN].drop_null().to_pylist()]
        handle.flush()
        os.fsync(handle.fileno())
    return written, failed, layer_sum, batches

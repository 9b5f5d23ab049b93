"""The batch classification job behind ``costeff-fast predict``: files in, sharded predictions out, resumable.

:func:`predict_rows` is the per-batch step (rows in, one output row per input row); :func:`run_local` runs a
:class:`~costeff_fast.jobs.spec.PredictJob` by streaming its input through it shard by shard
(:mod:`~costeff_fast.jobs.sources`, :mod:`~costeff_fast.jobs.shards`), and the Ray integration
(:mod:`costeff_fast.integrations.ray`) runs the same job with the same step inside ``map_batches``, so both
engines write the same columns, the same reasons and the same manifest (:func:`job_identity`).

Output columns, in this order:

========================  ==============================================================================
``id``                    the row's id column value, or its 0-based row number when no id column is given
``label``                 the predicted label name (``config.id2label``), string
``prob_<label name>``     one column per label, in label-id order: softmax of the logits, float32
``exit_layer``            the 1-based layer whose exit answered, int64
========================  ==============================================================================

A row that cannot be processed (text missing, null, not a string or empty, the same for the pair column, a JSON
line that is not an object, a malformed CSV line) gets no output row; it goes to the errors file with its id
and the reason.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from tqdm.auto import tqdm

from ..config import resolve_entropy_threshold
from ..inference import CostEffEngineForSequenceClassification, from_pretrained
from .shards import ERRORS, ShardWriter, prepare_output
from .sources import JobArgumentError, count_rows, read_chunks
from .spec import DEFAULT_SHARD_ROWS, PredictJob

logger = logging.getLogger(__name__)


def label_names(model: CostEffEngineForSequenceClassification) -> list[str]:
    """The model's label names in label-id order (``config.id2label``, ``LABEL_<i>`` when unnamed).

    Raises:
        ValueError: two labels share a name (their probability columns would collide).
    """
    id2label = model.config.id2label or {}
    names = [str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(model.config.num_labels)]
    if len(set(names)) != len(names):
        raise ValueError(f"the checkpoint's labels repeat a name ({names}); give each class its own name in "
                         f"config.json id2label")
    return names


def output_schema(names: Sequence[str], id_type: pa.DataType, *, with_error: bool = False) -> pa.Schema:
    """The output columns (module docstring) for labels ``names``; ``with_error`` adds the ``error`` string column
    (the reason, null for a row with an answer) that :func:`predict_rows` returns."""
    fields = [pa.field("id", id_type), pa.field("label", pa.string())]
    fields += [pa.field(f"prob_{name}", pa.float32()) for name in names]
    fields.append(pa.field("exit_layer", pa.int64()))
    if with_error:
        fields.append(pa.field("error", pa.string()))
    return pa.schema(fields)


def text_problem(value, column: str) -> str | None:
    """Why ``value`` cannot be classified as the text of column ``column``, or None when it can."""
    if value is None or (isinstance(value, float) and value != value):  # null, or pandas' NaN for a missing str
        return f"missing text: column {column!r} is null or absent"
    if not isinstance(value, str):
        return f"text is not a string: column {column!r} holds {type(value).__name__} {_short(value)}"
    if not value.strip():
        return f"empty text: column {column!r} is {value!r}"
    return None


def predict_rows(
    model: CostEffEngineForSequenceClassification,
    texts: Sequence,
    ids: Sequence,
    *,
    pairs: Sequence | None = None,
    id_type: pa.DataType | None = None,
    batch_size: int = 64,
    text_column: str = "text",
    text_pair_column: str | None = None,
    problems: Sequence[str | None] | None = None,
    progress: Callable[[int], object] | None = None,
) -> pa.Table:
    """Classify rows with early exit; one output row per input row, in input order.

    The rows that can be classified run through :meth:`~costeff_fast.inference.CostEffEngineForSequenceClassification.
    generate_logits_stream` (one queue per layer, ``batch_size`` rows per layer call, tokenized and truncated as
    :meth:`~costeff_fast.inference.CostEffEngineForSequenceClassification.generate_logits` does) at the model's threshold.

    Args:
        model: the loaded checkpoint.
        texts: one value per row (strings; anything else is a failed row).
        ids: one id per row (any values Arrow can hold, converted to ``id_type``).
        pairs: one second text per row for text-pair models, or None.
        id_type: the type of the ``id`` column; ``pa.string()`` turns non-string ids into text (JSON numbers as
            JSON writes them); None infers it from ``ids``.
        batch_size: rows per layer call (>= 1).
        text_column, text_pair_column: column names, for the reasons.
        problems: per row, a reason it already failed (e.g. invalid JSON), or None.
        progress: called with a number of rows each time rows finish.

    Returns:
        A table with :func:`output_schema` ``(with_error=True)``: ``error`` is null for classified rows; a failed
        row has only ``id`` and ``error`` set.
    """
    num_rows = len(texts)
    reasons = list(problems) if problems is not None else [None] * num_rows
    for i in range(num_rows):
        if reasons[i] is None:
            reasons[i] = text_problem(texts[i], text_column)
        if reasons[i] is None and pairs is not None:
            reasons[i] = text_problem(pairs[i], text_pair_column or "text_pair")
    ok = np.array([reason is None for reason in reasons], dtype=bool)
    rows = np.flatnonzero(ok)
    items = [texts[i] for i in rows] if pairs is None else [(texts[i], pairs[i]) for i in rows]
    names = label_names(model)
    logits = torch.zeros(len(rows), len(names), dtype=torch.float32)
    layers = torch.zeros(len(rows), dtype=torch.long)
    done = 0
    for index, row_logits, layer in model.generate_logits_stream(items, batch_size=batch_size):
        logits[index], layers[index] = row_logits, layer
        done += 1
        if progress is not None and done % 64 == 0:
            progress(64)
    if progress is not None and done % 64:
        progress(done % 64)
    probabilities = np.zeros((num_rows, len(names)), dtype=np.float32)
    probabilities[rows] = torch.softmax(logits, dim=-1).numpy()
    label_ids = np.zeros(num_rows, dtype=np.int64)
    label_ids[rows] = logits.argmax(dim=-1).numpy()
    exit_layer = np.zeros(num_rows, dtype=np.int64)
    exit_layer[rows] = layers.numpy()
    failed = ~ok
    id_array = _id_array(ids, id_type)
    columns = [id_array, pa.array(np.array(names, dtype=object)[label_ids], type=pa.string(), mask=failed)]
    columns += [pa.array(np.ascontiguousarray(probabilities[:, k]), mask=failed) for k in range(len(names))]
    columns += [pa.array(exit_layer, mask=failed), pa.array(reasons, type=pa.string())]
    return pa.Table.from_arrays(columns, schema=output_schema(names, id_array.type, with_error=True))


def split_failed(table: pa.Table) -> tuple[pa.Table, list[dict]]:
    """Split :func:`predict_rows`' table into the output rows (``error`` dropped) and ``{"id", "reason"}`` dicts."""
    failed = pc.is_valid(table["error"])
    written = table.filter(pc.invert(failed)).drop_columns(["error"])
    bad = table.filter(failed)
    errors = [{"id": i, "reason": r} for i, r in zip(bad["id"].to_pylist(), bad["error"].to_pylist())]
    return written, errors


@dataclasses.dataclass
class PredictSummary:
    """What a predict job did.

    Attributes:
        output: the output directory.
        rows: input rows read, including failed ones and malformed lines.
        written: rows with an answer in the shards.
        failed: rows (and malformed lines) in the errors file.
        exit_layer_sum: sum of the written rows' exit layers.
        num_layers: the model's depth.
        rows_this_run: rows this run processed (less than ``rows`` when it resumed a job).
        seconds: wall time of this run (s), reading and writing included.
        files: output files, in row order.
    """

    output: Path
    rows: int
    written: int
    failed: int
    exit_layer_sum: int
    num_layers: int
    rows_this_run: int
    seconds: float
    files: list[str]

    @property
    def mean_exit_layer(self) -> float:
        return self.exit_layer_sum / self.written if self.written else float("nan")

    @property
    def rows_per_second(self) -> float:
        return self.rows_this_run / self.seconds if self.seconds > 0 else float("nan")

    def format(self) -> str:
        """A few lines for the terminal."""
        lines = [f"{self.rows:,} rows: {self.written:,} written to {self.output} ({len(self.files)} files), "
                 f"{self.failed:,} failed" + (f" (reasons in {self.output / ERRORS})" if self.failed else "")]
        speed = (f"{self.rows_per_second:,.0f} rows/s ({self.rows_this_run:,} rows in {self.seconds:.1f} s"
                 + (", resumed" if self.rows_this_run < self.rows else "") + ")") if self.rows_this_run else (
                 "the job was already complete: nothing to do")
        lines.append(f"mean exit layer {self.mean_exit_layer:.2f} of {self.num_layers}; {speed}")
        return "\n".join(lines)


def load_model(model_dir, *, entropy_threshold=None, backend: str = "auto", num_threads: int | str | None = "auto"):
    """:func:`~costeff_fast.inference.from_pretrained` with its refusals as one-line :class:`JobArgumentError` naming
    the flag (``--model``, ``--backend``, ``--entropy-threshold``); the checkpoint must carry its tokenizer."""
    try:
        model = from_pretrained(model_dir, backend=backend, num_threads=num_threads)
        label_names(model)
    except RuntimeError as error:  # the backend cannot run here
        raise JobArgumentError(f"--backend {backend}: {error}") from error
    except (OSError, ValueError, TypeError) as error:
        raise JobArgumentError(f"--model {model_dir}: {error}") from error
    if entropy_threshold is not None:  # what from_pretrained(entropy_threshold=...) does, refused by its flag
        try:
            resolve_entropy_threshold(entropy_threshold, model.config)
        except (ValueError, TypeError) as error:
            raise JobArgumentError(f"--entropy-threshold: {error}") from error
        model.config.entropy_threshold = entropy_threshold
    if model.tokenizer is None:
        raise JobArgumentError(f"--model {model_dir}: the checkpoint has no tokenizer files; save its tokenizer "
                               f"next to it (tokenizer.save_pretrained)")
    return model


def load_job_model(job: PredictJob, *, num_threads: int | str | None):
    """The job's model: :func:`load_model` with the job's threshold and backend and ``num_threads`` (as for
    :func:`~costeff_fast.inference.from_pretrained`)."""
    threshold = list(job.entropy_threshold) if isinstance(job.entropy_threshold, tuple) else job.entropy_threshold
    return load_model(job.model, entropy_threshold=threshold, backend=job.backend, num_threads=num_threads)


def model_identity(model_dir: str | os.PathLike) -> dict:
    """A checkpoint as the manifest names it, for either engine: its resolved ``path``, the sha256 of its
    ``config.json`` and, per weights file (``*.safetensors``, ``*.bin``), its name, size, modification time (ns)
    and sha256. A resumed job must find all of it unchanged."""
    model_dir = Path(model_dir).resolve()
    weights = sorted(p for p in model_dir.iterdir() if p.suffix in (".safetensors", ".bin"))
    return {"path": str(model_dir), "config_sha256": _sha256(model_dir / "config.json"),
            "weights": [{"file": p.name, "size": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns,
                         "sha256": _sha256(p)} for p in weights]}


def job_identity(job: PredictJob, model: CostEffEngineForSequenceClassification) -> dict:
    """What a resumed job must share with the job it continues (the manifest's ``job``): the input files (path,
    size, mtime), the model (:func:`model_identity`), its resolved threshold and labels, the columns, the output
    format and ``shard_rows`` (None for the Ray engine, which does not shard by rows). The backend, batch size and
    thread count may change (:meth:`PredictJob.parameters`: they do not change the answers beyond fp32 rounding)."""
    return {
        "input": {"format": job.files.format, "files": job.files.fingerprint()},
        "model": model_identity(job.model),
        "entropy_threshold": resolve_entropy_threshold(None, model.config),
        "labels": label_names(model),
        "text_column": job.text_column, "text_pair_column": job.text_pair_column, "id_column": job.id_column,
        "output_format": job.output_format, "shard_rows": job.shard_rows if job.engine == "local" else None,
    }


def summarize(job: PredictJob, manifest: dict, model: CostEffEngineForSequenceClassification, *, rows_this_run: int,
              started: float) -> PredictSummary:
    """The :class:`PredictSummary` of a job from its manifest's totals and shards."""
    totals = manifest["totals"]
    return PredictSummary(
        output=job.output, rows=totals["written"] + totals["failed"], written=totals["written"],
        failed=totals["failed"], exit_layer_sum=totals["exit_layer_sum"], num_layers=model.config.num_hidden_layers,
        rows_this_run=rows_this_run, seconds=time.perf_counter() - started,
        files=[shard["file"] for shard in manifest["shards"]])


def run_local(job: PredictJob) -> PredictSummary:
    """Run a :class:`PredictJob` in this process: every row of its input, classified into a directory of shards.

    The input is read ``job.shard_rows`` rows at a time (memory stays bounded by a shard, whatever the input's
    size); each chunk runs through :func:`predict_rows` and is committed as one shard plus its errors
    (:class:`~costeff_fast.jobs.shards.ShardWriter`): output order is input order. With ``job.resume`` a job that
    was stopped at any point (crash, ``kill -9``) continues after its last committed shard, with no row lost or
    repeated; the job's identity (:func:`job_identity`: input files, model, columns, threshold, output format,
    ``shard_rows``) must be unchanged.

    Returns:
        A :class:`PredictSummary`; ``failed > 0`` means some rows are in ``_errors.jsonl`` (the job still ran
        every other row).

    Raises:
        JobArgumentError: the job is for another engine, the model is refused (:func:`load_model`) or the output
            directory is (:func:`~costeff_fast.jobs.shards.prepare_output`, :class:`~costeff_fast.jobs.shards.
            ShardWriter`), before any row is classified.
    """
    if job.engine != "local":
        raise JobArgumentError(f"--engine {job.engine}: run_local runs local jobs; run this one with "
                               f"costeff_fast.integrations.ray.run_ray")
    started = time.perf_counter()
    # The model and its flags are checked before --overwrite deletes anything: a refused run leaves the output.
    model = load_job_model(job, num_threads=job.local_threads)
    manifest = prepare_output(job.output, resume=job.resume, overwrite=job.overwrite)
    writer = ShardWriter(job.output, job.output_format, job_identity(job, model), manifest,
                         parameters=job.parameters())
    start_row = writer.next_row
    text_column, text_pair_column, id_column = job.text_column, job.text_pair_column, job.id_column
    if writer.complete:
        logger.info("costeff_fast: %s is complete; nothing to resume", job.output)
    else:
        if start_row:
            logger.info("costeff_fast: resuming %s at row %d (%d shards committed)", job.output, start_row,
                        len(writer.manifest["shards"]))
        bar = tqdm(total=count_rows(job.files), initial=start_row, unit="rows", unit_scale=True, desc="predict",
                   dynamic_ncols=True, disable=None if job.progress is None else not job.progress)
        with bar:
            for chunk in read_chunks(job.files, list(job.columns), job.shard_rows, start_row):
                ids = chunk.columns[id_column] if id_column else range(chunk.first_row,
                                                                       chunk.first_row + chunk.num_rows)
                table = predict_rows(
                    model, chunk.columns[text_column], ids,
                    pairs=chunk.columns[text_pair_column] if text_pair_column else None, id_type=job.id_type,
                    batch_size=job.batch_size, text_column=text_column, text_pair_column=text_pair_column,
                    problems=chunk.problems, progress=bar.update)
                written, errors = split_failed(table)
                bar.update(len(errors))
                if id_column:
                    rows = np.flatnonzero(pc.is_valid(table["error"]).to_numpy(zero_copy_only=False))
                    for error, row in zip(errors, rows):
                        error["row"] = chunk.first_row + int(row)
                errors += [{"id": None, "reason": reason} for reason in chunk.malformed]
                layer_sum = int(pc.sum(written["exit_layer"]).as_py() or 0)
                writer.commit(chunk.first_row, chunk.num_rows, written, errors, layer_sum)
        writer.finish()
    return summarize(job, writer.manifest, model, rows_this_run=writer.next_row - start_row, started=started)


def run_predict(model_dir: str | os.PathLike, input_path: str | os.PathLike, output_dir: str | os.PathLike,
                **options) -> PredictSummary:
    """``run_local(PredictJob(model_dir, input_path, output_dir, **options))``: classify every row of a CSV,
    JSON Lines or Parquet input into a directory of shards in this process.

    Args:
        model_dir, input_path, output_dir: :attr:`PredictJob.model`, ``input``, ``output``.
        options: the other fields of :class:`PredictJob` (``text_column``, ``id_column``, ``batch_size``,
            ``shard_rows``, ``resume``, ``overwrite``, ``progress``, ...).

    Raises:
        JobArgumentError: a refused field or input (:class:`PredictJob`), model or output directory
            (:func:`run_local`), before any row is classified (one line naming the flag).
    """
    return run_local(PredictJob(model_dir, input_path, output_dir, **options))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _id_array(ids: Sequence, id_type: pa.DataType | None) -> pa.Array:
    if id_type is not None and pa.types.is_string(id_type):
        ids = [value if value is None or isinstance(value, str) else _as_text(value) for value in ids]
    if isinstance(ids, range):
        return pa.array(np.arange(ids.start, ids.stop, dtype=np.int64), type=id_type)
    return pa.array(ids, type=id_type)


def _as_text(value) -> str:
    """A non-string id as text: JSON scalars as JSON writes them (``17``, ``1.5``, ``true``), others with str."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (bool, int, float)):
        return json.dumps(value)
    return str(value)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."

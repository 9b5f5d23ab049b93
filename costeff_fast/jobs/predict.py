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
``logit_<label name>``    with ``output_logits`` (``--logits``): the answering exit's logits, float32
``entropy``               with ``output_entropy`` (``--entropy``): that exit's entropy in nats, float32
(kept columns)            ``keep_columns`` (``--keep-columns``): input columns copied as they are read
========================  ==============================================================================

With ``audit_rate`` the job also runs the agreement audit (:mod:`costeff_fast.audit`) on a sample of its rows;
every shard's counts go into the manifest and are summed into its ``summary`` and ``audit``
(:func:`job_summary`).

A row that cannot be processed (text missing, null, not a string or empty, the same for the pair column, a JSON
line that is not an object, a malformed CSV line) gets no output row; it goes to the errors file with its id
and the reason.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from tqdm.auto import tqdm

from ..audit import AgreementAudit, AuditCounts, agreement_shortfalls
from ..config import resolve_entropy_threshold
from ..inference import CostEffEngineForSequenceClassification, from_pretrained
from ..reference import exit_entropy
from .shards import ERRORS, JobLock, ShardWriter, file_sha256, prepare_output
from .sources import JobArgumentError, count_rows, read_chunks
from .spec import PredictJob

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


def output_schema(names: Sequence[str], id_type: pa.DataType, *, with_error: bool = False,
                  output_logits: bool = False, output_entropy: bool = False,
                  keep: Sequence[tuple[str, pa.DataType]] = ()) -> pa.Schema:
    """The output columns (module docstring) for labels ``names``: ``id``, ``label``, ``prob_<name>`` per label,
    ``exit_layer``, then ``logit_<name>`` per label with ``output_logits``, ``entropy`` with ``output_entropy``, the
    ``keep`` columns ``(name, type)`` copied from the input, and ``error`` (the reason, null for a row with an
    answer) with ``with_error``, as :func:`predict_rows` returns them."""
    fields = [pa.field("id", id_type), pa.field("label", pa.string())]
    fields += [pa.field(f"prob_{name}", pa.float32()) for name in names]
    fields.append(pa.field("exit_layer", pa.int64()))
    if output_logits:
        fields += [pa.field(f"logit_{name}", pa.float32()) for name in names]
    if output_entropy:
        fields.append(pa.field("entropy", pa.float32()))
    fields += [pa.field(name, kind) for name, kind in keep]
    if with_error:
        fields.append(pa.field("error", pa.string()))
    return pa.schema(fields)


def check_keep_columns(names: Sequence[str], keep_columns: Sequence[str], *, output_logits: bool = False,
                       output_entropy: bool = False) -> None:
    """Refuse ``--keep-columns`` that would collide with an output column of labels ``names``.

    Raises:
        JobArgumentError: one line naming the clashing columns and the fix.
    """
    produced = set(output_schema(names, pa.int64(), with_error=True, output_logits=output_logits,
                                 output_entropy=output_entropy).names)
    clash = [column for column in keep_columns if column in produced]
    if clash:
        raise JobArgumentError(f"--keep-columns {','.join(clash)}: the output already has a column of that name; "
                               f"rename the input column or drop it from --keep-columns")


@dataclasses.dataclass
class BatchStats:
    """What :func:`predict_rows` counted besides its output rows.

    Attributes:
        truncated: rows whose tokens passed the model's ``max_length`` and were cut to it.
        audit: the audit's counts of these rows (:class:`~costeff_fast.audit.AuditCounts`), None without an audit.
        seconds: wall time of the call (s).
    """

    truncated: int = 0
    audit: AuditCounts | None = None
    seconds: float = 0.0


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
    keep: Mapping[str, Sequence] | None = None,
    output_logits: bool = False,
    output_entropy: bool = False,
    audit: AgreementAudit | None = None,
    row_numbers: Sequence[int] | None = None,
    stats: BatchStats | None = None,
) -> pa.Table:
    """Classify rows with early exit; one output row per input row, in input order.

    The rows that can be classified run through :meth:`~costeff_fast.inference.CostEffEngineForSequenceClassification.
    generate_logits_stream` (one queue per layer, ``batch_size`` rows per layer call, tokenized and truncated as
    :meth:`~costeff_fast.inference.CostEffEngineForSequenceClassification.generate_logits` does) at the model's
    threshold.

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
        keep: input columns to copy to the output, name -> one value per row (types inferred by Arrow).
        output_logits, output_entropy: add the ``logit_<label>`` and ``entropy`` columns (:func:`output_schema`).
        audit: an :class:`~costeff_fast.audit.AgreementAudit` run on the classified rows the sample takes.
        row_numbers: the rows' 0-based numbers in the job (the audit's sample is drawn on them); default
            ``0..N-1``.
        stats: a :class:`BatchStats` filled with this call's counts.

    Returns:
        A table with :func:`output_schema` ``(with_error=True, ...)``: ``error`` is null for classified rows; a
        failed row has only ``id``, the kept columns and ``error`` set.
    """
    started = time.perf_counter()
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
    truncated_before = model.inputs.truncated_rows
    for index, row_logits, layer in model.generate_logits_stream(items, batch_size=batch_size):
        logits[index], layers[index] = row_logits, layer
        done += 1
        if progress is not None and done % 64 == 0:
            progress(64)
    if progress is not None and done % 64:
        progress(done % 64)
    truncated = model.inputs.truncated_rows - truncated_before
    early = logits.argmax(dim=-1)
    audit_counts = None
    if audit is not None:
        numbers = np.arange(num_rows) if row_numbers is None else np.asarray(row_numbers, dtype=np.int64)
        audit_counts = audit.update(items, numbers[rows], early.numpy(), layers.numpy())
    probabilities = np.zeros((num_rows, len(names)), dtype=np.float32)
    probabilities[rows] = torch.softmax(logits, dim=-1).numpy()
    label_ids = np.zeros(num_rows, dtype=np.int64)
    label_ids[rows] = early.numpy()
    exit_layer = np.zeros(num_rows, dtype=np.int64)
    exit_layer[rows] = layers.numpy()
    failed = ~ok
    id_array = _id_array(ids, id_type)
    columns = [id_array, pa.array(np.array(names, dtype=object)[label_ids], type=pa.string(), mask=failed)]
    columns += [pa.array(np.ascontiguousarray(probabilities[:, k]), mask=failed) for k in range(len(names))]
    columns.append(pa.array(exit_layer, mask=failed))
    if output_logits:
        all_logits = np.zeros((num_rows, len(names)), dtype=np.float32)
        all_logits[rows] = logits.numpy()
        columns += [pa.array(np.ascontiguousarray(all_logits[:, k]), mask=failed) for k in range(len(names))]
    if output_entropy:
        entropy = np.zeros(num_rows, dtype=np.float32)
        entropy[rows] = exit_entropy(logits).numpy()
        columns.append(pa.array(entropy, mask=failed))
    kept = [pa.array(list(values)) for values in (keep or {}).values()]
    columns += kept
    columns.append(pa.array(reasons, type=pa.string()))
    schema = output_schema(names, id_array.type, with_error=True, output_logits=output_logits,
                           output_entropy=output_entropy, keep=[(name, array.type) for name, array in
                                                                zip(keep or {}, kept)])
    if stats is not None:
        stats.truncated, stats.audit, stats.seconds = truncated, audit_counts, time.perf_counter() - started
    return pa.Table.from_arrays(columns, schema=schema)


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
        truncated: written rows cut to the model's max length.
        audit: the agreement audit (the manifest's ``audit``, :meth:`~costeff_fast.audit.AuditCounts.result`),
            None when off.
        min_agreement: the job's ``--min-agreement``, None when not set.
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
    truncated: int = 0
    audit: dict | None = None
    min_agreement: float | None = None

    @property
    def shortfalls(self) -> list[str]:
        """:func:`~costeff_fast.audit.agreement_shortfalls` of the audit at ``min_agreement`` (empty when either is
        None)."""
        if self.audit is None or self.min_agreement is None:
            return []
        return agreement_shortfalls(self.audit, self.min_agreement)

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
        if self.truncated:
            lines.append(f"{self.truncated:,} rows were longer than the model's max length and were truncated")
        if self.audit is not None:
            share, level = self.audit["full_depth"], f"{self.audit['confidence']:.0%}"
            line = f"audit: {self.audit['rows']:,} rows, agreement with full depth "
            line += (f"{share['agreement']:.4f} ({level} interval {share['interval'][0]:.3f}-"
                     f"{share['interval'][1]:.3f})") if share["agreement"] is not None else "- (no row audited yet)"
            teacher = self.audit["teacher_agreement"]
            if teacher is not None and teacher["agreement"] is not None:
                line += (f", with the teacher {teacher['agreement']:.4f} ({teacher['interval'][0]:.3f}-"
                         f"{teacher['interval'][1]:.3f})")
            lines.append(line + f"; costeff-fast info {self.output} for more")
        return "\n".join(lines)


def load_model(model_dir, *, entropy_threshold=None, backend: str = "auto", num_threads: int | str | None = "auto",
               device: str | None = None):
    """:func:`~costeff_fast.inference.from_pretrained` with its refusals as one-line :class:`JobArgumentError` naming
    the flag (``--model``, ``--backend``, ``--entropy-threshold``, ``--device``); the checkpoint must carry its
    tokenizer."""
    try:
        model = from_pretrained(model_dir, backend=backend, num_threads=num_threads, device=device)
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
    return load_model(job.model, entropy_threshold=threshold, backend=job.backend, num_threads=num_threads,
                      device=job.device)


def run_description(model: CostEffEngineForSequenceClassification, job: PredictJob) -> dict:
    """How the job ran, for its summary: the resolved ``backend`` name, ``num_threads`` (the job's setting:
    an int, ``"auto"``, or torch's count when None) and ``device``."""
    backend = model.backend
    threads = job.worker_threads if job.engine == "ray" else job.local_threads
    return {"backend": backend.name, "num_threads": threads, "device": str(backend.device)}


def model_identity(model_dir: str | os.PathLike) -> dict:
    """A checkpoint as the manifest names it, for either engine: its resolved ``path``, the sha256 of its
    ``config.json`` and, per weights file (``*.safetensors``, ``*.bin``), its name, size, modification time (ns)
    and sha256. A resumed job must find all of it unchanged."""
    model_dir = Path(model_dir).resolve()
    weights = sorted(p for p in model_dir.iterdir() if p.suffix in (".safetensors", ".bin"))
    return {"path": str(model_dir), "config_sha256": file_sha256(model_dir / "config.json"),
            "weights": [{"file": p.name, "size": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns,
                         "sha256": file_sha256(p)} for p in weights]}


def job_identity(job: PredictJob, model: CostEffEngineForSequenceClassification) -> dict:
    """What a resumed job must share with the job it continues (the manifest's ``job``): the input files (path,
    size, mtime), the model (:func:`model_identity`), its resolved threshold and labels, the columns, the output
    format and ``shard_rows`` (None for the Ray engine, which does not shard by rows), the extra output columns
    (``keep_columns``, ``output_logits``, ``output_entropy``) and the audit (:meth:`PredictJob.audit`: rate, seed,
    teacher), whose sample must stay the same across a resume. The backend, batch size and
    thread count may change (:meth:`PredictJob.parameters`: they do not change the answers beyond fp32 rounding)."""
    return {
        "input": {"format": job.files.format, "files": job.files.fingerprint()},
        "model": model_identity(job.model),
        "entropy_threshold": resolve_entropy_threshold(None, model.config),
        "labels": label_names(model),
        "text_column": job.text_column, "text_pair_column": job.text_pair_column, "id_column": job.id_column,
        "output_format": job.output_format, "shard_rows": job.shard_rows if job.engine == "local" else None,
        "keep_columns": list(job.keep_columns), "output_logits": job.output_logits,
        "output_entropy": job.output_entropy, "audit": job.audit(),
    }


def shard_stats(table: pa.Table, stats: BatchStats, num_layers: int) -> dict:
    """What a shard adds to the job's summary, stored in its manifest entry so that the summary of a resumed job
    (or of one whose altered shards were recomputed) is the sum of its committed shards: ``exit_layers`` (rows
    per exit layer, layer 1 first), ``truncated`` rows, ``seconds`` of classification and ``audit`` counts
    (:class:`~costeff_fast.audit.AuditCounts` as a dict, None without an audit)."""
    histogram = np.bincount(table["exit_layer"].to_numpy(zero_copy_only=False).astype(np.int64),
                            minlength=num_layers + 1)[1:] if table.num_rows else np.zeros(num_layers, dtype=np.int64)
    return {"exit_layers": histogram.tolist(), "truncated": stats.truncated, "seconds": round(stats.seconds, 6),
            "audit": stats.audit.to_dict() if stats.audit is not None else None}


def job_summary(shards: Sequence[dict], *, num_layers: int, run: dict, audit: dict | None,
                confidence: float = 0.95) -> tuple[dict, dict | None]:
    """The manifest's ``summary`` and ``audit`` from its shards' :func:`shard_stats` (the same schema for both
    engines; the Ray engine passes one entry for the whole job).

    Args:
        shards: manifest shard entries holding :func:`shard_stats` keys.
        num_layers: the model's depth.
        run: how the job ran: ``backend`` (the resolved name), ``num_threads``, ``device``.
        audit: the job's audit identity (:meth:`PredictJob.audit`), None when the audit is off.

    Returns:
        ``summary``: ``rows_per_second`` (classified rows, written or failed, per second of classification; None
        before any), ``seconds``, ``exit_layer_histogram`` (written rows per exit layer, layer 1 first),
        ``truncated``, and the ``run`` keys; ``audit``: :meth:`~costeff_fast.audit.AuditCounts.result` of the
        summed counts, or None.
    """
    histogram = np.zeros(num_layers, dtype=np.int64)
    truncated, seconds, rows = 0, 0.0, 0
    counts = AuditCounts(num_layers, teacher=bool(audit and audit["teacher"])) if audit else None
    for shard in shards:
        histogram += np.asarray(shard.get("exit_layers") or [0] * num_layers, dtype=np.int64)
        truncated += shard.get("truncated") or 0
        seconds += shard.get("seconds") or 0.0
        rows += shard.get("rows") or 0
        if counts is not None and shard.get("audit"):
            counts = counts.merge(AuditCounts.from_dict(shard["audit"]))
    summary = {"rows_per_second": rows / seconds if seconds > 0 else None, "seconds": seconds,
               "exit_layer_histogram": histogram.tolist(), "truncated": truncated, **run}
    result = counts.result(rate=audit["rate"], seed=audit["seed"], teacher_path=audit["teacher"],
                           confidence=confidence) if counts is not None else None
    return summary, result


def summarize(job: PredictJob, manifest: dict, model: CostEffEngineForSequenceClassification, *, rows_this_run: int,
              started: float) -> PredictSummary:
    """The :class:`PredictSummary` of a job from its manifest's totals and shards."""
    totals = manifest["totals"]
    return PredictSummary(
        output=job.output, rows=totals["written"] + totals["failed"], written=totals["written"],
        failed=totals["failed"], exit_layer_sum=totals["exit_layer_sum"], num_layers=model.config.num_hidden_layers,
        rows_this_run=rows_this_run, seconds=time.perf_counter() - started,
        files=[shard["file"] for shard in manifest["shards"]],
        truncated=(manifest.get("summary") or {}).get("truncated", 0), audit=manifest.get("audit"),
        min_agreement=job.min_agreement)


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
    names = label_names(model)
    check_keep_columns(names, job.keep_columns, output_logits=job.output_logits, output_entropy=job.output_entropy)
    audit = _job_audit(job, model)
    num_layers = model.config.num_hidden_layers
    run = run_description(model, job)

    def derive(shards: list[dict]) -> dict:
        summary, audit_result = job_summary(shards, num_layers=num_layers, run=run, audit=job.audit())
        return {"summary": summary, "audit": audit_result}

    with JobLock(job.output):  # no second job writes to this output until this one ends
        manifest = prepare_output(job.output, resume=job.resume, overwrite=job.overwrite)
        writer = ShardWriter(job.output, job.output_format, job_identity(job, model), manifest,
                             parameters=job.parameters(), derive=derive)
        start_row = writer.next_row
        text_column, text_pair_column, id_column = job.text_column, job.text_pair_column, job.id_column
        if writer.complete:
            logger.info("costeff_fast: %s is complete; nothing to resume", job.output)
        else:
            if start_row:
                logger.info("costeff_fast: resuming %s at row %d (%d shards committed)", job.output, start_row,
                            len(writer.manifest["shards"]))
            bar = tqdm(total=count_rows(job.files), initial=start_row, unit="rows", unit_scale=True,
                       desc="predict", dynamic_ncols=True, disable=None if job.progress is None else not job.progress)
            with bar:
                mark = time.perf_counter()
                texts = [column for column in (text_column, text_pair_column) if column]  # NUL bytes fail these only
                for chunk in read_chunks(job.files, list(job.columns), job.shard_rows, start_row, text_columns=texts):
                    numbers = range(chunk.first_row, chunk.first_row + chunk.num_rows)
                    stats = BatchStats()
                    table = predict_rows(
                        model, chunk.columns[text_column], chunk.columns[id_column] if id_column else numbers,
                        pairs=chunk.columns[text_pair_column] if text_pair_column else None, id_type=job.id_type,
                        batch_size=job.batch_size, text_column=text_column, text_pair_column=text_pair_column,
                        problems=chunk.problems, progress=bar.update,
                        keep={name: chunk.columns[name] for name in job.keep_columns},
                        output_logits=job.output_logits, output_entropy=job.output_entropy, audit=audit,
                        row_numbers=numbers, stats=stats)
                    written, errors = split_failed(table)
                    bar.update(len(errors))
                    if id_column:
                        rows = np.flatnonzero(pc.is_valid(table["error"]).to_numpy(zero_copy_only=False))
                        for error, row in zip(errors, rows):
                            error["row"] = chunk.first_row + int(row)
                    errors += [{"id": None, "reason": reason} for reason in chunk.malformed]
                    layer_sum = int(pc.sum(written["exit_layer"]).as_py() or 0)
                    stats.seconds = time.perf_counter() - mark  # reading and classifying since the last commit
                    writer.commit(chunk.first_row, chunk.num_rows, written, errors, layer_sum,
                                  extra=shard_stats(written, stats, num_layers))
                    mark = time.perf_counter()
            writer.finish()
    summary = summarize(job, writer.manifest, model, rows_this_run=writer.next_row - start_row, started=started)
    if job.min_agreement is not None and summary.shortfalls:
        raise AgreementBelowMinimum(summary, job.min_agreement)
    return summary


def _job_audit(job: PredictJob, model: CostEffEngineForSequenceClassification) -> AgreementAudit | None:
    """The job's :class:`~costeff_fast.audit.AgreementAudit`, None when off; a teacher that cannot be loaded or
    labels otherwise is refused by its flag."""
    if not job.audit_rate:
        return None
    try:
        return AgreementAudit(model, job.audit_rate, job.audit_seed, job.audit_teacher)
    except ValueError as error:
        raise JobArgumentError(f"--audit-teacher {job.audit_teacher}: {error}") from error


class AgreementBelowMinimum(Exception):
    """A job ran to the end (its output is complete), and its agreement audit says the early exits agree with a
    reference less than ``--min-agreement``: the Wilson interval of an audited agreement lies wholly below it.

    Attributes:
        summary: the job's :class:`PredictSummary`.
        min_agreement: the minimum asked for.
    """

    def __init__(self, summary: PredictSummary, min_agreement: float):
        self.summary, self.min_agreement = summary, min_agreement
        super().__init__(f"the audit puts the early exits' agreement below --min-agreement {min_agreement}: "
                         f"{'; '.join(summary.shortfalls)}; lower the threshold (--entropy-threshold) or "
                         f"compress with a smaller --max-drop (the output in {summary.output} is complete)")


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

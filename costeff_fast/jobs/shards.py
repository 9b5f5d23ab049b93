"""Crash-safe output of a batch job: shards written atomically, an errors file, and a manifest that says what is done.

An output directory holds::

    part-000000.parquet ...   one shard per chunk of input rows, in input order (or .csv / .jsonl)
    _errors.jsonl             one JSON object per row that could not be processed: {"id", "reason"[, "row"]}
    _manifest.json            the job's identity (input files, model, columns, threshold, ...), how it ran, every
                              committed shard with its row range and counts, the committed length of
                              _errors.jsonl, totals (schema below; both engines write it)

Committing a shard: the shard goes to a hidden temporary file, is flushed to disk and renamed into place; its
errors are appended to ``_errors.jsonl`` and flushed; then the manifest is replaced the same way (temporary file,
fsync, rename, fsync of the directory). The manifest is the commit point: a job killed at any moment (even by
``kill -9``) leaves a manifest describing whole shards only. Resuming deletes what the manifest does not list
(temporary files, a shard renamed after the last manifest), cuts ``_errors.jsonl`` back to its committed length
and continues from the first row after the last committed shard, so no row is lost or written twice.

The manifest (:data:`SCHEMA_VERSION` 2), written by :func:`write_manifest` for the local and the Ray engine::

    schema_version  2
    engine          "local" or "ray"
    job             what a resumed job must share with the job it continues
                    (:func:`~costeff_fast.jobs.predict.job_identity`): input {format, files: [{path, size,
                    mtime_ns}]}, model {path, config_sha256, weights: [{file, size, mtime_ns, sha256}]},
                    entropy_threshold (one per layer, resolved), labels, text_column, text_pair_column,
                    id_column, output_format, shard_rows (null for Ray)
    parameters      how the last run ran (:meth:`~costeff_fast.jobs.PredictJob.parameters`): batch_size,
                    backend, num_threads, num_workers and address (null for the local engine)
    complete        whether every input row is done
    next_row        the first input row not committed
    errors_bytes    the committed length of _errors.jsonl
    shards          [{file, first_row, rows, written, failed, exit_layer_sum}] in row order: ``rows`` input
                    rows covered, ``written`` rows in the file, ``failed`` rows in _errors.jsonl; the Ray engine
                    knows ``written`` only (its failed rows are not attributed to files): the others are null
    totals          {rows, written, failed, exit_layer_sum}
    updated         when the manifest was written (local time, ISO 8601)
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from .sources import JobArgumentError

MANIFEST = "_manifest.json"
ERRORS = "_errors.jsonl"
#: output format -> file suffix
SUFFIXES = {"parquet": ".parquet", "csv": ".csv", "jsonl": ".jsonl"}
#: the manifest's layout (module docstring); 1 had ``version`` instead and no ``engine`` or ``parameters``
SCHEMA_VERSION = 2


def atomic_write(path: Path, write) -> None:
    """Write ``path`` through ``write(binary_file)`` into a hidden temporary sibling, fsync it and rename it over
    ``path``, then fsync the directory: readers and crashes see the old file or the whole new one."""
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    _fsync_directory(path.parent)


def write_table(table: pa.Table, handle, output_format: str) -> None:
    """Write ``table`` to an open binary file as Parquet, CSV (with a header) or JSON Lines (one object per row,
    floats exactly as stored, non-JSON values as strings)."""
    if output_format == "parquet":
        pq.write_table(table, handle)
    elif output_format == "csv":
        pacsv.write_csv(table, handle)
    elif output_format == "jsonl":
        for batch in table.to_batches(max_chunksize=4096):
            handle.write("".join(json.dumps(row, ensure_ascii=False, default=str) + "\n"
                                 for row in batch.to_pylist()).encode())
    else:
        raise ValueError(f"unknown output format {output_format!r}; use one of {', '.join(SUFFIXES)}")


def job_files(directory: Path) -> list[Path]:
    """The files a job writes into ``directory``: shards, temporary files, errors and manifest."""
    return sorted(p for p in directory.iterdir() if p.is_file() and (
        p.name.startswith(("part-", ".part-", f".{MANIFEST}", f".{ERRORS}")) or p.name in (MANIFEST, ERRORS)))


def prepare_output(directory: Path, *, resume: bool, overwrite: bool, argument: str = "--out") -> dict | None:
    """Check an output directory before a job starts; return its manifest when the job resumes, else None.

    A new or empty directory is used as it is. A directory with a manifest is resumed with ``resume``, emptied of
    the job's files with ``overwrite``, and refused otherwise. A directory with other files and no manifest
    (not a job's output) is refused, as is a file.

    Raises:
        JobArgumentError: the directory is refused, or its manifest is unreadable.
    """
    if directory.exists() and not directory.is_dir():
        raise JobArgumentError(f"{argument} {directory}: exists and is not a directory; the output is a directory "
                               f"of shards")
    if not directory.exists() or not any(directory.iterdir()):
        return None
    manifest_path = directory / MANIFEST
    if not manifest_path.exists():
        raise JobArgumentError(f"{argument} {directory}: holds files and no {MANIFEST}, so it is not a job's "
                               f"output; choose a new or empty directory")
    if resume:
        try:
            return json.loads(manifest_path.read_text())
        except (OSError, ValueError) as error:
            raise JobArgumentError(f"{argument} {directory}: cannot read {MANIFEST} ({error}); start over with "
                                   f"--overwrite") from error
    if not overwrite:
        raise JobArgumentError(f"{argument} {directory}: holds a job's output; pass --resume to continue it or "
                               f"--overwrite to start over")
    for path in job_files(directory):
        path.unlink()
    return None


def new_manifest(engine: str, job: dict, parameters: dict) -> dict:
    """The manifest of a job that has committed nothing yet (module docstring)."""
    return {"schema_version": SCHEMA_VERSION, "engine": engine, "job": json.loads(json.dumps(job)),
            "parameters": dict(parameters), "complete": False, "next_row": 0, "errors_bytes": 0, "shards": [],
            "totals": {"rows": 0, "written": 0, "failed": 0, "exit_layer_sum": 0}}


def shard_record(file: str, written: int, *, first_row: int | None = None, rows: int | None = None,
                 failed: int | None = None, exit_layer_sum: int | None = None) -> dict:
    """One entry of the manifest's ``shards``; None where the engine does not know a count."""
    return {"file": file, "first_row": first_row, "rows": rows, "written": written, "failed": failed,
            "exit_layer_sum": exit_layer_sum}


def write_manifest(directory: Path, manifest: dict) -> None:
    """Stamp ``manifest`` with the time and replace ``directory/_manifest.json`` atomically (:func:`atomic_write`)."""
    manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    text = json.dumps(manifest, indent=1).encode()
    atomic_write(Path(directory) / MANIFEST, lambda handle: handle.write(text))


def count_output_rows(path: Path, output_format: str) -> int:
    """Rows of an output file: Parquet metadata, CSV rows after the header, JSON Lines non-blank lines."""
    if output_format == "parquet":
        return pq.ParquetFile(path).metadata.num_rows
    if output_format == "csv":
        options = pacsv.ConvertOptions(column_types={"id": pa.string()}, include_columns=["id"])
        return pacsv.read_csv(path, convert_options=options).num_rows
    with open(path, "rb") as handle:
        return sum(1 for line in handle if line.strip())


class ShardWriter:
    """Commits shards, errors and the manifest of one job (see the module docstring).

    Args:
        directory: the output directory (created when missing); checked by :func:`prepare_output` first.
        output_format: ``"parquet"``, ``"csv"`` or ``"jsonl"``.
        job: the job's identity (JSON-serializable): a resumed job must have the same.
        manifest: the manifest returned by :func:`prepare_output` to resume, or None for a new job.
        parameters: how this run runs (the manifest's ``parameters``, replaced at this run's next commit).

    Raises:
        JobArgumentError: the manifest is of another job (the message lists what differs), of another schema
            version, or of a Ray job.
    """

    def __init__(self, directory: Path, output_format: str, job: dict, manifest: dict | None = None,
                 parameters: dict | None = None):
        self.directory = Path(directory)
        self.output_format = output_format
        self.suffix = SUFFIXES[output_format]
        if manifest is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self.manifest = new_manifest("local", job, parameters or {})
            (self.directory / ERRORS).write_bytes(b"")
            self._write_manifest()
            return
        check_resumable(self.directory, manifest, job)
        self.manifest = manifest
        if parameters is not None:
            self.manifest["parameters"] = dict(parameters)
        self._discard_uncommitted()

    @property
    def next_row(self) -> int:
        """The first input row not yet committed."""
        return self.manifest["next_row"]

    @property
    def complete(self) -> bool:
        return self.manifest["complete"]

    def commit(self, first_row: int, num_rows: int, table: pa.Table, errors: list[dict], exit_layer_sum: int) -> None:
        """Commit the outputs of input rows ``[first_row, first_row + num_rows)``.

        Args:
            first_row: must equal :attr:`next_row`.
            num_rows: input rows covered (written and failed rows with row numbers).
            table: the written rows, in input order.
            errors: one JSON-serializable dict per failed row (malformed lines included).
            exit_layer_sum: sum of the written rows' exit layers (for the mean in the summary).
        """
        if first_row != self.next_row:
            raise ValueError(f"shard starts at row {first_row}, expected {self.next_row}")
        index = len(self.manifest["shards"])
        name = f"part-{index:06d}{self.suffix}"
        atomic_write(self.directory / name, lambda handle: write_table(table, handle, self.output_format))
        errors_bytes = self.manifest["errors_bytes"]
        if errors:
            with open(self.directory / ERRORS, "ab") as handle:
                handle.write("".join(json.dumps(error, ensure_ascii=False, default=str) + "\n"
                                     for error in errors).encode())
                handle.flush()
                os.fsync(handle.fileno())
                errors_bytes = handle.tell()
        self.manifest["shards"].append(shard_record(name, table.num_rows, first_row=first_row, rows=num_rows,
                                                    failed=len(errors), exit_layer_sum=exit_layer_sum))
        totals = self.manifest["totals"]
        totals["rows"] += num_rows
        totals["written"] += table.num_rows
        totals["failed"] += len(errors)
        totals["exit_layer_sum"] += exit_layer_sum
        self.manifest["next_row"] = first_row + num_rows
        self.manifest["errors_bytes"] = errors_bytes
        self._write_manifest()

    def finish(self) -> dict:
        """Mark the job complete in the manifest and return the manifest."""
        self.manifest["complete"] = True
        self._write_manifest()
        return self.manifest

    def _write_manifest(self) -> None:
        write_manifest(self.directory, self.manifest)

    def _discard_uncommitted(self) -> None:
        """Delete what a killed job left beyond its last commit; cut the errors file to its committed length."""
        listed = {shard["file"] for shard in self.manifest["shards"]} | {MANIFEST, ERRORS}
        for path in job_files(self.directory):
            if path.name not in listed:
                path.unlink()
        with open(self.directory / ERRORS, "ab") as handle:
            handle.truncate(self.manifest["errors_bytes"])
            os.fsync(handle.fileno())


def check_resumable(directory: Path, manifest: dict, job: dict) -> None:
    """Refuse to resume ``manifest`` (read from ``directory``) with a job whose identity is ``job``.

    Raises:
        JobArgumentError: another schema version, a Ray job's output, or another job (the message lists the
            identity keys that differ).
    """
    if manifest.get("schema_version") != SCHEMA_VERSION:
        found = manifest.get("schema_version", manifest.get("version"))
        raise JobArgumentError(f"--resume: {directory / MANIFEST} has schema version {found}, this costeff_fast "
                               f"resumes version {SCHEMA_VERSION}; start over with --overwrite or choose a new "
                               f"--out")
    if manifest.get("engine") != "local":
        raise JobArgumentError(f"--resume: {directory} holds the output of an --engine {manifest.get('engine')} "
                               f"job, which cannot be resumed; start over with --overwrite or choose a new --out")
    job = json.loads(json.dumps(job))  # as it reads back from the manifest
    old = manifest.get("job") or {}
    if old != job:
        differ = sorted(key for key in set(old) | set(job) if old.get(key) != job.get(key))
        raise JobArgumentError(f"--resume: {directory} holds the output of another job (it differs in: "
                               f"{', '.join(differ)}); start over with --overwrite or choose a new --out")


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)

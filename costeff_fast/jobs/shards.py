"""Crash-safe output of a batch job: shards written atomically, an errors file, and a manifest that says what is done.

An output directory holds::

    part-000000.parquet ...   one shard per chunk of input rows, in input order (or .csv / .jsonl)
    _errors.jsonl             one JSON object per row that could not be processed: {"id", "reason"[, "row"]}
    _manifest.json            the job's identity (input files, model, columns, threshold, ...), how it ran, every
                              committed shard with its row range, counts, size and sha256, the committed length of
                              _errors.jsonl, totals (schema below; both engines write it)
    _lock                     while a job runs: the lock that keeps a second job out (:class:`JobLock`, an
                              ``flock``, so per host: not across machines on NFS), with the pid and host of the
                              job holding it; removed when the job ends, not held (and harmless) after a crash

Committing a shard: the shard goes to a hidden temporary file, is flushed to disk and renamed into place; its
errors are appended to ``_errors.jsonl`` and flushed; then the manifest is replaced the same way (temporary file,
fsync, rename, fsync of the directory). The manifest is the commit point: a job killed at any moment (even by
``kill -9``) leaves a manifest describing whole shards only. SIGINT and SIGTERM arriving during a commit wait for
its end (:func:`signals_deferred`), so a stopped job has committed its last shard or not started it. Resuming
deletes what the manifest does not list (temporary files, a shard renamed after the last manifest), cuts
``_errors.jsonl`` back to its committed length and continues from the first row after the last committed shard,
so no row is lost or written twice.

Resuming also checks every committed shard against the manifest (present, same size, same sha256) and the errors
file against each shard's ``errors_bytes``: from the first shard that is missing, truncated or altered, that shard
and every later one are dropped from the manifest (one warning line names the file and why), the totals are
recomputed from the shards kept, ``_errors.jsonl`` is cut back to the end of their errors, and the job computes
those rows again. A full disk (``ENOSPC``, ``EDQUOT``) while writing a shard, the errors or the manifest stops the
job with :class:`JobOutputError`: the temporary file is removed, the last manifest stays, and ``--resume`` once
there is space continues as if nothing happened.

The manifest (:data:`SCHEMA_VERSION` 2), written by :func:`write_manifest` for the local and the Ray engine::

    schema_version  2
    engine          "local" or "ray"
    job             what a resumed job must share with the job it continues
                    (:func:`~costeff_fast.jobs.predict.job_identity`): input {format, files: [{path, size,
                    mtime_ns}]}, model {path, config_sha256, weights: [{file, size, mtime_ns, sha256}]},
                    entropy_threshold (one per layer, resolved), labels, text_column, text_pair_column,
                    id_column, output_format, shard_rows (null for Ray), keep_columns, output_logits,
                    output_entropy, audit ({rate, seed, teacher} or null)
    parameters      how the last run ran (:meth:`~costeff_fast.jobs.PredictJob.parameters`): batch_size,
                    backend, num_threads, num_workers and address (null for the local engine), device
    complete        whether every input row is done
    next_row        the first input row not committed
    errors_bytes    the committed length of _errors.jsonl
    shards          [{file, first_row, rows, written, failed, exit_layer_sum, bytes, sha256, errors_bytes,
                    exit_layers, truncated, seconds, audit}] in row order: ``rows`` input rows covered,
                    ``written`` rows in the file, ``failed`` rows in _errors.jsonl, ``bytes`` and ``sha256`` the
                    file's size and digest, ``errors_bytes`` the length of _errors.jsonl after this shard's
                    errors; the predict job's counts (:func:`~costeff_fast.jobs.predict.shard_stats`): written
                    rows per exit layer, truncated rows, seconds, the audit's counts; the Ray engine knows
                    ``written`` only (its failed rows are not attributed to files): the others are null
    totals          {rows, written, failed, exit_layer_sum}
    summary         the predict job's summary, summed from its shards (Ray: from its batches) by
                    :func:`~costeff_fast.jobs.predict.job_summary`: rows_per_second, seconds,
                    exit_layer_histogram, truncated, backend, num_threads, device
    audit           the agreement audit (:meth:`costeff_fast.audit.AuditCounts.result`), null when off
    updated         when the manifest was written (local time, ISO 8601)

``bytes``, ``sha256`` and ``errors_bytes`` of a shard were added within version 2 (readers that do not know them
ignore them): a shard recorded without them, by an older costeff_fast, is checked at resume by its row count
(:func:`count_output_rows`) instead, and the end of its errors by counting lines of ``_errors.jsonl``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from .sources import JobArgumentError

logger = logging.getLogger(__name__)

MANIFEST = "_manifest.json"
ERRORS = "_errors.jsonl"
LOCK = "_lock"
#: output format -> file suffix
SUFFIXES = {"parquet": ".parquet", "csv": ".csv", "jsonl": ".jsonl"}
#: the manifest's layout (module docstring); 1 had ``version`` instead and no ``engine`` or ``parameters``
SCHEMA_VERSION = 2
#: the errors of a full disk or an exceeded quota: :class:`JobOutputError`
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


class JobOutputError(OSError):
    """A job's output could not be written because the disk is full (``ENOSPC``) or a quota is exceeded
    (``EDQUOT``): ``errno`` is that code, and the message (one line) names the file and says to free space and
    rerun with ``--resume``. The job stopped with its last manifest intact; the command line exits with status 74
    (``costeff_fast.cli.ExitCode.IO_ERROR``)."""

    def __init__(self, code: int, message: str):
        super().__init__(code, message)

    def __str__(self) -> str:
        return self.strerror


@contextlib.contextmanager
def disk_full_stops(directory: Path, file: str, argument: str = "--out"):
    """Turn ``ENOSPC``/``EDQUOT`` raised in the block while writing ``file`` of the output ``directory`` into a
    :class:`JobOutputError`; other errors pass unchanged.

    Raises:
        JobOutputError: the disk is full or the quota exceeded.
    """
    try:
        yield
    except JobOutputError:
        raise
    except OSError as error:
        if error.errno not in DISK_FULL:
            raise
        raise JobOutputError(error.errno, f"{argument} {directory}: cannot write {file}: "
                                          f"{os.strerror(error.errno)}; free space, then rerun with --resume") from error


@contextlib.contextmanager
def signals_deferred(signums: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)):
    """Hold back the signals ``signums`` while the block runs, then deliver them again (:func:`signal.raise_signal`)
    in the order they came, once each, so their handlers run after the block and not in the middle of it.

    Only in the main thread (the only one where Python runs signal handlers) and only for the signals that have a
    Python-level handler (``KeyboardInterrupt`` for SIGINT, the command line's handlers): a signal left to the
    system's default action still ends the process at once (which a commit survives, as it survives ``kill -9``).
    """
    pending: list[int] = []
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in signums:
            if callable(signal.getsignal(signum)):
                previous[signum] = signal.signal(signum, lambda number, frame: pending.append(number))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(pending):
            signal.raise_signal(signum)


class JobLock:
    """A context manager that keeps a second job from writing to an output directory while a job runs.

    On entry it creates the directory when missing and takes an exclusive, non-blocking :func:`fcntl.flock` on
    ``directory/_lock``, then writes its pid and host name into the file (for the refusal of a second job); on exit
    it removes the file and releases the lock. The kernel drops the lock of a process that dies, even by
    ``kill -9``: a ``_lock`` file left behind is not held and does not block ``--resume``. A job that finds the
    file locked is refused. ``flock`` locks are per open file description: a second ``JobLock`` on the same
    directory in the same process is refused too.

    The lock is per host: on NFS and other network file systems ``flock`` may not be seen by other machines (or
    may not be supported: the job then runs unlocked, with a warning), so do not point jobs on two machines at one
    output directory.

    Args:
        directory: the output directory.
        argument: the flag that named it, for the messages.

    Raises:
        JobArgumentError: (on entry) another job holds the lock ("--out DIR: another job (pid N on HOST) is
            writing to it; wait for it to finish or stop it"), or the directory is a file or cannot be created.
        JobOutputError: (on entry) the disk is full.
    """

    def __init__(self, directory: str | os.PathLike, argument: str = "--out"):
        self.directory = Path(directory)
        self.argument = argument
        self.path = self.directory / LOCK
        self._descriptor: int | None = None

    def __enter__(self) -> JobLock:
        if self._descriptor is not None:
            raise RuntimeError(f"{self.path} is already held by this JobLock")
        if self.directory.exists() and not self.directory.is_dir():
            raise JobArgumentError(f"{self.argument} {self.directory}: exists and is not a directory; the output is "
                                   f"a directory of shards")
        with disk_full_stops(self.directory, LOCK, self.argument):
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                descriptor = self._acquire()
                try:
                    identity = json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode() + b"\n"
                    os.ftruncate(descriptor, 0)
                    os.pwrite(descriptor, identity, 0)
                except BaseException:  # not entered: release the lock (a retry in this process would be refused)
                    os.close(descriptor)
                    raise
            except (JobArgumentError, JobOutputError):
                raise
            except OSError as error:
                if error.errno in DISK_FULL:
                    raise
                raise JobArgumentError(f"{self.argument} {self.directory}: cannot write to it "
                                       f"({error.strerror or error})") from error
        self._descriptor = descriptor
        return self

    def __exit__(self, *exc_info) -> None:
        descriptor, self._descriptor = self._descriptor, None
        if descriptor is None:
            return
        try:  # remove the file while it is still locked, and only if it is still ours
            if _same_file(os.fstat(descriptor), os.stat(self.path)):
                os.unlink(self.path)
        except OSError:
            pass
        finally:
            os.close(descriptor)  # releases the lock

    def _acquire(self) -> int:
        """Open and lock ``_lock``; return the descriptor. A job that releases the lock unlinks the file first, so
        a lock taken on a file that is no longer at the path is retried on the new one."""
        for _ in range(100):
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _lock_holder(descriptor)
                os.close(descriptor)
                raise JobArgumentError(f"{self.argument} {self.directory}: another job{holder} is writing to it; "
                                       f"wait for it to finish or stop it") from None
            except OSError as error:  # no flock on this file system (some network and FUSE file systems)
                logger.warning("costeff_fast: cannot lock %s (%s); the job runs without the lock that keeps a "
                               "second job out of %s", self.path, error.strerror or error, self.directory)
                return descriptor
            except BaseException:
                os.close(descriptor)
                raise
            try:
                if _same_file(os.fstat(descriptor), os.stat(self.path)):
                    return descriptor
            except FileNotFoundError:
                pass
            os.close(descriptor)
        raise JobArgumentError(f"{self.argument} {self.directory}: cannot take {LOCK}: other jobs keep replacing it")


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _lock_holder(descriptor: int) -> str:
    """`` (pid N on HOST)`` from a locked ``_lock`` file, or ``""`` when it does not say yet."""
    try:
        holder = json.loads(os.pread(descriptor, 4096, 0))
        return f" (pid {int(holder['pid'])} on {holder['host']})"
    except (OSError, ValueError, TypeError, KeyError):
        return ""


def atomic_write(path: Path, write) -> None:
    """Write ``path`` through ``write(binary_file)`` into a hidden temporary sibling, fsync it and rename it over
    ``path``, then fsync the directory: readers and crashes see the old file or the whole new one. When anything
    fails before the rename, the temporary file is removed and the error raised; ``path`` is untouched."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with open(temporary, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
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


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file's bytes, read 1 MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def job_files(directory: Path) -> list[Path]:
    """The files a job writes into ``directory``: shards, temporary files, errors and manifest (not ``_lock``,
    which belongs to the running job's :class:`JobLock`)."""
    return sorted(p for p in directory.iterdir() if p.is_file() and (
        p.name.startswith(("part-", ".part-", f".{MANIFEST}", f".{ERRORS}")) or p.name in (MANIFEST, ERRORS)))


def prepare_output(directory: Path, *, resume: bool, overwrite: bool, argument: str = "--out") -> dict | None:
    """Check an output directory before a job starts; return its manifest when the job resumes, else None.

    A new or empty directory is used as it is (``_lock`` alone counts as empty: the running job's
    :class:`JobLock`, or one left by a job killed before it wrote anything). A directory with a manifest is
    resumed with ``resume``, emptied of the job's files with ``overwrite``, and refused otherwise. A directory with
    other files and no manifest (not a job's output) is refused, as is a file. Call it under the job's
    :class:`JobLock`, so that no other job writes there meanwhile.

    Raises:
        JobArgumentError: the directory is refused, or its manifest is unreadable.
    """
    if directory.exists() and not directory.is_dir():
        raise JobArgumentError(f"{argument} {directory}: exists and is not a directory; the output is a directory "
                               f"of shards")
    if not directory.exists() or not any(path.name != LOCK for path in directory.iterdir()):
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
                 failed: int | None = None, exit_layer_sum: int | None = None, size: int | None = None,
                 sha256: str | None = None, errors_bytes: int | None = None) -> dict:
    """One entry of the manifest's ``shards`` (module docstring); None where the engine does not know a value.

    Args:
        file: the shard's file name in the output directory.
        written: rows in the file.
        first_row, rows: the input rows it covers.
        failed: its rows in ``_errors.jsonl``.
        exit_layer_sum: sum of its rows' exit layers.
        size: the file's length in bytes (the record's ``bytes``).
        sha256: the file's hex sha256.
        errors_bytes: the length of ``_errors.jsonl`` after this shard's errors.
    """
    return {"file": file, "first_row": first_row, "rows": rows, "written": written, "failed": failed,
            "exit_layer_sum": exit_layer_sum, "bytes": size, "sha256": sha256, "errors_bytes": errors_bytes}


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

    Resuming (``manifest`` given) checks the committed shards first and drops, from the first one that is
    missing, truncated or altered, that shard and every later one (module docstring; one warning line): the job
    then continues from that shard's first row.

    Args:
        directory: the output directory (created when missing); checked by :func:`prepare_output` first, under
            the job's :class:`JobLock`.
        output_format: ``"parquet"``, ``"csv"`` or ``"jsonl"``.
        job: the job's identity (JSON-serializable): a resumed job must have the same.
        manifest: the manifest returned by :func:`prepare_output` to resume, or None for a new job.
        parameters: how this run runs (the manifest's ``parameters``, replaced at this run's next commit).
        derive: called with the manifest's shard entries before every write of the manifest; the keys of the dict
            it returns are set at the manifest's top level (the predict job's ``summary`` and ``audit``, summed from
            the shards' own counts, so that they follow shards dropped at resume).

    Raises:
        JobArgumentError: the manifest is of another job (the message lists what differs), of another schema
            version, or of a Ray job.
        JobOutputError: the disk is full (the first manifest or the errors file of a new job cannot be written).
    """

    def __init__(self, directory: Path, output_format: str, job: dict, manifest: dict | None = None,
                 parameters: dict | None = None, derive: Callable[[list[dict]], dict] | None = None):
        self.directory = Path(directory)
        self.derive = derive
        self.output_format = output_format
        self.suffix = SUFFIXES[output_format]
        if manifest is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self.manifest = new_manifest("local", job, parameters or {})
            self._write_manifest()  # first: a directory with a manifest is resumable, whatever follows
            with disk_full_stops(self.directory, ERRORS):
                (self.directory / ERRORS).write_bytes(b"")
            return
        check_resumable(self.directory, manifest, job)
        self.manifest = manifest
        if parameters is not None:
            self.manifest["parameters"] = dict(parameters)
        self._check_shards()
        self._discard_uncommitted()

    @property
    def next_row(self) -> int:
        """The first input row not yet committed."""
        return self.manifest["next_row"]

    @property
    def complete(self) -> bool:
        return self.manifest["complete"]

    def commit(self, first_row: int, num_rows: int, table: pa.Table, errors: list[dict], exit_layer_sum: int,
               extra: dict | None = None) -> None:
        """Commit the outputs of input rows ``[first_row, first_row + num_rows)``: all of it or, when it fails,
        nothing (the manifest on disk and :attr:`manifest` stay as they were). SIGINT and SIGTERM wait for the
        end of the commit (:func:`signals_deferred`).

        Args:
            first_row: must equal :attr:`next_row`.
            num_rows: input rows covered (written and failed rows with row numbers).
            table: the written rows, in input order.
            errors: one JSON-serializable dict per failed row (malformed lines included).
            exit_layer_sum: sum of the written rows' exit layers (for the mean in the summary).
            extra: more keys of the shard's manifest entry (JSON-serializable), such as its counts for ``derive``.

        Raises:
            ValueError: ``first_row`` is not :attr:`next_row`.
            JobOutputError: the disk is full; the temporary file is removed and the shard and its errors taken
                back (when the manifest is what failed, they stay for ``--resume`` to remove).
        """
        if first_row != self.next_row:
            raise ValueError(f"shard starts at row {first_row}, expected {self.next_row}")
        with signals_deferred():
            self._commit(first_row, num_rows, table, errors, exit_layer_sum, extra or {})

    def finish(self) -> dict:
        """Mark the job complete in the manifest and return the manifest.

        Raises:
            JobOutputError: the disk is full (the job stays incomplete; ``--resume`` finishes it).
        """
        with signals_deferred():
            self._replace_manifest({**self.manifest, "complete": True})
        return self.manifest

    def _commit(self, first_row: int, num_rows: int, table: pa.Table, errors: list[dict], exit_layer_sum: int,
                extra: dict):
        name = f"part-{len(self.manifest['shards']):06d}{self.suffix}"
        path = self.directory / name
        with disk_full_stops(self.directory, name):
            buffer = io.BytesIO()
            write_table(table, buffer, self.output_format)
            data = buffer.getvalue()
            atomic_write(path, lambda handle: handle.write(data))
        errors_bytes = self.manifest["errors_bytes"]
        if errors:
            try:
                with disk_full_stops(self.directory, ERRORS), open(self.directory / ERRORS, "ab") as handle:
                    handle.write("".join(json.dumps(error, ensure_ascii=False, default=str) + "\n"
                                         for error in errors).encode())
                    handle.flush()
                    os.fsync(handle.fileno())
                    errors_bytes = handle.tell()
            except BaseException:  # neither is committed: take both back (a resumed job would)
                with contextlib.suppress(OSError), open(self.directory / ERRORS, "ab") as handle:
                    handle.truncate(self.manifest["errors_bytes"])
                with contextlib.suppress(OSError):
                    path.unlink()
                raise
        totals = self.manifest["totals"]
        # A manifest that fails to be written leaves the shard and its errors for a resumed job to remove (or to
        # keep, should the rename have happened before the failure).
        self._replace_manifest({
            **self.manifest, "next_row": first_row + num_rows, "errors_bytes": errors_bytes,
            "shards": [*self.manifest["shards"], shard_record(
                name, table.num_rows, first_row=first_row, rows=num_rows, failed=len(errors),
                exit_layer_sum=exit_layer_sum, size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                errors_bytes=errors_bytes) | extra],
            "totals": {"rows": totals["rows"] + num_rows, "written": totals["written"] + table.num_rows,
                       "failed": totals["failed"] + len(errors),
                       "exit_layer_sum": totals["exit_layer_sum"] + exit_layer_sum}})

    def _replace_manifest(self, manifest: dict) -> None:
        """Make ``manifest`` :attr:`manifest` and write it; when writing fails, :attr:`manifest` is the old one
        again."""
        previous, self.manifest = self.manifest, manifest
        try:
            self._write_manifest()
        except BaseException:
            self.manifest = previous
            raise

    def _write_manifest(self) -> None:
        if self.derive is not None:
            self.manifest.update(self.derive(self.manifest["shards"]))
        with disk_full_stops(self.directory, MANIFEST):
            write_manifest(self.directory, self.manifest)

    def _check_shards(self) -> None:
        """Check the committed shards (and their errors) against the manifest; from the first bad one, drop it and
        every later shard, recompute the totals and commit that manifest (module docstring)."""
        shards = self.manifest["shards"]
        errors_path = self.directory / ERRORS
        errors_size = errors_path.stat().st_size if errors_path.is_file() else 0
        ends = self._errors_ends()
        for index, shard in enumerate(shards):
            problem = self._shard_problem(shard, ends[index], errors_size)
            if problem is None:
                continue
            kept, dropped = shards[:index], shards[index:]
            logger.warning("costeff_fast: %s %s; rows %d onward are computed again (%d shard%s dropped from %s)",
                           self.directory / shard["file"], problem, shard["first_row"], len(dropped),
                           "" if len(dropped) == 1 else "s", MANIFEST)
            self._replace_manifest({
                **self.manifest, "complete": False, "shards": kept, "next_row": shard["first_row"],
                "errors_bytes": ends[index - 1] if index else 0,
                "totals": {key: sum(s[key] for s in kept) for key in ("rows", "written", "failed", "exit_layer_sum")}})
            return

    def _shard_problem(self, shard: dict, errors_end: int | None, errors_size: int) -> str | None:
        """Why a committed shard cannot be kept (as the end of a sentence naming its file), or None."""
        path = self.directory / shard["file"]
        if not path.is_file():
            return "is missing"
        if shard.get("sha256") is None:  # recorded by an older costeff_fast: its row count is what can be checked
            try:
                rows = count_output_rows(path, self.output_format)
            except (OSError, ValueError, pa.ArrowException) as error:
                return f"cannot be read ({' '.join(str(error).split())})"
            if rows != shard["written"]:
                return f"holds {rows:,} rows, not the {shard['written']:,} committed"
        else:
            size = path.stat().st_size
            if size < shard["bytes"]:
                return f"is truncated ({size:,} of {shard['bytes']:,} bytes)"
            if size != shard["bytes"]:
                return f"has changed size ({size:,} bytes, {shard['bytes']:,} committed)"
            if file_sha256(path) != shard["sha256"]:
                return "has changed (its sha256 is not the committed one)"
        if errors_end is None or errors_size < errors_end:
            return f"has lost its errors ({ERRORS} is cut short: {errors_size:,} bytes)"
        return None

    def _errors_ends(self) -> list[int | None]:
        """Per committed shard, the length of ``_errors.jsonl`` after its errors: the recorded ``errors_bytes`` or,
        in a manifest with shards recorded without it, the end of each shard's ``failed`` lines in the file (None
        from the first shard whose lines the file does not hold in full)."""
        shards = self.manifest["shards"]
        if all(shard.get("errors_bytes") is not None for shard in shards):
            return [shard["errors_bytes"] for shard in shards]
        path = self.directory / ERRORS
        ends, offset = [], 0
        with open(path, "rb") if path.is_file() else io.BytesIO() as handle:
            for shard in shards:
                for _ in range(shard["failed"] or 0):
                    line = handle.readline()
                    if not line.endswith(b"\n"):
                        return ends + [None] * (len(shards) - len(ends))
                    offset += len(line)
                ends.append(offset)
        return ends

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

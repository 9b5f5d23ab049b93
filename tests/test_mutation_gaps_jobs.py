"""Behaviour of the batch job's output (:mod:`costeff_fast.jobs.shards`) the rest of the suite left unchecked, found
by mutation testing (``bench/mutation.py shards``; the mutants each test kills are listed in
``bench/results/mutation/README.md``).

The tests drive the public pieces directly (:class:`~costeff_fast.jobs.shards.ShardWriter`, ``prepare_output``,
:class:`~costeff_fast.jobs.shards.JobLock`, ``write_table``, ``count_output_rows``) on small Arrow tables: no model,
no job run. Expected values come from the inputs the tests build, from pyarrow or from the standard library.
"""

from __future__ import annotations

import datetime
import decimal
import errno
import fcntl
import io
import json
import logging
import os
import pathlib
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from costeff_fast.jobs import JobArgumentError, JobOutputError
from costeff_fast.jobs import shards

FORMATS = ["parquet", "csv", "jsonl"]
JOB = {"input": {"files": ["rows.jsonl"]}, "model": "tiny"}


def _disk_full() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _raising(error: BaseException):
    def fail(*args, **kwargs):
        raise error
    return fail


def _full_disk_message(directory, file, argument="--out") -> str:
    """The one line of :class:`JobOutputError` (as its docstring and test_predict_faults.py state it)."""
    return f"{argument} {directory}: cannot write {file}: {os.strerror(errno.ENOSPC)}; free space, then rerun with --resume"


def _table(first: int, rows: int) -> pa.Table:
    return pa.table({"id": [f"r{i}" for i in range(first, first + rows)],
                     "label": ["négatif" if i % 2 else "positif" for i in range(first, first + rows)],
                     "exit_layer": [1 + i % 4 for i in range(first, first + rows)]})


#: three shards of input rows [0, 5), [5, 10), [10, 14): (written rows, failed rows); the first has no errors
SHARDS = [(5, 0), (3, 2), (3, 1)]


def _write_job(directory, output_format="parquet", shards_spec=SHARDS, parameters=None, finish=True):
    """Commit ``shards_spec`` with a fresh ShardWriter; return it and what was committed per shard (first_row,
    rows, written, failed, exit_layer_sum)."""
    writer = shards.ShardWriter(directory, output_format, JOB, parameters=parameters)
    committed, first = [], 0
    for written, failed in shards_spec:
        table = _table(first, written)
        errors = [{"id": f"r{first + written + k}", "reason": "empty text"} for k in range(failed)]
        layer_sum = sum(table["exit_layer"].to_pylist())
        writer.commit(first, written + failed, table, errors, layer_sum)
        committed.append({"first_row": first, "rows": written + failed, "written": written, "failed": failed,
                          "exit_layer_sum": layer_sum})
        first += written + failed
    if finish:
        writer.finish()
    return writer, committed


def _resume(directory, output_format="parquet", parameters=None):
    manifest = shards.prepare_output(directory, resume=True, overwrite=False)
    return shards.ShardWriter(directory, output_format, JOB, manifest, parameters=parameters)


def _manifest(directory) -> dict:
    return json.loads((directory / shards.MANIFEST).read_text())


def _warnings(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]


# write_table and count_output_rows ----------------------------------------------------------------------------------


@pytest.mark.parametrize("output_format", FORMATS)
def test_count_output_rows_counts_the_rows_write_table_wrote(tmp_path, output_format):
    table = _table(0, 7)
    path = tmp_path / f"part{shards.SUFFIXES[output_format]}"
    with open(path, "wb") as handle:
        shards.write_table(table, handle, output_format)
    assert shards.count_output_rows(path, output_format) == 7  # CSV: the header is no row
    if output_format == "jsonl":  # "non-blank lines"
        path.write_bytes(path.read_bytes() + b"\n  \n")
        assert shards.count_output_rows(path, output_format) == 7


def test_jsonl_output_is_utf8_text_and_non_json_values_become_strings():
    table = pa.table({"label": ["négatif ☺"], "day": [datetime.date(2024, 1, 2)],
                      "price": pa.array([decimal.Decimal("1.50")], pa.decimal128(5, 2))})
    buffer = io.BytesIO()
    shards.write_table(table, buffer, "jsonl")
    data = buffer.getvalue()
    assert "négatif ☺".encode() in data  # UTF-8 as is, not \u escapes
    assert json.loads(data) == {"label": "négatif ☺", "day": str(datetime.date(2024, 1, 2)),
                                "price": str(decimal.Decimal("1.50"))}


def test_write_table_refuses_an_unknown_format_naming_it_and_the_known_ones():
    with pytest.raises(ValueError) as refused:
        shards.write_table(_table(0, 1), io.BytesIO(), "xml")
    assert "'xml'" in str(refused.value) and all(name in str(refused.value) for name in FORMATS)


def test_atomic_write_into_a_missing_directory_raises_the_original_error(tmp_path):
    # the temporary file was never created: removing it fails too, and that must not hide the first error
    with pytest.raises(FileNotFoundError):
        shards.atomic_write(tmp_path / "missing" / "file", lambda handle: handle.write(b"x"))


def test_the_manifest_is_stamped_with_the_local_time_in_iso_8601(tmp_path):
    before = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    shards.write_manifest(tmp_path, {"schema_version": shards.SCHEMA_VERSION})
    updated = datetime.datetime.fromisoformat(_manifest(tmp_path)["updated"])
    assert updated.tzinfo is not None and updated.utcoffset() == datetime.datetime.now().astimezone().utcoffset()
    assert before <= updated <= datetime.datetime.now(datetime.timezone.utc)


# check_resumable and prepare_output ---------------------------------------------------------------------------------


@pytest.mark.parametrize("manifest, found", [({"version": 1, "engine": "local"}, 1),
                                             ({"schema_version": 3, "engine": "local"}, 3)])
def test_resume_of_another_schema_version_names_the_version_found(tmp_path, manifest, found):
    with pytest.raises(JobArgumentError) as refused:
        shards.check_resumable(tmp_path, manifest, JOB)
    assert re.search(rf"schema version {found}\b", str(refused.value)), str(refused.value)


def test_resume_of_another_job_lists_every_identity_key_that_differs(tmp_path):
    old = {"engine": "local", "schema_version": shards.SCHEMA_VERSION, "job": {"a": 1, "b": 2, "c": 3}}
    with pytest.raises(JobArgumentError) as refused:
        shards.check_resumable(tmp_path, old, {"a": 1, "b": 5, "d": 4})  # b changed, c gone, d new
    listed = re.search(r"differs in: ([^)]*)\)", str(refused.value)).group(1)
    assert listed.split(", ") == ["b", "c", "d"]


def test_prepare_output_refusals_name_the_flag_and_the_directory(tmp_path):
    file = tmp_path / "file"
    file.write_text("")
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / shards.MANIFEST).write_text("{not json")
    for directory, resume, reason in [(file, False, "not a directory"), (stray, False, shards.MANIFEST),
                                      (broken, True, shards.MANIFEST)]:
        with pytest.raises(JobArgumentError) as refused:
            shards.prepare_output(directory, resume=resume, overwrite=False)
        assert str(refused.value).startswith(f"--out {directory}: ") and reason in str(refused.value)
    with pytest.raises(JobArgumentError, match=r"^--output-dir "):
        shards.prepare_output(stray, resume=False, overwrite=False, argument="--output-dir")


# JobLock --------------------------------------------------------------------------------------------------------------


def test_job_lock_creates_missing_parents_and_refuses_to_be_entered_twice(tmp_path):
    lock = shards.JobLock(tmp_path / "a" / "b")
    with lock:
        assert lock.path.is_file()
        with pytest.raises(RuntimeError, match=re.escape(str(lock.path))):
            lock.__enter__()
    assert not lock.path.exists()


def test_a_lock_held_before_its_holder_wrote_its_name_is_refused_without_one(tmp_path):
    descriptor = os.open(tmp_path / shards.LOCK, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)  # an empty _lock: the holder has not written yet
        with pytest.raises(JobArgumentError) as refused:
            shards.JobLock(tmp_path).__enter__()
        assert str(refused.value) == (f"--out {tmp_path}: another job is writing to it; wait for it to finish or "
                                      f"stop it")
    finally:
        os.close(descriptor)


def test_a_full_disk_while_taking_the_lock_is_a_job_output_error(tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setattr(os, "pwrite", _raising(_disk_full()))
    with pytest.raises(JobOutputError) as stopped:
        shards.JobLock(out, argument="--output-dir").__enter__()
    assert str(stopped.value) == _full_disk_message(out, shards.LOCK, "--output-dir")


@pytest.mark.parametrize("error", [_disk_full(), OSError(errno.EIO, os.strerror(errno.EIO))])
def test_a_lock_that_failed_to_write_its_holder_is_released(tmp_path, monkeypatch, error):
    # a bug found with the test above: the descriptor stayed open, so the process kept the flock and its own
    # retry (run_predict again once there is space) was refused as "another job"
    pwrite = os.pwrite
    monkeypatch.setattr(os, "pwrite", _raising(error))
    with pytest.raises((JobOutputError, JobArgumentError)):
        shards.JobLock(tmp_path).__enter__()
    monkeypatch.setattr(os, "pwrite", pwrite)
    with shards.JobLock(tmp_path) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()


def test_another_write_error_while_taking_the_lock_is_one_line_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "pwrite", _raising(OSError(errno.EIO, os.strerror(errno.EIO))))
    with pytest.raises(JobArgumentError) as refused:
        shards.JobLock(tmp_path).__enter__()
    message = str(refused.value)
    assert message.startswith(f"--out {tmp_path}: ") and message.endswith(f"({os.strerror(errno.EIO)})")


def test_without_flock_the_job_runs_unlocked_with_one_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(fcntl, "flock", _raising(OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))))
    caplog.set_level(logging.WARNING, logger="costeff_fast")
    with shards.JobLock(tmp_path) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    [warning] = _warnings(caplog)
    # names the lock file, why, and the directory left without the lock
    assert str(lock.path) in warning and os.strerror(errno.ENOLCK) in warning
    assert warning.count(str(tmp_path)) == 2
    assert not lock.path.exists()


class _Interrupt(BaseException):
    pass


def test_an_interrupt_while_locking_propagates_as_it_is(tmp_path, monkeypatch):
    monkeypatch.setattr(fcntl, "flock", _raising(_Interrupt()))
    with pytest.raises(_Interrupt):
        shards.JobLock(tmp_path).__enter__()


def test_a_lock_file_replaced_while_locking_is_locked_again_and_endless_replacing_is_refused(tmp_path, monkeypatch):
    flock, replaced = fcntl.flock, []

    def replacing(descriptor, operation, times):
        if len(replaced) < times:  # another job released it (unlink) and a third created a new one
            replaced.append(1)
            os.unlink(tmp_path / shards.LOCK)
            (tmp_path / shards.LOCK).write_text("")
        flock(descriptor, operation)

    monkeypatch.setattr(fcntl, "flock", lambda descriptor, operation: replacing(descriptor, operation, 1))
    with shards.JobLock(tmp_path) as lock:
        assert replaced == [1] and json.loads(lock.path.read_text())["pid"] == os.getpid()
    monkeypatch.setattr(fcntl, "flock", lambda descriptor, operation: replacing(descriptor, operation, 10**6))
    with pytest.raises(JobArgumentError) as refused:
        shards.JobLock(tmp_path).__enter__()
    assert str(refused.value).startswith(f"--out {tmp_path}: ") and shards.LOCK in str(refused.value)


# ShardWriter: commits -------------------------------------------------------------------------------------------------


def test_a_new_writer_creates_missing_parents(tmp_path):
    writer = shards.ShardWriter(tmp_path / "a" / "b", "jsonl", JOB)
    assert writer.next_row == 0 and (tmp_path / "a" / "b" / shards.ERRORS).read_bytes() == b""


def test_a_full_disk_on_the_new_errors_file_names_it(tmp_path, monkeypatch):
    write_bytes = pathlib.Path.write_bytes

    def full(path, data):
        if path.name == shards.ERRORS:
            raise _disk_full()
        return write_bytes(path, data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", full)
    with pytest.raises(JobOutputError) as stopped:
        shards.ShardWriter(tmp_path, "jsonl", JOB)
    assert str(stopped.value) == _full_disk_message(tmp_path, shards.ERRORS)


def test_a_commit_out_of_order_is_refused_naming_both_rows(tmp_path):
    writer = shards.ShardWriter(tmp_path, "jsonl", JOB)
    with pytest.raises(ValueError) as refused:
        writer.commit(7, 1, _table(7, 1), [], 1)
    assert "7" in str(refused.value) and "0" in str(refused.value)


def test_every_commit_records_the_length_of_the_errors_file(tmp_path):
    writer, _ = _write_job(tmp_path, shards_spec=[(2, 1), (3, 0)], finish=False)
    size = (tmp_path / shards.ERRORS).stat().st_size
    manifest = _manifest(tmp_path)
    assert size > 0 and manifest["errors_bytes"] == size == writer.manifest["errors_bytes"]
    assert [shard["errors_bytes"] for shard in manifest["shards"]] == [size, size]  # the second added none


def test_errors_are_utf8_text_and_non_json_values_become_strings(tmp_path):
    writer = shards.ShardWriter(tmp_path, "jsonl", JOB)
    when = datetime.datetime(2024, 1, 2, 3, 4, 5)
    writer.commit(0, 1, _table(0, 0), [{"id": "é", "reason": "bad", "row": {"text": "ünïcode", "when": when}}], 0)
    data = (tmp_path / shards.ERRORS).read_bytes()
    assert "ünïcode".encode() in data
    assert json.loads(data) == {"id": "é", "reason": "bad", "row": {"text": "ünïcode", "when": str(when)}}


def test_a_full_disk_on_the_errors_is_reported_even_when_taking_the_shard_back_fails(tmp_path, monkeypatch):
    writer, _ = _write_job(tmp_path, shards_spec=[(2, 1)], finish=False)
    before = (tmp_path / shards.MANIFEST).read_bytes()
    real_open, unlink = open, pathlib.Path.unlink

    def failing_open(file, mode="r", *args, **kwargs):
        if pathlib.Path(file).name == shards.ERRORS and "a" in mode:
            raise _disk_full()  # the append fails, and so does the rollback's truncation
        return real_open(file, mode, *args, **kwargs)

    def failing_unlink(path, *args, **kwargs):
        if path.name.startswith("part-"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return unlink(path, *args, **kwargs)

    monkeypatch.setattr(shards, "open", failing_open, raising=False)
    monkeypatch.setattr(pathlib.Path, "unlink", failing_unlink)
    with pytest.raises(JobOutputError) as stopped:
        writer.commit(3, 2, _table(3, 1), [{"id": "r4", "reason": "x"}], 1)
    assert str(stopped.value) == _full_disk_message(tmp_path, shards.ERRORS)
    assert (tmp_path / shards.MANIFEST).read_bytes() == before


def test_a_manifest_that_cannot_be_written_leaves_the_writer_as_it_was(tmp_path, monkeypatch):
    writer, _ = _write_job(tmp_path, shards_spec=[(2, 1)], finish=False)
    before = json.loads(json.dumps(writer.manifest))

    monkeypatch.setattr(shards, "write_manifest", _raising(_disk_full()))
    with pytest.raises(JobOutputError):
        writer.commit(3, 2, _table(3, 2), [], 2)
    with pytest.raises(JobOutputError):
        writer.finish()
    assert writer.manifest == before and writer.next_row == 3 and not writer.complete


def test_a_resumed_writer_records_the_parameters_of_this_run(tmp_path):
    _write_job(tmp_path, shards_spec=[(2, 0)], parameters={"batch_size": 8}, finish=False)
    writer = _resume(tmp_path)  # no parameters given: the last run's stay
    assert writer.manifest["parameters"] == {"batch_size": 8}
    writer = _resume(tmp_path, parameters={"batch_size": 4})
    writer.commit(2, 1, _table(2, 1), [], 3)
    assert _manifest(tmp_path)["parameters"] == {"batch_size": 4}


def test_what_a_job_killed_mid_write_leaves_is_deleted_by_resume_and_by_overwrite(tmp_path):
    """A job killed while writing shard 2 leaves its hidden temporary file (atomic_write's ``.<name>.tmp``) and
    one of the manifest: resume deletes both and keeps the committed shards; --overwrite deletes every job file
    and keeps a file of the user's."""
    _write_job(tmp_path, shards_spec=[(2, 0), (2, 1)], finish=False)
    committed = sorted(p.name for p in tmp_path.iterdir())
    leftovers = [tmp_path / ".part-00002.parquet.tmp", tmp_path / f".{shards.MANIFEST}.tmp"]
    for path in leftovers:
        path.write_bytes(b"half written")
    (tmp_path / "notes.txt").write_text("the user's")
    _resume(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(committed + ["notes.txt"])
    for path in leftovers:
        path.write_bytes(b"half written")
    assert shards.prepare_output(tmp_path, resume=False, overwrite=True) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


# ShardWriter: checking committed shards at resume -------------------------------------------------------------------


def _damage(path, how):
    data = path.read_bytes()
    if how == "missing":
        path.unlink()
    elif how == "truncated":
        path.write_bytes(data[:-3])
    elif how == "grown":
        path.write_bytes(data + b"\0")
    else:  # altered in place: same size, same row count (the parquet footer is untouched)
        changed = bytearray(data)
        changed[len(changed) // 2] ^= 0x01
        path.write_bytes(bytes(changed))


@pytest.mark.parametrize("how", ["missing", "truncated", "grown", "altered"])
def test_resume_drops_a_damaged_shard_and_every_later_one(tmp_path, caplog, how):
    writer, committed = _write_job(tmp_path)
    files = [shard["file"] for shard in writer.manifest["shards"]]
    if how == "altered":
        assert pq.ParquetFile(tmp_path / files[1]).metadata.num_rows == committed[1]["written"]
    _damage(tmp_path / files[1], how)
    caplog.set_level(logging.WARNING, logger="costeff_fast")
    writer = _resume(tmp_path)
    [warning] = _warnings(caplog)
    assert files[1] in warning
    manifest = _manifest(tmp_path)
    assert not writer.complete and not manifest["complete"]
    assert writer.next_row == manifest["next_row"] == committed[1]["first_row"]
    assert [shard["file"] for shard in manifest["shards"]] == files[:1]
    assert manifest["totals"] == {key: committed[0][key] for key in ("rows", "written", "failed", "exit_layer_sum")}
    assert manifest["errors_bytes"] == 0 and (tmp_path / shards.ERRORS).read_bytes() == b""  # shard 0 had none
    assert sorted(p.name for p in tmp_path.glob("part-*")) == files[:1]
    writer.commit(committed[1]["first_row"], 1, _table(5, 1), [], 1)  # the totals carry on from the kept shards
    assert _manifest(tmp_path)["totals"]["rows"] == committed[0]["rows"] + 1


def test_resume_after_the_first_shard_is_damaged_starts_over_with_an_empty_errors_file(tmp_path):
    writer, committed = _write_job(tmp_path, shards_spec=[(2, 2), (2, 1)])
    again, _ = _write_job(tmp_path / "again", shards_spec=[(2, 2), (2, 1)])
    (tmp_path / writer.manifest["shards"][0]["file"]).unlink()
    writer = _resume(tmp_path)
    assert writer.next_row == 0 and _manifest(tmp_path)["errors_bytes"] == 0
    assert (tmp_path / shards.ERRORS).read_bytes() == b""
    for shard in committed:  # computed again: the same errors file as the uninterrupted job's
        first, written = shard["first_row"], shard["written"]
        writer.commit(first, shard["rows"], _table(first, written),
                      [{"id": f"r{first + written + k}", "reason": "empty text"} for k in range(shard["failed"])],
                      shard["exit_layer_sum"])
    assert (tmp_path / shards.ERRORS).read_bytes() == (tmp_path / "again" / shards.ERRORS).read_bytes()


def _legacy(directory):
    """Rewrite the manifest as an older costeff_fast wrote it: shards without bytes, sha256 and errors_bytes."""
    manifest = _manifest(directory)
    for shard in manifest["shards"]:
        for key in ("bytes", "sha256", "errors_bytes"):
            del shard[key]
    (directory / shards.MANIFEST).write_text(json.dumps(manifest))
    return manifest


@pytest.mark.parametrize("output_format", FORMATS)
def test_a_legacy_manifest_is_checked_by_row_counts_and_error_lines(tmp_path, output_format, caplog):
    writer, committed = _write_job(tmp_path, output_format)
    files = [shard["file"] for shard in writer.manifest["shards"]]
    errors = (tmp_path / shards.ERRORS).read_bytes()
    _legacy(tmp_path)
    assert _resume(tmp_path, output_format).complete  # intact: kept as it is
    assert (tmp_path / shards.ERRORS).read_bytes() == errors
    # the errors file cut inside the last shard's errors (shard 0 has none, shard 1 two, shard 2 one)
    lines = errors.splitlines(keepends=True)
    (tmp_path / shards.ERRORS).write_bytes(b"".join(lines[:2]) + lines[2][:-1])
    caplog.set_level(logging.WARNING, logger="costeff_fast")
    writer = _resume(tmp_path, output_format)
    assert [shard["file"] for shard in writer.manifest["shards"]] == files[:2]
    assert writer.next_row == committed[2]["first_row"] and files[2] in " ".join(_warnings(caplog))
    assert (tmp_path / shards.ERRORS).read_bytes() == b"".join(lines[:2])


def test_a_legacy_manifest_without_an_errors_file_is_kept_when_no_row_failed(tmp_path):
    _write_job(tmp_path, shards_spec=[(2, 0), (3, 0)])
    _legacy(tmp_path)
    (tmp_path / shards.ERRORS).unlink()
    writer = _resume(tmp_path)
    assert writer.complete and len(writer.manifest["shards"]) == 2


def test_a_legacy_shard_that_cannot_be_read_is_dropped_saying_why(tmp_path, caplog):
    writer, committed = _write_job(tmp_path)
    _legacy(tmp_path)
    damaged = tmp_path / writer.manifest["shards"][1]["file"]
    damaged.write_bytes(b"not parquet")
    with pytest.raises(pa.ArrowException) as unreadable:
        pq.ParquetFile(damaged)
    caplog.set_level(logging.WARNING, logger="costeff_fast")
    writer = _resume(tmp_path)
    [warning] = _warnings(caplog)
    assert damaged.name in warning and " ".join(str(unreadable.value).split()) in warning
    assert writer.next_row == committed[1]["first_row"]

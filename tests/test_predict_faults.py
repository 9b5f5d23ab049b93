"""Faults a predict job meets and survives: a second job on the same output (refused by the lock, which a killed
job does not leave held), shards damaged after their commit (found at resume by their size and sha256 and
computed again), a full disk (one line, exit status 74, the last manifest intact, ``--resume`` continues) and
SIGINT/SIGTERM during a commit (held back until the commit ends)."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_predict_job import (REPO, _read_json, assert_same_output, check_manifest, checkpoint, predict,  # noqa: F401
                              texts, write_input)

from costeff_fast.jobs import JobArgumentError, JobOutputError, run_predict
from costeff_fast.jobs import shards as shards_module
from costeff_fast.jobs.shards import ERRORS, LOCK, MANIFEST, JobLock

SHARD_ROWS = 16
#: one thread and the torch backend for every run, so that reruns write the same bytes
OPTIONS = dict(shard_rows=SHARD_ROWS, batch_size=8, num_threads=1, backend="torch", output_format="parquet",
               progress=False)
FLAGS = ["--shard-rows", SHARD_ROWS, "--batch-size", 8, "--num-threads", 1, "--backend", "torch", "--output-format",
         "parquet"]
#: a process that takes the output directory's lock, says so, and waits to be killed
HOLD_LOCK = ("import sys, time\nfrom costeff_fast.jobs.shards import JobLock\nJobLock(sys.argv[1]).__enter__()\n"
             "print('locked', flush=True)\ntime.sleep(600)\n")


@pytest.fixture(scope="module")
def source(tmp_path_factory, texts):  # noqa: F811
    """90 rows (6 shards of 16, the last one short), every 7th failing: errors in every shard."""
    rows = [t if i % 7 else None for i, t in enumerate(texts[:90])]
    return write_input(tmp_path_factory.mktemp("faults") / "rows.jsonl", {"text": rows})


@pytest.fixture(scope="module")
def whole(tmp_path_factory, checkpoint, source):  # noqa: F811
    """An uninterrupted run per output format: output directory by format."""
    outputs = {}
    for output_format in ("parquet", "jsonl"):
        outputs[output_format] = tmp_path_factory.mktemp("whole") / output_format
        run_predict(checkpoint, source, outputs[output_format], **{**OPTIONS, "output_format": output_format})
    return outputs


def _num_rows(source: Path) -> int:
    return len(source.read_text().splitlines())


def _hidden(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO)}


# the lock ---------------------------------------------------------------------------------------------------------


def test_a_second_job_on_the_same_output_is_refused_and_a_killed_jobs_lock_is_not(tmp_path, checkpoint, source,  # noqa: F811
                                                                                  whole):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], env=_env(), stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"locked\n", "the lock holder did not start"
        with pytest.raises(JobArgumentError) as refused:
            run_predict(checkpoint, source, out, resume=True, **OPTIONS)
        assert str(refused.value) == (f"--out {out}: another job (pid {holder.pid} on {socket.gethostname()}) is "
                                      f"writing to it; wait for it to finish or stop it")
        assert sorted(p.name for p in out.iterdir()) == [LOCK], "the refused job wrote something"
    finally:
        holder.kill()  # kill -9: the kernel drops the lock, the file stays
        holder.wait()
    assert json.loads((out / LOCK).read_text())["pid"] == holder.pid
    # flock locks are per open file description: a second lock in this process is refused too
    with JobLock(out), pytest.raises(JobArgumentError, match=rf"another job \(pid {os.getpid()} on "):
        run_predict(checkpoint, source, out, resume=True, **OPTIONS)
    summary = run_predict(checkpoint, source, out, resume=True, **OPTIONS)  # the stale _lock alone: an empty output
    assert summary.rows_this_run == _num_rows(source)
    assert not (out / LOCK).exists(), "the lock file outlived the job"
    assert_same_output(whole["parquet"], out)


def test_the_lock_file_is_kept_out_of_overwrite_and_removed_when_the_job_ends(tmp_path, checkpoint, source):  # noqa: F811
    out = tmp_path / "out"
    with JobLock(out) as lock:
        assert out.is_dir() and lock.path == out / LOCK
        assert json.loads((out / LOCK).read_text()) == {"pid": os.getpid(), "host": socket.gethostname()}
        assert shards_module.prepare_output(out, resume=False, overwrite=False) is None  # only _lock: empty
        (out / MANIFEST).write_text("{}")
        assert shards_module.prepare_output(out, resume=False, overwrite=True) is None
        assert sorted(p.name for p in out.iterdir()) == [LOCK], "--overwrite deleted the lock it runs under"
    assert list(out.iterdir()) == []
    (tmp_path / "file").write_text("")
    with pytest.raises(JobArgumentError, match="exists and is not a directory"):
        JobLock(tmp_path / "file").__enter__()


# shard checksums ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("output_format", ["parquet", "jsonl"])
def test_resume_recomputes_from_the_first_damaged_shard(tmp_path, checkpoint, source, whole, output_format,  # noqa: F811
                                                        caplog):
    """Every shard's size, sha256 and end of its errors are in the manifest; one shard truncated and an earlier
    one altered in place (same size): --resume drops the altered one and all after it, with one warning line,
    and writes what an uninterrupted run writes."""
    out = tmp_path / "out"
    options = {**OPTIONS, "output_format": output_format}
    run_predict(checkpoint, source, out, **options)
    manifest = check_manifest(out)
    errors = (out / ERRORS).read_bytes()
    failed = 0
    for shard in manifest["shards"]:
        data = (out / shard["file"]).read_bytes()
        assert (shard["bytes"], shard["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
        failed += shard["failed"]
        assert shard["failed"] and errors[:shard["errors_bytes"]].count(b"\n") == failed
    assert manifest["shards"][-1]["errors_bytes"] == manifest["errors_bytes"] == len(errors)
    shard_suffix = manifest["shards"][0]["file"][len("part-000000"):]
    truncated, altered = out / f"part-000004{shard_suffix}", out / f"part-000002{shard_suffix}"
    truncated.write_bytes(truncated.read_bytes()[:-20])
    data = bytearray(altered.read_bytes())
    data[len(data) // 2] ^= 0x01
    altered.write_bytes(bytes(data))
    caplog.set_level(logging.WARNING, logger="costeff_fast")
    summary = run_predict(checkpoint, source, out, resume=True, **options)
    assert summary.rows_this_run == _num_rows(source) - 2 * SHARD_ROWS
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0], warnings
    assert altered.name in warnings[0] and "sha256" in warnings[0] and "rows 32 onward" in warnings[0]
    assert_same_output(whole[output_format], out)
    check_manifest(out)


def test_a_manifest_without_checksums_is_checked_by_row_counts(tmp_path, checkpoint, source, whole):  # noqa: F811
    """Shards recorded without size, sha256 and errors end (an older costeff_fast): a complete job is left as it
    is; a shard that lost rows, and the errors file cut inside a later shard's errors, are computed again."""
    out, options = tmp_path / "out", {**OPTIONS, "output_format": "jsonl"}
    run_predict(checkpoint, source, out, **options)
    manifest = json.loads((out / MANIFEST).read_text())
    for shard in manifest["shards"]:
        for key in ("bytes", "sha256", "errors_bytes"):
            del shard[key]
    (out / MANIFEST).write_text(json.dumps(manifest))
    assert run_predict(checkpoint, source, out, resume=True, **options).rows_this_run == 0
    damaged = out / "part-000003.jsonl"
    damaged.write_text("".join(damaged.read_text().splitlines(keepends=True)[:-1]))  # a whole line lost
    summary = run_predict(checkpoint, source, out, resume=True, **options)
    assert summary.rows_this_run == _num_rows(source) - 3 * SHARD_ROWS
    shards = json.loads((out / MANIFEST).read_text())["shards"]
    assert [("sha256" in shard) for shard in shards] == [False] * 3 + [True] * (len(shards) - 3)
    for name in sorted(p.name for p in whole["jsonl"].iterdir() if p.name != MANIFEST):
        assert (out / name).read_bytes() == (whole["jsonl"] / name).read_bytes(), name

    errors = (out / ERRORS).read_bytes()  # now cut inside shard 1's errors (every shard has 2 or 3)
    for shard in shards[:3]:
        shard.pop("errors_bytes", None)
    (out / MANIFEST).write_text(json.dumps({**json.loads((out / MANIFEST).read_text()), "shards": shards}))
    lines = errors.splitlines(keepends=True)
    (out / ERRORS).write_bytes(b"".join(lines[:shards[0]["failed"] + 1]))
    summary = run_predict(checkpoint, source, out, resume=True, **options)
    assert summary.rows_this_run == _num_rows(source) - SHARD_ROWS
    assert (out / ERRORS).read_bytes() == errors


# a full disk --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("file", [".part-000002", ERRORS, f".{MANIFEST}"])
def test_a_full_disk_stops_the_job_in_one_line_and_resume_continues(tmp_path, checkpoint, source, whole,  # noqa: F811
                                                                    monkeypatch, file):
    """fsync of the third shard, of the third append to the errors, or of the fourth manifest (the first, shards
    0 and 1, then shard 2) fails with ENOSPC: JobOutputError naming the file, no temporary file left, the manifest
    on disk is the one before, and --resume once there is space writes what an uninterrupted run writes."""
    out = tmp_path / "out"
    fsync, calls, before = os.fsync, [], []

    def full_disk(descriptor):
        if os.path.basename(os.readlink(f"/proc/self/fd/{descriptor}")).startswith(file):
            calls.append(1)
            if len(calls) == (1 if file.startswith(".part") else 3 if file == ERRORS else 4):
                before.append((out / MANIFEST).read_bytes())
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        fsync(descriptor)

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(JobOutputError) as stopped:
        run_predict(checkpoint, source, out, **OPTIONS)
    monkeypatch.undo()
    message = str(stopped.value)
    named = {".part-000002": "part-000002.parquet", ERRORS: ERRORS, f".{MANIFEST}": MANIFEST}[file]
    assert message == (f"--out {out}: cannot write {named}: {os.strerror(errno.ENOSPC)}; free space, then rerun "
                       f"with --resume")
    assert isinstance(stopped.value, OSError) and stopped.value.errno == errno.ENOSPC
    assert _hidden(out) == [], "a temporary file was left"
    assert (out / MANIFEST).read_bytes() == before[0]
    manifest = json.loads(before[0])
    assert [shard["file"] for shard in manifest["shards"]] == ["part-000000.parquet", "part-000001.parquet"]
    if file != f".{MANIFEST}":  # the shard and its errors are taken back (after a manifest, resume does it)
        assert sorted(p.name for p in out.glob("part-*")) == ["part-000000.parquet", "part-000001.parquet"]
        assert (out / ERRORS).stat().st_size == manifest["errors_bytes"]
    summary = run_predict(checkpoint, source, out, resume=True, **OPTIONS)
    assert summary.rows_this_run == _num_rows(source) - 2 * SHARD_ROWS
    assert_same_output(whole["parquet"], out)


def test_a_full_disk_through_the_command_line_is_one_line_and_exit_status_74(tmp_path, checkpoint, source,  # noqa: F811
                                                                             monkeypatch, capsys):
    out, again = tmp_path / "out", tmp_path / "again"
    write_table, calls = shards_module.write_table, []

    def full_disk(table, handle, output_format):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
        write_table(table, handle, output_format)

    threads = torch.get_num_threads()
    try:  # --num-threads 1 is process-wide: restored after
        monkeypatch.setattr(shards_module, "write_table", full_disk)
        assert predict("--model", checkpoint, "--input", source, "--out", out, *FLAGS) == 74
        err = capsys.readouterr().err
        assert err.splitlines()[-1] == (f"costeff-fast: error: --out {out}: cannot write part-000002.parquet: "
                                        f"{os.strerror(errno.EDQUOT)}; free space, then rerun with --resume")
        assert "Traceback" not in err
        monkeypatch.undo()
        assert predict("--model", checkpoint, "--input", source, "--out", out, *FLAGS, "--resume") == 1
        assert predict("--model", checkpoint, "--input", source, "--out", again, *FLAGS) == 1
    finally:
        torch.set_num_threads(threads)
    assert_same_output(again, out)


# signals during a commit ------------------------------------------------------------------------------------------


class _Stop(Exception):
    pass


def _stop(signum, frame):
    raise _Stop(signum)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_a_commit_waits_for_its_end(tmp_path, checkpoint, source, whole, monkeypatch,  # noqa: F811
                                                    signum):
    """The signal arrives while the third shard is being written (SIGINT: Python's KeyboardInterrupt; SIGTERM: a
    handler that raises, as the command line's does): the shard is committed whole, then the signal is
    delivered; --resume continues after it."""
    out = tmp_path / "out"
    write_table, calls = shards_module.write_table, []

    def signalled(table, handle, output_format):
        calls.append(1)
        if len(calls) == 3:
            signal.raise_signal(signum)
        write_table(table, handle, output_format)

    previous = signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else _stop)
    try:
        monkeypatch.setattr(shards_module, "write_table", signalled)
        with pytest.raises(KeyboardInterrupt if signum == signal.SIGINT else _Stop):
            run_predict(checkpoint, source, out, **OPTIONS)
    finally:
        signal.signal(signum, previous)
    monkeypatch.undo()
    assert len(calls) == 3, "the signal did not stop the job right after the commit"
    manifest = json.loads((out / MANIFEST).read_text())
    assert [shard["first_row"] for shard in manifest["shards"]] == [0, 16, 32], "the shard in flight was lost"
    assert sorted(p.name for p in out.glob("part-*")) == [shard["file"] for shard in manifest["shards"]]
    assert _hidden(out) == [] and (out / ERRORS).stat().st_size == manifest["errors_bytes"]
    summary = run_predict(checkpoint, source, out, resume=True, **OPTIONS)
    assert summary.rows_this_run == _num_rows(source) - 3 * SHARD_ROWS
    assert_same_output(whole["parquet"], out)


def _default_sigint() -> None:
    """In the child before exec: SIGINT back to its default action (a shell may start background jobs with it
    ignored, and Python then installs no KeyboardInterrupt handler)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_sigterm_and_sigint_stop_the_command_with_128_plus_the_signal_and_resume_continues(tmp_path, checkpoint,  # noqa: F811
                                                                                           texts):  # noqa: F811
    """The real command, stopped by SIGTERM and by SIGINT once it has committed a shard: exit status 143 and 130,
    'stopped by' on the last line of stderr, no temporary file and no lock left, and --resume writes what an
    uninterrupted run writes."""
    rows = [t if i % 13 else None for i, t in enumerate(texts * 4)]  # 960 rows, some failing
    source = write_input(tmp_path / "rows.parquet", {"text": rows})
    flags = ["--model", checkpoint, "--input", source, "--shard-rows", 40, "--batch-size", 4, "--num-threads", 1,
             "--backend", "torch"]
    jobs = {signum: (tmp_path / signum.name, subprocess.Popen(
        [sys.executable, "-m", "costeff_fast.cli", "predict", "--no-progress", *map(str, flags), "--output",
         str(tmp_path / signum.name)], env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        preexec_fn=_default_sigint)) for signum in (signal.SIGTERM, signal.SIGINT)}
    # both jobs watched at once, each signalled right after its own first shard (watching one after the other let
    # the second job, on a loaded machine, finish before its signal came)
    waiting, deadline = dict(jobs), time.monotonic() + 300
    while waiting and time.monotonic() < deadline:
        for signum, (out, job) in list(waiting.items()):
            if job.poll() is not None:  # ended before its first shard: the asserts below say how
                del waiting[signum]
                continue
            manifest = _read_json(out / MANIFEST)
            if manifest and len(manifest["shards"]) >= 1:
                job.send_signal(signum)
                del waiting[signum]
        time.sleep(0.02)
    for signum, (out, job) in jobs.items():
        status, err = job.wait(120), job.stderr.read().decode()
        assert status == 128 + signum, err
        assert err.splitlines()[-1] == f"costeff-fast: stopped by {signum.name}", err
        assert len(json.loads((out / MANIFEST).read_text())["shards"]) < len(rows) // 40, "stopped mid-run"
        assert _hidden(out) == [] and not (out / LOCK).exists()
    threads = torch.get_num_threads()
    try:  # the rest in this process (--num-threads 1 is process-wide: restored after)
        whole = tmp_path / "whole"
        assert predict(*flags, "--output", whole) == 1  # some rows failed, every other row written
        for out, _ in jobs.values():
            assert predict(*flags, "--output", out, "--resume") == 1
            assert_same_output(whole, out)
    finally:
        torch.set_num_threads(threads)

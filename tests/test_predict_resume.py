"""Resume, fully: a job interrupted between shards resumes to exactly the files of an uninterrupted run for every
input kind (CSV, JSON Lines, a directory of several files), a changed input or model is refused, and the reader
starts at any row, chunk edges and file edges included."""

from __future__ import annotations

import json
import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from test_predict_job import assert_same_output, checkpoint, texts, write_input  # noqa: F401  (fixtures)

from costeff_fast.jobs import JobArgumentError, run_predict
from costeff_fast.jobs import shards as shards_module
from costeff_fast.jobs.shards import MANIFEST
from costeff_fast.jobs.sources import find_input_files, read_chunks

SHARD_ROWS = 16


def _interrupted(monkeypatch, after_manifests: int):
    """Make the job stop (as Ctrl-C would) when it is about to write its ``after_manifests``-th manifest: the
    shard before it is on disk, never committed. Returns a function that undoes the patch."""
    calls = []
    write_manifest = shards_module.ShardWriter._write_manifest

    def stop(self):
        calls.append(1)
        if len(calls) == after_manifests:
            raise KeyboardInterrupt
        write_manifest(self)

    monkeypatch.setattr(shards_module.ShardWriter, "_write_manifest", stop)
    return lambda: monkeypatch.setattr(shards_module.ShardWriter, "_write_manifest", write_manifest)


def _input(tmp_path, kind: str, rows: list):
    """``rows`` (None: a row that fails) as one CSV file, one JSON Lines file, or a directory of three JSON Lines,
    CSV or Parquet files (``directory-<suffix>``) whose sizes do not divide the shard size (so shards straddle file
    edges). A second column keeps a CSV line with an empty text a row (a one-column CSV would make it a blank line,
    which is no row)."""
    columns = {"n": list(range(len(rows))), "text": rows}
    if kind in ("csv", "jsonl"):
        return write_input(tmp_path / f"rows.{kind}", columns)
    suffix = kind.split("-")[1]
    directory = tmp_path / "rows"
    directory.mkdir()
    edges = [0, 23, 41, len(rows)]
    for index, (start, stop) in enumerate(zip(edges, edges[1:])):
        write_input(directory / f"part-{index}.{suffix}", {name: values[start:stop] for name, values in columns.items()})
    return directory


@pytest.mark.parametrize("kind", ["csv", "jsonl", "directory-jsonl", "directory-csv", "directory-parquet"])
def test_an_interrupted_job_resumes_to_the_files_of_an_uninterrupted_run(tmp_path, checkpoint, texts, kind,  # noqa: F811
                                                                         monkeypatch):
    rows = [t if i % 11 else None for i, t in enumerate(texts[:90])]
    source = _input(tmp_path, kind, rows)
    options = dict(shard_rows=SHARD_ROWS, batch_size=8, num_threads=1, backend="torch", progress=False)
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    threads = torch.get_num_threads()
    run_predict(checkpoint, source, whole, **options)
    restore = _interrupted(monkeypatch, after_manifests=4)  # the first manifest, shards 0 and 1, then shard 2
    with pytest.raises(KeyboardInterrupt):
        run_predict(checkpoint, source, stopped, **options)
    committed = json.loads((stopped / MANIFEST).read_text())
    assert [shard["first_row"] for shard in committed["shards"]] == [0, SHARD_ROWS]
    restore()
    summary = run_predict(checkpoint, source, stopped, resume=True, **options)
    assert summary.rows_this_run == len(rows) - 2 * SHARD_ROWS
    assert summary.failed == sum(row is None for row in rows)
    assert_same_output(whole, stopped)
    assert torch.get_num_threads() == threads


def test_resume_refuses_a_changed_input_or_model_and_leaves_the_output(tmp_path, checkpoint, texts,  # noqa: F811
                                                                       monkeypatch):
    model = tmp_path / "model"
    shutil.copytree(checkpoint, model)
    source = write_input(tmp_path / "rows.jsonl", {"text": texts[:60]})
    out = tmp_path / "out"
    restore = _interrupted(monkeypatch, after_manifests=3)
    with pytest.raises(KeyboardInterrupt):
        run_predict(model, source, out, shard_rows=SHARD_ROWS, progress=False)
    restore()
    before = {path.name: path.read_bytes() for path in out.iterdir()}

    original_input, stamp = source.read_text(), source.stat()
    source.write_text(original_input + json.dumps({"text": "one more row"}) + "\n")
    with pytest.raises(JobArgumentError, match=r"differs in: input\)") as refused:
        run_predict(model, source, out, shard_rows=SHARD_ROWS, resume=True, progress=False)
    assert "\n" not in str(refused.value)
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    source.write_text(original_input)
    os.utime(source, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))  # the same file again: only the model changes

    weights = model / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of the last tensor: same size, other content
    weights.write_bytes(bytes(data))
    with pytest.raises(JobArgumentError, match=r"differs in: model\)") as refused:
        run_predict(model, source, out, shard_rows=SHARD_ROWS, resume=True, progress=False)
    assert "\n" not in str(refused.value)
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_read_chunks_from_any_start_row_is_the_tail_of_a_full_read(tmp_path, suffix):
    """Every start row from 0 to past the end, with chunks of 4 over files of 7, 5 and 9 rows: the rows read are
    exactly the full read's rows from there, in chunks that begin at ``start + 4k`` and cross file edges."""
    directory = tmp_path / "rows"
    directory.mkdir()
    values, sizes = [f"row {i}" for i in range(21)], (7, 5, 9)
    start = 0
    for index, size in enumerate(sizes):
        write_input(directory / f"part-{index}{suffix}", {"text": values[start:start + size]})
        start += size
    files = find_input_files(directory)
    for first in range(len(values) + 2):
        chunks = list(read_chunks(files, ["text"], 4, first))
        assert [chunk.first_row for chunk in chunks] == list(range(first, len(values), 4))
        assert [chunk.num_rows for chunk in chunks] == [min(4, len(values) - row) for row in range(first, len(values), 4)]
        assert [text for chunk in chunks for text in chunk.columns["text"]] == values[first:]


def test_read_chunks_of_parquet_skip_whole_row_groups_and_start_inside_one(tmp_path, monkeypatch):
    """Parquet files of 7, 5 and 9 rows in row groups of 2: a resume skips the row groups before its start row
    unread and begins inside the next, at every start row and across file edges; the rows and chunk starts equal
    the full read's tail."""
    directory = tmp_path / "rows"
    directory.mkdir()
    values, start = [f"row {i}" for i in range(21)], 0
    for index, size in enumerate((7, 5, 9)):
        pq.write_table(pa.table({"text": values[start:start + size], "id": list(range(start, start + size))}),
                       directory / f"part-{index}.parquet", row_group_size=2)
        start += size
    files = find_input_files(directory)
    assert pq.ParquetFile(directory / "part-0.parquet").metadata.num_row_groups == 4
    for first in range(len(values) + 2):
        chunks = list(read_chunks(files, ["text", "id"], 4, first))
        assert [chunk.first_row for chunk in chunks] == list(range(first, len(values), 4))
        assert [text for chunk in chunks for text in chunk.columns["text"]] == values[first:]
        assert [ident for chunk in chunks for ident in chunk.columns["id"]] == list(range(first, len(values)))
    # from row 5: file 0's groups 0-1 (rows 0-3) are never read; the read starts at group 2 (rows 4-5)
    groups_read = []
    iter_batches = pq.ParquetFile.iter_batches

    def recording(self, *args, row_groups=None, **kwargs):
        groups_read.append(list(row_groups))
        return iter_batches(self, *args, row_groups=row_groups, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", recording)
    assert [text for chunk in read_chunks(files, ["text"], 4, 5) for text in chunk.columns["text"]] == values[5:]
    assert groups_read[0] == [2, 3]

"""Input rows of a batch job: CSV, JSON Lines and Parquet files, read in bounded chunks with their row numbers.

An input is one file or a directory of files of one format (searched recursively, in sorted path order, skipping
names that start with ``.`` or ``_`` as pyarrow and Ray do). Rows are numbered 0, 1, 2 ... across the files in
that order. Only the columns a job needs are read, ``chunk_rows`` rows at a time, so memory does not grow with
the input:

* CSV: :func:`pyarrow.csv.open_csv` (streaming, block by block); the needed columns are read as strings (a
  CSV has no types, so an empty field is the empty string, and ``"007"`` stays ``"007"``). A malformed line (a
  wrong number of fields) is not a row: it takes no row number and is reported as a problem with its text.
* JSON Lines: one JSON object per line, parsed line by line with :mod:`json`, so that one bad line (invalid JSON,
  not an object) or a value of the wrong type is a problem of that row only (pyarrow's JSON reader fails the
  whole block when a field changes type). Blank lines are skipped and take no row number.
* Parquet: :meth:`pyarrow.parquet.ParquetFile.iter_batches`; skipped rows at the start of a resumed job skip
  whole row groups through the file's metadata.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

#: file suffix -> input format
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
#: rows read from a JSON Lines file before a column that no object has is refused
_JSON_PROBE_ROWS = 1000
_CSV_BLOCK_BYTES = 1 << 20


class JobArgumentError(ValueError):
    """A refused batch-job argument or input; the message names the argument and the fix (one line)."""


class JobPathError(JobArgumentError, FileNotFoundError):
    """A batch-job path (model, input) that does not exist: a :class:`JobArgumentError` and a ``FileNotFoundError``."""


@dataclass(frozen=True)
class InputFiles:
    """The files of one input, in row order.

    Attributes:
        paths: absolute paths, sorted (one path for a file input).
        format: ``"csv"``, ``"jsonl"`` or ``"parquet"``.
    """

    paths: tuple[Path, ...]
    format: str

    def fingerprint(self) -> list[dict]:
        """Path, size (bytes) and modification time (ns) of every file: what a resumed job must find unchanged."""
        stats = [(path, path.stat()) for path in self.paths]
        return [{"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns} for path, stat in stats]


@dataclass
class RowChunk:
    """Consecutive input rows: ``columns[name][i]`` is row ``first_row + i``'s value (Python object, None when null
    or absent).

    Attributes:
        first_row: row number of the first row (0-based, across all files).
        columns: one list per requested column, all of length ``num_rows``.
        problems: per row, why it could not be read (a JSON line that is not an object), else None.
        malformed: lines that are not rows (CSV lines with a wrong number of fields), as reasons; they carry no
            row number and are reported with the chunk being read when they were found.
    """

    first_row: int
    columns: dict[str, list]
    problems: list[str | None]
    malformed: list[str] = field(default_factory=list)

    @property
    def num_rows(self) -> int:
        return len(self.problems)


def find_input_files(path: str | os.PathLike, argument: str = "--input") -> InputFiles:
    """The files of ``path`` (a file, or a directory of files of one format) in row order.

    Raises:
        JobPathError: ``path`` does not exist.
        JobArgumentError: ``path`` has an unknown suffix, or is a directory with no input files
            or with files of two formats.
    """
    path = Path(path).resolve()
    if not path.exists():
        raise JobPathError(f"{argument} {path}: no such file or directory; pass an existing file or directory")
    if path.is_file():
        if path.suffix.lower() not in FORMATS:
            raise JobArgumentError(f"{argument} {path}: unknown format {path.suffix!r}; "
                                   f"use one of {', '.join(sorted(FORMATS))}")
        return InputFiles((path,), FORMATS[path.suffix.lower()])
    found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in FORMATS
                   and not any(part.startswith((".", "_")) for part in p.relative_to(path).parts))
    if not found:
        raise JobArgumentError(f"{argument} {path}: the directory holds no {', '.join(sorted(FORMATS))} files")
    formats = {FORMATS[p.suffix.lower()] for p in found}
    if len(formats) > 1:
        raise JobArgumentError(f"{argument} {path}: the directory mixes formats ({', '.join(sorted(formats))}); "
                               f"pass a directory of one format")
    return InputFiles(tuple(found), formats.pop())


def check_columns(files: InputFiles, columns: dict[str, str], id_argument: str | None = None) -> pa.DataType | None:
    """Refuse columns that the input does not have; return the Arrow type of the id column.

    Args:
        files: the input.
        columns: command-line argument -> column name, e.g. ``{"--text-column": "text"}``.
        id_argument: the key of ``columns`` naming the id column, or None (ids are row numbers).

    Returns:
        The id column's type as it will be read (``string`` for CSV and JSON Lines; the Parquet column's type),
        or None without an id column.

    Raises:
        JobArgumentError: a CSV header or a Parquet schema lacks a column; in any JSON Lines file, no object among
            its first rows has a column, or none of them is an object (e.g. a ``.json`` file holding one JSON
            array); a Parquet text column is not a string column; Parquet id types differ by file.
    """
    text_arguments = [argument for argument in columns if argument != id_argument]
    if files.format == "jsonl":
        for path in files.paths:  # every file: one JSON array among JSON Lines files must not become failed rows
            _check_jsonl_file(path, columns)
        return pa.string() if id_argument else None
    id_type = None
    for path in files.paths:
        schema = _schema(path, files.format)
        for argument, name in columns.items():
            if name not in schema.names:
                raise JobArgumentError(f"{argument} {name!r}: {path} has no such column "
                                       f"(columns: {', '.join(schema.names)})")
        if files.format != "parquet":
            continue
        for argument in text_arguments:
            kind = schema.field(columns[argument]).type
            if pa.types.is_dictionary(kind):
                kind = kind.value_type
            if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)
                    or pa.types.is_null(kind)):
                raise JobArgumentError(f"{argument} {columns[argument]!r}: the column is {kind} in {path}, "
                                       f"not text")
        if id_argument:
            kind = schema.field(columns[id_argument]).type
            if id_type is not None and kind != id_type:
                raise JobArgumentError(f"{id_argument} {columns[id_argument]!r}: the column is {id_type} in "
                                       f"{files.paths[0]} but {kind} in {path}")
            id_type = kind
    return (id_type if files.format == "parquet" else pa.string()) if id_argument else None


def _check_jsonl_file(path: Path, columns: dict[str, str]) -> None:
    """Refuse a JSON Lines file whose first rows hold no object, or no object with one of ``columns``."""
    seen: set[str] = set()
    probed = objects = 0
    for chunk in read_chunks(InputFiles((path,), "jsonl"), [], _JSON_PROBE_ROWS, keep_objects=True):
        probed = len(chunk.columns["__object__"])
        objects = sum(isinstance(obj, dict) for obj in chunk.columns["__object__"])
        seen.update(key for obj in chunk.columns["__object__"] if isinstance(obj, dict) for key in obj)
        break
    if probed and not objects:
        raise JobArgumentError(f"--input {path}: none of its first {probed} line(s) is a JSON object, "
                               "so it is not JSON Lines (one object per line); convert a JSON array with "
                               "jq -c '.[]' FILE")
    for argument, name in columns.items():
        if seen and name not in seen:
            raise JobArgumentError(f"{argument} {name!r}: no object in the first {probed} row(s) of "
                                   f"{path} has it (fields: {', '.join(sorted(seen))})")


def count_rows(files: InputFiles) -> int | None:
    """Rows of a Parquet input from its metadata; None for CSV and JSON Lines (not known without reading)."""
    if files.format != "parquet":
        return None
    return sum(pq.ParquetFile(path).metadata.num_rows for path in files.paths)


def read_chunks(files: InputFiles, columns: list[str], chunk_rows: int, start_row: int = 0, *,
                keep_objects: bool = False) -> Iterator[RowChunk]:
    """The input's rows from ``start_row`` on, ``chunk_rows`` at a time (the last chunk may be shorter).

    Chunks start at row numbers ``start_row + k * chunk_rows``, whatever the file boundaries, so a job that
    starts at a multiple of ``chunk_rows`` sees the same chunks as one that started at 0.

    Args:
        files: the input (see :func:`find_input_files`).
        columns: the columns to read; a missing value (null, or a key absent from a JSON object) reads as None.
        chunk_rows: rows per chunk (>= 1).
        start_row: rows to skip first.
        keep_objects: JSON Lines only: also give each row's parsed object in a column ``__object__``.

    Yields:
        :class:`RowChunk`.
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    names = list(columns) + (["__object__"] if keep_objects else [])
    pending = RowChunk(start_row, {name: [] for name in names}, [])
    for piece in _pieces(files, columns, start_row, keep_objects):
        pending.malformed.extend(piece.malformed)
        offset = 0
        while offset < piece.num_rows:
            take = min(chunk_rows - pending.num_rows, piece.num_rows - offset)
            for name in names:
                pending.columns[name].extend(piece.columns[name][offset:offset + take])
            pending.problems.extend(piece.problems[offset:offset + take])
            offset += take
            if pending.num_rows == chunk_rows:
                yield pending
                pending = RowChunk(pending.first_row + chunk_rows, {name: [] for name in names}, [])
    if pending.num_rows or pending.malformed:
        yield pending


def _schema(path: Path, kind: str) -> pa.Schema:
    if kind == "parquet":
        return pq.read_schema(path)
    with pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=1 << 16),
                        parse_options=pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=lambda row: "skip"),
                        convert_options=pacsv.ConvertOptions(column_types={}, strings_can_be_null=False)) as reader:
        return reader.schema


def _pieces(files: InputFiles, columns: list[str], skip: int, keep_objects: bool) -> Iterator[RowChunk]:
    """Rows after the first ``skip``, in pieces of any size (``first_row`` is not set).

    A format reader yields a :class:`RowChunk`, or an int for rows it skipped without reading them (never more
    than the ``skip`` it was given). Malformed lines found in a piece that starts before row ``skip`` belong to a
    chunk before it (see :func:`read_chunks`), so they are dropped with it.
    """
    read = {"csv": _csv_pieces, "jsonl": _jsonl_pieces, "parquet": _parquet_pieces}[files.format]
    for path in files.paths:
        for piece in read(path, columns, skip, keep_objects):
            if isinstance(piece, int):
                skip -= piece
            elif not skip:
                yield piece
            elif skip >= piece.num_rows:
                skip -= piece.num_rows
            else:
                yield RowChunk(0, {name: values[skip:] for name, values in piece.columns.items()},
                               piece.problems[skip:])
                skip = 0


def _csv_pieces(path: Path, columns: list[str], skip: int, keep_objects: bool) -> Iterator[RowChunk]:
    malformed: list[str] = []

    def invalid_row(row) -> str:
        text = row.text if len(row.text) <= 200 else row.text[:200] + "..."
        malformed.append(f"malformed CSV line in {path.name} (expected {row.expected_columns} fields, got "
                         f"{row.actual_columns}): {text!r}")
        return "skip"

    # One thread, no read-ahead: a malformed line is reported with the batch of the block it is in, the same
    # way in a resumed job.
    options = dict(
        read_options=pacsv.ReadOptions(block_size=_CSV_BLOCK_BYTES, use_threads=False),
        parse_options=pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=invalid_row),
        convert_options=pacsv.ConvertOptions(column_types={name: pa.string() for name in columns},
                                             include_columns=columns, strings_can_be_null=False),
    )
    with pacsv.open_csv(path, **options) as reader:
        for batch in reader:
            found, malformed[:] = list(malformed), []
            yield RowChunk(0, {name: batch.column(name).to_pylist() for name in columns}, [None] * batch.num_rows,
                           found)
    if malformed:
        yield RowChunk(0, {name: [] for name in columns}, [], list(malformed))


def _parquet_pieces(path: Path, columns: list[str], skip: int, keep_objects: bool) -> Iterator[RowChunk | int]:
    parquet = pq.ParquetFile(path)
    groups = list(range(parquet.metadata.num_row_groups))
    while groups and skip >= parquet.metadata.row_group(groups[0]).num_rows:  # whole row groups, unread
        rows = parquet.metadata.row_group(groups.pop(0)).num_rows
        skip -= rows
        yield rows
    if groups:
        for batch in parquet.iter_batches(batch_size=65536, row_groups=groups, columns=columns):
            yield RowChunk(0, {name: batch.column(name).to_pylist() for name in columns}, [None] * batch.num_rows)


def _jsonl_pieces(path: Path, columns: list[str], skip: int, keep_objects: bool) -> Iterator[RowChunk | int]:
    names = columns + (["__object__"] if keep_objects else [])
    with open(path, "rb") as handle:
        while lines := list(itertools.islice(handle, 4096)):
            lines = [line for line in lines if line.strip()]
            if skip >= len(lines):  # counted, not parsed
                skip -= len(lines)
                yield len(lines)
                continue
            piece = RowChunk(0, {name: [] for name in names}, [])
            for line in lines:
                obj, problem = _parse_json_line(line)
                for name in columns:
                    piece.columns[name].append(obj.get(name) if problem is None else None)
                if keep_objects:
                    piece.columns["__object__"].append(obj)
                piece.problems.append(problem)
            skip = 0  # _pieces drops the rest of the skipped rows from this piece
            yield piece


def _parse_json_line(line: bytes) -> tuple[object, str | None]:
    try:
        obj = json.loads(line)
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError
        return None, f"invalid JSON: {getattr(error, 'msg', error)} (column {getattr(error, 'colno', '?')})"
    if not isinstance(obj, dict):
        return None, f"not a JSON object: {type(obj).__name__}"
    return obj, None

"""Input rows of a batch job: CSV, JSON Lines and Parquet files, read in bounded chunks with their row numbers.

An input is one file or a directory of files of one format (searched recursively, in sorted path order, skipping
names that start with ``.`` or ``_`` as pyarrow and Ray do). Rows are numbered 0, 1, 2 ... across the files in
that order. Only the columns a job needs are read, ``chunk_rows`` rows at a time, so memory does not grow with
the input:

* CSV: :func:`pyarrow.csv.open_csv` (streaming, block by block); the needed columns are read as bytes and decoded
  as UTF-8 (a CSV has no types, so an empty field is the empty string, and ``"007"`` stays ``"007"``). A
  malformed line (a wrong number of fields) is not a row: it takes no row number and is reported as a problem
  naming its file, its CSV record number and its text (see :func:`read_chunks` for what the record number counts).
* JSON Lines: one JSON object per line, parsed line by line with :mod:`json`, so that one bad line (invalid JSON,
  not an object) or a value of the wrong type is a problem of that row only (pyarrow's JSON reader fails the
  whole block when a field changes type). Blank lines are skipped and take no row number.
* Parquet: :meth:`pyarrow.parquet.ParquetFile.iter_batches`; skipped rows at the start of a resumed job skip
  whole row groups through the file's metadata.

Bad bytes fail one row, never the job, and never change the numbering of the other rows:

* a UTF-8 byte-order mark at the start of a CSV or JSON Lines file (any file of a directory) is ignored;
* a CSV field or a JSON line that is not valid UTF-8 makes its row a failed row (it keeps its row number), with a
  reason naming the column (CSV) and the byte offset of the first bad byte in the field or line; the field
  (CSV) or every column (JSON Lines) reads as None;
* a JSON string holding a lone surrogate (an escape such as ``"\\ud800"``, half of a UTF-16 pair, which no UTF-8
  encodes) in a column read makes its row a failed row (``not valid Unicode``); that value reads as None;
* a NUL byte in a text column (``text_columns`` of :func:`read_chunks`) makes its row a failed row
  (``text contains NUL bytes; binary data?``); its values are still read, so the errors file keeps its id.
"""

from __future__ import annotations

import codecs
import contextlib
import io
import itertools
import json
import logging
import os
import sys
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

#: file suffix -> input format
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
#: rows read from a JSON Lines file before a column that no object has is refused
_JSON_PROBE_ROWS = 1000
_CSV_BLOCK_BYTES = 1 << 20
_BOM = codecs.BOM_UTF8
#: the reason of a row with a NUL byte in a text column (then `` (column 'text', byte 5 of the field)``)
NUL_REASON = "text contains NUL bytes; binary data?"


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
        problems: per row, why it could not be read (a JSON line that is not an object, bytes that are not valid
            UTF-8, a NUL byte in a text column), else None: one line.
        malformed: lines that are not rows (CSV lines with a wrong number of fields), as one-line reasons naming
            the file and the line's CSV record number; they carry no row number and are reported with the chunk
            being read when they were found.
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
                keep_objects: bool = False, text_columns: Collection[str] | None = None) -> Iterator[RowChunk]:
    """The input's rows from ``start_row`` on, ``chunk_rows`` at a time (the last chunk may be shorter).

    Chunks start at row numbers ``start_row + k * chunk_rows``, whatever the file boundaries, so a job that
    starts at a multiple of ``chunk_rows`` sees the same chunks as one that started at 0. A row with a problem
    (``RowChunk.problems``: bytes that are not valid UTF-8, a NUL byte in a text column, invalid JSON) is still a
    row: it takes its row number, as every row does, so the numbering is the same however the rows read.

    A malformed CSV line (too many or too few fields) takes no row number; its reason in ``RowChunk.malformed``
    names its file (its name, or its path under the input directory) and its CSV record number as pyarrow counts
    them: the header is record 1 and each record after it counts once, so the record number is the line number in
    the file unless a quoted value before it spans several lines or blank lines (which are no record) come before
    it. pyarrow gives that number in single-threaded streaming reads, which is how CSV files are read here.

    Memory holds one chunk plus one block of the file (1 MiB for CSV, 4096 lines for JSON Lines, one Parquet
    batch). A CSV file that pyarrow refuses mid-file (a malformed line that is also not valid UTF-8: pyarrow
    cannot hand its text over) is read again from its start through a stream that turns each byte of an invalid
    UTF-8 sequence into a NUL byte (same length, same records); the rows already read are skipped, and in the
    rest of that file a field with such a byte fails with ``not valid UTF-8 or contains NUL bytes``.

    Args:
        files: the input (see :func:`find_input_files`).
        columns: the columns to read; a missing value (null, or a key absent from a JSON object) reads as None.
        chunk_rows: rows per chunk (>= 1).
        start_row: rows to skip first.
        keep_objects: JSON Lines only: also give each row's parsed object in a column ``__object__``.
        text_columns: the columns of ``columns`` that hold text to classify (not an id column): a value with a
            NUL byte there fails its row with :data:`NUL_REASON`. None: every column of ``columns``.

    Yields:
        :class:`RowChunk`.

    Raises:
        ValueError: ``chunk_rows`` < 1.
        pyarrow.ArrowInvalid: a CSV file pyarrow cannot read even with invalid UTF-8 replaced (e.g. a quoted value
            that never ends and holds more than a block, 1 MiB).
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    names = list(columns) + (["__object__"] if keep_objects else [])
    texts = frozenset(columns if text_columns is None else text_columns) & frozenset(columns)
    pending = RowChunk(start_row, {name: [] for name in names}, [])
    for piece in _pieces(files, list(columns), texts, start_row, keep_objects):
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
    # Read through _InvalidUtf8AsNul: pyarrow refuses a first block with a malformed line that is not UTF-8.
    with _InvalidUtf8AsNul(path) as source, pacsv.open_csv(
            source, read_options=pacsv.ReadOptions(block_size=1 << 16),
            parse_options=pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=lambda row: "skip"),
            convert_options=pacsv.ConvertOptions(column_types={}, strings_can_be_null=False)) as reader:
        return reader.schema


def _pieces(files: InputFiles, columns: list[str], text_columns: frozenset[str], skip: int,
            keep_objects: bool) -> Iterator[RowChunk]:
    """Rows after the first ``skip``, in pieces of any size (``first_row`` is not set).

    A format reader yields a :class:`RowChunk`, or an int for rows it skipped without reading them (never more
    than the ``skip`` it was given). Malformed lines found in a piece that starts before row ``skip`` belong to a
    chunk before it (see :func:`read_chunks`), so they are dropped with it.
    """
    read = {"csv": _csv_pieces, "jsonl": _jsonl_pieces, "parquet": _parquet_pieces}[files.format]
    root = Path(os.path.commonpath(files.paths)) if len(files.paths) > 1 else None
    for path in files.paths:
        name = path.name if root is None else path.relative_to(root).as_posix()
        for piece in read(path, name, columns, text_columns, skip, keep_objects):
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


def _csv_pieces(path: Path, name: str, columns: list[str], text_columns: frozenset[str], skip: int,
                keep_objects: bool) -> Iterator[RowChunk]:
    """A CSV file's rows, one piece per pyarrow batch (``skip`` is left to :func:`_pieces`); read again through
    :class:`_InvalidUtf8AsNul` after rows already given when pyarrow refuses the file mid-way (:func:`read_chunks`)."""
    malformed: list[str] = []

    def invalid_row(row) -> str:
        text = row.text if len(row.text) <= 200 else row.text[:200] + "..."
        where = f"CSV record {row.number}" if row.number is not None and row.number >= 0 else "an unknown record"
        malformed.append(f"malformed CSV line in {name} (expected {row.expected_columns} fields, got "
                         f"{row.actual_columns}) at {where}: {text!r}")
        return "skip"

    # One thread, no read-ahead: a malformed line is reported with the batch of the block it is in, the same
    # way in a resumed job, and pyarrow numbers the records. Fields are read as bytes, so that one field that is
    # not UTF-8 fails its row, not the block (pyarrow skips a UTF-8 byte-order mark itself).
    options = dict(
        read_options=pacsv.ReadOptions(block_size=_CSV_BLOCK_BYTES, use_threads=False),
        parse_options=pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=invalid_row),
        convert_options=pacsv.ConvertOptions(column_types={column: pa.binary() for column in columns},
                                             include_columns=columns, strings_can_be_null=False),
    )
    given_rows = given_malformed = 0  # what this file gave before pyarrow refused it
    for replaced in (False, True):
        malformed.clear()
        drop_rows, drop_malformed = given_rows, given_malformed
        with _InvalidUtf8AsNul(path) if replaced else contextlib.nullcontext(path) as source:
            try:
                for batch in _csv_batches(source, options, invalid_row):
                    dropped = min(drop_malformed, len(malformed))  # given before pyarrow refused the file
                    found, malformed[:], drop_malformed = malformed[dropped:], [], drop_malformed - dropped
                    if drop_rows >= batch.num_rows:
                        drop_rows -= batch.num_rows
                        batch = batch.slice(batch.num_rows)
                    elif drop_rows:
                        batch, drop_rows = batch.slice(drop_rows), 0
                    if not (batch.num_rows or found):
                        continue
                    piece = _csv_piece(batch, columns, text_columns, replaced)
                    piece.malformed = found
                    given_rows, given_malformed = given_rows + piece.num_rows, given_malformed + len(found)
                    yield piece
            except pa.ArrowInvalid as error:
                if replaced:
                    raise
                logger.info("costeff_fast: pyarrow refused %s after %d rows (%s); reading it again with bytes "
                            "that are not UTF-8 as NUL", path, given_rows, str(error).splitlines()[0])
                continue
        found = malformed[drop_malformed:]
        if found:
            yield RowChunk(0, {column: [] for column in columns}, [], found)
        return


def _csv_batches(source, options: dict, handler) -> Iterator[pa.RecordBatch]:
    """pyarrow's batches of a CSV file (a path or a binary file object) read with ``options``, whose
    ``invalid_row_handler`` is ``handler``; raises pyarrow.ArrowInvalid where pyarrow refuses the file."""
    with _quiet(handler, pacsv.open_csv, source, **options) as reader:  # open_csv reads the first block
        while True:
            try:
                batch = _quiet(handler, reader.read_next_batch)
            except StopIteration:
                return
            yield batch


def _quiet(handler, call, *args, **kwargs):
    """``call(*args, **kwargs)`` without the "Exception ignored in" traceback that pyarrow prints (through
    :func:`sys.unraisablehook`) when it cannot hand a malformed line that is not UTF-8 to ``handler``: it then
    refuses the file, and :func:`_csv_pieces` reads it again. Other unraisable exceptions are reported as before."""
    previous = sys.unraisablehook

    def hook(unraisable):
        if unraisable.object is not handler or not isinstance(unraisable.exc_value, UnicodeDecodeError):
            previous(unraisable)

    sys.unraisablehook = hook
    try:
        return call(*args, **kwargs)
    finally:
        if sys.unraisablehook is hook:
            sys.unraisablehook = previous


def _csv_piece(batch: pa.RecordBatch, columns: list[str], text_columns: frozenset[str],
               replaced: bool) -> RowChunk:
    """The rows of a batch of ``binary`` columns as text, with their problems (:func:`read_chunks`).

    ``replaced``: the file is read through :class:`_InvalidUtf8AsNul`, so a NUL byte in any column may have been
    a byte that is not UTF-8."""
    problems: list[str | None] = [None] * batch.num_rows
    values: dict[str, list] = {}
    for column in columns:
        raw = batch.column(column)
        try:
            text = raw.cast(pa.string())  # checks UTF-8, copies nothing
        except pa.ArrowInvalid:  # some field is not valid UTF-8: decode field by field
            text, values[column] = None, _decode_fields(raw.to_pylist(), column, problems)
        else:
            values[column] = text.to_pylist()
        if replaced:
            _flag_nul(text, values[column], column, problems, "not valid UTF-8 or contains NUL bytes; binary data?")
        elif column in text_columns:
            _flag_nul(text, values[column], column, problems, NUL_REASON)
    return RowChunk(0, values, problems)


def _decode_fields(raw: list, column: str, problems: list[str | None]) -> list[str | None]:
    """``raw`` (bytes per row) as text; a field that is not UTF-8 reads as None and sets its row's problem."""
    values: list[str | None] = []
    for row, value in enumerate(raw):
        try:
            values.append(None if value is None else value.decode("utf-8"))
        except UnicodeDecodeError as error:
            values.append(None)
            if problems[row] is None:
                problems[row] = _utf8_reason(value, error, f"column {column!r} has ", "field")
    return values


def _utf8_reason(data: bytes, error: UnicodeDecodeError, what: str, unit: str) -> str:
    return (f"not valid UTF-8: {what}byte 0x{data[error.start]:02x} at byte {error.start} of the {unit} "
            f"(another encoding? save the file as UTF-8)")


def _flag_nul(array: pa.Array | None, values: list, column: str, problems: list[str | None], reason: str) -> None:
    """Set the problem of each row whose value in ``values`` holds a NUL byte (``array``: the same values in Arrow,
    for a vectorized first look; None to look at ``values`` only)."""
    if array is not None and not _may_hold_nul(array):
        return
    for row, value in enumerate(values):
        if problems[row] is None and isinstance(value, str) and "\x00" in value:
            problems[row] = _nul_reason(reason, column, value)


def _may_hold_nul(array: pa.Array) -> bool:
    """False when no value of a string or binary ``array`` holds a NUL byte: one look at its data buffer (no
    copy; pyarrow.compute.match_substring costs a third of a CSV read); True for other layouts (look at each
    value)."""
    kind = array.type
    if pa.types.is_string(kind) or pa.types.is_binary(kind):
        offset_type = np.int32
    elif pa.types.is_large_string(kind) or pa.types.is_large_binary(kind):
        offset_type = np.int64
    else:  # e.g. string_view: the caller looks at each value
        return True
    _, offsets, data = array.buffers()
    if not len(array) or data is None:
        return False
    start, stop = np.frombuffer(offsets, dtype=offset_type)[[array.offset, array.offset + len(array)]]
    return not np.frombuffer(data, dtype=np.uint8)[start:stop].all()


def _nul_reason(reason: str, column: str, value: str) -> str:
    """``reason`` and where ``value``'s first NUL is: its byte offset in the value's UTF-8 bytes."""
    at = len(value[:value.index("\x00")].encode("utf-8", "surrogatepass"))
    return f"{reason} (column {column!r}, byte {at} of the field)"


class _InvalidUtf8AsNul(io.RawIOBase):
    """A file read as bytes, with each byte of an invalid UTF-8 sequence replaced by a NUL byte: as long as the
    file, split into the same CSV records, and valid UTF-8 (pyarrow needs that to hand a malformed line over).

    Args:
        path: the file, opened for reading until :meth:`close`.
    """

    def __init__(self, path: Path):
        super().__init__()
        self._file = open(path, "rb")
        self._tail = b""  # bytes that may start a UTF-8 sequence the next read completes

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes (``size`` + 3 at most when ``size`` < 4), all of them when ``size`` < 0; b"" at
        the end of the file only."""
        while True:
            data = self._file.read() if size is None or size < 0 else self._file.read(max(size - len(self._tail), 1))
            end = not data
            good, self._tail = _nul_for_invalid_utf8(self._tail + data, end)
            if good or end:
                return good

    def close(self) -> None:
        self._file.close()
        super().close()


def _nul_for_invalid_utf8(data: bytes, end: bool) -> tuple[bytes, bytes]:
    """``data`` with each byte of an invalid UTF-8 sequence made NUL, split into the bytes that are done and an
    unfinished sequence at the end (kept for the next read; none when ``end``, the end of the file)."""
    done = bytearray(data)
    start = 0
    while True:
        try:
            _, used = codecs.utf_8_decode(memoryview(done)[start:], "strict", end)
        except UnicodeDecodeError as error:
            done[start + error.start:start + error.end] = bytes(error.end - error.start)
            start += error.end
        else:
            start += used
            return bytes(done[:start]), bytes(done[start:])


def _parquet_pieces(path: Path, name: str, columns: list[str], text_columns: frozenset[str], skip: int,
                    keep_objects: bool) -> Iterator[RowChunk | int]:
    parquet = pq.ParquetFile(path)
    groups = list(range(parquet.metadata.num_row_groups))
    while groups and skip >= parquet.metadata.row_group(groups[0]).num_rows:  # whole row groups, unread
        rows = parquet.metadata.row_group(groups.pop(0)).num_rows
        skip -= rows
        yield rows
    if groups:
        for batch in parquet.iter_batches(batch_size=65536, row_groups=groups, columns=columns):
            piece = RowChunk(0, {column: batch.column(column).to_pylist() for column in columns},
                             [None] * batch.num_rows)
            for column in columns:
                kind = batch.schema.field(column).type
                if column in text_columns and (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
                    _flag_nul(batch.column(column), piece.columns[column], column, piece.problems, NUL_REASON)
            yield piece


def _jsonl_pieces(path: Path, name: str, columns: list[str], text_columns: frozenset[str], skip: int,
                  keep_objects: bool) -> Iterator[RowChunk | int]:
    names = columns + (["__object__"] if keep_objects else [])
    with open(path, "rb") as handle:
        first = True
        while lines := list(itertools.islice(handle, 4096)):
            if first:  # a byte-order mark starts the file, not its first line
                lines[0], first = lines[0].removeprefix(_BOM), False
            lines = [line for line in lines if line.strip()]
            if skip >= len(lines):  # counted, not parsed
                skip -= len(lines)
                yield len(lines)
                continue
            piece = RowChunk(0, {column: [] for column in names}, [])
            appends = [(column, piece.columns[column].append) for column in columns]
            for line in lines:
                obj, problem = _parse_json_line(line)
                for column, append in appends:
                    append(None if obj is None else obj.get(column))
                if keep_objects:
                    piece.columns["__object__"].append(obj)
                piece.problems.append(problem)
            for column in columns:
                _check_json_strings(piece.columns[column], column, piece.problems, column in text_columns)
            skip = 0  # _pieces drops the rest of the skipped rows from this piece
            yield piece


def _check_json_strings(values: list, column: str, problems: list[str | None], text: bool) -> None:
    """Fail the rows whose string in ``values`` (one column of JSON values) holds a lone surrogate (an escape such
    as ``\\ud800``, half of a UTF-16 pair, which no UTF-8 encodes: the value becomes None) or, for a ``text``
    column, a NUL (``\\u0000``). One join and one encode per column of a piece; row by row only where they
    find something."""
    try:
        joined = "".join(values)
    except TypeError:  # null, numbers, objects
        joined = "".join([value for value in values if isinstance(value, str)])
    try:
        joined.encode("utf-8")
    except UnicodeEncodeError:
        for row, value in enumerate(values):
            if not isinstance(value, str):
                continue
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as error:
                values[row] = None  # it cannot be written as UTF-8, even as an id in the errors file
                if problems[row] is None:
                    problems[row] = (f"not valid Unicode: column {column!r} holds a lone surrogate "
                                     f"\\u{ord(value[error.start]):04x} at character {error.start} (half of a "
                                     f"JSON \\u escape pair)")
    if text and "\x00" in joined:
        _flag_nul(None, values, column, problems, NUL_REASON)


def _parse_json_line(line: bytes) -> tuple[object, str | None]:
    """A JSON line's object (None when it is not valid UTF-8, not JSON or not an object) and its problem, or None."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as error:
        return None, _utf8_reason(line, error, "", "line")
    try:
        obj = json.loads(text)
    except ValueError as error:  # JSONDecodeError
        return None, f"invalid JSON: {getattr(error, 'msg', error)} (column {getattr(error, 'colno', '?')})"
    if not isinstance(obj, dict):
        return None, f"not a JSON object: {type(obj).__name__}"
    return obj, None

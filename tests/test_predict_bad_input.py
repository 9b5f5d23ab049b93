"""Bad bytes in a predict job's input fail their own rows, never the job (issue 28): fields and JSON lines that are not
UTF-8, a UTF-8 byte-order mark, NUL bytes in a text column, and CSV lines with a wrong number of fields (reported
with their file and record number), end to end through ``run_predict`` and, for resume, through ``read_chunks``."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_predict_job import checkpoint, errors_of, texts  # noqa: F401  (fixtures)

from costeff_fast.jobs import run_predict
from costeff_fast.jobs import sources as sources_module
from costeff_fast.jobs.sources import find_input_files, read_chunks

BOM = b"\xef\xbb\xbf"
OPTIONS = dict(progress=False, num_threads=1, backend="torch", batch_size=8)


def _run(checkpoint, source, tmp_path, **options):  # noqa: F811
    """Run the job into ``tmp_path / "out"`` (Parquet); the written ids and the errors file's entries."""
    out = tmp_path / "out"
    summary = run_predict(checkpoint, source, out, output_format="parquet", **OPTIONS, **options)
    written = pa.concat_tables(pq.read_table(path) for path in sorted(out.glob("part-*.parquet")))
    errors = errors_of(out)
    assert summary.failed == len(errors) and summary.written == written.num_rows
    for error in errors:
        assert "\n" not in error["reason"]
    return written["id"].to_pylist(), errors


def _csv_line(*fields: bytes) -> bytes:
    return b",".join(b'"' + field.replace(b'"', b'""') + b'"' for field in fields) + b"\n"


def _jsonl_line(obj: dict) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def test_csv_fields_that_are_not_utf8_fail_their_rows_only(tmp_path, checkpoint, texts):  # noqa: F811
    """A latin-1 text field and an id field with a stray byte: those two rows fail with the column and the byte
    offset; the rows around them are classified, with their ids."""
    source = tmp_path / "rows.csv"
    source.write_bytes(b"id,text\n" + _csv_line(b"a", texts[0].encode()) + _csv_line(b"b", b"caf\xe9 au lait")
                       + _csv_line(b"c", texts[1].encode()) + _csv_line(b"d\xff", texts[2].encode())
                       + _csv_line(b"e", texts[3].encode()))
    ids, errors = _run(checkpoint, source, tmp_path, id_column="id")
    assert ids == ["a", "c", "e"]
    assert [(error["id"], error["row"]) for error in errors] == [("b", 1), (None, 3)]
    assert errors[0]["reason"].startswith("not valid UTF-8: column 'text' has byte 0xe9 at byte 3 of the field")
    assert errors[1]["reason"].startswith("not valid UTF-8: column 'id' has byte 0xff at byte 1 of the field")


def test_jsonl_lines_that_are_not_utf8_fail_their_rows_only(tmp_path, checkpoint, texts):  # noqa: F811
    """A JSON line with a latin-1 byte is a failed row (numbered like any row) with the byte offset in the line;
    json.loads would have called it invalid JSON."""
    bad = b'{"text": "caf\xe9 au lait"}\n'
    source = tmp_path / "rows.jsonl"
    source.write_bytes(_jsonl_line({"text": texts[0]}) + bad + b"\n" + _jsonl_line({"text": texts[1]}))
    ids, errors = _run(checkpoint, source, tmp_path)
    assert ids == [0, 2]  # the blank line takes no row number, the bad line does
    assert len(errors) == 1 and errors[0]["id"] == 1
    assert errors[0]["reason"].startswith(f"not valid UTF-8: byte 0xe9 at byte {bad.index(0xE9)} of the line")


def test_jsonl_lone_surrogate_escapes_fail_their_rows_only(tmp_path, checkpoint, texts):  # noqa: F811
    """A JSON escape of half a UTF-16 pair in the text or the id is no text (no UTF-8 encodes it; it stopped the
    job in the tokenizer): those rows fail, an escaped emoji (a whole pair) and other rows are classified."""
    source = tmp_path / "rows.jsonl"
    source.write_bytes(_jsonl_line({"id": "a", "text": texts[0] + " \U0001f600"})  # ensure_ascii: \\ud83d\\ude00
                       + b'{"id": "b", "text": "half \\ud83d a pair"}\n'
                       + b'{"id": "c\\uDC80", "text": "fine"}\n' + _jsonl_line({"id": "d", "text": texts[1]}))
    ids, errors = _run(checkpoint, source, tmp_path, id_column="id")
    assert ids == ["a", "d"]
    assert [(error["id"], error["row"]) for error in errors] == [("b", 1), (None, 2)]
    assert errors[0]["reason"] == ("not valid Unicode: column 'text' holds a lone surrogate \\ud83d at character 5 "
                                   "(half of a JSON \\u escape pair)")
    assert errors[1]["reason"].startswith("not valid Unicode: column 'id' holds a lone surrogate \\udc80 at "
                                          "character 1")


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_a_byte_order_mark_is_ignored_in_every_file(tmp_path, checkpoint, texts, kind):  # noqa: F811
    """A directory of two files that both start with a UTF-8 BOM (the second also with a blank line after it):
    the header (CSV) or first object (JSON Lines) reads normally and every row is classified."""
    directory = tmp_path / "rows"
    directory.mkdir()
    rows = texts[:6]
    if kind == "csv":
        first = BOM + b"id,text\n" + b"".join(_csv_line(str(i).encode(), rows[i].encode()) for i in range(3))
        second = BOM + b"id,text\n" + b"".join(_csv_line(str(i).encode(), rows[i].encode()) for i in range(3, 6))
    else:
        first = BOM + b"".join(_jsonl_line({"id": str(i), "text": rows[i]}) for i in range(3))
        second = BOM + b"\n" + b"".join(_jsonl_line({"id": str(i), "text": rows[i]}) for i in range(3, 6))
    (directory / f"part-0.{kind}").write_bytes(first)
    (directory / f"part-1.{kind}").write_bytes(second)
    ids, errors = _run(checkpoint, directory, tmp_path, id_column="id")
    assert errors == []
    assert ids == [str(i) for i in range(6)]


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_nul_bytes_in_a_text_column_fail_the_row(tmp_path, checkpoint, texts, kind):  # noqa: F811
    """A NUL byte in the text (row 1) or in the pair column (row 3) fails the row, named as binary data."""
    rows = [(texts[i], texts[i + 10]) for i in range(5)]
    rows[1] = (texts[1][:5] + "\x00\x00" + texts[1][5:], rows[1][1])
    rows[3] = (rows[3][0], "PK\x03\x04\x00\x00 zip header")
    source = tmp_path / f"rows.{kind}"
    if kind == "csv":
        source.write_bytes(b"text,pair\n" + b"".join(_csv_line(text.encode(), pair.encode()) for text, pair in rows))
    else:
        source.write_bytes(b"".join(_jsonl_line({"text": text, "pair": pair}) for text, pair in rows))
    ids, errors = _run(checkpoint, source, tmp_path, text_pair_column="pair")
    assert ids == [0, 2, 4]
    assert [error["id"] for error in errors] == [1, 3]
    assert errors[0]["reason"] == "text contains NUL bytes; binary data? (column 'text', byte 5 of the field)"
    assert errors[1]["reason"] == "text contains NUL bytes; binary data? (column 'pair', byte 4 of the field)"


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_nul_bytes_are_looked_for_in_the_text_columns_only(tmp_path, kind):
    """``text_columns`` names the columns checked for NUL bytes (an id may hold one); by default all are."""
    rows = [("a\x00", "fine"), ("b", "bad\x00"), ("c", "fine")]
    source = tmp_path / f"rows.{kind}"
    if kind == "csv":
        source.write_bytes(b"id,text\n" + b"".join(_csv_line(i.encode(), t.encode()) for i, t in rows))
    else:
        source.write_bytes(b"".join(_jsonl_line({"id": i, "text": t}) for i, t in rows))
    files = find_input_files(source)
    [chunk] = read_chunks(files, ["text", "id"], 10, text_columns=["text"])
    assert chunk.columns == {"text": ["fine", "bad\x00", "fine"], "id": ["a\x00", "b", "c"]}
    assert chunk.problems == [None, "text contains NUL bytes; binary data? (column 'text', byte 3 of the field)",
                              None]
    [chunk] = read_chunks(files, ["text", "id"], 10)
    assert chunk.problems[:2] == ["text contains NUL bytes; binary data? (column 'id', byte 1 of the field)",
                                  "text contains NUL bytes; binary data? (column 'text', byte 3 of the field)"]


def test_ragged_csv_lines_report_their_file_and_record(tmp_path, checkpoint, texts):  # noqa: F811
    """Lines with too many and too few fields take no row number and are reported with the file (its path under
    the input directory) and the CSV record number, which counts the header as record 1."""
    directory = tmp_path / "rows"
    (directory / "b").mkdir(parents=True)
    (directory / "a.csv").write_bytes(b"id,text\n" + _csv_line(b"r0", texts[0].encode()))
    (directory / "b" / "c.csv").write_bytes(
        b"id,text\n" + _csv_line(b"r1", texts[1].encode()) + b'r2,"' + texts[2].encode() + b'",extra\n'
        + b"r3\n" + _csv_line(b"r4", texts[4].encode()))
    ids, errors = _run(checkpoint, directory, tmp_path, id_column="id")
    assert ids == ["r0", "r1", "r4"]
    assert [error["id"] for error in errors] == [None, None]
    assert errors[0]["reason"].startswith("malformed CSV line in b/c.csv (expected 2 fields, got 3) at CSV record 3: ")
    assert errors[1]["reason"] == "malformed CSV line in b/c.csv (expected 2 fields, got 1) at CSV record 4: 'r3'"


def _bad_csv(path, texts, rows: int = 60):  # noqa: F811
    """A CSV of ``rows`` rows (ids ``r<i>``) with, after row 30, a line with one field too many that is also not
    UTF-8 (pyarrow cannot hand it over and refuses the file), then a row whose text is latin-1 (row 31) and a
    row with a NUL byte (row 32)."""
    lines = [b"id,text\n"] + [_csv_line(f"r{i}".encode(), texts[i].encode()) for i in range(rows)]
    lines[32] = _csv_line(b"r31", b"caf\xe9 " + texts[31].encode())
    lines[33] = _csv_line(b"r32", b"nul\x00 " + texts[32].encode())
    lines.insert(32, b"rX,caf\xe9,extra\n")
    path.write_bytes(b"".join(lines))
    return path


def test_a_ragged_line_that_is_not_utf8_mid_file_is_read_around(tmp_path, checkpoint, texts, monkeypatch):  # noqa: F811
    """Small blocks so that pyarrow refuses the file after giving rows: the job reads it again past those rows, the
    line is reported with its record number, every good row is classified once, in order."""
    monkeypatch.setattr(sources_module, "_CSV_BLOCK_BYTES", 1024)
    source = _bad_csv(tmp_path / "rows.csv", texts)
    ids, errors = _run(checkpoint, source, tmp_path, id_column="id", shard_rows=16)
    assert ids == [f"r{i}" for i in range(60) if i not in (31, 32)]
    by_row = {error.get("row"): error for error in errors}
    assert by_row[None]["reason"] == ("malformed CSV line in rows.csv (expected 2 fields, got 3) at CSV record 33: "
                                      "'rX,caf\\x00,extra'")
    for row in (31, 32):
        assert by_row[row]["id"] == f"r{row}"
        assert by_row[row]["reason"].startswith("not valid UTF-8 or contains NUL bytes; binary data? (column 'text', "
                                                "byte 3 of the field)")
    assert len(errors) == 3


@pytest.mark.parametrize("kind", ["csv", "csv_refused", "jsonl"])
def test_read_chunks_from_any_start_row_is_the_tail_of_a_full_read_with_bad_bytes(tmp_path, texts, kind,  # noqa: F811
                                                                                 monkeypatch):
    """Resume over bad bytes: from every start row, the rows, values and problems read are the full read's from
    there, in chunks at ``start + 5k`` (``csv_refused``: the file pyarrow refuses mid-way, read in small blocks)."""
    if kind == "csv_refused":
        monkeypatch.setattr(sources_module, "_CSV_BLOCK_BYTES", 1024)
        source = _bad_csv(tmp_path / "rows.csv", texts, rows=45)
    elif kind == "csv":
        source = tmp_path / "rows.csv"
        source.write_bytes(BOM + b"id,text\n" + b"".join(
            _csv_line(f"r{i}".encode(), b"x\xff" if i % 7 == 3 else b"n\x00" if i % 7 == 5 else texts[i].encode())
            for i in range(30)) + b"r,a,b\n" + _csv_line(b"last", b"text"))
    else:
        source = tmp_path / "rows.jsonl"
        source.write_bytes(BOM + b"".join(
            b'{"id": "r%d", "text": "x\xff"}\n' % i if i % 7 == 3 else _jsonl_line({"id": f"r{i}", "text": "n\x00"})
            if i % 7 == 5 else _jsonl_line({"id": f"r{i}", "text": texts[i]}) for i in range(30)))
    files = find_input_files(source)
    full = list(read_chunks(files, ["text", "id"], 5, text_columns=["text"]))
    rows = [(text, ident, problem) for chunk in full
            for text, ident, problem in zip(chunk.columns["text"], chunk.columns["id"], chunk.problems)]
    assert sum(problem is not None for _, _, problem in rows) >= 2
    for first in range(len(rows) + 2):
        chunks = list(read_chunks(files, ["text", "id"], 5, first, text_columns=["text"]))
        assert [chunk.first_row for chunk in chunks] == list(range(first, len(rows), 5))
        assert [row for chunk in chunks for row in zip(chunk.columns["text"], chunk.columns["id"],
                                                        chunk.problems)] == rows[first:]

"""``costeff-fast predict``: CSV, JSON Lines and Parquet in, sharded predictions out, bad rows to the errors file,
and a job killed with SIGKILL that resumes to exactly the files of an uninterrupted run."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch
from conftest import make_tiny_model
from test_engine import TIE
from test_stream import median_thresholds
from transformers import AutoTokenizer

import costeff_fast
from costeff_fast.cli import main
from costeff_fast.data import load_task
from costeff_fast.jobs import SCHEMA_VERSION, JobArgumentError, run_predict
from costeff_fast.jobs import shards as shards_module
from costeff_fast.jobs.shards import ERRORS, MANIFEST

LABELS = ["negative", "neutral", "positive"]
#: the keys of every _manifest.json (both engines), of its job identity and of each shard
MANIFEST_KEYS = {"schema_version", "engine", "job", "parameters", "complete", "next_row", "errors_bytes", "shards",
                 "totals", "updated", "summary", "audit"}
JOB_KEYS = {"input", "model", "entropy_threshold", "labels", "text_column", "text_pair_column", "id_column",
            "output_format", "shard_rows", "keep_columns", "output_logits", "output_entropy", "audit"}
SHARD_KEYS = {"file", "first_row", "rows", "written", "failed", "exit_layer_sum", "bytes", "sha256", "errors_bytes",
              "exit_layers", "truncated", "seconds", "audit"}
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def texts():
    return list(load_task("rt", max_eval_rows=240)["validation"]["text"])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, minilm_dir, texts):
    """A tiny random 4-layer model over the real vocabulary, three named labels, sharpened exits and per-layer
    thresholds between the two middle entropies of the rt rows (mixed exit layers, no row on a threshold), saved
    with its tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    model = make_tiny_model(3, weight_std=0.15, vocab_size=tokenizer.vocab_size, max_position_embeddings=48,
                            id2label=dict(enumerate(LABELS)), label2id={name: i for i, name in enumerate(LABELS)})
    with torch.no_grad():  # spread the exits' entropies apart
        for exit_head in model.exits:
            exit_head.classifier.weight.mul_(30.0)
    engine = costeff_fast.CostEffEngineForSequenceClassification.from_model(model, tokenizer, backend="torch")
    _, entropies = median_thresholds(model, engine, texts)
    middle = entropies.sort(dim=0).values[len(texts) // 2 - 1: len(texts) // 2 + 1]
    model.config.entropy_threshold = middle.mean(dim=0).tolist()
    directory = tmp_path_factory.mktemp("predict_checkpoint")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def expected(checkpoint, texts):
    """generate_logits on every text: probabilities [N, 3], label names, exit layers, and rows near a threshold."""
    model = costeff_fast.from_pretrained(checkpoint)
    logits, layers = model.generate_logits(texts, return_exit_layers=True)
    hf = costeff_fast.CostEffForSequenceClassification.from_pretrained(checkpoint).eval()
    _, entropies = median_thresholds(hf, model, texts)
    tau = torch.tensor(model.entropy_threshold[:-1])
    ties = ((entropies[:, :-1] - tau).abs() < TIE).any(dim=1)
    assert len(set(layers.tolist())) >= 3, "the thresholds should give mixed exit layers"
    return {"probs": torch.softmax(logits, -1).numpy(), "labels": [LABELS[i] for i in logits.argmax(-1).tolist()],
            "layers": layers.numpy(), "ties": ties.numpy()}


def predict(*argv) -> int:
    """``costeff-fast predict ARGV`` in this process (no progress bar); the exit status."""
    try:
        main(["predict", "--no-progress", *map(str, argv)])
    except SystemExit as exit:
        return exit.code
    return 0


def read_output(directory: Path, output_format: str = "parquet", id_type=None) -> pa.Table:
    """Every shard of an output directory, in file order, as one table."""
    files = sorted(directory.glob("part-*"))
    if output_format == "parquet":
        return pa.concat_tables(pq.read_table(f) for f in files)
    if output_format == "csv":
        types = {"id": id_type} if id_type else {}
        return pa.concat_tables(pacsv.read_csv(f, convert_options=pacsv.ConvertOptions(column_types=types))
                                for f in files)
    return pa.Table.from_pylist([json.loads(line) for f in files for line in f.read_text().splitlines()])


def errors_of(directory: Path) -> list[dict]:
    return [json.loads(line) for line in (directory / ERRORS).read_text().splitlines()]


def write_input(path: Path, columns: dict[str, list]) -> Path:
    if path.suffix == ".parquet":
        pq.write_table(pa.table(columns), path, row_group_size=50)
    elif path.suffix == ".csv":
        pacsv.write_csv(pa.table(columns), path)
    else:
        rows = [dict(zip(columns, values)) for values in zip(*columns.values())]
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def check_rows(table: pa.Table, expected: dict, rows: np.ndarray) -> None:
    """The output rows equal generate_logits on input rows ``rows`` (label and exit layer exact, probabilities to
    1e-5; rows whose entropy lies within 1e-5 of a threshold may exit either way)."""
    assert table.column_names == ["id", "label", "prob_negative", "prob_neutral", "prob_positive", "exit_layer"]
    keep = ~expected["ties"][rows]
    probs = np.stack([table[f"prob_{name}"].to_numpy() for name in LABELS], axis=1)
    np.testing.assert_allclose(probs[keep], expected["probs"][rows][keep], atol=1e-5, rtol=0)
    assert np.array(table["label"].to_pylist())[keep].tolist() == np.array(expected["labels"])[rows][keep].tolist()
    assert np.array_equal(table["exit_layer"].to_numpy()[keep], expected["layers"][rows][keep])


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_predict_writes_every_format_in_input_order(tmp_path, checkpoint, texts, expected, suffix):
    source = write_input(tmp_path / f"rows{suffix}", {"text": texts})
    out = tmp_path / "out"
    assert predict("--model", checkpoint, "--input", source, "--output", out, "--shard-rows", 70,
                   "--batch-size", 16) == 0
    output_format = suffix.lstrip(".")
    assert sorted(p.name for p in out.iterdir()) == [ERRORS, MANIFEST] + [
        f"part-{i:06d}.{output_format}" for i in range(4)]  # 240 rows in shards of 70
    table = read_output(out, output_format)
    assert table["id"].to_pylist() == list(range(len(texts)))
    check_rows(table, expected, np.arange(len(texts)))
    if output_format == "parquet":
        assert table.schema == pa.schema([("id", pa.int64()), ("label", pa.string())] + [
            (f"prob_{name}", pa.float32()) for name in LABELS] + [("exit_layer", pa.int64())])
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["complete"] and manifest["totals"]["written"] == len(texts) and manifest["totals"]["failed"] == 0
    assert (out / ERRORS).read_text() == ""


def test_id_and_pair_columns_and_output_format(tmp_path, checkpoint, texts):
    """--id-column keeps Parquet's id type (CSV ids are text); --text-pair-column classifies (text, pair)."""
    pairs = texts[1:] + texts[:1]
    ids = [1000 + 7 * i for i in range(len(texts))]
    model = costeff_fast.from_pretrained(checkpoint)
    logits, layers = model.generate_logits(list(zip(texts, pairs)), return_exit_layers=True)
    source = write_input(tmp_path / "pairs.parquet", {"key": ids, "question": texts, "passage": pairs})
    out = tmp_path / "out"
    assert predict("--model", checkpoint, "--input", source, "--output", out, "--id-column", "key",
                   "--text-column", "question", "--text-pair-column", "passage", "--output-format", "csv") == 0
    table = read_output(out, "csv", id_type=pa.string())
    assert table["id"].to_pylist() == [str(i) for i in ids]
    assert table["label"].to_pylist() == [LABELS[i] for i in logits.argmax(-1).tolist()]
    assert table["exit_layer"].to_pylist() == layers.tolist()
    parquet = tmp_path / "parquet_out"
    assert predict("--model", checkpoint, "--input", source, "--output", parquet, "--id-column", "key",
                   "--text-column", "question", "--text-pair-column", "passage") == 0
    assert read_output(parquet).schema.field("id").type == pa.int64()
    assert read_output(parquet)["id"].to_pylist() == ids


def test_bad_rows_go_to_the_errors_file_and_the_exit_status_is_1(tmp_path, checkpoint, texts, expected, capsys):
    lines = [json.dumps({"text": texts[0]}), json.dumps({"other": 1}), json.dumps({"text": None}),
             json.dumps({"text": 42}), json.dumps({"text": ""}), "", json.dumps({"text": " \t"}),
             "{not json", "[1, 2]", json.dumps({"text": texts[1]})]
    source = tmp_path / "rows.jsonl"
    source.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    assert predict("--model", checkpoint, "--input", source, "--output", out, "--shard-rows", 4) == 1
    captured = capsys.readouterr()
    assert "7 of 9 rows failed" in captured.err and str(out / ERRORS) in captured.err
    assert "2 written" in captured.out and "7 failed" in captured.out
    table = read_output(out, "jsonl")
    assert table["id"].to_pylist() == [0, 8]  # the blank line takes no row number
    check_rows(table, expected, np.array([0, 1]))
    assert [(e["id"], e["reason"].split(":")[0]) for e in errors_of(out)] == [
        (1, "missing text"), (2, "missing text"), (3, "text is not a string"), (4, "empty text"),
        (5, "empty text"), (6, "invalid JSON"), (7, "not a JSON object")]


def test_csv_empty_fields_and_malformed_lines_are_reported(tmp_path, checkpoint, texts):
    source = tmp_path / "rows.csv"
    source.write_text(f'id,text\na,"{texts[0]}"\nb,\nc,"{texts[1]}",extra\nd,"{texts[2]}"\n')
    out = tmp_path / "out"
    assert predict("--model", checkpoint, "--input", source, "--output", out, "--id-column", "id") == 1
    assert read_output(out, "csv", id_type=pa.string())["id"].to_pylist() == ["a", "d"]
    errors = errors_of(out)
    assert errors[0] == {"id": "b", "reason": "empty text: column 'text' is ''", "row": 1}
    assert errors[1]["id"] is None and errors[1]["reason"].startswith("malformed CSV line in rows.csv (expected 2 "
                                                                      "fields, got 3)")


def test_a_directory_input_is_read_in_path_order(tmp_path, checkpoint, texts, expected):
    folder = tmp_path / "in"
    (folder / "b").mkdir(parents=True)
    write_input(folder / "a.parquet", {"text": texts[:100]})
    write_input(folder / "b" / "c.parquet", {"text": texts[100:]})
    write_input(folder / "_skipped.parquet", {"text": ["never read"]})
    out = tmp_path / "out"
    assert predict("--model", checkpoint, "--input", folder, "--output", out, "--shard-rows", 64) == 0
    table = read_output(out)
    assert table["id"].to_pylist() == list(range(len(texts)))
    check_rows(table, expected, np.arange(len(texts)))


def test_refusals_are_one_line_and_exit_2(tmp_path, checkpoint, texts, capsys):
    source = write_input(tmp_path / "rows.csv", {"text": texts[:5]})
    out = tmp_path / "out"
    cases = [
        (["--input", tmp_path / "missing.csv"], "--input"),
        (["--input", write_input(tmp_path / "rows.txt", {"text": ["a"]})], "unknown format"),
        (["--text-column", "body"], "--text-column 'body'"),
        (["--entropy-threshold", "-1"], "--entropy-threshold"),
        (["--entropy-threshold", "0.1,0.2"], "num_hidden_layers=4"),
        (["--model", tmp_path], "--model"),
    ]
    for indent in (None, 2):  # one JSON array, on one line or pretty-printed: not JSON Lines
        array = tmp_path / f"array-{indent}.json"
        array.write_text(json.dumps([{"text": t} for t in texts[:3]], indent=indent))
        cases.append((["--input", array], "is a JSON object, so it is not JSON Lines"))
    mixed = tmp_path / "mixed"  # a directory whose second file is one JSON array: refused, not failed rows
    mixed.mkdir()
    (mixed / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[:2]))
    (mixed / "b.json").write_text(json.dumps([{"text": t} for t in texts[2:4]], indent=2))
    cases.append((["--input", mixed], "b.json: none of its first"))
    for extra, message in cases:
        args = dict(zip(["--model", "--input", "--output"], [checkpoint, source, out]))
        args.update(dict(zip(extra[::2], extra[1::2])))
        assert predict(*[x for pair in args.items() for x in pair]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("costeff-fast: error:") and message in err, err
    assert predict("--model", checkpoint, "--input", source, "--output", out) == 0
    assert predict("--model", checkpoint, "--input", source, "--output", out) == 2  # exists: --resume/--overwrite
    assert "--resume" in capsys.readouterr().err
    assert predict("--model", checkpoint, "--input", source, "--output", out, "--resume",
                   "--entropy-threshold", "0") == 2  # another job's output
    assert "entropy_threshold" in capsys.readouterr().err
    before = sorted(p.name for p in out.iterdir())
    for refused in (["--model", tmp_path / "missing"], ["--entropy-threshold", "-1"]):
        args = {"--model": checkpoint, "--input": source, "--output": out, **dict(zip(refused[::2], refused[1::2]))}
        assert predict(*[x for pair in args.items() for x in pair], "--overwrite") == 2  # refused before deleting
        assert sorted(p.name for p in out.iterdir()) == before
    capsys.readouterr()
    assert predict("--model", checkpoint, "--input", source, "--output", out, "--overwrite",
                   "--entropy-threshold", "0") == 0
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert predict("--model", checkpoint, "--input", source, "--output", tmp_path / "other", "--overwrite") == 2
    assert (tmp_path / "other" / "notes.txt").exists()


def test_a_crash_between_shard_and_manifest_resumes_to_the_same_files(tmp_path, checkpoint, texts, monkeypatch):
    """Stop the job after the third shard and its errors are on disk but before the manifest names them: the
    resumed job deletes that shard, cuts the errors back and writes exactly what an uninterrupted job writes."""
    rows = [t if i % 17 else "" for i, t in enumerate(texts)]  # failed rows in every shard
    source = write_input(tmp_path / "rows.jsonl", {"text": rows})
    whole, crashed = tmp_path / "whole", tmp_path / "crashed"
    run_predict(checkpoint, source, whole, shard_rows=50, progress=False)
    calls = []
    write_manifest = shards_module.ShardWriter._write_manifest

    def crash_on_fourth(self):
        calls.append(1)
        if len(calls) == 4:  # the initial manifest, shards 0 and 1, then shard 2
            raise KeyboardInterrupt
        write_manifest(self)

    monkeypatch.setattr(shards_module.ShardWriter, "_write_manifest", crash_on_fourth)
    with pytest.raises(KeyboardInterrupt):
        run_predict(checkpoint, source, crashed, shard_rows=50, progress=False)
    assert (crashed / "part-000002.jsonl").exists()  # written, never committed
    assert len(json.loads((crashed / MANIFEST).read_text())["shards"]) == 2
    monkeypatch.setattr(shards_module.ShardWriter, "_write_manifest", write_manifest)
    summary = run_predict(checkpoint, source, crashed, shard_rows=50, resume=True, progress=False)
    assert summary.rows_this_run == len(rows) - 100 and summary.failed == len(range(0, len(rows), 17))
    assert_same_output(whole, crashed)


def assert_same_output(a: Path, b: Path) -> None:
    """Same files with the same bytes, and manifests equal but for their time stamps and timings (seconds and
    rows/s of the shards, the summary and the audit)."""
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        if name != MANIFEST:
            assert (a / name).read_bytes() == (b / name).read_bytes(), name
    manifests = [json.loads((d / MANIFEST).read_text()) for d in (a, b)]
    for manifest in manifests:
        manifest.pop("updated")
        timed = [*manifest["shards"], manifest["summary"], *([manifest["audit"]] if manifest["audit"] else []),
                 *(shard["audit"] for shard in manifest["shards"] if shard.get("audit"))]
        for entry in timed:
            entry.pop("seconds", None)
            entry.pop("rows_per_second", None)
    assert manifests[0] == manifests[1]


def test_sigkill_mid_run_then_resume_equals_an_uninterrupted_run(tmp_path, checkpoint, texts):
    """A real ``kill -9`` of the command while it writes shards, then ``--resume``: the same files as a run that
    was never interrupted (one thread and the torch backend everywhere, so the arithmetic is the same)."""
    rows = [t if i % 13 else None for i, t in enumerate(texts * 8)]  # 1,920 rows, some failing
    source = write_input(tmp_path / "rows.parquet", {"text": rows})  # row groups of 50, shards of 40
    flags = ["--model", checkpoint, "--input", source, "--shard-rows", 40, "--batch-size", 4, "--num-threads", 1,
             "--backend", "torch"]
    killed = tmp_path / "killed"
    job = subprocess.Popen([sys.executable, "-m", "costeff_fast.cli", "predict", "--no-progress",
                            *map(str, flags), "--output", str(killed)], env={**os.environ, "PYTHONPATH": str(REPO)},
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and job.poll() is None:
        manifest = _read_json(killed / MANIFEST)
        if manifest and len(manifest["shards"]) >= 3:
            job.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    assert job.wait(60) == -signal.SIGKILL, f"the job ended before it was killed: {job.stderr.read().decode()}"
    assert len(json.loads((killed / MANIFEST).read_text())["shards"]) < len(rows) // 40, "killed mid-run"
    threads = torch.get_num_threads()
    try:  # the rest in this process (--num-threads 1 is process-wide: restored after)
        assert predict(*flags, "--output", killed, "--resume") == 1  # some rows failed, every other row written
        whole = tmp_path / "whole"
        assert predict(*flags, "--output", whole) == 1
    finally:
        torch.set_num_threads(threads)
    assert_same_output(whole, killed)
    table = read_output(killed)
    assert table["id"].to_pylist() == [i for i, t in enumerate(rows) if t is not None]
    assert [e["id"] for e in errors_of(killed)] == [i for i, t in enumerate(rows) if t is None]


def test_resume_of_a_complete_job_does_nothing(tmp_path, checkpoint, texts):
    source = write_input(tmp_path / "rows.csv", {"text": texts[:30]})
    out = tmp_path / "out"
    first = run_predict(checkpoint, source, out, shard_rows=10, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.name != MANIFEST}
    again = run_predict(checkpoint, source, out, shard_rows=10, resume=True, progress=False)
    assert again.rows_this_run == 0 and (again.written, again.failed) == (first.written, first.failed) == (30, 0)
    assert before == {p.name: p.read_bytes() for p in out.iterdir() if p.name != MANIFEST}
    with pytest.raises(JobArgumentError, match="shard_rows"):
        run_predict(checkpoint, source, out, shard_rows=20, resume=True, progress=False)


def check_manifest(directory: Path) -> dict:
    """The manifest of an output directory, after checking its keys and that it describes the files there."""
    manifest = json.loads((directory / MANIFEST).read_text())
    assert set(manifest) == MANIFEST_KEYS and set(manifest["job"]) == JOB_KEYS
    assert manifest["schema_version"] == SCHEMA_VERSION and manifest["complete"]
    assert set(manifest["job"]["model"]) == {"path", "config_sha256", "weights"}
    assert set(manifest["parameters"]) == {"batch_size", "backend", "num_threads", "num_workers", "address", "device"}
    shards = manifest["shards"]
    assert all(set(shard) == SHARD_KEYS for shard in shards)
    assert [shard["file"] for shard in shards] == sorted(p.name for p in directory.glob("part-*"))
    assert sum(shard["written"] for shard in shards) == manifest["totals"]["written"]
    assert manifest["totals"]["rows"] == manifest["totals"]["written"] + manifest["totals"]["failed"]
    assert manifest["next_row"] == manifest["totals"]["rows"]
    assert manifest["errors_bytes"] == (directory / ERRORS).stat().st_size
    summary = manifest["summary"]  # the job's summary is the sum of its shards'
    assert sum(summary["exit_layer_histogram"]) == manifest["totals"]["written"]
    layer_sum = sum((i + 1) * n for i, n in enumerate(summary["exit_layer_histogram"]))
    assert layer_sum == manifest["totals"]["exit_layer_sum"]
    assert summary["seconds"] > 0 and summary["backend"] in ("torch", "native") and summary["device"] == "cpu"
    return manifest


def test_the_manifest_names_the_model_by_content_and_resume_refuses_other_manifests(tmp_path, checkpoint, texts):
    """schema_version 2: the weights' sha256 next to the path, the run's parameters, every shard's rows; --resume
    refuses a manifest of another schema version or of a Ray job before touching the output."""
    source = write_input(tmp_path / "rows.csv", {"text": texts[:5] + [""]})
    out = tmp_path / "out"
    run_predict(checkpoint, source, out, shard_rows=4, batch_size=8, progress=False)
    manifest = check_manifest(out)
    assert manifest["engine"] == "local"
    model = manifest["job"]["model"]
    assert model["path"] == str(Path(checkpoint).resolve())
    assert {w["file"]: w["sha256"] for w in model["weights"]} == {
        "model.safetensors": hashlib.sha256((Path(checkpoint) / "model.safetensors").read_bytes()).hexdigest()}
    assert model["config_sha256"] == hashlib.sha256((Path(checkpoint) / "config.json").read_bytes()).hexdigest()
    assert manifest["parameters"] == {"batch_size": 8, "backend": "auto", "num_threads": "auto", "num_workers": None,
                                      "address": None, "device": None}
    assert [(s["first_row"], s["rows"], s["written"], s["failed"]) for s in manifest["shards"]] == [
        (0, 4, 4, 0), (4, 2, 1, 1)]
    assert manifest["job"]["shard_rows"] == 4 and manifest["job"]["labels"] == LABELS
    for change, message in (({"schema_version": 1}, "has schema version 1"), ({"engine": "ray"}, "--engine ray job")):
        edited = {**copy.deepcopy(manifest), **change}
        (out / MANIFEST).write_text(json.dumps(edited))
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        with pytest.raises(JobArgumentError, match=message) as refused:
            run_predict(checkpoint, source, out, shard_rows=4, resume=True, progress=False)
        assert "\n" not in str(refused.value) and "--overwrite" in str(refused.value)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None

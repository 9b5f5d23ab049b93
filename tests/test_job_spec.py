"""The one job description of ``costeff-fast predict`` (:class:`costeff_fast.jobs.PredictJob`): built and checked
once for both engines; every refused field is one line naming its flag. No model is loaded here: building a job
reads the checkpoint's ``config.json`` and the input's columns only."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pyarrow as pa
import pytest

from costeff_fast.jobs import DEFAULT_SHARD_ROWS, JobArgumentError, JobPathError, PredictJob


@pytest.fixture
def paths(tmp_path):
    """A directory with a config.json of 4 layers (enough for the checks that need no model) and a CSV input."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"num_hidden_layers": 4}))
    source = tmp_path / "rows.csv"
    source.write_text("key,text,pair\na,first,second\nb,third,fourth\n")
    return {"model": model, "input": source, "output": tmp_path / "out", "root": tmp_path}


def build(paths, **fields) -> PredictJob:
    return PredictJob(**{name: paths[name] for name in ("model", "input", "output")} | fields)


def test_a_job_is_normalized_and_frozen(paths, monkeypatch):
    monkeypatch.chdir(paths["root"])
    job = PredictJob("model", "rows.csv", "out", id_column="key", text_pair_column="pair",
                     entropy_threshold=[0.1, 0.2, 0.3, 0.4])
    assert (job.model, job.input, job.output) == (paths["model"], paths["input"], paths["output"])  # resolved
    assert job.entropy_threshold == (0.1, 0.2, 0.3, 0.4)  # hashable
    assert job.output_format == "csv" and job.files.format == "csv" and job.files.paths == (paths["input"],)
    assert job.columns == ("text", "pair", "key") and job.id_type == pa.string()
    assert job.shard_rows == DEFAULT_SHARD_ROWS and job.engine == "local" and job.local_threads == "auto"
    assert job.parameters() == {"batch_size": 64, "backend": "auto", "num_threads": "auto", "num_workers": None,
                                "address": None, "device": None}
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.batch_size = 8
    assert hash(job) == hash(dataclasses.replace(job)) and job == dataclasses.replace(job)
    plain = build(paths)
    assert plain.id_type == pa.int64() and plain.columns == ("text",)
    ray = build(paths, engine="ray", num_workers=3, address="auto", output_format="parquet")
    assert ray.worker_threads == 1 and ray.parameters() == {"batch_size": 64, "backend": "auto", "num_threads": 1,
                                                            "num_workers": 3, "address": "auto", "device": None}


REFUSED = [  # (fields, error type, the start of the one-line message, a word of its fix)
    ({"engine": "spark"}, ValueError, "--engine 'spark'", "local, ray"),
    ({"batch_size": 0}, ValueError, "--batch-size 0", ">= 1"),
    ({"batch_size": 2.5}, ValueError, "--batch-size 2.5", ">= 1"),
    ({"batch_size": True}, ValueError, "--batch-size True", ">= 1"),
    ({"shard_rows": -3}, ValueError, "--shard-rows -3", ">= 1"),
    ({"engine": "ray", "num_workers": 0}, ValueError, "--num-workers 0", ">= 1"),
    ({"num_threads": 0}, ValueError, "--num-threads 0", "'auto'"),
    ({"num_threads": "many"}, ValueError, "--num-threads 'many'", "'auto'"),
    ({"engine": "ray", "num_threads": "auto"}, ValueError, "--num-threads 'auto'", "default 1"),
    ({"backend": "cuda"}, ValueError, "--backend 'cuda'", "triton"),
    ({"output_format": "xml"}, ValueError, "--output-format 'xml'", "parquet"),
    ({"text_column": ""}, ValueError, "--text-column ''", "column name"),
    ({"id_column": 3}, ValueError, "--id-column 3", "column name"),
    ({"text_pair_column": ""}, ValueError, "--text-pair-column ''", "column name"),
    ({"resume": True, "overwrite": True}, ValueError, "--resume and --overwrite", "pass one"),
    ({"resume": "yes"}, ValueError, "--resume 'yes'", "True or False"),
    ({"engine": "ray", "resume": True}, ValueError, "--resume: works with --engine local only", "--overwrite"),
    ({"num_workers": 2}, ValueError, "--num-workers 2: works with --engine ray only", "--engine ray"),
    ({"address": "head:6379"}, ValueError, "--address head:6379: works with --engine ray only", "--engine ray"),
    ({"engine": "ray", "address": ""}, ValueError, "--address ''", "host:port"),
    ({"entropy_threshold": -1}, ValueError, "--entropy-threshold: entropy_threshold must be >= 0", "nats"),
    ({"entropy_threshold": [0.1, 0.2]}, ValueError, "--entropy-threshold:", "num_hidden_layers=4"),
    ({"entropy_threshold": "high"}, ValueError, "--entropy-threshold:", "a float >= 0"),
    ({"model": "missing"}, FileNotFoundError, "--model", "checkpoint directory"),
    ({"model": "."}, FileNotFoundError, "--model", "save_pretrained"),
    ({"model": None}, ValueError, "--model None", "a path"),
    ({"input": "missing.csv"}, FileNotFoundError, "--input", "pass an existing file"),
    ({"input": "notes.txt"}, ValueError, "--input", "use one of"),
    ({"text_column": "body"}, ValueError, "--text-column 'body'", "columns: key, text, pair"),
    ({"id_column": "row"}, ValueError, "--id-column 'row'", "columns: key, text, pair"),
]


@pytest.mark.parametrize(("fields", "kind", "start", "fix"), REFUSED, ids=[" ".join(map(str, c[0].items())) for c in
                                                                           REFUSED])
def test_a_bad_field_is_refused_in_one_line(paths, monkeypatch, fields, kind, start, fix):
    monkeypatch.chdir(paths["root"])
    (paths["root"] / "notes.txt").write_text("not an input")
    with pytest.raises(JobArgumentError) as refused:
        build(paths, **fields)
    error = refused.value
    assert isinstance(error, kind) and isinstance(error, ValueError)
    assert isinstance(error, JobPathError) == (kind is FileNotFoundError)
    message = str(error)
    assert "\n" not in message and message.startswith(start) and fix in message, message
    assert not paths["output"].exists()  # nothing written


def test_a_config_without_its_depth_is_refused_with_a_threshold(paths):
    (paths["model"] / "config.json").write_text("{}")
    build(paths)  # the depth is read only to check a threshold
    with pytest.raises(JobArgumentError, match=r"^--model .*: cannot read num_hidden_layers"):
        build(paths, entropy_threshold=0.5)


def test_the_cli_builds_the_same_job(paths, monkeypatch):
    """``costeff-fast predict`` builds one :class:`PredictJob` from its flags and hands it to the engine."""
    from costeff_fast.cli import main
    from costeff_fast.commands import predict as command

    seen = []

    def run_local(job):
        seen.append(job)
        raise SystemExit(0)

    monkeypatch.setattr(command, "run_local", run_local)
    with pytest.raises(SystemExit):
        main(["predict", "--model", str(paths["model"]), "--input", str(paths["input"]), "--output",
              str(paths["output"]), "--id-column", "key", "--batch-size", "8", "--entropy-threshold", "0.5",
              "--shard-rows", "100", "--no-progress", "--resume"])
    assert seen == [build(paths, id_column="key", batch_size=8, entropy_threshold=0.5, shard_rows=100,
                          progress=False, resume=True)]
    assert isinstance(seen[0].model, Path)

"""Ray Data: the map_batches class and ``predict --engine ray`` on a local cluster give the local job's rows; the
core never imports Ray, and without Ray the engine is refused with the pip command. The cluster tests are skipped
when Ray is not installed (``pip install costeff_fast[ray]``; the ``test`` extra installs it)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from test_predict_job import (REPO, check_manifest, checkpoint, errors_of, predict, read_output,  # noqa: F401
                              texts, write_input)

from costeff_fast.integrations.ray import CostEffPredictor
from costeff_fast.jobs import run_predict

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="Ray is not installed (pip install costeff_fast[ray])")


def test_the_core_never_imports_ray_and_the_engine_names_the_extra(tmp_path):
    """In a fresh process: importing the package, the CLI and the integration loads no Ray; with Ray missing,
    ``--engine ray`` is one refusal line naming ``pip install 'costeff_fast[ray]'``."""
    script = textwrap.dedent(f"""
        import sys
        import costeff_fast, costeff_fast.cli, costeff_fast.jobs, costeff_fast.integrations.ray
        costeff_fast.cli.build_parser()
        assert not [m for m in sys.modules if m == "ray" or m.startswith("ray.")], "the core imported ray"
        sys.modules["ray"] = None  # as if it were not installed
        costeff_fast.cli.main(["predict", "--model", ".", "--input", ".", "--output", {str(tmp_path / 'o')!r},
                               "--engine", "ray"])
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "pip install 'costeff_fast[ray]'" in result.stderr, result.stderr


def test_predictor_takes_arrow_pandas_and_numpy_batches(checkpoint, texts):  # noqa: F811
    """The callable class returns the kind of batch it is given, with the same values and reasons."""
    values = [texts[0], None, texts[1], "", texts[2]]
    predictor = CostEffPredictor(checkpoint, id_column="key", batch_size=2)
    arrow = predictor(pa.table({"key": ["a", "b", "c", "d", "e"], "text": values}))
    assert arrow.column_names == ["id", "label", "prob_negative", "prob_neutral", "prob_positive", "exit_layer",
                                  "error"]
    assert arrow["error"].to_pylist()[:2] == [None, "missing text: column 'text' is null or absent"]
    assert arrow["label"].null_count == 2 and arrow["exit_layer"].null_count == 2
    frame = predictor(pd.DataFrame({"key": list("abcde"), "text": pd.array(values, dtype="string")}))
    assert isinstance(frame, pd.DataFrame)
    pd.testing.assert_frame_equal(frame, arrow.to_pandas())
    numpy = predictor({"key": np.array(list("abcde"), dtype=object), "text": np.array(values, dtype=object)})
    assert set(numpy) == set(arrow.column_names) and all(isinstance(v, np.ndarray) for v in numpy.values())
    np.testing.assert_array_equal(numpy["prob_neutral"], arrow["prob_neutral"].to_numpy(zero_copy_only=False))
    with pytest.raises(KeyError, match="no column 'key'"):
        predictor(pa.table({"text": values}))


@pytest.fixture(scope="module")
def ray_cluster():
    """A new local Ray with 2 CPUs for this module (``address="local"``: never a cluster already running on the
    machine, whose ``num_cpus`` could not be set)."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


def assert_same_rows(got: pa.Table, want: pa.Table) -> None:
    """Same ids in the same order, labels and exit layers, probabilities to 1e-5 (batches of other sizes)."""
    assert got.column_names == want.column_names
    for name in ("id", "label", "exit_layer"):
        assert got[name].to_pylist() == want[name].to_pylist(), name
    for name in got.column_names:
        if name.startswith("prob_"):
            np.testing.assert_allclose(got[name].to_numpy(), want[name].to_numpy(), atol=1e-5, rtol=0)


@needs_ray
def test_map_batches_on_a_local_cluster_equals_the_local_job(ray_cluster, tmp_path, checkpoint, texts):  # noqa: F811
    ray = ray_cluster
    rows = [t if i % 11 else "" for i, t in enumerate(texts)]
    source = write_input(tmp_path / "rows.parquet", {"key": [f"r{i}" for i in range(len(rows))], "text": rows})
    run_predict(checkpoint, source, tmp_path / "local", id_column="key", progress=False)
    predictions = ray.data.read_parquet(str(source)).map_batches(
        CostEffPredictor, fn_constructor_kwargs={"model_dir": str(checkpoint), "id_column": "key"},
        batch_size=64, batch_format="pandas", compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1)
    table = pa.Table.from_pandas(predictions.to_pandas(), preserve_index=False).sort_by("id")
    local = read_output(tmp_path / "local").sort_by("id")
    written = table.filter(table["error"].is_null()).drop_columns(["error"])
    assert_same_rows(written.cast(local.schema), local)
    failed = table.filter(table["error"].is_valid())
    assert sorted(zip(failed["id"].to_pylist(), failed["error"].to_pylist())) == sorted(
        (e["id"], e["reason"]) for e in errors_of(tmp_path / "local"))


@needs_ray
def test_predict_engine_ray_equals_the_local_engine(ray_cluster, tmp_path, checkpoint, texts):  # noqa: F811
    """``--engine ray --num-workers 2`` on a CSV without an id column: the rows numbered as locally, the same
    output in input order, the same errors file, exit status 1 for the failed rows, and a manifest with the same
    keys, the same model identity, job and totals (one schema, one writer)."""
    rows = [t if i % 9 else " " for i, t in enumerate(texts)]
    source = write_input(tmp_path / "rows.csv", {"text": rows})
    flags = ["--model", checkpoint, "--input", source, "--output-format", "parquet", "--batch-size", 16,
             "--audit-rate", 0.5, "--keep-columns", "text", "--entropy"]
    assert predict(*flags, "--output", tmp_path / "local") == 1
    assert predict(*flags, "--output", tmp_path / "ray", "--engine", "ray", "--num-workers", 2) == 1
    assert_same_rows(read_output(tmp_path / "ray"), read_output(tmp_path / "local"))
    assert errors_of(tmp_path / "ray") == [{"id": e["id"], "reason": e["reason"]} for e in errors_of(tmp_path / "local")]
    local, ray = check_manifest(tmp_path / "local"), check_manifest(tmp_path / "ray")
    assert (local["engine"], ray["engine"]) == ("local", "ray")
    assert ray["job"]["model"] == local["job"]["model"] and local["job"]["model"]["weights"][0]["sha256"]
    assert ray["job"] == {**local["job"], "shard_rows": None}
    assert ray["totals"] == local["totals"]
    # the same sample (drawn on the row numbers), so the same audit counts; the same summary but for timings and
    # threads (1 per Ray worker, "auto" locally)
    timings = ("seconds", "rows_per_second", "num_threads")
    assert {k: v for k, v in ray["audit"].items() if k not in timings} == {
        k: v for k, v in local["audit"].items() if k not in timings} and local["audit"]["rows"] > 50
    assert {k: v for k, v in ray["summary"].items() if k not in timings} == {
        k: v for k, v in local["summary"].items() if k not in timings}
    assert ray["parameters"] == {"batch_size": 16, "backend": "auto", "num_threads": 1, "num_workers": 2,
                                 "address": None, "device": None}
    assert all(s["first_row"] is s["rows"] is s["failed"] is s["exit_layer_sum"] is None for s in ray["shards"])


@needs_ray
def test_ray_refusals_leave_a_previous_output_untouched(tmp_path, checkpoint, texts, capsys):  # noqa: F811
    """``--engine ray --overwrite`` with a model or threshold that is refused exits 2 before deleting anything:
    the previous job's files are still there, byte for byte (docs/input-validation.md P2)."""
    source = write_input(tmp_path / "rows.csv", {"text": texts[:5]})
    out = tmp_path / "out"
    assert predict("--model", checkpoint, "--input", source, "--output", out) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    for refused in (["--model", tmp_path / "missing"], ["--entropy-threshold", "-1"]):
        args = {"--model": checkpoint, "--input": source, "--output": out, **dict(zip(refused[::2], refused[1::2]))}
        assert predict(*[x for pair in args.items() for x in pair], "--engine", "ray", "--overwrite") == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and refused[0] in err, err  # refused for the flag, not for a missing Ray Data
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before

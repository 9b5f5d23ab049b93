"""The GPU check (bench/gpu_check.sh) run with --dry-run on the CPU, and the payload script it carries.

The dry run is the GPU script itself at tiny sizes through the Triton interpreter (about a minute on two
cores): every section must pass and write sane figures into at most a few files. The payload test builds a
tiny checkpoint with the packaged MiniLM tokenizer and checks what ``bench/make_gpu_payload.py`` writes.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

from conftest import make_tiny_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
SECTIONS = ["environment", "pytest", "engine_random", "engine_checkpoint", "throughput", "kernels"]
KERNEL_OPS = {"QKV GEMM + bias", "varlen attention", "W_O GEMM + residual + LN", "W_1 GEMM + GELU",
              "W_2 GEMM + residual + LN", "layer (5 launches)"}


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """``(results folder, completed process, results JSON)`` of one ``bench/gpu_check.sh DIR --dry-run``."""
    out = tmp_path_factory.mktemp("gpu_check") / "results"
    env = dict(os.environ, PYTHON=sys.executable)
    result = subprocess.run(["bash", str(BENCH / "gpu_check.sh"), str(out), "--dry-run"], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=420)
    path = out / "gpu_check.json"
    assert path.is_file(), f"no JSON written; rc {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return out, result, json.loads(path.read_text())


def test_dry_run_passes_every_section_in_two_files(dry_run):
    out, result, results = dry_run
    errors = {name: s.get("error", s.get("reason")) for name, s in results["sections"].items() if s["status"] != "ok"}
    assert result.returncode == 0 and not errors, (errors, result.stdout[-3000:])
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.log"]
    assert results["finished"] and results["mode"] == "dry-run"
    assert list(results["sections"]) == SECTIONS
    assert results["summary"]["status"] == {name: "ok" for name in SECTIONS}
    assert 0 < results["elapsed_s"] < results["budget_s"]
    log = (out / "gpu_check.log").read_text()
    assert all(f"section {name}: ok" in log for name in SECTIONS)


def test_environment_imports_neither_datasets_nor_training(dry_run):
    env = dry_run[2]["sections"]["environment"]
    assert env["forbidden_imports"] == [] and env["triton_interpret"] == "1" and env["cuda_available"] is False
    assert env["costeff_fast_native"] == "0"
    assert env["payload"]["present"] and env["payload"]["rows"] == 24
    assert {"torch", "triton", "transformers", "python"} <= set(env)


def test_pytest_section_ran_the_kernel_and_backend_tests(dry_run):
    section = dry_run[2]["sections"]["pytest"]
    assert section["totals"]["failed"] == section["totals"]["errors"] == 0
    assert section["totals"]["passed"] >= 4
    assert section["passed_by_dtype"]["float16"] > 0 and section["passed_by_dtype"]["float32"] > 0
    assert all(run["returncode"] == 0 for run in section["runs"])


def test_engine_sections_match_the_per_row_reference(dry_run):
    sections = dry_run[2]["sections"]
    cases = sections["engine_random"]["cases"] + sections["engine_checkpoint"]["cases"]
    assert len(cases) == 2
    for case in cases:
        assert case["ok"] and case["dtype"] == "float32"
        assert case["full_depth_max_abs_diff"] <= 1e-4 and case["max_abs_diff_clear_rows"] <= 1e-4
        assert case["exit_layers_equal_fraction"] == 1.0 and case["clear_rows"] == case["rows"]
        assert sum(count > 0 for count in case["exit_layer_counts"]) >= 2, "thresholds should give mixed exits"
    checkpoint = sections["engine_checkpoint"]
    assert checkpoint["threshold"].startswith("calibrated") and checkpoint["rows"] == 24
    assert checkpoint["cases"][0]["accuracy"] == checkpoint["reference_accuracy"]
    assert checkpoint["cases"][0]["predictions_equal_fraction"] == 1.0


def test_throughput_and_kernel_figures_are_sane(dry_run):
    sections = dry_run[2]["sections"]
    throughput = sections["throughput"]
    assert throughput["complete"] and set(throughput["row_sets"]) == {"real", "16"}
    names = {row["contender"] for row in throughput["results"]}
    assert names == set(throughput["contenders"]) and {"hf_bert_sdpa", "triton_checkpoint_early_exit"} <= names
    for row in throughput["results"]:
        assert row["ms_per_batch"] > 0 and row["sentences_per_s"] > 0 and row["gflop"] > 0 and row["tokens"] > 0
        assert math.isclose(row["sentences_per_s"], row["batch"] / row["ms_per_batch"] * 1e3)
        assert 1.0 <= row["mean_exit_layer"]
    no_exit = [row for row in throughput["results"] if row["contender"].endswith("_no_exit")]
    assert all(row["mean_exit_layer"] == int(row["mean_exit_layer"]) for row in no_exit)
    early = [e for effects in throughput["early_exit_effect"].values() for e in effects]
    assert early and all(e["speedup_of_early_exit"] > 0 for e in early)
    kernels = sections["kernels"]
    assert {row["op"] for row in kernels["rows"]} == KERNEL_OPS
    assert all(row["us"] > 0 and row["roofline_us"] > 0 for row in kernels["rows"])
    assert len(kernels["layers"]) == 2


def test_payload_script_on_a_tiny_checkpoint(tmp_path, minilm_dir, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    from transformers import AutoTokenizer

    from make_gpu_payload import load_payload, main, write_payload

    from costeff_fast.data import load_task

    model = make_tiny_model(num_labels=2, attention_head_size=16, vocab_size=30522)
    model.config.entropy_threshold = 0.5
    model.save_pretrained(tmp_path / "checkpoint")
    AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(tmp_path / "checkpoint")
    manifest = main(["--model", str(tmp_path / "checkpoint"), "--out", str(tmp_path / "payload"), "--rows", "16"])

    files = {p.name: p.stat().st_size for p in (tmp_path / "payload").iterdir() if p.name != "manifest.json"}
    assert manifest["files"] == files and manifest["total_bytes"] == sum(files.values()) < 48 * 2**20
    assert {"config.json", "model.safetensors", "tokenizer.json", "rt_validation.jsonl"} <= set(files)
    assert manifest["rows"] == 16 and manifest["label_names"] == ["rotten", "fresh"]
    assert manifest["entropy_threshold"] == 0.5
    assert json.loads((tmp_path / "payload" / "manifest.json").read_text()) == manifest
    from safetensors import safe_open

    with safe_open(tmp_path / "payload" / "model.safetensors", "pt") as weights:
        assert {weights.get_tensor(name).dtype for name in weights.keys()} == {torch.float16}

    payload = load_payload(tmp_path / "payload")
    validation = load_task("rt")["validation"]
    assert payload.texts == list(validation["text"])[:16] and payload.labels == list(validation["label"])[:16]
    assert next(payload.model.parameters()).dtype == torch.float32
    expected = model.half().float()
    for name, tensor in expected.state_dict().items():
        assert torch.equal(payload.model.state_dict()[name], tensor), name
    encoded = payload.tokenizer(payload.texts[:3], truncation=True, max_length=32, padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(payload.model(**encoded).logits, expected(**encoded).logits)

    with pytest.raises(ValueError, match="one label per text"):
        write_payload(tmp_path / "checkpoint", tmp_path / "bad", ["a", "b"], [0], ["x", "y"], "test")
    with pytest.raises(ValueError, match=r"labels must lie in \[0, num_labels=2\)"):
        write_payload(tmp_path / "checkpoint", tmp_path / "bad", ["a"], [2], ["x", "y"], "test")
    with pytest.raises(FileNotFoundError, match="make_gpu_payload.py"):
        load_payload(tmp_path / "missing")

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
# the order of issue 29: what the first run most needs first, the long pytest last (on what time is left)
SECTIONS = ["environment", "prewarm", "kernels", "engine_random", "engine_checkpoint", "throughput", "pytest"]
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
    ran = [log.index(f"section {name}: ok") for name in SECTIONS]
    assert ran == sorted(ran), "sections ran out of order"


def test_caps_fit_eight_minutes_with_pytest_last(monkeypatch):
    """The caps' arithmetic of gpu_check.py's docstring: every section before pytest at its cap still leaves
    pytest 45 s of the 440 s budget, and the shell's guard (+10 s to die) ends within 8 minutes."""
    monkeypatch.syspath_prepend(str(BENCH))
    import gpu_check

    assert list(gpu_check.SECTIONS) == SECTIONS and set(gpu_check.CAP_S) == set(SECTIONS)
    before_pytest = sum(gpu_check.CAP_S[name] for name in SECTIONS[:-1])
    assert gpu_check.BUDGET_S["gpu"] - before_pytest >= 45
    limit = int(next(line.split("=")[1] for line in (BENCH / "gpu_check.sh").read_text().splitlines()
                     if line.startswith("LIMIT=")))
    assert gpu_check.BUDGET_S["gpu"] + 30 <= limit and limit + 10 <= 8 * 60
    # the docstring's sum is the constants' sum (whitespace folded: it wraps)
    caps = " + ".join(str(gpu_check.CAP_S[name]) for name in SECTIONS[:-1])
    budget = int(gpu_check.BUDGET_S["gpu"])
    assert f"{budget} - ({caps}) = {budget - before_pytest} s" in " ".join(gpu_check.__doc__.split())
    for name in SECTIONS[:-1]:
        assert f"``{name}`` {gpu_check.CAP_S[name]} s" in gpu_check.__doc__, name


def test_prewarm_ran_every_contender_at_every_cell_before_the_timing(dry_run):
    sections = dry_run[2]["sections"]
    prewarm, throughput = sections["prewarm"], sections["throughput"]
    cells = len(throughput["row_sets"]) * len({row["batch"] for row in throughput["results"]})
    assert prewarm["engine_calls"] == cells * len(throughput["contenders"]) and "truncated" not in prewarm
    assert prewarm["kernel_layers"] == len({(r["size"], r["shape"]) for r in sections["kernels"]["rows"]})
    assert prewarm["compiled_variants"] == {} and prewarm["compiled_total"] == 0  # the interpreter compiles nothing


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


def test_throughput_and_kernel_figures_are_sane(dry_run, monkeypatch):
    sections = dry_run[2]["sections"]
    throughput = sections["throughput"]
    assert throughput["complete"] and set(throughput["row_sets"]) == {"real", "16"}
    names = {row["contender"] for row in throughput["results"]}
    assert names == set(throughput["contenders"]) and {"hf_bert_sdpa", "triton_checkpoint_early_exit"} <= names
    rows = {(row["rows"], row["batch"], row["contender"]): row for row in throughput["results"]}
    assert len(rows) == len(throughput["results"])  # one row per (row set, batch, contender)
    for row in throughput["results"]:
        assert row["ms_per_batch"] > 0 and row["host_ms_per_batch"] > 0 and row["gflop"] > 0 and row["tokens"] > 0
        assert math.isclose(row["sentences_per_s"], row["batch"] / row["ms_per_batch"] * 1e3)
        assert math.isclose(row["tflop_per_s"], row["gflop"] / row["ms_per_batch"])
        assert 1.0 <= row["mean_exit_layer"]
    no_exit = [row for row in throughput["results"] if row["contender"].endswith("_no_exit")]
    assert all(row["mean_exit_layer"] == int(row["mean_exit_layer"]) for row in no_exit)
    # Each early-exit effect is its no-exit twin's time over its own, on the same rows and batch (recomputed here
    # from the two timings); stopping early never runs more layers nor more FLOPs than the full-depth twin.
    expected = {}
    for (row_set, batch, name), row in rows.items():
        if name.endswith("_early_exit"):
            base = rows[(row_set, batch, name.replace("_early_exit", "_no_exit"))]
            assert row["mean_exit_layer"] <= base["mean_exit_layer"] and row["gflop"] <= base["gflop"]
            if row["mean_exit_layer"] < base["mean_exit_layer"]:
                assert row["gflop"] < base["gflop"]
            expected.setdefault(name.removesuffix("_early_exit"), []).append(
                (row_set, batch, row["mean_exit_layer"], base["ms_per_batch"] / row["ms_per_batch"]))
    effects = {name: [(e["rows"], e["batch"], e["mean_exit_layer"], e["speedup_of_early_exit"]) for e in found]
               for name, found in throughput["early_exit_effect"].items()}
    assert expected and effects.keys() == expected.keys()
    for name in expected:
        assert [e[:3] for e in effects[name]] == [e[:3] for e in expected[name]]
        assert all(math.isclose(a[3], b[3]) for a, b in zip(effects[name], expected[name]))
    kernels = sections["kernels"]
    assert {row["op"] for row in kernels["rows"]} == KERNEL_OPS
    for row in kernels["rows"]:
        assert row["us"] > 0 and math.isclose(row["fraction_of_roofline"], row["roofline_us"] / row["us"])
    # The layer row sums its five kernels, per size: measured times and roofline times alike.
    assert len(kernels["layers"]) == 2
    for layer in kernels["layers"]:
        ops = [r for r in kernels["rows"] if r["size"] == layer["size"] and not r["op"].startswith("layer")]
        assert len(ops) == 5
        assert math.isclose(layer["sum_of_ops_us"], sum(r["us"] for r in ops))
        assert math.isclose(layer["roofline_us"], sum(r["roofline_us"] for r in ops))
    # Roofline of two kernels by hand for the dry run's tiny layer (hidden 32, 2 heads x 16 = A 32, fp32: 4 bytes
    # a value) on 4 rows of 16 tokens (T = 64), at the recorded peaks. Both are far below the ridge point, so
    # memory-bound: time = bytes / bandwidth.
    #   QKV GEMM: FLOPs 2 T 32 (3 A) = 393216; values T 32 + 32 (3 A) + T (3 A) = 2048 + 3072 + 6144 = 11264
    #   attention: FLOPs 4 (4 x 16^2) A = 131072; values T (3 A) + T A = 6144 + 2048 = 8192
    monkeypatch.syspath_prepend(str(BENCH))
    from bench_gpu import PEAKS

    flops_peak, bandwidth = PEAKS[kernels["peaks"]]
    by_op = {r["op"]: r for r in kernels["rows"] if r["size"] == "4x16"}
    for op, flops, values in (("QKV GEMM + bias", 393216, 11264), ("varlen attention", 131072, 8192)):
        row = by_op[op]
        assert row["tokens"] == 64 and row["rows"] == 4 and row["bound"] == "memory"
        assert flops / flops_peak < 4 * values / bandwidth
        assert math.isclose(row["roofline_us"], 1e6 * 4 * values / bandwidth)
        assert math.isclose(row["achieved_gb_per_s"], 4 * values / 1e6 * 1e3 / row["us"])
        assert math.isclose(row["achieved_tflop_per_s"], flops / 1e9 * 1e3 / row["us"])


def test_measurements_sit_next_to_the_roofline_prediction(dry_run, monkeypatch):
    """Each throughput row carries host wall time and the prediction of bench/roofline.py for the very rows and exit
    layers it ran; recomputed here from what the JSON records (lengths, exit layers, thresholds, host costs)."""
    monkeypatch.syspath_prepend(str(BENCH))
    import roofline
    from gpu_check import TINY_FIELDS

    from costeff_fast.kernels.layer import fused_layer_supported

    sections = dry_run[2]["sections"]
    throughput, kernels = sections["throughput"], sections["kernels"]
    assert throughput["board"] == kernels["peaks"] == "H100"
    costs = kernels["host_costs"]
    assert costs["triton_launch_us"] > 0 and costs["torch_op_us"] > 0 and costs["host_op_us"] > 0
    assert costs["sync_us"] is None and costs["kernel_floor_us"] is None  # CUDA only
    cases = {**roofline.CASES, "measured": roofline.measured_case(costs)}
    teachers = {"hf_bert_sdpa": roofline.Teacher(32, 2, 64, 2),  # the dry run's tiny BERT; the checkpoint's shape
                "hf_teacher_shape_sdpa": roofline.Teacher(32, 2, 128, 4)}
    checkpoint = roofline.costeff_layers({**TINY_FIELDS, "num_labels": 2, "exit_pooling": "mean"})
    tau = throughput["thresholds"]["triton_checkpoint"]["nats"]
    checked = set()
    for row in throughput["results"]:
        assert row["host_ms_per_batch"] > 0 and row["ms_per_batch"] > 0
        assert math.isclose(row["measured_over_predicted"], row["ms_per_batch"] / row["predicted_ms_per_batch"])
        low, high = row["predicted_ms_range"]
        assert low < row["predicted_ms_per_batch"] < high
        lengths = throughput["cells"][row["lengths_key"]]
        assert len(lengths) == row["batch"] and sum(lengths) == row["tokens"]
        if row["contender"] in teachers:
            expect = {name: roofline.hf_prediction(teachers[row["contender"]], lengths, "H100", case, 4)["ms"]
                      for name, case in cases.items()}
            assert "exit_layers" not in row
        elif row["contender"].startswith("triton_checkpoint"):
            threshold = tau if not row["contender"].endswith("no_exit") else [0.0] * len(checkpoint)
            assert len(row["exit_layers"]) == row["batch"]
            assert math.isclose(sum(row["exit_layers"]) / row["batch"], row["mean_exit_layer"], rel_tol=1e-6)  # fp32
            work = roofline.exact_work(lengths, row["exit_layers"], len(checkpoint))
            # the path the backend's rule gives the tiny checkpoint on these rows; the per-op contender keeps five
            # launches whatever the rule
            # each layer on the rows that reach it (1-based exit layers past it)
            reach = [[n for n, layer in zip(lengths, row["exit_layers"]) if layer > i] for i in range(len(checkpoint))]
            paths = ["fused" if rows_in and fused_layer_supported(TINY_FIELDS["hidden_size"], heads,
                                                                  TINY_FIELDS["attention_head_size"], ffn,
                                                                  max(rows_in))
                     and row["contender"] != "triton_checkpoint_per_op" else "per-op"
                     for rows_in, heads, ffn in zip(reach, TINY_FIELDS["num_attention_heads"],
                                                   TINY_FIELDS["intermediate_size"])]
            assert row["predicted_layer_paths"] == paths
            assert row["predicted_path"] == (paths[0] if len(set(paths)) == 1 else "mixed")
            expect = {name: roofline.engine_prediction(checkpoint, lengths, work, paths, threshold, "H100", case,
                                                       4)["ms"] for name, case in cases.items()}
        else:
            continue
        checked.add(row["contender"])
        assert math.isclose(row["predicted_ms_per_batch"], expect["mid"])
        assert row["predicted_ms_range"] == sorted([expect["fast"], expect["slow"]])
        assert math.isclose(row["predicted_ms_measured_host_costs"], expect["measured"])
    assert checked == {"hf_bert_sdpa", "hf_teacher_shape_sdpa", "triton_checkpoint_no_exit",
                       "triton_checkpoint_early_exit", "triton_checkpoint_per_op"}
    # the kernels: each predicted by roofline.kernel_us from its own FLOPs and bytes, the layer as their sum
    mid = roofline.CASES["mid"]
    for layer in kernels["layers"]:
        ops = [r for r in kernels["rows"] if r["size"] == layer["size"] and not r["op"].startswith("layer")]
        for op in ops:
            assert math.isclose(op["predicted_us"], roofline.kernel_us(1e9 * op["gflop"], 1e6 * op["mbytes"], "H100",
                                                                       mid))
        assert math.isclose(layer["predicted_us"], sum(op["predicted_us"] for op in ops))
        assert layer["predicted_fused_us"] >= mid.kernel_floor and layer["host_us"] > 0
    # the paper's prediction for this board on the payload's rows, in the environment section and the summary
    prediction = sections["environment"]["prediction"]
    assert prediction["board"] == "H100" and prediction["run"] == "rt-standard-uniform" and prediction["rows"] == 24
    assert set(prediction["cells"]) == {"real 3", "16 x 256"}
    for cell in prediction["cells"].values():
        assert math.isclose(cell["per_op_vs_hf"], cell["hf_ms"] / cell["per_op_ms"])
        assert cell["per_op_vs_hf_range"][0] <= cell["per_op_vs_hf_range"][1]
    summary = dry_run[2]["summary"]
    assert summary["paper_prediction"] == prediction["cells"] and summary["host_costs"] == costs
    assert len(summary["measured_vs_predicted"]) == len([r for r in throughput["results"] if r["rows"] == "real"])


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

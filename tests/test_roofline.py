"""bench/roofline.py, the GPU prediction of docs/design.md: its arithmetic checked by hand, its op counts against
the code they were read from, and the doc's block against the script's output (so the doc's numbers are what
`python bench/roofline.py` prints today)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
BEGIN, END = "<!-- bench/roofline.py: begin -->", "<!-- bench/roofline.py: end -->"


@pytest.fixture()
def roofline(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import roofline

    return roofline


def _section(text: str) -> str:
    start = text.index("## GPU prediction")
    following = text.find("\n## ", start + 1)
    return text[start:] if following < 0 else text[start:following]


def test_design_doc_block_is_the_scripts_output(roofline, capsys):
    text = (ROOT / "docs" / "design.md").read_text()
    section = _section(text)
    block = section[section.index(BEGIN) + len(BEGIN):section.index(END)].strip("\n") + "\n"
    printed = roofline.main([])
    assert capsys.readouterr().out == printed
    assert block == printed, "docs/design.md's GPU prediction is stale: paste `python bench/roofline.py` between the markers"
    # every speed-up and per-layer figure the prose quotes is one the block prints
    prose = section.replace(block, "")
    for figure in re.findall(r"\b\d+\.\d\dx\b", prose):
        assert figure in block, figure


def test_the_kernel_readmes_layer_roofline(roofline):
    """costeff_fast/kernels/README.md's table: the 8x layer at 256 x 128 tokens on the H100, 120.7 us."""
    rows = {r["op"]: r for r in roofline.layer_roofline([128] * 256, 768, 2, 64, 256, roofline.PEAKS["H100"])}
    assert round(rows["QKV GEMM + bias"]["us"], 1) == 22.7 and round(rows["W_2 GEMM + residual + LN"]["us"], 1) == 35.2
    assert round(sum(r["us"] for r in rows.values()), 1) == 120.7
    assert all(r["bound"] == "memory" for r in rows.values())


def test_per_token_figures_by_hand(roofline):
    """rt-standard-uniform's layer (H 384, 2 heads of 32, F 160) on two rows of 3 and 5 tokens, fp16."""
    layer = roofline.Layer(384, 2, 32, 160, "mean")
    t = roofline.per_token(layer, [3, 5], roofline.Teacher(384, 12, 1536, 6))
    gemm = 384 * 192 + 64 * 384 + 2 * 384 * 160  # 221,184 weights
    assert t["flops_per_token"] == (2 * 8 * gemm + 4 * (9 + 25) * 64) / 8
    # activations per token: x + qkv, qkv + context, context + 2 hidden, hidden + ffn, ffn + 2 hidden; 2 bytes each
    assert t["per_op_bytes_per_token"] == 2 * ((384 + 192) + (192 + 64) + (64 + 768) + (384 + 160) + (160 + 768))
    assert t["fused_bytes_per_token"] == 2 * 2 * 384 and t["gemm_weight_bytes"] == 2 * gemm
    # the teacher pads both rows to 5: 10 tokens of 2 (4 H^2 + 2 H F) FLOPs and 4 x 5 x 384 attention each
    assert t["teacher_flops_per_token"] == 10 * (2 * (4 * 384**2 + 2 * 384 * 1536) + 4 * 5 * 384) / 8
    assert t["teacher_padding_factor"] == 10 / 8 and t["teacher_padded_length"] == 5


def test_run_of_record_and_its_teacher(roofline):
    record = roofline.run_of_record()
    report = json.loads(roofline.REPORT.read_text())
    assert record["name"] == "rt-standard-uniform"
    assert record["exit_layer_counts"] == report["calibration"]["chosen"]["exit_layer_counts"]
    # the teacher the report counted: 6 layers of hidden 384, FFN 1536 (Q K V O + 2 FFN matrices, biases, 2 LNs)
    H, F = 384, 1536
    per_layer = 4 * H * H + 4 * H + 2 * H * F + F + H + 4 * H
    teacher = record["teacher"]
    assert (teacher.hidden, teacher.ffn, teacher.layers) == (H, F, 6)
    assert teacher.layers * per_layer == record["teacher_encoder_parameters"] == 10_646_784
    from transformers import AutoConfig

    from costeff_fast.training.data import packaged_minilm_dir

    minilm = AutoConfig.from_pretrained(packaged_minilm_dir())
    assert roofline.Teacher.of(minilm) == teacher


def _counts(groups):
    return (sum(g.weight * g.triton for g in groups), sum(g.weight * g.torch for g in groups),
            sum(g.weight for g in groups if g.sync))


def test_launch_and_wait_counts_per_layer(roofline):
    """The counts the prediction charges, by hand from costeff_fast (engine, batch, transfer, reference, the triton
    backend). Per-op, a layer before the last where some rows leave is 8 Triton launches (5 layer, exit head,
    compaction plan and copy) and 21 torch calls: 12 for the exit (reference.segment_mean's sub, arange,
    repeat_interleave's cumsum, fill and index_select, new_zeros, float, index_add_, div; exit_features' cast to
    storage; exit_source's arange; exit_head's zeros), the comparison with tau, the mask's async copy into pinned
    memory (transfer.to_host), 6 for the write-out (the answering positions' to_device copy, two gathers, two
    index_put_, the scalar's fill) and keep's to_device copy; with 1 wait: to_host's event (repeat_interleave has
    its output_size, so no wait for its total). Fused, 3 launches, 8 torch calls (the mask's copy, write-out,
    keep), 1 wait; a layer with threshold 0: its 5 launches only."""
    layers = [roofline.Layer(384, 2, 32, 160, "mean")] * 3
    lengths = [10, 20, 30, 40]
    work = roofline.exact_work(lengths, [1, 3, 3, 3], 3)  # one row leaves at layer 1, the rest at the end
    case = roofline.CASES["mid"]

    def layer(path, tau, index):
        groups = roofline.engine_groups(layers, work, lengths, path, tau, "H100", case)
        return [g for g in groups if g.name.startswith((f"layer {index}", f"exit {index}:"))]

    assert _counts(layer("per-op", [0.5, 0.5, 0.0], 1)) == (8, 21, 1)
    assert _counts(layer("fused", [0.5, 0.5, 0.0], 1)) == (3, 8, 1)
    # nobody leaves: the exit (12), the comparison and the mask's copy; no write-out, no compaction; still the wait
    assert _counts(layer("per-op", [0.5, 0.5, 0.0], 2)) == (6, 14, 1)
    assert _counts(layer("per-op", [0.0, 0.0, 0.0], 1)) == (5, 0, 0)
    # the last layer: everyone answers, no mask and no wait: the exit (12), then arange(B) on the device and
    # scatter_exits' five (two gathers, two index_put_, the fill); the loop ends without _survivors
    assert _counts(layer("per-op", [0.0, 0.0, 0.0], 3)) == (6, 18, 0)
    groups = roofline.engine_groups(layers, work, lengths, "per-op", [0.0] * 3, "H100", case)
    # before the first layer, no wait: run_early_exit's two zeros, from_lengths' arange and cu_seqlens' to_device
    # copy (4); embedding_layernorm's sub, repeat_interleave's cumsum, fill and index_select (output_size given),
    # arange, sub, three gathers, three casts, two adds, two LayerNorm parameter casts, layer_norm, the cast to
    # storage (18)
    assert _counts([g for g in groups if not g.name.startswith(("layer", "exit"))]) == (0, 22, 0)
    # the whole batch: one wait per layer that may answer before the last (layers 1 and 2), none elsewhere
    for path in ("per-op", "fused"):
        assert roofline.engine_prediction(layers, lengths, work, path, [0.5, 0.5, 0.0], "H100", case)["syncs"] == 2
        assert roofline.engine_prediction(layers, lengths, work, path, [0.0] * 3, "H100", case)["syncs"] == 0
    # per layer: a model whose middle layer is too wide to fuse charges that layer per op, the others fused
    mixed = ["fused", "per-op", "fused"]
    tau = [0.5, 0.5, 0.0]
    by_index = {i: _counts(layer(mixed, tau, i)) for i in (1, 2, 3)}
    assert by_index == {1: _counts(layer("fused", tau, 1)), 2: _counts(layer("per-op", tau, 2)),
                        3: _counts(layer("fused", tau, 3))}
    with pytest.raises(ValueError, match="one of them per layer"):
        roofline.engine_groups(layers, work, lengths, ["fused", "per-op"], tau, "H100", case)
    # transfer.to_host's host calls, the same on both paths: a pinned empty, Event(), record, then any() and bool
    decisions = [g for path in ("per-op", "fused") for g in layer(path, [0.5, 0.5, 0.0], 1)
                 if g.name.endswith("decision")]
    assert [g.host for g in decisions] == [5, 5]
    hf = roofline.hf_groups(roofline.Teacher(384, 12, 1536, 6), lengths)
    assert [_counts([g]) for g in hf if g.name.startswith("layer")] == [(0, 14, 0)] * 6
    assert _counts(hf) == (0, 22 + 6 * 14 + 3, 1)


def test_timeline_by_hand(roofline):
    """max(host, GPU) per stretch between waits, plus each wait's round trip."""
    case = roofline.Case("t", 10.0, 5.0, 1.0, 1.0, 7.0, 2.0, 1.0, 1.0, 1.0, 1e12, 1e9)
    groups = [roofline.Group("a", triton=2, host=1, kernels=[("k", 0, 0)], sync=True),  # host 21, GPU 2
              roofline.Group("b", torch=1, kernels=[("k", 0, 0)] * 20),  # host 5, GPU 40
              roofline.Group("c", torch=1, weight=0.5, sync=True)]  # host 2.5, GPU 0
    result = roofline.timeline(groups, "H100", case)
    assert result["us"] == 21 + 7 + max(5 + 2.5, 40) + 0.5 * 7
    assert result["host_us"] == 28.5 and result["gpu_us"] == 42 and result["syncs"] == 1.5
    assert result["launches"] == 2 + 1 + 0.5
    # a kernel: the floor, the compute or the bytes, whichever is longest
    mid = roofline.CASES["mid"]
    flops, bandwidth = roofline.PEAKS["H200"]
    assert roofline.kernel_us(0, 0, "H200", mid) == mid.kernel_floor
    # 1 GB at 70 % of 4.8 TB/s: 297.6 us; 1 TFLOP at 60 % of 989 TFLOP/s: 1,685 us
    assert math.isclose(roofline.kernel_us(0, 1e9, "H200", mid), 1e6 * 1e9 / (bandwidth * mid.memory_efficiency))
    assert math.isclose(roofline.kernel_us(1e12, 0, "H200", mid), 1e6 * 1e12 / (flops * mid.gemm_efficiency))
    assert round(roofline.kernel_us(0, 1e9, "H200", mid), 1) == 297.6


def test_exit_distribution_work(roofline):
    """Expected rows per layer sum to the run's mean exit layer; exact work follows the rows' own exits."""
    record = roofline.run_of_record()
    counts = record["exit_layer_counts"]
    work = roofline.expected_work([27] * 256, counts)
    assert math.isclose(sum(w.rows for w in work) / 256, record["mean_exit_layer"])
    assert all(math.isclose(w.reach, 1.0) for w in work) and work[-1].exit_all == work[-1].reach
    assert all(0 < w.exit_some <= 1 for w in work[:-1])
    one = roofline.expected_work([27], counts)  # a batch of one row never compacts: it leaves or it stays
    assert all(math.isclose(w.exit_some, 0.0, abs_tol=1e-12) for w in one)
    assert math.isclose(sum(w.exit_all for w in one), 1.0)
    exact = roofline.exact_work([5, 7, 9], [1, 2, 2], 3)
    assert [(w.reach, w.rows, w.tokens, w.exit_some, w.exit_all) for w in exact] == [
        (1.0, 3, 21, 1.0, 0.0), (1.0, 2, 16, 0.0, 1.0), (0.0, 0, 0, 0.0, 0.0)]


def test_fused_programs(roofline):
    """Whole rows packed in order up to 64 tokens per program; a longer row alone in a 128-row tile."""
    assert roofline.fused_groups([30, 30, 10, 100, 64]) == [
        (60, 64, 2 * 32**2), (100, 128, 128**2), (10, 64, 16**2), (64, 64, 64**2)]
    layer = roofline.Layer(384, 2, 32, 160, "mean")
    mid = roofline.CASES["mid"]
    one = roofline.exact_work([60], [1], 1)[0]
    many = roofline.exact_work([60] * 1000, [1] * 1000, 1)[0]
    single = roofline.fused_layer_us(layer, one, "H100", mid, True, 64**2)
    assert single > mid.kernel_floor  # one program: its GEMMs on one SM
    # 1,000 programs share 132 SMs: at least 1000 / 132 programs' time each, never less than the HBM traffic
    crowded = roofline.fused_layer_us(layer, many, "H100", mid, True, 1000 * 64**2)
    assert crowded >= 1000 / 132 * single * 0.99
    assert crowded >= 1e6 * 2 * 2 * 60_000 * 384 / (roofline.PEAKS["H100"][1] * mid.memory_efficiency)


def test_measured_host_costs_replace_the_assumed_ones(roofline):
    case = roofline.measured_case({"triton_launch_us": 30.0, "torch_op_us": None, "sync_us": 20.0})
    mid = roofline.CASES["mid"]
    assert (case.triton_launch, case.torch_op, case.sync, case.kernel_floor) == (30.0, mid.torch_op, 20.0,
                                                                                 mid.kernel_floor)

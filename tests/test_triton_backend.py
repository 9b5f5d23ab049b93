"""The engine on the triton backend against the per-sample reference; backend selection and errors.

On a CPU-only machine the kernels run through the Triton interpreter in fp32; GPU-only tests skip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():  # the kernels pick the interpreter when they are defined: set it first
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

pytest.importorskip("triton")

from conftest import make_tiny_model, random_batch  # noqa: E402

import costeff_fast.kernels.utils  # noqa: E402
from costeff_fast import exit_entropy, reference  # noqa: E402
from costeff_fast.backends import build_backend, select_backend  # noqa: E402
from costeff_fast.backends.triton_backend import TritonBackend  # noqa: E402
from costeff_fast.batch import PackedBatch  # noqa: E402
from costeff_fast.engine import run_early_exit  # noqa: E402
from costeff_fast import CostEffEngineForSequenceClassification  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
TIE = 1e-5


def _model(seed: int = 0, **overrides):
    """conftest's tiny model (heads [2, 1, 3, 2], FFN [16, 40, 7, 24], rank-12 embedding, one pooled exit), d = 32:
    every layer takes the fused kernel (``fused_layers=False`` runs the same weights per op)."""
    return make_tiny_model(seed, weight_std=0.6, attention_head_size=32, **overrides)


def _packed(batch):
    real = batch["attention_mask"].bool()
    return batch["input_ids"][real], batch["token_type_ids"][real], batch["attention_mask"].sum(1)


def _entropies(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return exit_entropy(torch.stack(model(**batch).exit_logits, dim=1))


@pytest.mark.parametrize("seed,pairs,exit_pooling,fused", [
    (0, False, "cls", True), (1, True, "cls", True), (2, True, "mean", True),
    (2, True, "mean", False),  # the per-op path once (its kernels have their own tests, and test_sync_budget)
])
def test_engine_matches_reference_with_mixed_exits(seed, pairs, exit_pooling, fused):
    model = _model(seed, exit_pooling=exit_pooling)
    batch = random_batch(seed, batch=24, vocab=97, max_len=33, pairs=pairs)
    entropies = _entropies(model, batch)
    middle = entropies.sort(dim=0).values[11:13]  # tau between the two middle entropies: half the rows exit
    tau = middle.mean(dim=0).tolist()
    backend = TritonBackend.from_model(model, dtype=torch.float32, fused_layers=fused)
    logits, layers = run_early_exit(backend, *_packed(batch), tau)
    ref_logits, ref_layers, _ = model.early_exit_reference(**batch, entropy_threshold=tau)
    ok = ~((entropies[:, :-1] - torch.tensor(tau[:-1])).abs() < TIE).any(dim=1)  # ties excluded
    assert ok.sum() >= 20
    assert torch.equal(layers.cpu()[ok], ref_layers[ok])
    assert {1, 4} <= set(ref_layers[ok].tolist()), "thresholds should give early and full-depth exits"
    err = (logits.cpu()[ok] - ref_logits[ok]).abs().max().item()
    print(f"max abs err engine(triton) vs early_exit_reference seed={seed}: logits {err:.2e}, exit layers equal")
    assert err <= 1e-4


def test_engine_without_threshold_equals_full_forward():
    model = _model(2)
    batch = random_batch(2, batch=7, vocab=97)
    logits, layers = run_early_exit(TritonBackend.from_model(model, dtype=torch.float32), *_packed(batch), [0.0] * 4)
    with torch.no_grad():
        expected = model(**batch).exit_logits[-1]
    assert layers.tolist() == [4] * 7
    torch.testing.assert_close(logits.cpu(), expected, atol=1e-4, rtol=0)


def test_inference_model_runs_on_triton():
    model = _model(3)
    batch = random_batch(3, batch=5, vocab=97)
    engine = CostEffEngineForSequenceClassification.from_model(model, tokenizer=None, backend="triton")
    assert engine.backend.name == "triton"
    expected_dtype = torch.float16 if CUDA else torch.float32
    assert engine.backend.weights.word_embeddings.dtype == expected_dtype
    logits = engine.generate_logits(batch, entropy_threshold=0.0)
    ref_logits, _, _ = model.early_exit_reference(**batch)
    torch.testing.assert_close(logits, ref_logits, atol=5e-2 if CUDA else 1e-4, rtol=0)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "per-op"])
def test_exit_logits_and_compact_match_reference(fused):
    model = _model(4)
    batch = random_batch(4, batch=9, vocab=97)
    backend = TritonBackend.from_model(model, dtype=torch.float32, fused_layers=fused)
    input_ids, token_type_ids, lengths = _packed(batch)
    packed = PackedBatch.from_lengths(lengths, backend.device, row_ids=torch.arange(9, device=DEVICE) * 2)
    hidden, features = backend.layer(0, backend.embed(input_ids.to(DEVICE), token_type_ids.to(DEVICE), packed), packed)
    assert backend.fused(0, packed) is fused
    # the fused layer ran exit 0's head (a [CLS] exit without pooler) in the same launch; per-op leaves it to exit_head
    assert (features.logits is not None) if fused else features is None
    logits, entropy = backend.exit_logits(0, hidden, packed, features)
    head = backend.weights.exits[0]
    ref_logits, ref_entropy, _ = reference.exit_head(hidden, packed.cls_index, head.classifier_weight,
                                                     head.classifier_bias, head.pooler_weight, head.pooler_bias)
    assert logits.shape == (9, 3) and logits.dtype == entropy.dtype == torch.float32
    torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(entropy, ref_entropy, atol=1e-4, rtol=0)
    keep = (entropy >= entropy.median()).cpu()  # on the host, as the engine passes it
    assert 0 < int(keep.sum()) < 9
    new_hidden, new_batch = backend.compact(hidden, packed, keep)
    ref_hidden, ref_cu_seqlens, ref_row_ids = reference.compact_tokens(
        hidden, packed.cu_seqlens, packed.row_ids, keep.to(DEVICE)
    )
    assert torch.equal(new_hidden, ref_hidden)
    assert torch.equal(new_batch.cu_seqlens, ref_cu_seqlens) and torch.equal(new_batch.row_ids, ref_row_ids)
    assert new_batch.lengths.device.type == "cpu" and torch.equal(new_batch.lengths, lengths[keep])


def test_backend_names():
    assert select_backend("triton")[0] == "triton"
    if CUDA:
        assert select_backend("auto")[0] == "triton"
    expected = "native" if costeff_fast.native.available() else "torch"
    assert build_backend(_model(), "auto", device="cpu").name == expected


@pytest.mark.skipif(CUDA, reason="checks the CPU-only error")
def test_triton_without_cuda_or_interpreter_raises(monkeypatch):
    monkeypatch.setattr(costeff_fast.kernels.utils, "_INTERPRETED", False)
    with pytest.raises(RuntimeError, match="needs a CUDA GPU.*TRITON_INTERPRET=1"):
        build_backend(_model(), "triton")


def test_unsupported_head_size_raises():
    with pytest.raises(ValueError, match="attention_head_size in"):
        TritonBackend.from_model(make_tiny_model(attention_head_size=8))


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_engine_on_gpu(dtype):
    """COST-EFF 8x widths (768 hidden, 2 heads of 64, FFN 256), 4 layers: half storage vs the fp32 reference."""
    model = make_tiny_model(
        5, weight_std=0.05, hidden_size=768, num_attention_heads=2, attention_head_size=64, intermediate_size=256,
        embedding_rank=128, vocab_size=1000, max_position_embeddings=128, exit_pooler=[False, False, False, True],
    )
    batch = random_batch(5, batch=32, vocab=1000, max_len=128)
    logits, layers = run_early_exit(TritonBackend.from_model(model, dtype=dtype), *_packed(batch), [0.0] * 4)
    with torch.no_grad():
        expected = model(**batch).exit_logits[-1]
    assert layers.tolist() == [4] * 32
    torch.testing.assert_close(logits.cpu(), expected, atol=5e-2 if dtype == torch.float16 else 1.5e-1, rtol=0)


def test_kernels_compile_for_cuda_targets(tmp_path):
    """Every launch at the rt-standard widths (bench/gpu_compile.py --quick) compiles for sm_90 without register
    spills, within the SM's registers and shared memory (the script's own check), and every kernel is among them."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    out = tmp_path / "compile.json"
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_compile.py"), "--quick", "--out", str(out)],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["problems"] == [] and all(r["stack_bytes"] == 0 for r in report["records"])
    assert {r["kernel"] for r in report["records"]} == {
        "_linear_kernel", "_linear_residual_layernorm_kernel", "_varlen_attention_kernel", "_exit_head_kernel",
        "_compact_plan_kernel", "_gather_spans_kernel", "_encoder_layer_exit_kernel"}
    # the narrow attention tiles were compiled: rows of 16, 32 and 128 tokens give three configurations
    tiles = {(r["constexprs"]["BLOCK_M"], r["num_warps"]) for r in report["records"]
             if r["kernel"] == "_varlen_attention_kernel"}
    assert len(tiles) == 3, tiles


@pytest.mark.skipif(not CUDA, reason="host and device tensors only differ on a GPU")
def test_streaming_on_the_gpu_gives_each_row_the_batch_call_answer():
    """stream_early_exit with the model on CUDA and the chunks on the host: every row's exit layer and logits equal
    run_early_exit's on the whole batch (a tensor the stream left on the wrong device raises instead)."""
    from costeff_fast.engine import stream_early_exit

    model = _model(4)
    batch = random_batch(4, batch=23, vocab=97)
    entropies = _entropies(model, batch)  # [23, L]
    ordered = entropies.sort(dim=0).values
    # each threshold in the widest gap between two rows' entropies, among the middle ones, so rows leave at every
    # exit and none sits near a threshold, where fp16 could tip it either way (the last exit answers regardless)
    gaps = ordered[5:19] - ordered[4:18]
    widest = gaps.argmax(dim=0) + 4
    tau = ((ordered[widest, range(4)] + ordered[widest + 1, range(4)]) / 2).tolist()
    clear = ~((entropies[:, :-1] - torch.tensor(tau[:-1])).abs() < 5e-3).any(dim=1)
    assert clear.sum() >= 12
    backend = TritonBackend.from_model(model)
    input_ids, token_type_ids, lengths = _packed(batch)
    expected_logits, expected_layers = run_early_exit(backend, input_ids, token_type_ids, lengths, tau)
    starts = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    chunks = [(input_ids[starts[i]:starts[min(i + 5, 23)]], token_type_ids[starts[i]:starts[min(i + 5, 23)]],
               lengths[i:i + 5]) for i in range(0, 23, 5)]
    seen = torch.zeros(23, dtype=torch.bool)
    for row_ids, logits, layer in stream_early_exit(backend, chunks, 4, tau):
        assert logits.device.type == "cpu" and row_ids.device.type == "cpu"
        keep = clear[row_ids]
        assert (expected_layers[row_ids].cpu()[keep] == layer).all()
        torch.testing.assert_close(logits[keep], expected_logits[row_ids].cpu()[keep], atol=5e-2, rtol=0)
        seen[row_ids] = True
    assert seen.all() and len(set(expected_layers.tolist())) >= 3  # rows left at several exits

"""The engine on the triton backend against the per-sample reference; backend selection and errors.

On a CPU-only machine the kernels run through the Triton interpreter in fp32; GPU-only tests skip.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

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

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
TIE = 1e-5


def _model(seed: int = 0, **overrides):
    """conftest's tiny model (heads [2, 1, 3, 2], FFN [16, 40, 7, 24], rank-12 embedding, one pooled exit), d = 16."""
    return make_tiny_model(seed, weight_std=0.6, attention_head_size=16, **overrides)


def _packed(batch):
    real = batch["attention_mask"].bool()
    return batch["input_ids"][real], batch["token_type_ids"][real], batch["attention_mask"].sum(1)


def _entropies(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return exit_entropy(torch.stack(model(**batch).exit_logits, dim=1))


@pytest.mark.parametrize("seed,pairs,exit_pooling", [(0, False, "cls"), (1, True, "cls"), (2, True, "mean")])
def test_engine_matches_reference_with_mixed_exits(seed, pairs, exit_pooling):
    model = _model(seed, exit_pooling=exit_pooling)
    batch = random_batch(seed, batch=24, vocab=97, max_len=33, pairs=pairs)
    entropies = _entropies(model, batch)
    middle = entropies.sort(dim=0).values[11:13]  # tau between the two middle entropies: half the rows exit
    tau = middle.mean(dim=0).tolist()
    backend = TritonBackend.from_model(model, dtype=torch.float32)
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


def test_exit_logits_and_compact_match_reference():
    model = _model(4)
    batch = random_batch(4, batch=9, vocab=97)
    backend = TritonBackend.from_model(model, dtype=torch.float32)
    input_ids, token_type_ids, lengths = _packed(batch)
    packed = PackedBatch.from_lengths(lengths, backend.device, row_ids=torch.arange(9, device=DEVICE) * 2)
    hidden, features = backend.layer(0, backend.embed(input_ids.to(DEVICE), token_type_ids.to(DEVICE), packed), packed)
    assert features is None
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


COMPILE_SCRIPT = textwrap.dedent(
    r"""
    # Run every launcher on CPU tensors of GPU shapes with JITFunction.run replaced by an ahead-of-time compile
    # for sm_80 and sm_90: the real launch configs must compile without register spills (no GPU needed: ptxas
    # and cuobjdump ship with triton). Prints one line per compiled kernel.
    import os, re, subprocess, tempfile, torch, triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction
    from costeff_fast import kernels

    POINTER = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32", torch.int32: "*i32",
               torch.int64: "*i64", torch.bool: "*i1"}
    compiled = []
    CUOBJDUMP = os.path.join(triton.__path__[0], "backends", "nvidia", "bin", "cuobjdump")

    def compile_instead_of_launch(self, *args, grid, warmup, **kwargs):
        options = {key: kwargs.pop(key) for key in ("num_warps", "num_stages") if key in kwargs}
        bound = dict(zip(self.arg_names, args), **kwargs)
        signature, constexprs = {}, {}
        for param in self.params:
            value = bound[param.name]
            if param.is_constexpr:
                signature[param.name], constexprs[param.name] = "constexpr", value
            elif isinstance(value, torch.Tensor):
                signature[param.name] = POINTER[value.dtype]
            else:
                signature[param.name] = "fp32" if isinstance(value, float) else "i32"
        for arch in (80, 90):
            kernel = triton.compile(ASTSource(self, signature, constexprs), target=GPUTarget("cuda", arch, 32),
                                    options=options)
            with tempfile.NamedTemporaryFile("wb", suffix=".cubin") as cubin:
                cubin.write(kernel.asm["cubin"])
                cubin.flush()
                usage = subprocess.run([CUOBJDUMP, "-res-usage", cubin.name], capture_output=True, text=True).stdout
            registers, stack = re.search(r"REG:(\d+)", usage).group(1), re.search(r"STACK:(\d+)", usage).group(1)
            print(f"{self.__name__} sm_{arch} {constexprs} {options}: {registers} registers, {stack} bytes stack")
            compiled.append(self.__name__ if stack == "0" else "spills:" + self.__name__)

    JITFunction.run = compile_instead_of_launch
    h, T, B = 768, 8192, 64  # 64 rows of 128 tokens: the large-M GEMM config
    cu = torch.arange(0, T + 1, T // B)
    for dtype in (torch.float16, torch.bfloat16):
        x = torch.zeros(T, h, dtype=dtype)
        vec = torch.zeros(h, dtype=dtype)
        kernels.linear(x, torch.zeros(h, 3 * 128, dtype=dtype), torch.zeros(3 * 128, dtype=dtype))
        kernels.linear(x[:256], torch.zeros(h, 3 * 128, dtype=dtype), torch.zeros(3 * 128, dtype=dtype))
        kernels.linear(x, torch.zeros(h, 256, dtype=dtype), torch.zeros(256, dtype=dtype), gelu=True)
        kernels.linear_residual_layernorm(torch.zeros(T, 256, dtype=dtype), torch.zeros(256, h, dtype=dtype), vec, x,
                                          vec, vec, 1e-12)
        kernels.varlen_attention(torch.zeros(T, 3 * 128, dtype=dtype), cu, T // B, 2, 64)
        kernels.exit_head(x, cu[:-1], torch.zeros(h, 2, dtype=dtype), torch.zeros(2, dtype=dtype),
                          torch.zeros(h, h, dtype=dtype), vec, 0.3)
        kernels.exit_head(x, cu[:-1], torch.zeros(h, 2, dtype=dtype), torch.zeros(2, dtype=dtype))
    keep = torch.arange(B) % 2 == 0
    kernels.compact_tokens(x, cu, torch.arange(B), keep, B // 2, T // 2, T // B)
    print("COMPILED", " ".join(compiled))
    """
)


@pytest.mark.skipif(CUDA, reason="on a GPU the other tests run the compiled kernels")
def test_kernels_compile_for_cuda_targets():
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run([sys.executable, "-c", COMPILE_SCRIPT], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    print(result.stdout)
    names = set(result.stdout.split("COMPILED")[-1].split())
    assert not any(name.startswith("spills:") for name in names), names
    assert {"_linear_kernel", "_linear_residual_layernorm_kernel", "_varlen_attention_kernel", "_exit_head_kernel",
            "_compact_plan_kernel", "_gather_spans_kernel"} <= names

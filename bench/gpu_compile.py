"""Compile every Triton launch the engine makes, ahead of time for sm_80 and sm_90, and record its resources.

No GPU is needed: the launchers of :mod:`costeff_fast.kernels` run on CPU tensors of GPU shapes with
``JITFunction.run`` replaced by ``triton.compile`` for an A100 (sm_80) and an H100/H200 (sm_90) target, so each
launch configuration the launchers choose for those shapes (tiles, ``num_warps``, ``num_stages``) is compiled as
the GPU would compile it; ``cuobjdump -res-usage`` (shipped with Triton) reads the registers per thread, the stack
(bytes spilled per thread: 0 is required) and the static shared memory of the cubin. The shapes:

* ``--quick`` (what ``tests/test_triton_backend.py`` runs in CI): the rt-standard widths (hidden 384, 2 heads of
  32, FFN 160 and 512), rows of at most 16, 32 and 128 tokens, fp16, sm_90 only, the per-op kernels and the fused
  layer (:mod:`costeff_fast.kernels.layer`);
* the default adds sm_80, bf16, hidden 768, 1, 4 and 12 heads of 16, 32, 64 and 128, the teacher's FFN (1,536
  and 3,072) and 8,192-row batches (the large GEMM tile).

Usage::

    python bench/gpu_compile.py                                  # writes bench/results/gpu-compile.json
    python bench/gpu_compile.py --quick --out work/compile.json

Each record: ``kernel``, ``arch``, ``dtype``, ``shape`` (what was launched), ``constexprs``, ``num_warps``,
``num_stages``, ``registers``, ``stack_bytes``, ``shared_bytes``. Limits to hold them against: 255 registers per
thread, 65,536 per SM (so ``registers * 32 * num_warps`` must fit for one block to run), 227 KB of shared memory
per block on sm_90 and 163 KB on sm_80 (NVIDIA CUDA C++ Programming Guide, "Compute Capabilities" table).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # compile for the GPU, not the interpreter
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from costeff_fast import kernels  # noqa: E402
from costeff_fast.kernels.attention import HEAD_SIZES  # noqa: E402
from costeff_fast.kernels.layer import FUSED_HEAD_SIZES, MAX_FUSED_FFN, MAX_FUSED_HIDDEN  # noqa: E402
from costeff_fast.packing import PackedExit, PackedLayer  # noqa: E402

POINTER = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32", torch.int32: "*i32",
           torch.int64: "*i64", torch.bool: "*i1"}
CUOBJDUMP = Path(triton.__path__[0]) / "backends" / "nvidia" / "bin" / "cuobjdump"
ARCHS = (80, 90)
#: registers per SM (sm_80 and sm_90)
SM_REGISTERS = 65_536
#: shared memory one block may use, bytes (opt-in maximum)
SM_SHARED = {80: 163 * 1024, 90: 227 * 1024}


class Compiler:
    """Stands in for ``JITFunction.run``: compiles the launch for every arch and records it (once per config)."""

    def __init__(self, archs=ARCHS):
        self.archs = archs
        self.records: list[dict] = []
        self.shape = ""
        self._seen: set = set()

    def __call__(self, function: JITFunction, *args, grid, warmup, **kwargs):
        options = {key: kwargs.pop(key) for key in ("num_warps", "num_stages") if key in kwargs}
        bound = dict(zip(function.arg_names, args), **kwargs)
        signature, constexprs, dtype = {}, {}, None
        for param in function.params:
            value = bound[param.name]
            if param.is_constexpr:
                signature[param.name], constexprs[param.name] = "constexpr", value
            elif isinstance(value, torch.Tensor):
                signature[param.name] = POINTER[value.dtype]
                dtype = dtype or (str(value.dtype).removeprefix("torch.") if value.is_floating_point() else None)
            else:
                signature[param.name] = "fp32" if isinstance(value, float) else "i32"
        key = (function.__name__, json.dumps(signature, sort_keys=True), json.dumps(constexprs, sort_keys=True),
               json.dumps(options, sort_keys=True))
        if key in self._seen:
            return
        self._seen.add(key)
        for arch in self.archs:
            compiled = triton.compile(ASTSource(function, signature, constexprs), target=GPUTarget("cuda", arch, 32),
                                      options=options)
            self.records.append({"kernel": function.__name__, "arch": f"sm_{arch}", "dtype": dtype,
                                 "shape": self.shape, "constexprs": constexprs, **options, **_usage(compiled)})


def _usage(compiled) -> dict:
    with tempfile.NamedTemporaryFile("wb", suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        text = subprocess.run([str(CUOBJDUMP), "-res-usage", cubin.name], capture_output=True, text=True,
                              check=True).stdout
    field = {name: int(re.search(rf"{name}:(\d+)", text).group(1)) for name in ("REG", "STACK", "SHARED")}
    return {"registers": field["REG"], "stack_bytes": field["STACK"], "shared_bytes": field["SHARED"]}


def launch_all(compiler: Compiler, quick: bool) -> None:
    """Call every launcher at the shapes of the module docstring."""
    hiddens = (384,) if quick else (384, 768)
    head_sizes = (32,) if quick else HEAD_SIZES
    ffns = (160, 512) if quick else (160, 512, 1536, 3072)
    seqlens = (16, 32, 128)
    dtypes = (torch.float16,) if quick else (torch.float16, torch.bfloat16)
    for dtype in dtypes:
        for hidden in hiddens:
            vec = torch.zeros(hidden, dtype=dtype)
            for rows in ((256,) if quick else (256, 8192)):
                x = torch.zeros(rows, hidden, dtype=dtype)
                for head_size in head_sizes:
                    for heads in (2,) if quick else (1, 4, 12):
                        width = heads * head_size
                        compiler.shape = f"QKV GEMM: {rows} x {hidden} @ {hidden} x {3 * width}"
                        kernels.linear(x, torch.zeros(hidden, 3 * width, dtype=dtype), torch.zeros(3 * width, dtype=dtype))
                        compiler.shape = f"W_O GEMM + residual + LN: {rows} x {width} @ {width} x {hidden}"
                        kernels.linear_residual_layernorm(torch.zeros(rows, width, dtype=dtype),
                                                          torch.zeros(width, hidden, dtype=dtype), vec, x, vec, vec,
                                                          1e-12)
                        for seqlen in seqlens:
                            cu = torch.arange(0, rows + 1, seqlen) if rows % seqlen == 0 else torch.tensor([0, rows])
                            compiler.shape = f"attention: {len(cu) - 1} rows of {seqlen} tokens, {heads} x {head_size}"
                            kernels.varlen_attention(torch.zeros(rows, 3 * width, dtype=dtype), cu, seqlen, heads,
                                                     head_size)
                for ffn in ffns:
                    compiler.shape = f"W_1 GEMM + GELU: {rows} x {hidden} @ {hidden} x {ffn}"
                    kernels.linear(x, torch.zeros(hidden, ffn, dtype=dtype), torch.zeros(ffn, dtype=dtype), gelu=True)
                    compiler.shape = f"W_2 GEMM + residual + LN: {rows} x {ffn} @ {ffn} x {hidden}"
                    kernels.linear_residual_layernorm(torch.zeros(rows, ffn, dtype=dtype),
                                                      torch.zeros(ffn, hidden, dtype=dtype), vec, x, vec, vec, 1e-12)
            for head_size in (h for h in head_sizes if hidden <= MAX_FUSED_HIDDEN and h in FUSED_HEAD_SIZES):
                for heads in (2,) if quick else (1, 2, 4):
                    for ffn in (f for f in ffns if f <= MAX_FUSED_FFN):
                        layer = _zero_layer(hidden, heads, head_size, ffn, dtype)
                        for seqlen in seqlens:
                            cu = torch.arange(0, 256 + 1, seqlen)
                            compiler.shape = (f"fused layer + exit: {len(cu) - 1} rows of {seqlen} tokens, hidden "
                                              f"{hidden}, {heads} x {head_size}, FFN {ffn}")
                            kernels.encoder_layer_exit(torch.zeros(256, hidden, dtype=dtype), cu, seqlen, layer, 1e-12,
                                                       PackedExit("mean", None, None, torch.zeros(hidden, 2, dtype=dtype),
                                                                  torch.zeros(2, dtype=dtype)))
            cu = torch.arange(0, 257, 32)
            x = torch.zeros(256, hidden, dtype=dtype)
            compiler.shape = f"exit head with pooler: 8 rows, hidden {hidden}"
            kernels.exit_head(x, cu[:-1], torch.zeros(hidden, 2, dtype=dtype), torch.zeros(2, dtype=dtype),
                              torch.zeros(hidden, hidden, dtype=dtype), vec, 0.3)
            compiler.shape = f"exit head: 8 rows, hidden {hidden}"
            kernels.exit_head(x, cu[:-1], torch.zeros(hidden, 2, dtype=dtype), torch.zeros(2, dtype=dtype))
            compiler.shape = f"compaction: 8 rows of 32 tokens, hidden {hidden}, keep 4"
            kernels.compact_tokens(x, cu, torch.arange(8), torch.arange(8) % 2 == 0, 4, 128, 32)


def _zero_layer(hidden: int, heads: int, head_size: int, ffn: int, dtype) -> PackedLayer:
    """A :class:`PackedLayer` of zeros at these widths (only shapes and dtypes matter to the compiler)."""
    width = heads * head_size
    z = lambda *shape: torch.zeros(*shape, dtype=dtype)  # noqa: E731
    return PackedLayer(heads, head_size, z(hidden, 3 * width), z(3 * width), z(width, hidden), z(hidden), z(hidden),
                       z(hidden), z(hidden, ffn), z(ffn), z(ffn, hidden), z(hidden), z(hidden), z(hidden))


def problems(records: list[dict]) -> list[str]:
    """Spills, or more registers or shared memory than one block of the config can get."""
    found = []
    for r in records:
        arch = int(r["arch"].removeprefix("sm_"))
        name = f"{r['kernel']} {r['arch']} {r['dtype']} {r['constexprs']} warps {r.get('num_warps')} ({r['shape']})"
        if r["stack_bytes"]:
            found.append(f"{name}: spills {r['stack_bytes']} bytes per thread")
        if r["registers"] * 32 * r.get("num_warps", 4) > SM_REGISTERS:
            found.append(f"{name}: {r['registers']} registers x {32 * r.get('num_warps', 4)} threads > {SM_REGISTERS}")
        if r["shared_bytes"] > SM_SHARED[arch]:
            found.append(f"{name}: {r['shared_bytes']} bytes of shared memory > {SM_SHARED[arch]}")
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the rt-standard widths only (what CI compiles)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu-compile.json")
    args = parser.parse_args(argv)
    compiler = Compiler((90,) if args.quick else ARCHS)
    original = JITFunction.run
    JITFunction.run = lambda self, *a, **k: compiler(self, *a, **k)
    try:
        launch_all(compiler, args.quick)
    finally:
        JITFunction.run = original
    found = problems(compiler.records)
    result = {"triton": triton.__version__, "torch": torch.__version__, "machine": platform.machine(),
              "quick": args.quick, "configs": len(compiler.records), "problems": found, "records": compiler.records}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    kernels_compiled = sorted({r["kernel"] for r in compiler.records})
    print(f"compiled {len(compiler.records)} configurations of {', '.join(kernels_compiled)}; "
          f"{len(found)} problems; wrote {args.out}")
    for line in found:
        print("PROBLEM", line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())

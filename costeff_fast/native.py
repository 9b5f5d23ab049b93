"""Native CPU kernels from ``csrc/``: built with ninja at first use and cached, with a pure-torch fallback.

The C++ sources are compiled by ``torch.utils.cpp_extension.load`` into ``$TORCH_EXTENSIONS_DIR/<name>``
(default ``~/.cache/torch_extensions``; the name carries a hash of the CPU flags, as the build uses
``-march=native``) on first use and reloaded from there afterwards (the first build takes about 15 s; later
loads about 0.1 s). They register ops under ``torch.ops.costeff_native``. When the build is impossible (no
compiler, no ninja, sources not shipped) one warning is logged and :func:`available` returns False; the
``auto`` backend then picks ``torch``. Set ``COSTEFF_FAST_NATIVE=0`` to skip the kernels altogether.

A leaf module: it imports only torch. Every wrapper takes the arguments of its reference in
:mod:`costeff_fast.reference` in the same order (flash-attention's: ``qkv``, ``cu_seqlens``, ``max_seqlen``, ...)
and is tested against it.

Only kernels that beat their torch counterpart by >= 1.2x on their own operation are kept (measured by
``bench/run_cpu.py`` and ``bench/test_cpu_kernels.py``, figures in ``bench/results/cpu.json``): varlen
attention, bias + residual + LayerNorm, embedding + LayerNorm, compaction, span mean, the exit decision
(entropy below the threshold) and the tiled encoder layer built from them (which also returns its rows' token
means for mean-pooling exits, so the native backend calls only the embedding, the layer, the exit decision and
the compaction; the others are its parts and are tested and timed alone). A fused bias + GELU
did not (about 1.0x against ``addmm`` + in-place ``gelu_``) and was removed.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from functools import cache
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

KERNELS = (
    "varlen_attention.cpp", "residual_layernorm.cpp", "embedding_layernorm.cpp", "compact_tokens.cpp",
    "segment_mean.cpp", "encoder_layer.cpp", "exit.cpp",
)
UNITY_SOURCE = "all_kernels.cpp"  # includes every kernel file: one translation unit builds ~3x faster
DISABLE_ENV = "COSTEFF_FAST_NATIVE"
TILE_TOKENS = 256  # tokens per tile of the native encoder layer (its activations then stay in L2)


def _find_csrc() -> Path:
    """The C++ sources: ``costeff_fast/csrc/`` of an installed wheel or sdist first, else the checkout's ``csrc/``.

    setup.py ships the top-level ``csrc/`` as the package data ``costeff_fast.csrc``; an editable install or a
    checkout on ``PYTHONPATH`` has no such folder and uses ``csrc/`` beside the package. With neither, the
    installed location is returned and :func:`available` reports its files as missing.
    """
    package = Path(__file__).resolve().parent
    for candidate in (package / "csrc", package.parent / "csrc"):
        if (candidate / UNITY_SOURCE).is_file():
            return candidate
    return package / "csrc"


CSRC = _find_csrc()


def _extension_name() -> str:
    """``costeff_native_<cpu tag>``: the build uses ``-march=native``, so each CPU feature set gets its own."""
    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            flags = next((line for line in info if line.startswith("flags")), "")
    except OSError:
        pass
    return "costeff_native_" + hashlib.sha1(flags.encode()).hexdigest()[:10]


def build_directory() -> Path:
    """``$TORCH_EXTENSIONS_DIR/<name>`` (default ``~/.cache/torch_extensions/<name>``), created if needed."""
    base = os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions"
    directory = Path(base) / _extension_name()
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _remove_stale_lock(directory: Path, max_age_s: float = 600.0) -> None:
    """Delete a build lock left by a killed build (torch would wait for it forever); a build takes < 2 min."""
    lock = directory / "lock"
    try:
        if time.time() - lock.stat().st_mtime > max_age_s:
            lock.unlink()
            logger.warning("costeff_fast: removed a stale native build lock %s", lock)
    except FileNotFoundError:
        pass


@cache
def available() -> bool:
    """Build (first call) or load the kernels; True when ``torch.ops.costeff_native`` is ready.

    Never raises: a failed build logs one warning naming the cause and returns False.
    """
    if os.environ.get(DISABLE_ENV, "1") == "0":
        logger.info("costeff_fast: native CPU kernels disabled by %s=0", DISABLE_ENV)
        return False
    try:
        missing = [str(CSRC / name) for name in (UNITY_SOURCE, *KERNELS) if not (CSRC / name).is_file()]
        if missing:
            raise FileNotFoundError(f"sources not found: {', '.join(missing)}")
        from torch.utils import cpp_extension

        directory = build_directory()
        _remove_stale_lock(directory)
        cpp_extension.load(
            name=_extension_name(),
            sources=[str(CSRC / UNITY_SOURCE)],
            build_directory=str(directory),
            extra_cflags=["-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"],
            extra_ldflags=["-fopenmp"],
            is_python_module=False,
            verbose=False,
        )
    except Exception as error:  # any build failure means "use the torch path"
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        logger.warning(
            "costeff_fast: native CPU kernels unavailable (%s: %s); using the pure-torch path",
            type(error).__name__, reason[:200],
        )
        return False
    return True


def varlen_attention(
    qkv: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    num_heads: int,
    head_size: int,
    softmax_scale: float | None = None,
    qkv_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Native :func:`costeff_fast.reference.varlen_attention` (same arguments), optionally adding the QKV bias.

    Args:
        qkv: ``[T, 3 * num_heads * head_size]`` fp32 contiguous CPU, columns ``[Q heads | K heads | V heads]``.
        cu_seqlens: ``[B + 1]`` int64 CPU prefix sums of the row lengths (each row >= 1 token).
        max_seqlen: the longest row (sizes the per-thread scratch buffers).
        num_heads, head_size: h and d.
        softmax_scale: default ``1 / sqrt(head_size)``.
        qkv_bias: ``[3 * num_heads * head_size]`` fp32 added to ``qkv`` on the fly (the kernel's fused
            epilogue of the QKV GEMM); None when ``qkv`` already holds it.

    Returns:
        ``[T, num_heads * head_size]`` fp32: ``softmax(Q K^T * scale) V`` per row and head.

    Raises:
        RuntimeError: wrong dtype, device, layout or lengths.
    """
    if qkv_bias is None:
        qkv_bias = qkv.new_zeros(qkv.shape[1])
    scale = 1.0 / math.sqrt(head_size) if softmax_scale is None else float(softmax_scale)
    return torch.ops.costeff_native.varlen_attention(qkv, qkv_bias, cu_seqlens, num_heads, head_size, max_seqlen, scale)


def bias_residual_layernorm_(
    x: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, norm_bias: torch.Tensor,
    eps: float,
) -> torch.Tensor:
    """In place: ``x <- LayerNorm(x + bias + residual) * weight + norm_bias`` over the last dimension.

    The epilogue of :func:`costeff_fast.reference.linear_residual_layernorm` after its GEMM ``x = a @ W``.

    Args:
        x, residual: ``[T, H]`` fp32 contiguous CPU (``x`` is typically a fresh ``torch.mm`` output).
        bias, weight, norm_bias: ``[H]`` fp32.
        eps: LayerNorm epsilon.

    Returns:
        ``x``.

    Raises:
        RuntimeError: wrong dtype, device, layout or shapes.
    """
    return torch.ops.costeff_native.bias_residual_layernorm_(x, bias, residual, weight, norm_bias, eps)


def embedding_layernorm(
    input_ids: torch.Tensor,
    token_type_ids: torch.Tensor,
    cu_seqlens: torch.Tensor,
    word: torch.Tensor,
    position: torch.Tensor,
    token_type: torch.Tensor,
    norm_weight: torch.Tensor,
    norm_bias: torch.Tensor,
    eps: float,
) -> torch.Tensor:
    """Native :func:`costeff_fast.reference.embedding_layernorm` (same arguments) in one pass per token.

    Args:
        input_ids, token_type_ids: ``[T]`` int64 CPU.
        cu_seqlens: ``[B + 1]`` int64 CPU; positions restart at 0 at every row start.
        word ``[V, H]``, position ``[P, H]``, token_type ``[types, H]``: fp32 contiguous CPU tables.
        norm_weight, norm_bias: ``[H]`` LayerNorm parameters. eps: LayerNorm epsilon.

    Returns:
        ``[T, H]`` fp32.

    Raises:
        RuntimeError: wrong dtype, device, layout or shapes, ids out of range, a row longer than P.
    """
    return torch.ops.costeff_native.embedding_layernorm(
        input_ids, token_type_ids, cu_seqlens, word, position, token_type, norm_weight, norm_bias, eps
    )


def compact_tokens(
    hidden: torch.Tensor, cu_seqlens: torch.Tensor, row_ids: torch.Tensor, keep: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Native :func:`costeff_fast.reference.compact_tokens` (same arguments and results): span copies.

    Args:
        hidden: ``[T, H]`` fp32 contiguous CPU.
        cu_seqlens: ``[B + 1]`` int64 CPU prefix sums of the row lengths. row_ids: ``[B]`` int64.
        keep: ``[B]`` bool CPU.

    Returns:
        ``hidden [T', H]``, ``cu_seqlens [B' + 1]`` and ``row_ids [B']`` of the kept rows.

    Raises:
        RuntimeError: wrong dtype, device, layout or shapes.
    """
    kept = torch.ops.costeff_native.compact_tokens(hidden, cu_seqlens, keep)
    new_cu_seqlens = torch.zeros(int(keep.sum()) + 1, dtype=cu_seqlens.dtype)
    torch.cumsum((cu_seqlens[1:] - cu_seqlens[:-1])[keep], 0, out=new_cu_seqlens[1:])
    return kept, new_cu_seqlens, row_ids[keep]


def exit_decision(logits: torch.Tensor, entropy_threshold: float) -> torch.Tensor:
    """Native :func:`costeff_fast.reference.exit_decision`: softmax entropy (nats) of every row of
    ``logits [B, C]`` fp32 CPU ``< entropy_threshold``, ``[B]`` bool, in one pass (equal up to fp32 rounding).

    Raises:
        RuntimeError: ``logits`` is not a contiguous 2-D fp32 CPU tensor with at least one label.
    """
    return torch.ops.costeff_native.exit_decision(logits, float(entropy_threshold))


def segment_mean(hidden: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Native :func:`costeff_fast.reference.segment_mean`: ``hidden [T, H]`` -> ``[B, H]`` fp32.

    Args:
        hidden: ``[T, H]`` fp32 contiguous CPU.
        cu_seqlens: ``[B + 1]`` int64 CPU prefix sums of the row lengths (each row >= 1 token).

    Raises:
        RuntimeError: wrong dtype, device, layout or lengths.
    """
    return torch.ops.costeff_native.segment_mean(hidden, cu_seqlens)


def encoder_layer(
    hidden: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    layer,
    eps: float,
    tile_tokens: int = TILE_TOKENS,
    row_mean: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Native :func:`costeff_fast.reference.encoder_layer` (same first five arguments), tile by tile in one call.

    Args:
        hidden: ``[T, H]`` fp32 contiguous CPU.
        cu_seqlens: ``[B + 1]`` int64 CPU prefix sums of the row lengths. max_seqlen: the longest row.
        layer: a :class:`~costeff_fast.packing.PackedLayer` (fp32, CPU).
        eps: LayerNorm epsilon.
        tile_tokens: rows are grouped into tiles of at most this many tokens (a longer row is a tile alone).
        row_mean: also return each row's mean output token, computed per tile while it is in cache (what an
            exit that pools by mean reads; equal to :func:`segment_mean` of the output).

    Returns:
        ``(out [T, H], means [B, H] or None)`` fp32.

    Raises:
        RuntimeError: wrong dtype, device, layout, shapes or lengths.
    """
    w = layer
    out, means = torch.ops.costeff_native.encoder_layer(
        hidden, cu_seqlens, max_seqlen, w.num_heads, w.head_size, w.qkv_weight, w.qkv_bias,
        w.attention_output_weight, w.attention_output_bias, w.attention_norm_weight, w.attention_norm_bias,
        w.intermediate_weight, w.intermediate_bias, w.output_weight, w.output_bias, w.output_norm_weight,
        w.output_norm_bias, eps, tile_tokens, row_mean,
    )
    return out, (means if row_mean else None)

"""Native CPU kernels from ``csrc/``: built with ninja at first use and cached, with a pure-torch fallback.

The C++ sources are compiled by ``torch.utils.cpp_extension.load`` into ``$TORCH_EXTENSIONS_DIR/<name>``
(default ``~/.cache/torch_extensions``; the name carries a hash of the CPU flags, as the build uses
``-march=native``) on first use and reloaded from there afterwards (the first build takes about 15 s; later
loads about 0.1 s). They register ops under ``torch.ops.costeff_native``. When the build is impossible (no
compiler, no ninja, sources not shipped) one warning is logged and :func:`available` returns False; callers
then take their plain torch path. Set ``COSTEFF_FAST_NATIVE=0`` to skip the kernels altogether.

Only kernels that beat their torch counterpart by >= 1.2x on their own operation are kept (measured by
``bench/run_cpu.py`` and ``bench/test_cpu_kernels.py``, figures in ``bench/results/cpu.json``): varlen
attention, bias + residual + LayerNorm, embedding + LayerNorm, compaction, span mean, the exit decision
(entropy below the threshold), the exit bookkeeping (output scatter + compaction) and the tiled encoder layer
built from them (which can also return its rows' token means for mean-pooling exits). A fused bias + GELU did not (about 1.0x against ``addmm`` + in-place ``gelu_``) and was
removed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from functools import cache
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

KERNELS = (
    "varlen_attention.cpp", "residual_layernorm.cpp", "embedding_layernorm.cpp", "compact_tokens.cpp",
    "segment_mean.cpp", "encoder_layer.cpp", "exit_rows.cpp",
)
UNITY_SOURCE = "all_kernels.cpp"  # includes every kernel file: one translation unit builds ~3x faster
DISABLE_ENV = "COSTEFF_FAST_NATIVE"


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
        logger.info("costeff_fast: native CPU kernels disabled by %s=0; using the pure-torch path", DISABLE_ENV)
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
    qkv: torch.Tensor, bias: torch.Tensor, cu_seqlens: torch.Tensor, num_heads: int, head_size: int, max_seqlen: int
) -> torch.Tensor:
    """Self-attention of each packed row over its own tokens, without padding; the QKV bias is added on the fly.

    Args:
        qkv: ``[T, 3 * num_heads * head_size]`` fp32 contiguous CPU, columns ``[Q heads | K heads | V heads]``,
            without bias (e.g. ``hidden @ W_qkv``).
        bias: ``[3 * num_heads * head_size]`` fp32, the QKV bias.
        cu_seqlens: ``[B + 1]`` int64 CPU prefix sums of the row lengths (each row >= 1 token).
        num_heads, head_size: h and d.
        max_seqlen: the longest row (sizes the per-thread scratch buffers).

    Returns:
        ``[T, num_heads * head_size]`` fp32: ``softmax(Q K^T / sqrt(d)) V`` per row and head.

    Raises:
        RuntimeError: wrong dtype, device, layout or lengths.
    """
    return torch.ops.costeff_native.varlen_attention(qkv, bias, cu_seqlens, num_heads, head_size, max_seqlen)


def bias_residual_layernorm_(
    x: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, norm_bias: torch.Tensor,
    eps: float,
) -> torch.Tensor:
    """In place: ``x <- LayerNorm(x + bias + residual) * weight + norm_bias`` over the last dimension.

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
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
) -> torch.Tensor:
    """BERT embedding in one pass: ``LayerNorm(word[id] + position[p] + token_type[type])`` per packed token.

    Args:
        input_ids, token_type_ids: ``[T]`` int64 CPU.
        cu_seqlens: ``[B + 1]`` int64 CPU; positions restart at 0 at every row start.
        word ``[V, H]``, position ``[P, H]``, token_type ``[types, H]``: fp32 contiguous CPU tables.
        weight, bias: ``[H]`` LayerNorm parameters. eps: LayerNorm epsilon.

    Returns:
        ``[T, H]`` fp32.

    Raises:
        RuntimeError: wrong dtype, device, layout or shapes, ids out of range, a row longer than P.
    """
    return torch.ops.costeff_native.embedding_layernorm(
        input_ids, token_type_ids, cu_seqlens, word, position, token_type, weight, bias, eps
    )


def compact_tokens(hidden: torch.Tensor, cu_seqlens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The token spans of the rows where ``keep`` is True, in order: ``[T, H]`` -> ``[T', H]``.

    Args:
        hidden: ``[T, H]`` fp32 contiguous CPU.
        cu_seqlens: ``[B + 1]`` int64 CPU prefix sums of the row lengths.
        keep: ``[B]`` bool CPU.

    Raises:
        RuntimeError: wrong dtype, device, layout or shapes.
    """
    return torch.ops.costeff_native.compact_tokens(hidden, cu_seqlens, keep)


def entropy_below(logits: torch.Tensor, tau: float) -> torch.Tensor:
    """The exit decision: softmax entropy (nats) of every row of ``logits [B, C]`` fp32 CPU ``< tau``, ``[B]`` bool.

    Equals ``costeff_fast.modeling.exit_entropy(logits) < tau`` up to fp32 rounding of the entropy.

    Raises:
        RuntimeError: ``logits`` is not a contiguous 2-D fp32 CPU tensor with at least one label.
    """
    return torch.ops.costeff_native.entropy_below(logits, float(tau))


def exit_rows(hidden: torch.Tensor, batch, logits: torch.Tensor, exits: torch.Tensor, logits_out: torch.Tensor,
              exit_layer: torch.Tensor, layer: int):
    """One layer's early-exit bookkeeping in one call: outputs of the exited rows, compaction of the rest.

    Writes ``logits[exits]`` into ``logits_out [N, C]`` and ``layer`` into ``exit_layer [N]`` at the exited
    rows' ``batch.row_ids``, and copies the surviving rows' token spans into a new packed buffer.

    Args:
        hidden: ``[T, H]`` fp32 contiguous CPU. batch: its :class:`~costeff_fast.engine.PackedBatch` (CPU).
        logits: ``[B, C]`` fp32. exits: ``[B]`` bool. logits_out, exit_layer: the caller's outputs (in place).
        layer: 1-based layer number written for the exited rows.

    Returns:
        ``(hidden [T', H], batch)`` of the survivors; the inputs themselves when no row exits (``batch`` then
        keeps its cached layout tensors).

    Raises:
        RuntimeError: wrong dtype, device, layout or shapes, or a row id outside ``logits_out``.
    """
    from .engine import PackedBatch

    out, cu_seqlens, lengths, row_ids = torch.ops.costeff_native.exit_rows(
        hidden, batch.cu_seqlens, batch.row_ids, logits, exits, logits_out, exit_layer, layer
    )
    if len(row_ids) == batch.num_rows:  # no row exited
        return hidden, batch
    return out, PackedBatch(cu_seqlens=cu_seqlens, lengths=lengths, row_ids=row_ids)


def segment_mean(hidden: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Mean of each packed row's token vectors: ``hidden [T, H]`` -> ``[B, H]`` fp32.

    Args:
        hidden: ``[T, H]`` fp32 contiguous CPU.
        cu_seqlens: ``[B + 1]`` int64 CPU prefix sums of the row lengths (each row >= 1 token).

    Raises:
        RuntimeError: wrong dtype, device, layout or lengths.
    """
    return torch.ops.costeff_native.segment_mean(hidden, cu_seqlens)


def encoder_layer(hidden: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int, layer, eps: float,
                  tile_tokens: int, row_mean: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One post-LN encoder layer on packed tokens, computed tile by tile in one native call.

    Args:
        hidden: ``[T, H]`` fp32 contiguous CPU.
        cu_seqlens: ``[B + 1]`` int64 CPU prefix sums of the row lengths. max_seqlen: the longest row.
        layer: a :class:`~costeff_fast.packing.PackedLayer` (fp32, CPU).
        eps: LayerNorm epsilon.
        tile_tokens: rows are grouped into tiles of at most this many tokens (a longer row is a tile alone).
        row_mean: also return each row's mean output token, computed per tile while it is in cache (what an
            exit that pools by mean reads; the same as :func:`segment_mean` of the output).

    Returns:
        ``(out [T, H], means [B, H] or None)`` fp32; ``out`` equals the torch path's layer.

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

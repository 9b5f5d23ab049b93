"""The GPU prediction on paper: bytes, FLOPs, launches and host waits of a batch, turned into time per layer and
sentences/s for the triton engine (today's per-op kernels, and a fused one-launch layer) and the HF fp16 sdpa
teacher on the same rows. docs/design.md (GPU prediction) prints its tables; ``bench/gpu_check.py`` puts the same
figures next to what it measures; ``bench/bench_gpu.py`` times each kernel against :func:`layer_roofline`.

    python bench/roofline.py              # the markdown block of docs/design.md (rt-standard-uniform, H100 and H200)
    python bench/roofline.py --json FILE  # every figure behind it, as JSON

No GPU, no torch needed for the model itself; the rows' lengths come from the rt validation split (the packaged
MiniLM tokenizer, 128 tokens at most: the rows the GPU check's payload carries).

**The model.** A batch is a sequence of *groups* of work, each with a host cost (launches and other calls, at
the per-call costs of a :class:`Case`) and a GPU cost (every kernel ``max(floor, FLOPs / (peak x efficiency),
bytes / (bandwidth x efficiency))``). The host runs ahead of the GPU until a blocking wait (a *sync*): a run of
groups between two syncs costs ``max(host, GPU)``, and each sync adds its own round trip. So

    batch time = sum over segments between syncs of max(host, GPU) + syncs x round trip

Work per layer follows the rows still running (early exit): from each row's exit layer when known (the check),
else from the exit-layer distribution of a run of record in expectation (the paper). The op counts of each group
(:data:`ENGINE_GROUPS`, :data:`HF_GROUPS`) are read off the code, call by call, as named in their comments.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPORT = BENCH / "results" / "rt-standard-uniform" / "report.json"

# ---------------------------------------------------------------------------------------------------------------
# Hardware (NVIDIA datasheets; SXM boards unless the name says)

#: Dense fp16/bf16 tensor-core FLOP/s and HBM bytes/s. "NVIDIA H100 Tensor Core GPU" datasheet: H100 SXM
#: 1,979 TFLOP/s fp16 with sparsity (989 dense), 3.35 TB/s HBM3; H100 NVL 835 dense, 3.9 TB/s; H100 PCIe 756,
#: 2.0 TB/s. "NVIDIA H200 Tensor Core GPU" datasheet: H200 SXM 989 dense, 4.8 TB/s HBM3e; H200 NVL 835, 4.8 TB/s.
PEAKS = {
    "H100": (989e12, 3.35e12),
    "H100 NVL": (835e12, 3.9e12),
    "H100 PCIe": (756e12, 2.0e12),
    "H200": (989e12, 4.8e12),
    "H200 NVL": (835e12, 4.8e12),
}
#: Streaming multiprocessors ("NVIDIA H100 Tensor Core GPU Architecture" whitepaper: 132 on the SXM5 board, 114 on
#: PCIe; the H200 is the same GH100 configuration as the H100 SXM5, an assumption: its datasheet gives no count).
SMS = {"H100": 132, "H100 NVL": 132, "H100 PCIe": 114, "H200": 132, "H200 NVL": 132}
#: Non-tensor fp32 FLOP/s (the datasheets: 67 TFLOP/s SXM, 60 NVL, 51 PCIe): LayerNorm, GELU, softmax on CUDA cores.
FP32_FLOPS = {"H100": 67e12, "H100 NVL": 60e12, "H100 PCIe": 51e12, "H200": 67e12, "H200 NVL": 60e12}


def peaks_for(device_name: str) -> tuple[str, float, float]:
    """``(key, FLOP/s, bytes/s)`` of the longest :data:`PEAKS` key in ``device_name`` (``H100`` if none matches)."""
    matches = [key for key in PEAKS if key.lower() in device_name.lower()]
    key = max(matches, key=len) if matches else "H100"
    return key, *PEAKS[key]


# ---------------------------------------------------------------------------------------------------------------
# The per-op layer's kernels (the five launches of TritonBackend.layer)


def layer_kernels(tokens: float, square: float, hidden: int, heads: int, head_size: int, ffn: int) -> list:
    """``(op, FLOPs, values moved)`` of each kernel of one encoder layer on ``tokens`` packed tokens whose rows'
    squared lengths sum to ``square`` (attention is ``4 n^2 A`` FLOPs for a row of ``n`` tokens, ``A = heads x
    head_size``). Values count one read of every input (weights included) and one write of every output."""
    T, A = tokens, heads * head_size
    return [
        ("QKV GEMM + bias", 2 * T * hidden * 3 * A, T * hidden + hidden * 3 * A + T * 3 * A),
        ("varlen attention", 4 * square * A, T * 3 * A + T * A),
        ("W_O GEMM + residual + LN", 2 * T * A * hidden, T * A + A * hidden + 2 * T * hidden),
        ("W_1 GEMM + GELU", 2 * T * hidden * ffn, T * hidden + hidden * ffn + T * ffn),
        ("W_2 GEMM + residual + LN", 2 * T * ffn * hidden, T * ffn + ffn * hidden + 2 * T * hidden),
    ]


def layer_roofline(lengths: Sequence[int], hidden: int, heads: int, head_size: int, ffn: int,
                   peaks: tuple[float, float] = PEAKS["H100"], bytes_per_value: int = 2) -> list[dict]:
    """FLOPs, HBM bytes, arithmetic intensity and roofline time of each kernel of one encoder layer.

    Args:
        lengths: tokens of each row (attention is per row: ``4 n^2 A`` FLOPs for a row of ``n`` tokens).
        hidden, heads, head_size, ffn: the layer's shape (``A = heads * head_size``).
        peaks: ``(FLOP/s, bytes/s)``, e.g. ``PEAKS["H200"]``.
        bytes_per_value: 2 for fp16/bf16 storage.

    Returns:
        one dict per kernel: ``op``, ``gflop``, ``mbytes`` (MB), ``flop_per_byte``, ``bound`` and ``us``
        (``max(FLOPs / peak FLOP/s, bytes / peak bandwidth)``). Bytes count one read of every input and one write
        of every output (weights included; nothing assumed to stay in L2 between kernels); FLOPs are 2 x
        multiply-adds.
    """
    flops_peak, bytes_peak = peaks
    rows = []
    for name, flops, values in layer_kernels(sum(lengths), sum(n * n for n in lengths), hidden, heads, head_size,
                                             ffn):
        moved = values * bytes_per_value
        compute_s, memory_s = flops / flops_peak, moved / bytes_peak
        rows.append({
            "op": name, "gflop": flops / 1e9, "mbytes": moved / 1e6, "flop_per_byte": flops / moved,
            "bound": "compute" if compute_s > memory_s else "memory", "us": 1e6 * max(compute_s, memory_s),
        })
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Assumptions: what the datasheets do not give


@dataclass(frozen=True)
class Case:
    """One end of the assumed costs (``fast``, ``mid``, ``slow``; :data:`CASES`).

    Host, microseconds per call: ``triton_launch`` (one Triton kernel from Python, the launcher's checks included:
    11-18 us, issue 29), ``torch_op`` (one eager aten call that launches a CUDA kernel or a copy), ``host_op``
    (an aten call that launches nothing: a view, an op on small CPU tensors, an allocation), ``module_call``
    (``nn.Module.__call__`` around HF's layers), ``sync`` (the round trip of a blocking device-to-host copy once
    the queue has drained). GPU: ``kernel_floor`` (us, the shortest kernel back to back), ``memory_efficiency``
    (fraction of HBM bandwidth a streaming kernel reaches), ``gemm_efficiency`` (fraction of the tensor peak
    cuBLAS and the per-op GEMMs reach), ``fused_efficiency`` (fraction of one SM's tensor and fp32 peaks the fused
    layer reaches: narrow GEMMs one after another in one program), ``l2_bytes_per_s`` (aggregate L2 read
    bandwidth) and ``l2_per_sm`` (one SM's L2 read bandwidth), neither on a datasheet.
    """

    name: str
    triton_launch: float
    torch_op: float
    host_op: float
    module_call: float
    sync: float
    kernel_floor: float
    memory_efficiency: float
    gemm_efficiency: float
    fused_efficiency: float
    l2_bytes_per_s: float
    l2_per_sm: float


CASES = {
    "fast": Case("fast", 11.0, 5.0, 1.5, 1.0, 8.0, 2.0, 0.8, 0.7, 0.5, 7.0e12, 120e9),
    "mid": Case("mid", 14.5, 7.5, 2.5, 2.0, 11.5, 3.0, 0.7, 0.6, 0.4, 5.5e12, 100e9),
    "slow": Case("slow", 18.0, 10.0, 3.5, 3.0, 15.0, 4.0, 0.6, 0.5, 0.3, 4.0e12, 80e9),
}

#: How docs/design.md names each field of a Case: (label, field, scale to the label's unit)
CASE_LABELS = (
    ("host: one Triton launch (us)", "triton_launch", 1),
    ("host: one torch op launching a kernel (us)", "torch_op", 1),
    ("host: one call launching nothing (view, CPU op, allocation) (us)", "host_op", 1),
    ("host: one HF module call (us)", "module_call", 1),
    ("host: one blocking wait's round trip (us)", "sync", 1),
    ("GPU: shortest kernel back to back (us)", "kernel_floor", 1),
    ("GPU: fraction of HBM bandwidth a streaming kernel reaches", "memory_efficiency", 1),
    ("GPU: fraction of the tensor peak cuBLAS / the per-op GEMMs reach", "gemm_efficiency", 1),
    ("GPU: fraction of one SM's peaks the fused layer reaches", "fused_efficiency", 1),
    ("GPU: L2 read bandwidth, all SMs (TB/s)", "l2_bytes_per_s", 1e-12),
    ("GPU: L2 read bandwidth, one SM (GB/s)", "l2_per_sm", 1e-9),
)

#: Tokens per program of the fused layer (the assumed design, issue 29 item 2): consecutive whole rows packed up to
#: 64 tokens share a program and its 64-row tile (wgmma's M); a longer row (up to 128) has a 128-row tile alone.
FUSED_GROUP = 64


# ---------------------------------------------------------------------------------------------------------------
# Models and the work of a batch


@dataclass(frozen=True)
class Layer:
    """One encoder layer's widths and the exit after it (``exit``: ``"mean"``, ``"cls"``, ``"pooler"``)."""

    hidden: int
    heads: int
    head_size: int
    ffn: int
    exit: str = "cls"
    num_labels: int = 2

    @property
    def attention_width(self) -> int:
        return self.heads * self.head_size

    @property
    def gemm_values(self) -> int:
        """Weight values of the four GEMMs (QKV, W_O, W_1, W_2)."""
        H, A, F = self.hidden, self.attention_width, self.ffn
        return H * 3 * A + A * H + 2 * H * F

    @property
    def weight_values(self) -> int:
        """Every weight value the fused layer reads: the GEMMs, biases, both LayerNorms and the exit head."""
        H, A, F, C = self.hidden, self.attention_width, self.ffn, self.num_labels
        pooler = H * H + H if self.exit == "pooler" else 0
        return self.gemm_values + 3 * A + F + 2 * H + 4 * H + pooler + H * C + C


def costeff_layers(config) -> list[Layer]:
    """The :class:`Layer` list of a ``CostEffConfig`` (or any object / dict with its fields)."""
    get = config.get if isinstance(config, dict) else lambda key, default=None: getattr(config, key, default)
    count = get("num_hidden_layers")

    def per_layer(value):
        return list(value) if isinstance(value, (list, tuple)) else [value] * count

    heads, ffn = per_layer(get("num_attention_heads")), per_layer(get("intermediate_size"))
    pooler = per_layer(get("exit_pooler", False))
    pooling = get("exit_pooling", "cls")
    return [Layer(get("hidden_size"), heads[i], get("attention_head_size"), ffn[i],
                  "pooler" if pooler[i] else pooling, get("num_labels", 2)) for i in range(count)]


@dataclass(frozen=True)
class Teacher:
    """An HF BERT classifier's shape (``BertConfig``: hidden, heads, FFN, layers)."""

    hidden: int
    heads: int
    ffn: int
    layers: int

    @classmethod
    def of(cls, config) -> "Teacher":
        return cls(config.hidden_size, config.num_attention_heads, config.intermediate_size,
                   config.num_hidden_layers)


@dataclass
class LayerWork:
    """What layer ``l`` of one batch works on: ``reach`` (probability the batch runs it at all), ``rows``,
    ``tokens``, ``square`` (sum of squared row lengths), ``groups`` (fused programs: ``(tokens, tile, square of
    padded tile lengths)`` per program, scaled by ``scale``), ``exit_some`` (probability some but not all rows
    leave here), ``exit_all`` (probability every remaining row leaves here)."""

    reach: float
    rows: float
    tokens: float
    square: float
    groups: list
    scale: float
    exit_some: float
    exit_all: float


def _pad(n: int) -> int:
    return max(16, 1 << (int(n) - 1).bit_length())


def fused_groups(lengths: Sequence[int], group: int = FUSED_GROUP) -> list[tuple[int, int, int]]:
    """Programs of the fused layer over rows of ``lengths`` in order: ``(tokens, tile rows, sum of padded
    attention tiles squared)``; rows are packed greedily up to ``group`` tokens, a longer row alone in a tile of
    ``2 x group``."""
    programs, current, square = [], 0, 0
    for n in lengths:
        if n > group:
            programs.append((n, 2 * group, _pad(n) ** 2))
            continue
        if current + n > group:
            programs.append((current, group, square))
            current, square = 0, 0
        current, square = current + n, square + _pad(n) ** 2
    if current:
        programs.append((current, group, square))
    return programs


def exact_work(lengths: Sequence[int], exit_layers: Sequence[int], num_layers: int) -> list[LayerWork]:
    """The work of each layer of one batch whose rows have ``lengths`` and left at ``exit_layers`` (1-based, as
    ``run_early_exit`` returns them); layers after the last exit are not run (``reach`` 0)."""
    work = []
    for layer in range(1, num_layers + 1):
        alive = [n for n, e in zip(lengths, exit_layers) if e >= layer]
        leaving = sum(1 for e in exit_layers if e == layer)
        exit_all = float(bool(alive) and (leaving == len(alive) or layer == num_layers))
        work.append(LayerWork(float(bool(alive)), len(alive), sum(alive), sum(n * n for n in alive),
                              fused_groups(alive), 1.0, float(0 < leaving < len(alive)), exit_all))
    return work


def expected_work(lengths: Sequence[int], exit_counts: Sequence[int]) -> list[LayerWork]:
    """The expected work of each layer when each row leaves at layer ``l`` with probability ``exit_counts[l-1] /
    sum(exit_counts)`` (a run of record's distribution), independently of its length and of the other rows."""
    total, num_layers, rows = sum(exit_counts), len(exit_counts), len(lengths)
    groups = fused_groups(lengths)
    work, alive = [], 1.0
    for layer in range(1, num_layers + 1):
        leave = exit_counts[layer - 1] / (alive * total) if alive > 0 else 1.0  # given it reached this layer
        reach = 1.0 - (1.0 - alive) ** rows  # some row is still running
        if layer == num_layers:
            exit_some, exit_all = 0.0, reach
        else:
            none_left = (1.0 - alive + alive * leave) ** rows  # every row gone by the end of this layer
            none_leaving = (1.0 - alive * leave) ** rows  # no row leaves here
            exit_all = none_left - (1.0 - alive) ** rows
            exit_some = max(0.0, reach - exit_all - (none_leaving - (1.0 - alive) ** rows))
        work.append(LayerWork(reach, rows * alive, sum(lengths) * alive, sum(n * n for n in lengths) * alive,
                              groups, alive, exit_some, exit_all))
        alive *= 1.0 - leave
    return work


# ---------------------------------------------------------------------------------------------------------------
# Op counts of each group of work, read off the code


@dataclass
class Group:
    """One group of work: host calls by kind, the kernels it launches ``(name, FLOPs, bytes)`` and whether it
    ends in a blocking wait. ``weight`` scales it (a probability)."""

    name: str
    triton: float = 0
    torch: float = 0
    host: float = 0
    modules: float = 0
    kernels: list = field(default_factory=list)
    sync: bool = False
    weight: float = 1.0
    fused_us: float = 0.0  # GPU time of a fused-layer kernel (computed by fused_layer_us), not in ``kernels``

    def host_us(self, case: Case) -> float:
        return self.weight * (self.triton * case.triton_launch + self.torch * case.torch_op
                              + self.host * case.host_op + self.modules * case.module_call)

    def gpu_us(self, case: Case, gpu: str) -> float:
        kernels = sum(kernel_us(flops, moved, gpu, case) for _, flops, moved in self.kernels)
        return self.weight * (self.fused_us + kernels)


def kernel_us(flops: float, moved: float, gpu: str, case: Case) -> float:
    """Predicted GPU time (us) of one kernel of ``flops`` FLOPs moving ``moved`` HBM bytes:
    ``max(kernel_floor, FLOPs / (peak x gemm_efficiency), bytes / (bandwidth x memory_efficiency))``."""
    flops_peak, bandwidth = PEAKS[gpu]
    return max(case.kernel_floor, 1e6 * flops / (flops_peak * case.gemm_efficiency),
               1e6 * moved / (bandwidth * case.memory_efficiency))


def measured_case(measured: dict, base: Case = CASES["mid"]) -> Case:
    """``base`` with the host costs (and kernel floor) the GPU check measured (``kernels.host_costs``: keys
    ``triton_launch_us``, ``torch_op_us``, ``host_op_us``, ``sync_us``, ``kernel_floor_us``; a missing or None
    value keeps ``base``'s)."""
    values = asdict(base)
    for key in ("triton_launch", "torch_op", "host_op", "sync", "kernel_floor"):
        if measured.get(f"{key}_us") is not None:
            values[key] = float(measured[f"{key}_us"])
    values["name"] = "measured host costs"
    return Case(**values)


def _tiny(count: int, name: str = "small") -> list:
    return [(name, 0.0, 0.0)] * count


def engine_groups(layers: Sequence[Layer], work: Sequence[LayerWork], lengths: Sequence[int],
                  path: str | Sequence[str], thresholds: Sequence[float], gpu: str, case: Case,
                  value_bytes: int = 2) -> list[Group]:
    """The groups of one ``run_early_exit`` call (``costeff_fast/engine.py``) on the triton backend.

    ``path``: one for every layer, or one per layer (the backend's rule may fuse some layers and not others):
    ``"per-op"`` (today's code: ``TritonBackend.layer``'s five launches, the exit head reading
    ``reference.exit_features``, the exit mask brought down by ``transfer.to_host``: an asynchronous copy into
    pinned memory and one event waited for, the layer's only wait) or ``"fused"`` (the assumed design of issue 29
    item 2: one launch per layer computing the layer, the row means and the exit head's entropy and mask; the
    mask's ``transfer.to_host``, write-out, compaction and the embedding as today). ``thresholds``: the engine's
    per-layer threshold (a layer before the last with 0 runs no exit head and never syncs). Nothing before the
    first layer waits, nor the last layer: ``transfer.to_device`` sends every host tensor without waiting and
    every ``repeat_interleave`` gets its ``output_size``. The inputs are on the device already (as the GPU
    check's and ``bench_gpu``'s are), so their ``to_device`` is a no-op call.
    """
    T, H = sum(lengths), layers[0].hidden
    groups = [
        # run_early_exit: logits_out and exit_layer zeros (2); PackedBatch.from_lengths: arange(row_ids) and
        # transfer.to_device's non_blocking H2D copy of cu_seqlens (2); host: len, to(long), cpu, zeros, cumsum,
        # to_device's pin_memory (a pinned buffer and a host copy)
        Group("start", torch=4, host=6, kernels=_tiny(4)),
        # TritonBackend.embed -> reference.embedding_layernorm: lengths' sub; repeat_interleave with output_size
        # (no wait): its cumsum, fill and the index_select of cu_seqlens[:-1]; arange, sub, three gathers, three
        # casts to fp32, two adds, two LayerNorm parameter casts, layer_norm, the cast to storage (18 kernels;
        # host: three slices of cu_seqlens, repeat_interleave's empty output, the ids' two no-op to_device)
        Group("embed", torch=18, host=6, kernels=_tiny(6) + [
            ("gather", 0, 4 * T * H)] * 3 + [("cast", 0, 6 * T * H)] * 3 + [("add", 0, 12 * T * H)] * 2
            + _tiny(2) + [("layer_norm", 0, 8 * T * H), ("cast", 0, 6 * T * H)]),
    ]

    def decision(index: int, torch_calls: int, weight: float) -> Group:
        # transfer.to_host(exits): a pinned empty, the async copy_ into it, torch.cuda.Event(), record, and the
        # event's synchronize (the layer's one wait); then run_early_exit's exits.any() and its bool (host)
        return Group(f"exit {index + 1}: decision", torch=torch_calls, host=5, kernels=_tiny(torch_calls),
                     sync=True, weight=weight)

    paths = [path] * len(layers) if isinstance(path, str) else list(path)
    if len(paths) != len(layers) or not set(paths) <= {"per-op", "fused"}:
        raise ValueError(f"path must be 'per-op', 'fused' or one of them per layer ({len(layers)}), got {path!r}")
    for index, (layer, w) in enumerate(zip(layers, work)):
        if w.reach <= 0:
            continue
        last = index == len(layers) - 1
        exits = last or thresholds[index] > 0
        F, C = layer.ffn, layer.num_labels
        if paths[index] == "per-op":
            kernels = [(name, flops, values * value_bytes)
                       for name, flops, values in layer_kernels(w.tokens, w.square, H, layer.heads, layer.head_size,
                                                                F)]
            # TritonBackend.layer: five launches; host: the engine's loop and batch.max_seqlen (cached)
            groups.append(Group(f"layer {index + 1}", triton=5, host=1, kernels=kernels, weight=w.reach))
            if exits and layer.exit == "mean":
                # reference.segment_mean: sub, arange, repeat_interleave with output_size (no wait): its cumsum,
                # fill and index_select; new_zeros, hidden.float(), index_add_, div; exit_features' .to(storage);
                # exit_source's arange; exit_head's zeros and its Triton launch (12 torch calls; host: two slices
                # of cu_seqlens, the no-op .to(device), repeat_interleave's empty output, lengths[:, None], the
                # exit head's two empty outputs)
                groups.append(Group(f"exit {index + 1}: row means + head", triton=1, torch=12, host=7, kernels=[
                    ("sub", 0, 0), ("arange", 0, 0), ("cumsum", 0, 0), ("fill", 0, 8 * w.tokens),
                    ("index_select", 0, 16 * w.tokens), ("zeros", 0, 4 * w.rows * H), ("cast", 0, 6 * w.tokens * H),
                    ("index_add_", 0, 4 * w.tokens * H + 8 * w.rows * H), ("div", 0, 8 * w.rows * H),
                    ("cast", 0, 6 * w.rows * H), ("arange", 0, 0), ("zeros", 0, 0),
                    ("exit head", 2 * w.rows * H * C, value_bytes * (w.rows * H + H * C))], weight=w.reach))
            elif exits:
                # [CLS] rows (batch.cls_index, a view); exit_head's zeros and launch (with a pooler: [H, H] more)
                pooler = H * H if layer.exit == "pooler" else 0
                groups.append(Group(f"exit {index + 1}: head", triton=1, torch=1, host=3, kernels=[
                    ("zeros", 0, 0), ("exit head", 2 * w.rows * (pooler + H * C),
                                      value_bytes * (w.rows * H + pooler + H * C))], weight=w.reach))
            if exits and not last:
                # engine: entropy < tau (a kernel), then the mask's transfer.to_host
                groups.append(decision(index, 2, w.reach))
        else:
            pad_square = sum(g[2] for g in w.groups) * w.scale
            groups.append(Group(f"layer {index + 1} (fused)", triton=1, host=1, weight=w.reach,
                                fused_us=fused_layer_us(layer, w, gpu, case, exits, pad_square, value_bytes)))
            if exits and not last:
                # the mask comes out of the layer's kernel: its transfer.to_host only
                groups.append(decision(index, 1, w.reach))
        if not exits:
            continue
        if last:
            # run_early_exit at the last layer: every row left answers, no mask: arange(B) on the device, then
            # scatter_exits: two gathers, two index_put_ (one fill of the scalar layer number); host: the logits'
            # no-op .to(fp32), the loop's checks; then the loop ends (no _survivors)
            groups.append(Group(f"exit {index + 1}: write-out", torch=6, host=2, kernels=_tiny(6), weight=w.reach))
            continue
        # engine._answering: nonzero on the host and transfer.to_device's H2D copy; scatter_exits: two gathers, two
        # index_put_ (one fill of the scalar layer number); host: nonzero, squeeze, pin_memory, the logits' no-op
        # .to(fp32), the loop's checks
        groups.append(Group(f"exit {index + 1}: write-out", torch=6, host=5, kernels=_tiny(6),
                            weight=w.exit_some + w.exit_all))
        if w.exit_some > 0:
            # TritonBackend.compact: keep's transfer.to_device (H2D), the plan and span-copy launches; host: ~keep,
            # sums, int(), lengths[keep], max, keep's pin_memory, four empty buffers
            survivors = w.tokens  # the kept tokens: at most the layer's own (an upper bound on the copy)
            groups.append(Group(f"exit {index + 1}: compaction", triton=2, torch=1, host=11, weight=w.exit_some,
                                kernels=_tiny(2) + [("span copy", 0, 2 * value_bytes * survivors * H)]))
        if w.exit_all > 0:
            # _survivors with none left: hidden[:0] and an empty PackedBatch.from_lengths (its cu_seqlens'
            # transfer.to_device, an H2D copy); host: ~exits, sum, int(), three [:0] slices, from_lengths' len,
            # to(long), cpu, zeros, cumsum, pin_memory
            groups.append(Group(f"exit {index + 1}: all left", torch=1, host=12, kernels=_tiny(1), weight=w.exit_all))
    return groups


def fused_layer_us(layer: Layer, w: LayerWork, gpu: str, case: Case, exits: bool, pad_square: float,
                   value_bytes: int = 2) -> float:
    """GPU time of the assumed fused layer (one program per group of rows; :data:`FUSED_GROUP`).

    Each program reads every weight of the layer (from L2 after the first program: ``l2_per_sm``, or its share
    of ``l2_bytes_per_s`` when more programs run), runs the four GEMMs on its whole tile and attention on the
    padded tiles of its rows with one SM's tensor peak x ``fused_efficiency``, then LayerNorm, GELU, softmax and
    bias adds on the SM's fp32 units at the same efficiency (not overlapped). The programs share the SMs (two or
    more resident on each), so the layer takes ``max(longest program, sum of programs / SMs)``, and never less
    than one read and one write of ``hidden`` and one read of the weights at ``memory_efficiency`` of HBM."""
    flops_peak, bandwidth = PEAKS[gpu]
    sms, fp32 = SMS[gpu], FP32_FLOPS[gpu]
    H, A, F = layer.hidden, layer.attention_width, layer.ffn
    weights = value_bytes * layer.weight_values
    count = len(w.groups) * w.scale
    if count <= 0:
        return 0.0
    l2_rate = min(case.l2_per_sm, case.l2_bytes_per_s / min(max(count, 1.0), sms))
    n_pad = pad_square / max(w.tokens, 1e-9)  # attention keys per token, padded tiles
    cuda_per_token = 16 * H + 20 * F + 2 * (3 * A + 2 * H + F) + 6 * layer.heads * n_pad + (H if exits else 0)
    times = []
    for _tokens, tile, square in w.groups:
        tensor = 2 * tile * layer.gemm_values + 4 * square * A
        compute = tensor / (flops_peak / sms * case.fused_efficiency)
        cuda = tile * cuda_per_token / (fp32 / sms * case.fused_efficiency)
        times.append(1e6 * (max(compute, weights / l2_rate) + cuda))
    programs = max(max(times), sum(times) * w.scale / sms)
    hbm = 1e6 * (2 * value_bytes * w.tokens * H + weights) / (bandwidth * case.memory_efficiency)
    return max(case.kernel_floor, programs, hbm)


def hf_groups(teacher: Teacher, lengths: Sequence[int], value_bytes: int = 2) -> list[Group]:
    """The groups of one HF ``BertForSequenceClassification`` forward (fp16, ``attn_implementation="sdpa"``,
    the batch padded to its longest row; transformers 5.x). Counts from a dispatch trace of the forward: per layer
    six linears, sdpa (and its boolean mask turned into an additive bias: two more kernels), two adds, two
    LayerNorms, GELU; two no-op dropouts and nine views; eighteen module calls."""
    B, S = len(lengths), max(lengths)
    T, H, F, heads = B * S, teacher.hidden, teacher.ffn, teacher.heads
    v = value_bytes
    layer_kernels_hf = [("Q linear", 2 * T * H * H, v * (2 * T * H + H * H))] * 3 + [
        ("sdpa", 4 * B * S * S * H, v * (4 * T * H + B * heads * S * S)), ("mask", 0, 0), ("mask", 0, 0),
        ("O linear", 2 * T * H * H, v * (2 * T * H + H * H)), ("add", 0, v * 3 * T * H),
        ("LayerNorm", 0, v * 2 * T * H),
        ("I linear", 2 * T * H * F, v * (T * H + H * F + T * F)), ("gelu", 0, v * 2 * T * F),
        ("out linear", 2 * T * F * H, v * (T * F + F * H + T * H)), ("add", 0, v * 3 * T * H),
        ("LayerNorm", 0, v * 2 * T * H)]
    groups = [
        # embeddings (gather of position ids, three lookups, two adds, LayerNorm) and the mask's all() check:
        # .item() of it is a wait; host: dropout, ten views; modules: the model, embeddings and their parts
        Group("embeddings + mask check", torch=9, host=11, modules=7, sync=True, kernels=[
            ("lookup", 0, v * 2 * T * H)] * 3 + [("add", 0, v * 3 * T * H)] * 2 + [("LayerNorm", 0, v * 2 * T * H)]
            + _tiny(3)),
        # the 4-D boolean mask: aranges, adds, comparisons, ands, an index (13 kernels, seven views)
        Group("mask", torch=13, host=7, kernels=_tiny(13)),
    ]
    for index in range(teacher.layers):
        groups.append(Group(f"layer {index + 1}", torch=14, host=11, modules=18, kernels=layer_kernels_hf))
    # pooler dense + tanh, dropout, classifier
    groups.append(Group("head", torch=3, host=1, modules=5, kernels=[
        ("pooler", 2 * B * H * H, v * (B * H + H * H)), ("tanh", 0, 0), ("classifier", 2 * B * H * 2, v * H * 2)]))
    return groups


# ---------------------------------------------------------------------------------------------------------------
# The timeline


def timeline(groups: Sequence[Group], gpu: str, case: Case) -> dict:
    """Batch time (us) of ``groups`` run in order: per segment between waits ``max(host, GPU)`` plus the wait's
    round trip; also the totals of host and GPU time and the number of waits (expected, with the weights)."""
    total = host_segment = gpu_segment = host_total = gpu_total = syncs = 0.0
    for group in groups:
        host, gpu_time = group.host_us(case), group.gpu_us(case, gpu)
        host_segment, gpu_segment = host_segment + host, gpu_segment + gpu_time
        host_total, gpu_total = host_total + host, gpu_total + gpu_time
        if group.sync:
            total += max(host_segment, gpu_segment) + group.weight * case.sync
            syncs += group.weight
            host_segment = gpu_segment = 0.0
    total += max(host_segment, gpu_segment)
    launches = sum(group.weight * (group.triton + group.torch) for group in groups)
    return {"us": total, "host_us": host_total, "gpu_us": gpu_total, "syncs": syncs, "launches": launches}


def engine_prediction(layers: Sequence[Layer], lengths: Sequence[int], work: Sequence[LayerWork],
                      path: str | Sequence[str], thresholds: Sequence[float], gpu: str, case: Case,
                      value_bytes: int = 2) -> dict:
    """One ``run_early_exit`` batch: ``ms``, ``sentences_per_s``, host and GPU totals, waits and launches; and
    ``layer_1``: the time of the first layer with its exit (``max(host, GPU)`` of its groups plus its waits)."""
    groups = engine_groups(layers, work, lengths, path, thresholds, gpu, case, value_bytes)
    result = timeline(groups, gpu, case)
    first = [g for g in groups if g.name.startswith(("layer 1", "exit 1:"))]
    layer_gpu = sum(g.gpu_us(case, gpu) for g in first if g.name.startswith("layer 1"))
    layer_host = sum(g.host_us(case) for g in first if g.name.startswith("layer 1"))
    bookkeeping = sum(g.host_us(case) for g in first if g.name.endswith(("write-out", "compaction")))
    layer_1 = {"kernels_gpu_us": layer_gpu, "kernels_host_us": layer_host,
               "with_exit_us": timeline(first, gpu, case)["us"], "write_out_compaction_host_us": bookkeeping,
               "launches": sum(g.weight * (g.triton + g.torch) for g in first),
               "syncs": sum(g.weight for g in first if g.sync)}
    return {"ms": result["us"] / 1e3, "sentences_per_s": 1e6 * len(lengths) / result["us"],
            "host_ms": result["host_us"] / 1e3, "gpu_ms": result["gpu_us"] / 1e3, "syncs": result["syncs"],
            "launches": result["launches"], "layer_1": layer_1}


def hf_prediction(teacher: Teacher, lengths: Sequence[int], gpu: str, case: Case, value_bytes: int = 2) -> dict:
    """One HF forward on ``lengths`` padded to the longest: ``ms``, ``sentences_per_s``, host and GPU totals."""
    result = timeline(hf_groups(teacher, lengths, value_bytes), gpu, case)
    return {"ms": result["us"] / 1e3, "sentences_per_s": 1e6 * len(lengths) / result["us"],
            "host_ms": result["host_us"] / 1e3, "gpu_ms": result["gpu_us"] / 1e3, "syncs": result["syncs"],
            "launches": result["launches"]}


# ---------------------------------------------------------------------------------------------------------------
# Per token (the first table of docs/design.md)


def per_token(layer: Layer, lengths: Sequence[int], teacher: Teacher, value_bytes: int = 2) -> dict:
    """FLOPs and HBM bytes per real token of one layer: the per-op kernels, the fused layer, the HF teacher (its
    padded tokens spread over the real ones: batch of all ``lengths``, padded to the longest)."""
    T, square = sum(lengths), sum(n * n for n in lengths)
    kernels = layer_kernels(T, square, layer.hidden, layer.heads, layer.head_size, layer.ffn)
    flops = sum(k[1] for k in kernels) / T
    weights = value_bytes * layer.gemm_values
    per_op_activations = value_bytes * (sum(k[2] for k in kernels) / T - layer.gemm_values / T)
    teacher_groups = hf_groups(teacher, lengths, value_bytes)
    hf_layer = next(g for g in teacher_groups if g.name == "layer 1")
    hf_weights = value_bytes * (4 * teacher.hidden ** 2 + 2 * teacher.hidden * teacher.ffn)
    return {
        "tokens": T, "rows": len(lengths), "keys_per_token": square / T,
        "flops_per_token": flops, "gemm_weight_bytes": weights,
        "per_op_bytes_per_token": per_op_activations, "fused_bytes_per_token": 2 * value_bytes * layer.hidden,
        "teacher_flops_per_token": sum(k[1] for k in hf_layer.kernels) / T,
        "teacher_bytes_per_token": (sum(k[2] for k in hf_layer.kernels) - hf_weights) / T,
        "teacher_weight_bytes": hf_weights, "teacher_padding_factor": len(lengths) * max(lengths) / T,
        "teacher_padded_length": max(lengths),
    }


# ---------------------------------------------------------------------------------------------------------------
# The paper prediction: rt-standard-uniform on the rt validation rows


def run_of_record(report_path: Path = REPORT) -> dict:
    """Widths, exit-layer counts and threshold of a run of record's ``report.json``; hidden size and the teacher
    from the packaged MiniLM-L6 it was compressed from (384 hidden, 12 heads of 32, FFN 1536, 6 layers; the
    report's teacher encoder parameter count, 10,646,784, is that shape's)."""
    report = json.loads(Path(report_path).read_text())
    widths, chosen = report["widths"], report["calibration"]["chosen"]
    config = {"hidden_size": 384, "num_hidden_layers": len(widths["num_attention_heads"]),
              "num_attention_heads": widths["num_attention_heads"],
              "attention_head_size": widths["attention_head_size"],
              "intermediate_size": widths["intermediate_size"], "exit_pooling": widths["exit_pooling"],
              "num_labels": 2}
    return {"name": Path(report_path).parent.name, "config": config, "exit_layer_counts": chosen["exit_layer_counts"],
            "entropy_threshold": chosen["entropy_threshold"], "mean_exit_layer": chosen["mean_exit_layer"],
            "accuracy": chosen["accuracy"], "teacher": Teacher(384, 12, 1536, 6),
            "teacher_encoder_parameters": report["parameters"]["teacher"]["encoder"]}


def rt_validation_lengths(max_length: int = 128) -> list[int]:
    """Tokens of each rt validation row (costeff_fast.data order, the packaged MiniLM tokenizer, truncated to
    ``max_length``): the GPU check's ``real`` rows."""
    sys.path.insert(0, str(BENCH))
    from workloads import rt_split, tokenizer

    return [len(ids) for ids in tokenizer()(list(rt_split()[0]), truncation=True, max_length=max_length)["input_ids"]]


def cycle(rows: Sequence, count: int) -> list:
    """The first ``count`` of ``rows`` repeated as often as needed (as ``bench_gpu.cycle``)."""
    return [rows[index % len(rows)] for index in range(count)]


BATCHES = (32, 64, 128, 256, 1024, 2048)  # the check's grid is 32-256; the larger ones find where 5x starts


def prediction(lengths: Sequence[int], record: dict, gpus: Sequence[str] = ("H100", "H200"),
               batches: Sequence[int] = BATCHES, full_length: int = 128) -> dict:
    """Every figure of the paper prediction: per token, per layer and per batch, for each GPU and case."""
    layers = costeff_layers(record["config"])
    teacher, counts = record["teacher"], record["exit_layer_counts"]
    thresholds = [record["entropy_threshold"]] * len(layers)
    no_exit = [0.0] * len(layers)
    sets = {f"real {b}": cycle(lengths, b) for b in batches}
    sets[f"{full_length} x 256"] = [full_length] * 256
    out = {"run": record["name"], "per_token": per_token(layers[0], lengths, teacher), "gpus": {}}
    for gpu in gpus:
        per_gpu = {}
        for set_name, rows in sets.items():
            work = expected_work(rows, counts)
            full = expected_work(rows, [0] * (len(layers) - 1) + [1])
            cell = {"tokens": sum(rows), "padded_tokens": len(rows) * max(rows)}
            for case_name, case in CASES.items():
                per_op = engine_prediction(layers, rows, work, "per-op", thresholds, gpu, case)
                fused = engine_prediction(layers, rows, work, "fused", thresholds, gpu, case)
                per_op_full = engine_prediction(layers, rows, full, "per-op", no_exit, gpu, case)
                hf = hf_prediction(teacher, rows, gpu, case)
                cell[case_name] = {"per_op": per_op, "fused": fused, "per_op_no_exit": per_op_full, "hf": hf,
                                   "per_op_vs_hf": hf["ms"] / per_op["ms"], "fused_vs_hf": hf["ms"] / fused["ms"]}
            per_gpu[set_name] = cell
        out["gpus"][gpu] = per_gpu
    return out


def _span(a: float, b: float) -> str:
    return f"{min(a, b):.2f} - {max(a, b):.2f}"


def _fmt(x: float, digits: int = 0) -> str:
    return f"{x:,.{digits}f}"


def markdown(result: dict, record: dict) -> str:
    """The block docs/design.md carries between its ``roofline`` markers."""
    t = result["per_token"]
    lines = [
        f"Output of `python bench/roofline.py` ({record['name']}: hidden 384, heads "
        f"{record['config']['num_attention_heads'][0]} x {record['config']['attention_head_size']}, FFN "
        f"{record['config']['intermediate_size'][0]}, exits reading the token mean, calibrated threshold "
        f"{record['entropy_threshold']:.4f} nats, mean exit layer {record['mean_exit_layer']:.3f}; teacher "
        f"MiniLM-L6, hidden 384, 12 heads of 32, FFN 1536; {t['rows']:,} rt validation rows, "
        f"{t['tokens']:,} tokens, fp16):",
        "",
        "Assumed costs (`roofline.CASES`; the datasheets give none of them):",
        "",
        "| | fast | mid | slow |",
        "|---|---:|---:|---:|",
        *(f"| {label} | " + " | ".join(f"{getattr(CASES[c], key) * scale:g}" for c in CASES) + " |"
          for label, key, scale in CASE_LABELS),
        "",
        "| per layer, per real token | FLOPs | HBM bytes (activations) | weights (bytes, per layer) |",
        "|---|---:|---:|---:|",
        f"| COST-EFF layer, per-op kernels | {_fmt(t['flops_per_token'])} | {_fmt(t['per_op_bytes_per_token'])} | "
        f"{_fmt(t['gemm_weight_bytes'])} |",
        f"| COST-EFF layer, fused | {_fmt(t['flops_per_token'])} | {_fmt(t['fused_bytes_per_token'])} | "
        f"{_fmt(t['gemm_weight_bytes'])} (x programs, from L2) |",
        f"| MiniLM-L6 teacher layer, HF, one batch of all rows padded to {t['teacher_padded_length']} "
        f"({t['teacher_padding_factor']:.2f}x the real tokens) | {_fmt(t['teacher_flops_per_token'])} | "
        f"{_fmt(t['teacher_bytes_per_token'])} | {_fmt(t['teacher_weight_bytes'])} |",
        "",
    ]
    for gpu, cells in result["gpus"].items():
        lines += [
            f"**{gpu}** ({PEAKS[gpu][0] / 1e12:.0f} TFLOP/s, {PEAKS[gpu][1] / 1e12:.2f} TB/s, {SMS[gpu]} SMs). Layer 1 "
            "(every row present) in microseconds, mid case [fast - slow]; kernels: GPU time of the layer's own "
            "launches; in the engine: the layer with its exit, write-out and compaction, host included:",
            "",
            "| rows | tokens | per-op kernels (GPU) | per-op in the engine | launches, waits | fused kernel (GPU) | "
            "fused in the engine | launches, waits |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for set_name, cell in cells.items():
            m, f, s = cell["mid"], cell["fast"], cell["slow"]
            lines.append(
                f"| {set_name} | {cell['tokens']:,} | {_fmt(m['per_op']['layer_1']['kernels_gpu_us'])} | "
                f"{_fmt(m['per_op']['layer_1']['with_exit_us'])} [{_fmt(f['per_op']['layer_1']['with_exit_us'])} - "
                f"{_fmt(s['per_op']['layer_1']['with_exit_us'])}] | {_fmt(m['per_op']['layer_1']['launches'], 1)}, "
                f"{_fmt(m['per_op']['layer_1']['syncs'], 1)} | {_fmt(m['fused']['layer_1']['kernels_gpu_us'])} | "
                f"{_fmt(m['fused']['layer_1']['with_exit_us'])} [{_fmt(f['fused']['layer_1']['with_exit_us'])} - "
                f"{_fmt(s['fused']['layer_1']['with_exit_us'])}] | {_fmt(m['fused']['layer_1']['launches'], 1)}, "
                f"{_fmt(m['fused']['layer_1']['syncs'], 1)} |")
        real = sorted((k for k in cells if k.startswith("real")), key=lambda k: cells[k]["tokens"])
        small, big = cells[real[0]]["mid"], cells[real[-1]]["mid"]
        lines += [
            "",
            f"Of the fused layer's {_fmt(small['fused']['layer_1']['with_exit_us'])} us in the engine at "
            f"{real[0].removeprefix('real ')} rows (mid case), the write-out and compaction's host calls are "
            f"{_fmt(small['fused']['layer_1']['write_out_compaction_host_us'])} us; the per-op layer's five "
            f"launches alone cost the host {_fmt(small['per_op']['layer_1']['kernels_host_us'])} us against "
            f"{_fmt(small['per_op']['layer_1']['kernels_gpu_us'])} us of GPU work "
            f"({_fmt(big['per_op']['layer_1']['kernels_gpu_us'])} us at {cells[real[-1]]['tokens']:,} tokens).",
            "",
            f"Whole batches on the {gpu} (early exit at the calibrated threshold; ms per batch and sentences/s, mid "
            "case; the speed-up over the teacher in the mid case [the fast and the slow case], each case on both "
            "sides):",
            "",
            "| rows | HF teacher sdpa | per-op engine | per-op / HF | fused engine | fused / HF | "
            "per-op engine, no exit |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for set_name, cell in cells.items():
            m, f, s = cell["mid"], cell["fast"], cell["slow"]
            lines.append(
                f"| {set_name} | {m['hf']['ms']:.2f} ms, {_fmt(m['hf']['sentences_per_s'])}/s | "
                f"{m['per_op']['ms']:.2f} ms, {_fmt(m['per_op']['sentences_per_s'])}/s | "
                f"{m['per_op_vs_hf']:.2f}x [{_span(f['per_op_vs_hf'], s['per_op_vs_hf'])}] | "
                f"{m['fused']['ms']:.2f} ms, {_fmt(m['fused']['sentences_per_s'])}/s | "
                f"{m['fused_vs_hf']:.2f}x [{_span(f['fused_vs_hf'], s['fused_vs_hf'])}] | "
                f"{m['per_op_no_exit']['ms']:.2f} ms |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def paper(report_path: Path = REPORT) -> tuple[dict, dict]:
    """``(prediction, run of record)`` of the doc: rt-standard-uniform on every rt validation row."""
    record = run_of_record(report_path)
    return prediction(rt_validation_lengths(), record), record


def _jsonable(value):
    if isinstance(value, Teacher):
        return asdict(value)
    return str(value)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=Path, default=REPORT, help=f"run of record (default {REPORT})")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this JSON file")
    args = parser.parse_args(argv)
    result, record = paper(args.report)
    text = markdown(result, record)
    print(text, end="")
    if args.json:
        args.json.write_text(json.dumps({"record": record, "cases": {k: asdict(v) for k, v in CASES.items()},
                                         **result}, indent=1, default=_jsonable) + "\n")
    return text


if __name__ == "__main__":
    main()

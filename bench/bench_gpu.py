"""GPU benchmark: HF BERT-base (sdpa, fp16) against the triton backend at BERT-base and COST-EFF 8x widths.

Run on a machine with a CUDA GPU (one command)::

    python bench/bench_gpu.py                 # batch 32, 64, 128, 256 at 128 tokens; writes bench/results/gpu.json
    python bench/bench_gpu.py --roofline      # the per-layer roofline estimate of costeff_fast/kernels/README.md

Contenders, all fp16, random weights, every row 128 real tokens (no padding, so HF does no wasted work), full
depth (no early exit: random exits are never confident, so this measures the layers, not the exit policy):

* ``hf_bert_sdpa``: ``AutoModelForSequenceClassification`` from ``BertConfig()`` with ``attn_implementation="sdpa"``;
* ``triton_bert_base``: the same weights converted with ``CostEffForSequenceClassification.from_bert``, run by
  the engine on the triton backend (checked against the HF logits first);
* ``triton_costeff_8x``: the 8x COST-EFF shape: 12 layers, hidden 768, 2 heads of 64, FFN 256, embedding rank 128.

Each batch size times the three contenders interleaved (``--repeats`` rounds, CUDA-synchronized wall time per
batch, median reported) and prints ms/batch, sentences/s and the speed-up over HF.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results" / "gpu.json"

# Assumed H100 SXM peaks (NVIDIA datasheet): dense fp16 tensor-core FLOP/s and HBM3 bandwidth.
H100_FP16_FLOPS = 989e12
H100_HBM_BYTES_PER_S = 3.35e12


def layer_roofline(batch: int, seq: int, hidden: int, heads: int, head_size: int, ffn: int,
                   bytes_per_value: int = 2) -> list[dict]:
    """FLOPs, HBM bytes, arithmetic intensity and roofline time of each kernel of one encoder layer.

    Bytes count one read of every input and one write of every output in fp16 (weights included; nothing
    assumed to stay in L2 between kernels). FLOPs are 2 x multiply-adds. Time is
    ``max(FLOPs / peak FLOP/s, bytes / peak bandwidth)`` at the H100 peaks above.
    """
    T, A = batch * seq, heads * head_size
    ops = [  # name, FLOPs, values moved
        ("QKV GEMM + bias", 2 * T * hidden * 3 * A, T * hidden + hidden * 3 * A + T * 3 * A),
        ("varlen attention", 4 * batch * seq * seq * A, T * 3 * A + T * A),
        ("W_O GEMM + residual + LN", 2 * T * A * hidden, T * A + A * hidden + 2 * T * hidden),
        ("W_1 GEMM + GELU", 2 * T * hidden * ffn, T * hidden + hidden * ffn + T * ffn),
        ("W_2 GEMM + residual + LN", 2 * T * ffn * hidden, T * ffn + ffn * hidden + 2 * T * hidden),
    ]
    rows = []
    for name, flops, values in ops:
        moved = values * bytes_per_value
        compute_s, memory_s = flops / H100_FP16_FLOPS, moved / H100_HBM_BYTES_PER_S
        rows.append({
            "op": name, "gflop": flops / 1e9, "mbytes": moved / 1e6, "flop_per_byte": flops / moved,
            "bound": "compute" if compute_s > memory_s else "memory", "us": 1e6 * max(compute_s, memory_s),
        })
    return rows


def print_roofline(batch: int = 256, seq: int = 128) -> None:
    """Print the per-layer roofline of the 8x shape and, for scale, BERT-base, on an H100 (fp16)."""
    ridge = H100_FP16_FLOPS / H100_HBM_BYTES_PER_S
    print(f"H100 SXM assumed: {H100_FP16_FLOPS / 1e12:.0f} TFLOP/s fp16 dense, {H100_HBM_BYTES_PER_S / 1e12:.2f} TB/s "
          f"HBM -> ridge {ridge:.0f} FLOP/byte; batch {batch} x {seq} tokens")
    shapes = {"COST-EFF 8x (h=2, d=64, F=256)": (2, 64, 256), "BERT-base (h=12, d=64, F=3072)": (12, 64, 3072)}
    for label, shape in shapes.items():
        rows = layer_roofline(batch, seq, 768, *shape)
        print(f"\n{label}, one layer:")
        print(f"{'op':28s} {'GFLOP':>8s} {'MB':>8s} {'FLOP/B':>8s} {'bound':>8s} {'us':>8s}")
        for r in rows:
            print(f"{r['op']:28s} {r['gflop']:8.2f} {r['mbytes']:8.1f} {r['flop_per_byte']:8.0f} {r['bound']:>8s} "
                  f"{r['us']:8.1f}")
        gflop, mbytes, us = (sum(r[k] for r in rows) for k in ("gflop", "mbytes", "us"))
        print(f"{'layer total':28s} {gflop:8.2f} {mbytes:8.1f} {gflop * 1e3 / mbytes:8.0f} {'':>8s} {us:8.1f}"
              f"   (12 layers: {12 * us / 1e3:.2f} ms -> {batch / (12 * us * 1e-6):,.0f} sentences/s at the roofline)")


def _timed(fn) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--roofline", action="store_true", help="print the roofline estimate and exit (no GPU needed)")
    args = parser.parse_args()
    if args.roofline:
        print_roofline(max(args.batch_sizes), args.seq_len)
        return
    if not torch.cuda.is_available():
        sys.exit("bench_gpu.py needs a CUDA GPU (torch.cuda.is_available() is False); "
                 "`python bench/bench_gpu.py --roofline` prints the estimate without one")
    import triton
    from transformers import AutoModelForSequenceClassification, BertConfig

    from costeff_fast import CostEffConfig, CostEffForSequenceClassification
    from costeff_fast.backends.triton_backend import TritonBackend
    from costeff_fast.engine import run_early_exit

    torch.manual_seed(0)
    device = torch.device("cuda")
    hf_cpu = AutoModelForSequenceClassification.from_config(BertConfig(num_labels=2), attn_implementation="sdpa").eval()
    bert_base = TritonBackend.from_model(CostEffForSequenceClassification.from_bert(hf_cpu).eval(), device)
    hf = hf_cpu.to(device=device, dtype=torch.float16)
    slim = CostEffForSequenceClassification(CostEffConfig(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=2, attention_head_size=64, intermediate_size=256,
        embedding_rank=128, num_labels=2,
    )).eval()
    slim_8x = TritonBackend.from_model(slim, device)

    def inputs(batch: int):
        ids = torch.randint(1000, 30000, (batch, args.seq_len), device=device)
        ids[:, 0] = 101  # [CLS]
        return ids, torch.ones_like(ids)

    def costeff(backend, ids):
        lengths = torch.full((ids.shape[0],), ids.shape[1], dtype=torch.long)
        return run_early_exit(backend, ids.flatten(), torch.zeros_like(ids.flatten()), lengths, [0.0] * backend.num_layers)[0]

    with torch.inference_mode():
        ids, mask = inputs(32)
        check = (costeff(bert_base, ids) - hf(input_ids=ids, attention_mask=mask).logits.float()).abs().max().item()
        print(f"triton_bert_base vs HF logits, batch 32: max abs diff {check:.2e} (fp16 both)")
        contenders = {
            "hf_bert_sdpa": lambda ids, mask: hf(input_ids=ids, attention_mask=mask).logits,
            "triton_bert_base": lambda ids, mask: costeff(bert_base, ids),
            "triton_costeff_8x": lambda ids, mask: costeff(slim_8x, ids),
        }
        rows = []
        print(f"\n{'batch':>5s} {'contender':20s} {'ms/batch':>9s} {'sentences/s':>12s} {'vs HF':>6s}")
        for batch in args.batch_sizes:
            ids, mask = inputs(batch)
            for fn in contenders.values():  # warm-up: kernel compilation, allocator
                for _ in range(3):
                    fn(ids, mask)
            times = {name: [] for name in contenders}
            for _ in range(args.repeats):  # interleaved, so drifts of a shared GPU hit all contenders alike
                for name, fn in contenders.items():
                    times[name].append(_timed(lambda: fn(ids, mask)))
            hf_ms = 1e3 * statistics.median(times["hf_bert_sdpa"])
            for name, samples in times.items():
                ms = 1e3 * statistics.median(samples)
                rows.append({"batch": batch, "contender": name, "ms_per_batch": ms, "sentences_per_s": batch / ms * 1e3,
                             "speedup_vs_hf": hf_ms / ms})
                print(f"{batch:5d} {name:20s} {ms:9.2f} {batch / ms * 1e3:12,.0f} {hf_ms / ms:6.2f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "command": "python bench/bench_gpu.py " + " ".join(sys.argv[1:]),
        "gpu": torch.cuda.get_device_name(device), "torch": torch.__version__, "triton": triton.__version__,
        "python": platform.python_version(), "seq_len": args.seq_len, "repeats": args.repeats, "dtype": "float16",
        "triton_bert_base_max_abs_logit_diff_vs_hf": check, "results": rows,
    }, indent=2) + "\n")
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()

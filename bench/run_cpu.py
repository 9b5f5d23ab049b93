"""CPU benchmark of record: every contender in one process, interleaved repeats, medians; JSON + plot.

Usage (from the repository root)::

    python bench/run_cpu.py --costeff CHECKPOINT_DIR --teacher TEACHER_DIR   # throughput and accuracy
    python bench/run_cpu.py                                                 # shape-only (no accuracy)

Writes ``bench/results/cpu.json`` and ``bench/results/cpu.png`` (throughput vs rt validation accuracy per model;
a throughput chart in shape-only runs). Without ``--costeff``/``--teacher`` the teacher is the packaged MiniLM
with an untrained 2-label head, the COST-EFF model its full-width multi-exit conversion and the early-exit
threshold a synthetic per-layer median entropy: speed only, said so in the output.

Measured (all on rt validation sentences, truncated to 128 tokens, tokenization not timed unless noted):

* threads: 1 vs 2 on the teacher group; everything else runs at the faster setting for COST-EFF;
* ``torch.mm`` fp32 peak GFLOP/s in the same run (before and after; the higher);
* rt batch 64: HF teacher (sdpa, dynamic padding, inference mode), full-width multi-exit without exit,
  COST-EFF without and with early exit;
* BERT-base shapes (``BertConfig()``, random weights), real-length batch 32: HF sdpa vs ``optimize()``;
* the 8x COST-EFF shape at full depth vs HF BERT-base, batch 32, both on rows of exactly 128 tokens (joined rt
  sentences, so the padding-free engine gains nothing from padding: the ratio is the shapes' own);
* early exit (minus its embedding) vs the sum of its layer calls at the surviving rows;
* the COST-EFF layers' four GEMMs alone at a batch's token count (the ceiling of its executed-matmul rate);
* streaming scheduler vs per-batch compaction at the same threshold (tokenization timed in both);
* each native kernel against the torch op it replaces, at every thread count compared;
* peers of the teacher on the same rows (bench/peers.py): ONNX Runtime fp32 with the fused BERT graph, ORT int8
  (``quantize_dynamic`` of that graph), torch dynamic int8, and ``optimize(teacher)``; accuracy of each;
* the same COST-EFF model exported to ONNX (``costeff_fast.export``) and run by ORT at full depth, next to the
  engine at threshold 0; the engine with ``quantize="int8"`` at threshold 0 and at the calibrated threshold;
* the COST-EFF threshold sweep (0, the calibrated threshold and quantiles of the exit entropies), speed and
  accuracy per threshold, and the honest operating points: the calibrated one and the cheapest threshold at or
  above teacher - 0.01 ("within one point", or reported missing), each with its accuracy next to the teacher's;
* a busy core: HF and COST-EFF at 1 and 2 threads with and without one process spinning on a core, and each at
  its default (HF: torch's thread count; COST-EFF: ``num_threads="auto"``, costeff_fast/threads.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers  # noqa: E402
import workloads as wl  # noqa: E402

import costeff_fast  # noqa: E402
from costeff_fast import CostEffForSequenceClassification, exit_entropy, native  # noqa: E402
from costeff_fast import threads as threads_module  # noqa: E402
from costeff_fast import CostEffEngineForSequenceClassification  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--costeff", type=Path, help="trained COST-EFF checkpoint directory (calibrated threshold)")
    parser.add_argument("--teacher", type=Path, help="the fine-tuned HF teacher directory it was compressed from")
    parser.add_argument("--rows", type=int, default=512, help="rt validation rows timed in the batch-64 groups")
    parser.add_argument("--bert-rows", type=int, default=64, help="rows timed in the BERT-base groups (batch 32)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats per group (median reported)")
    parser.add_argument("--threads", default="1,2", help="thread counts to compare (default 1,2)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="output directory (default bench/results)")
    parser.add_argument("--no-peers", action="store_true", help="skip the ONNX Runtime and int8 peers")
    parser.add_argument("--no-busy-core", action="store_true", help="skip the busy-core thread measurement")
    args = parser.parse_args(argv)
    if (args.costeff is None) != (args.teacher is None):
        parser.error("pass both --costeff and --teacher (accuracy needs both), or neither (shape-only)")
    return args


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def time_group(contenders: dict, repeats: int, peak: float) -> dict:
    seconds = wl.interleaved_seconds({name: c.fn for name, c in contenders.items()}, repeats, settle=wl.SETTLE_S)
    return {name: wl.report(c, seconds[name], peak) for name, c in contenders.items()}


@torch.inference_mode()
def accuracy(predict, texts: list[str], labels: list[int], batch_size: int = 64) -> float:
    correct = 0
    for chunk, truth in zip(wl.chunks(texts, batch_size), wl.chunks(labels, batch_size)):
        correct += int((predict(chunk) == torch.tensor(truth)).sum())
    return correct / len(texts)


def measure_threads(thread_counts, contenders, repeats) -> tuple[dict, int]:
    measured = {}
    for threads in thread_counts:
        torch.set_num_threads(threads)
        seconds = wl.interleaved_seconds({name: c.fn for name, c in contenders.items()}, repeats, settle=wl.SETTLE_S)
        measured[str(threads)] = {name: c.sentences / seconds[name] for name, c in contenders.items()}
        log(f"threads={threads}: " + ", ".join(f"{k} {v:.1f} sentences/s" for k, v in measured[str(threads)].items()))
    best = max(thread_counts, key=lambda t: measured[str(t)]["costeff_early_exit"])
    torch.set_num_threads(best)
    return measured, best


@torch.inference_mode()
def kernel_speedups(repeats: int, thread_counts: list[int], best: int) -> dict:
    """``{threads: {shape: {candidate: torch_ms, native_ms, speedup}}}``, interleaved medians; leaves ``best``."""
    if not native.available():
        return {"unavailable": "native kernels could not be built (see the costeff_fast.native warning)"}
    table = {}
    candidates = {shape: wl.kernel_candidates(shape) for shape in wl.KERNEL_SHAPES}
    for threads in thread_counts:
        torch.set_num_threads(threads)
        table[str(threads)] = {}
        for shape, pairs in candidates.items():
            table[str(threads)][shape] = {}
            for name, (torch_fn, native_fn) in pairs.items():
                seconds = wl.interleaved_seconds({"torch": torch_fn, "native": native_fn}, max(repeats, 9))
                table[str(threads)][shape][name] = {
                    "torch_ms": 1e3 * seconds["torch"], "native_ms": 1e3 * seconds["native"],
                    "speedup": seconds["torch"] / seconds["native"],
                }
    torch.set_num_threads(best)
    return table


def target(name: str, measured: float, goal: float, higher_is_better: bool = True) -> dict:
    met = measured >= goal if higher_is_better else measured <= goal
    return {"name": name, "goal": goal, "measured": measured, "met": bool(met)}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    rt = results["groups"]["rt_batch64"]
    if results["accuracy"]:
        markers = "osD^v<>ph*XP8Hd"
        for index, (name, acc) in enumerate(results["accuracy"].items()):
            speed = rt[name]["sentences_per_s"]
            ax.scatter(speed, acc, s=60, marker=markers[index % len(markers)],
                       label=f"{name}: {speed:,.0f} sentences/s, accuracy {acc:.3f}")
        sweep = sorted((r for r in results.get("threshold_sweep", []) if "accuracy" in r),
                       key=lambda r: r["sentences_per_s"])
        if sweep:
            ax.plot([r["sentences_per_s"] for r in sweep], [r["accuracy"] for r in sweep], "-", color="gray", lw=1,
                    label="COST-EFF threshold sweep")
        teacher = results["accuracy"]["hf_teacher"]
        ax.axhline(teacher - 0.01, color="gray", ls=":", lw=1, label="teacher - 1 point")
        ax.legend(fontsize=6, loc="lower left")
        ax.set_xscale("log")
        ax.margins(x=0.15, y=0.25)
        ax.set_xlabel("sentences/s (rt validation, batch 64, log scale)")
        ax.set_ylabel("rt validation accuracy")
        threads = results["threads"]["best"]
        ax.set_title(f"CPU throughput vs accuracy ({threads} thread{'s' if threads > 1 else ''})")
    else:
        rows = [(f"{group}: {name}", r["sentences_per_s"]) for group, members in results["groups"].items()
                for name, r in members.items()]
        ax.barh([label for label, _ in rows], [speed for _, speed in rows])
        ax.set_xscale("log")
        ax.set_xlabel("sentences/s (log scale)")
        ax.tick_params(axis="y", labelsize=7)
        ax.set_title("shape-only run (no --costeff/--teacher): throughput, no accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cpu_model() -> str:
    """The CPU's model name as ``lscpu`` and ``/proc/cpuinfo`` give it (e.g. ``AMD EPYC``), else the architecture."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def sweep_thresholds(reference, texts: list[str], calibrated) -> list:
    """0, the calibrated threshold and the 10 %..90 % quantiles of the exit entropies (exits 1..L-1) of ``texts``."""
    with torch.inference_mode():
        entropies = torch.cat([exit_entropy(torch.stack(reference(**batch).exit_logits, dim=1))[:, :-1]
                               for batch in wl.hf_batches(texts, 64)])
    levels = torch.linspace(0.1, 0.9, 9, dtype=torch.float64)
    quantiles = [round(float(q), 4) for q in torch.quantile(entropies.flatten().double(), levels)]
    return [0.0, calibrated] + sorted(set(quantiles))


def operating_points(sweep: list[dict], teacher_accuracy: float) -> dict:
    """The calibrated row and the cheapest (fastest) row at or above ``teacher - 0.01`` (None when missing)."""
    calibrated = next(row for row in sweep if row["calibrated"])
    within = [row for row in sweep if row["accuracy"] >= teacher_accuracy - 0.01 - 1e-12]
    best = max(within, key=lambda row: row["sentences_per_s"]) if within else None
    return {"teacher_accuracy": teacher_accuracy, "calibrated": calibrated, "within_one_point": best,
            "within_one_point_missing": best is None}


_SPIN = "import time\nend = time.time() + {seconds}\nwhile time.time() < end: pass\n"


def busy_core(contenders: dict, defaults: dict, repeats: int, thread_counts: list[int], default_threads: int) -> dict:
    """sentences/s of ``contenders`` at each thread count and of ``defaults`` (the same workloads at their default
    settings, torch at ``default_threads``), all interleaved in one group (each call sets its thread count
    first), alone and with one process spinning on a core."""
    fns = {}
    for threads in thread_counts:
        for name, c in contenders.items():
            fns[(f"{threads}_threads", name)] = lambda c=c, t=threads: (torch.set_num_threads(t), c.fn())
    for name, c in defaults.items():
        fns[("default", name)] = lambda c=c: (torch.set_num_threads(default_threads), c.fn())
    sentences = {key: (contenders.get(key[1]) if key[0] != "default" else defaults[key[1]]).sentences for key in fns}
    table = {}
    for busy in (False, True):
        spinner = subprocess.Popen([sys.executable, "-c", _SPIN.format(seconds=3600)]) if busy else None
        try:
            if busy:
                time.sleep(1.5)  # the spinner is running and num_threads="auto" has seen it (threads.REFRESH_S)
            seconds = wl.interleaved_seconds(fns, repeats, settle=wl.SETTLE_S)
            for (setting, name), value in seconds.items():
                table.setdefault(f"{'busy' if busy else 'idle'}_{setting}", {})[name] = sentences[(setting, name)] / value
        finally:
            if spinner is not None:
                spinner.kill()
                spinner.wait()
    return table


def main(argv=None) -> dict:
    args = parse_args(argv)
    shape_only = args.costeff is None
    if shape_only:
        log("shape-only run: no --costeff/--teacher, so no accuracy; teacher = packaged MiniLM with an untrained head, "
            "COST-EFF = its full-width conversion, threshold = synthetic per-layer median entropy")
    default_threads = torch.get_num_threads()  # torch's own default, before this script changes it
    native.available()
    texts_all, labels_all = (list(x) for x in wl.rt_split("validation"))
    texts = texts_all[: args.rows]
    teacher, full_width, costeff, reference = wl.load_models(args.costeff, args.teacher)
    tau, tau_kind = wl.early_exit_threshold(costeff, reference, texts, trained=not shape_only)
    results = {
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
                    "native_kernels": native.available()},
        "shape_only": shape_only,
        "costeff": str(args.costeff) if args.costeff else "packaged MiniLM, full-width multi-exit (untrained exits)",
        "teacher": str(args.teacher) if args.teacher else "packaged MiniLM, untrained 2-label head",
        "entropy_threshold": {"values": tau, "kind": tau_kind},
        "rows": {"rt_batch64": len(texts), "bert_base": args.bert_rows},
    }

    log("building the rt batch-64 group")
    rt = wl.teacher_group(teacher, full_width, costeff, tau, texts)
    thread_counts = [int(t) for t in args.threads.split(",")]
    subset = {k: rt[k] for k in ("hf_teacher", "costeff_early_exit")}
    measured, best = measure_threads(thread_counts, subset, max(2, args.repeats // 2))
    results["threads"] = {"measured_sentences_per_s": measured, "best": best}
    peak_before = wl.mm_peak_gflops()
    log(f"torch.mm peak {peak_before:.1f} GFLOP/s at {best} threads")

    peer_predictors = {}
    if not args.no_peers:
        peer_contenders, peer_predictors = peers.build_peers(teacher, reference, costeff.tokenizer, tau, texts, best,
                                                             log=log)
        rt.update(peer_contenders)
        results["peers"] = {"onnxruntime": peers.onnxruntime_available()}

    groups = {}
    log("timing rt batch 64: teacher, its peers and COST-EFF")
    groups["rt_batch64"] = time_group(rt, args.repeats, peak_before)

    calibrated = tau
    sweep_taus = sweep_thresholds(reference, texts, calibrated)
    log(f"timing the COST-EFF threshold sweep: {len(sweep_taus)} thresholds")
    sweep_group = time_group({f"tau_{i}": wl.engine_contender(costeff, texts, 64, t) for i, t in enumerate(sweep_taus)},
                             args.repeats, peak_before)
    results["threshold_sweep"] = [
        {"entropy_threshold": t, "calibrated": i == 1, "sentences_per_s": sweep_group[f"tau_{i}"]["sentences_per_s"]}
        for i, t in enumerate(sweep_taus)]
    exits = costeff.generate_logits(texts, entropy_threshold=tau, return_exit_layers=True)[1]
    results["mean_exit_layer"] = float(exits.float().mean())
    tokens_per_batch = int(wl.rt_lengths(len(texts)).sum()) // -(-len(texts) // 64)
    results["costeff_layer_gemms_only"] = {
        "tokens": tokens_per_batch,
        "gflops": wl.layer_gemm_gflops(costeff.backend.weights, tokens_per_batch),
    }

    log("timing BERT-base shapes: HF sdpa vs optimize(), real-length batch 32")
    bert = wl.random_bert_base()
    fast_bert = costeff_fast.optimize(bert, num_threads=None)
    bert_texts = texts_all[: args.bert_rows]
    hf_logits = torch.cat(wl.hf_contender(bert, bert_texts, 32).fn())
    fast_logits = torch.cat([fast_bert(**batch).logits for batch in wl.hf_batches(bert_texts, 32)])
    results["optimize_agreement"] = {
        "same_predictions": bool(torch.equal(hf_logits.argmax(-1), fast_logits.argmax(-1))),
        "max_abs_logit_diff": float((hf_logits - fast_logits).abs().max()),
    }
    groups["bert_base_batch32"] = time_group({
        "hf_bert_base_sdpa": wl.hf_contender(bert, bert_texts, 32),
        "optimize_bert_base": wl.hf_contender(fast_bert, bert_texts, 32, packed=True, config=bert.config),
    }, args.repeats, peak_before)

    log("timing the 8x COST-EFF shape (full depth) vs HF BERT-base on 128-token rows, batch 32")
    long_texts = list(wl.full_length_texts(args.bert_rows))
    torch.manual_seed(0)
    eight_x = CostEffEngineForSequenceClassification.from_model(CostEffForSequenceClassification(wl.costeff_8x_config()).eval(), wl.tokenizer(),
                                     num_threads=None)
    groups["costeff_8x_vs_bert_base_128"] = time_group({
        "costeff_8x_full_depth": wl.engine_contender(eight_x, long_texts, 32, 0.0),
        "hf_bert_base_128_padded": wl.hf_contender(bert, long_texts, 32, pad_to_max=True),
    }, args.repeats, peak_before)
    del bert, fast_bert

    log("timing streaming vs per-batch compaction")
    groups["streaming_vs_per_batch"] = time_group(wl.streaming_contenders(costeff, texts, 64, tau), args.repeats,
                                                  peak_before)
    log("timing early exit against its layer calls")
    results["early_exit_overhead"] = wl.early_exit_overhead(costeff, texts, 64, tau, 3 * args.repeats)
    log("timing native kernels")
    results["native_kernels"] = kernel_speedups(args.repeats, thread_counts, best)
    peak = max(peak_before, wl.mm_peak_gflops())
    results["mm_peak_gflops"] = peak
    results["costeff_layer_gemms_only"]["fraction_of_mm_peak"] = results["costeff_layer_gemms_only"]["gflops"] / peak
    for members in groups.values():
        for report in members.values():
            report["fraction_of_mm_peak"] = report["gflops"] / peak
    results["groups"] = groups

    results["accuracy"] = None
    if not shape_only:
        log("accuracy on the whole rt validation split")
        labels = labels_all
        results["accuracy"] = {
            "hf_teacher": accuracy(lambda c: teacher(**wl.hf_batches(c, len(c))[0]).logits.argmax(-1), texts_all, labels),
            "costeff_full_width_no_exit": accuracy(lambda c: full_width.predict(c, entropy_threshold=0.0), texts_all, labels),
            "costeff_no_exit": accuracy(lambda c: costeff.predict(c, entropy_threshold=0.0), texts_all, labels),
            "costeff_early_exit": accuracy(lambda c: costeff.predict(c, entropy_threshold=tau), texts_all, labels),
        }
        for name, predict in peer_predictors.items():
            results["accuracy"][name] = accuracy(predict, texts_all, labels)
        for row in results["threshold_sweep"]:
            row["accuracy"] = accuracy(lambda c, t=row["entropy_threshold"]: costeff.predict(c, entropy_threshold=t),
                                       texts_all, labels)
        results["operating_points"] = operating_points(results["threshold_sweep"], results["accuracy"]["hf_teacher"])

    if not args.no_busy_core:
        log("timing a busy core: HF teacher and COST-EFF at each thread count, idle and with a spinning process")
        auto = CostEffEngineForSequenceClassification.from_model(reference, costeff.tokenizer, entropy_threshold=tau)  # num_threads="auto"
        auto.thread_policy = threads_module.AutoThreads(default_threads)  # ceiling: torch's default, as from_pretrained
        defaults = {"hf_teacher": rt["hf_teacher"], "costeff_early_exit": wl.engine_contender(auto, texts, 64, tau)}
        results["busy_core"] = busy_core({k: rt[k] for k in ("hf_teacher", "costeff_early_exit")}, defaults,
                                         max(2, args.repeats // 2), thread_counts, default_threads)
        results["busy_core"]["default_threads"] = default_threads
        torch.set_num_threads(best)

    speed = {name: r["sentences_per_s"] for name, r in groups["rt_batch64"].items()}
    bert_group, eight = groups["bert_base_batch32"], groups["costeff_8x_vs_bert_base_128"]
    stream = groups["streaming_vs_per_batch"]
    results["targets"] = [
        target("COST-EFF early exit vs HF teacher, rt batch 64 (x)", speed["costeff_early_exit"] / speed["hf_teacher"], 12.0),
        target("COST-EFF early exit executed-matmul GFLOP/s / torch.mm peak",
               groups["rt_batch64"]["costeff_early_exit"]["fraction_of_mm_peak"], 0.75),
        target("early exit time (minus the embedding) over the sum of its layer times at the surviving rows",
               results["early_exit_overhead"]["overhead"], 0.10, higher_is_better=False),
        target("optimize() vs HF sdpa, BERT-base real-length batch 32 (x)",
               bert_group["optimize_bert_base"]["sentences_per_s"] / bert_group["hf_bert_base_sdpa"]["sentences_per_s"], 1.5),
        target("8x shape full depth vs HF BERT-base, 128-token rows (x)",
               eight["costeff_8x_full_depth"]["sentences_per_s"] / eight["hf_bert_base_128_padded"]["sentences_per_s"], 7.0),
        target("streaming vs per-batch compaction (x)",
               stream["streaming"]["sentences_per_s"] / stream["per_batch_compaction"]["sentences_per_s"], 1.15),
    ]
    rt_speed = {name: r["sentences_per_s"] for name, r in groups["rt_batch64"].items()}
    if "ort_int8_teacher" in rt_speed:
        results["targets"] += [
            target("optimize(teacher) vs ORT int8 of the same teacher, rt batch 64 (x)",
                   rt_speed["optimize_teacher"] / rt_speed["ort_int8_teacher"], 1.5),
            target("optimize(teacher, quantize='int8') vs ORT int8 of the same teacher, rt batch 64 (x)",
                   rt_speed["optimize_int8_teacher"] / rt_speed["ort_int8_teacher"], 1.5),
            target("COST-EFF at its calibrated threshold vs ORT int8 of its teacher, rt batch 64 (x)",
                   rt_speed["costeff_early_exit"] / rt_speed["ort_int8_teacher"], 12.0),
        ]
    if "costeff_int8_early_exit" in rt_speed:
        results["targets"] += [
            target("COST-EFF int8 vs fp32 at the calibrated threshold, rt batch 64 (x)",
                   rt_speed["costeff_int8_early_exit"] / rt_speed["costeff_early_exit"], 1.5),
            target("COST-EFF int8 vs fp32 at threshold 0, rt batch 64 (x)",
                   rt_speed["costeff_int8_no_exit"] / rt_speed["costeff_no_exit"], 1.5),
        ]
        if results["accuracy"]:
            acc = results["accuracy"]
            results["targets"].append(target(
                "COST-EFF int8 accuracy below fp32 at the calibrated threshold, rt validation (points)",
                100 * (acc["costeff_early_exit"] - acc["costeff_int8_early_exit"]), 0.5, higher_is_better=False))
    if "ort_costeff_no_exit" in rt_speed:
        results["targets"].append(target(
            "engine at threshold 0 vs ORT running the same exported COST-EFF model, rt batch 64 (x)",
            rt_speed["costeff_no_exit"] / rt_speed["ort_costeff_no_exit"], 2.0))
    if "busy_core" in results:
        busy = results["busy_core"]
        results["targets"].append(target(
            "COST-EFF with a busy core: default settings (num_threads='auto') over num_threads=1 (x)",
            busy["busy_default"]["costeff_early_exit"] / busy["busy_1_threads"]["costeff_early_exit"], 1.0))
        results["targets"].append(target(
            "COST-EFF on an idle machine: default settings over the best fixed thread count (x)",
            busy["idle_default"]["costeff_early_exit"]
            / max(busy[f"idle_{t}_threads"]["costeff_early_exit"] for t in thread_counts), 0.95))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cpu.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, args.out / "cpu.png")
    for t in results["targets"]:
        log(f"{'MET ' if t['met'] else 'MISS'} {t['name']}: {t['measured']:.3f} (goal {t['goal']})")
    log(f"wrote {args.out / 'cpu.json'} and {args.out / 'cpu.png'}" + (" (shape-only)" if shape_only else ""))
    return results


if __name__ == "__main__":
    main()

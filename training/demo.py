"""The demo: a COST-EFF model from the packaged MiniLM on real `rt` data, then early-exit inference vs HF.

Every pipeline stage caches its checkpoint under the work directory, so a rerun skips what has finished.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from costeff_fast import from_pretrained
from costeff_fast.data import load_task

from .pipeline import compress
from .prediction import engine_predict, hf_predict

DEFAULT_THRESHOLDS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.45, 0.6)


def timed(fn):
    """Run ``fn()`` and return its result and the wall time in seconds."""
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def committed_quick_result() -> dict | None:
    """The committed quick-budget `rt` report (bench/results), for comparison with the demo's smaller budget."""
    path = Path(__file__).resolve().parents[1] / "bench" / "results" / "rt-quick-uniform" / "report.json"
    return json.loads(path.read_text()) if path.is_file() else None


def run_demo(work_dir: Path, *, budget: str = "demo", batch_size: int = 64, thresholds=DEFAULT_THRESHOLDS,
             seed: int = 0, teacher_timings: int = 2) -> dict:
    """Compress the packaged MiniLM on `rt` with COST-EFF, then compare batch early-exit inference with HF.

    Args:
        work_dir: stage cache, the COST-EFF checkpoint (``work_dir / "model"``) and ``demo_results.json``.
        budget: a preset of :data:`~costeff_fast.training.budget.BUDGETS` (``demo``, the shortest, is meant to
            finish within 15 minutes on CPU).
        batch_size: inference batch size for both HF and costeff_fast.
        thresholds: entropy thresholds (nats) to sweep besides the calibrated one; 0.0 = full depth.
        teacher_timings: how many times the HF teacher is timed on all rows (>= 1; the fastest counts), once
            before the sweep and the rest after it, so a machine slowing down mid-run is seen.

    Returns:
        The results dict that is also printed and written to ``work_dir / "demo_results.json"``.
    """
    if teacher_timings < 1:
        raise ValueError(f"teacher_timings must be >= 1, got {teacher_timings}")
    work_dir = Path(work_dir)
    report = compress("rt", work_dir / "model", budget=budget, work_dir=work_dir, seed=seed)
    timings = dict(report["stage_seconds"])

    started = time.time()
    splits = load_task("rt", seed=seed)
    texts = list(splits["validation"]["text"])
    labels = torch.tensor(list(splits["validation"]["label"]))
    teacher_dir = work_dir / "teacher"
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir, use_safetensors=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    model = from_pretrained(work_dir / "model")
    calibrated = report["calibration"]["chosen"]["entropy_threshold"]
    taus = sorted(set(thresholds) | {calibrated})
    # Warm up both paths once, then time them interleaved on the same inputs.
    hf_predict(teacher, tokenizer, texts[:batch_size], batch_size, model.max_length)
    engine_predict(model, texts[:batch_size], batch_size, 0.0)
    teacher_logits, hf_seconds = timed(lambda: hf_predict(teacher, tokenizer, texts, batch_size, model.max_length))
    sweep = []
    for tau in taus:
        (logits, layers), seconds = timed(lambda: engine_predict(model, texts, batch_size, tau))
        sweep.append({
            "entropy_threshold": tau,
            "calibrated": tau == calibrated,
            "accuracy": (logits.argmax(-1) == labels).double().mean().item(),
            "mean_exit_layer": layers.double().mean().item(),
            "sentences_per_second": len(texts) / seconds,
        })
    for _ in range(teacher_timings - 1):
        _, again = timed(lambda: hf_predict(teacher, tokenizer, texts, batch_size, model.max_length))
        hf_seconds = min(hf_seconds, again)
    timings["inference and benchmark"] = time.time() - started

    quick = committed_quick_result()
    results = {
        "task": "rt",
        "budget": budget,
        "train_rows": report["train_rows"],
        "validation_rows": len(texts),
        "batch_size": batch_size,
        "threads": torch.get_num_threads(),
        "widths": report["widths"],
        "parameter_ratio_encoder": report["parameters"]["ratio_encoder"],
        "teacher_accuracy": (teacher_logits.argmax(-1) == labels).double().mean().item(),
        "teacher_sentences_per_second": len(texts) / hf_seconds,
        "ta_exit_accuracies": report["accuracy"]["ta_exits"],
        "exit_accuracies": report["accuracy"]["costeff_exits"],
        "sweep": sweep,
        "calibrated_out_of_sample": {key: report["calibration"]["out_of_sample"][key]
                                     for key in ("accuracy", "mean_exit_layer", "method")},
        "committed_quick_budget": None if quick is None else {
            "teacher_accuracy": quick["accuracy"]["teacher"],
            "calibrated_accuracy": quick["accuracy"]["costeff_calibrated"],
            "exit_accuracies": quick["accuracy"]["costeff_exits"],
        },
        "step_seconds": timings,
    }
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / "demo_results.json").write_text(json.dumps(results, indent=2))
    print(format_demo_table(results))
    return results


def format_demo_table(results: dict) -> str:
    """The demo's results as a plain-text table."""
    widths = results["widths"]
    lines = [
        f"rt validation: {results['validation_rows']} sentences; trained on {results['train_rows']} "
        f"({results['budget']} budget); batch {results['batch_size']}; {results['threads']} threads",
        f"COST-EFF widths: heads {widths['num_attention_heads']}, FFN {widths['intermediate_size']}, "
        f"embedding rank {widths['embedding_rank'] or 'full'}; encoder parameters "
        f"{results['parameter_ratio_encoder']:.3f} of the teacher's",
        f"HF teacher: accuracy {results['teacher_accuracy']:.4f}, "
        f"{results['teacher_sentences_per_second']:.1f} sentences/s",
        "TA exit accuracies:       " + "  ".join(f"L{i + 1} {a:.4f}" for i, a in enumerate(results["ta_exit_accuracies"])),
        "COST-EFF exit accuracies: " + "  ".join(f"L{i + 1} {a:.4f}" for i, a in enumerate(results["exit_accuracies"])),
        f"{'entropy_threshold':>17} {'accuracy':>9} {'mean exit':>9} {'sent/s':>9} {'vs HF':>7}",
    ]
    for row in results["sweep"]:
        speedup = row["sentences_per_second"] / results["teacher_sentences_per_second"]
        mark = "  <- calibrated" if row["calibrated"] else ""
        lines.append(
            f"{row['entropy_threshold']:>17.3f} {row['accuracy']:>9.4f} {row['mean_exit_layer']:>9.2f} "
            f"{row['sentences_per_second']:>9.1f} {speedup:>6.2f}x{mark}"
        )
    held = results.get("calibrated_out_of_sample")
    if held:
        lines.append(f"calibrated threshold out of sample ({held['method']}: each row scored by a threshold chosen "
                     f"without it): accuracy {held['accuracy']:.4f}, mean exit {held['mean_exit_layer']:.2f}")
    quick = results["committed_quick_budget"]
    if quick:
        lines.append(
            f"committed quick-budget run (bench/results/rt-quick-uniform): teacher {quick['teacher_accuracy']:.4f}, "
            f"COST-EFF calibrated {quick['calibrated_accuracy']:.4f} (this demo: smaller budget)"
        )
    lines.append("step seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in results["step_seconds"].items()))
    return "\n".join(lines)

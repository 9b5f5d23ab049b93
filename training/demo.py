"""The main job: teacher -> multi-exit model on real `rt` data, then batch early-exit inference vs HF.

Every step caches its checkpoint under the work directory, so a rerun skips what has finished.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from costeff_fast.data import load_task
from costeff_fast.inference import from_pretrained

from .stages import TrainingData, distill_teaching_assistant, finetune_teacher
from .trainer import exit_accuracies, packaged_minilm_dir, tokenize_splits

DEFAULT_THRESHOLDS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)


@torch.inference_mode()
def hf_predict(model, tokenizer, texts: list[str], batch_size: int, max_length: int) -> torch.Tensor:
    """HF baseline: tokenize each batch with dynamic padding and run the classifier; logits ``[N, C]``."""
    out = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(texts[start : start + batch_size], padding=True, truncation=True,
                        max_length=max_length, return_tensors="pt")
        out.append(model(**enc).logits.float())
    return torch.cat(out)


@torch.inference_mode()
def engine_predict(model, texts: list[str], batch_size: int, entropy_threshold) -> tuple[torch.Tensor, torch.Tensor]:
    """costeff_fast: ``generate_logits`` batch by batch; logits ``[N, C]`` and exit layers ``[N]``."""
    logits, layers = [], []
    for start in range(0, len(texts), batch_size):
        z, layer = model.generate_logits(texts[start : start + batch_size], entropy_threshold=entropy_threshold,
                                         return_exit_layers=True)
        logits.append(z)
        layers.append(layer)
    return torch.cat(logits), torch.cat(layers)


def timed(fn):
    """Run ``fn()`` and return its result and the wall time in seconds."""
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def run_demo(work_dir: Path, *, train_rows: int = 3000, epochs: float = 1.0, max_length: int = 64,
             batch_size: int = 64, thresholds=DEFAULT_THRESHOLDS, seed: int = 0) -> dict:
    """Fine-tune the packaged MiniLM on ``rt``, build a multi-exit model, and compare inference with HF.

    Args:
        work_dir: cache of checkpoints and ``demo_results.json``.
        train_rows: training rows (seeded subset of the ``rt`` train split).
        epochs: epochs of each training step.
        max_length: tokens per training row.
        batch_size: inference batch size for both HF and costeff_fast.
        thresholds: entropy thresholds (nats) to sweep; 0.0 runs every row to the last layer.

    Returns:
        The results dict that is also printed and written to ``work_dir / "demo_results.json"``.
    """
    work_dir = Path(work_dir)
    timings = {}
    started = time.time()
    source = packaged_minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(source)
    splits = load_task("rt", max_train_rows=train_rows, seed=seed)
    label_names = splits["train"].features["label"].names
    tokenized = tokenize_splits(splits, tokenizer, max_length)
    data = TrainingData(tokenizer, tokenized["train"], tokenized["validation"], len(label_names), label_names, seed=seed)
    timings["data"] = time.time() - started

    teacher_dir, ta_dir = work_dir / "teacher", work_dir / "multi_exit"
    teacher_record = finetune_teacher(source, data, teacher_dir, epochs=epochs)
    timings["teacher fine-tuning"] = teacher_record["seconds"]
    ta_record = distill_teaching_assistant(teacher_dir, data, ta_dir, hidden_epochs=0, prediction_epochs=epochs)
    timings["multi-exit training"] = ta_record["seconds"]

    started = time.time()
    texts = list(splits["validation"]["text"])
    labels = torch.tensor(splits["validation"]["label"])
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir).eval()
    model = from_pretrained(ta_dir)
    # Warm up both paths once, then time them interleaved on the same inputs.
    hf_predict(teacher, tokenizer, texts[:batch_size], batch_size, model.max_length)
    engine_predict(model, texts[:batch_size], batch_size, 0.0)
    teacher_logits, hf_seconds = timed(lambda: hf_predict(teacher, tokenizer, texts, batch_size, model.max_length))
    teacher_accuracy = (teacher_logits.argmax(-1) == labels).double().mean().item()
    sweep = []
    for tau in thresholds:
        (logits, layers), seconds = timed(lambda: engine_predict(model, texts, batch_size, tau))
        sweep.append({
            "entropy_threshold": tau,
            "accuracy": (logits.argmax(-1) == labels).double().mean().item(),
            "mean_exit_layer": layers.double().mean().item(),
            "sentences_per_second": len(texts) / seconds,
        })
    _, hf_seconds_again = timed(lambda: hf_predict(teacher, tokenizer, texts, batch_size, model.max_length))
    hf_throughput = len(texts) / min(hf_seconds, hf_seconds_again)
    timings["inference and benchmark"] = time.time() - started

    results = {
        "task": "rt",
        "train_rows": len(splits["train"]),
        "validation_rows": len(texts),
        "batch_size": batch_size,
        "threads": torch.get_num_threads(),
        "teacher_accuracy": teacher_accuracy,
        "teacher_sentences_per_second": hf_throughput,
        "exit_accuracies": ta_record["exit_accuracies"],
        "sweep": sweep,
        "step_seconds": timings,
    }
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / "demo_results.json").write_text(json.dumps(results, indent=2))
    print(format_demo_table(results))
    return results


def format_demo_table(results: dict) -> str:
    """The demo's results as a plain-text table."""
    lines = [
        f"rt validation: {results['validation_rows']} sentences; trained on {results['train_rows']}; "
        f"batch {results['batch_size']}; {results['threads']} threads",
        f"HF teacher: accuracy {results['teacher_accuracy']:.4f}, "
        f"{results['teacher_sentences_per_second']:.1f} sentences/s",
        "exit accuracies: " + "  ".join(f"L{i + 1} {a:.4f}" for i, a in enumerate(results["exit_accuracies"])),
        f"{'entropy_threshold':>17} {'accuracy':>9} {'mean exit':>9} {'sent/s':>9} {'vs HF':>7}",
    ]
    for row in results["sweep"]:
        speedup = row["sentences_per_second"] / results["teacher_sentences_per_second"]
        lines.append(
            f"{row['entropy_threshold']:>17.3f} {row['accuracy']:>9.4f} {row['mean_exit_layer']:>9.2f} "
            f"{row['sentences_per_second']:>9.1f} {speedup:>6.2f}x"
        )
    lines.append("step seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in results["step_seconds"].items()))
    return "\n".join(lines)

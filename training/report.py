"""Per-run report of a COST-EFF compression: parameters, FLOPs, accuracies, threshold sweep, Pareto plot."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from costeff_fast import CostEffForSequenceClassification, from_pretrained
from costeff_fast.flops import model_flops, parameter_counts

from .calibrate import pick_threshold
from .prediction import minibatches, predict

PADDED_TOKENS = 128


def write_report(out_dir: Path, *, task, budget, settings, teacher, ta_dir, model_dir, data, validation_inputs,
                 labels, teacher_accuracy, ta_record, recovery_record, slender_record, sweep, chosen, out_of_sample,
                 goal, front=None, distillation_rows=None, timings) -> dict:
    """Write ``report.json`` and ``report.png`` to ``out_dir`` and return the report.

    FLOPs are matmul FLOPs (:mod:`costeff_fast.flops`): at full depth for 128 padded tokens per row (the
    paper's accounting, the factorized embedding's projection included), and at the dev rows' real token
    counts (the teacher at full depth; COST-EFF at its calibrated threshold, exit heads included).

    Calibration: ``calibration.chosen`` is the threshold written into the checkpoint, chosen on every dev row
    (for a ``max_drop`` goal keeping ``chosen.margin``, :func:`~costeff_fast.training.calibrate.choose_margin`),
    with its accuracy on those same rows (optimistic); ``calibration.out_of_sample`` is
    :func:`~costeff_fast.training.calibrate.cross_validate` of that choice (``margin="auto"``: nested), where each
    dev row is scored by a threshold and margin chosen without it. ``goal`` is ``{"max_drop": x}`` or ``{"target_speedup": x}``; ``front`` (None
    without one) is :func:`~costeff_fast.training.front.summarize_front`, and ``sweep``, the widths, parameters
    and exits are then those of the point chosen. The headline accuracy (``accuracy.costeff_calibrated``), FLOPs
    (``flops_per_row.costeff_real_lengths_calibrated``) and the targets are the out-of-sample figures.
    """
    model = CostEffForSequenceClassification.from_pretrained(model_dir, use_safetensors=True)
    ta = CostEffForSequenceClassification.from_pretrained(ta_dir, use_safetensors=True)
    engine = from_pretrained(model_dir)
    lengths = predict(lambda chunk: engine.encode(chunk)[2], minibatches(validation_inputs, 256))  # [N] tokens
    rows = len(lengths)
    teacher_params, model_params = parameter_counts(teacher), parameter_counts(model)
    padded = [PADDED_TOKENS] * rows
    teacher_padded = model_flops(teacher.config, padded, every_exit=False) / rows
    model_padded = model_flops(model.config, padded, count_embedding=True) / rows
    teacher_real = model_flops(teacher.config, lengths, every_exit=False) / rows
    model_real_full = model_flops(model.config, lengths) / rows
    model_real_exit = out_of_sample["gflops_per_row"] * 1e9
    # The paper's operating point: the cheapest threshold that keeps 96.5 % of the teacher's accuracy (it may
    # be cheaper than the calibrated one, which must stay within ``max_drop`` of the teacher).
    paper_point = pick_threshold([{k: v for k, v in row.items() if k != "point"} for row in sweep],
                                 0.965 * teacher_accuracy, max_drop=0.0)
    paper_point = ({**paper_point, "flops_ratio_real_lengths": paper_point["gflops"] * 1e9 / rows / teacher_real}
                   if paper_point.pop("constraint_met") else None)
    report = {
        "task": task,
        "budget": asdict(budget),
        "settings": {**asdict(settings), "name": settings.name},
        "train_rows": len(data.train),
        "validation_rows": rows,
        "mean_tokens_per_row": lengths.double().mean().item(),
        "widths": {"num_attention_heads": model.config.num_attention_heads,
                   "attention_head_size": model.config.attention_head_size,
                   "intermediate_size": model.config.intermediate_size,
                   "embedding_rank": model.config.embedding_rank, "exit_pooling": model.config.exit_pooling},
        "parameters": {
            "teacher": teacher_params, "costeff": model_params,
            "ratio_total": model_params["total"] / teacher_params["total"],
            "ratio_encoder": model_params["encoder"] / teacher_params["encoder"],
        },
        "flops_per_row": {
            "teacher_padded128": teacher_padded, "costeff_padded128_full_depth": model_padded,
            "ratio_padded128": model_padded / teacher_padded,
            "teacher_real_lengths": teacher_real, "costeff_real_lengths_full_depth": model_real_full,
            "costeff_real_lengths_calibrated": model_real_exit,
            "ratio_real_lengths_calibrated": model_real_exit / teacher_real,
        },
        "accuracy": {
            "teacher": teacher_accuracy,
            "ta_exits": ta_record["exit_accuracies"],
            "costeff_exits": recovery_record["exit_accuracies"],
            "costeff_calibrated": out_of_sample["accuracy"],
            "costeff_calibrated_in_sample": chosen["accuracy"],
            "retained_fraction_of_teacher": out_of_sample["accuracy"] / teacher_accuracy,
        },
        "calibration": {"goal": goal, "max_drop": goal.get("max_drop"), "chosen": chosen,
                        "chosen_on": f"all {rows} dev rows", "out_of_sample": out_of_sample, "sweep": sweep},
        "front": front,
        "distillation_rows": distillation_rows,
        "targets": {
            "goal_met_out_of_sample": out_of_sample["goal_met"],
            "points_under_teacher_out_of_sample": out_of_sample["drop"] * 100,
            "standard_error_points": out_of_sample["drop_standard_error"] * 100,
            "retains_96.5_percent": out_of_sample["accuracy"] >= 0.965 * teacher_accuracy,
            "at_most_1/19_flops_real_lengths": model_real_exit <= teacher_real / 19,
            "cheapest_threshold_retaining_96.5_percent": paper_point,
        },
        "slenderization_events": slender_record["events"],
        "stage_seconds": timings,
    }
    out_dir = Path(out_dir)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    plot_pareto(report, out_dir / "report.png")
    return report


def plot_pareto(report: dict, path: Path) -> None:
    """Accuracy against executed GFLOPs per row (real lengths): the sweep, the teacher and each exit at depth.

    Draws on a standalone :class:`matplotlib.figure.Figure` (no pyplot, no global backend change) and saves a
    PNG to ``path``.
    """
    rows = report["validation_rows"]
    sweep = sorted(report["calibration"]["sweep"], key=lambda r: r["gflops"])
    fig = Figure(figsize=(6, 4.2), dpi=110)
    ax = fig.subplots()
    front = report.get("front")
    for point in (front or {}).get("points", []):
        if point["name"] == front["chosen"]:
            continue
        other = sorted(point["sweep"], key=lambda r: r["gflops"])
        ax.plot([r["gflops"] / rows for r in other], [r["accuracy"] for r in other], ".-", ms=2, lw=0.8, alpha=0.7,
                label=f"front point {point['name']} ({point['fraction']:.2f} of the teacher's encoder)")
    chosen_name = f" {front['chosen']}" if front else ""
    ax.plot([r["gflops"] / rows for r in sweep], [r["accuracy"] for r in sweep], "o-", ms=3,
            label=f"COST-EFF{chosen_name}, entropy threshold sweep")
    chosen = report["calibration"]["chosen"]
    ax.plot(chosen["gflops"] / rows, chosen["accuracy"], "*", ms=14,
            label=f"calibrated tau={chosen['entropy_threshold']:.3f} (rows that chose it)")
    held = report["calibration"]["out_of_sample"]
    ax.plot(held["gflops_per_row"], held["accuracy"], "P", ms=9,
            label=f"calibrated, out of sample ({held['method']})")
    teacher_gflops = report["flops_per_row"]["teacher_real_lengths"] / 1e9
    ax.plot(teacher_gflops, report["accuracy"]["teacher"], "s", ms=8, color="black", label="teacher (HF)")
    ax.axhline(0.965 * report["accuracy"]["teacher"], color="gray", ls=":", lw=1, label="96.5% of teacher")
    ax.axvline(teacher_gflops / 19, color="gray", ls="--", lw=1, label="1/19 of teacher FLOPs")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("executed GFLOPs per sentence (real lengths)")
    ax.set_ylabel("dev accuracy")
    ax.set_title(f"{report['task']}: {report['settings']['name']} ({report['budget']['name']} budget)")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)

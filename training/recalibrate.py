"""Calibrate a COST-EFF checkpoint on new labelled data: choose its entropy threshold(s), write them into its
``config.json`` atomically, and write a calibration report (JSON + PNG of accuracy against executed FLOPs).

COST-EFF (Shen et al., EMNLP 2022, arXiv 2210.15523, Sec. 3.4) exits a row at the first layer whose softmax
entropy is below a threshold. ``compress`` calibrates on its own dev split; this module recalibrates a finished
checkpoint for the user's data (``costeff-fast calibrate``), with one shared threshold (the paper) or one per exit.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import torch
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from costeff_fast import CostEffForSequenceClassification, from_pretrained
from costeff_fast.checkpoint import CheckpointError, load_config
from costeff_fast.data import UnknownLabelError, load_user_split
from costeff_fast.flops import model_flops

from .calibrate import (
    ExitTable,
    accuracy_at_flops,
    choose_margin,
    cross_validate,
    engine_sweep,
    fold_indices,
    per_layer_thresholds,
    pick_for_goal,
    score_choice,
    single_threshold_curve,
)
from .data import dev_inputs
from .prediction import engine_predict, exit_logits, hf_predict, minibatches, predict
from .trainer import resolve_device
from .validate import (CompressArgumentError, label_names_to_map, read_teacher_config, teacher_labels,
                       unknown_label_message)

THRESHOLD_KINDS = ("single", "per-layer")
"""What ``calibrate_checkpoint`` writes: one threshold for every layer (the paper) or one per exit."""

SWEEP_POINTS = 24
"""Single thresholds run through the engine (the per-layer search evaluates many more from one table)."""


class CalibrateArgumentError(ValueError):
    """A ``calibrate`` argument refused before any model runs; the message is one line: the argument and the fix."""


def calibrate_checkpoint(model_dir: Path, data, *, text_column: str = "text", text_pair_column: str | None = None,
                         label_column: str = "label", max_drop: float | None = None,
                         target_speedup: float | None = None, teacher_dir: Path | None = None,
                         thresholds: str = "single", report_dir: Path | None = None, batch_size: int = 64,
                         folds: int = 5, seed: int = 0, device="auto") -> dict:
    """Choose the entropy threshold of a COST-EFF checkpoint on labelled data and write it into its config.

    Steps: one full-depth forward of the reference model gives every exit's entropy and prediction per row
    (:class:`~costeff_fast.training.calibrate.ExitTable`); single thresholds at quantiles of those entropies run
    through the batch engine (accuracy, executed FLOPs at real lengths, sentences/s); the goal picks one:

    - ``max_drop``: the fewest FLOPs with accuracy at least ``reference - max_drop`` plus a margin (below), the
      reference being the teacher's accuracy on the data with ``teacher_dir``, else the checkpoint's own at full
      depth (threshold 0);
    - ``target_speedup``: the most accurate threshold with at most ``1 / target_speedup`` of the full-depth FLOPs.

    For a ``max_drop`` goal the single threshold keeps a margin of accuracy in hand on these rows, the smallest
    that cross-validation says holds on new rows (:func:`~costeff_fast.training.calibrate.choose_margin`;
    ``single.margin``); the per-layer search keeps it too.

    Per-layer thresholds (one per exit) are then searched from that single threshold for the same goal
    (:func:`~costeff_fast.training.calibrate.per_layer_thresholds`), run through the engine, and compared with the
    single threshold at equal FLOPs.

    Out of sample: the thresholds written are chosen on all rows, so their accuracy on those rows is optimistic.
    Both procedures (single, per layer) are also run by ``folds``-fold cross-validation
    (:func:`~costeff_fast.training.calibrate.cross_validate`): each fold's thresholds are chosen on the other folds
    and the engine scores the fold's own rows with them, so every row is scored once by thresholds chosen without
    it (``single.out_of_sample``, ``per_layer.out_of_sample``). Per-layer thresholds are written only when asked for
    *and* they win out of sample (:func:`beats_out_of_sample`: cross-validated, they meet the goal and are no less
    accurate at no more FLOPs than the cross-validated single threshold, better in one); otherwise the single
    threshold is written and ``written.why`` says so.

    Args:
        model_dir: a COST-EFF checkpoint (``config.json`` with ``model_type == "costeff"``).
        data: labelled rows: a CSV / JSON Lines / Parquet file, a ``save_to_disk`` directory (its ``validation``
            split, else ``train``), a ``Dataset`` or ``DatasetDict`` (:func:`costeff_fast.data.load_user_split`).
            Labels are mapped through the checkpoint's class names (string labels need named classes).
        text_column, text_pair_column, label_column: the columns holding the text, the optional pair, the label.
        max_drop: allowed accuracy drop as a fraction (0.01 = one point); the default goal (0.01) when neither
            ``max_drop`` nor ``target_speedup`` is given.
        target_speedup: times fewer executed FLOPs than the checkpoint at full depth (>= 1).
        teacher_dir: optional HF classifier whose accuracy on the data is the ``max_drop`` reference.
        thresholds: what is asked for in ``config.json``: ``"single"`` or ``"per-layer"`` (written only when it
            wins out of sample, see above).
        report_dir: receives ``calibration.json`` and ``calibration.png`` (default ``model_dir/calibration``).
        batch_size: rows per engine call and per reference forward.
        folds: folds of the cross-validation (at most the number of rows).
        seed: seed of the folds.
        device: where the engine and the forwards run (``"auto"``: CUDA when available, else the CPU); fp32
            forwards, no autocast.

    Returns:
        The report dict (also written to ``report_dir/calibration.json``).

    Raises:
        CalibrateArgumentError: one line naming the argument: a device that is not here, ``model_dir`` not a
            COST-EFF checkpoint, both goals
            given, ``max_drop`` < 0 or ``target_speedup`` < 1, an unknown ``thresholds``, ``folds`` < 2, a ``teacher_dir`` that is
            not a fine-tuned HF classifier with safetensors weights and a tokenizer or whose classes (count, or
            ``id2label`` names in id order) differ from the checkpoint's, a data file or column
            that is missing or unreadable, labels the checkpoint does not know, or fewer than two rows.
    """
    model_dir = Path(model_dir)
    try:
        device = resolve_device(device)
    except ValueError as error:
        raise CalibrateArgumentError(str(error)) from error
    config = _checkpoint_config(model_dir)
    if max_drop is not None and target_speedup is not None:
        raise CalibrateArgumentError("--max-drop and --target-speedup both given; pass one goal")
    if max_drop is None and target_speedup is None:
        max_drop = 0.01
    if max_drop is not None and not 0 <= max_drop < 1:
        raise CalibrateArgumentError(f"--max-drop {max_drop}: must be a fraction in [0, 1), e.g. 0.01 for one point")
    if target_speedup is not None and not target_speedup >= 1:
        raise CalibrateArgumentError(f"--target-speedup {target_speedup}: must be >= 1 (times fewer FLOPs than "
                                     "full depth)")
    if folds < 2:
        raise CalibrateArgumentError(f"--folds {folds}: cross-validation needs at least 2 folds (default 5)")
    if thresholds not in THRESHOLD_KINDS:
        raise CalibrateArgumentError(f"--thresholds {thresholds!r}: unknown; pass one of {', '.join(THRESHOLD_KINDS)}")
    if teacher_dir is not None:
        _check_teacher(Path(teacher_dir), config)
    rows = _load_rows(data, config, text_column=text_column, text_pair_column=text_pair_column,
                      label_column=label_column)
    report_dir = Path(report_dir) if report_dir is not None else model_dir / "calibration"

    engine = from_pretrained(model_dir, device=device)
    reference_model = CostEffForSequenceClassification.from_pretrained(model_dir, use_safetensors=True).eval()
    inputs, labels = dev_inputs(rows)
    logits = exit_logits(reference_model, engine.tokenizer, inputs, batch_size=batch_size,
                         max_length=engine.max_length, device=device, autocast=False)  # [N, L, C] fp32 CPU
    lengths = predict(lambda chunk: engine.encode(chunk)[2], minibatches(inputs, batch_size))  # [N] tokens
    table = ExitTable.build(logits, labels, lengths, engine.config)

    fine_curve = single_threshold_curve(table)
    step = max(1, len(fine_curve) // SWEEP_POINTS)
    sweep_values = sorted({row["entropy_threshold"] for row in fine_curve[::step]} | {0.0})
    outcomes = engine_sweep(engine, inputs, labels, sweep_values, batch_size=batch_size)
    sweep = outcomes.rows()
    full_depth = sweep[0]
    teacher_accuracy = None
    reference_correct = outcomes.correct[0]  # the model's own at full depth (threshold 0)
    if teacher_dir is not None:
        teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir, use_safetensors=True).eval()
        teacher_logits = hf_predict(teacher, AutoTokenizer.from_pretrained(teacher_dir), inputs, batch_size,
                                    engine.max_length, device=device, autocast=False)
        reference_correct = teacher_logits.argmax(-1) == labels
        teacher_accuracy = reference_correct.double().mean().item()
    reference_accuracy = reference_correct.double().mean().item()
    goal = {"max_drop": max_drop, "target_speedup": target_speedup}

    margin = None if max_drop is None else choose_margin(outcomes, reference_correct=reference_correct,
                                                         max_drop=max_drop, folds=folds, seed=seed)
    margin_value = 0.0 if margin is None else margin["margin"]
    single = pick_for_goal(sweep, reference_accuracy=reference_accuracy, full_depth_gflops=full_depth["gflops"],
                           margin=margin_value, **goal)
    vector = _per_layer_search(table, single, full_depth["gflops"], reference_accuracy, margin=margin_value, **goal)
    per_layer = _engine_row(engine, inputs, labels, lengths, vector, batch_size)
    at_equal = accuracy_at_flops(sweep, per_layer["gflops"])

    # Out of sample: each row scored by thresholds chosen on the other folds, single and per layer alike.
    single_held = cross_validate(outcomes, reference_correct=reference_correct, folds=folds, seed=seed, margin="auto",
                                 **goal)
    per_layer_held = _per_layer_cross_validation(engine, table, outcomes, inputs, labels, reference_correct,
                                                 folds=folds, seed=seed, batch_size=batch_size, **goal)
    per_layer_wins = beats_out_of_sample(per_layer_held, single_held)
    if thresholds == "per-layer" and per_layer_wins:
        written, kind = vector, "per-layer"
        why = ("per-layer thresholds were asked for and win out of sample: they meet the goal and beat the single "
               "threshold's cross-validated accuracy and FLOPs (no worse in both, better in one)")
    elif thresholds == "per-layer":
        written, kind = single["entropy_threshold"], "single"
        why = (f"per-layer thresholds were asked for but do not win out of sample (accuracy "
               f"{per_layer_held['accuracy']:.4f} at {per_layer_held['gflops_per_row']:.4f} GFLOPs/row against the "
               f"single threshold's {single_held['accuracy']:.4f} at {single_held['gflops_per_row']:.4f}; goal "
               f"{'met' if per_layer_held['goal_met'] else 'not met'}): the single threshold is written")
    else:
        written, kind, why = single["entropy_threshold"], "single", "a single threshold was asked for"
    previous = config.get("entropy_threshold")
    n = len(inputs)
    report = {
        "model": str(model_dir),
        "rows": n,
        "mean_tokens_per_row": lengths.double().mean().item(),
        "goal": {"max_drop": max_drop} if target_speedup is None else {"target_speedup": target_speedup},
        "reference": "teacher" if teacher_accuracy is not None else "full_depth",
        "reference_accuracy": reference_accuracy,
        "teacher_accuracy": teacher_accuracy,
        "full_depth": {"accuracy": full_depth["accuracy"], "gflops_per_row": full_depth["gflops"] / n},
        "chosen_on": f"all {n} rows (the thresholds written)",
        "single": {**single, "margin": margin, "gflops_per_row": single["gflops"] / n,
                   "speedup_flops": full_depth["gflops"] / single["gflops"], "out_of_sample": single_held},
        "per_layer": {**per_layer, "gflops_per_row": per_layer["gflops"] / n,
                      "speedup_flops": full_depth["gflops"] / per_layer["gflops"],
                      "single_accuracy_at_equal_flops": at_equal,
                      "beats_single": at_equal is None or per_layer["accuracy"] > at_equal + 1e-12,
                      "out_of_sample": {**per_layer_held, "beats_single": per_layer_wins}},
        "sweep": sweep,
        "written": {"thresholds": kind, "asked": thresholds, "why": why, "entropy_threshold": written,
                    "previous_entropy_threshold": previous},
    }
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "calibration.json").write_text(json.dumps(report, indent=2))
    plot_calibration(report, fine_curve, report_dir / "calibration.png")
    write_entropy_threshold(model_dir, written)
    return report


def _checkpoint_config(model_dir: Path) -> dict:
    """The checkpoint's config as a dict, read strictly (:func:`costeff_fast.checkpoint.load_config`)."""
    try:
        return load_config(model_dir).to_dict()
    except FileNotFoundError as error:
        raise CalibrateArgumentError(f"--model {model_dir}: no config.json there; pass a COST-EFF checkpoint "
                                     "directory (the --out of costeff-fast compress)") from error
    except CheckpointError as error:
        raise CalibrateArgumentError(f"--model {model_dir}: {error}") from error


def _check_teacher(teacher_dir: Path, config: dict) -> None:
    """Refuse a ``--teacher`` that cannot be the reference: not a fine-tuned HF classifier with safetensors and a
    tokenizer (:func:`~costeff_fast.training.validate.read_teacher_config`), or one whose classes differ from the
    checkpoint's (its accuracy would be scored against other label ids)."""
    try:
        teacher_config, _ = read_teacher_config(teacher_dir)
    except CompressArgumentError as error:
        raise CalibrateArgumentError(str(error).replace("or use --task-default", "or leave out --teacher")) from error
    teacher_count, teacher_names = teacher_labels(teacher_config)
    count, names = teacher_labels(config)
    if teacher_count != count or (teacher_names is not None and names is not None and teacher_names != names):
        raise CalibrateArgumentError(
            f"--teacher {teacher_dir}: its classes {teacher_names or teacher_count} are not the model's "
            f"{names or count} (config.json id2label, in id order); pass the teacher the model was compressed from")


def _load_rows(data, config: dict, *, text_column: str, text_pair_column: str | None, label_column: str):
    num_labels, names = teacher_labels(config)
    try:
        rows = load_user_split(data, text_column=text_column, text_pair_column=text_pair_column,
                               label_column=label_column, label_names=label_names_to_map(num_labels, names))
    except UnknownLabelError as error:
        raise CalibrateArgumentError(unknown_label_message(
            error, "model", "fix the data, or calibrate a model trained on these classes")) from error
    except (ValueError, FileNotFoundError, TypeError) as error:
        raise CalibrateArgumentError(f"--validation-file: {' '.join(str(error).split())}") from error
    if len(rows) < 2:
        raise CalibrateArgumentError(f"--validation-file: {len(rows)} labelled row(s); calibration needs at least "
                                     "two (a few hundred for a stable threshold)")
    return rows


def _engine_row(engine, inputs: list, labels: torch.Tensor, lengths: torch.Tensor, thresholds: list[float],
                batch_size: int) -> dict:
    """Accuracy, exit layers, executed FLOPs and sentences/s of the engine at per-layer ``thresholds`` (the fields
    of a :func:`~costeff_fast.training.calibrate.threshold_sweep` row)."""
    started = time.perf_counter()
    logits, layers = engine_predict(engine, inputs, batch_size, thresholds)
    seconds = time.perf_counter() - started
    counts = torch.bincount(layers, minlength=engine.config.num_hidden_layers + 1)[1:]
    return {
        "entropy_threshold": list(thresholds),
        "accuracy": (logits.argmax(-1) == labels).double().mean().item(),
        "mean_exit_layer": layers.double().mean().item(),
        "exit_layer_counts": counts.tolist(),
        "gflops": model_flops(engine.config, lengths, layers) / 1e9,
        "sentences_per_second": len(inputs) / seconds,
    }


def beats_out_of_sample(per_layer: dict, single: dict) -> bool:
    """Whether cross-validated per-layer thresholds win against the cross-validated single threshold (two
    :func:`~costeff_fast.training.calibrate.cross_validate`-style results on the same rows): they meet the goal and
    are no less accurate at no more FLOPs, strictly better in one of the two."""
    no_worse = per_layer["accuracy"] >= single["accuracy"] - 1e-12 and per_layer["gflops"] <= single["gflops"] * (1 + 1e-9)
    better = per_layer["accuracy"] > single["accuracy"] + 1e-12 or per_layer["gflops"] < single["gflops"] * (1 - 1e-9)
    return bool(per_layer["goal_met"] and no_worse and better)


def _per_layer_search(table: ExitTable, single: dict, full_depth_gflops: float, reference_accuracy: float, *,
                      max_drop: float | None, target_speedup: float | None, margin: float = 0.0) -> list[float]:
    """Per-layer thresholds for the goal, searched in ``table`` from the engine's chosen ``single`` sweep row (its
    rows' accuracy and FLOPs): the goal itself (plus the single choice's ``margin`` of accuracy, up to the single
    row's own accuracy) when the single threshold met it, else the single row's own accuracy or FLOPs. The table's
    figures equal the engine's up to rows within float noise of a threshold, so the goal is loosened to the single
    threshold's table figures where they fall on the wrong side."""
    layers = table.entropies.shape[1]
    table_single = table.evaluate(single["entropy_threshold"])
    if target_speedup is not None:
        budget = full_depth_gflops / target_speedup if single["constraint_met"] else single["gflops"]
        goal = {"max_gflops": max(budget, table_single["gflops"])}
    else:
        floor = (min(reference_accuracy - max_drop + margin, single["accuracy"]) if single["constraint_met"]
                 else single["accuracy"])
        goal = {"min_accuracy": min(floor, table_single["accuracy"])}
    vector, _ = per_layer_thresholds(table, [single["entropy_threshold"]] * layers, **goal)
    return vector


def _per_layer_cross_validation(engine, table: ExitTable, outcomes, inputs: list, labels: torch.Tensor,
                                reference_correct: torch.Tensor, *, max_drop: float | None,
                                target_speedup: float | None, folds: int, seed: int, batch_size: int) -> dict:
    """:func:`~costeff_fast.training.calibrate.cross_validate` of the per-layer procedure: on the other folds'
    rows, the margin and the single threshold from the engine sweep, then the per-layer search from it in the exit
    table; the engine then runs the fold's own rows at that vector. Same folds (seed) as the single threshold's."""
    n = len(inputs)
    parts = fold_indices(n, folds, seed)
    correct = torch.zeros(n, dtype=torch.bool)
    layers = torch.zeros(n, dtype=torch.long)
    per_fold = []
    for index, held in enumerate(parts):
        rest = torch.cat([part for i, part in enumerate(parts) if i != index])
        reference = reference_correct[rest].double().mean().item()
        full = outcomes.full_depth_flops[rest].sum().item() / 1e9
        margin = 0.0 if max_drop is None else choose_margin(
            outcomes.subset(rest), reference_correct=reference_correct[rest], max_drop=max_drop, folds=folds,
            seed=seed)["margin"]
        single = pick_for_goal(outcomes.rows(rest), reference_accuracy=reference, full_depth_gflops=full,
                               max_drop=max_drop, target_speedup=target_speedup, margin=margin)
        vector = _per_layer_search(table.subset(rest), single, full, reference, max_drop=max_drop,
                                   target_speedup=target_speedup, margin=margin)
        logits, exits = engine_predict(engine, [inputs[i] for i in held.tolist()], batch_size, vector)
        correct[held], layers[held] = logits.argmax(-1) == labels[held], exits
        per_fold.append({"rows": len(held), "margin": margin, "entropy_threshold": vector,
                         "accuracy": correct[held].double().mean().item()})
    flops = table.cumulative_flops[torch.arange(n), layers - 1]
    result = score_choice(correct, flops, layers, reference_correct=reference_correct,
                          full_depth_flops=outcomes.full_depth_flops, max_drop=max_drop, target_speedup=target_speedup)
    return {**result, "method": f"{len(parts)}-fold cross-validation", "folds": len(parts), "seed": seed,
            "per_fold": per_fold}


def write_entropy_threshold(model_dir: Path, entropy_threshold) -> None:
    """Set ``entropy_threshold`` in ``model_dir/config.json`` and nothing else, atomically: the new config is
    written to a temporary file in the same directory, flushed to disk and renamed over the old one, so a crash
    leaves either the old or the new config, never a partial one."""
    path = Path(model_dir) / "config.json"
    config = json.loads(path.read_text())
    config["entropy_threshold"] = entropy_threshold
    handle, temporary = tempfile.mkstemp(prefix=".config.", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as file:
            file.write(json.dumps(config, indent=2, sort_keys=True))
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def plot_calibration(report: dict, fine_curve: list[dict], path: Path) -> None:
    """Accuracy against executed GFLOPs per row: the engine's single-threshold sweep, the table's finer single
    curve, the chosen single and per-layer thresholds and the reference accuracy (a standalone Figure, PNG)."""
    n = report["rows"]
    fig = Figure(figsize=(6, 4.2), dpi=110)
    ax = fig.subplots()
    fine = sorted(fine_curve, key=lambda r: r["gflops"])
    ax.plot([r["gflops"] / n for r in fine], [r["accuracy"] for r in fine], "-", lw=1, color="lightsteelblue",
            label="one threshold, every value (exit table)")
    sweep = sorted(report["sweep"], key=lambda r: r["gflops"])
    ax.plot([r["gflops"] / n for r in sweep], [r["accuracy"] for r in sweep], "o", ms=3, color="tab:blue",
            label="one threshold, engine")
    single, per_layer = report["single"], report["per_layer"]
    ax.plot(single["gflops_per_row"], single["accuracy"], "*", ms=13, color="tab:orange",
            label=f"chosen single tau={single['entropy_threshold']:.3f}")
    ax.plot(per_layer["gflops_per_row"], per_layer["accuracy"], "D", ms=7, color="tab:green",
            label="per-layer thresholds, engine")
    for chosen, color, name in ((single, "tab:orange", "single"), (per_layer, "tab:green", "per-layer")):
        held = chosen["out_of_sample"]
        ax.plot(held["gflops_per_row"], held["accuracy"], "P", ms=8, color=color, markeredgecolor="black",
                label=f"{name}, out of sample ({held['folds']}-fold)")
    ax.axhline(report["reference_accuracy"], color="black", ls=":", lw=1, label=f"reference ({report['reference']})")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("executed GFLOPs per row (real lengths)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"calibration on {n} rows")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)

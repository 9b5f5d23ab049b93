"""The COST-EFF pipeline end to end: teacher -> TA -> slenderization -> recovery -> calibration -> report.

Source: COST-EFF (Shen et al., EMNLP 2022, arXiv 2210.15523) Sec. 3-4 and the authors' ``run.sh``
(GitHub sbwww/COST-EFF). Teacher and TA are cached per task and budget under the work directory and shared by
every compression setting; each setting caches its own slenderized and recovered checkpoints.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping

from datasets import DatasetDict

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from costeff_fast import CostEffForSequenceClassification, from_pretrained
from costeff_fast.data import load_unlabeled
from costeff_fast.flops import row_flops

from .budget import BUDGETS, Budget, default_work_name, recovered_name, recovery_temperature
from .augment import Augmentation, distillation_rows, unlabeled_fingerprint
from .calibrate import (
    SweepOutcomes,
    choose_margin,
    cross_validate,
    engine_sweep,
    pick_for_goal,
    quantile_thresholds,
)
from .data import dev_inputs, packaged_minilm_dir, prepare_data
from .front import goal_explanation, summarize_front
from .prediction import hf_predict, minibatches, predict
from .report import write_report
from .stage_cache import RECORD
from .stages import distill_teaching_assistant, finetune_teacher, recover, slenderize_stage
from .trainer import resolve_device
from .validate import (
    CompressArgumentError,
    check_budget,
    check_teacher_tokenizer,
    check_work_location,
    data_fingerprint,
    front_points,
    load_compress_data,
    publish_output,
    read_teacher_config,
    teacher_fingerprint,
    validate_compress,
)


@dataclass(frozen=True)
class CompressionSettings:
    """Target widths of the COST-EFF model and how they are chosen (per layer: heads of size d, FFN)."""

    heads: int = 2
    ffn: int = 160
    #: None: the word embedding stays as the teacher's (full rank); a rank r factorizes it (the paper: 128), which
    #: saves parameters but no executed FLOPs (the engine folds the factors into one table) and costs accuracy
    #: (bench/results/README.md, "Where the points go")
    embedding_rank: int | None = None
    allocation: str = "uniform"
    calibrate_exits: bool = True
    #: fractions of the teacher's encoder (matmul weights per layer) at which the slenderization path also stops,
    #: each point recovered and calibrated like the target (:mod:`~costeff_fast.training.front`); () = the target only
    front: tuple[float, ...] = ()
    #: the widths' shape over the pruning events (:func:`~costeff_fast.training.schedule.pruning_schedule`):
    #: "linear" (the paper's code) or "geometric" (the same share of the width removed by every event)
    schedule: str = "linear"
    #: the distillation steps after the pruning events (:func:`~costeff_fast.training.schedule.event_steps`):
    #: "even" (the budget's steps after each) or "by-share" (the same total, in proportion to what each removes)
    event_steps: str = "even"

    @property
    def name(self) -> str:
        rank = "full" if self.embedding_rank is None else self.embedding_rank
        ablation = "" if self.calibrate_exits else "-lastexit"
        front = "" if not self.front else "-front" + "_".join(f"{f:g}" for f in sorted(self.front, reverse=True))
        schedule = "" if self.schedule == "linear" else f"-{self.schedule}"
        schedule += "" if self.event_steps == "even" else f"-steps-{self.event_steps}"
        return f"h{self.heads}-f{self.ffn}-r{rank}-{self.allocation}{ablation}{schedule}{front}"


def compress(task: str | None = None, out_dir: Path | None = None, *, data=None, text_column: str = "text",
             text_pair_column: str | None = None, label_column: str = "label", teacher_dir: Path | None = None,
             settings: CompressionSettings = CompressionSettings(), budget: str | Budget = "quick",
             work_dir: Path | None = None, max_drop: float | None = None, target_speedup: float | None = None,
             exit_pooling: str = "mean", seed: int = 0, unlabeled=None, unlabeled_text_column: str | None = None,
             augment: int = 0, extra_rows_for: str = "all", front_point: str | None = None,
             overwrite: bool = False, device: str | torch.device = "auto", autocast: bool | None = None) -> dict:
    """Run the whole COST-EFF pipeline and write the calibrated checkpoint and its report to ``out_dir``.

    Every argument is checked first (:func:`~costeff_fast.training.validate.validate_compress`: configs are
    read, no weights loaded; then :func:`~costeff_fast.training.validate.load_compress_data`: the data and its
    labels against the teacher's), so a bad one is refused before the first training step. The output is written
    into a temporary sibling of ``out_dir`` and renamed into place at the end
    (:func:`~costeff_fast.training.validate.publish_output`): a crash leaves an existing ``out_dir`` as it was,
    and nothing outside ``out_dir`` and ``work_dir`` is ever deleted.

    Args:
        task: a built-in task (``rt``, ``boolq``, ``trec``); or None with ``data``.
        out_dir: receives the COST-EFF checkpoint (HF format, ``config.entropy_threshold`` calibrated),
            ``report.json`` and ``report.png``. It may be missing, empty or a previous COST-EFF output
            (``config.json`` with ``model_type == "costeff"`` plus ``report.json``), which is replaced; any other
            existing directory is refused unless ``overwrite``.
        data: your own labelled data instead of ``task``: a CSV / JSON Lines / Parquet file, ``{"train": file,
            "validation": file}``, a directory written by ``datasets``' ``save_to_disk``, or a ``Dataset`` /
            ``DatasetDict`` (:func:`costeff_fast.data.load_user_data`). Without a validation split, 10 % of the
            training rows (stratified by label, seeded with ``seed``) are held out for checkpoint choice and
            calibration. Labels may be strings (mapped through the teacher's ``label2id`` when it names its
            classes), integer class ids or bools.
        text_column, text_pair_column, label_column: the columns of ``data`` holding the text, the optional second
            text of a pair, and the label.
        teacher_dir: a fine-tuned HF encoder classifier; None fine-tunes the packaged MiniLM on the data.
        settings: target widths and allocation.
        budget: ``"quick"``, ``"paper"``, ``"demo"`` or a :class:`Budget` (its ``train_rows`` / ``eval_rows`` cap
            the data).
        work_dir: stage cache (default ``work/`` + :func:`default_work_name` of the task, or for user data of
            ``<file or directory name>-<data fingerprint>``, plus ``-teacher<fingerprint>`` with ``teacher_dir``);
            finished stages are reused.
        max_drop: the goal: the fewest executed FLOPs whose dev accuracy stays within this fraction of the
            teacher's (0.01 = one point; the default goal when neither it nor ``target_speedup`` is given).
        target_speedup: the other goal: the most accurate model with at least this many times fewer executed
            FLOPs than the teacher on the dev rows (real lengths).

    Goal and front: with ``settings.front`` the slenderization path also stops at those fractions of the teacher's
    encoder; every point is recovered and calibrated, and the goal picks the (width, threshold) pair written to
    ``out_dir`` from all of them (the report's ``front`` lists every point, its checkpoint under ``work_dir``
    and how to write another one). When nothing meets the goal the closest pair is written and the report's
    ``calibration.chosen.why`` says so (``constraint_met`` False). A ``max_drop`` choice keeps a margin of accuracy
    in hand on the dev rows, the smallest that cross-validation says holds on new rows
    (:func:`~costeff_fast.training.calibrate.choose_margin`; ``calibration.chosen.margin``). The accuracy reported
    for the choice is out of sample (:func:`~costeff_fast.training.calibrate.cross_validate` with
    ``margin="auto"``: each dev row scored by a choice, margin included, made without it).
        exit_pooling: what the TA's (and so the COST-EFF model's) non-pooled exits read: ``"mean"`` (default:
            the packaged MiniLM's [CLS] is uninformative before layer 4) or ``"cls"`` (the paper).
        seed: seed of the data split and subsets and of every stage.
        unlabeled: text rows without labels (a CSV / JSON Lines / Parquet file, a ``save_to_disk`` directory or a
            ``Dataset``; typically the production job's own rows) added to the rows the TA, slenderization and
            recovery distil on, labelled by the teacher (:mod:`~costeff_fast.training.augment`); rows equal to a
            validation row are dropped (the report counts them). Read from ``unlabeled_text_column`` (default
            ``text_column``) and ``text_pair_column``.
        augment: perturbed copies of every training row added to the same rows (masked, replaced and deleted
            tokens; :class:`~costeff_fast.training.augment.Augmentation`), labelled by the teacher.
        extra_rows_for: which stages distil on the ``unlabeled`` and ``augment`` rows: ``"all"`` (the TA,
            slenderization and recovery; default) or ``"ta"`` (the TA only; slenderization and recovery distil on
            the labelled training rows, the TA's extra knowledge reaching the student through its exits). The report's
            ``train_rows`` counts the rows the student's stages trained on, ``distillation_rows.stages`` names the
            stages that saw the extra rows.
        front_point: write this point of the front (a name of the report's ``front.points``, e.g. ``"h3-f384"``)
            instead of the one the goal picks across widths; its threshold is still chosen for the goal. With the
            same ``work_dir`` every stage is reused and only calibration runs.
        overwrite: replace an existing ``out_dir`` that holds other files (they are deleted at the end).
        device: where every stage trains and calibration runs: ``"auto"`` (CUDA when available, else the CPU),
            ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (:func:`~costeff_fast.training.trainer.resolve_device`).
        autocast: bf16 autocast of the training forwards (None: on for CUDA, off on the CPU); losses and
            entropies are fp32 either way, and the teacher's accuracy and calibration run without it.

    Returns:
        The report dict.

    Raises:
        CompressArgumentError: (a ``ValueError``; one line naming the argument and the fix) before any training:
            no data, or both a task and data; unknown task or budget; ``max_drop`` outside [0, 1), ``target_speedup``
            below 1, or both; a ``front`` fraction not between the target's size and 1, or two that land on the same
            widths; a ``front_point`` that is not a point of the front; a device that is not here; a teacher
            directory that is missing, lacks
            ``config.json``, weights or a tokenizer, or is not a supported ``*ForSequenceClassification``; a
            teacher tokenizer larger than its ``vocab_size``;
            ``heads``, ``ffn`` or ``embedding_rank`` outside [1, the teacher's heads, intermediate size or
            hidden size] (the packaged MiniLM's with ``teacher_dir=None``); an unknown allocation or exit
            pooling; an ``extra_rows_for`` other than ``"all"`` or ``"ta"``, or ``"ta"`` without extra rows;
            ``work_dir`` or ``out_dir`` an existing file; ``out_dir`` a non-empty directory that is not a previous
            COST-EFF output without ``overwrite``, or one containing the teacher or ``work_dir``; a
            missing data file or column, empty texts, missing labels, labels the teacher does not know or a class
            count other than the teacher's. Also at the end, keeping the new checkpoint in the staging directory
            it names, when ``out_dir`` gained such files during the run.
        StageMismatchError: (a ``ValueError``, one line) ``work_dir`` holds a finished stage built with other
            parameters than this run's (another budget, flag or upstream stage), before that stage would run.
    """
    if out_dir is None:
        raise CompressArgumentError("--out: missing; pass the directory that receives the checkpoint")
    budget = check_budget(budget)
    if max_drop is not None and target_speedup is not None:
        raise CompressArgumentError("--max-drop and --target-speedup both given; pass one goal")
    if max_drop is None and target_speedup is None:
        max_drop = 0.01
    if max_drop is not None and not 0 <= max_drop < 1:
        raise CompressArgumentError(f"--max-drop {max_drop}: must be a fraction in [0, 1), e.g. 0.01 for one point")
    if target_speedup is not None and not target_speedup >= 1:
        raise CompressArgumentError(f"--target-speedup {target_speedup}: must be >= 1 (times fewer executed FLOPs "
                                    "than the teacher)")
    try:
        device = resolve_device(device)
    except ValueError as error:
        raise CompressArgumentError(str(error)) from error
    if extra_rows_for not in ("all", "ta"):
        raise CompressArgumentError(f"--extra-rows-for {extra_rows_for!r}: pass all (the TA, slenderization and "
                                    "recovery distil on the extra rows) or ta (the TA only)")
    if extra_rows_for == "ta" and not augment and unlabeled is None:
        raise CompressArgumentError("--extra-rows-for ta: there are no extra rows; pass --augment N or "
                                    "--unlabeled-file with it")
    try:
        augmentation = Augmentation(copies=augment)
    except ValueError as error:
        raise CompressArgumentError(str(error)) from error
    out_dir = Path(out_dir)
    validate_compress(task, out_dir, teacher_dir=teacher_dir, settings=settings, work_dir=work_dir,
                      exit_pooling=exit_pooling, overwrite=overwrite, data=data)
    timings = {}
    started = time.time()
    teacher_config, teacher_label = read_teacher_config(teacher_dir)
    points = front_points(settings, teacher_config, teacher_label, num_events=budget.num_events)
    # a fraction naming the target adds no point, nor a cache directory of its own
    settings = replace(settings, front=tuple(point.fraction_asked for point in points[:-1]))
    if front_point is not None and front_point not in [point.name for point in points]:
        raise CompressArgumentError(f"--front-point {front_point}: not a point of this front "
                                    f"({', '.join(point.name for point in points)}); pass one of them")
    labelled_config = teacher_config if teacher_dir is not None else None  # the packaged MiniLM has no labels yet
    splits = load_compress_data(task, data, teacher_config=labelled_config, text_column=text_column,
                                text_pair_column=text_pair_column, label_column=label_column, seed=seed)
    unlabeled_rows, extra_key = None, f"-aug{augment}" if augment else ""
    if unlabeled is not None:
        # a pair task's unlabeled rows are pairs too (a built-in pair task names its second column text_pair)
        pairs = "text_pair" in splits["train"].column_names
        pair_column = (text_pair_column or "text_pair") if pairs else None
        try:
            unlabeled_rows = load_unlabeled(unlabeled, text_column=unlabeled_text_column or text_column,
                                            text_pair_column=pair_column)
        except (ValueError, FileNotFoundError, TypeError) as error:
            raise CompressArgumentError(f"--unlabeled-file: {' '.join(str(error).split())}") from error
        extra_key += f"-unl{unlabeled_fingerprint(unlabeled_rows)}"
    name = task if task is not None else f"{_data_name(data)}-{data_fingerprint(splits)}"
    if work_dir is None:
        teacher_key = "" if teacher_dir is None else f"-teacher{teacher_fingerprint(teacher_dir)}"
        work_dir = Path("work") / (default_work_name(name, budget, exit_pooling) + teacher_key)
        check_work_location(work_dir, out_dir, teacher_dir)
    work_dir = Path(work_dir)
    source = Path(teacher_dir) if teacher_dir else packaged_minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(source)
    check_teacher_tokenizer(tokenizer, teacher_config, teacher_label, source)
    tokenizer.padding_side = "right"  # the COST-EFF model's positions count from each row's start
    data, validation = prepare_data(splits, budget, tokenizer, seed)
    timings["data"] = time.time() - started

    if teacher_dir is None:
        teacher_dir = work_dir / "teacher"
        timings["teacher"] = finetune_teacher(source, data, teacher_dir, epochs=budget.teacher_epochs,
                                              lr=budget.teacher_lr, device=device, autocast=autocast)["seconds"]
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir, use_safetensors=True)
    distillation_info, labelled_data = None, data
    if extra_key:  # the teacher labels the extra rows; the TA (and, with extra_rows_for all, the rest) distil on them
        started = time.time()
        validation_keys = set(dev_inputs(splits["validation"])[0])
        data, distillation_info = distillation_rows(data, teacher, augmentation=augmentation,
                                                    unlabeled=unlabeled_rows, validation_keys=validation_keys,
                                                    max_length=budget.max_length, seed=seed, device=device)
        teacher.cpu()
        timings["extra rows"] = time.time() - started
        distillation_info["stages"] = "ta" if extra_rows_for == "ta" else "ta, slenderization, recovery"
    ta_dir = work_dir / f"ta{extra_key}"
    ta_record = distill_teaching_assistant(teacher_dir, data, ta_dir, hidden_epochs=budget.ta_hidden_epochs,
                                           prediction_epochs=budget.ta_prediction_epochs, lr=budget.ta_lr,
                                           exit_pooling=exit_pooling, device=device, autocast=autocast,
                                           temperature=budget.kd_temperature,
                                           early_exit_weight=budget.early_exit_weight)
    timings["teaching assistant"] = ta_record["seconds"]
    if extra_key and extra_rows_for == "ta":  # the student's stages distil on the labelled rows from this TA
        data, extra_key = labelled_data, extra_key + "-ta"
    variant_dir = work_dir / (settings.name + extra_key)
    inputs, labels = dev_inputs(validation)
    started = time.time()
    teacher_logits = hf_predict(teacher.eval(), tokenizer, inputs, 64, budget.max_length, device=device,
                                autocast=False)
    teacher_correct = teacher_logits.argmax(-1) == labels
    teacher_accuracy = teacher_correct.double().mean().item()
    timings["calibration"] = time.time() - started
    front, outcomes, previous, path_events = {}, {}, None, []
    for point in points:
        # without a front the target's stages keep the directories they always had (cached runs stay valid)
        point_dir = variant_dir / point.name if settings.front else variant_dir
        slender_record = slenderize_stage(
            ta_dir, data, point_dir / "slender", heads=point.heads, ffn=point.ffn,
            embedding_rank=point.embedding_rank, allocation=settings.allocation,
            calibrate_exits=settings.calibrate_exits, importance_batches=budget.importance_batches,
            distill_steps=budget.distill_steps, num_events=point.events if settings.front else budget.num_events,
            schedule=settings.schedule, event_steps=settings.event_steps, lr=budget.prune_lr, device=device,
            autocast=autocast, start_dir=previous,
        )
        previous = point_dir / "slender"
        recovered_dir = point_dir / recovered_name(budget)
        recovery_record = recover(ta_dir, point_dir / "slender", data, recovered_dir,
                                  hidden_epochs=budget.recovery_hidden_epochs,
                                  prediction_epochs=budget.recovery_prediction_epochs, lr=budget.recovery_lr,
                                  device=device, autocast=autocast, temperature=recovery_temperature(budget),
                                  early_exit_weight=budget.early_exit_weight)
        timings["slenderization"] = timings.get("slenderization", 0.0) + slender_record["seconds"]
        timings["recovery"] = timings.get("recovery", 0.0) + recovery_record["seconds"]
        started = time.time()
        model = from_pretrained(recovered_dir, device=device)
        reference = CostEffForSequenceClassification.from_pretrained(recovered_dir, use_safetensors=True)
        thresholds = quantile_thresholds(reference, tokenizer, inputs, max_length=budget.max_length, device=device)
        outcomes[point.name] = engine_sweep(model, inputs, labels, thresholds)
        timings["calibration"] += time.time() - started
        # a point's pruning events are those of every segment from the TA to it
        path_events = path_events + [{**event, "segment": point.name} for event in slender_record["events"]]
        slender_record = {**slender_record, "events": path_events}
        front[point.name] = {"point": point, "dir": recovered_dir, "slender_record": slender_record,
                             "recovery_record": recovery_record}

    if front_point is not None:
        joined = SweepOutcomes.concat({front_point: outcomes[front_point]})
    else:
        joined = SweepOutcomes.concat(outcomes) if settings.front else outcomes[points[-1].name]
    lengths = predict(lambda chunk: model.encode(chunk)[2], minibatches(inputs, 256))  # [N] tokens
    teacher_flops = row_flops(teacher.config, lengths, every_exit=False)  # [N] float64, the target_speedup base
    goal = {"max_drop": max_drop} if target_speedup is None else {"target_speedup": target_speedup}
    sweep = joined.rows()
    # written: chosen on every dev row, with a margin that cross-validation says holds; reported: each row scored by
    # a choice (margin included) made without it
    margin = None if max_drop is None else choose_margin(joined, reference_correct=teacher_correct, max_drop=max_drop,
                                                         seed=seed)
    chosen = pick_for_goal(sweep, reference_accuracy=teacher_accuracy,
                           full_depth_gflops=teacher_flops.sum().item() / 1e9,
                           margin=0.0 if margin is None else margin["margin"], **goal)
    out_of_sample = cross_validate(joined, reference_correct=teacher_correct, base_flops=teacher_flops, seed=seed,
                                   margin="auto", **goal)
    chosen_point = front[chosen.get("point", points[-1].name)]
    chosen["margin"] = margin
    chosen["why"] = goal_explanation(chosen, goal, teacher_accuracy, teacher_flops.sum().item() / 1e9, out_of_sample)
    if front_point is not None:
        chosen["why"] = f"--front-point {front_point} fixes the width; of its thresholds, {chosen['why']}"
    front_report = None
    if settings.front:
        front_report = summarize_front(front, outcomes, goal, teacher_correct, teacher_flops, chosen, seed)
    recovered_dir = chosen_point["dir"]
    slender_record, recovery_record = chosen_point["slender_record"], chosen_point["recovery_record"]
    sweep = outcomes[chosen_point["point"].name].rows()

    def fill(staging: Path) -> dict:
        shutil.copytree(recovered_dir, staging, ignore=shutil.ignore_patterns(RECORD), dirs_exist_ok=True)
        config_path = staging / "config.json"
        config = json.loads(config_path.read_text())
        config["entropy_threshold"] = chosen["entropy_threshold"]
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True))
        return write_report(
            staging, task=name, budget=budget, settings=settings, teacher=teacher, ta_dir=ta_dir,
            model_dir=staging, data=data, validation_inputs=inputs, labels=labels,
            teacher_accuracy=teacher_accuracy, ta_record=ta_record, recovery_record=recovery_record,
            slender_record=slender_record, sweep=sweep, chosen=chosen, out_of_sample=out_of_sample,
            goal=goal, front=front_report, distillation_rows=distillation_info, timings=timings,
        )

    return publish_output(out_dir, fill, overwrite=overwrite)


def _data_name(data) -> str:
    """A short name for user data in cache directories and reports: the training file's or directory's name."""
    if isinstance(data, Mapping) and not isinstance(data, DatasetDict):
        data = data["train"]
    if isinstance(data, (str, os.PathLike)):
        name = Path(data).stem if Path(data).is_file() else Path(data).name
        return "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "data"
    return "data"

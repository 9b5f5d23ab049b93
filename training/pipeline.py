"""The COST-EFF pipeline end to end: teacher -> TA -> slenderization -> recovery -> calibration -> report.

Source: COST-EFF (Shen et al., EMNLP 2022, arXiv 2210.15523) Sec. 3-4 and the authors' ``run.sh``
(GitHub sbwww/COST-EFF). Teacher and TA are cached per task and budget under the work directory and shared by
every compression setting; each setting caches its own slenderized and recovered checkpoints.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from costeff_fast.data import TASKS, load_task
from costeff_fast.inference import from_pretrained
from costeff_fast.modeling import CostEffForSequenceClassification

from .calibrate import pick_threshold, quantile_thresholds, threshold_sweep
from .report import write_report
from .slenderize import slenderize
from .stages import TrainingData, distill_teaching_assistant, finetune_teacher, recover
from .trainer import Stage, packaged_minilm_dir, tokenize_chunk, tokenize_splits


@dataclass(frozen=True)
class Budget:
    """How much data and how many epochs each stage gets.

    ``train_rows`` / ``eval_rows`` of None use the whole split. Epoch counts are per stage; pruning runs
    ``num_events`` events with ``importance_batches`` batches of importance and ``distill_steps`` steps of
    distillation from the TA after each (None: one event per removed head, as the paper).
    """

    name: str
    train_rows: int | None
    eval_rows: int | None
    max_length: int
    batch_size: int
    teacher_epochs: float
    teacher_lr: float
    ta_hidden_epochs: float
    ta_prediction_epochs: float
    ta_lr: float
    num_events: int | None
    importance_batches: int | None
    distill_steps: int
    prune_lr: float
    recovery_hidden_epochs: float
    recovery_prediction_epochs: float
    recovery_lr: float


BUDGETS = {
    # The paper's SST-2 schedule for 2 heads (run.sh): full data, 128 tokens, batch 32; teacher and TA 5 epochs
    # (TA: 5/3 hidden-only first), pruning spread over 5 epochs, recovery 10 hidden-only + 6 prediction epochs.
    "paper": Budget("paper", None, None, 128, 32, 5, 2e-5, 5 / 3, 5, 2e-5, None, None, 180, 1e-5, 10, 6, 3e-5),
    # About 30 minutes for rt on 2 CPU cores: 3,000 training rows, 64 tokens, fewer and shorter stages.
    "quick": Budget("quick", 3000, None, 64, 32, 1, 5e-5, 0.5, 1, 5e-5, 5, 8, 40, 3e-5, 1, 1, 5e-5),
    # The demo (`costeff-fast demo`): the quick recipe on 2,000 rows with shorter pruning and recovery.
    "demo": Budget("demo", 2000, None, 64, 32, 1, 5e-5, 0, 1, 5e-5, 4, 4, 25, 3e-5, 0.5, 1, 5e-5),
}


def default_work_name(task: str, budget: Budget, exit_pooling: str) -> str:
    """``<task>-<budget>-len<max_length>-<exit_pooling>``, plus ``-<field><value>`` for every other field that
    differs from the named budget (e.g. ``-train_rows1500``), so a changed budget never reuses stale stages."""
    name = f"{task}-{budget.name}-len{budget.max_length}-{exit_pooling}"
    base = BUDGETS.get(budget.name)
    if base is None:
        return name
    changed = [f for f in fields(Budget) if f.name not in ("name", "max_length")
               and getattr(budget, f.name) != getattr(base, f.name)]
    return name + "".join(f"-{f.name}{getattr(budget, f.name)}" for f in changed)


@dataclass(frozen=True)
class CompressionSettings:
    """Target widths of the COST-EFF model and how they are chosen (per layer: heads of size d, FFN)."""

    heads: int = 2
    ffn: int = 160
    embedding_rank: int | None = 128
    allocation: str = "uniform"
    calibrate_exits: bool = True

    @property
    def name(self) -> str:
        rank = "full" if self.embedding_rank is None else self.embedding_rank
        ablation = "" if self.calibrate_exits else "-lastexit"
        return f"h{self.heads}-f{self.ffn}-r{rank}-{self.allocation}{ablation}"


def prepare_data(task: str, budget: Budget, tokenizer, seed: int = 0) -> tuple[TrainingData, object]:
    """Load and tokenize a task under a budget; returns the training data and the raw validation split.

    The tokenizer's ``model_max_length`` is set to the budget's ``max_length`` so every checkpoint saved with
    it truncates inference inputs exactly as in training.
    """
    tokenizer.model_max_length = budget.max_length
    splits = load_task(task, max_train_rows=budget.train_rows, max_eval_rows=budget.eval_rows, seed=seed)
    names = list(splits["train"].features["label"].names)
    tokenized = tokenize_splits(splits, tokenizer, budget.max_length)
    data = TrainingData(tokenizer, tokenized["train"], tokenized["validation"], len(names), names,
                        batch_size=budget.batch_size, seed=seed)
    return data, splits["validation"]


def dev_inputs(validation) -> tuple[list, torch.Tensor]:
    """The validation split as engine inputs (strings or (text, text_pair) tuples) and gold labels."""
    texts = list(validation["text"])
    if "text_pair" in validation.column_names:
        texts = list(zip(texts, validation["text_pair"]))
    return texts, torch.tensor(list(validation["label"]))


def slenderize_stage(ta_dir: Path, data: TrainingData, out_dir: Path, settings: CompressionSettings,
                     budget: Budget) -> dict:
    """Step 3: exit-calibrated slenderization of a copy of the TA (see :func:`training.slenderize.slenderize`)."""
    stage = Stage(out_dir)
    if stage.done:
        return stage.load()
    started = time.time()
    torch.manual_seed(data.seed)
    ta = CostEffForSequenceClassification.from_pretrained(ta_dir).eval()
    student = copy.deepcopy(ta)
    events = []
    slenderize(
        student, ta, data.train_loader, heads=settings.heads, ffn=settings.ffn,
        embedding_rank=settings.embedding_rank, allocation=settings.allocation,
        calibrate_exits=settings.calibrate_exits, importance_batches=budget.importance_batches,
        distill_steps_between_events=budget.distill_steps, num_events=budget.num_events, lr=budget.prune_lr,
        on_event=lambda index, event, model, stats: events.append({"event": index, **asdict(event), **stats}),
    )
    student.save_pretrained(out_dir)
    data.tokenizer.save_pretrained(out_dir)
    return stage.finish({"events": events, "num_attention_heads": student.config.num_attention_heads,
                         "intermediate_size": student.config.intermediate_size}, started)


def compress(task: str, out_dir: Path, *, teacher_dir: Path | None = None, settings: CompressionSettings = CompressionSettings(),
             budget: str | Budget = "quick", work_dir: Path | None = None, max_drop: float = 0.01,
             exit_pooling: str = "mean", seed: int = 0) -> dict:
    """Run the whole COST-EFF pipeline and write the calibrated checkpoint and its report to ``out_dir``.

    Args:
        task: a built-in task (``rt``, ``boolq``, ``trec``).
        out_dir: receives the COST-EFF checkpoint (HF format, ``config.entropy_threshold`` calibrated),
            ``report.json`` and ``report.png``.
        teacher_dir: a fine-tuned HF BERT classifier; None fine-tunes the packaged MiniLM on ``task``.
        settings: target widths and allocation.
        budget: ``"quick"``, ``"paper"``, ``"demo"`` or a :class:`Budget`.
        work_dir: stage cache (default ``work/`` + :func:`default_work_name`); finished stages are reused.
        max_drop: calibration keeps accuracy within this fraction of the teacher's (0.01 = one point).
        exit_pooling: what the TA's (and so the COST-EFF model's) non-pooled exits read: ``"mean"`` (default:
            the packaged MiniLM's [CLS] is uninformative before layer 4) or ``"cls"`` (the paper).

    Returns:
        The report dict.

    Raises:
        ValueError: unknown task or budget, or a teacher whose labels do not match the task.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)}")
    if isinstance(budget, str):
        if budget not in BUDGETS:
            raise ValueError(f"budget must be one of {sorted(BUDGETS)}, got {budget!r}")
        budget = BUDGETS[budget]
    out_dir = Path(out_dir)
    work_dir = Path(work_dir or Path("work") / default_work_name(task, budget, exit_pooling))
    timings = {}
    started = time.time()
    source = Path(teacher_dir) if teacher_dir else packaged_minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(source)
    data, validation = prepare_data(task, budget, tokenizer, seed)
    timings["data"] = time.time() - started

    if teacher_dir is None:
        teacher_dir = work_dir / "teacher"
        timings["teacher"] = finetune_teacher(source, data, teacher_dir, epochs=budget.teacher_epochs,
                                              lr=budget.teacher_lr)["seconds"]
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir)
    if teacher.config.num_labels != data.num_labels:
        raise ValueError(f"the teacher has {teacher.config.num_labels} labels, task {task!r} has {data.num_labels}")
    ta_dir = work_dir / "ta"
    ta_record = distill_teaching_assistant(teacher_dir, data, ta_dir, hidden_epochs=budget.ta_hidden_epochs,
                                           prediction_epochs=budget.ta_prediction_epochs, lr=budget.ta_lr,
                                           exit_pooling=exit_pooling)
    timings["teaching assistant"] = ta_record["seconds"]
    variant_dir = work_dir / settings.name
    slender_record = slenderize_stage(ta_dir, data, variant_dir / "slender", settings, budget)
    timings["slenderization"] = slender_record["seconds"]
    recovered_dir = variant_dir / "recovered"
    recovery_record = recover(ta_dir, variant_dir / "slender", data, recovered_dir,
                              hidden_epochs=budget.recovery_hidden_epochs,
                              prediction_epochs=budget.recovery_prediction_epochs, lr=budget.recovery_lr)
    timings["recovery"] = recovery_record["seconds"]

    started = time.time()
    inputs, labels = dev_inputs(validation)
    teacher_logits = hf_predict(teacher.eval(), tokenizer, inputs, 64, budget.max_length)
    teacher_accuracy = (teacher_logits.argmax(-1) == labels).double().mean().item()
    model = from_pretrained(recovered_dir)
    reference = CostEffForSequenceClassification.from_pretrained(recovered_dir)
    thresholds = quantile_thresholds(reference, tokenizer, inputs, max_length=budget.max_length)
    sweep = threshold_sweep(model, inputs, labels, thresholds)
    chosen = pick_threshold(sweep, teacher_accuracy, max_drop)
    timings["calibration"] = time.time() - started

    if out_dir.exists():
        shutil.rmtree(out_dir)
    shutil.copytree(recovered_dir, out_dir, ignore=shutil.ignore_patterns("stage.json"))
    config_path = out_dir / "config.json"
    config = json.loads(config_path.read_text())
    config["entropy_threshold"] = chosen["entropy_threshold"]
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))

    report = write_report(
        out_dir, task=task, budget=budget, settings=settings, teacher=teacher, ta_dir=ta_dir, model_dir=out_dir,
        data=data, validation_inputs=inputs, labels=labels, teacher_accuracy=teacher_accuracy,
        ta_record=ta_record, recovery_record=recovery_record, slender_record=slender_record, sweep=sweep,
        chosen=chosen, max_drop=max_drop, timings=timings,
    )
    return report


@torch.inference_mode()
def hf_predict(model, tokenizer, inputs: list, batch_size: int, max_length: int) -> torch.Tensor:
    """HF baseline: tokenize each batch of strings or (text, text_pair) tuples with dynamic padding and run
    the classifier; logits ``[N, C]`` fp32."""
    out = []
    for start in range(0, len(inputs), batch_size):
        enc = tokenize_chunk(tokenizer, inputs[start : start + batch_size], max_length)
        out.append(model(**enc).logits.float())
    return torch.cat(out)


def budget_with(budget: str, **changes) -> Budget:
    """A named budget with some fields changed (for tests and smoke runs)."""
    return replace(BUDGETS[budget], **changes)

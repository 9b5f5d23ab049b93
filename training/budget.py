"""Training budgets: how much data, how many tokens, epochs, steps and which learning rate each stage gets.

Four named presets, :data:`PAPER`, :data:`STANDARD`, :data:`QUICK` and :data:`DEMO`, are collected in :data:`BUDGETS`;
:func:`budget_with` changes some fields of one. The paper's values follow COST-EFF (Shen et al., EMNLP 2022,
arXiv 2210.15523) Sec. 4.1 and the authors' ``run.sh`` for SST-2 (GitHub sbwww/COST-EFF).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace


@dataclass(frozen=True, kw_only=True)
class Budget:
    """How much data and how many epochs each stage gets (every field is a keyword).

    Teacher and TA are cached per task and budget (:func:`default_work_name`), so two budgets that differ in
    any field never share a stage.
    """

    name: str
    """Preset name (``"quick"``, ``"paper"``, ``"demo"`` or a new one); part of the work-directory name."""
    train_rows: int | None
    """Rows drawn from the task's training split (None: the whole split)."""
    eval_rows: int | None
    """Rows of the validation split used for checkpoint choice, calibration and the report (None: all)."""
    max_length: int
    """Tokens per row after truncation, in training and in the saved tokenizer (``model_max_length``)."""
    batch_size: int
    """Training rows per optimizer step, every stage."""
    teacher_epochs: float
    """Epochs of teacher fine-tuning (fractions allowed); used only when no teacher is given."""
    teacher_lr: float
    """Peak AdamW learning rate of teacher fine-tuning (linear warmup over 10 % of the steps, then decay)."""
    ta_hidden_epochs: float
    """Epochs of the TA's hidden-state-only distillation (0 skips the phase)."""
    ta_prediction_epochs: float
    """Epochs of the TA's exit (prediction) distillation; the best dev checkpoint is kept."""
    ta_lr: float
    """Peak AdamW learning rate of both TA phases (exit classifiers train at 20 times it)."""
    num_events: int | None
    """Pruning events (None: one per removed head, the paper)."""
    importance_batches: int | None
    """Training batches per Taylor-importance pass (None: one full epoch, the paper's code)."""
    distill_steps: int
    """Optimizer steps of distillation from the TA after each pruning event."""
    prune_lr: float
    """Constant AdamW learning rate of the distillation between pruning events."""
    recovery_hidden_epochs: float
    """Epochs of recovery's hidden-state-only distillation (0 skips the phase)."""
    recovery_prediction_epochs: float
    """Epochs of recovery's hidden-state plus exit-to-exit distillation; the best dev checkpoint is kept."""
    recovery_lr: float
    """Peak AdamW learning rate of both recovery phases."""
    kd_temperature: float
    """Distillation temperature T (> 0) of the exit (prediction) distillation in the TA and, unless
    ``recovery_kd_temperature`` is set, in recovery (the soft cross-entropy is scaled by T^2,
    :func:`~costeff_fast.training.losses.soft_cross_entropy`)."""
    early_exit_weight: float
    """Loss weight (>= 0) of exits 1..L-1 against the last exit in the TA's and recovery's exit distillation
    (the paper sums the exits with weight 1)."""
    group_by_length: bool
    """Batch training rows of similar length together (random mega-batches of up to 50 batches sorted by length,
    the ``transformers`` Trainer's ``group_by_length``, the batches then shuffled) and evaluate longest first:
    far less padding when lengths vary (1.8-1.9 times fewer tokens per training epoch on rt, trec and boolq).
    Off in every preset (their runs of record were batched at random)."""
    recovery_kd_temperature: float | None
    """Distillation temperature of recovery's exit distillation alone (None: ``kd_temperature``, the TA's), so
    the final exit-wise distillation can run at a temperature chosen on dev without retraining the TA."""

    def __post_init__(self):
        for name in ("teacher_epochs", "ta_prediction_epochs", "recovery_prediction_epochs"):
            if not 0 < getattr(self, name) < float("inf"):
                raise ValueError(f"{name} must be a finite number > 0, got {getattr(self, name)}; pass a positive "
                                 "number of epochs (fractions such as 0.25 are allowed)")
        for name in ("ta_hidden_epochs", "recovery_hidden_epochs"):
            if not 0 <= getattr(self, name) < float("inf"):
                raise ValueError(f"{name} must be a finite number >= 0 (0 skips the phase), got "
                                 f"{getattr(self, name)}")
        if not self.kd_temperature > 0:
            raise ValueError(f"kd_temperature must be > 0, got {self.kd_temperature}")
        if self.recovery_kd_temperature is not None and not self.recovery_kd_temperature > 0:
            raise ValueError(f"recovery_kd_temperature must be > 0 (or None: kd_temperature), got "
                             f"{self.recovery_kd_temperature}")
        if not self.early_exit_weight >= 0:
            raise ValueError(f"early_exit_weight must be >= 0, got {self.early_exit_weight}")


PAPER = Budget(
    # The paper's SST-2 schedule for 2 heads (run.sh): full data, 128 tokens, batch 32; teacher and TA 5 epochs
    # (TA: 5/3 hidden-only first), pruning spread over 5 epochs, recovery 10 hidden-only + 6 prediction epochs.
    name="paper", train_rows=None, eval_rows=None, max_length=128, batch_size=32,
    teacher_epochs=5, teacher_lr=2e-5,
    ta_hidden_epochs=5 / 3, ta_prediction_epochs=5, ta_lr=2e-5,
    num_events=None, importance_batches=None, distill_steps=180, prune_lr=1e-5,
    recovery_hidden_epochs=10, recovery_prediction_epochs=6, recovery_lr=3e-5,
    kd_temperature=1.0, early_exit_weight=1.0, group_by_length=False, recovery_kd_temperature=None,
)
"""The paper's SST-2 schedule for 2 heads (full data, 128 tokens)."""

QUICK = Budget(
    # About 25 minutes for rt on 2 CPU cores: 3,000 training rows, 64 tokens, fewer and shorter stages. 120
    # distillation steps after each pruning event (40 until 2026-12-07): three times as many lift the 1/8-encoder
    # student's exits 4-6 by 1.3-2.0 points on rt and 1.9-3.0 on trec (bench/results/gap-levers/).
    name="quick", train_rows=3000, eval_rows=None, max_length=64, batch_size=32,
    teacher_epochs=1, teacher_lr=5e-5,
    ta_hidden_epochs=0.5, ta_prediction_epochs=1, ta_lr=5e-5,
    num_events=5, importance_batches=8, distill_steps=120, prune_lr=3e-5,
    recovery_hidden_epochs=1, recovery_prediction_epochs=1, recovery_lr=5e-5,
    kd_temperature=1.0, early_exit_weight=1.0, group_by_length=False, recovery_kd_temperature=None,
)
"""About 25 minutes for rt on 2 CPU cores (the CLI's default)."""

DEMO = Budget(
    # The demo (`costeff-fast demo`): the quick recipe on 2,000 rows with shorter pruning and recovery.
    name="demo", train_rows=2000, eval_rows=None, max_length=64, batch_size=32,
    teacher_epochs=1, teacher_lr=5e-5,
    ta_hidden_epochs=0, ta_prediction_epochs=1, ta_lr=5e-5,
    num_events=4, importance_batches=4, distill_steps=25, prune_lr=3e-5,
    recovery_hidden_epochs=0.5, recovery_prediction_epochs=1, recovery_lr=5e-5,
    kd_temperature=1.0, early_exit_weight=1.0, group_by_length=False, recovery_kd_temperature=None,
)
"""The quick recipe on 2,000 rows with shorter pruning and recovery (``costeff-fast demo``)."""

STANDARD = Budget(
    # The full training split at the lengths rt and trec need (boolq: pass --max-length 256), a three-epoch
    # teacher, three epochs of exit distillation in the TA and six in recovery (the quick budget's single epoch
    # leaves the early exits barely confident; recovery was still gaining at three, and six lift every exit of
    # rt and trec by 0.2-1.3 points). Temperature 2 with early-exit weight 2 (each won alone on the quick budget's
    # trec) was level with 1 and 1 at this budget, so the paper's plain sum stays. rt on one CPU thread (two runs at
    # a time, AMD EPYC): teacher 35-42 min, TA about 71, slenderization 10 and recovery 41 with 60 distillation steps
    # per pruning event. Since 2026-12-07 it takes the paper's 180 (three times as many gained 1.3-3.0 points at the
    # quick budget; not yet measured at this one), so slenderization takes about three times as long. Since
    # 2026-12-08 recovery distils hidden states for the paper's 10 epochs before its exit epochs (1 before): the
    # 1/8-encoder student gained 0.5-0.7 points at exits 3-6 on rt and 0.4-0.7 on trec, which took each within one
    # point of its teacher at 1/13.7 (rt) and 1/19.7 (trec) of its FLOPs out of sample; recovery takes about twice
    # as long (rt: 50 instead of 24 minutes per point).
    name="standard", train_rows=None, eval_rows=None, max_length=64, batch_size=32,
    teacher_epochs=3, teacher_lr=5e-5,
    ta_hidden_epochs=0.5, ta_prediction_epochs=3, ta_lr=5e-5,
    num_events=5, importance_batches=16, distill_steps=180, prune_lr=3e-5,
    recovery_hidden_epochs=10, recovery_prediction_epochs=6, recovery_lr=5e-5,
    kd_temperature=1.0, early_exit_weight=1.0, group_by_length=False, recovery_kd_temperature=None,
)
"""Full data, 64 tokens, three epochs for the teacher and the TA's exit distillation, ten of hidden-state and six of
exit distillation in recovery (the runs of record)."""


def recovery_temperature(budget: Budget) -> float:
    """The temperature of ``budget``'s recovery exit distillation: ``recovery_kd_temperature``, else
    ``kd_temperature``."""
    return budget.kd_temperature if budget.recovery_kd_temperature is None else budget.recovery_kd_temperature


def recovered_name(budget: Budget) -> str:
    """The directory name of a point's recovered stage: ``recovered``, or ``recovered-T<t>`` when recovery distils
    at its own temperature ``t`` (``recovery_kd_temperature`` other than ``kd_temperature``), so recoveries at
    several temperatures share one teacher, TA and slenderized stage in one work directory."""
    temperature = recovery_temperature(budget)
    return "recovered" if temperature == budget.kd_temperature else f"recovered-T{temperature:g}"


BUDGETS: dict[str, Budget] = {budget.name: budget for budget in (PAPER, STANDARD, QUICK, DEMO)}
"""The named presets by name: ``"paper"``, ``"standard"``, ``"quick"``, ``"demo"``."""


def budget_with(budget: str, **changes) -> Budget:
    """The named budget ``budget`` with some fields changed (for tests, smoke runs and CLI overrides).

    Raises:
        KeyError: an unknown budget name.
        TypeError: a change names no field of :class:`Budget`.
    """
    return replace(BUDGETS[budget], **changes)


def default_work_name(task: str, budget: Budget, exit_pooling: str) -> str:
    """``<task>-<budget>-len<max_length>-<exit_pooling>``, plus ``-<field><value>`` for every other field that
    differs from the named budget (e.g. ``-train_rows1500``), so a changed budget never reuses stale stages."""
    name = f"{task}-{budget.name}-len{budget.max_length}-{exit_pooling}"
    base = BUDGETS.get(budget.name)
    if base is None:
        return name
    # recovery's own temperature names the recovered directory instead (recovered_name): the stages before it are
    # shared
    changed = [f for f in fields(Budget) if f.name not in ("name", "max_length", "recovery_kd_temperature")
               and getattr(budget, f.name) != getattr(base, f.name)]
    return name + "".join(f"-{f.name}{getattr(budget, f.name)}" for f in changed)

"""Pipeline stages: teacher fine-tuning, TA distillation, slenderization, recovery (COST-EFF steps 1-4).

Source: COST-EFF (Shen et al., EMNLP 2022, arXiv 2210.15523) Sec. 3.2-3.4 and Sec. 4.1. Each stage trains with
:func:`~costeff_fast.training.trainer.train`, writes an HF checkpoint directory (``save_pretrained`` +
tokenizer) and a ``stage.json`` record through :func:`~costeff_fast.training.stage_cache.run_stage`; a finished
stage is reused on rerun when it was built with the same parameters (its settings, its data's shape and the stage
it started from), and refused with :class:`~costeff_fast.training.stage_cache.StageMismatchError` otherwise.

Every stage takes ``device`` (``--device``: ``"auto"``, the default, is CUDA when available, else the CPU; see
:func:`~costeff_fast.training.trainer.resolve_device`) and ``autocast`` (bf16 autocast of the forward passes;
None, the default, is on for CUDA and off on the CPU; see :func:`~costeff_fast.training.trainer.resolve_autocast`).
Weights, optimizer state and losses stay fp32, and each stage moves its model back to the CPU before saving, so
the checkpoint and the record do not depend on where it trained. The device is resolved before the cache is
looked up, so an unavailable one is refused even when the stage is cached.
"""

from __future__ import annotations

import copy
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Literal

from torch import nn
from transformers import AutoModelForSequenceClassification

from costeff_fast.convert import from_encoder_classifier
from costeff_fast.modeling import CostEffForSequenceClassification

from .data import TrainingData
from .losses import check_distillation_pair, classification_loss, distillation_loss
from .prediction import exit_accuracies
from .slenderize import slenderize
from .stage_cache import run_stage, stage_digest
from .trainer import Device, epoch_steps, place_model, repeat_epochs, resolve_device, train


def train_epochs(model: nn.Module, data: TrainingData, loss_fn, *, epochs: float, lr: float, desc: str,
                 evaluate: Callable[[nn.Module], float] | None = None, exit_lr_scale: float = 1.0,
                 device: Device | None = None, autocast: bool | None = None) -> float | None:
    """:func:`~costeff_fast.training.trainer.train` for ``epochs`` passes (fractions allowed) over one shuffled
    train loader, linear warmup (10 %) and decay, evaluated once per epoch and at the end.

    Args:
        device: move ``model`` there first and train there (None: where it is); it stays there.
        autocast: bf16 autocast of the training forwards (None: on for CUDA); ``evaluate`` sets its own.

    Returns:
        The best ``evaluate`` metric, or None without ``evaluate``.
    """
    loader = data.train_loader()
    result = train(model, repeat_epochs(lambda: loader), loss_fn, steps=epoch_steps(epochs, len(loader)), lr=lr,
                   desc=desc, evaluate=evaluate, eval_every=len(loader), exit_lr_scale=exit_lr_scale,
                   device=device, autocast=autocast)
    return result.best_metric


def finetune_teacher(source_dir: Path, data: TrainingData, out_dir: Path, *, epochs: float = 1.0,
                     lr: float = 5e-5, device: Device = "auto", autocast: bool | None = None) -> dict:
    """Step 1: fine-tune an HF encoder (the packaged MiniLM: ``BertForSequenceClassification``) as the teacher
    (cross-entropy), on ``device`` with ``autocast`` (see the module docstring).

    Keeps the checkpoint with the best dev accuracy. Returns the stage record (``accuracy``, ``seconds``).

    Raises:
        ValueError: a ``device`` that :func:`~costeff_fast.training.trainer.resolve_device` refuses.
    """
    device = resolve_device(device)

    def build():
        model = AutoModelForSequenceClassification.from_pretrained(
            source_dir, use_safetensors=True, num_labels=data.num_labels,
            id2label=dict(enumerate(data.label_names)), label2id={n: i for i, n in enumerate(data.label_names)},
        )
        eval_loader = data.eval_loader()
        accuracy = train_epochs(model, data, classification_loss, epochs=epochs, lr=lr, desc="teacher",
                                evaluate=lambda m: exit_accuracies(m, eval_loader, autocast=autocast)[0],
                                device=device, autocast=autocast)
        return model.cpu(), {"accuracy": accuracy}

    params = {**data.params(), "source": stage_digest(source_dir), "epochs": epochs, "lr": lr}
    return run_stage(out_dir, build, tokenizer=data.tokenizer, seed=data.seed, params=params)


def distill_multi_exit(student: CostEffForSequenceClassification, teacher, data: TrainingData, *,
                       hidden_epochs: float, prediction_epochs: float, lr: float, kd_weight: float,
                       hidden_in_prediction: bool, temperature: float = 1.0, gradient_equilibrium: bool = True,
                       exit_lr_scale: float = 1.0, desc: str, device: Device | None = None,
                       autocast: bool | None = None, early_exit_weight: float = 1.0) -> list[float]:
    """Distill a multi-exit student from a teacher in two phases; keep the best mean-exit-accuracy weights.

    Phase 1 (``hidden_epochs``): MSE of all ``L + 1`` hidden states, padding masked. Phase 2
    (``prediction_epochs``): every exit's ``kd_weight * soft-CE(exit, teacher / T) + (1 - kd_weight) * CE``,
    plus the hidden MSE when ``hidden_in_prediction``, with gradient equilibrium between layers; exit heads
    learn at ``exit_lr_scale`` times ``lr`` (both phases: :func:`~costeff_fast.training.losses.distillation_loss`).
    Used for the TA (teacher = the fine-tuned BERT, COST-EFF step 2) and for recovery (teacher = the TA,
    step 4). The teacher is frozen (eval mode, ``requires_grad`` off); an HF teacher without token types
    (DistilBERT) is called without ``token_type_ids``.

    Args:
        early_exit_weight: weight of exits 1..L-1 against the last one in phase 2 (1: the paper's sum).
        device: move the student and the teacher there first (None: where the student is, the teacher moved
            to it); both stay there on return.
        autocast: bf16 autocast of every forward, training and evaluation (None: on for CUDA).

    Returns:
        Dev accuracy of every exit of the kept weights.

    Raises:
        ValueError: student and teacher differ in ``hidden_size``, ``num_hidden_layers`` or ``num_labels``; a
            ``device`` that :func:`~costeff_fast.training.trainer.resolve_device` refuses.
    """
    check_distillation_pair(student, teacher)
    device = place_model(student, device)
    place_model(teacher, device)
    teacher.eval()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    eval_loader = data.eval_loader()

    def mean_exit_accuracy(m) -> float:
        accuracies = exit_accuracies(m, eval_loader, autocast=autocast)
        return sum(accuracies) / len(accuracies)

    def hidden_loss(m, batch):
        return distillation_loss(m, teacher, batch, kd_weight=kd_weight, temperature=temperature, exits="none")

    def prediction_loss(m, batch):
        return distillation_loss(m, teacher, batch, kd_weight=kd_weight, temperature=temperature,
                                 hidden_weight=1.0 if hidden_in_prediction else 0.0, exits="all",
                                 gradient_equilibrium=gradient_equilibrium, early_exit_weight=early_exit_weight)

    if hidden_epochs > 0:
        train_epochs(student, data, hidden_loss, epochs=hidden_epochs, lr=lr, desc=f"{desc} hidden KD",
                     device=device, autocast=autocast)
    if prediction_epochs > 0:
        train_epochs(student, data, prediction_loss, epochs=prediction_epochs, lr=lr, desc=f"{desc} exit KD",
                     evaluate=mean_exit_accuracy, exit_lr_scale=exit_lr_scale, device=device, autocast=autocast)
    return exit_accuracies(student, eval_loader, autocast=autocast)


def distill_teaching_assistant(teacher_dir: Path, data: TrainingData, out_dir: Path, *, hidden_epochs: float = 1.0,
                               prediction_epochs: float = 1.0, lr: float = 5e-5, kd_weight: float = 0.5,
                               temperature: float = 1.0, exit_pooling: str = "cls", device: Device = "auto",
                               autocast: bool | None = None, early_exit_weight: float = 1.0) -> dict:
    """Step 2: a full-width multi-exit teaching assistant distilled from the teacher.

    The TA starts from :func:`costeff_fast.convert.from_encoder_classifier` (encoder copied, last
    exit = the teacher's head: BERT's pooler and classifier, RoBERTa's/ELECTRA's dense head, DistilBERT's
    ``pre_classifier``; the other exits read [CLS] or the token mean, ``exit_pooling``), then
    :func:`distill_multi_exit` from the teacher: hidden states, then every exit against the teacher's logits
    plus hard labels, with gradient equilibrium; on ``device`` with ``autocast`` (see the module docstring).

    Returns:
        The stage record: ``exit_accuracies`` (one per exit), ``mean_accuracy``, ``seconds``.

    Raises:
        ValueError: a ``device`` that :func:`~costeff_fast.training.trainer.resolve_device` refuses.
    """
    device = resolve_device(device)

    def build():
        teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir, use_safetensors=True)
        ta = from_encoder_classifier(teacher, exit_pooling=exit_pooling)
        accuracies = distill_multi_exit(ta, teacher, data, hidden_epochs=hidden_epochs,
                                        prediction_epochs=prediction_epochs, lr=lr, kd_weight=kd_weight,
                                        hidden_in_prediction=False, temperature=temperature, exit_lr_scale=20.0,
                                        desc="TA", device=device, autocast=autocast,
                                        early_exit_weight=early_exit_weight)
        return ta.cpu(), {"exit_accuracies": accuracies, "mean_accuracy": sum(accuracies) / len(accuracies)}

    params = {**data.params(), "teacher": stage_digest(teacher_dir), "hidden_epochs": hidden_epochs,
              "prediction_epochs": prediction_epochs, "lr": lr, "kd_weight": kd_weight, "temperature": temperature,
              "exit_pooling": exit_pooling, "early_exit_weight": early_exit_weight}
    return run_stage(out_dir, build, tokenizer=data.tokenizer, seed=data.seed, params=params)


def slenderize_stage(ta_dir: Path, data: TrainingData, out_dir: Path, *, heads: int, ffn: int,
                     embedding_rank: int | None, allocation: Literal["uniform", "global"] = "uniform",
                     calibrate_exits: bool = True, importance_batches: int | None = None,
                     distill_steps: int = 100, num_events: int | None = None, schedule: str = "linear",
                     event_steps: str = "even", lr: float = 2e-5, device: Device = "auto",
                     autocast: bool | None = None, start_dir: Path | None = None) -> dict:
    """Step 3: exit-calibrated slenderization of a copy of the TA (COST-EFF Sec. 3.2-3.3), by
    :func:`~costeff_fast.training.slenderize.slenderize`.

    Args:
        start_dir: the checkpoint to narrow further (a wider point of a front, :mod:`~.front`); None: a copy of
            the TA. The TA is the distillation teacher either way.
        heads, ffn, embedding_rank, allocation, calibrate_exits: the targets and how widths are chosen.
        importance_batches, distill_steps, num_events, schedule, lr: see ``slenderize`` (``distill_steps`` is
            its ``distill_steps_between_events``).
        event_steps: ``slenderize``'s ``event_steps_allocation``.
        device, autocast: where the importance passes and the distillation run, and whether their forwards
            use bf16 autocast (see the module docstring).

    Returns:
        The stage record: ``events`` (one dict per pruning event: ``event``, ``heads``, ``ffn``,
        ``embedding_rank``, ``importance_loss``, ``distill_steps``, ``distill_loss``, and ``before_distill`` /
        ``after_distill``: ``{"exit_accuracies": [...]}`` on the dev rows right after the event's pruning and
        after its distillation steps, one accuracy per exit; two passes over the dev rows per event, counted in
        the stage's ``seconds``), the per-layer ``num_attention_heads`` and ``intermediate_size`` reached, ``seconds``.

    Raises:
        ValueError: a ``device`` that :func:`~costeff_fast.training.trainer.resolve_device` refuses.
    """
    device = resolve_device(device)

    def measure(model) -> dict:  # no wall time in it: the record names the stage (stage_digest), so it must repeat
        return {"exit_accuracies": exit_accuracies(model, data.eval_loader(), autocast=autocast)}

    def build():
        ta = CostEffForSequenceClassification.from_pretrained(ta_dir, use_safetensors=True).eval()
        student = (copy.deepcopy(ta) if start_dir is None
                   else CostEffForSequenceClassification.from_pretrained(start_dir, use_safetensors=True))
        events = []
        slenderize(
            student, ta, data.train_loader, heads=heads, ffn=ffn, embedding_rank=embedding_rank,
            allocation=allocation, calibrate_exits=calibrate_exits, importance_batches=importance_batches,
            distill_steps_between_events=distill_steps, num_events=num_events, schedule=schedule,
            event_steps_allocation=event_steps, lr=lr,
            device=device,
            autocast=autocast,
            on_event=lambda index, event, model, stats: events.append({"event": index, **asdict(event), **stats}),
            measure=measure,
        )
        return student.cpu(), {"events": events, "num_attention_heads": student.config.num_attention_heads,
                         "intermediate_size": student.config.intermediate_size}

    params = {**data.params(), "ta": stage_digest(ta_dir), "heads": heads, "ffn": ffn,
              "embedding_rank": embedding_rank, "allocation": allocation, "calibrate_exits": calibrate_exits,
              "importance_batches": importance_batches, "distill_steps": distill_steps, "num_events": num_events,
              "lr": lr}
    if start_dir is not None:  # absent otherwise, so stages cached before fronts existed are still found
        params["start"] = stage_digest(start_dir)
    if schedule != "linear":  # likewise: stages cached before the schedule had a shape are linear ones
        params["schedule"] = schedule
    if event_steps != "even":
        params["event_steps"] = event_steps
    return run_stage(out_dir, build, tokenizer=data.tokenizer, seed=data.seed, params=params)


def recover(ta_dir: Path, slender_dir: Path, data: TrainingData, out_dir: Path, *, hidden_epochs: float,
            prediction_epochs: float, lr: float = 3e-5, temperature: float = 1.0, device: Device = "auto",
            autocast: bool | None = None, early_exit_weight: float = 1.0) -> dict:
    """Step 4: recover the slenderized model by distillation from the TA (COST-EFF Sec. 3.4).

    Hidden states only, then hidden states plus exit-to-exit predictions (every student exit against the
    TA's same exit, pure KD); keeps the best checkpoint by dev accuracy averaged over exits. Runs on ``device``
    with ``autocast`` (see the module docstring).

    Returns:
        The stage record: ``exit_accuracies`` (one per exit), ``mean_accuracy``, ``seconds``.

    Raises:
        ValueError: a ``device`` that :func:`~costeff_fast.training.trainer.resolve_device` refuses.
    """
    device = resolve_device(device)

    def build():
        ta = CostEffForSequenceClassification.from_pretrained(ta_dir, use_safetensors=True)
        student = CostEffForSequenceClassification.from_pretrained(slender_dir, use_safetensors=True)
        accuracies = distill_multi_exit(student, ta, data, hidden_epochs=hidden_epochs,
                                        prediction_epochs=prediction_epochs, lr=lr, kd_weight=1.0,
                                        hidden_in_prediction=True, temperature=temperature, desc="recovery",
                                        device=device, autocast=autocast, early_exit_weight=early_exit_weight)
        return student.cpu(), {"exit_accuracies": accuracies, "mean_accuracy": sum(accuracies) / len(accuracies)}

    params = {**data.params(), "ta": stage_digest(ta_dir), "slender": stage_digest(slender_dir),
              "hidden_epochs": hidden_epochs, "prediction_epochs": prediction_epochs, "lr": lr,
              "temperature": temperature, "early_exit_weight": early_exit_weight}
    return run_stage(out_dir, build, tokenizer=data.tokenizer, seed=data.seed, params=params)

"""Pipeline stages before slenderization: teacher fine-tuning and teaching-assistant distillation.

Source: COST-EFF (Shen et al., EMNLP 2022, arXiv 2210.15523) Sec. 3.4 and Sec. 4.1 (training steps 1-2).
Each stage writes an HF checkpoint directory (``save_pretrained`` + tokenizer) and a ``stage.json``; a
finished stage is reused on rerun.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification

from costeff_fast.modeling import CostEffForSequenceClassification

from .losses import hidden_mse, multi_exit_loss
from .trainer import Stage, exit_accuracies, make_loader, model_inputs, train


@dataclass
class TrainingData:
    """Tokenized train/validation splits and their tokenizer, shared by all stages of one run."""

    tokenizer: object
    train: object  # datasets.Dataset with input_ids, attention_mask, token_type_ids, labels
    validation: object
    num_labels: int
    label_names: list[str]
    batch_size: int = 32
    seed: int = 0

    def train_loader(self):
        return make_loader(self.train, self.tokenizer, self.batch_size, shuffle=True, seed=self.seed)

    def eval_loader(self):
        return make_loader(self.validation, self.tokenizer, 128, shuffle=False)


def finetune_teacher(source_dir: Path, data: TrainingData, out_dir: Path, *, epochs: float = 1.0,
                     lr: float = 5e-5) -> dict:
    """Step 1: fine-tune an HF BERT encoder as a ``BertForSequenceClassification`` teacher.

    Keeps the checkpoint with the best dev accuracy. Returns the stage record (``accuracy``, ``seconds``).
    """
    stage = Stage(out_dir)
    if stage.done:
        return stage.load()
    started = time.time()
    torch.manual_seed(data.seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        source_dir, num_labels=data.num_labels,
        id2label=dict(enumerate(data.label_names)), label2id={n: i for i, n in enumerate(data.label_names)},
    )
    eval_loader = data.eval_loader()

    def loss_fn(m, batch):
        return F.cross_entropy(m(**model_inputs(batch)).logits, batch["labels"])

    accuracy = train(model, data.train_loader(), loss_fn, epochs=epochs, lr=lr, desc="teacher",
                     evaluate=lambda m: exit_accuracies(m, eval_loader)[0])
    model.save_pretrained(out_dir)
    data.tokenizer.save_pretrained(out_dir)
    return stage.finish({"accuracy": accuracy}, started)


def teacher_outputs(teacher, inputs: dict, hidden: bool) -> tuple[tuple | None, torch.Tensor | tuple]:
    """Hidden states (or None) and logits of a frozen teacher: an HF classifier gives its final logits
    (distilled into every exit), a multi-exit TA gives one logits tensor per exit (exit-to-exit KD)."""
    with torch.no_grad():
        out = teacher(**inputs, output_hidden_states=hidden)
    logits = getattr(out, "exit_logits", None) or out.logits
    return (out.hidden_states if hidden else None), logits


def distill_multi_exit(student: CostEffForSequenceClassification, teacher, data: TrainingData, *,
                       hidden_epochs: float, prediction_epochs: float, lr: float, kd_weight: float,
                       hidden_in_prediction: bool, temperature: float = 1.0, gradient_equilibrium: bool = True,
                       exit_lr_scale: float = 1.0, desc: str) -> list[float]:
    """Distill a multi-exit student from a teacher in two phases; keep the best mean-exit-accuracy weights.

    Phase 1 (``hidden_epochs``): MSE of all ``L + 1`` hidden states, padding masked. Phase 2
    (``prediction_epochs``): every exit's ``kd_weight * soft-CE(exit, teacher / T) + (1 - kd_weight) * CE``,
    plus the hidden MSE when ``hidden_in_prediction``, with gradient equilibrium between layers; exit heads
    learn at ``exit_lr_scale`` times ``lr``. Used for the
    TA (teacher = the fine-tuned BERT, COST-EFF step 2) and for recovery (teacher = the TA, step 4).

    Returns:
        Dev accuracy of every exit of the kept weights.
    """
    teacher.eval()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    eval_loader = data.eval_loader()

    def mean_exit_accuracy(m) -> float:
        accuracies = exit_accuracies(m, eval_loader)
        return sum(accuracies) / len(accuracies)

    def hidden_loss(m, batch):
        inputs = model_inputs(batch)
        target, _ = teacher_outputs(teacher, inputs, hidden=True)
        return hidden_mse(m(**inputs, output_hidden_states=True).hidden_states, target, batch["attention_mask"])

    def prediction_loss(m, batch):
        inputs = model_inputs(batch)
        target_hidden, target_logits = teacher_outputs(teacher, inputs, hidden=hidden_in_prediction)
        out = m(**inputs, output_hidden_states=hidden_in_prediction, gradient_equilibrium=gradient_equilibrium)
        loss = multi_exit_loss(out.exit_logits, batch["labels"], target_logits, kd_weight=kd_weight,
                               temperature=temperature)
        if hidden_in_prediction:
            loss = loss + hidden_mse(out.hidden_states, target_hidden, batch["attention_mask"])
        return loss

    if hidden_epochs > 0:
        train(student, data.train_loader(), hidden_loss, epochs=hidden_epochs, lr=lr, desc=f"{desc} hidden KD")
    if prediction_epochs > 0:
        train(student, data.train_loader(), prediction_loss, epochs=prediction_epochs, lr=lr,
              desc=f"{desc} exit KD", evaluate=mean_exit_accuracy, exit_lr_scale=exit_lr_scale)
    return exit_accuracies(student, eval_loader)


def distill_teaching_assistant(teacher_dir: Path, data: TrainingData, out_dir: Path, *, hidden_epochs: float = 1.0,
                               prediction_epochs: float = 1.0, lr: float = 5e-5, kd_weight: float = 0.5,
                               temperature: float = 1.0, exit_pooling: str = "cls") -> dict:
    """Step 2: a full-width multi-exit teaching assistant distilled from the teacher.

    The TA starts from :meth:`CostEffForSequenceClassification.from_bert` (encoder copied, last exit =
    the teacher's pooler and classifier; the other exits read [CLS] or the token mean, ``exit_pooling``), then
    :func:`distill_multi_exit` from the teacher: hidden states, then every exit against the teacher's logits
    plus hard labels, with gradient equilibrium.

    Returns:
        The stage record: ``exit_accuracies`` (one per exit), ``mean_accuracy``, ``seconds``.
    """
    stage = Stage(out_dir)
    if stage.done:
        return stage.load()
    started = time.time()
    torch.manual_seed(data.seed)
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir)
    ta = CostEffForSequenceClassification.from_bert(teacher, exit_pooling=exit_pooling)
    accuracies = distill_multi_exit(ta, teacher, data, hidden_epochs=hidden_epochs,
                                    prediction_epochs=prediction_epochs, lr=lr, kd_weight=kd_weight,
                                    hidden_in_prediction=False, temperature=temperature, exit_lr_scale=20.0,
                                    desc="TA")
    ta.save_pretrained(out_dir)
    data.tokenizer.save_pretrained(out_dir)
    return stage.finish({"exit_accuracies": accuracies, "mean_accuracy": sum(accuracies) / len(accuracies)}, started)


def recover(ta_dir: Path, slender_dir: Path, data: TrainingData, out_dir: Path, *, hidden_epochs: float,
            prediction_epochs: float, lr: float = 3e-5, temperature: float = 1.0) -> dict:
    """Step 4: recover the slenderized model by distillation from the TA (COST-EFF Sec. 3.4).

    Hidden states only, then hidden states plus exit-to-exit predictions (every student exit against the
    TA's same exit, pure KD); keeps the best checkpoint by dev accuracy averaged over exits.
    """
    stage = Stage(out_dir)
    if stage.done:
        return stage.load()
    started = time.time()
    torch.manual_seed(data.seed)
    ta = CostEffForSequenceClassification.from_pretrained(ta_dir)
    student = CostEffForSequenceClassification.from_pretrained(slender_dir)
    accuracies = distill_multi_exit(student, ta, data, hidden_epochs=hidden_epochs,
                                    prediction_epochs=prediction_epochs, lr=lr, kd_weight=1.0,
                                    hidden_in_prediction=True, temperature=temperature, desc="recovery")
    student.save_pretrained(out_dir)
    data.tokenizer.save_pretrained(out_dir)
    return stage.finish({"exit_accuracies": accuracies, "mean_accuracy": sum(accuracies) / len(accuracies)}, started)

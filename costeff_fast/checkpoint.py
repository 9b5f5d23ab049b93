"""Strict loading of a COST-EFF checkpoint directory: config, weights and tokenizer, each failure named.

A checkpoint is what ``CostEffForSequenceClassification.save_pretrained`` and ``tokenizer.save_pretrained``
write: ``config.json``, ``model.safetensors`` and the tokenizer files. Loading here is strict where Hugging Face's
``from_pretrained`` is lenient: a weight that is missing, unexpected, of another shape or not finite is an error
naming the file and the tensors (never a silently re-initialised layer), only safetensors are read (nothing is
unpickled), and a config or tokenizer that cannot serve the weights is refused with the file and the field.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import AutoTokenizer

from .config import CostEffConfig, check_format_version
from .modeling import CostEffForSequenceClassification

WEIGHTS_NAME = "model.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")
_SHOWN = 5  # tensor names shown per kind of mismatch


class CheckpointError(ValueError):
    """A checkpoint file that cannot be loaded as it is; the message names the file, the field or tensors, and
    the fix."""


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def load_config(directory: str | Path) -> CostEffConfig:
    """Read and check ``directory/config.json``.

    Returns:
        The :class:`~costeff_fast.config.CostEffConfig` (its own checks ran: per-layer lists of
        ``num_hidden_layers`` entries, widths and sizes >= 1, a finite threshold).

    Raises:
        FileNotFoundError: no ``config.json``.
        CheckpointError: not JSON, not an object, another ``model_type``, a ``format_version`` newer than this
            library reads (the fix: upgrade costeff_fast; a config without the field is version 1), or a field the
            config refuses (the message names the file and repeats the config's reason).
    """
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; pass a directory written by save_pretrained")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: not valid JSON ({error}); save the model again with save_pretrained") from error
    if not isinstance(values, dict):
        raise CheckpointError(f"{path}: holds a JSON {type(values).__name__}, not an object; save the model again")
    model_type = values.get("model_type")
    if model_type != CostEffConfig.model_type:
        raise CheckpointError(
            f"{path}: model_type {model_type!r} is not a COST-EFF model; convert it with "
            "costeff_fast.convert.from_encoder_classifier or compress it with `costeff-fast compress`"
        )
    try:
        check_format_version(values.get("format_version", 1))  # first: a newer format's fields may mean other things
        return CostEffConfig.from_dict(values)
    except (ValueError, TypeError, KeyError, IndexError) as error:
        raise CheckpointError(f"{path}: {error}") from error


def load_weights(directory: str | Path, model: CostEffForSequenceClassification) -> None:
    """Load ``directory/model.safetensors`` into ``model`` strictly (in place, cast to the model's dtypes).

    Raises:
        FileNotFoundError: no ``model.safetensors`` (the message says when only a pickle file is there: it is
            never loaded).
        CheckpointError: the file is truncated or corrupt; tensors are missing, unexpected or of another shape
            than ``config.json`` implies; a tensor holds NaN or inf.
    """
    directory = Path(directory)
    path = directory / WEIGHTS_NAME
    if not path.is_file():
        pickles = sorted(p.name for p in directory.glob("*.bin"))
        hint = (f"; {', '.join(pickles)} is a pickle file, which is never loaded: save the model again with "
                "save_pretrained(safe_serialization=True)") if pickles else "; save the model with save_pretrained"
        raise FileNotFoundError(f"{path} not found{hint}")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path}: not a readable safetensors file ({error}); it is truncated or corrupt, "
                              "save the model again") from error
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    reshaped = sorted(f"{name} {tuple(state[name].shape)} (config: {tuple(expected[name].shape)})"
                      for name in set(state) & set(expected) if state[name].shape != expected[name].shape)
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensor(s): {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} tensor(s): {_names(unexpected)}")
    if reshaped:
        problems.append(f"{len(reshaped)} tensor(s) of another shape than config.json implies: {_names(reshaped)}")
    if problems:
        raise CheckpointError(f"{path}: {'; '.join(problems)}; the weights do not match {directory / 'config.json'}, "
                              "save both again with save_pretrained")
    non_finite = sorted(name for name, tensor in state.items()
                        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()))
    if non_finite:
        raise CheckpointError(f"{path}: NaN or inf in {len(non_finite)} tensor(s): {_names(non_finite)}; every logit "
                              "would be NaN, retrain or restore the weights")
    model.load_state_dict(state, strict=True)


def load_tokenizer(directory: str | Path, config: CostEffConfig):
    """The checkpoint's fast tokenizer, or None when the directory has no tokenizer files.

    Raises:
        CheckpointError: the tokenizer files cannot be loaded (corrupt JSON, missing vocabulary), or the tokenizer
            knows more tokens than the model's ``vocab_size`` (their ids would index past the embedding).
    """
    directory = Path(directory)
    present = [name for name in TOKENIZER_FILES if (directory / name).is_file()]
    if not present:
        return None
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory)
    except Exception as error:  # tokenizers/transformers raise many types (JSON, OS, Exception) for bad files
        reason = " ".join(str(error).split())[:300] or type(error).__name__
        raise CheckpointError(f"{directory}: tokenizer files {', '.join(present)} cannot be loaded "
                              f"({type(error).__name__}: {reason}); save the tokenizer again with "
                              "tokenizer.save_pretrained") from error
    if len(tokenizer) > config.vocab_size:
        raise CheckpointError(f"{directory}: the tokenizer has {len(tokenizer)} tokens but config.json's vocab_size is "
                              f"{config.vocab_size}; ids from {config.vocab_size} on would index past the embedding, "
                              "save the matching tokenizer")
    return tokenizer


def load_model(directory: str | Path, config: CostEffConfig | None = None) -> CostEffForSequenceClassification:
    """The reference model of a checkpoint, loaded strictly, in eval mode (fp32 weights on the CPU).

    Args:
        directory: the checkpoint directory.
        config: a config to use instead of ``directory/config.json`` (e.g. one the Auto classes read and the
            caller changed); the weights must still match it exactly.

    Raises:
        FileNotFoundError, CheckpointError: see :func:`load_config` and :func:`load_weights`.
    """
    if config is None:
        config = load_config(directory)
    model = CostEffForSequenceClassification(config)
    load_weights(directory, model)
    return model.eval()

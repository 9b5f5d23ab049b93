"""Stage caching: a pipeline stage runs once; its directory keeps the checkpoint and a ``stage.json`` record.

A rerun of the pipeline finds ``stage.json`` and returns the record without training, so an interrupted run
resumes after its last finished stage and several compression settings share one teacher and one TA. The record
keeps the parameters the stage was built with (its budget fields, its data's shape and a digest of the stage it
started from), and a cached stage is reused only for the same parameters: a changed budget, flag or upstream
stage in the same work directory is refused instead of silently reusing a stage built another way.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Callable, Mapping

import torch

RECORD = "stage.json"
"""Name of the record file; it is written last, so its presence means the stage finished."""


class StageMismatchError(ValueError):
    """A cached stage was built with other parameters than the run asks for (a changed budget or flag, or a
    rebuilt upstream stage, in the same work directory)."""


def stage_digest(directory: Path | str) -> str | None:
    """Sixteen hex digits naming a finished stage by its record (``stage.json`` without its wall time), or a
    checkpoint directory without one (a user's teacher, the packaged MiniLM) by the bytes of its ``config.json``
    and ``*.safetensors`` files; None when neither exists.

    Hard-linked or copied stages, and a seeded stage rebuilt to the same result, get the same digest; a stage
    rebuilt to another result, or a checkpoint retrained in place, gets a new one.
    """
    directory = Path(directory)
    record = directory / RECORD
    if record.is_file():
        fields = {k: v for k, v in json.loads(record.read_text()).items() if k != "seconds"}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    config = directory / "config.json"
    if not config.is_file():
        return None
    digest = hashlib.sha256(config.read_bytes())
    for weights in sorted(directory.glob("*.safetensors")):
        digest.update(weights.name.encode())
        with weights.open("rb") as stream:
            while block := stream.read(1 << 22):
                digest.update(block)
    return digest.hexdigest()[:16]


def _check_params(directory: Path, stored: dict | None, wanted: dict | None) -> None:
    if wanted is None:
        return
    if stored is None:
        raise StageMismatchError(f"{directory} was built by an older version that did not record its parameters: "
                                 f"delete {directory} to rebuild it, or pass another --work-dir")
    differing = sorted(key for key in stored.keys() | wanted.keys() if stored.get(key) != wanted.get(key))
    if differing:
        changes = ", ".join(f"{key}={stored.get(key)!r} (this run: {wanted.get(key)!r})" for key in differing)
        raise StageMismatchError(f"{directory} was built with {changes}: pass another --work-dir, or delete "
                                 f"{directory} to rebuild it")


def run_stage(directory: Path | str, build: Callable[[], tuple[object, dict]], *, tokenizer, seed: int,
              params: Mapping[str, object] | None = None) -> dict:
    """Return the stage's record, running ``build`` first unless ``directory`` already holds one.

    When not cached: seed torch with ``seed``, call ``build() -> (model, info)``, save the model and the
    tokenizer (``save_pretrained``) to ``directory``, then write ``stage.json`` with ``info``, ``params``
    (with ``seed`` added; absent when ``params`` is None) and ``seconds`` (wall time of the stage, rounded to
    0.1 s).

    Args:
        directory: the stage's output directory (created when missing).
        build: trains the stage; ``info`` must be JSON-serializable.
        tokenizer: saved next to the checkpoint so it loads on its own.
        seed: ``torch.manual_seed`` before ``build``.
        params: everything the stage's result depends on (JSON values); a cached record must hold the same.

    Returns:
        The record: ``info``, ``params`` and ``seconds`` (the stored record on a cache hit, ``build`` not
        called).

    Raises:
        StageMismatchError: ``directory`` holds a record built with other ``params``, or (when ``params`` is
            given) a record without them, written by an older version.
    """
    directory = Path(directory)
    record = directory / RECORD
    wanted = None if params is None else json.loads(json.dumps({**params, "seed": seed}))
    if record.is_file():
        stored = json.loads(record.read_text())
        _check_params(directory, stored.get("params"), wanted)
        return stored
    started = time.time()
    torch.manual_seed(seed)
    model, info = build()
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    info = {**info, **({} if wanted is None else {"params": wanted}), "seconds": round(time.time() - started, 1)}
    record.write_text(json.dumps(info, indent=2))
    return info

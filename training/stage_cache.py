"""Stage caching: a pipeline stage runs once; its directory keeps the checkpoint and a ``stage.json`` record.

A rerun of the pipeline finds ``stage.json`` and returns the record without training, so an interrupted run
resumes after its last finished stage and several compression settings share one teacher and one TA. The record
keeps the parameters the stage was built with (its budget fields, its data's shape and a digest of the stage it
started from), and a cached stage is reused only for the same parameters: a changed budget, flag or upstream
stage in the same work directory is refused instead of silently reusing a stage built another way.

A stage killed before its record is written keeps its training progress under ``<stage>/partial``
(:mod:`~costeff_fast.training.resume`): run again with the same parameters, it continues from its last save
(at most ten minutes of training lost) instead of starting over.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Callable, Mapping

import torch

from .resume import DEFAULT_EVERY_SECONDS, StageMismatchError, exclusive, resumable, write_json_atomic

RECORD = "stage.json"
"""Name of the record file; it is written last, so its presence means the stage finished."""

PARTIAL = "partial"
"""Subdirectory of an unfinished stage: its ``params.json`` and the progress of its training calls
(:mod:`~costeff_fast.training.resume`); removed once the stage's record is written."""


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
              params: Mapping[str, object] | None = None,
              checkpoint_seconds: float = DEFAULT_EVERY_SECONDS) -> dict:
    """Return the stage's record, running ``build`` first unless ``directory`` already holds one.

    When not cached: seed torch with ``seed``, call ``build() -> (model, info)`` inside
    :func:`~costeff_fast.training.resume.resumable` ``(directory / "partial")``, save the model and the
    tokenizer (``save_pretrained``) to ``directory``, write ``stage.json`` with ``info``, ``params`` (with
    ``seed`` added; absent when ``params`` is None) and ``seconds`` (training wall time in seconds, rounded to
    0.1; a resumed stage adds its earlier runs up to their last progress save), then remove ``partial``.
    ``partial`` first records ``params``; a later run with other parameters is refused rather than resumed
    from it. A process building the stage holds a lock on ``partial``; a second one asking for the same stage
    waits, then returns the record the first wrote.

    Args:
        directory: the stage's output directory (created when missing).
        build: trains the stage; ``info`` must be JSON-serializable.
        tokenizer: saved next to the checkpoint so it loads on its own.
        seed: ``torch.manual_seed`` before ``build``.
        params: everything the stage's result depends on (JSON values); a cached record must hold the same.
        checkpoint_seconds: wall time between progress saves of a running training call.

    Returns:
        The record: ``info``, ``params`` and ``seconds`` (the stored record on a cache hit, ``build`` not
        called).

    Raises:
        StageMismatchError: ``directory`` holds a record built with other ``params``, or (when ``params`` is
            given) a record without them, written by an older version; or an unfinished run there (its
            ``partial``) had other ``params``.
            Also a saved training call that does not fit this run's code (see
            :func:`~costeff_fast.training.trainer.train`).
    """
    directory = Path(directory)
    record = directory / RECORD
    wanted = None if params is None else json.loads(json.dumps({**params, "seed": seed}))
    if not record.is_file():
        with exclusive(directory / PARTIAL) as partial:
            if not record.is_file():  # else another run finished the stage while this one waited
                _claim_partial(partial, wanted)
                torch.manual_seed(seed)
                with resumable(partial, every_seconds=checkpoint_seconds) as session:
                    model, info = build()
                    seconds = round(session.seconds(), 1)
                model.save_pretrained(directory)
                tokenizer.save_pretrained(directory)
                info = {**info, **({} if wanted is None else {"params": wanted}), "seconds": seconds}
                record.write_text(json.dumps(info, indent=2))
    stored = json.loads(record.read_text())
    shutil.rmtree(directory / PARTIAL, ignore_errors=True)  # also one a kill left after the record was written
    _check_params(directory, stored.get("params"), wanted)
    return stored


def _claim_partial(partial: Path, wanted: dict | None) -> None:
    """Record this run's parameters in ``partial``, or check that an unfinished run there had the same ones."""
    params_file = partial / "params.json"
    if not params_file.is_file():
        write_json_atomic(params_file, wanted)
        return
    stored = json.loads(params_file.read_text())
    if stored != wanted:
        differing = sorted(key for key in (stored or {}).keys() | (wanted or {}).keys()
                           if (stored or {}).get(key) != (wanted or {}).get(key))
        raise StageMismatchError(f"{partial} holds an unfinished run with other {', '.join(differing)}: pass "
                                 f"another --work-dir, or delete {partial} to start this stage over")

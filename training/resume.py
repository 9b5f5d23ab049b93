"""Mid-stage resumption: :func:`~costeff_fast.training.trainer.train` saves its progress, so a killed stage resumes.

A stage (:func:`~costeff_fast.training.stage_cache.run_stage`) runs its ``build`` inside :func:`resumable`; every
``train`` call made in that block gets an ordinal and a file ``<directory>/train-<ordinal>.pt`` where it saves,
every ``every_seconds`` of wall time and at each evaluation, everything its next step depends on: the weights,
the AdamW and scheduler state, the best weights so far, the running loss and the RNG states. A finished call
saves its returned weights instead. Run again in the same block after a kill, each finished call loads its
result and each unfinished one continues from its last save; both first draw the batches they had consumed
(so a shared batch stream, and each loader's own shuffle, continue where they were) and then restore the RNG
states, so dropout and shuffling draw what they would have drawn without the kill. Resumed on the same machine
and thread count, a stage ends with the weights an uninterrupted run ends with, bit for bit (tested).

Outside :func:`resumable`, ``train`` saves nothing. Comparable in spirit to ``transformers.Trainer``'s
``resume_from_checkpoint``, at the granularity of this package's training calls.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

class StageMismatchError(ValueError):
    """A cached stage, or the saved progress of an unfinished one, was built with other parameters or code than
    the run asks for (a changed budget or flag, a rebuilt upstream stage, in the same work directory)."""


DEFAULT_EVERY_SECONDS = 600.0
"""Wall time between progress saves of a running ``train`` call (besides one per evaluation)."""


@dataclass
class Progress:
    """Where one ``train`` call saves its progress, and when it last did.

    Attributes:
        path: ``<directory>/train-<ordinal>.pt``.
        every_seconds: wall time between saves.
        last_save: ``time.monotonic()`` of the last save (or of the call's start).
    """

    path: Path
    every_seconds: float
    last_save: float = field(default_factory=time.monotonic)

    def due(self) -> bool:
        """Whether ``every_seconds`` have passed since the last save."""
        return time.monotonic() - self.last_save >= self.every_seconds

    def load(self) -> dict | None:
        """The saved state, or None when this call has not saved yet.

        Raises:
            StageMismatchError: the file cannot be read (a save cut short is never left: saves are atomic).
        """
        if not self.path.is_file():
            return None
        try:
            return torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - any unreadable file gets the same advice
            raise StageMismatchError(f"{self.path}: unreadable progress checkpoint ({error}); delete it to restart this "
                             "training call") from error

    def save(self, state: dict) -> None:
        """Write ``state`` atomically (a temporary file, then a rename) and note the time."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + ".tmp")
        torch.save(state, temporary)
        os.replace(temporary, self.path)
        self.last_save = time.monotonic()


@dataclass
class _Session:
    directory: Path
    every_seconds: float
    calls: int = 0


_SESSION: contextvars.ContextVar[_Session | None] = contextvars.ContextVar("costeff_fast_resume", default=None)


@contextlib.contextmanager
def resumable(directory: Path | str, *, every_seconds: float = DEFAULT_EVERY_SECONDS) -> Iterator[Path]:
    """Make the ``train`` calls of the block save progress under ``directory`` and resume from it.

    Args:
        directory: created on the first save; the caller removes it once the work it protects is stored.
        every_seconds: wall time between saves of a running call (0: after every step; tests).

    Yields:
        ``directory`` as a ``Path``.

    Raises:
        ValueError: ``every_seconds`` is negative.
    """
    if every_seconds < 0:
        raise ValueError(f"every_seconds must be >= 0, got {every_seconds}")
    directory = Path(directory)
    token = _SESSION.set(_Session(directory, every_seconds))
    try:
        yield directory
    finally:
        _SESSION.reset(token)


def next_progress() -> Progress | None:
    """The :class:`Progress` of the next ``train`` call in the current :func:`resumable` block (None outside one).

    Calls are numbered in the order they start, so a rerun of the same code maps each call to its file.
    """
    session = _SESSION.get()
    if session is None:
        return None
    progress = Progress(session.directory / f"train-{session.calls}.pt", session.every_seconds)
    session.calls += 1
    return progress


def rng_state() -> dict:
    """The CPU RNG state and, where CUDA is initialized, every GPU's."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

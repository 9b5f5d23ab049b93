"""Mid-stage resumption: :func:`~costeff_fast.training.trainer.train` saves its progress, so a killed stage resumes.

A stage (:func:`~costeff_fast.training.stage_cache.run_stage`) runs its ``build`` inside :func:`resumable`; every
``train`` call made in that block gets an ordinal and a file ``<directory>/train-<ordinal>.pt`` where it saves,
every ``every_seconds`` of wall time and at each evaluation, everything its next step depends on: the weights,
the AdamW and scheduler state, the best weights so far, the running loss and the RNG states. A finished call
saves its returned weights instead. Run again in the same block after a kill, each finished call loads its
result and each unfinished one continues from its last save; both first draw the batches they had consumed
(so a shared batch stream, and each loader's own shuffle, continue where they were) and then restore the RNG
states, so dropout and shuffling draw what they would have drawn without the kill. Resumed on the same machine,
thread count and torch version, a stage ends with the weights an uninterrupted run ends with, bit for bit
(tested on the CPU), provided every batch stream draws its order from its own generator (the loaders of
:class:`~costeff_fast.training.data.TrainingData` do; a ``DataLoader(shuffle=True)`` without ``generator`` draws
from the global one and resumes to another order). A save from another device or autocast setting is refused;
an edit of a stage's code between the kill and the rerun is caught only when it changes a call's name, its
step count or the weights' shapes.

Outside :func:`resumable`, ``train`` saves nothing. Comparable in spirit to ``transformers.Trainer``'s
``resume_from_checkpoint``, at the granularity of this package's training calls.
"""

from __future__ import annotations

import contextlib
import contextvars
import fcntl
import json
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
class ResumeSession:
    """One :func:`resumable` block: its directory, its save interval, the training calls started in it, and the
    training time of earlier runs of the same block.

    Attributes:
        directory: where the calls save.
        every_seconds: wall time between saves of a running call.
        calls: ``train`` calls started so far (the next one's ordinal).
        earlier_seconds: wall time of the earlier runs up to their last save (work redone after a kill is
            counted once), read from ``<directory>/seconds.json``.
        started: ``time.monotonic()`` when this run of the block started.
    """

    directory: Path
    every_seconds: float
    calls: int = 0
    earlier_seconds: float = 0.0
    started: float = field(default_factory=time.monotonic)

    def seconds(self) -> float:
        """Wall time of the block so far, earlier runs included (up to their last save)."""
        return self.earlier_seconds + time.monotonic() - self.started


@dataclass
class Progress:
    """Where one ``train`` call saves its progress, and when it last did.

    Attributes:
        path: ``<directory>/train-<ordinal>.pt``.
        session: the block the call runs in (each save also records its elapsed time).
        last_save: ``time.monotonic()`` of the last save (or of the call's start).
    """

    path: Path
    session: ResumeSession
    last_save: float = field(default_factory=time.monotonic)

    def due(self) -> bool:
        """Whether ``every_seconds`` have passed since the last save."""
        return time.monotonic() - self.last_save >= self.session.every_seconds

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
            reason = str(error).strip().splitlines()[0][:200]
            raise StageMismatchError(f"{self.path}: unreadable progress checkpoint ({reason}); delete it to "
                                     "restart this training call") from error

    def save(self, state: dict) -> None:
        """Write ``state`` atomically (a temporary file, then a rename), then the block's elapsed time."""
        temporary = self.path.with_name(self.path.name + ".tmp")
        torch.save(state, temporary)
        os.replace(temporary, self.path)
        write_json_atomic(self.session.directory / SECONDS, {"seconds": self.session.seconds()})
        self.last_save = time.monotonic()


SECONDS = "seconds.json"
"""File of a :func:`resumable` directory holding the training time of its runs so far."""

LOCK = "lock"
"""File of a :func:`resumable` directory that the running block holds an exclusive ``flock`` on."""

_SESSION: contextvars.ContextVar[ResumeSession | None] = contextvars.ContextVar("costeff_fast_resume", default=None)


def write_json_atomic(path: Path, value) -> None:
    """Write ``value`` as JSON to ``path`` through a temporary file and a rename (never a half-written file)."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(value, indent=2))
    os.replace(temporary, path)


@contextlib.contextmanager
def exclusive(directory: Path | str) -> Iterator[Path]:
    """Hold an exclusive lock on ``directory`` (created when missing) for the block: a second process asking for
    the same directory waits until the first leaves it (``fcntl.flock`` on its ``lock`` file, released when the
    process ends, even by a kill).

    Yields:
        ``directory`` as a ``Path``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / LOCK, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"costeff-fast: another run is building {directory.parent}; waiting for it", flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield directory
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def resumable(directory: Path | str, *, every_seconds: float = DEFAULT_EVERY_SECONDS) -> Iterator[ResumeSession]:
    """Make the ``train`` calls of the block save progress under ``directory`` and resume from it.

    Args:
        directory: created here; the caller removes it once the work it protects is stored.
        every_seconds: wall time between saves of a running call (0: after every step; tests).

    Yields:
        The :class:`ResumeSession` (``seconds()``: the block's training time, earlier runs included).

    Raises:
        ValueError: ``every_seconds`` is negative.
    """
    if every_seconds < 0:
        raise ValueError(f"every_seconds must be >= 0, got {every_seconds}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    earlier = json.loads((directory / SECONDS).read_text())["seconds"] if (directory / SECONDS).is_file() else 0.0
    session = ResumeSession(directory, every_seconds, earlier_seconds=earlier)
    token = _SESSION.set(session)
    try:
        yield session
    finally:
        _SESSION.reset(token)


def next_progress() -> Progress | None:
    """The :class:`Progress` of the next ``train`` call in the current :func:`resumable` block (None outside one).

    Calls are numbered in the order they start, so a rerun of the same code maps each call to its file.
    """
    session = _SESSION.get()
    if session is None:
        return None
    progress = Progress(session.directory / f"train-{session.calls}.pt", session)
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

"""Stage caching: a pipeline stage runs once; its directory keeps the checkpoint and a ``stage.json`` record.

A rerun of the pipeline finds ``stage.json`` and returns the record without training, so an interrupted run
resumes after its last finished stage and several compression settings share one teacher and one TA.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import torch

RECORD = "stage.json"
"""Name of the record file; it is written last, so its presence means the stage finished."""


def run_stage(directory: Path | str, build: Callable[[], tuple[object, dict]], *, tokenizer, seed: int) -> dict:
    """Return the stage's record, running ``build`` first unless ``directory`` already holds one.

    When not cached: seed torch with ``seed``, call ``build() -> (model, info)``, save the model and the
    tokenizer (``save_pretrained``) to ``directory``, then write ``stage.json`` with ``info`` plus
    ``seconds`` (wall time of the stage, rounded to 0.1 s).

    Args:
        directory: the stage's output directory (created when missing).
        build: trains the stage; ``info`` must be JSON-serializable.
        tokenizer: saved next to the checkpoint so it loads on its own.
        seed: ``torch.manual_seed`` before ``build``.

    Returns:
        The record: ``info`` and ``seconds`` (the stored record on a cache hit, ``build`` not called).
    """
    directory = Path(directory)
    record = directory / RECORD
    if record.is_file():
        return json.loads(record.read_text())
    started = time.time()
    torch.manual_seed(seed)
    model, info = build()
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    info = {**info, "seconds": round(time.time() - started, 1)}
    record.write_text(json.dumps(info, indent=2))
    return info

"""Tests of stage caching: a stage runs once, saves its checkpoint and record, and is seeded."""

from __future__ import annotations

import json

import torch

from costeff_fast.training.stage_cache import RECORD, run_stage


class Saved:
    """Stands for a model or tokenizer: ``save_pretrained`` writes one file."""

    def __init__(self, filename: str):
        self.filename = filename

    def save_pretrained(self, directory):
        (directory / self.filename).write_text("saved")


def test_run_stage_builds_once_saves_and_records(tmp_path):
    directory = tmp_path / "stage" / "nested"
    calls = []

    def build():
        calls.append(torch.rand(3))  # seeded by run_stage
        return Saved("model.bin"), {"accuracy": 0.75}

    record = run_stage(directory, build, tokenizer=Saved("tokenizer.json"), seed=7)
    assert record["accuracy"] == 0.75 and record["seconds"] >= 0
    assert (directory / "model.bin").is_file() and (directory / "tokenizer.json").is_file()
    assert json.loads((directory / RECORD).read_text()) == record
    torch.testing.assert_close(calls[0], torch.rand(3, generator=torch.Generator().manual_seed(7)))
    again = run_stage(directory, build, tokenizer=Saved("tokenizer.json"), seed=7)
    assert again == record and len(calls) == 1


def test_a_failed_build_leaves_no_record(tmp_path):
    def build():
        raise RuntimeError("interrupted")

    try:
        run_stage(tmp_path, build, tokenizer=Saved("tokenizer.json"), seed=0)
    except RuntimeError:
        pass
    assert not (tmp_path / RECORD).exists()
    record = run_stage(tmp_path, lambda: (Saved("model.bin"), {}), tokenizer=Saved("tokenizer.json"), seed=0)
    assert set(record) == {"seconds"}

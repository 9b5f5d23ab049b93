"""Tests of stage caching: a stage runs once, saves its checkpoint and record, and is seeded."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from costeff_fast.training.stage_cache import RECORD, StageMismatchError, run_stage, stage_digest


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
    error = RuntimeError("interrupted")

    def build():
        raise error

    with pytest.raises(RuntimeError, match=r"^interrupted$") as caught:
        run_stage(tmp_path, build, tokenizer=Saved("tokenizer.json"), seed=0)
    assert caught.type is RuntimeError and caught.value is error  # the build's own error, neither wrapped nor swallowed
    assert not (tmp_path / RECORD).exists()
    assert not (tmp_path / "model.bin").exists() and not (tmp_path / "tokenizer.json").exists()
    record = run_stage(tmp_path, lambda: (Saved("model.bin"), {}), tokenizer=Saved("tokenizer.json"), seed=0)
    assert set(record) == {"seconds"}


def test_a_cached_stage_is_reused_only_for_the_parameters_it_was_built_with(tmp_path):
    calls = []

    def build():
        calls.append(1)
        return Saved("model.bin"), {"accuracy": 0.5}

    params = {"epochs": 5 / 3, "lr": 5e-5, "widths": (2, 3)}
    record = run_stage(tmp_path, build, tokenizer=Saved("tokenizer.json"), seed=3, params=params)
    assert record["params"] == {"epochs": 5 / 3, "lr": 5e-5, "widths": [2, 3], "seed": 3}
    assert run_stage(tmp_path, build, tokenizer=Saved("tokenizer.json"), seed=3, params=dict(params)) == record
    with pytest.raises(StageMismatchError, match=r"built with lr=5e-05 \(this run: 0.0001\): pass another --work-dir"):
        run_stage(tmp_path, build, tokenizer=Saved("tokenizer.json"), seed=3, params={**params, "lr": 1e-4})
    with pytest.raises(StageMismatchError, match=r"seed=3 \(this run: 4\)"):
        run_stage(tmp_path, build, tokenizer=Saved("tokenizer.json"), seed=4, params=params)
    with pytest.raises(StageMismatchError, match=r"extra=None \(this run: 1\)"):
        run_stage(tmp_path, build, tokenizer=Saved("tokenizer.json"), seed=3, params={**params, "extra": 1})
    assert len(calls) == 1 and json.loads((tmp_path / RECORD).read_text()) == record


def test_a_record_without_parameters_is_refused_when_parameters_are_asked_for(tmp_path):
    run_stage(tmp_path, lambda: (Saved("model.bin"), {}), tokenizer=Saved("tokenizer.json"), seed=0)
    with pytest.raises(StageMismatchError, match=r"older version that did not record its parameters: delete"):
        run_stage(tmp_path, lambda: pytest.fail("rebuilt"), tokenizer=Saved("tokenizer.json"), seed=0,
                  params={"lr": 1.0})
    assert "params" not in json.loads((tmp_path / RECORD).read_text())  # left as it was


def test_stage_digest_names_a_stage_by_its_record_or_its_checkpoint(tmp_path):
    assert stage_digest(tmp_path / "missing") is None
    first = tmp_path / "first"
    run_stage(first, lambda: (Saved("model.bin"), {"accuracy": 0.5}), tokenizer=Saved("tokenizer.json"), seed=0)
    copy = tmp_path / "copy"
    shutil.copytree(first, copy)
    assert stage_digest(copy) == stage_digest(first)
    record = json.loads((copy / RECORD).read_text())
    (copy / RECORD).write_text(json.dumps({**record, "seconds": record["seconds"] + 60}))  # same result, slower
    assert stage_digest(copy) == stage_digest(first)
    (copy / RECORD).write_text(json.dumps({**record, "accuracy": 0.25}))  # rebuilt to another result
    assert stage_digest(copy) != stage_digest(first)
    checkpoint = tmp_path / "checkpoint"  # a user's teacher: no record, its config and weights
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text('{"hidden_size": 8}')
    (checkpoint / "model.safetensors").write_bytes(b"0" * 16)
    named = stage_digest(checkpoint)
    (checkpoint / "model.safetensors").write_bytes(b"1" * 16)  # retrained in place: same size, other weights
    assert len(named) == 16 and stage_digest(checkpoint) != named

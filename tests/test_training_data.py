"""Tests of the training data loaders: length-grouped batching (every row once per pass, less padding, seeded
order), what a stage records about its data, and the compress flags that set them."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from transformers import AutoTokenizer

from costeff_fast import cli
from costeff_fast.data import load_task
from costeff_fast.training import pipeline
from costeff_fast.training.budget import budget_with, default_work_name
from costeff_fast.training.data import TrainingData, make_loader, prepare_data


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    return AutoTokenizer.from_pretrained(minilm_dir)


def varied_rows(n: int = 300, seed: int = 0) -> Dataset:
    """Rows 2-120 tokens long (mostly short, a few long, like real text); ``labels`` holds each row's index."""
    generator = torch.Generator().manual_seed(seed)
    lengths = (torch.distributions.Exponential(1 / 20).sample((n,)) + 2).clamp(max=120).long().tolist()
    ids = [torch.randint(1000, 2000, (length,), generator=generator).tolist() for length in lengths]
    return Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(row) for row in ids],
                              "labels": list(range(n))})


def passes(loader, count: int = 2):
    """Per pass: the row indices in order, the padded and the real token counts."""
    out = []
    for _ in range(count):
        order, padded, real = [], 0, 0
        for batch in loader:
            order += batch["labels"].tolist()
            padded += batch["input_ids"].numel()
            real += int(batch["attention_mask"].sum())
        out.append((order, padded, real))
    return out


def test_grouped_training_batches_cover_every_row_once_with_less_padding(tokenizer):
    rows = varied_rows()
    grouped = passes(make_loader(rows, tokenizer, 16, shuffle=True, seed=3, group_by_length=True))
    plain = passes(make_loader(rows, tokenizer, 16, shuffle=True, seed=3))
    for order, padded, real in grouped + plain:
        assert sorted(order) == list(range(len(rows)))
        assert real == sum(len(ids) for ids in rows["input_ids"])
    assert grouped[0][0] != grouped[1][0]  # a new order every pass
    assert grouped[0][1] < 0.8 * plain[0][1] and grouped[1][1] < 0.8 * plain[1][1]
    # The batches come in random order, not the longest of each mega-batch first.
    maxima = [max(len(rows["input_ids"][i]) for i in grouped[0][0][start:start + 16])
              for start in range(0, len(rows), 16)]
    assert maxima != sorted(maxima, reverse=True)
    # A new loader with the same seed repeats the first pass; another seed does not.
    assert passes(make_loader(rows, tokenizer, 16, shuffle=True, seed=3, group_by_length=True), 1)[0] == grouped[0]
    other = passes(make_loader(rows, tokenizer, 16, shuffle=True, seed=4, group_by_length=True), 1)[0]
    assert other[0] != grouped[0][0]


def test_grouped_loaders_leave_the_global_generator_alone(tokenizer):
    rows = varied_rows(64)
    state = torch.random.get_rng_state()
    for shuffle in (True, False):
        passes(make_loader(rows, tokenizer, 8, shuffle=shuffle, seed=1, group_by_length=True))
    assert torch.equal(torch.random.get_rng_state(), state)


def test_grouped_evaluation_is_longest_first_and_complete(tokenizer):
    rows = varied_rows(101)
    (order, padded, _), = passes(make_loader(rows, tokenizer, 8, shuffle=False, group_by_length=True), 1)
    lengths = [len(rows["input_ids"][i]) for i in order]
    assert sorted(order) == list(range(101)) and lengths == sorted(lengths, reverse=True)
    assert passes(make_loader(rows, tokenizer, 8, shuffle=False), 1)[0][0] == list(range(101))


def test_grouping_on_real_data_keeps_rows_and_cuts_padding(tokenizer):
    plain, _ = prepare_data(load_task("trec"), budget_with("standard", train_rows=600), tokenizer)
    grouped, _ = prepare_data(load_task("trec"), budget_with("standard", train_rows=600, group_by_length=True),
                              tokenizer)
    assert grouped.group_by_length and not plain.group_by_length
    for make in (TrainingData.train_loader, TrainingData.eval_loader):
        (_, padded_plain, real_plain), = passes(make(plain), 1)
        (_, padded_grouped, real_grouped), = passes(make(grouped), 1)
        assert real_grouped == real_plain and padded_grouped < padded_plain
    # The stage records the batching only when grouped, so records written before the option still match.
    assert grouped.params() == {**plain.params(), "group_by_length": True}
    assert "group_by_length" not in plain.params()


def test_batching_and_recovery_flags_reach_the_budget_and_the_work_directory(tmp_path, monkeypatch):
    seen = []

    def stop(splits, budget, tokenizer, seed=0):
        seen.append(budget)
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "prepare_data", stop)
    base = ["compress", "--task-default", "--task", "trec", "--budget", "standard", "--out", str(tmp_path / "o")]
    for extra in ([], ["--group-by-length"], ["--recovery-hidden-epochs", "3"]):
        with pytest.raises(KeyboardInterrupt):
            cli.main(base + extra)
    assert [b.group_by_length for b in seen] == [False, True, False]
    assert [b.recovery_hidden_epochs for b in seen] == [10, 10, 3]  # the standard budget's 10, then the flag's
    names = {default_work_name("trec", budget, "mean") for budget in seen}
    assert len(names) == 3

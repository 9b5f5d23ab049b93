"""More rows for the students (issue 31 item 2): perturbed copies and unlabeled rows, labelled by the teacher."""

from __future__ import annotations

import functools
import json

import pandas as pd
import pytest
import torch
from conftest import save_tiny_bert_teacher
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from costeff_fast import cli
from costeff_fast.data import load_task
from costeff_fast.training import pipeline
from costeff_fast.training.augment import Augmentation, augmented_rows, distillation_rows, perturb
from costeff_fast.training.budget import budget_with
from costeff_fast.training.data import prepare_data
from costeff_fast.training.pipeline import CompressionSettings, compress
from costeff_fast.training.stage_cache import stage_digest
from costeff_fast.training.validate import CompressArgumentError

SPECIAL = {0, 101, 102, 103}  # [PAD], [CLS], [SEP], [MASK] of the BERT vocabulary
ROW = {"input_ids": [101, 2023, 3185, 2001, 2307, 102, 2009, 2001, 102],
       "attention_mask": [1] * 9, "token_type_ids": [0, 0, 0, 0, 0, 0, 1, 1, 1]}


def run(settings, seed=0):
    return perturb(ROW, special_ids=SPECIAL, mask_id=103, vocab_size=30522, settings=settings,
                   generator=torch.Generator().manual_seed(seed))


def test_masking_replacing_and_deleting_leave_special_tokens_and_segments_in_place():
    masked = run(Augmentation(mask=1.0, replace=0.0, delete_span=0.0))
    assert masked["input_ids"] == [101, 103, 103, 103, 103, 102, 103, 103, 102]
    assert masked["token_type_ids"] == ROW["token_type_ids"] and masked["attention_mask"] == [1] * 9
    replaced = run(Augmentation(mask=0.0, replace=1.0, delete_span=0.0))
    assert [replaced["input_ids"][i] for i in (0, 5, 8)] == [101, 102, 102]
    assert all(replaced["input_ids"][i] not in SPECIAL for i in (1, 2, 3, 4, 6, 7))
    untouched = run(Augmentation(mask=0.0, replace=0.0, delete_span=0.0))
    assert untouched == ROW
    for seed in range(20):
        cut = run(Augmentation(mask=0.0, replace=0.0, delete_span=1.0, span_fraction=0.5), seed)
        removed = 9 - len(cut["input_ids"])
        assert 1 <= removed <= 3  # a span of 1 to int(0.5 * 6 editable tokens) = 3
        assert [t for t in cut["input_ids"] if t in SPECIAL] == [101, 102, 102]
        # each kept token keeps its segment: the first [SEP] closes segment 0
        sep = cut["input_ids"].index(102)
        assert cut["token_type_ids"] == [0] * (sep + 1) + [1] * (len(cut["input_ids"]) - sep - 1)
        # what is left of the words is the original with one contiguous span taken out
        words, kept = [t for t in ROW["input_ids"] if t not in SPECIAL], [t for t in cut["input_ids"] if t not in SPECIAL]
        assert any(words[:i] + words[i + removed:] == kept for i in range(len(words) - removed + 1))
    assert run(Augmentation(), 3) == run(Augmentation(), 3)
    with pytest.raises(ValueError, match=r"--augment -1: pass a whole number"):
        Augmentation(copies=-1)


def test_augmented_rows_are_copies_of_every_row_and_repeat_with_the_seed(minilm_dir):
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    train = Dataset.from_dict(dict(tokenizer(["a fine film", "dull and overlong, with no charm at all"])))
    rows = augmented_rows(train, tokenizer, Augmentation(copies=3), seed=1)
    assert len(rows) == 6 and rows["input_ids"] == augmented_rows(train, tokenizer, Augmentation(copies=3), 1)["input_ids"]
    assert rows["input_ids"] != augmented_rows(train, tokenizer, Augmentation(copies=3), 2)["input_ids"]
    assert all(ids[0] == 101 and ids[-1] == 102 for ids in rows["input_ids"])


def test_extra_rows_are_labelled_by_the_teacher_and_validation_rows_never_join(minilm_dir, tmp_path):
    teacher_dir = save_tiny_bert_teacher(tmp_path / "teacher", minilm_dir)
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir)
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    splits = load_task("rt", seed=0)
    budget = budget_with("quick", train_rows=40, eval_rows=20, max_length=32)
    data, validation = prepare_data(splits, budget, tokenizer, seed=0)
    dev = list(validation["text"])
    unlabeled = Dataset.from_dict({"text": ["an unlabeled review", dev[0], "another one", dev[5]]})
    extended, info = distillation_rows(data, teacher, augmentation=Augmentation(copies=2), unlabeled=unlabeled,
                                       validation_keys=set(dev), max_length=32, seed=0)
    assert info["augmented_rows"] == 80 and info["unlabeled_rows"] == 2 and info["unlabeled_dropped_as_validation"] == 2
    assert len(extended.train) == 40 + 80 + 2 and extended.params()["rows"] != data.params()["rows"]
    assert extended.train[:40]["labels"] == data.train["labels"]  # the gold labels of the training rows stay
    # the unlabeled rows come last, labelled with the teacher's prediction on their own text
    with torch.no_grad():
        expected = teacher(**tokenizer(["an unlabeled review", "another one"], padding=True, return_tensors="pt"))
    assert extended.train[-2:]["labels"] == expected.logits.argmax(-1).tolist()
    assert sum(info["extra_label_counts"]) == 82


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, minilm_dir):
    root = tmp_path_factory.mktemp("augment")
    return root, save_tiny_bert_teacher(root / "teacher", minilm_dir, num_hidden_layers=2)


def test_compress_distils_on_the_extra_rows_in_their_own_stage_caches(tiny, tmp_path):
    root, teacher = tiny
    splits = load_task("rt", seed=0)
    production = tmp_path / "job.csv"
    rows = list(splits["train"]["text"][-30:]) + list(splits["validation"]["text"][:3])
    pd.DataFrame({"review": rows}).to_csv(production, index=False)
    budget = budget_with("quick", train_rows=64, eval_rows=48, max_length=32, ta_hidden_epochs=0,
                         ta_prediction_epochs=0.25, num_events=1, importance_batches=1, distill_steps=1,
                         recovery_hidden_epochs=0, recovery_prediction_epochs=0.25)
    settings = CompressionSettings(heads=1, ffn=16)
    report = compress("rt", tmp_path / "out", teacher_dir=teacher, settings=settings, budget=budget,
                      work_dir=tmp_path / "work", unlabeled=production, unlabeled_text_column="review", augment=1)
    info = report["distillation_rows"]
    assert (info["training_rows"], info["augmented_rows"], info["unlabeled_rows"]) == (64, 64, 30)
    assert info["unlabeled_dropped_as_validation"] == 3
    work = sorted(p.name for p in (tmp_path / "work").iterdir())
    ta = [name for name in work if name.startswith("ta-aug1-unl")]
    assert len(ta) == 1 and f"h1-f16-rfull-uniform{ta[0][2:]}" in work
    record = json.loads((tmp_path / "work" / ta[0] / "stage.json").read_text())
    assert record["params"]["train_rows"] == 64 + 64 + 30


def test_extra_rows_for_the_ta_only_leave_the_students_stages_on_the_labelled_rows(tiny, tmp_path):
    root, teacher = tiny
    budget = budget_with("quick", train_rows=64, eval_rows=48, max_length=32, ta_hidden_epochs=0,
                         ta_prediction_epochs=0.25, num_events=1, importance_batches=1, distill_steps=1,
                         recovery_hidden_epochs=0, recovery_prediction_epochs=0.25)
    report = compress("rt", tmp_path / "out", teacher_dir=teacher, settings=CompressionSettings(heads=1, ffn=16),
                      budget=budget, work_dir=tmp_path / "work", augment=1, extra_rows_for="ta")
    assert report["distillation_rows"]["augmented_rows"] == 64
    assert report["distillation_rows"]["stages"] == "ta"
    work = tmp_path / "work"
    assert sorted(p.name for p in work.iterdir()) == ["h1-f16-rfull-uniform-aug1-ta", "ta-aug1"]
    ta = json.loads((work / "ta-aug1" / "stage.json").read_text())["params"]
    student = work / "h1-f16-rfull-uniform-aug1-ta"
    slender = json.loads((student / "slender" / "stage.json").read_text())["params"]
    recovered = [json.loads(p.read_text())["params"] for p in student.glob("recovered*/stage.json")]
    assert ta["train_rows"] == 128 and slender["train_rows"] == 64 and [r["train_rows"] for r in recovered] == [64]
    assert slender["ta"] == recovered[0]["ta"] == stage_digest(work / "ta-aug1")  # the TA that saw the copies
    assert report["train_rows"] == 64  # the rows the student's stages trained on


def test_bad_extra_row_arguments_are_refused_before_training(tiny, tmp_path):
    _, teacher = tiny
    refused = functools.partial(compress, "rt", tmp_path / "out", teacher_dir=teacher,
                                settings=CompressionSettings(heads=1, ffn=16))  # widths the tiny teacher has
    with pytest.raises(CompressArgumentError, match=r"^--unlabeled-file: data file not found"):
        refused(unlabeled=tmp_path / "missing.csv")
    (tmp_path / "job.csv").write_text("review\nfine\n")
    with pytest.raises(CompressArgumentError, match=r"^--unlabeled-file: column\(s\) \['text'\] not found"):
        refused(unlabeled=tmp_path / "job.csv")
    with pytest.raises(CompressArgumentError, match=r"^--augment -2: pass a whole number"):
        refused(augment=-2)
    with pytest.raises(CompressArgumentError, match=r"^--extra-rows-for ta: there are no extra rows"):
        refused(extra_rows_for="ta")
    with pytest.raises(CompressArgumentError, match=r"^--extra-rows-for 'slender': pass all"):
        refused(augment=1, extra_rows_for="slender")
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()


def test_a_pair_tasks_unlabeled_rows_are_read_as_pairs(tiny, tmp_path, monkeypatch):
    """boolq rows are (question, passage) pairs: the unlabeled file's text_pair column is read too, and a row equal
    to a validation pair is what gets dropped (stopped before any training: the rows are all this test needs)."""
    from costeff_fast.training import pipeline

    _, teacher = tiny
    validation = load_task("boolq", seed=0)["validation"]
    job = tmp_path / "job.csv"
    pd.DataFrame({"text": ["is it raining", validation["text"][0]],
                  "text_pair": ["a passage about the weather", validation["text_pair"][0]]}).to_csv(job, index=False)
    seen = {}

    class Stop(Exception):
        pass

    def capture(data, teacher, *, unlabeled, validation_keys, **kwargs):
        seen["columns"], seen["dropped"] = unlabeled.column_names, [
            (t, p) for t, p in zip(unlabeled["text"], unlabeled["text_pair"]) if (t, p) in validation_keys]
        raise Stop

    monkeypatch.setattr(pipeline, "distillation_rows", capture)
    with pytest.raises(Stop):
        compress("boolq", tmp_path / "out", teacher_dir=teacher, settings=CompressionSettings(heads=1, ffn=16),
                 budget=budget_with("quick", train_rows=32, eval_rows=16, max_length=32), work_dir=tmp_path / "work",
                 unlabeled=job)
    assert seen["columns"] == ["text", "text_pair"]
    assert seen["dropped"] == [(validation["text"][0], validation["text_pair"][0])]


def test_the_command_says_when_unlabeled_rows_were_left_out_as_validation_rows(monkeypatch, capsys, tmp_path):
    keys = ("parameters", "flops_per_row", "accuracy", "targets")
    report = {**dict.fromkeys(keys), "calibration": {"chosen": {"why": "the cheapest within 0.01"}},
              "distillation_rows": {"unlabeled_rows": 30, "unlabeled_dropped_as_validation": 1234}}
    monkeypatch.setattr(pipeline, "compress", lambda task, out, **kw: report)
    cli.main(["compress", "--task-default", "--task", "rt", "--out", str(tmp_path)])
    assert ("--unlabeled-file: 1,234 rows equal to a validation row were left out, so the dev rows stay unseen"
            in capsys.readouterr().out)
    report["distillation_rows"]["unlabeled_dropped_as_validation"] = 0
    cli.main(["compress", "--task-default", "--task", "rt", "--out", str(tmp_path)])
    assert "left out" not in capsys.readouterr().out


def test_the_command_passes_extra_rows_for_to_compress(monkeypatch, tmp_path):
    seen = {}
    report = {**dict.fromkeys(("parameters", "flops_per_row", "accuracy", "targets")),
              "calibration": {"chosen": {"why": "the cheapest within 0.01"}}}
    monkeypatch.setattr(pipeline, "compress", lambda task, out, **kw: seen.update(kw) or report)
    cli.main(["compress", "--task-default", "--task", "rt", "--out", str(tmp_path), "--augment", "2",
              "--extra-rows-for", "ta"])
    assert (seen["augment"], seen["extra_rows_for"]) == (2, "ta")
    cli.main(["compress", "--task-default", "--task", "rt", "--out", str(tmp_path)])
    assert seen["extra_rows_for"] == "all"
    with pytest.raises(SystemExit):
        cli.main(["compress", "--task-default", "--task", "rt", "--out", str(tmp_path), "--extra-rows-for", "tas"])

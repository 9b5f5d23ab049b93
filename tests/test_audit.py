"""The agreement audit (costeff_fast/audit.py): the Wilson interval against its closed forms and its exact coverage,
the row sample's rate and independence from sharding, the counts, and the audit of a real model's early exits
against full depth and a teacher."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_predict_job import LABELS, checkpoint, texts  # noqa: F401  (fixtures)
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

import costeff_fast
from costeff_fast.audit import (
    AgreementAudit,
    AuditCounts,
    TeacherClassifier,
    agreement_shortfalls,
    audit_sample,
    wilson_interval,
)

Z95 = 1.959963984540054


def test_wilson_interval_closed_forms():
    # all agree: the lower bound is n / (n + z^2); none agree: the upper bound is z^2 / (n + z^2)
    for n in (1, 10, 250):
        low, high = wilson_interval(n, n)
        assert high == 1.0 and low == pytest.approx(n / (n + Z95**2), rel=1e-12)
        low, high = wilson_interval(0, n)
        assert low == 0.0 and high == pytest.approx(Z95**2 / (n + Z95**2), rel=1e-12)
    # half agree: symmetric about 1/2 with half-width z sqrt(n/4 + z^2/4) / (n + z^2)
    low, high = wilson_interval(50, 100)
    half = Z95 * math.sqrt(100 / 4 + Z95**2 / 4) / (100 + Z95**2)
    assert (low, high) == pytest.approx((0.5 - half, 0.5 + half), rel=1e-12)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="successes <= trials"):
        wilson_interval(5, 4)
    with pytest.raises(ValueError, match="confidence"):
        wilson_interval(1, 2, confidence=1.0)


@pytest.mark.parametrize("n", [30, 100, 400])
@pytest.mark.parametrize("p", [0.8, 0.9, 0.97])
def test_wilson_interval_covers_at_about_its_nominal_rate(n, p):
    """Exact coverage: the binomial probability of the counts whose interval holds p. Brown, Cai & DasGupta (2001,
    fig. 4) show Wilson's between about 0.92 and 0.97 at these n and p; the normal (Wald) interval falls far below
    (0.80 and less at n=30, p=0.97)."""
    counts = np.arange(n + 1)
    covered = np.array([low <= p <= high for low, high in (wilson_interval(int(k), n) for k in counts)])
    pmf = np.array([math.comb(n, int(k)) * p**k * (1 - p) ** (n - k) for k in counts])
    assert pmf.sum() == pytest.approx(1.0)
    coverage = pmf[covered].sum()
    assert 0.91 <= coverage <= 0.985


def test_audit_sample_rate_seed_and_sharding():
    rows = np.arange(200_000)
    taken = audit_sample(rows, 0.01, seed=3)
    # binomial(200000, 0.01): sd ~ 44.5, five of them either side
    assert abs(int(taken.sum()) - 2000) < 5 * math.sqrt(200_000 * 0.01 * 0.99)
    # the same rows whatever the chunks they are drawn in
    pieces = np.concatenate([audit_sample(rows[a:b], 0.01, seed=3) for a, b in ((0, 7), (7, 150_001),
                                                                                 (150_001, 200_000))])
    assert np.array_equal(pieces, taken)
    other = audit_sample(rows, 0.01, seed=4)
    assert (taken & other).sum() < 100  # independent samples share about 0.01 * 2000 = 20 rows
    assert not audit_sample(rows, 0.0).any() and audit_sample(rows, 1.0).all()
    # no drift along the rows: each tenth of them holds about a tenth of the sample
    tenths = taken.reshape(10, -1).sum(axis=1)
    assert tenths.min() > 200 - 5 * math.sqrt(200) and tenths.max() < 200 + 5 * math.sqrt(200)
    with pytest.raises(ValueError, match="fraction in"):
        audit_sample(rows, 1.5)


def test_audit_counts_by_hand_and_merge():
    counts = AuditCounts(3, teacher=True)
    counts.add(early=[0, 1, 1, 2], exit_layer=[1, 1, 3, 2], full=[0, 0, 1, 2], teacher=[1, 1, 1, 2], seconds=0.5)
    assert (counts.rows, counts.agree_full, counts.agree_teacher) == (4, 3, 3)
    # layer 1: rows 0, 1 (full agrees with row 0 only, the teacher with row 1 only); layer 2: row 3; layer 3: row 2
    assert counts.per_layer == [[2, 1, 1], [1, 1, 1], [1, 1, 1]]
    more = AuditCounts(3, teacher=True)
    more.add(early=[2], exit_layer=[1], full=[1], teacher=[2], seconds=0.25)
    merged = counts.merge(more)
    assert (merged.rows, merged.agree_full, merged.agree_teacher, merged.seconds) == (5, 3, 4, 0.75)
    assert merged.per_layer[0] == [3, 1, 2] and counts.rows == 4  # merge leaves its operands
    assert AuditCounts.from_dict(merged.to_dict()) == merged
    result = merged.result(rate=0.5, seed=1, teacher_path="t")
    assert result["full_depth"]["agreement"] == pytest.approx(3 / 5)
    assert result["full_depth"]["interval"] == list(wilson_interval(3, 5))
    assert result["teacher_agreement"]["agreement"] == pytest.approx(4 / 5)
    assert [entry["rows"] for entry in result["per_exit_layer"]] == [3, 1, 1]
    assert result["rows_per_second"] == pytest.approx(5 / 0.75)
    with pytest.raises(ValueError, match="different depths"):
        merged.merge(AuditCounts(4, teacher=True))


def test_agreement_shortfalls_compare_the_upper_bound():
    counts = AuditCounts(2)
    counts.add(early=[0] * 100, exit_layer=[1] * 100, full=[0] * 80 + [1] * 20)
    result = counts.result()
    high = result["full_depth"]["interval"][1]  # about 0.87
    assert agreement_shortfalls(result, high + 0.01) and "full depth 0.800" in agreement_shortfalls(result, 0.95)[0]
    assert agreement_shortfalls(result, high - 0.01) == []


@pytest.fixture(scope="module")
def engine(checkpoint):  # noqa: F811
    return costeff_fast.from_pretrained(checkpoint, backend="torch", num_threads=1)


def test_audit_of_a_model_counts_what_full_depth_says(engine, texts):  # noqa: F811
    logits, layers = engine.generate_logits(texts, return_exit_layers=True)
    full = engine.predict(texts, entropy_threshold=0.0).numpy()
    early = logits.argmax(-1).numpy()
    audit = AgreementAudit(engine, rate=0.5, seed=7)
    rows = np.arange(1000, 1000 + len(texts))  # the sample is drawn on the job's row numbers
    audit.update(texts, rows, early, layers.numpy())
    taken = audit_sample(rows, 0.5, 7)
    assert audit.counts.rows == taken.sum() > 80
    assert audit.counts.agree_full == int((early[taken] == full[taken]).sum())
    assert audit.counts.agree_full < audit.counts.rows  # the thresholds let rows exit where full depth disagrees
    layer_rows = np.bincount(layers.numpy()[taken], minlength=5)[1:]
    assert [counts[0] for counts in audit.counts.per_layer] == layer_rows.tolist()
    last = audit.counts.per_layer[-1]
    assert last[1] == last[0]  # a row that ran every layer is its own full-depth answer
    assert audit.counts.seconds > 0


def test_audit_stream_yields_the_model_stream_and_audits_its_sample(engine, texts):  # noqa: F811
    audit = AgreementAudit(engine, rate=0.3, seed=2)
    audited = sorted(audit.generate_logits_stream(iter(texts), batch_size=16), key=lambda row: row[0])
    plain = sorted(engine.generate_logits_stream(texts, batch_size=16), key=lambda row: row[0])
    assert [(i, layer) for i, _, layer in audited] == [(i, layer) for i, _, layer in plain]
    assert torch.allclose(torch.stack([r for _, r, _ in audited]), torch.stack([r for _, r, _ in plain]), atol=1e-5)
    taken = audit_sample(np.arange(len(texts)), 0.3, 2)
    full = engine.predict(texts, entropy_threshold=0.0).numpy()
    early = np.array([int(r.argmax()) for _, r, _ in plain])
    assert audit.counts.rows == taken.sum()
    assert audit.counts.agree_full == int((early[taken] == full[taken]).sum())
    result = audit.result()
    low, high = result["full_depth"]["interval"]
    assert low <= result["full_depth"]["agreement"] <= high and result["teacher_agreement"] is None


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, minilm_dir):
    """A tiny random BERT teacher naming the same three labels in another order, saved as safetensors."""
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    torch.manual_seed(0)
    names = [LABELS[2], LABELS[0], LABELS[1]]
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=64, num_labels=3, initializer_range=0.5,
                        id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    directory = tmp_path_factory.mktemp("teacher")
    BertForSequenceClassification(config).eval().save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_teacher_labels_are_matched_by_name(engine, texts, teacher_dir):  # noqa: F811
    teacher = TeacherClassifier(teacher_dir, LABELS)
    hf = BertForSequenceClassification.from_pretrained(teacher_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    rows = texts[:40]
    with torch.no_grad():
        ids = hf(**tokenizer(rows, padding=True, truncation=True, max_length=64, return_tensors="pt")).logits.argmax(-1)
    expected = [LABELS.index(hf.config.id2label[int(i)]) for i in ids]
    assert teacher.predict(rows).tolist() == expected
    assert len(set(expected)) > 1  # the mapping matters on these rows
    audit = AgreementAudit(engine, rate=1.0, teacher=teacher_dir)
    early = engine.predict(rows).numpy()
    audit.update(rows, np.arange(len(rows)), early, np.ones(len(rows), dtype=int))
    assert audit.counts.agree_teacher == int((early == np.array(expected)).sum())
    assert audit.result()["teacher"] == str(teacher_dir.resolve())


def test_teacher_with_other_labels_is_refused(teacher_dir):
    with pytest.raises(ValueError, match="has 3 labels, the model 2"):
        TeacherClassifier(teacher_dir, ["no", "yes"])
    with pytest.raises(ValueError, match="cannot load"):
        TeacherClassifier(teacher_dir / "missing", LABELS)

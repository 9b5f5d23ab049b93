"""``costeff-fast predict``'s agreement audit, summary and output options: the audit's counts against full depth
computed here, the same audit after an interrupted and resumed job, --min-agreement's exit status, the
summary's truncated rows and exit layers, the extra output columns, --device, and ``info`` on a job's output."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_predict_job import LABELS, check_manifest, checkpoint, predict, read_output, texts, write_input  # noqa: F401
from test_audit import teacher_dir  # noqa: F401  (fixture)
from test_predict_resume import _interrupted

import costeff_fast
from costeff_fast.audit import audit_sample, wilson_interval
from costeff_fast.cli import main
from costeff_fast.jobs import JobArgumentError, run_predict
from costeff_fast.jobs.shards import MANIFEST
from costeff_fast.reference import exit_entropy

OPTIONS = dict(batch_size=8, num_threads=1, backend="torch", progress=False)


@pytest.fixture(scope="module")
def engine(checkpoint):  # noqa: F811
    return costeff_fast.from_pretrained(checkpoint, backend="torch", num_threads=1)


def test_the_job_audits_its_sample_against_full_depth(tmp_path, checkpoint, texts, engine):  # noqa: F811
    rows = [t if i % 13 else None for i, t in enumerate(texts)]  # failed rows are not audited
    source = write_input(tmp_path / "rows.jsonl", {"text": rows})
    run_predict(checkpoint, source, tmp_path / "out", shard_rows=50, audit_rate=0.4, audit_seed=5, **OPTIONS)
    manifest = check_manifest(tmp_path / "out")
    audit = manifest["audit"]
    ok = np.array([row is not None for row in rows])
    taken = audit_sample(np.arange(len(rows)), 0.4, 5) & ok
    good = [row for row in rows if row is not None]
    early_all = np.full(len(rows), -1)
    early_all[ok] = engine.predict(good).numpy()
    full_all = np.full(len(rows), -1)
    full_all[ok] = engine.predict(good, entropy_threshold=0.0).numpy()
    _, layers = engine.generate_logits(good, return_exit_layers=True)
    layer_all = np.zeros(len(rows), dtype=int)
    layer_all[ok] = layers.numpy()
    agreeing = int((early_all[taken] == full_all[taken]).sum())
    assert audit["rows"] == taken.sum() > 60 and audit["full_depth"]["agreeing"] == agreeing
    assert 0 < agreeing < audit["rows"]  # the thresholds make early exits that full depth overrules
    assert audit["full_depth"]["interval"] == pytest.approx(list(wilson_interval(agreeing, int(taken.sum()))))
    for entry in audit["per_exit_layer"]:
        at = taken & (layer_all == entry["exit_layer"])
        assert entry["rows"] == at.sum()
        assert entry["full_depth"]["agreeing"] == int((early_all[at] == full_all[at]).sum())
    assert (audit["rate"], audit["seed"], audit["teacher"]) == (0.4, 5, None) and audit["seconds"] > 0
    assert manifest["job"]["audit"] == {"rate": 0.4, "seed": 5, "teacher": None}


def test_an_interrupted_audited_job_resumes_to_the_same_audit(tmp_path, checkpoint, texts, monkeypatch):  # noqa: F811
    from test_predict_job import assert_same_output

    source = write_input(tmp_path / "rows.csv", {"text": texts[:100]})
    options = dict(shard_rows=16, audit_rate=0.5, **OPTIONS)
    run_predict(checkpoint, source, tmp_path / "whole", **options)
    restore = _interrupted(monkeypatch, after_manifests=4)
    with pytest.raises(KeyboardInterrupt):
        run_predict(checkpoint, source, tmp_path / "stopped", **options)
    restore()
    run_predict(checkpoint, source, tmp_path / "stopped", resume=True, **options)
    assert_same_output(tmp_path / "whole", tmp_path / "stopped")  # audit and summary included, timings aside
    with pytest.raises(JobArgumentError, match="differs in: audit"):  # another sample is another job
        run_predict(checkpoint, source, tmp_path / "stopped", resume=True, **{**options, "audit_rate": 0.2})


def test_min_agreement_ends_a_complete_job_with_status_3(tmp_path, checkpoint, texts, capsys):  # noqa: F811
    source = write_input(tmp_path / "rows.csv", {"text": texts[:120]})
    common = ["--model", checkpoint, "--input", source, "--num-threads", 1, "--backend", "torch",
              "--audit-rate", 1.0]
    assert predict(*common, "--out", tmp_path / "strict", "--min-agreement", 0.999) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert "below --min-agreement 0.999" in err[-1] and "full depth" in err[-1]
    manifest = json.loads((tmp_path / "strict" / MANIFEST).read_text())
    assert manifest["complete"] and manifest["totals"]["written"] == 120  # the output is whole
    high = manifest["audit"]["full_depth"]["interval"][1]
    assert predict(*common, "--out", tmp_path / "lenient", "--min-agreement", round(high - 0.01, 3)) == 0
    assert predict("--model", checkpoint, "--input", source, "--out", tmp_path / "x", "--min-agreement", 0.9) == 2
    assert "needs the audit on" in capsys.readouterr().err


def test_summary_counts_truncated_rows_and_exit_layers(tmp_path, checkpoint, texts, engine):  # noqa: F811
    long_rows = [" ".join(texts[i: i + 6]) for i in range(0, 60, 6)]  # the checkpoint takes 48 tokens
    rows = texts[:30] + long_rows
    tokens = [len(engine.tokenizer(row)["input_ids"]) for row in rows]
    assert sum(n > engine.max_length for n in tokens) >= 8
    source = write_input(tmp_path / "rows.parquet", {"text": rows})
    summary = run_predict(checkpoint, source, tmp_path / "out", shard_rows=16, **OPTIONS)
    manifest = check_manifest(tmp_path / "out")
    assert manifest["summary"]["truncated"] == summary.truncated == sum(n > engine.max_length for n in tokens)
    _, layers = engine.generate_logits(rows, return_exit_layers=True)
    assert manifest["summary"]["exit_layer_histogram"] == np.bincount(layers.numpy(), minlength=5)[1:].tolist()
    assert manifest["summary"]["num_threads"] == 1 and manifest["summary"]["rows_per_second"] > 0
    assert "truncated" in summary.format()


def test_keep_columns_logits_and_entropy(tmp_path, checkpoint, texts, engine):  # noqa: F811
    rows = texts[:40]
    source = write_input(tmp_path / "rows.jsonl", {"text": rows, "source": [f"s{i}" for i in range(40)],
                                                   "score": [i / 2 for i in range(40)]})
    run_predict(checkpoint, source, tmp_path / "out", keep_columns=["source", "score"], output_logits=True,
                output_entropy=True, **OPTIONS)
    table = read_output(tmp_path / "out", "jsonl")
    assert table.column_names == ["id", "label", *[f"prob_{n}" for n in LABELS], "exit_layer",
                                  *[f"logit_{n}" for n in LABELS], "entropy", "source", "score"]
    assert table["source"].to_pylist() == [f"s{i}" for i in range(40)]
    assert [float(v) for v in table["score"].to_pylist()] == [i / 2 for i in range(40)]
    logits = torch.tensor([table[f"logit_{n}"].to_pylist() for n in LABELS]).T
    expected = engine.generate_logits(rows)
    assert torch.allclose(logits, expected, atol=1e-4)
    probs = torch.tensor([table[f"prob_{n}"].to_pylist() for n in LABELS]).T
    assert torch.allclose(torch.softmax(logits, -1), probs, atol=1e-5)
    assert torch.allclose(torch.tensor(table["entropy"].to_pylist()), exit_entropy(expected), atol=1e-4)
    with pytest.raises(JobArgumentError, match="--keep-columns label: the output already has"):
        run_predict(checkpoint, write_input(tmp_path / "l.csv", {"text": rows, "label": ["x"] * 40}),
                    tmp_path / "o2", keep_columns=["label"], **OPTIONS)
    with pytest.raises(JobArgumentError, match="--keep-columns .*nothere"):
        run_predict(checkpoint, source, tmp_path / "o3", keep_columns=["nothere"], **OPTIONS)


def test_device_cuda_is_refused_in_one_line_without_a_gpu(tmp_path, checkpoint, texts, capsys):  # noqa: F811
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: --device cuda is accepted")
    source = write_input(tmp_path / "rows.csv", {"text": texts[:4]})
    assert predict("--model", checkpoint, "--input", source, "--out", tmp_path / "o", "--device", "cuda") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--device cuda: torch sees no CUDA device" in err
    assert not (tmp_path / "o").exists()
    with pytest.raises(JobArgumentError, match="use cpu, cuda or cuda:N"):
        run_predict(checkpoint, source, tmp_path / "o", device="tpu", **OPTIONS)


def test_info_prints_a_job_and_draws_its_figure(tmp_path, checkpoint, texts, capsys):  # noqa: F811
    source = write_input(tmp_path / "rows.csv", {"text": texts[:80]})
    run_predict(checkpoint, source, tmp_path / "out", audit_rate=0.5, **OPTIONS)
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())
    main(["info", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert "predict job, complete" in out and "agreement with full depth" in out
    assert f"{manifest['audit']['full_depth']['agreement']:.4f}" in out
    png = tmp_path / "out" / "_summary.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    main(["info", str(tmp_path / "out"), "--json", "--plot", str(tmp_path / "fig.png")])
    printed = capsys.readouterr().out
    facts = json.loads(printed[:printed.rindex("}") + 1])
    assert facts["audit"] == manifest["audit"] and (tmp_path / "fig.png").is_file()


def test_the_job_audits_against_a_teacher(tmp_path, checkpoint, texts, teacher_dir):  # noqa: F811
    from costeff_fast.audit import TeacherClassifier

    rows = texts[:60]
    source = write_input(tmp_path / "rows.csv", {"text": rows})
    run_predict(checkpoint, source, tmp_path / "out", audit_rate=1.0, audit_teacher=teacher_dir, **OPTIONS)
    audit = json.loads((tmp_path / "out" / MANIFEST).read_text())["audit"]
    early = costeff_fast.from_pretrained(checkpoint, backend="torch").predict(rows).numpy()
    teacher = TeacherClassifier(teacher_dir, LABELS).predict(rows)
    assert audit["teacher"] == str(teacher_dir.resolve()) and audit["rows"] == 60
    assert audit["teacher_agreement"]["agreeing"] == int((early == teacher).sum())
    other = tmp_path / "other"  # a teacher of two classes cannot audit a three-class model
    other.mkdir()
    config = json.loads((teacher_dir / "config.json").read_text())
    config.update(id2label={"0": "no", "1": "yes"}, label2id={"no": 0, "yes": 1})
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(JobArgumentError, match="--audit-teacher"):
        run_predict(checkpoint, source, tmp_path / "out2", audit_rate=1.0, audit_teacher=other, **OPTIONS)
    assert not (tmp_path / "out2").exists()

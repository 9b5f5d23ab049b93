"""Behaviour of the predict job (:mod:`costeff_fast.jobs.predict`) the rest of the suite left unchecked, found by
mutation testing (``bench/mutation.py predict``; the mutants each test kills are listed in
``bench/results/mutation/README.md``).

Expected values are worked out in each test from the inputs it builds (the arithmetic is written next to them), not
copied from the code's output.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest
from test_predict_job import LABELS, checkpoint, texts  # noqa: F401 (fixtures: a tiny saved model, rt's texts)

import costeff_fast
from costeff_fast.audit import AgreementAudit, audit_sample
from costeff_fast.jobs import JobArgumentError, PredictJob
from costeff_fast.jobs.predict import (AgreementBelowMinimum, PredictSummary, check_keep_columns, label_names,
                                       output_schema, predict_rows, summarize, text_problem)

AUDIT = {"rows": 1500, "confidence": 0.95,
         "full_depth": {"agreement": 0.98761, "interval": [0.9812, 0.9921]},
         "teacher_agreement": {"agreement": 0.912345, "interval": [0.9004, 0.9196]}}


def _summary(**changes) -> PredictSummary:
    fields = dict(output=Path("out"), rows=12345, written=12000, failed=345, exit_layer_sum=30000, num_layers=6,
                  rows_this_run=2345, seconds=4.0, files=["part-000000.parquet", "part-000001.parquet"])
    fields.update(changes)
    return PredictSummary(**fields)


def test_the_summary_of_a_resumed_job_with_failures_truncation_and_an_audit_reads_line_by_line():
    text = _summary(truncated=1234, audit=AUDIT).format()
    assert text.split("\n") == [
        # 345 failed rows: the errors file is named
        "12,345 rows: 12,000 written to out (2 files), 345 failed (reasons in out/_errors.jsonl)",
        # 30000 / 12000 = 2.5 layers; 2345 rows / 4 s = 586.25 rows/s; 2345 < 12345 rows: this run resumed
        "mean exit layer 2.50 of 6; 586 rows/s (2,345 rows in 4.0 s, resumed)",
        "1,234 rows were longer than the model's max length and were truncated",
        "audit: 1,500 rows, agreement with full depth 0.9876 (95% interval 0.981-0.992), with the teacher 0.9123 "
        "(0.900-0.920); costeff-fast info out for more",
    ]


def test_the_summary_of_a_complete_job_says_there_was_nothing_to_do():
    text = _summary(failed=0, rows=12000, rows_this_run=0, seconds=0.0).format()
    assert text.split("\n") == [
        "12,000 rows: 12,000 written to out (2 files), 0 failed",
        "mean exit layer 2.50 of 6; the job was already complete: nothing to do",
    ]


def test_a_first_run_is_not_called_resumed_and_an_audit_without_rows_says_so():
    audit = dict(AUDIT, full_depth={"agreement": None, "interval": [0.0, 1.0]},
                 teacher_agreement={"agreement": None, "interval": [0.0, 1.0]}, confidence=0.99, rows=0)
    text = _summary(rows=2345, written=2000, failed=345, exit_layer_sum=7000, audit=audit).format()
    assert text.split("\n") == [
        "2,345 rows: 2,000 written to out (2 files), 345 failed (reasons in out/_errors.jsonl)",
        # 7000 / 2000 = 3.5 layers; all 2345 rows ran in this run
        "mean exit layer 3.50 of 6; 586 rows/s (2,345 rows in 4.0 s)",
        "audit: 0 rows, agreement with full depth - (no row audited yet); costeff-fast info out for more",
    ]


def test_an_audit_without_a_teacher_names_only_full_depth():
    text = _summary(audit=dict(AUDIT, teacher_agreement=None)).format()
    assert text.split("\n")[-1] == ("audit: 1,500 rows, agreement with full depth 0.9876 (95% interval 0.981-0.992); "
                                    "costeff-fast info out for more")


def test_a_non_string_text_is_named_with_its_type_and_a_repr_cut_to_sixty_characters():
    assert text_problem(123, "text") == "text is not a string: column 'text' holds int 123"
    # b'' plus 57 x: a repr of exactly 60 characters is kept whole
    whole = text_problem(b"x" * 57, "body")
    assert whole == "text is not a string: column 'body' holds bytes b'" + "x" * 57 + "'"
    # one more x makes 61: cut to its first 57 characters and "...", 60 in all
    cut = text_problem(b"x" * 58, "body")
    assert cut == "text is not a string: column 'body' holds bytes b'" + "x" * 55 + "..."


def test_agreement_below_minimum_names_every_shortfall_the_fix_and_the_complete_output():
    audit = dict(AUDIT, full_depth={"agreement": 0.9, "interval": [0.88, 0.92]},
                 teacher_agreement={"agreement": 0.8, "interval": [0.77, 0.83]})
    summary = _summary(audit=audit, min_agreement=0.95)
    error = AgreementBelowMinimum(summary, 0.95)
    assert error.summary is summary and error.min_agreement == 0.95
    # both intervals lie wholly under 0.95: both are named, in that order, "; " between them
    assert str(error) == (
        "the audit puts the early exits' agreement below --min-agreement 0.95: full depth 0.900 (95% interval "
        "0.880-0.920); the teacher 0.800 (95% interval 0.770-0.830); lower the threshold (--entropy-threshold) or "
        "compress with a smaller --max-drop (the output in out is complete)")


def _with_labels(id2label, num_labels):
    return SimpleNamespace(config=SimpleNamespace(id2label=id2label, num_labels=num_labels))


def test_label_names_read_integer_and_string_keys_and_name_the_unnamed_ones():
    assert label_names(_with_labels({0: "neg", 1: "pos"}, 2)) == ["neg", "pos"]
    # a config.json read without transformers' key conversion keeps its keys as strings
    assert label_names(_with_labels({"0": "neg", "1": "pos"}, 2)) == ["neg", "pos"]
    assert label_names(_with_labels({}, 3)) == ["LABEL_0", "LABEL_1", "LABEL_2"]
    assert label_names(_with_labels(None, 2)) == ["LABEL_0", "LABEL_1"]
    assert label_names(_with_labels({0: "neg", "1": "pos"}, 3)) == ["neg", "pos", "LABEL_2"]
    with pytest.raises(ValueError, match=r"repeat a name \(\['x', 'x'\]\); give each class its own name"):
        label_names(_with_labels({0: "x", 1: "x"}, 2))


def test_string_ids_from_other_json_values_read_as_json_writes_them(checkpoint, texts):  # noqa: F811
    model = costeff_fast.from_pretrained(checkpoint)
    ids = [17, 1.5, True, np.int64(3), np.float32(0.25), None, "seven", (1, 2)]
    table = predict_rows(model, texts[:len(ids)], ids, id_type=pa.string())
    assert table.column("id").type == pa.string()
    # JSON scalars (numpy ones included) as JSON text; null stays null; other values as str()
    assert table.column("id").to_pylist() == ["17", "1.5", "true", "3", "0.25", None, "seven", "(1, 2)"]


def test_summarize_takes_its_counts_from_the_manifest_and_its_depth_from_the_model(checkpoint, tmp_path):  # noqa: F811
    model = costeff_fast.from_pretrained(checkpoint)
    source = tmp_path / "rows.jsonl"
    source.write_text('{"text": "a"}\n')
    job = PredictJob(checkpoint, source, tmp_path / "out", audit_rate=0.5, min_agreement=0.9)
    manifest = {"totals": {"written": 7, "failed": 2, "exit_layer_sum": 15},
                "shards": [{"file": "part-000000.parquet"}, {"file": "part-000001.parquet"}]}
    started = time.perf_counter()
    summary = summarize(job, manifest, model, rows_this_run=5, started=started - 2.0)
    assert (summary.rows, summary.written, summary.failed, summary.exit_layer_sum) == (9, 7, 2, 15)
    assert summary.num_layers == model.config.num_hidden_layers == 4
    assert 2.0 <= summary.seconds < 2.0 + (time.perf_counter() - started) + 1e-6
    assert summary.files == ["part-000000.parquet", "part-000001.parquet"]
    assert summary.truncated == 0 and summary.audit is None and summary.min_agreement == 0.9
    assert summary.output == tmp_path / "out"
    assert "mean exit layer 2.14 of 4" in summary.format()  # 15 / 7 = 2.142...
    manifest.update(summary={"truncated": 3}, audit=AUDIT)
    summary = summarize(job, manifest, model, rows_this_run=5, started=started)
    assert summary.truncated == 3 and summary.audit == AUDIT


def test_the_output_schema_adds_logits_entropy_and_error_only_when_asked_in_the_documented_order():
    base = [("id", pa.int64()), ("label", pa.string()), ("prob_neg", pa.float32()), ("prob_pos", pa.float32()),
            ("exit_layer", pa.int64())]
    assert output_schema(["neg", "pos"], pa.int64()) == pa.schema(base)
    everything = output_schema(["neg", "pos"], pa.int64(), with_error=True, output_logits=True, output_entropy=True,
                               keep=[("source", pa.string())])
    assert everything == pa.schema(base + [("logit_neg", pa.float32()), ("logit_pos", pa.float32()),
                                           ("entropy", pa.float32()), ("source", pa.string()),
                                           ("error", pa.string())])


def test_keep_columns_may_not_take_a_name_the_output_has_and_only_the_columns_asked_for_count():
    names = ["neg", "pos"]
    with pytest.raises(JobArgumentError) as raised:
        check_keep_columns(names, ["id", "source", "error"])
    assert str(raised.value) == ("--keep-columns id,error: the output already has a column of that name; rename the "
                                 "input column or drop it from --keep-columns")
    check_keep_columns(names, ["logit_neg", "entropy"])  # not output columns unless asked for
    with pytest.raises(JobArgumentError, match="--keep-columns logit_neg: "):
        check_keep_columns(names, ["logit_neg", "entropy"], output_logits=True)
    with pytest.raises(JobArgumentError, match="--keep-columns entropy: "):
        check_keep_columns(names, ["logit_neg", "entropy"], output_entropy=True)


def test_a_float_text_is_not_a_string_but_nan_is_a_missing_text():
    assert text_problem(1.5, "text") == "text is not a string: column 'text' holds float 1.5"
    assert text_problem(float("nan"), "text") == "missing text: column 'text' is null or absent"
    assert text_problem(None, "body") == "missing text: column 'body' is null or absent"
    assert text_problem("  ", "body") == "empty text: column 'body' is '  '"
    assert text_problem("fine", "body") is None


def test_failed_rows_name_the_text_column_which_defaults_to_text(checkpoint, texts):  # noqa: F811
    model = costeff_fast.from_pretrained(checkpoint)
    table = predict_rows(model, [texts[0], 5], [0, 1])
    assert table.column("error").to_pylist() == [None, "text is not a string: column 'text' holds int 5"]
    table = predict_rows(model, [texts[0], 5], [0, 1], text_column="review")
    assert table.column("error").to_pylist()[1] == "text is not a string: column 'review' holds int 5"


def test_without_options_the_table_has_the_default_columns_and_no_rows_give_an_empty_table(checkpoint):  # noqa: F811
    model = costeff_fast.from_pretrained(checkpoint)
    default = ["id", "label", "prob_negative", "prob_neutral", "prob_positive", "exit_layer", "error"]
    table = predict_rows(model, ["a fine film"], [7])
    assert table.schema.names == default and table.column("exit_layer").type == pa.int64()
    empty = predict_rows(model, [], [], id_type=pa.int64())
    assert empty.num_rows == 0 and empty.schema.names == default


def test_a_bad_second_text_names_its_column_which_defaults_to_text_pair(checkpoint, texts):  # noqa: F811
    model = costeff_fast.from_pretrained(checkpoint)
    table = predict_rows(model, texts[:3], [0, 1, 2], pairs=["so it goes", None, 3])
    assert table.column("error").to_pylist() == [None, "missing text: column 'text_pair' is null or absent",
                                                 "text is not a string: column 'text_pair' holds int 3"]
    table = predict_rows(model, texts[:2], [0, 1], pairs=["so it goes", None], text_pair_column="hypothesis")
    assert table.column("error").to_pylist()[1] == "missing text: column 'hypothesis' is null or absent"


def test_progress_is_told_of_every_classified_row_in_steps_of_64_and_is_optional(checkpoint, texts):  # noqa: F811
    model = costeff_fast.from_pretrained(checkpoint)
    for count, expected in ((130, [64, 64, 2]), (128, [64, 64]), (5, [5])):
        calls = []
        predict_rows(model, texts[:count], list(range(count)), progress=calls.append)
        assert calls == expected
    calls = []  # failed rows are not classified, so not counted
    predict_rows(model, texts[:66] + [None], list(range(67)), progress=calls.append)
    assert calls == [64, 2]
    assert predict_rows(model, texts[:130], list(range(130))).num_rows == 130  # no callback: nothing to call


def test_an_audit_without_row_numbers_samples_rows_zero_to_n_minus_one(checkpoint, texts):  # noqa: F811
    model = costeff_fast.from_pretrained(checkpoint)
    audit = AgreementAudit(model, rate=1.0)  # every classified row is audited
    predict_rows(model, texts[:4] + [None], list(range(5)), audit=audit)
    assert audit.counts.result()["rows"] == 4  # the failed row is not classified, so not audited
    # row numbers decide the sample: at rate 0.5 the default 0..4 and the numbers 800..804 take different counts
    default, numbered = AgreementAudit(model, rate=0.5), AgreementAudit(model, rate=0.5)
    predict_rows(model, texts[:5], list(range(5)), audit=default)
    predict_rows(model, texts[:5], list(range(5)), audit=numbered, row_numbers=range(800, 805))
    assert default.counts.result()["rows"] == int(audit_sample(range(5), 0.5).sum())
    assert numbered.counts.result()["rows"] == int(audit_sample(range(800, 805), 0.5).sum())
    assert numbered.counts.result()["rows"] != default.counts.result()["rows"]


def test_load_model_hands_its_defaults_and_every_option_to_from_pretrained(checkpoint, monkeypatch):  # noqa: F811
    """``load_model``'s engine options are ``from_pretrained``'s (``backend="auto"``, ``num_threads="auto"``, no
    device by default), each handed on as given."""
    import costeff_fast.jobs.predict as predict_module

    seen, real = [], predict_module.from_pretrained

    def recording(path, **options):
        seen.append(options)
        return real(path, **options)

    monkeypatch.setattr(predict_module, "from_pretrained", recording)
    predict_module.load_model(checkpoint)
    predict_module.load_model(checkpoint, backend="torch", num_threads=1, device="cpu")
    assert seen == [{"backend": "auto", "num_threads": "auto", "device": None},
                    {"backend": "torch", "num_threads": 1, "device": "cpu"}]


def test_load_model_refusals_name_the_flag_and_keep_the_cause(checkpoint, tmp_path, monkeypatch):  # noqa: F811
    """A backend that cannot run, a checkpoint that cannot be read and a bad threshold each end as one
    JobArgumentError starting with its flag; a good threshold is the model's."""
    import costeff_fast.jobs.predict as predict_module

    with pytest.raises(JobArgumentError) as bad_threshold:
        predict_module.load_model(checkpoint, entropy_threshold=-1.0)
    assert str(bad_threshold.value).startswith("--entropy-threshold: entropy_threshold must be >= 0")
    assert predict_module.load_model(checkpoint, entropy_threshold=0.25).config.entropy_threshold == 0.25
    missing = tmp_path / "missing"
    with pytest.raises(JobArgumentError) as bad_model:
        predict_module.load_model(missing)
    assert str(bad_model.value).startswith(f"--model {missing}: ")

    def cannot_run(path, **options):
        raise RuntimeError("backend='triton' needs a CUDA GPU")

    monkeypatch.setattr(predict_module, "from_pretrained", cannot_run)
    with pytest.raises(JobArgumentError) as bad_backend:
        predict_module.load_model(checkpoint, backend="triton")
    assert str(bad_backend.value) == "--backend triton: backend='triton' needs a CUDA GPU"
    assert isinstance(bad_backend.value.__cause__, RuntimeError)


def test_a_checkpoint_without_its_tokenizer_is_refused_naming_the_fix(checkpoint, tmp_path):  # noqa: F811
    import shutil

    import costeff_fast.jobs.predict as predict_module

    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy2(checkpoint / name, bare / name)
    with pytest.raises(JobArgumentError) as refused:
        predict_module.load_model(bare)
    assert str(refused.value) == (f"--model {bare}: the checkpoint has no tokenizer files; save its tokenizer next to "
                                  "it (tokenizer.save_pretrained)")


def test_load_job_model_hands_on_the_jobs_threshold_as_a_list_its_backend_device_and_the_threads(
        checkpoint, tmp_path, monkeypatch):  # noqa: F811
    import costeff_fast.jobs.predict as predict_module

    source = tmp_path / "rows.csv"
    source.write_text("text\nfine\n")
    seen = []
    monkeypatch.setattr(predict_module, "load_model", lambda path, **options: seen.append((path, options)))
    per_layer = PredictJob(checkpoint, source, tmp_path / "a", entropy_threshold=[0.1, 0.2, 0.3, 0.4],
                           backend="torch", device="cpu")
    predict_module.load_job_model(per_layer, num_threads=1)
    one = PredictJob(checkpoint, source, tmp_path / "b", entropy_threshold=0.5)
    predict_module.load_job_model(one, num_threads="auto")
    assert seen == [(per_layer.model, {"entropy_threshold": [0.1, 0.2, 0.3, 0.4], "backend": "torch",
                                       "num_threads": 1, "device": "cpu"}),
                    (one.model, {"entropy_threshold": 0.5, "backend": "auto", "num_threads": "auto", "device": None})]
    assert type(seen[0][1]["entropy_threshold"]) is list  # what from_pretrained takes for per-layer thresholds


def test_run_description_gives_the_local_engines_threads_or_a_ray_workers(checkpoint, tmp_path):  # noqa: F811
    import costeff_fast.jobs.predict as predict_module

    source = tmp_path / "rows.csv"
    source.write_text("text\nfine\n")
    model = predict_module.load_model(checkpoint, backend="torch")
    local = PredictJob(checkpoint, source, tmp_path / "a")
    on_ray = PredictJob(checkpoint, source, tmp_path / "b", engine="ray")
    assert predict_module.run_description(model, local) == {"backend": "torch", "num_threads": "auto", "device": "cpu"}
    assert predict_module.run_description(model, on_ray) == {"backend": "torch", "num_threads": 1, "device": "cpu"}


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_manifest_names_the_model_and_input_as_documented(checkpoint, tmp_path):  # noqa: F811
    """costeff_fast/jobs/shards.py's schema: model {path, config_sha256, weights: [{file, size, mtime_ns, sha256}]}
    over every ``*.safetensors`` and ``*.bin`` file, in name order; input {format, files: [{path, size,
    mtime_ns}]}."""
    import shutil

    import costeff_fast.jobs.predict as predict_module

    model_dir = tmp_path / "model"
    shutil.copytree(checkpoint, model_dir)
    (model_dir / "pytorch_model.bin").write_bytes(b"old weights")  # a second weights file is part of the identity
    identity = predict_module.model_identity(model_dir)
    weights = [model_dir / "model.safetensors", model_dir / "pytorch_model.bin"]
    assert identity == {
        "path": str(model_dir.resolve()), "config_sha256": _sha256(model_dir / "config.json"),
        "weights": [{"file": p.name, "size": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns, "sha256": _sha256(p)}
                    for p in weights]}
    source = tmp_path / "rows.csv"
    source.write_text("text\nfine\n")
    job = PredictJob(checkpoint, source, tmp_path / "out")
    model = predict_module.load_model(checkpoint, backend="torch")
    stat = source.stat()
    assert predict_module.job_identity(job, model)["input"] == {
        "format": "csv", "files": [{"path": str(source.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}]}


def test_a_ray_jobs_identity_has_no_shard_rows_and_a_local_jobs_has_them(checkpoint, tmp_path):  # noqa: F811
    import costeff_fast.jobs.predict as predict_module

    source = tmp_path / "rows.csv"
    source.write_text("text\nfine\n")
    model = predict_module.load_model(checkpoint, backend="torch")
    local = PredictJob(checkpoint, source, tmp_path / "a", shard_rows=100)
    on_ray = PredictJob(checkpoint, source, tmp_path / "b", engine="ray")
    assert predict_module.job_identity(local, model)["shard_rows"] == 100
    assert predict_module.job_identity(on_ray, model)["shard_rows"] is None


def test_shard_stats_count_exit_layers_as_ints_even_for_an_empty_shard_and_keep_microseconds():
    from costeff_fast.jobs.predict import BatchStats, shard_stats

    table = pa.table({"exit_layer": pa.array([2, 4, 2], pa.int64())})
    stats = shard_stats(table, BatchStats(truncated=1, seconds=0.12345678), num_layers=4)
    assert stats == {"exit_layers": [0, 2, 0, 1], "truncated": 1, "seconds": 0.123457, "audit": None}
    empty = shard_stats(table.slice(0, 0), BatchStats(seconds=2.5), num_layers=4)
    assert empty["exit_layers"] == [0, 0, 0, 0] and all(type(count) is int for count in empty["exit_layers"])
    assert empty["seconds"] == 2.5


def test_job_summary_sums_its_shards_in_ints_and_counts_a_shard_without_stats_as_nothing():
    from costeff_fast.jobs.predict import job_summary

    run = {"backend": "torch", "num_threads": 1, "device": "cpu"}
    shards = [{"rows": 3, "exit_layers": [1, 2, 0], "truncated": 1, "seconds": 0.5},
              {"rows": 2, "exit_layers": [0, 0, 2], "truncated": 0, "seconds": 0.25},
              {"rows": 0}]  # a shard written before its stats were kept: no exit layers, truncation or time
    summary, audit = job_summary(shards, num_layers=3, run=run, audit=None)
    assert audit is None
    assert summary == {"rows_per_second": 5 / 0.75, "seconds": 0.75, "exit_layer_histogram": [1, 2, 2],
                       "truncated": 1, **run}
    assert all(type(count) is int for count in summary["exit_layer_histogram"])
    nothing, _ = job_summary([], num_layers=3, run=run, audit=None)
    assert nothing["rows_per_second"] is None and nothing["seconds"] == 0.0 and nothing["truncated"] == 0
    assert nothing["exit_layer_histogram"] == [0, 0, 0] and all(type(c) is int for c in nothing["exit_layer_histogram"])


def test_job_summary_merges_audit_counts_only_for_an_audited_job_at_the_confidence_asked():
    from costeff_fast.audit import AuditCounts
    from costeff_fast.jobs.predict import job_summary

    counts = AuditCounts(2)
    counts.add(early=[0, 1, 1], exit_layer=[1, 2, 2], full=[0, 1, 0])
    shards = [{"rows": 3, "exit_layers": [1, 2], "seconds": 0.5, "audit": counts.to_dict()}]
    run = {"backend": "torch", "num_threads": 1, "device": "cpu"}
    _, none = job_summary(shards, num_layers=2, run=run, audit=None)  # counts of a job without an audit: unread
    assert none is None
    _, result = job_summary(shards + shards, num_layers=2, run=run, confidence=0.99,
                            audit={"rate": 0.5, "seed": 3, "teacher": None})
    assert result["confidence"] == 0.99 and result["rows"] == 6 and (result["rate"], result["seed"]) == (0.5, 3)


def test_run_local_refuses_a_ray_job_and_loads_the_model_at_the_jobs_local_threads(checkpoint, tmp_path,  # noqa: F811
                                                                                  monkeypatch):
    import costeff_fast.jobs.predict as predict_module

    source = tmp_path / "rows.csv"
    source.write_text("text\nfine\n")
    with pytest.raises(JobArgumentError) as refused:
        predict_module.run_local(PredictJob(checkpoint, source, tmp_path / "a", engine="ray"))
    assert str(refused.value) == ("--engine ray: run_local runs local jobs; run this one with "
                                  "costeff_fast.integrations.ray.run_ray")
    seen = []

    def stop_here(job, *, num_threads):
        seen.append(num_threads)
        raise JobArgumentError("stop")

    monkeypatch.setattr(predict_module, "load_job_model", stop_here)
    for threads in (None, 2):
        with pytest.raises(JobArgumentError, match="^stop$"):
            predict_module.run_local(PredictJob(checkpoint, source, tmp_path / "b", num_threads=threads))
    assert seen == ["auto", 2]


@pytest.mark.parametrize(("column", "flag"), [(f"logit_{LABELS[0]}", "output_logits"), ("entropy", "output_entropy")])
def test_run_local_refuses_keep_columns_that_clash_with_the_logits_or_entropy_asked_for(checkpoint, tmp_path,  # noqa: F811
                                                                                       column, flag):
    import costeff_fast.jobs.predict as predict_module

    source = tmp_path / "rows.csv"
    source.write_text(f"text,{column}\nfine,x\n")
    job = PredictJob(checkpoint, source, tmp_path / "out", keep_columns=[column], **{flag: True})
    with pytest.raises(JobArgumentError, match=f"^--keep-columns {column}: the output already has"):
        predict_module.run_local(job)
    assert not (tmp_path / "out").exists()


def test_a_resumed_job_logs_where_it_resumes_and_its_progress_bar_counts_every_input_row(checkpoint, texts, tmp_path,  # noqa: F811
                                                                                       monkeypatch, caplog, capsys):
    import costeff_fast.jobs.predict as predict_module
    from costeff_fast.jobs import run_predict
    from costeff_fast.jobs import shards as shards_module
    from costeff_fast.jobs.shards import MANIFEST

    import pyarrow.parquet as pq

    source = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"text": texts[:40]}), source, row_group_size=10)  # Parquet: the row count is known
    bars, real_tqdm = [], predict_module.tqdm

    def recording_tqdm(**kwargs):
        bars.append(kwargs)
        return real_tqdm(**kwargs)

    monkeypatch.setattr(predict_module, "tqdm", recording_tqdm)
    options = dict(shard_rows=16, batch_size=8, num_threads=1, backend="torch")
    out = tmp_path / "out"
    calls, write_manifest = [], shards_module.ShardWriter._write_manifest

    def stop_at_the_third(self):  # the first manifest, then shard 0; the third (shard 1's) never lands
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        write_manifest(self)

    monkeypatch.setattr(shards_module.ShardWriter, "_write_manifest", stop_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        run_predict(checkpoint, source, out, progress=None, **options)
    monkeypatch.setattr(shards_module.ShardWriter, "_write_manifest", write_manifest)
    committed = json.loads((out / MANIFEST).read_text())
    assert (committed["next_row"], len(committed["shards"])) == (16, 1)
    capsys.readouterr()
    with caplog.at_level("INFO", logger=predict_module.__name__):
        run_predict(checkpoint, source, out, resume=True, progress=True, **options)
        bar_text = capsys.readouterr().err
        run_predict(checkpoint, source, out, resume=True, progress=True, **options)  # complete: no bar at all
        run_predict(checkpoint, source, tmp_path / "quiet", progress=False, **options)
    assert [record.getMessage() for record in caplog.records if record.name == predict_module.__name__] == [
        f"costeff_fast: resuming {out} at row 16 (1 shards committed)",
        f"costeff_fast: {out} is complete; nothing to resume",
    ]
    # 40 input rows each time (Parquet metadata; a CSV's count is unknown, total=None); the resumed bar starts at the 16 committed; progress None leaves tqdm to decide (off
    # when stderr is no terminal), True forces it on, False off
    shared = dict(total=40, unit="rows", unit_scale=True, desc="predict", dynamic_ncols=True)
    assert bars == [dict(shared, initial=0, disable=None), dict(shared, initial=16, disable=False),
                    dict(shared, initial=0, disable=True)]
    assert "predict: 100%" in bar_text and "rows/s" in bar_text


def test_a_job_fails_a_row_for_a_nul_byte_in_its_text_but_not_in_its_id_or_kept_columns(checkpoint, texts, tmp_path):  # noqa: F811
    from costeff_fast.jobs import run_predict

    source = tmp_path / "rows.jsonl"
    rows = [{"id": "a\x00", "text": texts[0], "note": "x"}, {"id": "b", "text": texts[1], "note": "y\x00"},
            {"id": "c", "text": texts[2][:4] + "\x00" + texts[2][4:], "note": "z"}]
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    summary = run_predict(checkpoint, source, tmp_path / "out", id_column="id", keep_columns=["note"],
                          num_threads=1, backend="torch", progress=False)
    # only row 2's text holds a NUL byte; the id of row 0 and the kept column of row 1 are data, copied as they are
    assert (summary.written, summary.failed) == (2, 1)
    written = [json.loads(line) for line in (tmp_path / "out" / summary.files[0]).read_text().splitlines()]
    assert [(row["id"], row["note"]) for row in written] == [("a\x00", "x"), ("b", "y\x00")]


def test_a_jsonl_jobs_numeric_ids_are_written_as_text_and_a_failed_pair_names_its_column(checkpoint, texts,  # noqa: F811
                                                                                          tmp_path):
    from costeff_fast.jobs import run_predict

    source = tmp_path / "rows.jsonl"
    rows = [{"n": 7, "text": texts[0], "second": texts[1]}, {"n": 8, "text": texts[2], "second": ""}]
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "out"
    summary = run_predict(checkpoint, source, out, id_column="n", text_pair_column="second", num_threads=1,
                          backend="torch", progress=False)
    # a JSON Lines id column is text whatever its values (the manifest's id type), so 7 is written as "7"
    assert [json.loads(line)["id"] for line in (out / summary.files[0]).read_text().splitlines()] == ["7"]
    [error] = [json.loads(line) for line in (out / "_errors.jsonl").read_text().splitlines()]
    assert (error["id"], error["reason"]) == ("8", "empty text: column 'second' is ''")


def test_a_jobs_batch_size_or_predict_rows_default_reaches_the_engine_and_a_failed_text_names_its_column(  # noqa: F811
        checkpoint, texts, tmp_path, monkeypatch):
    from costeff_fast.inference import CostEffEngineForSequenceClassification
    from costeff_fast.jobs import run_predict

    sizes, stream = [], CostEffEngineForSequenceClassification.generate_logits_stream

    def recording_stream(self, items, batch_size=64, **options):
        sizes.append(batch_size)
        return stream(self, items, batch_size, **options)

    monkeypatch.setattr(CostEffEngineForSequenceClassification, "generate_logits_stream", recording_stream)
    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps({"body": body}) + "\n" for body in [texts[0], " ", texts[1]]))
    out = tmp_path / "out"
    summary = run_predict(checkpoint, source, out, text_column="body", batch_size=5, num_threads=1, backend="torch",
                          progress=False)
    assert (summary.written, sizes) == (2, [5])  # one shard, one stream at --batch-size 5 rows per layer call
    [error] = [json.loads(line) for line in (out / "_errors.jsonl").read_text().splitlines()]
    assert (error["id"], error["reason"]) == (1, "empty text: column 'body' is ' '")
    predict_rows(costeff_fast.from_pretrained(checkpoint), texts[:2], [0, 1])
    assert sizes[1:] == [64]  # predict_rows' documented default, 64 rows per layer call


def test_a_shard_of_failed_rows_adds_no_exit_layers_and_each_shards_seconds_fit_in_the_jobs_wall_time(  # noqa: F811
        checkpoint, texts, tmp_path):
    from costeff_fast.jobs import run_predict
    from costeff_fast.jobs.shards import MANIFEST

    source = tmp_path / "rows.jsonl"
    rows = [None, " ", texts[0], texts[1], texts[2]]  # shard 0 (rows 0-1) fails whole; shard 1 and 2 have answers
    source.write_text("".join(json.dumps({"text": text}) + "\n" for text in rows))
    out = tmp_path / "out"
    began = time.perf_counter()
    summary = run_predict(checkpoint, source, out, shard_rows=2, num_threads=1, backend="torch", progress=False)
    wall = time.perf_counter() - began
    layers = [json.loads(line)["exit_layer"] for name in summary.files
              for line in (out / name).read_text().splitlines()]
    manifest = json.loads((out / MANIFEST).read_text())
    assert len(layers) == 3 and summary.exit_layer_sum == sum(layers)
    assert [shard["exit_layer_sum"] for shard in manifest["shards"]] == [0, sum(layers[:2]), layers[2]]
    # each shard's seconds are the reading and classifying since the previous commit: within the job's wall time
    assert all(0.0 <= shard["seconds"] <= wall for shard in manifest["shards"])
    assert sum(shard["seconds"] for shard in manifest["shards"]) <= wall


def test_a_failed_row_has_only_its_id_kept_columns_and_error_set(checkpoint, texts):  # noqa: F811
    model = costeff_fast.from_pretrained(checkpoint)
    table = predict_rows(model, [texts[0], None, texts[1]], [10, 11, 12], keep={"note": ["a", "b", "c"]},
                         output_logits=True, output_entropy=True)
    rows = table.to_pylist()
    assert {name: value for name, value in rows[1].items() if value is not None} == {
        "id": 11, "note": "b", "error": "missing text: column 'text' is null or absent"}
    for row in (rows[0], rows[2]):  # a classified row has every column but error
        assert row["error"] is None and all(row[name] is not None for name in table.schema.names if name != "error")
        assert row["label"] in LABELS


def test_predict_rows_fills_stats_with_the_calls_truncated_rows_and_its_wall_time(checkpoint, texts):  # noqa: F811
    from costeff_fast.jobs.predict import BatchStats

    model = costeff_fast.from_pretrained(checkpoint)
    rows = [texts[0], " ".join(texts[:8])]  # eight reviews pass the checkpoint's max length; one review does not
    over = [len(model.tokenizer(row)["input_ids"]) > model.max_length for row in rows]
    stats = BatchStats(truncated=99, seconds=-1.0)
    began = time.perf_counter()
    predict_rows(model, rows, [0, 1], stats=stats)
    wall = time.perf_counter() - began
    assert over == [False, True] and stats.truncated == 1 and stats.audit is None
    assert 0.0 < stats.seconds <= wall


def test_range_and_list_ids_take_the_id_type_asked_for(checkpoint, texts):  # noqa: F811
    model = costeff_fast.from_pretrained(checkpoint)
    for ids in (range(5, 7), [5, 6]):  # row numbers, or a Parquet id column of int32 read as Python ints
        table = predict_rows(model, texts[:2], ids, id_type=pa.int32())
        assert table.schema.field("id").type == pa.int32() and table.column("id").to_pylist() == [5, 6]
    assert predict_rows(model, texts[:2], range(5, 7)).schema.field("id").type == pa.int64()  # inferred: int64

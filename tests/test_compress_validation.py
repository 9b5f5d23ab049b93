"""compress checks every argument before the first training step and never destroys data outside --out."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import save_tiny_bert_teacher

from costeff_fast import cli
from costeff_fast.training import demo, pipeline
from costeff_fast.training.budget import budget_with
from costeff_fast.training.pipeline import CompressionSettings, compress
from costeff_fast.training.stage_cache import StageMismatchError
from costeff_fast.training.validate import CompressArgumentError, is_costeff_output, publish_output

SMALL = CompressionSettings(heads=1, ffn=16, embedding_rank=16)
REAL_TOKENIZER = pipeline.AutoTokenizer.from_pretrained  # before any test patches it


class TrainingStarted(AssertionError):
    """Raised by every patched stage: reaching one means validation let the arguments through."""


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, minilm_dir):
    """A tiny BERT classifier: 4 heads, FFN 64, hidden 32, 2 labels (rt's count)."""
    return save_tiny_bert_teacher(tmp_path_factory.mktemp("teacher"), minilm_dir)


@pytest.fixture
def no_training(monkeypatch):
    """Every step after validation raises :class:`TrainingStarted`; returns the names of the steps reached."""
    reached = []

    def stop(name):
        def fail(*args, **kwargs):
            reached.append(name)
            raise TrainingStarted(name)
        return fail

    for name in ("prepare_data", "finetune_teacher", "distill_teaching_assistant", "slenderize_stage", "recover",
                 "publish_output"):
        monkeypatch.setattr(pipeline, name, stop(name))
    monkeypatch.setattr(pipeline.AutoTokenizer, "from_pretrained", stop("tokenizer"))
    return reached


def edited_teacher(teacher, tmp_path, **changes):
    """A copy of ``teacher`` whose config.json has ``changes`` (a None value deletes the key)."""
    directory = tmp_path / "edited_teacher"
    shutil.copytree(teacher, directory)
    config = json.loads((directory / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def refused(match, task="rt", out=None, *, tmp_path, **kwargs):
    """Call compress, expect a one-line CompressArgumentError matching ``match``; check no work dir appeared."""
    work = kwargs.pop("work_dir", tmp_path / "work")
    existed = work.exists()
    with pytest.raises(CompressArgumentError, match=match) as info:
        compress(task, out or tmp_path / "out", work_dir=work, **kwargs)
    message = str(info.value)
    assert "\n" not in message and isinstance(info.value, ValueError)
    assert work.exists() == existed
    return message


def fake_costeff_output(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps({"model_type": "costeff"}))
    (directory / "report.json").write_text("{}")
    (directory / "model.safetensors").write_bytes(b"old weights")
    return directory


# --- valid arguments reach training (the guard itself works) ---------------------------------------------------


def test_valid_arguments_reach_the_first_step(teacher, tmp_path, no_training):
    with pytest.raises(TrainingStarted):
        compress("rt", tmp_path / "out", teacher_dir=teacher, settings=SMALL, work_dir=tmp_path / "work")
    assert no_training == ["tokenizer"]
    with pytest.raises(TrainingStarted):  # full-rank embedding and the teacher's own widths are allowed
        compress("rt", tmp_path / "out", teacher_dir=teacher, work_dir=tmp_path / "work",
                 settings=CompressionSettings(heads=4, ffn=64, embedding_rank=None))
    with pytest.raises(TrainingStarted):
        compress("rt", tmp_path / "out", teacher_dir=None, work_dir=tmp_path / "work",
                 settings=CompressionSettings(heads=12, ffn=1536, embedding_rank=384))


# --- task, budget, teacher ---------------------------------------------------------------------------------------


def test_unknown_task_lists_the_known_ones(teacher, tmp_path, no_training):
    message = refused("unknown task", "sst2", tmp_path=tmp_path, teacher_dir=teacher)
    assert "--task 'sst2'" in message and "rt, boolq, trec" in message
    refused("budget must be one of", tmp_path=tmp_path, teacher_dir=teacher, budget="huge")
    assert not no_training


@pytest.mark.parametrize("max_drop", [-0.01, 1.0, 5.0])
def test_max_drop_outside_a_fraction_is_refused_before_training(teacher, tmp_path, no_training, max_drop):
    refused(r"--max-drop .*\[0, 1\)", tmp_path=tmp_path, teacher_dir=teacher, settings=SMALL, max_drop=max_drop)
    assert not no_training


@pytest.mark.parametrize("field", ["teacher_epochs", "ta_prediction_epochs", "recovery_prediction_epochs"])
def test_budget_refuses_training_phases_without_steps(field):
    for value in (0, -1, float("inf")):
        with pytest.raises(ValueError, match=f"{field} must be a finite number > 0"):
            budget_with("quick", **{field: value})
    budget_with("quick", **{field: 0.25})  # fractions of an epoch are allowed


def test_budget_allows_skipping_hidden_phases_only():
    budget_with("quick", ta_hidden_epochs=0, recovery_hidden_epochs=0)
    with pytest.raises(ValueError, match="recovery_hidden_epochs must be a finite number >= 0"):
        budget_with("quick", recovery_hidden_epochs=-1)


def test_missing_teacher_directory(tmp_path, no_training):
    message = refused("no such directory", tmp_path=tmp_path, teacher_dir=tmp_path / "nowhere", settings=SMALL)
    assert message.startswith(f"--teacher {tmp_path / 'nowhere'}") and "--task-default" in message


def test_teacher_that_is_a_file_or_lacks_files(teacher, tmp_path, no_training):
    file = tmp_path / "teacher.bin"
    file.write_bytes(b"x")
    refused("is a file", tmp_path=tmp_path, teacher_dir=file, settings=SMALL)
    bare = tmp_path / "bare"
    bare.mkdir()
    refused("no config.json", tmp_path=tmp_path, teacher_dir=bare, settings=SMALL)
    (bare / "config.json").write_text("{not json")
    refused("not readable JSON", tmp_path=tmp_path, teacher_dir=bare, settings=SMALL)
    no_weights = tmp_path / "no_weights"
    shutil.copytree(teacher, no_weights, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    refused(r"no model\.safetensors \(weights are read from safetensors only\);", tmp_path=tmp_path,
            teacher_dir=no_weights, settings=SMALL)
    (no_weights / "pytorch_model.bin").write_bytes(b"a pickle")  # never unpickled, named in the refusal
    refused(r"pytorch_model\.bin is a pickle file, which is never loaded", tmp_path=tmp_path, teacher_dir=no_weights,
            settings=SMALL)
    no_tokenizer = tmp_path / "no_tokenizer"
    shutil.copytree(teacher, no_tokenizer, ignore=shutil.ignore_patterns("tokenizer*", "vocab.txt"))
    refused("no tokenizer", tmp_path=tmp_path, teacher_dir=no_tokenizer, settings=SMALL)
    assert not no_training


def test_unsupported_model_family_is_named(teacher, tmp_path, no_training):
    other = edited_teacher(teacher, tmp_path, model_type="gpt2", architectures=["GPT2ForSequenceClassification"])
    message = refused("model_type 'gpt2'", tmp_path=tmp_path, teacher_dir=other, settings=SMALL)
    assert "GPT2ForSequenceClassification" in message and "'roberta'" in message and "'distilbert'" in message


def test_teacher_that_is_not_a_sequence_classifier(teacher, tmp_path, no_training):
    encoder = edited_teacher(teacher, tmp_path, architectures=["BertModel"])
    message = refused("not a sequence classifier", tmp_path=tmp_path, teacher_dir=encoder, settings=SMALL)
    assert "BertModel" in message


def test_teacher_with_another_label_count(teacher, tmp_path, no_training):
    message = refused(r"^--task trec: the data has 6 classes \['ABBR', .*the teacher has 2;", "trec", tmp_path=tmp_path,
                      teacher_dir=teacher, settings=SMALL)
    assert "--task-default" in message


def test_teacher_tokenizer_larger_than_its_vocabulary(teacher, tmp_path, no_training, monkeypatch):
    """A teacher whose tokenizer knows more tokens than its embedding is refused after the tokenizer loads, before
    the data is tokenized: the checkpoint loader would refuse the result after hours of training. A tokenizer
    whose pad id differs from the config's (the multilingual MiniLM's XLM-R tokenizer) still passes."""
    monkeypatch.setattr(pipeline.AutoTokenizer, "from_pretrained", REAL_TOKENIZER)
    refused(r"the tokenizer has 30522 tokens but the teacher's vocab_size is 1000;", tmp_path=tmp_path,
            teacher_dir=edited_teacher(teacher, tmp_path, vocab_size=1000), settings=SMALL)
    assert no_training == []
    for name, changes in (("plain", {}), ("other_pad", {"pad_token_id": 1})):
        directory = edited_teacher(teacher, tmp_path / name, **changes)
        with pytest.raises(TrainingStarted):  # reaches the data preparation
            compress("rt", tmp_path / "out", teacher_dir=directory, settings=SMALL, work_dir=tmp_path / "work")
    assert no_training == ["prepare_data", "prepare_data"]


# --- widths against the teacher ------------------------------------------------------------------------------------


@pytest.mark.parametrize("field,value,flag,limit", [
    ("heads", 5, "--heads", 4), ("heads", 0, "--heads", 4), ("ffn", 65, "--ffn", 64),
    ("embedding_rank", 33, "--embedding-rank", 32), ("embedding_rank", 0, "--embedding-rank", 32),
])
def test_widths_must_fit_the_teacher(teacher, tmp_path, no_training, field, value, flag, limit):
    settings = CompressionSettings(**{**SMALL.__dict__, field: value})
    message = refused(f"from 1 to {limit}", tmp_path=tmp_path, teacher_dir=teacher, settings=settings)
    assert message.startswith(f"{flag} {value}:") and "teacher" in message


@pytest.mark.parametrize("field,value,limit", [("heads", 13, 12), ("ffn", 1537, 1536), ("embedding_rank", 385, 384)])
def test_task_default_widths_must_fit_the_packaged_minilm(tmp_path, no_training, field, value, limit):
    settings = CompressionSettings(**{**SMALL.__dict__, field: value})
    message = refused(f"from 1 to {limit}", tmp_path=tmp_path, teacher_dir=None, settings=settings)
    assert "packaged MiniLM" in message


def test_a_geometric_schedule_or_steps_by_share_have_work_directories_of_their_own():
    """Stages cached by a linear run are never taken for a geometric one: the variant's directory names it (and
    the linear default keeps the name it always had)."""
    assert CompressionSettings().name == "h2-f160-rfull-uniform"
    assert CompressionSettings(schedule="geometric", front=(0.5,)).name == "h2-f160-rfull-uniform-geometric-front0.5"
    assert CompressionSettings(event_steps="by-share").name == "h2-f160-rfull-uniform-steps-by-share"


def test_unknown_allocation_and_exit_pooling(teacher, tmp_path, no_training):
    settings = CompressionSettings(**{**SMALL.__dict__, "allocation": "greedy"})
    refused("--allocation 'greedy'", tmp_path=tmp_path, teacher_dir=teacher, settings=settings)
    settings = CompressionSettings(**{**SMALL.__dict__, "schedule": "cosine"})
    message = refused("--pruning-schedule 'cosine'", tmp_path=tmp_path, teacher_dir=teacher, settings=settings)
    assert message.endswith("pass one of linear, geometric")
    settings = CompressionSettings(**{**SMALL.__dict__, "event_steps": "last"})
    message = refused("--event-steps 'last'", tmp_path=tmp_path, teacher_dir=teacher, settings=settings)
    assert message.endswith("pass one of even, by-share")
    refused("--exit-pooling 'max'", tmp_path=tmp_path, teacher_dir=teacher, settings=SMALL, exit_pooling="max")


# --- --out and --work-dir --------------------------------------------------------------------------------------


def test_out_that_is_a_file_is_refused_and_untouched(teacher, tmp_path, no_training):
    out = tmp_path / "model.bin"
    out.write_bytes(b"user data")
    refused("is an existing file", out=out, tmp_path=tmp_path, teacher_dir=teacher, settings=SMALL)
    refused("is a file, not a directory", out=out / "sub", tmp_path=tmp_path, teacher_dir=teacher, settings=SMALL)
    assert out.read_bytes() == b"user data"


def test_out_holding_user_files_is_refused_without_overwrite(teacher, tmp_path, no_training):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    message = refused("not a COST-EFF output", out=out, tmp_path=tmp_path, teacher_dir=teacher, settings=SMALL)
    assert "notes.txt" in message and "--overwrite" in message
    assert (out / "notes.txt").read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with pytest.raises(TrainingStarted):
        compress("rt", out, teacher_dir=teacher, settings=SMALL, work_dir=tmp_path / "work", overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"


def test_previous_costeff_output_and_empty_out_pass(teacher, tmp_path, no_training):
    for out in (fake_costeff_output(tmp_path / "previous"), tmp_path / "empty"):
        out.mkdir(exist_ok=True)
        with pytest.raises(TrainingStarted):
            compress("rt", out, teacher_dir=teacher, settings=SMALL, work_dir=tmp_path / "work")
    # A config.json alone (say, an HF model) is not a COST-EFF output.
    (tmp_path / "previous" / "report.json").unlink()
    refused("not a COST-EFF output", out=tmp_path / "previous", tmp_path=tmp_path, teacher_dir=teacher,
            settings=SMALL)


def test_work_dir_that_is_a_file(teacher, tmp_path, no_training):
    work = tmp_path / "work"
    work.write_text("user data")
    refused("--work-dir .* is an existing file", work_dir=work, tmp_path=tmp_path, teacher_dir=teacher,
            settings=SMALL)
    assert work.read_text() == "user data"


def test_out_must_not_contain_the_work_dir_or_the_teacher(teacher, tmp_path, no_training):
    out = tmp_path / "out"
    refused("contains the work directory", out=out, work_dir=out / "work", tmp_path=tmp_path, teacher_dir=teacher,
            settings=SMALL, overwrite=True)
    refused("contains the work directory", out=out, work_dir=out, tmp_path=tmp_path, teacher_dir=teacher,
            settings=SMALL)
    inner = out / "teacher"
    shutil.copytree(teacher, inner)
    refused("contains the teacher", out=out, tmp_path=tmp_path, teacher_dir=inner, settings=SMALL, overwrite=True)
    assert (inner / "config.json").is_file()


# --- the swap ----------------------------------------------------------------------------------------------------


def write_new(staging: Path) -> str:
    fake_costeff_output(staging)
    (staging / "model.safetensors").write_bytes(b"new weights")
    return "report"


def siblings(tmp_path):
    return sorted(p.name for p in tmp_path.iterdir())


def test_publish_creates_a_missing_out(tmp_path):
    assert publish_output(tmp_path / "a" / "out", write_new, overwrite=False) == "report"
    assert (tmp_path / "a" / "out" / "model.safetensors").read_bytes() == b"new weights"
    assert siblings(tmp_path / "a") == ["out"]


def test_publish_replaces_a_previous_output_and_with_overwrite_user_files(tmp_path):
    previous = fake_costeff_output(tmp_path / "out")
    publish_output(previous, write_new, overwrite=False)
    assert (previous / "model.safetensors").read_bytes() == b"new weights" and is_costeff_output(previous)
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    publish_output(user, write_new, overwrite=True)
    assert not (user / "notes.txt").exists() and is_costeff_output(user)
    assert siblings(tmp_path) == ["mine", "out"]


def test_a_crash_while_writing_leaves_the_old_out_intact(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")

    def crash(staging):
        write_new(staging)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        publish_output(out, crash, overwrite=True)
    assert siblings(tmp_path) == ["out"] and sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_a_failed_swap_restores_the_old_out(tmp_path, monkeypatch):
    out = fake_costeff_output(tmp_path / "out")
    rename = Path.rename

    def failing_rename(self, target):
        if self.name.startswith(".out.partial-"):
            raise OSError("rename failed")
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", failing_rename)
    with pytest.raises(OSError, match="rename failed"):
        publish_output(out, write_new, overwrite=False)
    assert (out / "model.safetensors").read_bytes() == b"old weights"
    assert not any(name.startswith(".out.old-") for name in siblings(tmp_path))


def test_user_files_added_during_the_run_are_kept(tmp_path):
    out = tmp_path / "out"

    def user_writes_meanwhile(staging):
        write_new(staging)
        out.mkdir()
        (out / "notes.txt").write_text("mine")

    with pytest.raises(CompressArgumentError, match="new checkpoint is kept in") as info:
        publish_output(out, user_writes_meanwhile, overwrite=False)
    assert (out / "notes.txt").read_text() == "mine"
    staging = Path(str(info.value).rsplit("kept in ", 1)[1].rstrip(")"))
    assert (staging / "model.safetensors").read_bytes() == b"new weights"


# --- the CLI -------------------------------------------------------------------------------------------------------


def cli_refusal(capsys, args):
    with pytest.raises(SystemExit) as info:
        cli.main(["compress", *args])
    assert info.value.code == 2
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr and stderr.count("\n") == 1 and stderr.startswith("costeff-fast: error: ")
    return stderr


def test_cli_refusals_are_one_line_with_status_2(teacher, tmp_path, capsys, no_training):
    base = ["--work-dir", str(tmp_path / "work"), "--ffn", "16", "--embedding-rank", "16", "--heads", "1"]
    assert "unknown task" in cli_refusal(capsys, ["--teacher", str(teacher), "--task", "sst2",
                                                  "--out", str(tmp_path / "o"), *base])
    assert "no such directory" in cli_refusal(capsys, ["--teacher", str(tmp_path / "missing"), "--task", "rt",
                                                       "--out", str(tmp_path / "o"), *base])
    assert "--heads 13" in cli_refusal(capsys, ["--task-default", "--task", "rt", "--out", str(tmp_path / "o"),
                                                *base, "--heads", "13"])
    file = tmp_path / "file"
    file.write_text("user data")
    assert "--out" in cli_refusal(capsys, ["--teacher", str(teacher), "--task", "rt", "--out", str(file), *base])
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    assert "--overwrite" in cli_refusal(capsys, ["--teacher", str(teacher), "--task", "rt", "--out", str(user), *base])
    assert file.read_text() == "user data" and (user / "notes.txt").read_text() == "mine"
    for flag, value in (("--max-drop", "-0.5"), ("--max-drop", "1"), ("--teacher-epochs", "0"),
                        ("--ta-epochs", "-1"), ("--recovery-epochs", "0")):
        with pytest.raises(SystemExit) as info:  # argparse's refusal: usage, then one error line naming the flag
            cli.main(["compress", "--task-default", "--task", "rt", "--out", str(tmp_path / "o"), *base, flag, value])
        assert info.value.code == 2
        assert capsys.readouterr().err.splitlines()[-1].startswith(f"costeff-fast compress: error: argument {flag}:")
    assert not (tmp_path / "work").exists() and not no_training
    with pytest.raises(SystemExit) as info:  # accepted: the first step ran, and its exception is no refusal (70)
        cli.main(["compress", "--teacher", str(teacher), "--task", "rt", "--out", str(user), *base, "--overwrite"])
    assert info.value.code == 70 and no_training
    assert "TrainingStarted" in capsys.readouterr().err


def test_cli_verbose_shows_the_traceback(tmp_path, capsys, no_training):
    with pytest.raises(SystemExit) as info:
        cli.main(["compress", "--task-default", "--task", "sst2", "--out", str(tmp_path / "o"), "-v"])
    assert info.value.code == 2
    stderr = capsys.readouterr().err
    assert "Traceback" in stderr and stderr.splitlines()[-1].startswith("costeff-fast: error: --task 'sst2'")


def test_cli_refuses_a_stage_built_with_other_parameters_in_one_line(tmp_path, capsys, monkeypatch):
    def stale(*args, **kwargs):
        raise StageMismatchError(f"{tmp_path / 'ta'} was built with lr=5e-05 (this run: 0.0001): pass another "
                                 "--work-dir, or delete it to rebuild it")

    monkeypatch.setattr(pipeline, "compress", stale)
    stderr = cli_refusal(capsys, ["--task-default", "--task", "rt", "--out", str(tmp_path / "o")])
    assert "ta was built with lr=5e-05 (this run: 0.0001)" in stderr


# --- one tiny real run: a user's --out replaced with --overwrite, then the previous output without it -------------


def test_compress_swaps_out_in_a_real_run(teacher, tmp_path):
    budget = budget_with("quick", train_rows=128, eval_rows=64, max_length=32, ta_hidden_epochs=0,
                         ta_prediction_epochs=0.5, num_events=1, importance_batches=1, distill_steps=1,
                         recovery_hidden_epochs=0, recovery_prediction_epochs=0.5)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    first = compress("rt", out, teacher_dir=teacher, settings=SMALL, budget=budget, work_dir=tmp_path / "work",
                     overwrite=True)
    assert is_costeff_output(out) and not (out / "notes.txt").exists()
    second = compress("rt", out, teacher_dir=teacher, settings=SMALL, budget=budget, work_dir=tmp_path / "work")
    assert is_costeff_output(out) and second["accuracy"] == first["accuracy"]
    assert siblings(tmp_path) == ["out", "work"]


def test_demo_refuses_a_stage_built_with_other_parameters_in_one_line(tmp_path, capsys, monkeypatch):
    def stale(*args, **kwargs):
        raise StageMismatchError(f"{tmp_path}/teacher was built with train_rows=2000 (this run: 3000): pass "
                                 "another --work-dir, or delete it to rebuild it")

    monkeypatch.setattr(demo, "run_demo", stale)
    with pytest.raises(SystemExit) as info:
        cli.main(["demo", "--work-dir", str(tmp_path), "--budget", "quick"])
    stderr = capsys.readouterr().err
    assert info.value.code == 2 and stderr.count("\n") == 1
    assert stderr.startswith("costeff-fast: error: ") and "train_rows=2000 (this run: 3000)" in stderr

"""Mid-stage resumption: a training call or a stage killed part-way and run again ends where an uninterrupted one
ends, bit for bit; saved progress from other code or other parameters is refused, never silently reused."""

from __future__ import annotations

import json
import shutil
import threading

import pytest
import torch
from conftest import save_tiny_bert_teacher
from datasets import Dataset
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from transformers import AutoTokenizer

from costeff_fast.training import slenderize as slenderize_module
from costeff_fast.training.budget import budget_with
from costeff_fast.training.data import make_loader
from costeff_fast.training.pipeline import CompressionSettings, compress
from costeff_fast.training.resume import SECONDS, Progress, exclusive, resumable
from costeff_fast.training.stage_cache import PARTIAL, RECORD, StageMismatchError, run_stage
from costeff_fast.training.trainer import repeat_epochs, train


@pytest.fixture(scope="module")
def tiny_rt_teacher(tmp_path_factory, minilm_dir):
    return save_tiny_bert_teacher(tmp_path_factory.mktemp("tiny_teacher"), minilm_dir, num_hidden_layers=3)


class Killed(Exception):
    """Stands in for the process being killed in the middle of a step."""


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))


def make_batches():
    """Shuffled batches whose order comes from the loader's own generator (as the pipeline's loaders)."""
    data = torch.Generator().manual_seed(1)
    features, labels = torch.randn(40, 6, generator=data), torch.randint(0, 3, (40,), generator=data)
    loader = DataLoader(TensorDataset(features, labels), batch_size=8, shuffle=True,
                        generator=torch.Generator().manual_seed(2))
    return repeat_epochs(lambda: loader)


def toy_loss(model, batch):
    features, labels = batch
    return nn.functional.cross_entropy(model(features), labels)


def loss_killed_at(call: int | None, loss=toy_loss):
    """``loss`` (by default the toy models' cross-entropy) raising :class:`Killed` on its ``call``-th use
    (1-based; None: never)."""
    calls = 0

    def loss_fn(model, batch):
        nonlocal calls
        calls += 1
        if calls == call:
            raise Killed
        return loss(model, batch)

    return loss_fn


def evaluate(model) -> float:
    """A metric that moves with the weights, so the best-weights choice depends on the resumed state."""
    return -float(model[0].weight.detach().sum())


def two_calls(loss_fn, **kwargs):
    """Two training calls sharing one batch stream, as the pipeline's distillation phases and pruning events do:
    dropout and the shuffles draw from RNG, the second call depends on where the first left the stream."""
    torch.manual_seed(5)
    model, batches = make_model(), make_batches()
    first = train(model, batches, loss_fn, steps=7, lr=1e-2, evaluate=evaluate, eval_every=3, progress=False,
                  **kwargs)
    second = train(model, batches, loss_fn, steps=9, lr=1e-2, schedule="constant", progress=False, **kwargs)
    return model, first, second, next(batches)


def assert_same(left, right):
    model_a, first_a, second_a, batch_a = left
    model_b, first_b, second_b, batch_b = right
    for (name, a), (_, b) in zip(model_a.state_dict().items(), model_b.state_dict().items()):
        assert torch.equal(a, b), name
    assert (first_a, second_a) == (first_b, second_b)
    assert all(torch.equal(a, b) for a, b in zip(batch_a, batch_b))  # the stream continues at the same batch


@pytest.mark.parametrize("kill_at", [2, 5, 9, 12])  # first call mid-way / past an evaluation, second call
def test_a_killed_run_resumes_to_the_uninterrupted_result(tmp_path, kill_at):
    uninterrupted = two_calls(loss_killed_at(None))
    with resumable(tmp_path, every_seconds=0), pytest.raises(Killed):
        two_calls(loss_killed_at(kill_at))
    assert (tmp_path / "train-0.pt").is_file()
    torch.manual_seed(123)  # a new process: the global RNG is wherever it is
    with resumable(tmp_path, every_seconds=0):
        resumed = two_calls(loss_killed_at(None))
    assert_same(uninterrupted, resumed)


def test_length_grouped_batches_resume_to_the_same_result(tmp_path, minilm_dir):
    """The loader ``--group-by-length`` trains with (its own generator orders the groups and the batches)."""
    generator = torch.Generator().manual_seed(0)
    ids = [torch.randint(1000, 2000, (int(n),), generator=generator).tolist()
           for n in torch.randint(2, 60, (120,), generator=generator)]
    rows = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(row) for row in ids],
                              "labels": [len(row) % 3 for row in ids]})
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)

    def run(kill_at):
        loader = make_loader(rows, tokenizer, 16, shuffle=True, seed=3, group_by_length=True)  # a new process's
        torch.manual_seed(0)
        model = nn.ModuleDict({"embed": nn.EmbeddingBag(2000, 8, mode="sum"), "drop": nn.Dropout(0.3),
                               "out": nn.Linear(8, 3)})

        def bag_loss(m, batch):
            pooled = m["embed"](batch["input_ids"], per_sample_weights=batch["attention_mask"].float())
            return nn.functional.cross_entropy(m["out"](m["drop"](pooled)), batch["labels"])

        train(model, repeat_epochs(lambda: loader), loss_killed_at(kill_at, bag_loss), steps=20, lr=1e-2,
              progress=False)
        return model

    expected = run(None)
    with resumable(tmp_path, every_seconds=0), pytest.raises(Killed):
        run(13)  # in the second pass over the 8 batches
    with resumable(tmp_path, every_seconds=0):
        resumed = run(None)
    assert all(torch.equal(a, b) for a, b in zip(expected.state_dict().values(), resumed.state_dict().values()))


def test_saves_between_time_limits_only_at_evaluations(tmp_path):
    uninterrupted = two_calls(loss_killed_at(None))
    with resumable(tmp_path, every_seconds=1e9), pytest.raises(Killed):
        two_calls(loss_killed_at(5))  # the evaluation after step 3 saved; steps 4 redone
    assert torch.load(tmp_path / "train-0.pt", weights_only=True)["step"] == 3
    with resumable(tmp_path, every_seconds=1e9):
        resumed = two_calls(loss_killed_at(None))
    assert_same(uninterrupted, resumed)


def test_outside_resumable_nothing_is_saved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    two_calls(loss_killed_at(None))
    assert list(tmp_path.iterdir()) == []


def test_progress_of_another_call_is_refused(tmp_path):
    with resumable(tmp_path, every_seconds=0), pytest.raises(Killed):
        two_calls(loss_killed_at(2))
    with resumable(tmp_path, every_seconds=0), pytest.raises(StageMismatchError, match="train-0.pt holds the progr"):
        train(make_model(), make_batches(), loss_killed_at(None), steps=4, lr=1e-2, progress=False)
    with resumable(tmp_path, every_seconds=0), pytest.raises(StageMismatchError, match="does not fit the model"):
        model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 3))
        train(model, make_batches(), loss_killed_at(None), steps=7, lr=1e-2, evaluate=evaluate, eval_every=3,
              progress=False)


def test_progress_from_another_device_or_autocast_is_refused(tmp_path):
    with resumable(tmp_path, every_seconds=0), pytest.raises(Killed):
        two_calls(loss_killed_at(2))
    with resumable(tmp_path, every_seconds=0), pytest.raises(StageMismatchError, match="pass --device cpu"):
        two_calls(loss_killed_at(None), autocast=True)


def test_a_numpy_metric_still_resumes(tmp_path):
    """Metrics from numpy or sklearn (np.float64) are stored as floats, which the safe loader reads."""
    np = pytest.importorskip("numpy")

    def run(loss_fn):
        torch.manual_seed(5)
        model = make_model()
        result = train(model, make_batches(), loss_fn, steps=7, lr=1e-2, evaluate=lambda m: np.float64(evaluate(m)),
                       eval_every=3, progress=False)
        return model, result

    model_a, result_a = run(loss_killed_at(None))
    with resumable(tmp_path, every_seconds=0), pytest.raises(Killed):
        run(loss_killed_at(5))
    with resumable(tmp_path, every_seconds=0):
        model_b, result_b = run(loss_killed_at(None))
    assert result_a == result_b
    assert all(torch.equal(a, b) for a, b in zip(model_a.state_dict().values(), model_b.state_dict().values()))


def test_unreadable_progress_names_the_file(tmp_path):
    (tmp_path / "train-0.pt").write_bytes(b"not a checkpoint")
    with resumable(tmp_path), pytest.raises(StageMismatchError, match="unreadable progress checkpoint"):
        train(make_model(), make_batches(), loss_killed_at(None), steps=2, lr=1e-2, progress=False)


def test_negative_interval_is_refused(tmp_path):
    with pytest.raises(ValueError, match="every_seconds must be >= 0"):
        with resumable(tmp_path, every_seconds=-1):
            pass


class Saved(nn.Module):
    """A stage's model: saves its weights as ``save_pretrained`` would."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def save_pretrained(self, directory):
        torch.save(self.model.state_dict(), directory / "weights.pt")


class Tokenizer:
    def save_pretrained(self, directory):
        (directory / "tokenizer.json").write_text("{}")


def stage(directory, kill_at, params):
    def build():
        model, first, second, _ = two_calls(loss_killed_at(kill_at))
        return Saved(model), {"losses": [first.mean_loss, second.mean_loss]}

    return run_stage(directory, build, tokenizer=Tokenizer(), seed=3, params=params, checkpoint_seconds=0)


def test_a_killed_stage_resumes_and_cleans_up(tmp_path):
    reference = stage(tmp_path / "reference", None, {"lr": 1e-2})
    directory = tmp_path / "stage"
    with pytest.raises(Killed):
        stage(directory, 10, {"lr": 1e-2})
    assert not (directory / RECORD).exists()
    assert json.loads((directory / PARTIAL / "params.json").read_text()) == {"lr": 1e-2, "seed": 3}
    with pytest.raises(StageMismatchError, match="unfinished run with other lr"):
        stage(directory, None, {"lr": 2e-2})
    (directory / PARTIAL / SECONDS).write_text(json.dumps({"seconds": 1000.0}))  # the killed run's training time
    record = stage(directory, None, {"lr": 1e-2})
    assert record["losses"] == reference["losses"] and record["params"] == reference["params"]
    assert record["seconds"] >= 1000.0  # the stage's time includes the run before the kill
    assert not (directory / PARTIAL).exists()
    saved, expected = (torch.load(d / "weights.pt", weights_only=True) for d in (directory, tmp_path / "reference"))
    assert all(torch.equal(saved[name], expected[name]) for name in expected)


def test_progress_left_after_the_record_is_removed_on_the_next_run(tmp_path):
    """A kill between writing the record and removing ``partial`` leaves it behind: the next run removes it (it
    would otherwise be copied into the published checkpoint)."""
    first = stage(tmp_path, None, {"lr": 1e-2})
    (tmp_path / PARTIAL).mkdir()
    (tmp_path / PARTIAL / "train-0.pt").write_bytes(b"left behind")
    assert stage(tmp_path, 5, {"lr": 1e-2}) == first  # cached: nothing trains (a kill at step 5 never comes)
    assert not (tmp_path / PARTIAL).exists()


def test_a_second_run_of_the_same_stage_waits_and_reuses_the_first_ones_result(tmp_path):
    built = []

    def build():
        built.append(True)
        return Saved(make_model()), {}

    second = {}
    with exclusive(tmp_path / PARTIAL):  # the first run, still building
        waiting = threading.Thread(target=lambda: second.update(
            run_stage(tmp_path, build, tokenizer=Tokenizer(), seed=0, params={"a": 1})))
        waiting.start()
        waiting.join(timeout=1.0)
        assert waiting.is_alive()  # blocked on the lock
        first = run_stage(tmp_path / "elsewhere", build, tokenizer=Tokenizer(), seed=0, params={"a": 1})
        (tmp_path / RECORD).write_text(json.dumps(first))  # the first run finishes
        (tmp_path / "weights.pt").write_bytes(b"")
    waiting.join(timeout=30)
    assert second == first and len(built) == 1  # the waiting run built nothing


def test_a_slenderization_killed_between_pruning_events_resumes_to_the_same_model(tmp_path, monkeypatch,
                                                                                 tiny_rt_teacher):
    """The real pipeline: the slender stage is killed in its second event's distillation (after one pruning
    event and before the next); rerun, it replays the first event from its saved result, resumes the second and
    saves the model an uninterrupted run saves."""
    budget = budget_with("quick", train_rows=128, eval_rows=64, max_length=32, ta_hidden_epochs=0.25,
                         ta_prediction_epochs=0.25, num_events=2, importance_batches=2, distill_steps=3,
                         recovery_hidden_epochs=0.25, recovery_prediction_epochs=0.25)
    settings = CompressionSettings(heads=1, ffn=16, embedding_rank=16, allocation="global")

    def run(work):
        return compress("rt", tmp_path / f"out-{work}", teacher_dir=tiny_rt_teacher, budget=budget, settings=settings,
                        work_dir=tmp_path / work)

    uninterrupted = run("a")
    shutil.copytree(tmp_path / "a" / "ta", tmp_path / "b" / "ta")  # shared, as bench/run_standard_all.sh does
    real_train, calls = slenderize_module.train, []

    def killed_in_second_event(model, batches, loss_fn, **kwargs):
        calls.append(kwargs["desc"])
        steps_left = 2 if len(calls) == 2 else None

        def loss(m, batch):
            nonlocal steps_left
            if steps_left is not None:
                steps_left -= 1
                if steps_left == 0:
                    raise Killed
            return loss_fn(m, batch)

        return real_train(model, batches, loss, **kwargs)

    monkeypatch.setattr(slenderize_module, "train", killed_in_second_event)
    monkeypatch.setattr(Progress, "due", lambda self: True)  # save after every step
    with pytest.raises(Killed):
        run("b")
    [partial] = (tmp_path / "b").glob(f"*/slender/{PARTIAL}")
    assert sorted(p.name for p in partial.glob("train-*.pt")) == ["train-0.pt", "train-1.pt"]
    monkeypatch.setattr(slenderize_module, "train", real_train)
    resumed = run("b")
    assert not partial.exists()
    [slender_a] = (tmp_path / "a").glob("*/slender")
    [slender_b] = (tmp_path / "b").glob("*/slender")
    a, b = (load_file(d / "model.safetensors") for d in (slender_a, slender_b))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    record_a, record_b = (json.loads((d / RECORD).read_text()) for d in (slender_a, slender_b))
    assert record_a["events"] == record_b["events"]
    assert resumed["accuracy"] == uninterrupted["accuracy"]

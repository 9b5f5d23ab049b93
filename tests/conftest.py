"""Shared fixtures: tiny random COST-EFF models, the backends this machine runs, the real packaged MiniLM."""

from __future__ import annotations

import importlib.util
import logging
import os

import torch

if not torch.cuda.is_available():  # Triton kernels pick the interpreter when they are defined: set it first
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

# Under pytest-xdist (``make test``), each worker takes its share of the CPUs: two workers at torch's default of one
# thread per core would run twice as many threads as there are cores, and OpenMP's waiting threads would slow both.
# Tests that need several threads set them (tests/test_native.py, tests/test_threads.py).
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    torch.set_num_threads(max(1, torch.get_num_threads() // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

import costeff_fast  # noqa: E402,F401  (registers the Auto classes)
from costeff_fast import CostEffConfig, CostEffForSequenceClassification, native  # noqa: E402
from costeff_fast import threads as threads_module  # noqa: E402

#: every backend that runs here in fp32, so it can be held to the reference's tolerances: torch always, native
#: when csrc builds, triton under the interpreter (on a CUDA GPU it stores fp16: test_triton_backend.py and the
#: GPU check cover it with fp16 tolerances)
AVAILABLE_BACKENDS = ["torch"] + (["native"] if native.available() else []) + (
    ["triton"] if importlib.util.find_spec("triton") is not None and not torch.cuda.is_available() else []
)


def make_tiny_model(seed: int = 0, *, num_labels: int = 3, weight_std: float = 0.3, **overrides):
    """A random multi-exit model with uneven per-layer widths, factorized embedding and one pooled exit."""
    torch.manual_seed(seed)
    fields = dict(
        vocab_size=97, hidden_size=32, num_hidden_layers=4, num_attention_heads=[2, 1, 3, 2],
        attention_head_size=8, intermediate_size=[16, 40, 7, 24], num_labels=num_labels,
        max_position_embeddings=64, embedding_rank=12, exit_pooler=[False, True, False, False],
    )
    fields.update(overrides)
    model = CostEffForSequenceClassification(CostEffConfig(**fields)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, weight_std)
    return model


def random_batch(seed: int, batch: int, vocab: int, max_len: int = 20, pairs: bool = False):
    """Right-padded random ``input_ids``, ``attention_mask``, ``token_type_ids`` with uneven lengths >= 1."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, max_len + 1, (batch,), generator=generator)
    seq = int(lengths.max())
    mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
    ids = torch.randint(1, vocab, (batch, seq), generator=generator) * mask
    types = torch.zeros_like(ids)
    if pairs:
        split = (lengths.float() * torch.rand(batch, generator=generator)).long()
        types = ((torch.arange(seq)[None, :] >= split[:, None]).long()) * mask
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def save_tiny_bert_teacher(directory, tokenizer_dir, num_hidden_layers: int = 2):
    """Write a tiny random BERT classifier (hidden 32, 4 heads, FFN 64, 2 labels) with a real tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=num_hidden_layers, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, num_labels=2)
    BertForSequenceClassification(config).save_pretrained(directory)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(directory)
    return directory


@pytest.fixture
def tiny_model():
    return make_tiny_model()


@pytest.fixture(scope="session")
def minilm_dir():
    from costeff_fast.training.data import packaged_minilm_dir

    return packaged_minilm_dir()


@pytest.fixture(autouse=True)
def restore_logging():
    """The CLI's ``main`` sets the costeff_fast logger's level (process-wide, from --log-level/-q/-v); put it back
    after every test so one command's level never hides another test's log records."""
    package = logging.getLogger("costeff_fast")
    level = package.level
    yield
    package.setLevel(level)


@pytest.fixture(autouse=True)
def auto_threads_at_the_ceiling(request, monkeypatch):
    """Outside tests/test_threads.py, ``num_threads="auto"`` stays at its ceiling: many tests compare two engine
    calls bit for bit, and a thread count that follows the machine's load between them would change the fp32
    summation order (logits then differ by rounding, which the library documents). test_threads.py tests the
    policy itself."""
    if request.module.__name__.rpartition(".")[2] != "test_threads":
        monkeypatch.setattr(threads_module.AutoThreads, "threads", lambda self: self.max_threads)


# A small real model trained inside the test session (tests/test_trained_model.py, and only there): what
# `make demo` runs (costeff_fast.training.demo.run_demo: compress with the packaged MiniLM fine-tuned as the
# teacher, the `--task-default` path, then early-exit inference next to HF on rt's validation split), on a budget
# small enough for about two minutes on 2 CPU cores (about three on the one thread of a `make test` worker).
# Widths are compress's defaults (2 heads, FFN 160, the word embedding not factorized, mean-pooled exits).

#: the fields changed from the ``demo`` preset: 384 training rows (12 steps of 32 per epoch), 256 validation rows for
#: checkpoint choice and calibration (the other rt validation rows stay held out), 64 tokens, 2 pruning events. The
#: teacher needs 2 epochs at 2e-4: 1 epoch at 1e-4 left it at the majority class (0.578); 2 at 2e-4 reach about 0.77
#: (0.755 on 384 rows, grouped by length: the whole fixture in 82 s on 2 threads, 166 s on one beside another worker)
TRAINED_RT_BUDGET = dict(
    train_rows=384, eval_rows=256, max_length=64,
    teacher_epochs=2, teacher_lr=2e-4,
    ta_hidden_epochs=0, ta_prediction_epochs=1, ta_lr=1e-4,
    num_events=2, importance_batches=2, distill_steps=4,
    recovery_hidden_epochs=0, recovery_prediction_epochs=2, recovery_lr=1e-4,
    group_by_length=True,  # about half the padded tokens: the CI minutes go to real tokens
)


class TrainedRt:
    """What :func:`trained_rt` built: ``work_dir`` (run_demo's), ``model_dir`` (the checkpoint), ``results``
    (run_demo's return value), ``report`` (compress's ``report.json``), ``budget``, ``seconds`` (wall time), and rt's
    validation split as run_demo and compress read it: ``texts`` / ``labels`` (all rows, in order), ``eval_index``
    (the rows compress used: the split shuffled with the seed, the first ``eval_rows``) and ``held_out_index``
    (every other row)."""

    def __init__(self, work_dir, budget, results, seconds):
        import json

        from costeff_fast.data import load_task

        self.work_dir, self.model_dir, self.budget = work_dir, work_dir / "model", budget
        self.results, self.seconds = results, seconds
        self.report = json.loads((self.model_dir / "report.json").read_text())
        validation = load_task("rt", seed=0)["validation"]
        self.texts, self.labels = list(validation["text"]), torch.tensor(list(validation["label"]))
        # cap_rows' draw (Dataset.shuffle(seed).select(range(eval_rows))), as row indices of the whole split
        order = torch.tensor(validation.add_column("row", list(range(len(validation)))).shuffle(seed=0)["row"])
        self.eval_index, self.held_out_index = order[:budget.eval_rows], order[budget.eval_rows:]


@pytest.fixture(scope="session")
def trained_rt(tmp_path_factory):
    """run_demo on :data:`TRAINED_RT_BUDGET` (registered as the preset ``"ci"`` while it runs, since run_demo takes a
    preset name), seed 0, once per session."""
    import time

    from costeff_fast.training.budget import BUDGETS, budget_with
    from costeff_fast.training.demo import run_demo

    budget = budget_with("demo", name="ci", **TRAINED_RT_BUDGET)
    work_dir = tmp_path_factory.mktemp("trained_rt")
    started = time.perf_counter()
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(BUDGETS, "ci", budget)
        # the engine's thread count at its ceiling, as every test here runs it (see auto_threads_at_the_ceiling)
        patch.setattr(threads_module.AutoThreads, "threads", lambda self: self.max_threads)
        # the teacher timed once, not twice: CI reads no speed from this run (about 16 s saved)
        results = run_demo(work_dir, budget="ci", seed=0, teacher_timings=1)
    return TrainedRt(work_dir, budget, results, time.perf_counter() - started)


def pytest_collection_modifyitems(config, items):
    """The tests of the model trained in the session (tests/test_trained_model.py) first: under ``make test``'s
    pytest-xdist workers (``--dist loadfile``: a file goes whole to one worker, so a module fixture is built once;
    ``--no-loadscope-reorder``: the files go out in this order) the longest unit of work, the training included, then
    starts at once instead of last."""
    items.sort(key=lambda item: item.path.name != "test_trained_model.py")  # stable: the rest keep their order

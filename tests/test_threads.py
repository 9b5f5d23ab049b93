"""num_threads="auto": the thread count follows the cores other processes leave free (costeff_fast/threads.py)."""

from __future__ import annotations

import subprocess
import sys
import time
import types

import pytest
import torch

import costeff_fast
from costeff_fast import threads as threads_module
from costeff_fast import CostEffEngineForSequenceClassification
from costeff_fast.threads import AutoThreads, torch_threads
from conftest import make_tiny_model


class FakeClock:
    """Stands in for the ``time`` module inside costeff_fast.threads, plus the CPUs' busy seconds."""

    def __init__(self):
        self.now, self.own, self.busy = 0.0, 0.0, 0.0

    def monotonic(self):
        return self.now

    def process_time(self):
        return self.own

    def advance(self, seconds: float, others: float, own: float = 0.0):
        """``seconds`` of wall time in which other processes keep ``others`` cores and this one ``own`` busy."""
        self.now += seconds
        self.own += own * seconds
        self.busy += (others + own) * seconds


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(threads_module, "time", types.SimpleNamespace(monotonic=fake.monotonic,
                                                                      process_time=fake.process_time))
    monkeypatch.setattr(threads_module, "_cpu_busy_seconds", lambda cpus, ticks: fake.busy)
    monkeypatch.setattr(threads_module, "available_cpus", lambda: frozenset({0, 1, 2, 3}))
    return fake


@pytest.mark.parametrize("others, expected", [(0.0, 4), (0.4, 4), (1.0, 3), (1.6, 2), (3.0, 1), (7.5, 1)])
def test_auto_threads_leaves_the_busy_cores(clock, others, expected):
    policy = AutoThreads(max_threads=4)
    clock.advance(2.0, others=others)
    assert policy.threads() == expected
    assert policy.last_others == pytest.approx(others)


def test_own_cpu_time_is_not_counted_as_load(clock):
    policy = AutoThreads(max_threads=4)
    clock.advance(2.0, others=0.0, own=4.0)  # all four cores busy, all of it this process's threads
    assert policy.threads() == 4
    clock.advance(2.0, others=2.0, own=2.0)
    assert policy.threads() == 2


def test_ceiling_caps_the_count(clock):
    policy = AutoThreads(max_threads=2)
    clock.advance(2.0, others=0.0)
    assert policy.threads() == 2


def test_decision_is_reused_within_refresh_and_short_windows_keep_it(clock):
    policy = AutoThreads(max_threads=4)
    clock.advance(2.0, others=3.0)
    assert policy.threads() == 1
    clock.advance(threads_module.REFRESH_S / 2, others=0.0)
    assert policy.threads() == 1  # not re-read yet
    clock.advance(threads_module.REFRESH_S, others=0.0)
    assert policy.threads() == 4  # the load went away


def test_a_window_shorter_than_min_window_keeps_the_decision(clock):
    policy = AutoThreads(max_threads=4)
    clock.advance(threads_module.MIN_WINDOW_S / 2, others=3.0)
    assert policy.threads() == 4 and policy.last_others is None  # too short to judge: the ceiling stays
    clock.advance(2.0, others=3.0)
    assert policy.threads() == 1


def test_bad_max_threads_is_refused():
    for bad in (0, -3, "2", True):
        with pytest.raises(ValueError, match="max_threads must be a positive int"):
            AutoThreads(max_threads=bad)


def test_unreadable_proc_stat_falls_back_to_the_ceiling(monkeypatch, tmp_path):
    garbage = tmp_path / "stat"
    garbage.write_text("cpuX 1 2\ncpu0 a b c\n")
    monkeypatch.setattr(threads_module, "_STAT", str(garbage))
    policy = AutoThreads(max_threads=3)
    time.sleep(threads_module.MIN_WINDOW_S)
    assert policy.threads() == 3


def test_cpus_are_the_union_of_the_threads_affinities(monkeypatch):
    if not hasattr(threads_module.os, "sched_getaffinity") or not threads_module.os.path.isdir("/proc/self/task"):
        pytest.skip("needs sched_getaffinity and /proc/self/task")
    main = threads_module.os.getpid()
    real = threads_module.os.sched_getaffinity
    everything = frozenset(real(0))
    # as under OMP_PROC_BIND: the calling thread pinned to one CPU, the pool's threads to the others
    monkeypatch.setattr(threads_module.os, "sched_getaffinity",
                        lambda pid: {min(everything)} if pid in (0, main) else set(everything))
    monkeypatch.setattr(threads_module.os, "listdir", lambda path: [str(main), "999999"])
    assert threads_module.available_cpus() == everything


def test_without_proc_stat_the_ceiling_is_used(monkeypatch):
    monkeypatch.setattr(threads_module, "_STAT", "/nonexistent/stat")
    policy = AutoThreads(max_threads=3)
    time.sleep(threads_module.MIN_WINDOW_S)
    assert policy.threads() == 3


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/stat")
def test_a_spinning_process_takes_a_thread_away():
    cpus = sorted(threads_module.available_cpus())
    if len(cpus) < 2:
        pytest.skip("needs 2 CPUs")
    spin = "import os, time\nos.sched_setaffinity(0, {%d})\nend = time.time() + 30\nwhile time.time() < end: pass\n"
    spinner = subprocess.Popen([sys.executable, "-c", spin % cpus[0]])
    try:
        time.sleep(0.5)
        policy = AutoThreads(max_threads=len(cpus))
        time.sleep(1.5)
        assert policy.threads() <= len(cpus) - 1
        assert policy.last_others >= 0.7
    finally:
        spinner.kill()
        spinner.wait()


def test_torch_threads_restores_the_count_even_on_error():
    previous = torch.get_num_threads()
    target = 1 if previous != 1 else 2
    with torch_threads(target):
        assert torch.get_num_threads() == target
    assert torch.get_num_threads() == previous
    with pytest.raises(KeyError):
        with torch_threads(target):
            raise KeyError("boom")
    assert torch.get_num_threads() == previous
    with torch_threads(None):
        assert torch.get_num_threads() == previous


def test_engine_calls_restore_torch_threads_and_match(minilm_dir):
    from transformers import AutoTokenizer

    model, tokenizer = make_tiny_model(vocab_size=30522), AutoTokenizer.from_pretrained(minilm_dir)
    previous = torch.get_num_threads()
    texts = ["a short one", "another sentence that is longer than the first", "x"] * 5
    target = 1 if previous != 1 else 2  # a count different from torch's, so setting and restoring are both seen
    fixed = CostEffEngineForSequenceClassification.from_model(model, tokenizer, backend="torch", num_threads=target)
    auto = CostEffEngineForSequenceClassification.from_model(model, tokenizer, backend="torch")
    left = CostEffEngineForSequenceClassification.from_model(model, tokenizer, backend="torch", num_threads=None)
    assert auto.thread_policy is not None and left.thread_policy is None
    seen = []
    original = fixed.backend.layer

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return original(*args, **kwargs)

    fixed.backend.layer = spy
    reference = left.generate_logits(texts, entropy_threshold=0.0)
    torch.testing.assert_close(fixed.generate_logits(texts, entropy_threshold=0.0), reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(auto.generate_logits(texts, entropy_threshold=0.0), reference, rtol=1e-5, atol=1e-5)
    assert seen and set(seen) == {target}
    assert torch.get_num_threads() == previous
    seen.clear()
    streamed = dict((i, row) for i, row, _ in fixed.generate_logits_stream(iter(texts), 4, entropy_threshold=0.0))
    assert seen and set(seen) == {target}  # every streamed layer step ran on the instance's count
    assert torch.get_num_threads() == previous
    torch.testing.assert_close(torch.stack([streamed[i] for i in range(len(texts))]), reference, rtol=1e-5, atol=1e-5)
    steps = fixed.generate_logits_stream(iter(texts), 4, entropy_threshold=0.0)
    next(steps)
    assert torch.get_num_threads() == previous  # between yields the caller keeps its own count


@pytest.mark.parametrize("bad", [0, -2, "two", 1.5, True])
def test_bad_num_threads_is_refused(tmp_path, bad):
    make_tiny_model().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="num_threads must be 'auto', None or a positive int"):
        costeff_fast.from_pretrained(tmp_path, num_threads=bad)
    with pytest.raises(ValueError, match="num_threads must be 'auto', None or a positive int"):
        CostEffEngineForSequenceClassification.from_model(make_tiny_model(), None, num_threads=bad)

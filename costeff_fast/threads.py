"""Thread count for CPU engine calls on a shared machine: as many torch threads as there are cores that other
processes leave free (``num_threads="auto"``, the default of :func:`costeff_fast.from_pretrained`).

Why: torch's intra-op pool (OpenMP) splits every GEMM and kernel into one slice per thread and waits for the
slowest. When another process keeps one of the cores busy, the slice on that core waits for its time share and
the whole call slows to it: on 2 cores with one spinning process, 2 threads ran the COST-EFF engine 9 % slower than
1 thread, while on the idle machine they ran it 1.6x faster (the busy-core measurement of ``python
bench/run_cpu.py``, ``busy_core`` in ``bench/results/cpu.json``). So the count is chosen from the load, not fixed.

How: the kernel's per-CPU counters (``/proc/stat``, Linux ``proc(5)``) give the busy time of the CPUs this
process may run on (the union of its threads' ``sched_getaffinity``: OpenMP's ``OMP_PROC_BIND`` pins each
thread to one CPU); minus this process's own CPU time (``time.process_time``, all its threads) over the same
wall-clock window, it is the number of cores other processes kept busy. The call then runs on
``cpus - round(others)`` threads, at least 1 and at most the ceiling (torch's thread count when the model was
loaded, so ``OMP_NUM_THREADS`` and ``torch.set_num_threads`` still cap it). The window is the time since the
previous decision, at least :data:`MIN_WINDOW_S`; decisions are reused for :data:`REFRESH_S`. Where
``/proc/stat`` is missing or unreadable (not Linux) the ceiling is used.

Limits: the measure is the CPU time other processes *got*, not what they wanted, so when the machine is
oversubscribed it reads their demand low and the count settles above the free cores (on 2 cores with one busy
it reads about 0.7-1.0 and takes 1 thread, the case this was built for). CPUs are counted as the kernel lists
them: with SMT, hyper-threads count as CPUs while torch's default ceiling is the physical cores, so load below
the number of sibling threads does not lower the count.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator

import torch

#: seconds a thread-count decision is reused before the load is read again
REFRESH_S = 1.0
#: shortest window (seconds) over which the load is judged; a shorter one keeps the previous decision
MIN_WINDOW_S = 0.2

_STAT = "/proc/stat"


def _cpu_busy_seconds(cpus: frozenset[int], clock_ticks: float) -> float | None:
    """Busy (non-idle, non-iowait) seconds of ``cpus`` since boot, or None when ``/proc/stat`` cannot be read."""
    try:
        with open(_STAT, encoding="ascii") as stat:
            lines = stat.readlines()
        busy = 0
        for line in lines:
            if not line.startswith("cpu") or line.startswith("cpu "):
                continue
            name, *fields = line.split()
            if int(name[3:]) not in cpus:
                continue
            values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
            busy += sum(values) - values[3] - values[4]
    except (OSError, ValueError, IndexError):  # no /proc/stat, or a format this parser does not know
        return None
    return busy / clock_ticks


def available_cpus() -> frozenset[int]:
    """The CPU ids this process may run on: the union of its threads' affinities (``sched_getaffinity`` of each
    entry of ``/proc/self/task``, since a bound OpenMP runtime pins each thread to one CPU), the process's own
    where that cannot be read, all of ``os.cpu_count()`` without ``sched_getaffinity``."""
    if not hasattr(os, "sched_getaffinity"):
        return frozenset(range(os.cpu_count() or 1))
    cpus = set(os.sched_getaffinity(0))
    try:
        for task in os.listdir("/proc/self/task"):
            try:
                cpus |= os.sched_getaffinity(int(task))
            except OSError:  # the thread ended meanwhile
                continue
    except OSError:
        pass
    return frozenset(cpus)


class AutoThreads:
    """Chooses torch's intra-op thread count for each engine call from the other processes' load (module notes).

    Args:
        max_threads: the ceiling, an int >= 1 (default: ``torch.get_num_threads()`` now).

    Attributes:
        max_threads: the ceiling.
        cpus: the CPU ids counted (:func:`available_cpus` at construction).
        last_others: cores other processes kept busy over the last window (float, None before the first).

    Raises:
        ValueError: ``max_threads`` is not a positive int.
    """

    def __init__(self, max_threads: int | None = None):
        if max_threads is None:
            max_threads = torch.get_num_threads()
        if not isinstance(max_threads, int) or isinstance(max_threads, bool) or max_threads < 1:
            raise ValueError(f"max_threads must be a positive int, got {max_threads!r}")
        self.max_threads = max_threads
        self.cpus = available_cpus()
        self._ticks = float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0
        self._lock = threading.Lock()
        self._threads = self.max_threads
        self.last_others: float | None = None
        self._sample = self._read()
        self._decided_at = float("-inf")

    def _read(self) -> tuple[float, float, float] | None:
        busy = _cpu_busy_seconds(self.cpus, self._ticks)
        return None if busy is None else (time.monotonic(), busy, time.process_time())

    def threads(self) -> int:
        """The thread count for a call starting now (1 <= n <= ``max_threads``)."""
        with self._lock:
            now = time.monotonic()
            if now - self._decided_at < REFRESH_S or self._sample is None:
                return self._threads
            current = self._read()
            if current is None or current[0] - self._sample[0] < MIN_WINDOW_S:
                return self._threads
            wall = current[0] - self._sample[0]
            others = max(0.0, (current[1] - self._sample[1]) - (current[2] - self._sample[2])) / wall
            self.last_others = others
            free = len(self.cpus) - int(others + 0.5)
            self._threads = max(1, min(self.max_threads, free))
            self._sample, self._decided_at = current, now
            return self._threads


def check_num_threads(num_threads) -> None:
    """Refuse a ``num_threads`` that is not ``"auto"``, None or a positive int (ValueError, one line)."""
    if num_threads is None or num_threads == "auto":
        return
    if not isinstance(num_threads, int) or isinstance(num_threads, bool) or num_threads < 1:
        raise ValueError(f"num_threads must be 'auto', None or a positive int, got {num_threads!r}")


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(count)`` and restore the previous count after it (None: leave
    the count alone). With torch's OpenMP builds the count belongs to the calling thread (and is the default of
    threads that start using torch later), so call it from the thread that runs the model."""
    previous = torch.get_num_threads()
    if count is None or count == previous:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)

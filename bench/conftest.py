"""pytest options of the benchmark suite: ``--bench-threads N`` sets ``torch.set_num_threads`` for the session."""

from __future__ import annotations

import torch


def pytest_addoption(parser):
    parser.addoption("--bench-threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def pytest_configure(config):
    threads = config.getoption("--bench-threads")
    if threads is not None:
        torch.set_num_threads(threads)

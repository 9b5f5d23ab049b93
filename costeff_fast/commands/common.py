"""What every command shares: argument types, the common options, flag aliases, logging and the outcomes that
``costeff_fast.cli`` turns into exit codes.

Commands never choose an exit status themselves: a refused argument raises :class:`Refused` (or a
``ValueError``/``TypeError``/``FileNotFoundError`` from the library), a job whose rows partly failed raises
:class:`RowsFailed`, and :func:`costeff_fast.cli.main` maps each to its code (``costeff_fast.cli.ExitCode``).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import NoReturn

import torch

#: ``--log-level`` choices, quietest last; the default is ``info`` (``debug`` with ``-v``)
LOG_LEVELS = ("debug", "info", "warning", "error")


class Refused(Exception):
    """A refused argument or input: ``cli.main`` prints ``costeff-fast: error: <message>`` and exits with 2."""


class RowsFailed(Exception):
    """The job ran to the end but some rows failed: ``cli.main`` prints ``costeff-fast: <message>``, exits with 1."""


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a finite float > 0."""
    value = float(text)
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """An argparse type: a finite float >= 0."""
    value = float(text)
    if not (value >= 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def fraction(text: str) -> float:
    """An argparse type: a float in [0, 1), such as an allowed accuracy drop (0.01 = one point)."""
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1), e.g. 0.01 for one point, got {text}")
    return value


def common_options() -> argparse.ArgumentParser:
    """The parent parser of every command: ``--log-level``, ``-q/--quiet`` and ``-v/--verbose``."""
    parent = argparse.ArgumentParser(add_help=False)
    level = parent.add_mutually_exclusive_group()
    level.add_argument("--log-level", choices=LOG_LEVELS, default=None,
                       help="costeff_fast's log lines on stderr (default info: the backend a model runs on and "
                            "similar one-line notes; debug with -v)")
    level.add_argument("-q", "--quiet", dest="log_level", action="store_const", const="error",
                       help="errors only, no notes (same as --log-level error)")
    parent.add_argument("-v", "--verbose", action="store_true",
                       help="the traceback of a refused argument, and debug log lines unless --log-level is given")
    return parent


def add_aliased(parser, flag: str, alias: str, *, required: bool = False, dest: str | None = None,
                **options) -> None:
    """Add ``flag`` with ``alias`` as a hidden second spelling of it (same ``dest``, not in ``--help``).

    Both go into one mutually exclusive group: giving both is refused, and ``required`` accepts either spelling.
    """
    group = parser.add_mutually_exclusive_group(required=required)
    dest = dest or flag.lstrip("-").replace("-", "_")
    group.add_argument(flag, dest=dest, **options)
    hidden = {key: value for key, value in options.items() if key not in ("help", "default", "metavar")}
    group.add_argument(alias, dest=dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **hidden)


def add_out(parser, *, help: str, metavar: str = "DIR") -> None:
    """``--out`` (required; hidden alias ``--output``), the path a command writes: ``args.output``."""
    add_aliased(parser, "--out", "--output", required=True, dest="output", type=Path, metavar=metavar, help=help)


def add_num_threads(parser, *, help: str = "torch CPU threads (default: torch's)") -> None:
    """``--num-threads`` (hidden alias ``--threads``): ``args.num_threads``, None when not given."""
    add_aliased(parser, "--num-threads", "--threads", type=positive_int, default=None, metavar="N", help=help)


def set_num_threads(num_threads: int | None) -> None:
    """Apply ``--num-threads`` to torch (process-wide); None leaves torch's choice."""
    if num_threads is not None:
        torch.set_num_threads(num_threads)


class _LogFormatter(logging.Formatter):
    """``costeff-fast: message`` for costeff_fast's own lines (kept as they are when the library already starts
    them with ``costeff_fast:``, such as the backend line); other libraries' lines unchanged."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        if not record.name.startswith("costeff_fast") or message.startswith("costeff_fast:"):
            return message
        return f"costeff-fast: {message}"


def configure_logging(level: str) -> None:
    """costeff_fast's log lines on stderr at ``level`` (one of :data:`LOG_LEVELS`); other libraries keep the
    root's warning level.

    The stderr handler goes on the root logger only when nothing configured logging before (a program that
    calls ``cli.main`` after setting up its own handlers, or pytest, keeps them); the costeff_fast logger's level
    is set on every call.
    """
    if not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(_LogFormatter())
        logging.getLogger().addHandler(handler)
    logging.getLogger("costeff_fast").setLevel(getattr(logging, level.upper()))


def refuse(error: Exception, verbose: bool | None = None) -> NoReturn:
    """Refuse an argument: raise :class:`Refused` from ``error`` (one ``costeff-fast: error:`` line, exit 2).

    For errors that are not a ``ValueError`` (an optional package that is missing, say). ``verbose`` is accepted
    for older callers and ignored: ``cli.main`` prints the traceback with ``-v``.
    """
    raise Refused(" ".join(str(error).split())) from error

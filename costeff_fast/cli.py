"""Command line: ``costeff-fast <command>``; each command lives in :mod:`costeff_fast.commands`.

``demo`` (the main job on real data), ``compress`` (the COST-EFF pipeline), ``calibrate`` (a checkpoint's
threshold on new data), ``predict`` (a batch job over files), ``export`` (ONNX) and ``info`` (what a checkpoint
holds).

Every command takes ``--log-level``, ``-q`` and ``-v``, and ends with one of the statuses of :class:`ExitCode`
(listed in ``costeff-fast --help``). A refused argument prints one error line: ``costeff-fast: error: ...`` for
the checks of each command and the library's refusals, argparse's usage and ``error: argument --flag: ...`` for a
flag's type or range. :func:`main` returns normally on success and raises ``SystemExit`` with the status
otherwise, so it can be called in-process.
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import signal
import sys
import threading
import traceback

from costeff_fast import __version__
from costeff_fast.commands import COMMANDS
from costeff_fast.commands.common import Refused, RowsFailed, common_options, configure_logging
from costeff_fast.jobs import AgreementBelowMinimum, JobOutputError


class ExitCode(enum.IntEnum):
    """The exit status of every ``costeff-fast`` command."""

    OK = 0
    """Done."""
    ROWS_FAILED = 1
    """The job ran to the end but some rows failed (``predict``: their ids and reasons in ``OUT/_errors.jsonl``)."""
    USAGE = 2
    """Bad usage or a refused input (argparse's errors and the library's refusals), before any work was written."""
    AGREEMENT_BELOW_MINIMUM = 3
    """``predict --min-agreement A``: the job ran to the end (its output is complete) but its agreement audit puts
    the early exits' agreement below A (:class:`~costeff_fast.jobs.AgreementBelowMinimum`)."""
    SOFTWARE = 70
    """An unexpected error (``EX_SOFTWARE`` of sysexits.h): a bug; the traceback is printed."""
    IO_ERROR = 74
    """The output could not be written: the disk is full or a quota exceeded (``EX_IOERR`` of sysexits.h;
    ``predict``: :class:`~costeff_fast.jobs.JobOutputError`, its last commit intact: free space, then rerun with
    ``--resume``)."""
    SIGNAL = 128
    """Plus the signal number: stopped by a signal (130 for SIGINT / Ctrl-C, 143 for SIGTERM)."""


#: the library's refusals of a bad argument or input: one ``costeff-fast: error:`` line and :attr:`ExitCode.USAGE`
#: (``CheckpointError``, ``JobArgumentError``, ``CompressArgumentError`` and the like are ``ValueError``\ s)
REFUSALS = (Refused, ValueError, TypeError, FileNotFoundError, NotADirectoryError, IsADirectoryError)

EPILOG = f"""\
exit status (every command):
  {ExitCode.OK:<7}  done
  {ExitCode.ROWS_FAILED:<7}  the job ran to the end but some rows failed (predict: OUT/_errors.jsonl)
  {ExitCode.USAGE:<7}  bad usage or refused input: one 'costeff-fast: error: ...' line (-v adds the traceback)
  {ExitCode.AGREEMENT_BELOW_MINIMUM:<7}  predict --min-agreement A: the job is complete, but the audit's agreement lies
           below A (one line: the agreement and its interval)
  {ExitCode.SOFTWARE:<7}  unexpected error (a bug): the traceback, then one 'costeff-fast: internal error' line
  {ExitCode.IO_ERROR:<7}  the output could not be written (disk full or quota): one 'costeff-fast: error: ...'
           line; predict: free space, then rerun with --resume
  {f"{ExitCode.SIGNAL:d}+N":<7}  stopped by signal N: 130 for SIGINT (Ctrl-C), 143 for SIGTERM

logging: costeff_fast's notes (such as the backend each model runs on) go to stderr at --log-level info by
default; -q shows errors only, -v adds debug lines and tracebacks."""


def _plain(text: str) -> str:
    """A docstring as ``--help`` text: reST literals and cross-references become plain words."""
    for markup in (":mod:", ":func:", ":data:", ":class:", ":attr:", "``", "`"):
        text = text.replace(markup, "")
    return text


def build_parser() -> argparse.ArgumentParser:
    """The ``costeff-fast`` parser with one subparser per module of :data:`costeff_fast.commands.COMMANDS`, each
    with the common options (``--log-level``, ``-q``, ``-v``)."""
    parser = argparse.ArgumentParser(
        prog="costeff-fast", description=_plain(__doc__.split("\n\n")[1]),
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parent = common_options()
    for command in COMMANDS:
        subparser = subparsers.add_parser(command.NAME, help=command.HELP, description=_plain(command.__doc__),
                                          parents=[parent])
        command.add_arguments(subparser)
    return parser


class _Stopped(KeyboardInterrupt):
    """A signal :func:`main` turns into ``128 + signum``; a ``KeyboardInterrupt`` so cleanup code runs as on
    Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_stopped(signum: int, frame) -> None:
    raise _Stopped(signum)


@contextlib.contextmanager
def _signals_stop():
    """SIGINT and SIGTERM raise :class:`_Stopped` in the main thread while a command runs (only where Python's own
    handlers are installed: a program that set its own keeps them); the previous handlers come back after."""
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
            if signal.getsignal(signum) is default:
                previous[signum] = signal.signal(signum, _raise_stopped)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def main(argv: list[str] | None = None) -> None:
    """Run ``costeff-fast ARGV``; return on success, raise ``SystemExit`` with an :class:`ExitCode` otherwise."""
    args = build_parser().parse_args(argv)  # usage errors: SystemExit(2); --help and --version: SystemExit(0)
    configure_logging(args.log_level or ("debug" if args.verbose else "info"))
    command = {command.NAME: command for command in COMMANDS}[args.command]
    try:
        with _signals_stop():
            command.run(args)
    except _Stopped as stop:
        name = signal.Signals(stop.signum).name
        print(f"costeff-fast: stopped by {name}", file=sys.stderr)
        raise SystemExit(int(ExitCode.SIGNAL) + stop.signum) from None
    except RowsFailed as failed:
        print(f"costeff-fast: {_one_line(failed)}", file=sys.stderr)
        raise SystemExit(int(ExitCode.ROWS_FAILED)) from None
    except AgreementBelowMinimum as low:
        print(f"costeff-fast: {_one_line(low)}", file=sys.stderr)
        raise SystemExit(int(ExitCode.AGREEMENT_BELOW_MINIMUM)) from None
    except JobOutputError as error:
        if args.verbose:
            traceback.print_exception(error)
        print(f"costeff-fast: error: {_one_line(error)}", file=sys.stderr)
        raise SystemExit(int(ExitCode.IO_ERROR)) from None
    except REFUSALS as error:
        if args.verbose:
            traceback.print_exception(error.__cause__ if isinstance(error, Refused) and error.__cause__ else error)
        print(f"costeff-fast: error: {_one_line(error)}", file=sys.stderr)
        raise SystemExit(int(ExitCode.USAGE)) from None
    except Exception as error:  # a bug: the whole traceback, and a status that no expected outcome uses
        traceback.print_exc()
        print(f"costeff-fast: internal error: {type(error).__name__}: {_one_line(error)} (exit status "
              f"{ExitCode.SOFTWARE:d}; please report it with the traceback above)", file=sys.stderr)
        raise SystemExit(int(ExitCode.SOFTWARE)) from None


if __name__ == "__main__":
    main()

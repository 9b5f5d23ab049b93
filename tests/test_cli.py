"""The conventions every ``costeff-fast`` command shares: ``--version``, the exit codes, the common logging options
(``--log-level``, ``-q``, ``-v``) and one spelling per flag with the old spellings kept as hidden aliases.

In-process through :func:`costeff_fast.cli.main` (one subprocess: a real SIGTERM to a real process)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import time
from pathlib import Path

import pytest
from conftest import make_tiny_model
from transformers import AutoTokenizer

import costeff_fast
from costeff_fast import cli
from costeff_fast.checkpoint import CheckpointError
from costeff_fast.commands import COMMANDS, common, info
from costeff_fast.commands.common import LOG_LEVELS, Refused, RowsFailed


#: the least each command parses with (paths need not exist: only the parser runs)
MINIMAL = {
    "demo": [],
    "compress": ["--task-default", "--task", "rt", "--out", "o"],
    "calibrate": ["--model", "m", "--validation-file", "v.csv"],
    "predict": ["--model", "m", "--input", "i.csv", "--out", "o"],
    "export": ["--model", "m", "--out", "m.onnx"],
    "info": ["d"],
}
#: hidden alias -> the canonical spelling, the same destination
ALIASES = {"--output": "--out", "--threads": "--num-threads"}


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _exit_code(argv: list[str]) -> int:
    try:
        cli.main(argv)
    except SystemExit as stop:
        return stop.code
    return 0


def test_every_command_has_minimal_arguments_here():
    assert set(MINIMAL) == {command.NAME for command in COMMANDS} == set(_subparsers())


def test_version_is_the_package_version(capsys):
    assert _exit_code(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"costeff-fast {costeff_fast.__version__}"


def test_help_documents_every_exit_code(capsys):
    assert _exit_code(["--help"]) == 0
    epilog = capsys.readouterr().out.split("exit status")[1]
    for code in cli.ExitCode:
        assert f"\n  {code:d}" in epilog, code
    assert "130" in epilog and "143" in epilog and "--log-level" in epilog and "-q" in epilog


# exit codes ---------------------------------------------------------------------------------------------------


def test_predict_on_a_missing_model_is_refused_in_one_line(tmp_path, capsys):
    rows = tmp_path / "rows.csv"
    rows.write_text("text\nhello\n")
    assert _exit_code(["predict", "--model", str(tmp_path / "missing"), "--input", str(rows), "--out",
                       str(tmp_path / "out")]) == cli.ExitCode.USAGE == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("costeff-fast: error: ") and "missing" in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, message", [
    (["calibrate", "--model", "m", "--validation-file", "v.csv", "--max-drop", "abc"], "argument --max-drop"),
    (["calibrate", "--model", "m", "--validation-file", "v.csv", "--thresholds", "all"], "argument --thresholds"),
    (["calibrate", "--model", "m", "--validation-file", "v.csv", "--bogus"], "unrecognized arguments: --bogus"),
    (["predict", "--model", "m", "--input", "i"], "--out is required"),
    (["info", "d", "-q", "--log-level", "info"], "not allowed with argument"),
])
def test_bad_usage_exits_2_with_argparse_usage_and_one_error_line(argv, message, capsys):
    assert _exit_code(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("usage: costeff-fast") and "error: " in err[-1] and message in err[-1], err


@pytest.mark.parametrize("error", [
    ValueError("bad value\n  on two lines"), TypeError("bad type"), FileNotFoundError("no such file"),
    CheckpointError("config.json: bad field"), Refused("refused by the command"),
])
def test_a_refusal_from_the_library_exits_2_in_one_line_and_v_adds_the_traceback(error, monkeypatch, capsys):
    def refuse(args):
        raise error

    monkeypatch.setattr(info, "run", refuse)
    assert _exit_code(["info", "d"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("costeff-fast: error: ") and "Traceback" not in err, err
    assert " ".join(str(error).split()) in err
    assert _exit_code(["info", "d", "-v"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.splitlines()[-1].startswith("costeff-fast: error: "), err


def test_refuse_keeps_the_cause_for_the_verbose_traceback(monkeypatch, capsys):
    def refuse(args):
        try:
            raise ModuleNotFoundError("No module named 'onnxscript'")
        except ModuleNotFoundError as error:
            common.refuse(error)

    monkeypatch.setattr(info, "run", refuse)
    assert _exit_code(["info", "d", "-v"]) == 2
    err = capsys.readouterr().err
    assert "ModuleNotFoundError: No module named 'onnxscript'" in err
    assert err.splitlines()[-1] == "costeff-fast: error: No module named 'onnxscript'"


def test_an_unexpected_exception_exits_70_with_its_traceback(monkeypatch, capsys):
    def crash(args):
        raise RuntimeError("an engine bug")

    monkeypatch.setattr(info, "run", crash)
    assert _exit_code(["info", "d"]) == cli.ExitCode.SOFTWARE == 70
    err = capsys.readouterr().err
    assert "Traceback" in err and "in crash" in err and 'raise RuntimeError("an engine bug")' in err
    assert err.splitlines()[-1].startswith("costeff-fast: internal error: RuntimeError: an engine bug")


def test_failed_rows_exit_1(monkeypatch, capsys):
    def some_rows_fail(args):
        print("3 rows: 2 written")
        raise RowsFailed("1 of 3 rows failed; their ids and reasons are in out/_errors.jsonl")

    monkeypatch.setattr(info, "run", some_rows_fail)
    assert _exit_code(["info", "d"]) == cli.ExitCode.ROWS_FAILED == 1
    captured = capsys.readouterr()
    assert captured.out == "3 rows: 2 written\n"
    assert captured.err == "costeff-fast: 1 of 3 rows failed; their ids and reasons are in out/_errors.jsonl\n"


def test_success_returns_normally(monkeypatch):
    monkeypatch.setattr(info, "run", lambda args: None)
    assert cli.main(["info", "d"]) is None


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_exits_128_plus_its_number_and_the_handlers_come_back(signum, monkeypatch, capsys):
    # Python's own handlers, as a plain process has them (a pytest-xdist worker has its own: put back after)
    runner = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        _check_a_signal_stops_the_command(signum, monkeypatch, capsys)
    finally:
        for s, handler in runner.items():
            signal.signal(s, handler)


def _check_a_signal_stops_the_command(signum, monkeypatch, capsys):
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    cleaned = []

    def interrupted(args):
        try:
            os.kill(os.getpid(), signum)
            time.sleep(30)
        except KeyboardInterrupt:  # cleanup code written for Ctrl-C runs for SIGTERM too
            cleaned.append(signum)
            raise

    monkeypatch.setattr(info, "run", interrupted)
    started = time.monotonic()
    assert _exit_code(["info", "d"]) == 128 + signum
    assert time.monotonic() - started < 10 and cleaned == [signum]
    assert capsys.readouterr().err == f"costeff-fast: stopped by {signal.Signals(signum).name}\n"
    assert {s: signal.getsignal(s) for s in before} == before


def test_a_keyboard_interrupt_raised_by_code_is_not_swallowed(monkeypatch):
    """Only a signal becomes a status: a KeyboardInterrupt that code raises itself propagates as it is."""
    def stop(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(info, "run", stop)
    with pytest.raises(KeyboardInterrupt):
        cli.main(["info", "d"])


# logging ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MINIMAL))
def test_every_command_takes_log_level_quiet_and_verbose(name):
    parser = cli.build_parser()
    argv = [name, *MINIMAL[name]]
    assert parser.parse_args(argv).log_level is None
    for level in LOG_LEVELS:
        assert parser.parse_args([*argv, "--log-level", level]).log_level == level
    assert parser.parse_args([*argv, "-q"]).log_level == "error"
    assert parser.parse_args([*argv, "--quiet"]).log_level == "error"
    assert parser.parse_args([*argv, "-v"]).verbose is True
    assert parser.parse_args(argv).verbose is False


@pytest.mark.parametrize("flags, level", [
    ([], logging.INFO), (["-q"], logging.ERROR), (["-v"], logging.DEBUG), (["--log-level", "warning"], logging.WARNING),
    (["-v", "--log-level", "error"], logging.ERROR),
])
def test_main_sets_the_package_log_level(flags, level, monkeypatch):
    monkeypatch.setattr(info, "run", lambda args: None)
    cli.main(["info", "d", *flags])
    assert logging.getLogger("costeff_fast").level == level


def test_the_stderr_handler_prefixes_the_package_lines_once(monkeypatch, capsys):
    """Without handlers (the real command line), one root handler: the package's lines on stderr, the backend line
    as the library writes it, another library's warning unchanged, the package's info hidden by -q's level."""
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    common.configure_logging("info")
    common.configure_logging("info")  # once: no second handler
    assert len(root.handlers) == 1
    logging.getLogger("costeff_fast.backends").info("costeff_fast: backend %r (%s)", "torch", "asked for")
    logging.getLogger("costeff_fast.jobs.predict").info("resuming at row %d", 40)
    logging.getLogger("someone.else").warning("a warning")
    common.configure_logging("error")
    logging.getLogger("costeff_fast.backends").info("costeff_fast: backend 'native'")
    assert capsys.readouterr().err == ("costeff_fast: backend 'torch' (asked for)\ncosteff-fast: resuming at row 40\n"
                                       "a warning\n")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, minilm_dir):
    directory = tmp_path_factory.mktemp("cli_checkpoint")
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    make_tiny_model(vocab_size=tokenizer.vocab_size, max_position_embeddings=48).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_predict_logs_its_backend_at_the_default_level_and_not_with_q(checkpoint, tmp_path, caplog, capsys):
    rows = tmp_path / "rows.csv"
    rows.write_text('text\nhello world\na fine film\n""\n')
    with caplog.at_level(logging.DEBUG):  # the root takes everything: the costeff_fast logger's level decides
        for flags, shown in (([], True), (["-q"], False)):
            caplog.clear()
            code = _exit_code(["predict", "--model", str(checkpoint), "--input", str(rows), "--out",
                               str(tmp_path / f"out{len(flags)}"), "--backend", "torch", "--num-threads", "1",
                               "--no-progress", *flags])
            assert code == 1  # the empty row
            lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
            assert any(line.startswith("costeff_fast: backend 'torch'") for line in lines) is shown, lines
    assert "1 of 3 rows failed" in capsys.readouterr().err


# one spelling per flag --------------------------------------------------------------------------------------------


def _flags(parser: argparse.ArgumentParser) -> tuple[set[str], set[str]]:
    """The option strings ``--help`` shows and the hidden ones."""
    shown, hidden = set(), set()
    for action in parser._actions:
        (hidden if action.help == argparse.SUPPRESS else shown).update(action.option_strings)
    return shown, hidden


@pytest.mark.parametrize("name", sorted(MINIMAL))
def test_hidden_aliases_parse_to_the_canonical_value(name, capsys):
    parser = cli.build_parser()
    subparser = _subparsers()[name]
    shown, hidden = _flags(subparser)
    assert hidden <= set(ALIASES), hidden
    assert not shown & set(ALIASES), f"{name} shows an old spelling in --help"
    assert "--threads" not in subparser.format_help() and "--output " not in subparser.format_help()
    for alias in hidden:
        canonical = ALIASES[alias]
        assert canonical in shown
        base = list(MINIMAL[name])
        if canonical in base:  # the required --out: given once, by one spelling or the other
            del base[base.index(canonical): base.index(canonical) + 2]
        value = "7" if canonical == "--num-threads" else "somewhere"
        new = parser.parse_args([name, *base, canonical, value])
        old = parser.parse_args([name, *base, alias, value])
        assert vars(new) == vars(old)
        assert getattr(new, {"--out": "output", "--num-threads": "num_threads"}[canonical]) in (7, Path("somewhere"))
        with pytest.raises(SystemExit):  # both spellings at once: refused, not silently the last
            parser.parse_args([name, *base, canonical, value, alias, value])
        assert "not allowed with argument" in capsys.readouterr().err


def test_one_spelling_of_each_flag_across_commands():
    shown = set().union(*(_flags(parser)[0] for parser in _subparsers().values()))
    assert {"--out", "--num-threads"} <= shown
    assert not shown & set(ALIASES)
    every_output = {name for name, parser in _subparsers().items() if "--out" in _flags(parser)[0]}
    assert every_output == {"compress", "predict", "export"}
    every_threads = {name for name, parser in _subparsers().items() if "--num-threads" in _flags(parser)[0]}
    assert every_threads == {"demo", "compress", "calibrate", "predict"}


@pytest.mark.parametrize("name", ["demo", "compress", "calibrate"])
def test_num_threads_reaches_torch(name, monkeypatch):
    import torch

    seen = []
    monkeypatch.setattr(torch, "set_num_threads", seen.append)

    def stop(*args, **kwargs):
        raise Refused("stopped here")

    # what each command runs after setting its threads: stopped there
    if name == "demo":
        monkeypatch.setattr("costeff_fast.training.demo.run_demo", stop)
    elif name == "compress":
        monkeypatch.setattr("costeff_fast.training.pipeline.compress", stop)
    else:
        monkeypatch.setattr("costeff_fast.training.recalibrate.calibrate_checkpoint", stop)
    assert _exit_code([name, *MINIMAL[name], "--threads", "3"]) == 2
    assert _exit_code([name, *MINIMAL[name]]) == 2
    assert seen == [3]  # and nothing without the flag

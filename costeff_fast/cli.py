"""Command line: ``costeff-fast <command>``; each command lives in :mod:`costeff_fast.commands`.

``demo`` (the main job on real data), ``compress`` (the COST-EFF pipeline), ``calibrate`` (a checkpoint's
threshold on new data), ``predict`` (a batch job over files), ``export`` (ONNX) and ``info`` (what a checkpoint
holds). A refused argument exits with status 2 after one error line: ``costeff-fast: error: ...`` for the
checks of each command, argparse's usage and ``error: argument --flag: ...`` for a flag's type or range.
"""

from __future__ import annotations

import argparse

import torch

from costeff_fast.commands import COMMANDS


def _plain(text: str) -> str:
    """A docstring as ``--help`` text: reST literals and cross-references become plain words."""
    for markup in (":mod:", ":func:", ":data:", "``", "`"):
        text = text.replace(markup, "")
    return text


def build_parser() -> argparse.ArgumentParser:
    """The ``costeff-fast`` parser with one subparser per module of :data:`costeff_fast.commands.COMMANDS`."""
    parser = argparse.ArgumentParser(prog="costeff-fast", description=_plain(__doc__))
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        subparser = subparsers.add_parser(command.NAME, help=command.HELP, description=_plain(command.__doc__))
        command.add_arguments(subparser)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    {command.NAME: command for command in COMMANDS}[args.command].run(args)


if __name__ == "__main__":
    main()

"""What every command shares: argument types and the one-line refusal."""

from __future__ import annotations

import argparse
import logging
import sys
import traceback


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


def configure_logging(verbose: bool) -> None:
    """costeff_fast's log lines on stderr: warnings only by default, everything with ``-v``."""
    logging.basicConfig(format="costeff-fast: %(message)s")
    logging.getLogger("costeff_fast").setLevel(logging.DEBUG if verbose else logging.WARNING)


def refuse(error: Exception, verbose: bool) -> None:
    """Print a refused argument as one ``costeff-fast: error:`` line (after the traceback when ``verbose``); exit 2."""
    if verbose:
        traceback.print_exception(error)
    message = " ".join(str(error).split())
    print(f"costeff-fast: error: {message}", file=sys.stderr)
    sys.exit(2)

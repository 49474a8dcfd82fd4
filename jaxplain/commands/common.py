"""What the batch commands share: exit codes, progress bars, and encoding that survives bad items."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from jaxplain.batching import encode_stream, progress
from jaxplain.errors import InputError

__all__ = [
    "EXIT_BAD_ITEMS",
    "EXIT_ERROR",
    "EXIT_INTERNAL",
    "EXIT_OK",
    "add_model_and_items",
    "encode_stream",
    "fraction",
    "non_negative_float",
    "non_negative_int",
    "npy_path",
    "positive_float",
    "positive_int",
    "probability",
    "progress",
    "read_lines",
    "report",
]

EXIT_OK, EXIT_BAD_ITEMS, EXIT_ERROR, EXIT_INTERNAL = 0, 1, 2, 3
"""Exit statuses. 0: every item done. 1: the job finished, and the bad items it names were skipped (the
good ones are written). 2: the job failed and wrote nothing (a bad option, model, bank or output; the
message says what); argparse's own usage errors are 2 too. 3: an internal error (a bug in jaxplain)."""


def _number(text: str, kind, what: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    n = _number(text, int, "a whole number")
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def non_negative_int(text: str) -> int:
    """An argparse type: a whole number of at least 0."""
    n = _number(text, int, "a whole number")
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {n}")
    return n


def positive_float(text: str) -> float:
    """An argparse type: a finite number above 0."""
    x = _number(text, float, "a number")
    if not (math.isfinite(x) and x > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text}")
    return x


def non_negative_float(text: str) -> float:
    """An argparse type: a finite number of at least 0."""
    x = _number(text, float, "a number")
    if not (math.isfinite(x) and x >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number of at least 0, got {text}")
    return x


def fraction(text: str) -> float:
    """An argparse type: a share in (0, 1]."""
    x = _number(text, float, "a number")
    if not 0 < x <= 1:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1], got {text}")
    return x


def probability(text: str) -> float:
    """An argparse type: a probability in [0, 1]."""
    x = _number(text, float, "a number")
    if not 0 <= x <= 1:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {text}")
    return x


def add_model_and_items(p) -> None:
    """The ``--model`` option and the ``--images`` / ``--texts`` choice that item commands share."""
    p.add_argument("--model", required=True, help="checkpoint directory, shipped model name, or hub id")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", nargs="+", metavar="DIR_OR_FILE", help="image files and/or directories")
    src.add_argument("--texts", metavar="FILE", help="a UTF-8 text file, one text per line")


def report(errors: list[dict]) -> None:
    """Print each skipped item and why."""
    for e in errors:
        print(f"jaxplain: skipped {e['item']}: {e['error']}", file=sys.stderr)


def npy_path(out: str) -> Path:
    """Check that an output path ends in ``.npy``."""
    path = Path(out)
    if path.suffix != ".npy":
        raise InputError(f"--out {path}: the output file must end in .npy")
    return path


def read_lines(path: str | Path, what: str) -> list[str]:
    """The lines of a UTF-8 text file, split on newlines only (:func:`jaxplain.data.lines.read_lines`); an
    unreadable file or a line that is not UTF-8 is an :class:`InputError` naming it."""
    from jaxplain.data.lines import read_lines as read

    return read(path, what)

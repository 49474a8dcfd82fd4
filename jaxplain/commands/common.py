"""What the batch commands share: exit codes, progress bars, and encoding that survives bad items."""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
from collections.abc import Iterator
from pathlib import Path

from jaxplain.batching import encode_stream, progress

__all__ = [
    "EXIT_BAD_ITEMS",
    "EXIT_ERROR",
    "EXIT_INTERNAL",
    "EXIT_OK",
    "add_model_and_items",
    "bad_items",
    "encode_stream",
    "fraction",
    "image_files",
    "non_negative_float",
    "non_negative_int",
    "output",
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


def image_files(paths, shown: int = 20) -> list[Path]:
    """The image files of ``paths`` (:func:`jaxplain.data.images.scan_images`): files given by name, and the
    image files of folders in name order. The other entries of the folders are listed on stderr, each with
    why it is not read (up to ``shown`` of them, then their count), rather than dropped without a word."""
    from jaxplain.data.images import scan_images

    files, left_out = scan_images(paths)
    for path, why in left_out[:shown]:
        print(f"jaxplain: not read: {path}: {why}", file=sys.stderr)
    if len(left_out) > shown:
        print(f"jaxplain: not read: {len(left_out) - shown} more entries of the folders given", file=sys.stderr)
    return files


@contextlib.contextmanager
def output(
    path: str | Path, *, suffixes=None, kind: str = "file", what: str = "--out", lock: bool = True
) -> Iterator[Path]:
    """An output for the length of a command: checked before any work (:func:`jaxplain.outputs.check_output`),
    locked against other runs (:func:`~jaxplain.outputs.lock_output`), and cleared of the temporaries a
    killed run left beside it (:func:`~jaxplain.outputs.remove_stale`). Yields the path.

    ``lock=False``: the processes of one multi-process job share the output; each one's own parts are kept
    apart by the job's per-process locks (:class:`jaxplain.jobs.JobDir`), and nothing is removed here.
    """
    from jaxplain.outputs import check_output, lock_output, remove_stale

    checked = check_output(path, suffixes=suffixes, kind=kind, what=what)
    if not lock:
        yield checked
        return
    with lock_output(checked, what=what):
        remove_stale(checked)
        yield checked


def bad_items(errors: list[dict]) -> str:
    """``"1 bad item: listed above"`` / ``"3 bad items: listed above"`` (the items :func:`report` printed)."""
    return f"{len(errors)} bad item{'' if len(errors) == 1 else 's'}: listed above" if errors else "no items"


def report(errors: list[dict]) -> None:
    """Print each skipped item and why."""
    for e in errors:
        print(f"jaxplain: skipped {e['item']}: {e['error']}", file=sys.stderr)


def read_lines(path: str | Path, what: str) -> list[str]:
    """The lines of a UTF-8 text file, split on newlines only (:func:`jaxplain.data.lines.read_lines`); an
    unreadable file or a line that is not UTF-8 is an :class:`InputError` naming it."""
    from jaxplain.data.lines import read_lines as read

    return read(path, what)

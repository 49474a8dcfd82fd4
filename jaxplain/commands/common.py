"""What the batch commands share: exit codes, progress bars, and encoding that survives bad items."""

from __future__ import annotations

import sys
from pathlib import Path

from jaxplain.batching import encode_stream, progress
from jaxplain.errors import InputError

__all__ = [
    "EXIT_BAD_ITEMS",
    "EXIT_ERROR",
    "EXIT_OK",
    "add_model_and_items",
    "encode_stream",
    "npy_path",
    "progress",
    "read_lines",
    "report",
]

EXIT_OK, EXIT_BAD_ITEMS, EXIT_ERROR = 0, 1, 2


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
    """The lines of a UTF-8 text file (an unreadable file is an :class:`InputError` naming it)."""
    try:
        return Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read {what} from it as UTF-8 text ({e})") from None

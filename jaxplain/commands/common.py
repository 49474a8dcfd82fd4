"""What the batch commands share: exit codes, progress bars, and encoding that survives bad items."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from jaxplain.errors import InputError

EXIT_OK, EXIT_BAD_ITEMS, EXIT_ERROR = 0, 1, 2


def progress(total: int, desc: str, unit: str):
    """A progress bar on standard error."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=True)


def report(errors: list[dict]) -> None:
    """Print each skipped item and why."""
    for e in errors:
        print(f"jaxplain: skipped {e['item']}: {e['error']}", file=sys.stderr)


def encode_stream(
    n: int,
    prepare: Callable[[int], np.ndarray],
    name: Callable[[int], str],
    encode: Callable[[np.ndarray], np.ndarray],
    batch_size: int,
    desc: str,
    unit: str,
) -> tuple[np.ndarray | None, list[int], list[dict]]:
    """Prepare items one by one (catching bad ones), encode the good ones a batch at a time.

    Returns the embeddings of the good items (None if there were none), their indices, and one
    ``{"item", "error"}`` record per bad item.
    """
    rows, kept, errors, pending = [], [], [], []
    with progress(n, desc, unit) as bar:
        for i in range(n):
            try:
                pending.append(prepare(i))
                kept.append(i)
            except InputError as e:
                errors.append({"item": name(i), "error": str(e).removeprefix(f"{name(i)}: ")})
            if len(pending) == batch_size or (i == n - 1 and pending):
                rows.append(encode(np.stack(pending)))
                pending = []
            bar.update(1)
    return (np.concatenate(rows) if rows else None), kept, errors


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

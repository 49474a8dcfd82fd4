"""Text files read as lines, the same way everywhere: texts, class names, templates and captions.

A line ends at ``\\n`` only (a ``\\r`` before it is dropped, so Windows files read the same). Other
characters that :meth:`str.splitlines` also breaks on — U+2028, U+2029, form feeds, vertical tabs,
``\\x1c``–``\\x1e``, U+0085 — are part of the line, so line numbers match what an editor and ``wc -l``
show. A UTF-8 byte order mark at the start is dropped. Each line is decoded on its own, so a byte that
is not UTF-8 names its line (and its column), and the other lines stay readable.
"""

from __future__ import annotations

from pathlib import Path

from jaxplain.errors import InputError

BOM = b"\xef\xbb\xbf"


def split_lines(data: bytes) -> tuple[list[str | None], dict[int, str]]:
    """The lines of ``data`` and the problems of those that are not UTF-8.

    Returns ``(lines, problems)``: ``lines[i]`` is line ``i + 1`` (None where it cannot be decoded);
    ``problems`` maps such a line's 1-based number to the reason (the byte and its column).
    A last line without its ``\\n`` is a line; a file that ends with ``\\n`` has no empty line after it.
    """
    if data.startswith(BOM):
        data = data[len(BOM) :]
    raw = data.split(b"\n")
    if raw and raw[-1] == b"":
        raw.pop()
    lines: list[str | None] = []
    problems: dict[int, str] = {}
    for n, line in enumerate(raw, start=1):
        line = line.removesuffix(b"\r")
        try:
            lines.append(line.decode("utf-8"))
        except UnicodeDecodeError as e:
            lines.append(None)
            problems[n] = f"not UTF-8 text (byte 0x{line[e.start]:02x} at column {e.start + 1})"
    return lines, problems


def read_bytes(path: str | Path, what: str) -> bytes:
    """The bytes of a file, or an :class:`InputError` naming it and saying what it was to hold."""
    try:
        return Path(path).read_bytes()
    except IsADirectoryError:
        raise InputError(f"{path}: a directory, not a file of {what}") from None
    except FileNotFoundError:
        raise InputError(f"{path}: no such file (of {what})") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read {what} from it ({e.strerror or e})") from None


def read_lines(path: str | Path, what: str) -> list[str]:
    """The lines of a UTF-8 text file (see the module docstring).

    Any problem — the file unreadable, a line not UTF-8 — is an :class:`InputError` that names the file
    (and the line). For files whose every line is an item of a batch, see :func:`read_items`.
    """
    lines, problems = split_lines(read_bytes(path, what))
    if problems:
        n = min(problems)
        more = f" (and {len(problems) - 1} more lines)" if len(problems) > 1 else ""
        raise InputError(f"{path}: line {n}: {problems[n]}{more}; {what} must be UTF-8 text")
    return lines  # type: ignore[return-value]


def read_items(path: str | Path, what: str) -> tuple[list[str | None], dict[int, str]]:
    """The lines of a file of items, one per line, with the lines that cannot be decoded as per-item
    problems (``{line number: message}``) rather than an error for the whole file."""
    return split_lines(read_bytes(path, what))

"""Inputs at scale: shards of JSON-lines files, webdataset tars, parquet files and image folders, read as
one uniform stream of :class:`Record`.

A *shard* is the unit of input one process reads whole, in a fixed order: a range of lines of a JSON-lines
file, one tar of a webdataset, a parquet file (or a range of its row groups), or a chunk of the files of
image folders. :func:`list_shards` turns what the user gave into the full list of shards, the same list on
every process; :func:`shards_for_process` picks one process's share; :func:`read_shard` reads one::

    shards = list_shards(["data/{000000..000099}.tar"])
    mine = shards_for_process(shards, jax.process_index(), jax.process_count())
    for record in read_records(mine):
        ...  # record.image (bytes or a Path), record.text, record.fields, or record.error

Memory is bounded by the shard's unit of reading (a line, a tar member, a parquet batch), never by the file.
Bad input never raises while reading: it becomes a record with ``error`` set that names the shard and the
row (``data/000003.tar: sample 000003017``, ``pairs.jsonl: line 17``, ``x.parquet: row 5``), and every
good item of that shard still comes through. Only what makes the job meaningless up front raises
:class:`~jaxplain.errors.InputError` from :func:`list_shards`: a missing file, a pattern matching nothing,
inputs of different kinds.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import braceexpand

from jaxplain.data.images import IMAGE_SUFFIXES, list_images
from jaxplain.errors import InputError

KINDS = ("jsonl", "tar", "parquet", "images")
JSONL_SUFFIXES = (".jsonl", ".ndjson")  # a .json file is one document: pass kind="jsonl" for lines
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
PARQUET_SUFFIXES = (".parquet",)
# The members of a webdataset sample that hold its image, in order of preference.
TAR_IMAGE_MEMBERS = (
    "jpg",
    "jpeg",
    "png",
    "webp",
    *(s.lstrip(".") for s in IMAGE_SUFFIXES if s not in (".jpg", ".jpeg", ".png", ".webp")),
)
BOM = b"\xef\xbb\xbf"
BLOCK = 512  # a tar block
_SCAN = 1 << 20  # bytes read at a time when counting lines


@dataclasses.dataclass(frozen=True)
class Columns:
    """Which parquet columns hold what.

    Each of ``image``, ``text`` and ``key`` is a column name, ``"auto"`` (the first present of the
    usual names, see ``IMAGE_COLUMNS``, ``IMAGE_PATH_COLUMNS``, ``TEXT_COLUMNS``, ``KEY_COLUMNS``) or None
    (no such column: a text-only file has ``image=None``). An image column holds bytes, a path relative to
    the parquet file, or a struct with ``bytes`` (and ``path``) as Hugging Face datasets write it. ``fields``:
    the other columns to carry in :attr:`Record.fields` (None: all the others).
    """

    image: str | None = "auto"
    text: str | None = "auto"
    key: str | None = "auto"
    fields: tuple[str, ...] | None = None


IMAGE_COLUMNS = ("image", "jpg", "jpeg", "png", "webp", "img", "image_bytes")
IMAGE_PATH_COLUMNS = ("image_path", "path", "filepath", "file_name", "filename")
TEXT_COLUMNS = ("caption", "text", "txt", "TEXT")
KEY_COLUMNS = ("key", "id")


@dataclasses.dataclass(frozen=True)
class SourceConfig:
    """How inputs are cut into shards and read.

    Attributes:
      chunk: lines of a JSON-lines file, or image files, per shard.
      row_groups: parquet row groups per shard (None: a whole file is one shard).
      batch_rows: parquet rows decoded at a time (bounds the memory of a parquet shard).
      columns: the parquet columns, see :class:`Columns`.
      need_image: a tar sample without an image member is an error record (False for text-only shards).
    """

    chunk: int = 4096
    row_groups: int | None = None
    batch_rows: int = 1024
    columns: Columns = Columns()
    need_image: bool = True

    def __post_init__(self):
        for name in ("chunk", "batch_rows") + (("row_groups",) if self.row_groups is not None else ()):
            if getattr(self, name) < 1:
                raise InputError(f"SourceConfig.{name} must be positive, got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class Shard:
    """One unit of input, read whole by one process, always in the same order.

    Attributes:
      index: its position in the list :func:`list_shards` returned (its records' :attr:`Record.shard`).
      kind: ``"jsonl"``, ``"tar"``, ``"parquet"`` or ``"images"``.
      path: the file ("" for image folders, whose files are in ``items``).
      start, stop: its extent in the file's own unit: lines (jsonl), row groups (parquet), positions in
        the listing (images); ``0, None`` for a tar, read whole.
      first_row: the file's row (0-based line, parquet row, image position) of its first record.
      size: the number of records it yields, where known up front (None for a tar).
      byte_offset: where its first line begins (jsonl only).
      items: the image files of an image-folder shard.
      config: how it is read.
    """

    index: int
    kind: str
    path: str
    start: int = 0
    stop: int | None = None
    first_row: int = 0
    size: int | None = None
    byte_offset: int = 0
    items: tuple[str, ...] = ()
    config: SourceConfig = SourceConfig()

    @property
    def name(self) -> str:
        """The shard in messages: the file, and the range when the shard is part of it."""
        if self.kind == "images":
            return f"images {self.start}–{self.stop - 1}" if self.size else "images (none)"
        if self.kind == "jsonl":
            return f"{self.path}: lines {self.start + 1}–{self.stop}"
        if self.kind == "parquet" and self.config.row_groups is not None:
            groups = f"group {self.start}" if self.stop == self.start + 1 else f"groups {self.start}–{self.stop - 1}"
            return f"{self.path}: row {groups}"
        return self.path


@dataclasses.dataclass(frozen=True)
class Record:
    """One item of a shard, or the error that stands in its place.

    Attributes:
      shard: the :attr:`Shard.index` it came from.
      row: its position within the shard (0-based); ``(shard, row)`` is its stable global position.
      where: the item in messages: ``pairs.jsonl: line 17``, ``data/000003.tar: sample 000003017``,
        ``x.parquet: row 5`` (the row in the file), or an image's path.
      key: a stable name: ``line 17``, the tar sample's key, the parquet key column (else the file row),
        the image path. None only for an error about a whole shard (an unreadable file, a missing column).
      image: encoded image bytes, a :class:`~pathlib.Path`, or None (none given; JSON lines are not
        interpreted, see :attr:`fields`).
      text: the caption (tar ``txt`` member, parquet text column), or None.
      fields: the rest: a JSON line's object whole, a tar sample's ``json`` member, the other parquet columns.
      error: why the item is unusable (without the ``where`` prefix), or None.
      blank: a whitespace-only JSON line (``fields`` empty, ``error`` None), kept so that outputs can keep
        one line per input line.
    """

    shard: int
    row: int
    where: str
    key: str | None = None
    image: bytes | Path | None = None
    text: str | None = None
    fields: dict[str, Any] = dataclasses.field(default_factory=dict)
    error: str | None = None
    blank: bool = False

    @property
    def ok(self) -> bool:
        """True when the record holds an item (possibly a blank line), not an error."""
        return self.error is None

    @property
    def position(self) -> tuple[int, int]:
        """``(shard, row)``: orders records as a single-process read of all shards would."""
        return self.shard, self.row

    @property
    def message(self) -> str:
        """``where: error`` (the error record as a user reads it)."""
        return f"{self.where}: {self.error}"


# ---------------------------------------------------------------------------------------------------------
# Listing shards


def expand_inputs(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Paths, brace patterns (``data/{000000..000099}.tar``) and globs (``data/*.parquet``) → paths, in
    order: patterns in their expansion order, globs sorted. A glob matching nothing raises InputError."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    out: list[str] = []
    for given in map(os.fspath, inputs):
        for p in braceexpand.braceexpand(given) if "{" in given else [given]:
            if glob.has_magic(p) and not os.path.exists(p):
                found = sorted(glob.glob(p))
                if not found:
                    raise InputError(f"{p}: no file matches this pattern")
                out.extend(found)
            else:
                out.append(p)
    return out


def kind_of(path: str) -> str:
    """The kind of input a path names, by its suffix; a directory is an image folder."""
    low = path.lower()
    if os.path.isdir(path):
        return "images"
    for kind, suffixes in (("jsonl", JSONL_SUFFIXES), ("tar", TAR_SUFFIXES), ("parquet", PARQUET_SUFFIXES)):
        if low.endswith(suffixes):
            return kind
    if low.endswith(IMAGE_SUFFIXES):
        return "images"
    raise InputError(
        f"{path}: cannot tell what kind of input this is from its name; expected a directory of images, "
        f"an image, or a file ending in {', '.join(JSONL_SUFFIXES + TAR_SUFFIXES + PARQUET_SUFFIXES)}"
    )


def list_shards(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    kind: str | None = None,
    config: SourceConfig = SourceConfig(),
) -> list[Shard]:
    """The shards of the inputs, in a fixed order (the same on every process).

    Args:
      inputs: paths, brace patterns or globs (see :func:`expand_inputs`), all of one kind.
      kind: one of ``KINDS``; None: told by each path's name (:func:`kind_of`).
      config: how to cut and read them.

    JSON-lines files are scanned once, streaming, to count their lines (so their shards are known up
    front); parquet files have their footers read. A missing file, or inputs of several kinds, raise
    :class:`InputError` naming them.
    """
    paths = expand_inputs(inputs)
    if not paths:
        raise InputError("no inputs given")
    if kind is not None and kind not in KINDS:
        raise InputError(f"unknown kind of input {kind!r}; the kinds are {', '.join(KINDS)}")
    kinds = {p: kind or kind_of(p) for p in paths}
    if len(set(kinds.values())) > 1:
        listed = ", ".join(f"{p} ({k})" for p, k in list(kinds.items())[:4]) + ("…" if len(kinds) > 4 else "")
        raise InputError(f"the inputs mix kinds ({listed}); give one kind at a time")
    kind = kinds[paths[0]]
    if kind == "images":
        return _image_shards(paths, config)
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise InputError(f"{', '.join(missing[:3])}{more}: no such file")
    shards: list[Shard] = []
    for p in paths:
        if kind == "jsonl":
            cuts = _jsonl_cuts(p, config.chunk)
            shards += [
                Shard(len(shards) + i, "jsonl", p, a, b, a, b - a, offset, config=config)
                for i, (a, b, offset) in enumerate(cuts)
            ]
        elif kind == "parquet":
            shards += _parquet_shards(p, config, len(shards))
        else:
            shards.append(Shard(len(shards), "tar", p, config=config))
    return shards


def shards_for_process(shards: Sequence[Shard], process_index: int, process_count: int) -> list[Shard]:
    """Process ``process_index``'s share of ``shards``: a contiguous run, sizes differing by at most one.

    Contiguous rather than round-robin so that the outputs of processes ``0, 1, …`` joined in that order
    are the records in the order of a single-process run (a bank built in parts is the same bank). Every
    shard goes to exactly one process; with more processes than shards, some get none.
    """
    if process_count < 1 or not 0 <= process_index < process_count:
        raise InputError(f"process {process_index} of {process_count}: expected 0 <= index < count")
    n = len(shards)
    return list(shards[process_index * n // process_count : (process_index + 1) * n // process_count])


def _image_shards(paths: list[str], config: SourceConfig) -> list[Shard]:
    files = [str(f) for f in list_images(paths)]
    shards = []
    for i, start in enumerate(range(0, len(files), config.chunk)):
        items = tuple(files[start : start + config.chunk])
        stop = start + len(items)
        shards.append(Shard(i, "images", "", start, stop, first_row=start, size=len(items), items=items, config=config))
    return shards


def _jsonl_cuts(path: str, chunk: int) -> list[tuple[int, int, int]]:
    """``(first line, stop line, byte offset of the first line)`` per chunk of ``chunk`` lines, from one
    streaming pass that counts ``\\n`` bytes (memory: one block)."""
    starts = [0]  # byte offset of every chunk's first line
    lines = 0
    pos = 0
    last = b"\n"
    with open(path, "rb") as f:
        while block := f.read(_SCAN):
            i = 0
            while (j := block.find(b"\n", i)) >= 0:
                lines += 1
                if lines % chunk == 0:
                    starts.append(pos + j + 1)
                i = j + 1
            pos += len(block)
            last = block[-1:]
    if last != b"\n":
        lines += 1  # a last line without its newline
    elif starts[-1] == pos:
        starts.pop()  # the file ends exactly where a chunk would begin
    return [(k * chunk, min(lines, (k + 1) * chunk), off) for k, off in enumerate(starts) if k * chunk < lines]


def _parquet_shards(path: str, config: SourceConfig, first_index: int) -> list[Shard]:
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path).metadata
    except Exception:  # pyarrow raises several types for a bad footer
        # An unreadable file is still a shard: reading it yields one error record, the other files go on.
        return [Shard(first_index, "parquet", path, 0, None, config=config)]
    groups = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
    per = config.row_groups or max(1, len(groups))
    shards, row = [], 0
    for a in range(0, max(1, len(groups)), per):
        b = min(len(groups), a + per)
        n = sum(groups[a:b])
        shards.append(Shard(first_index + len(shards), "parquet", path, a, b, row, n, config=config))
        row += n
    return shards


# ---------------------------------------------------------------------------------------------------------
# Reading shards


def read_shard(shard: Shard) -> Iterator[Record]:
    """The records of one shard, in order, lazily; problems become error records (see :class:`Record`)."""
    return _READERS[shard.kind](shard)


def read_records(shards: Iterable[Shard]) -> Iterator[Record]:
    """The records of several shards, one shard after another."""
    for shard in shards:
        yield from read_shard(shard)


def _read_jsonl(shard: Shard) -> Iterator[Record]:
    with open(shard.path, "rb") as f:
        f.seek(shard.byte_offset)
        for row in range(shard.size):
            raw = f.readline()  # binary readline splits on b"\n" only
            n = shard.first_row + row + 1
            where = f"{shard.path}: line {n}"
            if n == 1 and raw.startswith(BOM):
                raw = raw[len(BOM) :]
            yield _jsonl_record(shard.index, row, where, f"line {n}", raw.rstrip(b"\n").removesuffix(b"\r"))


def _jsonl_record(shard: int, row: int, where: str, key: str, raw: bytes) -> Record:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return Record(
            shard, row, where, key, error=f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at byte {e.start + 1})"
        )
    if not text.strip():
        return Record(shard, row, where, key, blank=True)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return Record(shard, row, where, key, error=f"not valid JSON ({e.msg} at column {e.colno})")
    if not isinstance(obj, dict):
        return Record(shard, row, where, key, error=f"expected a JSON object, got {type(obj).__name__}")
    return Record(shard, row, where, key, fields=obj)


def _read_images(shard: Shard) -> Iterator[Record]:
    for row, p in enumerate(shard.items):
        yield Record(shard.index, row, p, p, image=Path(p))


class _BlockReader:
    """A file that hands out at most one tar block per read, so that when the tar reader stops, the last
    block it was given is the one it stopped at (Python's tarfile ends a stream silently at a corrupt or
    missing header; this is how the end is checked)."""

    def __init__(self, f):
        self.f = f
        self.last = b""
        self.pos = 0
        self.eof = False

    def read(self, n: int = -1) -> bytes:
        b = self.f.read(BLOCK if n < 0 else min(n, BLOCK))
        self.pos += len(b)
        if b:
            self.last = b
        elif n:
            self.eof = True
        return b

    def __repr__(self) -> str:
        return self.f.name


def _tar_end_problem(reader: _BlockReader, path: str) -> str | None:
    """Why a tar stream that ended without an exception did not end at a proper end-of-archive, or None.

    A proper end is a zero block followed by nothing but zeros. Only checked for uncompressed tars (in a
    compressed one, blocks of the file are not blocks of the archive)."""
    if not path.lower().endswith(".tar"):
        return None
    if reader.eof or len(reader.last) != BLOCK:
        return f"the tar is truncated (it ends at byte {reader.pos} without its end-of-archive blocks)"
    at = reader.pos - BLOCK
    if any(reader.last):
        return f"the tar has a corrupt header at byte {at}; nothing after it can be read"
    while rest := reader.f.read(_SCAN):
        if any(rest):
            return f"the tar has an end-of-archive block at byte {at} with data after it; that data cannot be read"
    return None


def _read_tar(shard: Shard) -> Iterator[Record]:
    from webdataset.tariterators import base_plus_ext, tar_file_iterator

    row = 0
    current: dict[str, Any] | None = None  # the sample being gathered: members share a key

    def finish(sample: dict[str, Any], problem: str | None = None) -> Record:
        nonlocal row
        rec = _tar_record(shard, row, sample, problem)
        row += 1
        return rec

    problem = None
    try:
        with open(shard.path, "rb") as f:
            reader = _BlockReader(f)
            for member in tar_file_iterator(reader):
                key, suffix = base_plus_ext(member["fname"])
                if key is None:
                    continue
                if current is not None and key != current["__key__"]:
                    yield finish(current)
                    current = None
                if current is None:
                    current = {"__key__": key, "__members__": {}}
                suffix = suffix.lower()
                if suffix in current["__members__"]:
                    current["__duplicate__"] = suffix
                current["__members__"][suffix] = member["data"]
            problem = _tar_end_problem(reader, shard.path)
    except Exception as e:  # tarfile, zlib and the file system raise several types for a broken stream
        problem = _tar_error(e)
    if current is not None:
        yield finish(current, problem)
    elif problem is not None:
        yield Record(shard.index, row, shard.path, None, error=problem)


def _tar_error(e: Exception) -> str:
    text = str(e.args[0]) if e.args else type(e).__name__
    return f"the tar is corrupt or truncated ({text.split(' @ ')[0]})"


def _tar_record(shard: Shard, row: int, sample: dict[str, Any], problem: str | None) -> Record:
    key = sample["__key__"]
    where = f"{shard.path}: sample {key}"
    members = sample["__members__"]
    if problem is not None:
        return Record(shard.index, row, where, key, error=f"{problem}; this sample may be incomplete")
    if "__duplicate__" in sample:
        return Record(shard.index, row, where, key, error=f"two '{sample['__duplicate__']}' members")
    image = next((members[s] for s in TAR_IMAGE_MEMBERS if s in members), None)
    if image is None and shard.config.need_image:
        return Record(shard.index, row, where, key, error=f"no image member (it has {', '.join(sorted(members))})")
    text = None
    if "txt" in members:
        try:
            text = members["txt"].decode("utf-8")
        except UnicodeDecodeError as e:
            return Record(
                shard.index,
                row,
                where,
                key,
                error=f"its txt member is not valid UTF-8 ({e.reason} at byte {e.start + 1})",
            )
    fields: dict[str, Any] = {}
    if "json" in members:
        try:
            fields = json.loads(members["json"].decode("utf-8").removeprefix("\ufeff"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            return Record(shard.index, row, where, key, error=f"its json member is not valid JSON ({e})")
        if not isinstance(fields, dict):
            return Record(
                shard.index, row, where, key, error=f"its json member is not an object ({type(fields).__name__})"
            )
    return Record(shard.index, row, where, key, image=image, text=text, fields=fields)


class _ShardError(Exception):
    """A problem with a whole shard (reported as one error record)."""


def _bytes_type(t) -> bool:
    import pyarrow as pa

    return pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t)


def _string_type(t) -> bool:
    import pyarrow as pa

    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _image_form(schema, name: str) -> str:
    """How an image column holds its images: ``"bytes"``, ``"path"`` or ``"struct"``."""
    import pyarrow as pa

    t = schema.field(name).type
    if _bytes_type(t):
        return "bytes"
    if _string_type(t):
        return "path"
    if pa.types.is_struct(t) and t.get_field_index("bytes") >= 0 and _bytes_type(t.field("bytes").type):
        return "struct"
    raise _ShardError(
        f"column {name!r} holds {t}; an image column holds bytes, a path, or a struct with 'bytes' (and 'path')"
    )


def _pick(names: Sequence[str], choice: str | None, candidates: Sequence[str], what: str) -> str | None:
    if choice is None:
        return None
    if choice != "auto":
        if choice not in names:
            raise _ShardError(f"no {what} column {choice!r}; its columns are {', '.join(names)}")
        return choice
    return next((c for c in candidates if c in names), None)


def _parquet_plan(schema, columns: Columns) -> dict[str, Any]:
    """The columns a shard reads and how: raises :class:`_ShardError` for a missing or mistyped column."""
    names = list(schema.names)
    image = _pick(names, columns.image, (*IMAGE_COLUMNS, *IMAGE_PATH_COLUMNS), "image")
    if columns.image == "auto" and image is None:
        raise _ShardError(
            f"no image column (looked for {', '.join(IMAGE_COLUMNS + IMAGE_PATH_COLUMNS)}); its columns are "
            f"{', '.join(names)} (Columns(image=None) reads texts alone)"
        )
    text = _pick(names, columns.text, TEXT_COLUMNS, "text")
    if text is not None and not _string_type(schema.field(text).type):
        raise _ShardError(f"text column {text!r} holds {schema.field(text).type}, not strings")
    key = _pick(names, columns.key, KEY_COLUMNS, "key")
    if columns.fields is None:
        fields = [c for c in names if c not in (image, text)]
    else:
        missing = [c for c in columns.fields if c not in names]
        if missing:
            raise _ShardError(f"no column {', '.join(map(repr, missing))}; its columns are {', '.join(names)}")
        fields = list(columns.fields)
    return {
        "image": image,
        "form": _image_form(schema, image) if image else None,
        "text": text,
        "key": key,
        "fields": fields,
        "read": list(dict.fromkeys(c for c in (image, text, key, *fields) if c is not None)),
    }


def _parquet_image(value: Any, form: str, column: str, base: Path) -> tuple[bytes | Path | None, str | None]:
    """One image cell → ``(image, None)`` or ``(None, error)``."""
    if form == "struct" and value is not None:
        if value.get("bytes") is not None:
            value, form = value["bytes"], "bytes"
        elif value.get("path") is not None:
            value, form = value["path"], "path"
        else:
            value = None
    if value is None:
        return None, f"no image (column {column!r} is null)"
    if form == "path":
        if not value:
            return None, f"no image (column {column!r} holds an empty path)"
        p = Path(value)
        return (p if p.is_absolute() else base / p), None
    return value, None


def _read_parquet(shard: Shard) -> Iterator[Record]:
    import pyarrow.parquet as pq

    row = 0
    try:
        pf = pq.ParquetFile(shard.path)
        plan = _parquet_plan(pf.schema_arrow, shard.config.columns)
        base = Path(shard.path).parent
        groups = list(range(shard.start, shard.stop if shard.stop is not None else pf.metadata.num_row_groups))
        for batch in pf.iter_batches(batch_size=shard.config.batch_rows, row_groups=groups, columns=plan["read"]):
            cols = {c: batch.column(c).to_pylist() for c in plan["read"]}
            for i in range(batch.num_rows):
                yield _parquet_record(shard, row, cols, i, plan, base)
                row += 1
    except _ShardError as e:
        yield Record(shard.index, row, shard.path, None, error=str(e))
    except Exception as e:  # pyarrow raises several types for a corrupt file
        at = f" from row {shard.first_row + row} on" if row else ""
        yield Record(shard.index, row, shard.path, None, error=f"cannot read the parquet file{at} ({e})")


def _parquet_record(shard: Shard, row: int, cols: dict[str, list], i: int, plan: dict, base: Path) -> Record:
    file_row = shard.first_row + row
    where = f"{shard.path}: row {file_row}"
    key = cols[plan["key"]][i] if plan["key"] else None
    key = str(file_row) if key is None else str(key)
    fields = {c: cols[c][i] for c in plan["fields"]}
    text = cols[plan["text"]][i] if plan["text"] else None
    image = None
    if plan["image"]:
        image, error = _parquet_image(cols[plan["image"]][i], plan["form"], plan["image"], base)
        if error:
            return Record(shard.index, row, where, key, text=text, fields=fields, error=error)
    return Record(shard.index, row, where, key, image=image, text=text, fields=fields)


_READERS = {"jsonl": _read_jsonl, "tar": _read_tar, "parquet": _read_parquet, "images": _read_images}

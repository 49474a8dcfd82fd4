"""Embeddings computed elsewhere, read in chunks, so that a large bank is not encoded again.

Two layouts::

    embeddings.npy (+ metadata.parquet | metadata.jsonl)     one [N, E] array, one metadata row per row

    index_dir/                                                as clip-retrieval writes it
      img_emb/img_emb_0.npy, img_emb_1.npy, …                 [N_i, E] float16 or float32
      text_emb/text_emb_0.npy, …
      metadata/metadata_0.parquet, …                          N_i rows each (image_path, caption, url, …)

Files are numbered from 0; part ``i`` of the embeddings goes with part ``i`` of the metadata, and global
rows run through the parts in order. Arrays are memory-mapped with ``allow_pickle=False`` and read a chunk
at a time. Every layout problem (a missing part, a count mismatch, another width, a dtype that is not
float) raises :class:`~jaxplain.errors.InputError` naming the files, from :func:`open_embeddings`, before
anything is read. Rows are checked as they are read: a row with NaN or infinity, or a norm farther than
``tolerance`` from 1, names its file and row. Rows are returned renormalised in float32 (clip-retrieval
stores unit-norm float16: its rounding moves norms by ~1e-3, which the tolerance admits and the
renormalisation removes, so a bank's unit-norm invariant holds exactly).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from jaxplain.errors import InputError

NORM_TOLERANCE = 1e-2
DEFAULT_CHUNK = 65536
LAYOUT_DIRS = {"image": ("img_emb", "img_emb_"), "text": ("text_emb", "text_emb_")}
METADATA_DIR = ("metadata", "metadata_")
FLOAT_DTYPES = (np.float16, np.float32, np.float64)


@dataclasses.dataclass(frozen=True)
class EmbeddingPart:
    """One embeddings file and its metadata file (None: no metadata), ``rows`` rows from global ``offset``."""

    embeddings: Path
    metadata: Path | None
    rows: int
    offset: int


@dataclasses.dataclass(frozen=True)
class EmbeddingChunk:
    """Consecutive rows of one part.

    Attributes:
      embeddings: ``[n, E]`` float32, unit-norm.
      metadata: column → ``n`` values (empty without metadata), aligned with ``embeddings``.
      offset: the global row of the chunk's first row.
      rows: ``[n]`` int64 global rows of the rows kept (``offset + arange(n)`` unless rows were skipped).
      errors: messages for the rows skipped (``bad_rows="skip"``), each naming file and row.
      where: the embeddings file.
    """

    embeddings: np.ndarray
    metadata: dict[str, list]
    offset: int
    rows: np.ndarray
    errors: list[str]
    where: str


@dataclasses.dataclass(frozen=True)
class PrecomputedEmbeddings:
    """Embeddings on disk, checked for layout: ``size`` rows of width ``dim`` in ``parts``."""

    kind: str
    parts: tuple[EmbeddingPart, ...]
    dim: int

    @property
    def size(self) -> int:
        """``N``, the number of rows in all parts."""
        return sum(p.rows for p in self.parts)

    def chunks(
        self,
        chunk: int = DEFAULT_CHUNK,
        columns: Sequence[str] | None = None,
        bad_rows: str = "raise",
        tolerance: float = NORM_TOLERANCE,
    ) -> Iterator[EmbeddingChunk]:
        """The rows in chunks of at most ``chunk`` (a chunk never spans two parts), in global order.

        Args:
          columns: metadata columns to read (None: all).
          bad_rows: ``"raise"``: a non-finite row or one whose norm is off by more than ``tolerance`` raises
            :class:`InputError` naming file and row; ``"skip"``: it is left out of the chunk (with its
            metadata) and named in :attr:`EmbeddingChunk.errors`.
        """
        if chunk < 1:
            raise InputError(f"chunk must be positive, got {chunk}")
        if bad_rows not in ("raise", "skip"):
            raise InputError(f"bad_rows must be 'raise' or 'skip', got {bad_rows!r}")
        for part in self.parts:
            yield from _part_chunks(part, chunk, columns, bad_rows, tolerance)


def open_embeddings(path: str | Path, kind: str = "image", metadata: str | Path | None = None) -> PrecomputedEmbeddings:
    """Find and check the layout of precomputed embeddings (see the module's docstring).

    Args:
      path: an ``.npy`` file, or a clip-retrieval directory (holding ``img_emb/`` or ``text_emb/``).
      kind: ``"image"`` or ``"text"``: which embeddings of a clip-retrieval directory.
      metadata: for an ``.npy`` file, its metadata (``.parquet``, ``.jsonl``, or ``.json`` holding a list of
        objects); not allowed with a directory, whose metadata is ``metadata/``.
    """
    if kind not in LAYOUT_DIRS:
        raise InputError(f"kind must be 'image' or 'text', got {kind!r}")
    path = Path(path)
    if path.is_dir():
        if metadata is not None:
            raise InputError(f"{path}: a clip-retrieval directory has its metadata in {METADATA_DIR[0]}/")
        pairs = _directory_parts(path, kind)
    elif path.is_file():
        if metadata is not None and not Path(metadata).is_file():
            raise InputError(f"{metadata}: no such file")
        pairs = [(path, Path(metadata) if metadata is not None else None)]
    else:
        raise InputError(f"{path}: no such file or directory")
    parts, dim, offset = [], None, 0
    for emb, meta in pairs:
        rows, width = _npy_shape(emb)
        if dim is not None and width != dim:
            raise InputError(f"{emb}: embeddings of width {width}, but {parts[0].embeddings} has width {dim}")
        dim = width
        if meta is not None:
            n = _metadata_rows(meta)
            if n != rows:
                raise InputError(f"{emb} has {rows} rows but its metadata {meta} has {n}; they must align row by row")
        parts.append(EmbeddingPart(emb, meta, rows, offset))
        offset += rows
    return PrecomputedEmbeddings(kind, tuple(parts), dim)


def iter_embedding_chunks(
    path: str | Path,
    kind: str = "image",
    chunk: int = DEFAULT_CHUNK,
    metadata: str | Path | None = None,
    columns: Sequence[str] | None = None,
    bad_rows: str = "raise",
) -> Iterator[EmbeddingChunk]:
    """``open_embeddings(path, kind, metadata).chunks(chunk, columns, bad_rows)``."""
    return open_embeddings(path, kind, metadata).chunks(chunk, columns, bad_rows)


def _numbered(directory: Path, prefix: str, suffix: str) -> dict[int, Path]:
    pattern = re.compile(re.escape(prefix) + r"(\d+)" + re.escape(suffix))
    found = {}
    for f in directory.iterdir() if directory.is_dir() else ():
        m = pattern.fullmatch(f.name)
        if m:
            found[int(m.group(1))] = f
    return found


def _directory_parts(root: Path, kind: str) -> list[tuple[Path, Path | None]]:
    sub, prefix = LAYOUT_DIRS[kind]
    embs = _numbered(root / sub, prefix, ".npy")
    if not embs:
        raise InputError(f"{root}: no {sub}/{prefix}N.npy files (a clip-retrieval directory has them)")
    _check_consecutive(embs, root / sub)
    metas = _numbered(root / METADATA_DIR[0], METADATA_DIR[1], ".parquet")
    if metas:
        _check_consecutive(metas, root / METADATA_DIR[0])
        if set(metas) != set(embs):
            raise InputError(
                f"{root}: {len(embs)} embedding files in {sub}/ but {len(metas)} metadata files in "
                f"{METADATA_DIR[0]}/; each {prefix}N.npy needs its {METADATA_DIR[1]}N.parquet"
            )
    return [(embs[i], metas.get(i)) for i in sorted(embs)]


def _check_consecutive(files: dict[int, Path], where: Path) -> None:
    missing = sorted(set(range(max(files) + 1)) - set(files))
    if missing:
        raise InputError(f"{where}: part {missing[0]} is missing (parts 0 to {max(files)} are expected)")


def _npy_shape(path: Path) -> tuple[int, int]:
    try:
        a = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable .npy file ({e})") from None
    if a.ndim != 2 or a.dtype not in FLOAT_DTYPES:
        raise InputError(f"{path}: expected embeddings [N, E] of float16, float32 or float64, got {a.dtype} {a.shape}")
    return a.shape


def _metadata_rows(path: Path) -> int:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(path).metadata.num_rows
        except Exception as e:  # pyarrow raises several types for a bad footer
            raise InputError(f"{path}: not a readable parquet file ({e})") from None
    if suffix == ".jsonl":
        with open(path, "rb") as f:
            return sum(1 for line in f if line.strip())
    if suffix == ".json":
        return len(_json_rows(path))
    raise InputError(f"{path}: metadata must be .parquet, .jsonl or .json")


def _json_rows(path: Path) -> list[dict]:
    try:
        rows = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise InputError(f"{path}: metadata JSON must be a list of objects, one per row")
    return rows


def _metadata_batches(path: Path | None, chunk: int, columns: Sequence[str] | None) -> Iterator[dict[str, list]]:
    """The metadata in consecutive batches of exactly ``chunk`` rows (the last may be shorter)."""
    if path is None:
        while True:
            yield {}
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        if columns is not None:
            missing = [c for c in columns if c not in pf.schema_arrow.names]
            if missing:
                raise InputError(f"{path}: no column {', '.join(map(repr, missing))}")
        pending: list = []
        have = 0
        for batch in pf.iter_batches(batch_size=chunk, columns=list(columns) if columns is not None else None):
            pending.append(batch)
            have += batch.num_rows
            while have >= chunk:
                table = pa.Table.from_batches(pending)
                yield table.slice(0, chunk).to_pydict()
                rest = table.slice(chunk)
                pending, have = rest.to_batches(), rest.num_rows
        if have:
            yield pa.Table.from_batches(pending).to_pydict()
        return
    lines: Iterator[dict]
    if suffix == ".json":
        lines = iter(_json_rows(path))
    else:
        lines = _jsonl_rows(path)
    while True:
        rows = [r for _, r in zip(range(chunk), lines)]
        if not rows:
            return
        names = list(columns) if columns is not None else list(dict.fromkeys(k for r in rows for k in r))
        yield {c: [r.get(c) for r in rows] for c in names}


def _jsonl_rows(path: Path) -> Iterator[dict]:
    with open(path, encoding="utf-8-sig") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}: line {n}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise InputError(f"{path}: line {n}: expected a JSON object")
            yield row


def _part_chunks(
    part: EmbeddingPart, chunk: int, columns: Sequence[str] | None, bad_rows: str, tolerance: float
) -> Iterator[EmbeddingChunk]:
    emb = np.load(part.embeddings, mmap_mode="r", allow_pickle=False)
    metas = _metadata_batches(part.metadata, chunk, columns)
    for start in range(0, part.rows, chunk):
        x = np.asarray(emb[start : start + chunk], dtype=np.float32)
        meta = next(metas)
        norms = np.linalg.norm(x, axis=1) if x.size else np.zeros(len(x), np.float32)
        bad = ~np.isfinite(norms) | (np.abs(norms - 1) > tolerance)
        errors = []
        for i in np.flatnonzero(bad):
            what = "holds NaN or infinity" if not np.isfinite(x[i]).all() else f"has norm {norms[i]:.4g}, not 1"
            msg = f"{part.embeddings}: row {start + i} {what} (embeddings must be unit-norm)"
            if bad_rows == "raise":
                raise InputError(msg)
            errors.append(msg)
        keep = np.flatnonzero(~bad)
        if len(keep) < len(x):
            x, norms = x[keep], norms[keep]
            meta = {c: [v[i] for i in keep] for c, v in meta.items()}
        yield EmbeddingChunk(
            embeddings=x / norms[:, None],
            metadata=meta,
            offset=part.offset + start,
            rows=(part.offset + start + keep).astype(np.int64),
            errors=errors,
            where=str(part.embeddings),
        )

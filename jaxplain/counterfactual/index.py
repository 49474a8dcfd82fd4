"""Nearest-neighbour indexes over a bank's embeddings: exact top-k (the oracle) and ScaNN.

Both answer ``search(queries [Q, E], k) → (ids [Q, k] int64, scores [Q, k] float32)``: row indices into
the bank and dot products, best first. ``k`` larger than the bank is clamped to the bank size, so a
search returns ``min(k, size)`` columns (a small bank gives all its items, ranked).

* :class:`ExactIndex` — one jitted function: a matmul and ``jax.lax.top_k`` over fixed-size chunks of the
  bank with a running top-k merge, so memory is bounded by ``[Q, CHUNK_ROWS]`` scores whatever the bank
  size. Query counts are padded to power-of-two buckets, so it compiles once per (bank, bucket, k).
* :class:`ScannIndex` — a ScaNN tree + asymmetric-hashing searcher with exact re-ordering, its
  parameters chosen from the bank size by :meth:`ScannParams.for_size`.

:func:`build_index` with ``backend="auto"`` takes the exact index below :data:`AUTO_SCANN_MIN_SIZE` items,
where brute force answers about as fast as ScaNN, exactly and without training, and ScaNN from there on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxplain.batching import bucket, chunks, pad_rows
from jaxplain.errors import InputError, JaxplainError
from jaxplain.jobs import fsync_dir
from jaxplain.sharding import BANK, replicate, shard_global

CHUNK_ROWS = 8192  # bank rows scored per step of the exact search: [QUERY_BLOCK, CHUNK_ROWS] float32 = 32 MiB
QUERY_BLOCK = 1024  # queries per call of the jitted exact search (larger query sets are split)
# The bank size from which "auto" takes ScaNN. Measured on this project's 2-core CPU machine (1,000 clustered
# queries, k=10, benchmarks/bench_index.py): ScaNN's query rate passes the exact index's between 2,048 and
# 4,096 items (E=128: 47k vs 74k q/s at 2,048, 29k vs 56k at 4,096; E=512: 24k vs 23k at 2,048, 8k vs 21k at
# 4,096) and its lead grows with the bank (≈ 11× at 65k, ≈ 100× at 1M). Below it a tree would also lose
# recall (leaves of a few dozen items). On a GPU the exact matmul is far faster and the crossover higher.
AUTO_SCANN_MIN_SIZE = 4096
SCANN_TREE_MIN_SIZE = 4096  # below this, a ScaNN index scores every item (see ScannParams.for_size)

INDEX_FILE = "index.json"
EMBEDDINGS_FILE = "embeddings.npy"
SCANN_DATASET = "dataset.npy"  # the float rows a serialised ScaNN searcher holds
FORMAT = "jaxplain-index"
VERSION = 1


class IndexFileError(JaxplainError):
    """An index directory is missing, corrupt, or unsafe to load."""


FINITE_BLOCK = 65536  # rows checked for NaN and infinity at a time (bounds the check's temporary memory)


def nonfinite_rows(x: np.ndarray, block: int = FINITE_BLOCK) -> np.ndarray:
    """The rows (int64, ascending) of ``x`` ``[N, ...]`` that hold a NaN or an infinity, checked ``block`` rows
    at a time (a memory-mapped bank is read once, and no ``[N, E]`` temporary is made)."""
    x = np.asarray(x)
    if x.ndim == 0 or not np.issubdtype(x.dtype, np.inexact):
        return np.zeros(0, np.int64)
    bad = []
    for lo in range(0, len(x), block):
        part = x[lo : lo + block].reshape(min(block, len(x) - lo), -1)
        bad.append(lo + np.flatnonzero(~np.isfinite(part).all(axis=1)))
    return np.concatenate(bad).astype(np.int64) if bad else np.zeros(0, np.int64)


def _check_embeddings(embeddings: np.ndarray) -> np.ndarray:
    """Validate a bank ``[N, E]`` and return it as contiguous float32."""
    x = np.asarray(embeddings)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise InputError(f"an index needs embeddings [N, E] with N, E ≥ 1, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise InputError(f"embeddings must be floating point, got {x.dtype}")
    x = np.ascontiguousarray(x, np.float32)
    bad = nonfinite_rows(x)  # after the cast: float64 beyond float32's range becomes infinity
    if bad.size:
        raise InputError(f"embedding rows {bad[:5].tolist()} hold NaN or infinity")
    return x


def _refuse_nonfinite(directory: str | os.PathLike, name: str, x: np.ndarray) -> None:
    """An :class:`IndexFileError` naming the index directory, the file and its first non-finite rows."""
    bad = nonfinite_rows(x)
    if bad.size:
        rows = ", ".join(str(r) for r in bad[:3].tolist()) + (f" and {bad.size - 3} more" if bad.size > 3 else "")
        raise IndexFileError(
            f"{directory}: {name} {'row' if bad.size == 1 else 'rows'} {rows} {'is' if bad.size == 1 else 'are'} "
            "not finite (NaN or infinity); rebuild the index"
        )


def _check_queries(queries: np.ndarray, dim: int) -> np.ndarray:
    """Validate queries ``[Q, E]`` against the index width and return them as contiguous float32."""
    q = np.asarray(queries)
    if q.ndim != 2 or q.shape[1] != dim:
        raise InputError(f"queries must have shape [Q, {dim}] (the index's dimension), got {q.shape}")
    q = np.ascontiguousarray(q, np.float32)
    bad = np.flatnonzero(~np.isfinite(q).all(axis=1))
    if bad.size:
        raise InputError(f"query rows {bad[:5].tolist()} hold NaN or infinity")
    return q


def _check_k(k: int, size: int) -> int:
    """``k`` clamped to the bank size; ``k < 1`` is an error."""
    if int(k) != k or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}")
    return min(int(k), size)


# ----------------------------------------------------------------------------------------------- exact


def _scan_top_k(bank, size, queries, k, offset):
    """Top-``k`` of ``queries`` over chunks ``bank`` ``[C, R, E]`` whose first row is global row ``offset``."""
    num_chunks, rows, _ = bank.shape
    k_chunk = min(k, rows)

    def step(best, xs):
        best_scores, best_ids = best
        chunk, c = xs
        row = offset + c * rows + jnp.arange(rows, dtype=jnp.int32)
        s = jnp.matmul(queries, chunk.T, precision=jax.lax.Precision.HIGHEST)
        s = jnp.where(row[None, :] < size, s, -jnp.inf)
        top_s, top_pos = jax.lax.top_k(s, k_chunk)
        # The running best comes first: it holds lower rows, so ties still resolve to the lower row.
        all_s = jnp.concatenate([best_scores, top_s], axis=1)
        all_ids = jnp.concatenate([best_ids, row[top_pos]], axis=1)
        merged_s, pos = jax.lax.top_k(all_s, k)
        return (merged_s, jnp.take_along_axis(all_ids, pos, axis=1)), None

    q = queries.shape[0]
    init = (jnp.full((q, k), -jnp.inf, jnp.float32), jnp.full((q, k), -1, jnp.int32))
    (scores, ids), _ = jax.lax.scan(step, init, (bank, jnp.arange(num_chunks, dtype=jnp.int32)))
    return ids, scores


@functools.partial(jax.jit, static_argnames="k")
def exact_top_k(bank: jax.Array, size: jax.Array, queries: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """Exact top-``k`` by dot product, scanning the bank a chunk at a time.

    Args:
      bank: ``[C, R, E]`` float32, the bank's rows in ``C`` chunks of ``R`` (zero-padded at the end).
      size: scalar int, the number of real rows; padding rows never win.
      queries: ``[Q, E]`` float32.
      k: static, ``1 ≤ k ≤ size``.

    Returns:
      ``(ids [Q, k] int32, scores [Q, k] float32)``, best first; equal scores keep the lower row first.
    """
    return _scan_top_k(bank, size, queries, k, 0)


@functools.partial(jax.jit, static_argnames=("k", "mesh", "axis"))
def sharded_exact_top_k(
    bank: jax.Array, size: jax.Array, queries: jax.Array, k: int, mesh: Mesh, axis: str = BANK
) -> tuple[jax.Array, jax.Array]:
    """:func:`exact_top_k` with the bank's chunks split over the mesh axis ``axis``.

    Each device scans its own chunks (global rows ``d · C/D · R`` on, for device ``d`` of ``D``) into a
    local top-``k``; the ``D`` local results are gathered and merged by one more top-``k``. Device ``d``'s
    rows all come before device ``d + 1``'s, and the merge keeps earlier positions first among equal
    scores, so ties still resolve to the lower row: the result equals :func:`exact_top_k` on the same
    chunks bit for bit (every device computes each score with the same ``[Q, E] × [E, R]`` product).

    Args:
      bank: ``[C, R, E]`` float32, ``C`` a multiple of ``D``, split over ``axis`` along ``C``.
      size: scalar int, replicated; queries: ``[Q, E]``, replicated; k: static, ``1 ≤ k ≤ size``.
      mesh: static, the mesh; axis: static, its axis the chunks are split over.

    Returns:
      ``(ids [Q, k] int32, scores [Q, k] float32)``, replicated, best first.
    """

    def local(bank_part, size, queries):
        offset = jax.lax.axis_index(axis) * (bank_part.shape[0] * bank_part.shape[1])
        ids, scores = _scan_top_k(bank_part, size, queries, k, offset)
        ids, scores = (jax.lax.all_gather(a, axis, axis=1, tiled=True) for a in (ids, scores))  # [Q, D·k]
        top, pos = jax.lax.top_k(scores, k)
        return jnp.take_along_axis(ids, pos, axis=1), top

    whole = PartitionSpec()
    # The single-device scan runs unchanged on each device (its carry starts replicated): no vma checks.
    search = jax.shard_map(
        local, mesh=mesh, in_specs=(PartitionSpec(axis), whole, whole), out_specs=whole, check_vma=False
    )
    return search(bank, size, queries)


class ExactIndex:
    """Exact top-k by dot product over a bank ``[N, E]`` (the test oracle), held on the default device, or
    split over the devices of a mesh axis.

    With ``mesh``, the single-device chunks (``R = min(chunk_rows, bucket(N))`` rows) are dealt out in order,
    ``⌈C / D⌉`` to each of the ``D`` devices of ``axis`` (the last ones padded), and a search runs
    :func:`sharded_exact_top_k`: every device scores its chunks with the single-device program's products,
    so the ids and scores equal those without a mesh (same ``chunk_rows``) bit for bit, ties included. A
    bank of fewer than ``D · R`` rows leaves devices with only padding; ``chunk_rows =``
    :func:`jaxplain.sharding.spread_chunk` ``(N, D, chunk_rows)`` spreads it (the results then equal a
    single-device index with that ``chunk_rows``; another chunk width may change scores in the last bit).
    In a multi-process job every process passes the same bank (each device reads only its chunks) and the
    same queries, and every process gets the whole result.

    Attributes:
      size: ``N``, the number of bank rows.
      dim: ``E``, the embedding width.
      mesh: the mesh the bank is split over, or None.
    """

    backend = "exact"

    def __init__(
        self, embeddings: np.ndarray, chunk_rows: int = CHUNK_ROWS, mesh: Mesh | None = None, axis: str = BANK
    ):
        x = _check_embeddings(embeddings)
        self.size, self.dim = x.shape
        self.mesh, self.axis = mesh, axis
        rows = min(chunk_rows, bucket(self.size))  # a small bank is one chunk of its power-of-two bucket
        num_chunks = -(-self.size // rows)
        if mesh is None:
            self._host = None
            self._bank = jnp.asarray(pad_rows(x, num_chunks * rows).reshape(num_chunks, rows, self.dim))
        else:
            devices = mesh.shape[axis]
            num_chunks = -(-num_chunks // devices) * devices
            flat = shard_global(x, mesh, axis, num_chunks * rows)
            split = NamedSharding(mesh, PartitionSpec(axis))
            self._host = x  # every process holds the bank; the devices hold only their chunks
            self._bank = jax.jit(lambda a: a.reshape(num_chunks, rows, self.dim), out_shardings=split)(flat)

    @property
    def embeddings(self) -> np.ndarray:
        """The bank ``[N, E]`` float32, on the host."""
        if self._host is not None:
            return self._host
        return np.asarray(self._bank).reshape(-1, self.dim)[: self.size]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """queries ``[Q, E]`` → ``(ids [Q, min(k, N)] int64, scores [Q, min(k, N)] float32)``, best first."""
        q = _check_queries(queries, self.dim)
        k = _check_k(k, self.size)
        if not len(q):
            return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
        ids, scores = [], []
        for s in chunks(len(q), QUERY_BLOCK):
            n = s.stop - s.start
            block = pad_rows(q[s], bucket(n, QUERY_BLOCK))
            if self.mesh is None:
                i, v = exact_top_k(self._bank, jnp.int32(self.size), jnp.asarray(block), k)
            else:
                size, block = replicate((np.int32(self.size), block), self.mesh)
                i, v = sharded_exact_top_k(self._bank, size, block, k, self.mesh, self.axis)
            ids.append(np.asarray(i)[:n])
            scores.append(np.asarray(v)[:n])
        return np.concatenate(ids).astype(np.int64), np.concatenate(scores)

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``index.json`` and ``embeddings.npy`` to ``directory``, atomically."""
        with atomic_directory(directory) as tmp:
            np.save(tmp / EMBEDDINGS_FILE, self.embeddings, allow_pickle=False)
            _write_meta(tmp, {"backend": self.backend, "size": self.size, "dim": self.dim})

    @classmethod
    def load(cls, directory: str | os.PathLike, mesh: Mesh | None = None, axis: str = BANK) -> ExactIndex:
        """Read an index written by :meth:`save` (split over ``mesh``'s ``axis`` if given)."""
        meta = _read_meta(directory)
        x = read_npy(Path(directory) / EMBEDDINGS_FILE)
        if x.shape != (meta["size"], meta["dim"]):
            raise IndexFileError(f"{directory}: embeddings.npy has shape {x.shape}, index.json says {meta}")
        if not np.issubdtype(x.dtype, np.floating):
            raise IndexFileError(f"{directory}: {EMBEDDINGS_FILE} holds {x.dtype}, not floating point")
        _refuse_nonfinite(directory, EMBEDDINGS_FILE, x)
        try:
            return cls(x, mesh=mesh, axis=axis)
        except InputError as e:  # e.g. float64 rows beyond float32's range
            raise IndexFileError(f"{directory}: {EMBEDDINGS_FILE}: {e}; rebuild the index") from None

    def __repr__(self) -> str:
        where = "" if self.mesh is None else f", split over {self.mesh.shape[self.axis]} devices"
        return f"ExactIndex(size={self.size}, dim={self.dim}{where})"


# ----------------------------------------------------------------------------------------------- ScaNN


@dataclasses.dataclass(frozen=True)
class ScannParams:
    """How a ScaNN searcher is built and searched.

    Attributes:
      num_leaves: k-means partitions of the bank; 0 means no tree (every item is scored).
      num_leaves_to_search: partitions scored per query.
      training_sample_size: rows the partitioner and the quantiser are trained on.
      reorder: candidates re-scored exactly with float dot products; a search re-scores
        ``max(reorder, 2·k)`` so that large ``k`` keeps its recall.
    """

    num_leaves: int
    num_leaves_to_search: int
    training_sample_size: int
    reorder: int

    @classmethod
    def for_size(cls, n: int) -> ScannParams:
        """The rule, for a bank of ``n`` items:

        * ``n < SCANN_TREE_MIN_SIZE``: no tree, every item scored in float (leaves of a few dozen items
          lose recall: 0.95 at 2,048 items, 0.71 at 1,024; and asymmetric hashing needs ≥ 16 points);
        * ``num_leaves = round(√n)``: ≈ √n items per leaf, the balance the ScaNN authors advise;
        * ``num_leaves_to_search = ⌈√num_leaves⌉`` (≈ n^¾ items scored with the quantised codes: 10 % of
          10k items, 3.2 % of 1M, 1.8 % of 10M). A fixed share scores far more items than recall needs on
          big banks. On clustered banks (``benchmarks/bench_index.py``, 1M items) recall@10 was 0.952 /
          0.968 / 0.986 with 32 / 50 / 100 of the 1,000 leaves, at 19k / 15k / 9k queries/s. What the
          counterfactual search needs is less than that: on the shipped model's 1,000 benchmark pairs
          (``benchmarks/bench_counterfactuals.py``, class changes), found-rate and median proximity against
          the oracle were the same with 24, 32 or 48 of the 1,000 leaves on the 1M-embedding bank and with
          8, 10 or 15 of the 100 leaves on the 10k real bank; the targets, not the index, limit them;
        * ``training_sample_size = min(n, max(100_000, 64·num_leaves))``: the k-means tree and the
          codebooks need tens of points per leaf; 100k bounds the training time of big banks;
        * ``reorder = 100`` (raised to ``2·k`` at search time).
        """
        if n < SCANN_TREE_MIN_SIZE:
            return cls(0, 0, n, min(n, 100))
        leaves = max(2, round(math.sqrt(n)))
        return cls(leaves, math.ceil(math.sqrt(leaves)), min(n, max(100_000, 64 * leaves)), 100)


class ScannIndex:
    """Approximate top-k by dot product with a ScaNN searcher (tree + asymmetric hashing + exact reorder).

    Attributes:
      size: ``N``, the number of bank rows.
      dim: ``E``, the embedding width.
      params: the :class:`ScannParams` it was built with.
    """

    backend = "scann"

    def __init__(self, searcher: Any, size: int, dim: int, params: ScannParams):
        self.searcher, self.size, self.dim, self.params = searcher, size, dim, params

    @classmethod
    def build(cls, embeddings: np.ndarray, params: ScannParams | None = None) -> ScannIndex:
        """Train a searcher on a bank ``[N, E]`` (parameters from :meth:`ScannParams.for_size` by default)."""
        import scann

        x = _check_embeddings(embeddings)
        p = params or ScannParams.for_size(len(x))
        b = scann.scann_ops_pybind.builder(x, 10, "dot_product")
        if p.num_leaves:
            b = b.tree(
                num_leaves=p.num_leaves,
                num_leaves_to_search=p.num_leaves_to_search,
                training_sample_size=min(p.training_sample_size, len(x)),
            )
            b = b.score_ah(2, anisotropic_quantization_threshold=0.2).reorder(p.reorder)
        else:
            b = b.score_brute_force()
        return cls(b.build(), len(x), x.shape[1], p)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """queries ``[Q, E]`` → ``(ids [Q, min(k, N)] int64, scores [Q, min(k, N)] float32)``, best first.

        Approximate: an item may be missed (see recall in ``benchmarks/bench_index.py``). ScaNN pads a row
        with NaN scores when the searched leaves hold fewer than ``k`` items; such rows are searched again
        over all leaves, so every row holds ``min(k, N)`` real items.
        """
        q = _check_queries(queries, self.dim)
        k = _check_k(k, self.size)
        if not len(q):
            return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
        kw = {"pre_reorder_num_neighbors": min(self.size, max(self.params.reorder, 2 * k))}
        if self.params.num_leaves:
            kw["leaves_to_search"] = self.params.num_leaves_to_search
        else:
            kw = {}
        ids, scores = self.searcher.search_batched_parallel(q, final_num_neighbors=k, **kw)
        ids, scores = np.asarray(ids, np.int64), np.asarray(scores, np.float32)
        short = np.flatnonzero(np.isnan(scores).any(axis=1))
        if short.size:
            kw["leaves_to_search"] = self.params.num_leaves or None
            i, v = self.searcher.search_batched(q[short], final_num_neighbors=k, **kw)
            ids[short], scores[short] = i, v
        return ids, scores

    def save(self, directory: str | os.PathLike) -> None:
        """Serialise the searcher (with paths relative to ``directory``) and ``index.json``, atomically."""
        with atomic_directory(directory) as tmp:
            self.searcher.serialize(str(tmp), relative_path=True)
            meta = {"backend": self.backend, "size": self.size, "dim": self.dim}
            _write_meta(tmp, {**meta, "params": dataclasses.asdict(self.params)})

    @classmethod
    def load(cls, directory: str | os.PathLike) -> ScannIndex:
        import scann

        meta = _read_meta(directory)
        d = Path(directory)
        # ScaNN's loader unpickles ``scann_docids.pkl`` when present; jaxplain never writes one.
        if (d / "scann_docids.pkl").exists():
            raise IndexFileError(f"{d}: holds scann_docids.pkl, a pickle; jaxplain does not load pickles")
        if not (d / "scann_assets.pbtxt").is_file():
            raise IndexFileError(f"{d}: no scann_assets.pbtxt; not a serialised ScaNN searcher")
        if (d / SCANN_DATASET).is_file():  # the rows the searcher re-scores exactly
            dataset = read_npy(d / SCANN_DATASET, mmap=True)
            if dataset.ndim != 2 or dataset.shape != (meta["size"], meta["dim"]):
                raise IndexFileError(
                    f"{d}: {SCANN_DATASET} has shape {list(dataset.shape)}, index.json says "
                    f"[{meta['size']}, {meta['dim']}]"
                )
            _refuse_nonfinite(d, SCANN_DATASET, dataset)
        try:
            searcher = scann.scann_ops_pybind.load_searcher(str(d), assets_backcompat_shim=False)
        except (RuntimeError, ValueError) as e:
            raise IndexFileError(f"{d}: cannot load the ScaNN searcher ({e})") from None
        if searcher.size() != meta["size"]:
            raise IndexFileError(f"{d}: the searcher holds {searcher.size()} items, index.json says {meta['size']}")
        return cls(searcher, meta["size"], meta["dim"], ScannParams(**meta["params"]))

    def __repr__(self) -> str:
        return f"ScannIndex(size={self.size}, dim={self.dim}, {self.params})"


Index = ExactIndex | ScannIndex
BACKENDS = ("auto", "exact", "scann")


def build_index(embeddings: np.ndarray, backend: str = "auto", params: ScannParams | None = None) -> Index:
    """An index over a bank ``[N, E]``.

    Args:
      embeddings: ``[N, E]`` float, finite.
      backend: ``"exact"``, ``"scann"``, or ``"auto"``: exact below :data:`AUTO_SCANN_MIN_SIZE` items,
        ScaNN from there on.
      params: ScaNN parameters (default: :meth:`ScannParams.for_size`); ignored by the exact index.
    """
    if backend not in BACKENDS:
        raise InputError(f"index backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    n = np.shape(embeddings)[0] if np.ndim(embeddings) else 0
    if backend == "exact" or (backend == "auto" and n < AUTO_SCANN_MIN_SIZE):
        return ExactIndex(embeddings)
    return ScannIndex.build(embeddings, params)


def load_index(directory: str | os.PathLike) -> Index:
    """Load an index written by ``save`` (the backend is read from its ``index.json``)."""
    backend = _read_meta(directory)["backend"]
    if backend == "sharded":
        from jaxplain.counterfactual.shards import ShardedIndex

        return ShardedIndex.load(directory)
    return {"exact": ExactIndex, "scann": ScannIndex}[backend].load(directory)


# ----------------------------------------------------------------------------------------------- files


def _write_meta(directory: Path, meta: dict[str, Any]) -> None:
    (directory / INDEX_FILE).write_text(json.dumps({"format": FORMAT, "version": VERSION, **meta}, indent=1) + "\n")


def _read_meta(
    directory: str | os.PathLike, backends: tuple[str, ...] = ("exact", "scann", "sharded")
) -> dict[str, Any]:
    """An index directory's ``index.json``, checked: format, one of ``backends``, a version this jaxplain reads."""
    path = Path(directory) / INDEX_FILE
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise IndexFileError(f"{directory}: not an index directory (no {INDEX_FILE})") from None
    except (OSError, ValueError) as e:
        raise IndexFileError(f"{path}: unreadable ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("backend") not in backends:
        raise IndexFileError(f"{path}: not a jaxplain {' or '.join(backends)} index description")
    if meta.get("version", 0) > VERSION:
        raise IndexFileError(f"{path}: format version {meta['version']} is newer than this jaxplain reads ({VERSION})")
    return meta


def read_npy(path: Path, error: type[JaxplainError] = IndexFileError, mmap: bool = False) -> np.ndarray:
    """``np.load`` without pickles (memory-mapped read-only with ``mmap``); a missing or corrupt file raises
    ``error`` naming it."""
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise error(f"{path}: missing") from None
    except (OSError, ValueError) as e:
        raise error(f"{path}: unreadable ({e})") from None


def _fsync_tree(directory: Path) -> None:
    for root, _, files in os.walk(directory):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


REPLACEABLE_MARKERS = (INDEX_FILE, "bank.json")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary sibling of ``target`` to write into; on success it becomes ``target``.

    On an exception the temporary directory is removed and ``target`` is untouched. An existing
    ``target`` is replaced only if it is empty or holds a jaxplain bank or index (so a mistyped path never
    deletes someone's files): it is renamed aside, the new directory renamed in, the old one deleted.
    Readers therefore see the old complete directory or the new complete one, never a mix.
    """
    target = Path(target)
    if target.exists():
        if not target.is_dir():
            raise InputError(f"{target}: exists and is not a directory")
        if any(target.iterdir()) and not any((target / m).is_file() for m in REPLACEABLE_MARKERS):
            raise InputError(f"{target}: exists and is not a jaxplain bank or index; refusing to overwrite it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; a bank should be as readable as any new directory
        yield tmp
        _fsync_tree(tmp)
        if target.exists():
            old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(target, old)
            try:
                os.replace(tmp, target)
            except BaseException:
                os.replace(old, target)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

"""A bank split into row shards, each with its own index, searched as one; and ScaNN leaves chosen by recall.

A big bank (or one spread over hosts) is cut into consecutive row ranges, each indexed on its own
(:class:`~jaxplain.counterfactual.index.ExactIndex` or :class:`~jaxplain.counterfactual.index.ScannIndex`).
:class:`ShardedIndex` searches every shard and merges their answers with :func:`merge_top_k`, which is exact:
merging exact per-shard answers gives the exact search of the whole bank, ties included (lower row first).

Independent ScaNN indexes lose recall against one index over the whole bank at equal work
(``benchmarks/bench_shards.py``: each shard searching the whole's share of its leaves and the whole re-ordering
as many candidates as the shards together; recall@64 of the solver's targets on the shipped 10k-image bank 0.970 /
0.912 / 0.899 in 2 / 4 / 8 shards against 0.992). :func:`calibrate_leaves` instead picks, for one shard, the
fewest leaves whose recall on a sample of counterfactual-like queries reaches a target;
:func:`build_sharded_index` builds every shard that way. ``num_leaves_to_search`` is a search-time setting, so
calibrating needs no rebuild (:func:`with_leaves`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from jaxplain.counterfactual.index import (
    INDEX_FILE,
    ExactIndex,
    Index,
    IndexFileError,
    ScannIndex,
    ScannParams,
    _check_embeddings,
    _check_k,
    _check_queries,
    _read_meta,
    _write_meta,
    atomic_directory,
    build_index,
    load_index,
)
from jaxplain.errors import InputError

CALIBRATION_SAMPLE = 1000  # queries a calibration measures recall on
# The calibration queries move a bank row towards another random row by a share drawn from [MIN_STEP, MAX_STEP]:
# counterfactual targets start near an item and move towards items of another outcome. On the shipped model's
# banks (benchmarks/bench_shards.py, recall@64 from 0.9 to 0.99) this sample asks for the leaves the solver's real
# targets need, up to 3 more or 1 fewer, on the 10k real bank and its shards, and for up to 7 more on a 60k bank
# of real embeddings and perturbed copies. Queries nearer a row (share 0) saturate below 0.99 on dense banks
# (near copies tie for the last places); midpoints (share 0.5) ask for about twice the leaves.
MIN_STEP, MAX_STEP = 0.1, 0.5


# ----------------------------------------------------------------------------------------------- merging


def merge_top_k(parts: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The global top-``k`` of per-shard search answers.

    Args:
      parts: one ``(ids [Q, k_i], scores [Q, k_i])`` per shard, ids already global rows (distinct across
        shards), as :meth:`ExactIndex.search` returns them plus the shard's first row.
      k: columns wanted; the answer has ``min(k, Σ k_i)``.

    Returns:
      ``(ids [Q, min(k, Σ k_i)] int64, scores float32)``, best score first and, among equal scores, the lower
      row first: the order of the exact search, so merging exact per-shard answers reproduces it bit for bit.
    """
    if not parts:
        raise InputError("merge_top_k needs at least one shard's answer")
    if int(k) != k or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}")
    ids = [np.asarray(i, np.int64) for i, _ in parts]
    scores = [np.asarray(s, np.float32) for _, s in parts]
    for n, (i, s) in enumerate(zip(ids, scores)):
        if i.ndim != 2 or i.shape != s.shape or i.shape[0] != ids[0].shape[0]:
            raise InputError(
                f"shard {n}: ids {i.shape} and scores {s.shape} must both be [Q, k_i] with Q = {ids[0].shape[0]}"
            )
    all_ids, all_scores = np.concatenate(ids, axis=1), np.concatenate(scores, axis=1)
    k = min(int(k), all_ids.shape[1])
    # lexsort sorts by its last key first: descending score, then ascending row
    order = np.lexsort((all_ids, -all_scores), axis=1)[:, :k]
    return np.take_along_axis(all_ids, order, axis=1), np.take_along_axis(all_scores, order, axis=1)


# ----------------------------------------------------------------------------------------- sharded index


def shard_bounds(n: int, num_shards: int) -> np.ndarray:
    """``[S + 1]`` row bounds cutting ``n`` rows into ``S`` consecutive shards whose sizes differ by at most 1."""
    if int(num_shards) != num_shards or not 1 <= num_shards <= n:
        raise InputError(f"cannot cut {n} rows into {num_shards!r} non-empty shards")
    return np.array([n * s // num_shards for s in range(num_shards + 1)], np.int64)


class ShardedIndex:
    """Per-shard indexes over consecutive row ranges of one bank, searched as one index.

    Args:
      indexes: one index per shard (:class:`ExactIndex` or :class:`ScannIndex`), all of one width.
      offsets: the first global row of each shard: ``offsets[0] == 0`` and each next one is the previous one
        plus that shard's size (default: exactly that).

    Attributes:
      size: ``N``, the rows of all shards.
      dim: ``E``, the embedding width.
      bounds: ``[S + 1]`` int64; shard ``i`` holds global rows ``bounds[i] : bounds[i + 1]``.

    :meth:`search` has the contract of :meth:`ExactIndex.search` (global rows, ``min(k, N)`` columns, best
    first, ties to the lower row); it is exact when every shard is.
    """

    backend = "sharded"

    def __init__(self, indexes: Sequence[Index], offsets: Sequence[int] | None = None):
        self.indexes = list(indexes)
        if not self.indexes:
            raise InputError("a sharded index needs at least one shard")
        sizes = [int(ix.size) for ix in self.indexes]
        dim = int(self.indexes[0].dim)
        for i, ix in enumerate(self.indexes):
            if ix.size < 1:
                raise InputError(f"shard {i} ({ix!r}) is empty")
            if ix.dim != dim:
                raise InputError(f"shard {i} ({ix!r}) has dimension {ix.dim}, shard 0 has {dim}")
        bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        if offsets is not None:
            offsets = list(offsets)
            if len(offsets) != len(sizes):
                raise InputError(f"{len(offsets)} offsets given for {len(sizes)} shards (one first row per shard)")
            for i, o in enumerate(offsets):
                if int(o) != o or o != bounds[i]:
                    before = f"shards 0–{i - 1} hold rows 0–{bounds[i] - 1}" if i else "the first shard starts at 0"
                    raise InputError(
                        f"shard {i} ({self.indexes[i]!r}) is said to start at row {o!r}, but {before}: "
                        "shards must cover consecutive row ranges in order"
                    )
        self.bounds = bounds
        self.size, self.dim = int(bounds[-1]), dim

    @property
    def num_shards(self) -> int:
        return len(self.indexes)

    @property
    def offsets(self) -> np.ndarray:
        """``[S]`` the first global row of each shard."""
        return self.bounds[:-1]

    def shard_of(self, rows: np.ndarray) -> np.ndarray:
        """The shard holding each global row (same shape as ``rows``)."""
        r = np.asarray(rows)
        if r.size and (r.min() < 0 or r.max() >= self.size):
            raise InputError(f"rows must lie in [0, {self.size}), got {r.min()}…{r.max()}")
        return np.searchsorted(self.bounds, r, side="right") - 1

    def search_shard(self, shard: int, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Search one shard: ``(global rows [Q, min(k, shard size)] int64, scores float32)``, best first.

        What one host runs when each host holds one shard; :func:`merge_top_k` joins the hosts' answers.
        """
        if int(shard) != shard or not 0 <= shard < self.num_shards:
            raise InputError(f"shard must be in [0, {self.num_shards}), got {shard!r}")
        ids, scores = self.indexes[shard].search(queries, k)
        return ids + self.bounds[shard], scores

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """queries ``[Q, E]`` → ``(rows [Q, min(k, N)] int64, scores [Q, min(k, N)] float32)``, best first."""
        q = _check_queries(queries, self.dim)
        k = _check_k(k, self.size)
        return merge_top_k([self.search_shard(s, q, k) for s in range(self.num_shards)], k)

    def save(self, directory: str | os.PathLike) -> None:
        """Write every shard to ``directory/shard-NNNNN/`` (as its own ``save`` does) and ``index.json`` listing
        them with their first rows, atomically."""
        with atomic_directory(directory) as tmp:
            for i, ix in enumerate(self.indexes):
                ix.save(tmp / shard_dir(i))
            shards = [
                {"dir": shard_dir(i), "offset": int(o), "size": ix.size}
                for i, (o, ix) in enumerate(zip(self.offsets, self.indexes))
            ]
            _write_meta(tmp, {"backend": self.backend, "size": self.size, "dim": self.dim, "shards": shards})

    @classmethod
    def load(cls, directory: str | os.PathLike) -> ShardedIndex:
        """Read every shard written by :meth:`save`."""
        meta = _read_sharded_meta(directory)
        loaded = [load_shard(directory, i) for i in range(len(meta["shards"]))]
        try:
            index = cls([ix for ix, _ in loaded], [o for _, o in loaded])
        except InputError as e:
            raise IndexFileError(f"{directory}: {e}") from None
        if index.size != meta.get("size"):
            raise IndexFileError(
                f"{directory}: the shards hold {index.size} rows, {INDEX_FILE} says {meta.get('size')}"
            )
        return index

    def __repr__(self) -> str:
        inner = ", ".join(repr(ix) for ix in self.indexes[:3]) + (", …" if self.num_shards > 3 else "")
        return f"ShardedIndex({self.num_shards} shards, size={self.size}, dim={self.dim}: {inner})"


def shard_dir(shard: int) -> str:
    """The directory of shard ``shard`` inside a saved sharded index."""
    return f"shard-{shard:05d}"


def _read_sharded_meta(directory: str | os.PathLike) -> dict:
    meta = _read_meta(directory, (ShardedIndex.backend,))
    path = Path(directory) / INDEX_FILE
    shards = meta.get("shards")
    if not isinstance(shards, list) or not shards or not all(isinstance(s, dict) for s in shards):
        raise IndexFileError(f"{path}: lists no shards")
    return meta


def load_shard(directory: str | os.PathLike, shard: int) -> tuple[Index, int]:
    """One shard of a saved sharded index and its first global row: what a host that serves one shard reads.

    Its answers plus that row are global rows (as :meth:`ShardedIndex.search_shard` gives them).
    """
    meta = _read_sharded_meta(directory)
    shards = meta["shards"]
    if int(shard) != shard or not 0 <= shard < len(shards):
        raise InputError(f"shard must be in [0, {len(shards)}), got {shard!r}")
    entry = shards[shard]
    if entry.get("dir") != shard_dir(shard):
        raise IndexFileError(f"{directory}: shard {shard} is listed as {entry.get('dir')!r}, not {shard_dir(shard)!r}")
    index = load_index(Path(directory) / shard_dir(shard))
    if (index.size, index.dim) != (entry.get("size"), meta.get("dim")):
        raise IndexFileError(
            f"{directory}: shard {shard} holds [{index.size}, {index.dim}], {INDEX_FILE} says "
            f"[{entry.get('size')}, {meta.get('dim')}]"
        )
    return index, int(entry["offset"])


# ------------------------------------------------------------------------------------------- calibration


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of ``|found ∩ truth| / k`` for row ids ``[Q, k]``."""
    hits = (np.asarray(found)[:, :, None] == np.asarray(truth)[:, None, :]).any(axis=2).sum(axis=1)
    return float(hits.mean() / truth.shape[1])


def calibration_queries(embeddings: np.ndarray, sample: int = CALIBRATION_SAMPLE, seed: int = 0) -> np.ndarray:
    """``[min(sample, N), E]`` float32 unit queries like counterfactual targets: near bank rows, not on them.

    Each moves a random row ``x_a`` a share ``t ~ U[MIN_STEP, MAX_STEP]`` of the way towards another random row
    ``x_b`` and is renormalised.
    """
    x = _check_embeddings(embeddings)
    rng = np.random.default_rng(seed)
    m = min(int(sample), len(x))
    a = rng.choice(len(x), m, replace=False)
    b = (a + rng.integers(1, len(x), m)) % len(x) if len(x) > 1 else a
    t = rng.uniform(MIN_STEP, MAX_STEP, (m, 1)).astype(np.float32)
    q = x[a] + t * (x[b] - x[a])
    norm = np.linalg.norm(q, axis=1, keepdims=True)
    return np.where(norm > 0, q / np.maximum(norm, 1e-30), x[a]).astype(np.float32)


def with_leaves(index: ScannIndex, leaves: int) -> ScannIndex:
    """The same searcher, searching ``leaves`` of its partitions per query (no rebuild)."""
    if not index.params.num_leaves:
        return index
    if int(leaves) != leaves or not 1 <= leaves <= index.params.num_leaves:
        raise InputError(f"leaves to search must be in [1, {index.params.num_leaves}], got {leaves!r}")
    params = dataclasses.replace(index.params, num_leaves_to_search=int(leaves))
    return ScannIndex(index.searcher, index.size, index.dim, params)


class Calibration(NamedTuple):
    """What :func:`calibrate_leaves` chose and measured.

    Attributes:
      leaves: the fewest leaves to search whose recall reaches the target (all leaves where none does;
        0 for an index without a tree, which scores every item).
      recall: the recall@k measured with ``leaves``.
      reached: whether ``recall`` reaches the target.
      curve: every ``(leaves, recall@k)`` measured, by leaves.
    """

    leaves: int
    recall: float
    reached: bool
    curve: tuple[tuple[int, float], ...]


def calibrate_leaves(
    index: ScannIndex,
    embeddings: np.ndarray,
    k: int,
    target_recall: float,
    sample: int = CALIBRATION_SAMPLE,
    seed: int = 0,
    queries: np.ndarray | None = None,
    top: int | None = None,
) -> Calibration:
    """The fewest ``num_leaves_to_search`` for which recall@k against exact search reaches ``target_recall``.

    Args:
      index: a ScaNN index over ``embeddings``.
      embeddings: ``[N, E]``, the rows the index holds (exact search over them is the truth).
      k: the neighbours per query the recall is measured at (clamped to ``N``).
      target_recall: in ``(0, 1]``.
      sample, seed: the size and seed of the :func:`calibration_queries` sample.
      queries: ``[Q, E]`` queries to measure on instead of that sample (e.g. real solver targets).
      top: measure the share of each query's exact ``top ≤ k`` nearest rows among the ``k`` found (default
        ``k``: recall@k). A shard of a bank in random row order holds about ``k · n_s / N`` of a query's global
        top-k, its own nearest: ``top`` near that makes the shard's recall that of its part of the merged
        answer, where ``top = k`` asks each shard for far more (its rows the merge drops).

    Leaves are tried 1, 2, 4, … until one reaches the target, then bisected: the answer reaches the target
    and one leaf fewer does not (recall need not be exactly monotone in the leaves, so a smaller count
    below that one could in principle reach it too).
    """
    x = _check_embeddings(embeddings)
    if (index.size, index.dim) != x.shape:
        raise InputError(f"{index!r} does not hold embeddings of shape {x.shape}")
    if not 0 < target_recall <= 1:
        raise InputError(f"target_recall must be in (0, 1], got {target_recall!r}")
    k = _check_k(k, index.size)
    top = k if top is None else top
    if int(top) != top or not 1 <= top <= k:
        raise InputError(f"top must be an integer in [1, k = {k}], got {top!r}")
    q = calibration_queries(x, sample, seed) if queries is None else _check_queries(queries, index.dim)
    truth, _ = ExactIndex(x).search(q, int(top))
    curve: dict[int, float] = {}

    def measure(leaves: int) -> float:
        if leaves not in curve:
            curve[leaves] = recall_at_k(with_leaves(index, leaves).search(q, k)[0], truth)
        return curve[leaves]

    top = index.params.num_leaves
    if not top:
        r = measure(0)
        return Calibration(0, r, r >= target_recall, tuple(curve.items()))
    lo, hi = 0, 1  # lo fails (0 leaves finds nothing), hi is the next to try
    while measure(hi) < target_recall:
        if hi == top:
            return Calibration(top, curve[top], False, tuple(sorted(curve.items())))
        lo, hi = hi, min(2 * hi, top)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if measure(mid) >= target_recall:
            hi = mid
        else:
            lo = mid
    return Calibration(hi, curve[hi], True, tuple(sorted(curve.items())))


@dataclasses.dataclass(frozen=True)
class RecallTarget:
    """Per-shard leaves chosen by :func:`calibrate_leaves`: recall ≥ ``recall`` for ``k`` neighbours on
    ``sample`` queries.

    ``share=False``: each shard's recall@k of its own top-k (safe whatever the row order). ``share=True``:
    each shard's recall of its own top ``⌈k · n_s / N⌉`` among its ``k`` found, what the shard gives the merged
    top-k when the bank's rows are in random order (far fewer leaves; a bank sorted by class is not).
    """

    recall: float
    k: int
    sample: int = CALIBRATION_SAMPLE
    seed: int = 0
    share: bool = False


def build_calibrated(
    embeddings: np.ndarray, target: RecallTarget, params: ScannParams | None = None
) -> tuple[ScannIndex, Calibration]:
    """A ScaNN index over ``[N, E]`` whose ``params.num_leaves_to_search`` is calibrated to ``target``."""
    x = _check_embeddings(embeddings)
    index = ScannIndex.build(x, params)
    cal = calibrate_leaves(index, x, target.k, target.recall, target.sample, target.seed)
    return with_leaves(index, cal.leaves), cal


def shard_top(k: int, shard_size: int, size: int) -> int:
    """``⌈k · n_s / N⌉`` (at least 1, at most ``min(k, n_s)``): a shard's expected part of a global top-k."""
    return max(1, min(k, shard_size, -(-k * shard_size // size)))


def build_sharded_index(
    embeddings: np.ndarray,
    num_shards: int,
    backend: str = "auto",
    target: RecallTarget | None = None,
) -> ShardedIndex:
    """A :class:`ShardedIndex` over ``[N, E]`` cut into ``num_shards`` near-equal consecutive shards.

    Each shard gets :func:`~jaxplain.counterfactual.index.build_index` with ``backend`` (parameters from its own
    size); with ``target``, each ScaNN shard's leaves to search are calibrated to it instead (all its leaves
    where the target is out of reach: recall at all leaves is capped by the re-ordered candidates).
    """
    x = _check_embeddings(embeddings)
    bounds = shard_bounds(len(x), num_shards)
    indexes = []
    for s in range(num_shards):
        rows = x[bounds[s] : bounds[s + 1]]
        ix = build_index(rows, backend)
        if target is not None and isinstance(ix, ScannIndex) and ix.params.num_leaves:
            top = shard_top(target.k, len(rows), len(x)) if target.share else None
            cal = calibrate_leaves(ix, rows, target.k, target.recall, target.sample, target.seed + s, top=top)
            ix = with_leaves(ix, cal.leaves)
        indexes.append(ix)
    return ShardedIndex(indexes, bounds[:-1])

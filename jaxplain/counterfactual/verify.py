"""Proof by the model: re-score candidate bank items exactly, keep the valid ones, rank by proximity.

:func:`verify` checks the ``N × K`` candidates a retrieval returned; :func:`exhaustive` (the oracle)
checks every item of the bank, in chunks, and so finds the valid item nearest to each original.
Both rank valid items by ``‖x − u0‖`` (the counterfactual is the *smallest* change) and return the
best ``top`` per pair; a pair with fewer valid items has its remaining slots marked invalid — never
filled with an invalid item. An item within ``SAME_ITEM`` of the original embedding is the original
itself (a query image that is also in the bank) and is never returned.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxplain.batching import bucket, map_blocks, pad_edge, to_bucket
from jaxplain.objectives import HIGHEST, Goal, margin, reported_score
from jaxplain.sharding import (
    BANK,
    DATA,
    local_blocks,
    local_rows,
    replicate,
    shard_rows,
)

BLOCK_ROWS = 4096  # candidates gathered and scored at once (pairs × candidates per pair)
# pairs the oracle checks against the bank at once: its [pairs, chunk] score blocks stay within 256 MiB
EXHAUSTIVE_PAIRS = 4096
SAME_ITEM = 1e-3  # ‖x − u0‖ below this: the same item (float32 noise of re-encoding stays far below)


class Verified(NamedTuple):
    """The best ``top`` valid candidates per pair, nearest first.

    Attributes:
      ids: ``[N, top]`` bank row indices (``-1`` where ``valid`` is False).
      distance: ``[N, top]`` ``‖x − u0‖`` (``inf`` where invalid).
      margin: ``[N, top]`` the wanted outcome's margin at each item (positive: reached).
      score: ``[N, top]`` the item's score under the model (``u·v`` or ``p_c``).
      predicted: ``[N, top]`` the item's zero-shot class (``argmax z``).
      confidence: ``[N, top]`` the probability of that class.
      valid: ``[N, top]`` whether the slot holds a valid counterfactual.
    """

    ids: jax.Array
    distance: jax.Array
    margin: jax.Array
    score: jax.Array
    predicted: jax.Array
    confidence: jax.Array
    valid: jax.Array


def _rank(ids, x_scores, u0_dist, goal, scale, exclude, top):
    """Rank ``K`` candidates of one pair. ``x_scores`` = (sim [K], z [K, C])."""
    sim, z = x_scores
    m = margin(sim, z, goal, scale)
    ok = (m > 0) & (ids >= 0) & (ids != exclude) & (u0_dist > SAME_ITEM)
    key = jnp.where(ok, u0_dist, jnp.inf)
    neg, pos = jax.lax.top_k(-key, top)
    valid = jnp.isfinite(neg)
    pick = lambda a: jnp.take(a, pos, axis=0)  # noqa: E731
    z_top = pick(z)  # the reported scores only for the kept items, not for all K
    return Verified(
        ids=jnp.where(valid, pick(ids), -1),
        distance=-neg,
        margin=pick(m),
        score=reported_score(pick(sim), z_top, goal),
        predicted=jnp.argmax(z_top, axis=-1),
        confidence=jax.nn.softmax(z_top, axis=-1).max(-1),
        valid=valid,
    )


def _dedupe(ids):
    """Sort each row of candidate ids and mark repeats as ``-1`` (the same item retrieved by several queries).

    ``ids`` ``[N, K]``. The order of candidates does not matter to the verifier (it ranks by distance), so
    the rows stay sorted: a sort and a comparison of neighbours, no scatter back.
    """
    s = jnp.sort(ids, axis=1)
    dup = jnp.concatenate([jnp.zeros_like(s[:, :1], bool), s[:, 1:] == s[:, :-1]], axis=1)
    return jnp.where(dup, -1, s)


def candidate_scores(x, u0, anchor, classes, scale):
    """Scores of each pair's candidates ``x`` ``[N, K, E]``.

    Returns ``(sim [N, K], z [N, K, C], dist [N, K])``: the similarity to the pair's anchor, the zero-shot
    logits (as :func:`~jaxplain.objectives.scores`) and ``‖x − u0‖ = sqrt(2 − 2 x·u0)`` (unit vectors, as
    in the oracle). The logits are one ``[N·K, E] × [E, C]`` matrix product (the classes are shared by
    the batch); the two per-pair dot products are contractions over ``E``. On 1,024 pairs × 256
    candidates this takes 80 ms where one batched contraction against ``[u0, anchor, s·V]`` per pair
    took 105 ms (2-core CPU; small per-pair matrix products use the cores poorly).
    """
    n, k, e = x.shape
    z = jnp.matmul(x.reshape(n * k, e), (scale * classes).T, precision=HIGHEST).reshape(n, k, -1)
    sim = jnp.einsum("nke,ne->nk", x, anchor, precision=HIGHEST)
    near = jnp.einsum("nke,ne->nk", x, u0, precision=HIGHEST)
    return sim, z, jnp.sqrt(jnp.maximum(2.0 - 2.0 * near, 0.0))


def _verify_block(bank, classes, scale, top, block):
    cand, u0, goal, anchor, exclude = block
    cand = _dedupe(cand)
    x = jnp.take(bank, jnp.maximum(cand, 0), axis=0)  # [B, K, E]
    sim, z, dist = candidate_scores(x, u0, anchor, classes, scale)
    return jax.vmap(_rank, in_axes=(0, 0, 0, 0, None, 0, None))(cand, (sim, z), dist, goal, scale, exclude, top)


def _block_pairs(n: int, k: int, block_rows: int) -> int:
    """Pairs per block of the verifier: the most whole pairs within ``block_rows`` candidates, a power of
    two (at least one pair, at most ``n``)."""
    return min(n, 1 << max(0, (block_rows // k).bit_length() - 1))


def _verify_blocks(cand, bank, u0, goal, anchor, classes, scale, exclude, top, b):
    n = cand.shape[0]
    blocks = jax.tree.map(lambda a: a.reshape(n // b, b, *a.shape[1:]), (cand, u0, goal, anchor, exclude))
    out = jax.lax.map(functools.partial(_verify_block, bank, classes, scale, top), blocks)
    return jax.tree.map(lambda a: a.reshape(n, *a.shape[2:]), out)


@functools.partial(jax.jit, static_argnames=("top", "block_rows"))
def _verify(cand, bank, u0, goal, anchor, classes, scale, exclude, top, block_rows):
    # Blocks of pairs, one after another, each with at most block_rows candidates (or one pair): a
    # block's gathered candidates stay small and their buffer is reused, where gathering every pair's
    # at once wrote hundreds of MB of fresh pages (1,024 pairs × 256 candidates: 0.15–0.3 s, not 0.05 s).
    n, k = cand.shape  # n: a power-of-two bucket
    b = _block_pairs(n, k, block_rows)
    return _verify_blocks(cand, bank, u0, goal, anchor, classes, scale, exclude, top, b)


def _inputs(u0, goal, anchor, exclude, n):
    exclude = np.full(n, -1, np.int32) if exclude is None else np.asarray(exclude, np.int32)
    return to_bucket((np.asarray(u0, np.float32), Goal(*goal), np.asarray(anchor, np.float32), exclude), n)


@functools.partial(jax.jit, static_argnames=("top", "b", "mesh", "axis"))
def _verify_sharded(cand, bank, u0, goal, anchor, classes, scale, exclude, top, b, mesh, axis):
    # Each device verifies its own blocks of b pairs with the single-device program; bank and classes whole.
    rows, whole = PartitionSpec(axis), PartitionSpec()
    local = functools.partial(_verify_blocks, top=top, b=b)
    specs = (rows, whole, rows, rows, rows, whole, whole, rows)
    return jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=rows, check_vma=False)(
        cand, bank, u0, goal, anchor, classes, scale, exclude
    )


def verify(
    candidates: np.ndarray,
    bank: np.ndarray | jax.Array,
    u0: np.ndarray,
    goal: Goal,
    anchor: np.ndarray,
    classes: np.ndarray,
    scale: float,
    top: int,
    exclude: np.ndarray | None = None,
    block_rows: int = BLOCK_ROWS,
    mesh: Mesh | None = None,
    axis: str = DATA,
) -> Verified:
    """Re-score retrieved candidates exactly and keep the best valid ones.

    Args:
      candidates: ``[N, K]`` bank row indices (repeats and ``-1`` allowed).
      bank: ``[M, E]`` unit embeddings of the bank.
      u0: ``[N, E]`` original embeddings; goal, anchor, classes, scale: as for the solver.
      top: how many counterfactuals to keep per pair (``top <= K``).
      exclude: ``[N]`` a bank row per pair that may not be returned (the original item itself), or -1.
      block_rows: candidates gathered and scored at once (whole pairs, at least one); bounds memory.
      mesh: split the pairs over this mesh's ``axis`` (the bank and classes on every device); None: the
        default device. The single-device blocks of pairs are dealt out to the devices in order: the
        results equal the single-device ones bit for bit. In a multi-process job
        each process passes its own ``N`` pairs (the same ``N`` everywhere: pad to a common bucket) and the
        same bank, and gets its own pairs' results.

    Returns:
      :class:`Verified` with ``N`` rows, host arrays.
    """
    n = len(u0)
    if top > candidates.shape[1]:
        raise ValueError(f"top={top} exceeds the {candidates.shape[1]} candidates per pair")
    if mesh is None:
        u0_, goal_, anchor_, excl_ = _inputs(u0, goal, anchor, exclude, n)
        cand = to_bucket(np.asarray(candidates, np.int32), n)
        args = (cand, jnp.asarray(bank), u0_, goal_, anchor_, jnp.asarray(classes), jnp.float32(scale), excl_)
        out = _verify(*args, top=top, block_rows=block_rows)
        return Verified(*(np.asarray(x)[:n] for x in out))
    # The single-device blocks of pairs are dealt out in order, as many to each device (the last padded):
    # every device runs the single-device program on blocks of the single-device shape, so each pair's
    # scores are computed exactly as without a mesh (a smaller block changes logits in the last bit).
    exclude = np.full(n, -1, np.int32) if exclude is None else np.asarray(exclude, np.int32)
    nb, k = bucket(n), candidates.shape[1]
    b = _block_pairs(nb, k, block_rows)
    devices = local_blocks(mesh, axis)
    rows = devices * b * -(-nb // (b * devices))
    u0, anchor = np.asarray(u0, np.float32), np.asarray(anchor, np.float32)
    pairs = jax.tree.map(np.asarray, (np.asarray(candidates, np.int32), u0, Goal(*goal), anchor, exclude))
    cand, u0_, goal_, anchor_, excl_ = shard_rows(pairs, mesh, axis, rows).arrays
    bank_, classes_, scale_ = replicate((bank, np.asarray(classes, np.float32), np.float32(scale)), mesh)
    args = (cand, bank_, u0_, Goal(*goal_), anchor_, classes_, scale_, excl_)
    out = _verify_sharded(*args, top=top, b=b, mesh=mesh, axis=axis)
    return Verified(*(local_rows(x)[:n] for x in out))


def merge_verified(parts: Sequence[Verified], top: int) -> Verified:
    """Merge :class:`Verified` results of the same ``N`` pairs found on disjoint sets of bank rows.

    Each part is ``[N, top_i]`` (its ``ids`` already in one common numbering, e.g. global bank rows). The
    result keeps, per pair, the ``top`` valid items of all parts nearest first; among equal distances the
    earlier part wins, then the earlier position within a part. Parts made over consecutive row ranges,
    in row order, therefore merge as if one search had covered all the rows (ties to the lower row).
    Slots left without a valid item are marked invalid, as in every :class:`Verified`.

    Args:
      parts: one or more :class:`Verified` (host or device arrays), each with ``N`` rows.
      top: slots kept per pair (at most the parts' total).

    Returns:
      :class:`Verified` ``[N, top]`` (jax arrays when traced; host arrays when every part is on the host).
    """
    merged = jax.tree.map(lambda *a: jnp.concatenate(a, axis=1), *parts)
    _, pos = jax.lax.top_k(jnp.where(merged.valid, -merged.distance, -jnp.inf), top)
    out = jax.tree.map(lambda a: jnp.take_along_axis(a, pos, axis=1), merged)
    if all(isinstance(x, np.ndarray) for p in parts for x in p):
        return Verified(*(np.asarray(x) for x in out))
    return out


def _empty(n, top, dtype):
    return Verified(
        ids=jnp.full((n, top), -1, jnp.int32),
        distance=jnp.full((n, top), jnp.inf, dtype),
        margin=jnp.zeros((n, top), dtype),
        score=jnp.zeros((n, top), dtype),
        predicted=jnp.zeros((n, top), jnp.int32),
        confidence=jnp.zeros((n, top), dtype),
        valid=jnp.zeros((n, top), bool),
    )


def _check_chunk(best, x, ids, u0, goal, anchor, classes, scale, exclude, top):
    """``best`` merged with the valid items among one chunk ``x`` ``[R, E]`` of bank rows ``ids`` ``[R]``
    (``-1``: a row not to return)."""
    # The bank is scored once per chunk; each pair reads its margins off these scores.
    sim = jnp.matmul(anchor, x.T, precision=HIGHEST)  # [N, chunk]
    z = scale * jnp.matmul(x, classes.T, precision=HIGHEST)  # [chunk, C]
    near = jnp.matmul(u0, x.T, precision=HIGHEST)
    dist = jnp.sqrt(jnp.maximum(2.0 - 2.0 * near, 0.0))  # unit vectors: ‖x − u0‖
    ranked = jax.vmap(_rank, in_axes=(None, (0, None), 0, 0, None, 0, None))(
        ids, (sim, z), dist, goal, scale, exclude, top
    )
    return merge_verified([best, ranked], top)


def _windows(m: int, chunk: int) -> list[int]:
    """The first row of each chunk of the oracle's scan over ``m`` rows: whole chunks, the last one ending at
    the bank's end (overlapping the one before it) when ``m`` is not a multiple of ``chunk``."""
    return [min(c * chunk, max(m - chunk, 0)) for c in range(-(-m // chunk))]


@functools.partial(jax.jit, static_argnames=("top", "chunk"))
def _exhaustive(bank, u0, goal, anchor, classes, scale, exclude, top, chunk):
    m_total = bank.shape[0]
    n_chunks = -(-m_total // chunk)
    if m_total < chunk:  # a small bank: one zero-padded chunk
        bank = jnp.pad(bank, ((0, chunk - m_total), (0, 0)))

    def body(best, c):
        # The last chunk ends at the bank's end and overlaps the one before it; its rows that were
        # already scored are marked -1. (Padding the bank to whole chunks would copy all of it.)
        start = jnp.minimum(c * chunk, max(m_total - chunk, 0))
        x = jax.lax.dynamic_slice_in_dim(bank, start, chunk)
        ids = start + jnp.arange(chunk, dtype=jnp.int32)
        ids = jnp.where((ids >= c * chunk) & (ids < m_total), ids, -1)
        return _check_chunk(best, x, ids, u0, goal, anchor, classes, scale, exclude, top), None

    best, _ = jax.lax.scan(body, _empty(u0.shape[0], top, u0.dtype), jnp.arange(n_chunks))
    return best


@functools.partial(jax.jit, static_argnames=("top", "mesh", "axis"))
def _exhaustive_sharded(rows, ids, u0, goal, anchor, classes, scale, exclude, top, mesh, axis):
    def local(rows, ids, u0, goal, anchor, classes, scale, exclude):
        def body(best, chunk):
            x, i = chunk
            return _check_chunk(best, x, i, u0, goal, anchor, classes, scale, exclude, top), None

        best, _ = jax.lax.scan(body, _empty(u0.shape[0], top, u0.dtype), (rows, ids))
        parts = jax.tree.map(lambda a: jax.lax.all_gather(a, axis), best)  # [D, N, top], devices in row order
        return merge_verified([jax.tree.map(lambda a, d=d: a[d], parts) for d in range(mesh.shape[axis])], top)

    split, whole = PartitionSpec(axis), PartitionSpec()
    specs = (split, split, whole, whole, whole, whole, whole, whole)
    return jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=whole, check_vma=False)(
        rows, ids, u0, goal, anchor, classes, scale, exclude
    )


class ShardedBank(NamedTuple):
    """A bank's rows laid out in the oracle's chunks and split over a mesh axis (made by :func:`shard_bank`).

    Attributes:
      rows: ``[T, R, E]`` float32, the chunks the single-device oracle scans (the last one overlapping the one
        before it, or zero-padded for a bank smaller than a chunk), then all-zero chunks up to a multiple of
        the ``D`` devices; split over ``axis`` along ``T``, in order.
      ids: ``[T, R]`` int32, split as ``rows``: each row's bank row, ``-1`` for padding and for rows an
        earlier chunk already holds.
      size: ``M``, the number of bank rows.
      mesh: the mesh; axis: its axis the chunks are split over.
    """

    rows: jax.Array
    ids: jax.Array
    size: int
    mesh: Mesh
    axis: str


EXHAUSTIVE_CHUNK = 16384  # bank rows the oracle scores at a time


def shard_bank(
    bank: np.ndarray | jax.Array, mesh: Mesh, axis: str = BANK, chunk: int = EXHAUSTIVE_CHUNK
) -> ShardedBank:
    """A bank ``[M, E]`` split over ``mesh``'s ``axis`` for :func:`exhaustive` (made once for many calls).

    The bank is cut into the single-device oracle's chunks of ``R = min(chunk, bucket(M))`` rows, ``T₀ =
    ⌈M / R⌉`` of them, dealt out in order, ``⌈T₀ / D⌉`` to each device: every device scores exactly the
    windows of rows one device would, so the oracle's answers are the same bit for bit. A bank of fewer
    than ``D · R`` rows leaves devices with only padding; ``chunk =``
    :func:`jaxplain.sharding.spread_chunk` ``(M, D, chunk)`` spreads it (the answers then equal the
    single-device oracle's with that ``chunk``). In a multi-process job every process passes the same bank
    (each device reads only its chunks; a memory-mapped array is read in part).
    """
    host = bank if isinstance(bank, np.ndarray) else np.asarray(bank)
    m, e = host.shape
    r = min(chunk, 1 << (m - 1).bit_length())
    starts = _windows(m, r)
    devices = mesh.shape[axis]
    total = -(-len(starts) // devices) * devices

    def chunk_ids(t):
        if t >= len(starts):
            return np.full(r, -1, np.int32)
        i = starts[t] + np.arange(r, dtype=np.int32)
        return np.where((i >= t * r) & (i < m), i, -1).astype(np.int32)

    def chunk_rows(t):
        x = np.zeros((r, e), np.float32)
        if t < len(starts):
            got = host[starts[t] : starts[t] + r]
            x[: len(got)] = got
        return x

    split = NamedSharding(mesh, PartitionSpec(axis))

    def put(shape, make):
        def block(index):
            return np.stack([make(t) for t in range(total)[index[0]]])

        return jax.make_array_from_callback(shape, split, block)

    return ShardedBank(put((total, r, e), chunk_rows), put((total, r), chunk_ids), m, mesh, axis)


def exhaustive(
    bank: np.ndarray | jax.Array | ShardedBank,
    u0: np.ndarray,
    goal: Goal,
    anchor: np.ndarray,
    classes: np.ndarray,
    scale: float,
    top: int,
    exclude: np.ndarray | None = None,
    chunk: int = EXHAUSTIVE_CHUNK,
    pairs: int = EXHAUSTIVE_PAIRS,
    mesh: Mesh | None = None,
    axis: str = BANK,
) -> Verified:
    """The oracle: verify every bank item for every pair and keep the ``top`` valid ones nearest ``u0``.

    Memory is bounded by ``chunk`` and ``pairs``: the bank is scored ``chunk`` items at a time with a
    running merge, for at most ``pairs`` pairs at a time. Arguments as for :func:`verify`. Distances are
    ``‖x − u0‖ = sqrt(2 − 2 x·u0)`` (unit vectors), computed as :func:`verify` computes them.

    With a :class:`ShardedBank` (or ``mesh``: the bank is split over its ``axis`` by :func:`shard_bank`
    first, with this ``chunk``), every device scans its own chunks for all the pairs and the per-device
    bests are merged by :func:`merge_verified` (ties to the lower row): the same answers as on one device
    with the same ``chunk``, bit for bit. In a multi-process job every process passes the same pairs and
    gets the whole result.
    """
    n = len(u0)
    exclude = np.full(n, -1, np.int32) if exclude is None else np.asarray(exclude, np.int32)
    if mesh is not None and not isinstance(bank, ShardedBank):
        bank = shard_bank(bank, mesh, axis, chunk)
    if isinstance(bank, ShardedBank):
        sb = bank
        classes_, scale_ = replicate((np.asarray(classes, np.float32), np.float32(scale)), sb.mesh)

        def check_sharded(block):
            rows = len(block[0])
            u0_, goal_, anchor_, excl_ = replicate(_host_inputs(*block, rows), sb.mesh)
            args = (sb.rows, sb.ids, u0_, Goal(*goal_), anchor_, classes_, scale_, excl_)
            out = _exhaustive_sharded(*args, top=top, mesh=sb.mesh, axis=sb.axis)
            return Verified(*(np.asarray(x)[:rows] for x in out))

        return map_blocks(check_sharded, (u0, Goal(*goal), anchor, exclude), n, pairs)

    chunk = min(chunk, 1 << (int(np.shape(bank)[0]) - 1).bit_length())
    bank, classes = jnp.asarray(bank), jnp.asarray(classes)

    def check(block):
        u0_, goal_, anchor_, excl_ = _inputs(*block, len(block[0]))
        out = _exhaustive(bank, u0_, goal_, anchor_, classes, jnp.float32(scale), excl_, top, chunk)
        return Verified(*(x[: len(block[0])] for x in out))

    return map_blocks(check, (u0, Goal(*goal), anchor, exclude), n, pairs)


def _host_inputs(u0, goal, anchor, exclude, n):
    """:func:`_inputs` on the host (padded to ``bucket(n)`` rows by repeating the last)."""
    b = bucket(n)
    arrays = (np.asarray(u0, np.float32), Goal(*goal), np.asarray(anchor, np.float32), np.asarray(exclude, np.int32))
    return jax.tree.map(lambda a: pad_edge(np.asarray(a), b), arrays)

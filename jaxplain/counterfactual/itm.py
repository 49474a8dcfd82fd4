"""Counterfactuals by retrieval whose decision is BLIP's image–text matching (ITM) head.

For a query pair (image, text) and a wanted outcome ``p(match) ≥ τ`` (make the pair match) or ``p(match) ≤
τ`` (make it not match), the counterfactual is the real bank image nearest the query image, in BLIP's
contrastive (ITC) space, whose pair with the query text reaches the outcome under the matching head. The
ITM head cannot be inverted to an embedding (it cross-attends to all the image's tokens), so the pipeline
searches in ITC space and proves each candidate with the head itself:

1. **Targets** (:func:`targets`): for each query, points on the unit sphere from the query image's ITC
   embedding ``u0`` toward the text's ``v`` (``p ≥ τ``) or away from it (``p ≤ τ``): ``e_λ = (u0 ± λ·v) /
   ‖u0 ± λ·v‖`` for a schedule of depths ``λ`` (:data:`DEPTHS`, ``λ = 0`` being the query image itself).
   These are the points that :func:`jaxplain.counterfactual.solver.solve_targets` converges to for the
   similarity outcomes (its docs: "a target for u·v ≤ L is u0 − λv renormalised"); the solver needs a level
   ``L`` of ``u·v``, which the ITM head does not give, so the schedule of ``λ`` stands in for its schedule of
   levels and no optimisation is run.
2. **Retrieve** (:func:`retrieve`): the ``k`` bank items nearest each target (any index with
   ``search(queries, k)``; :class:`~jaxplain.counterfactual.index.ExactIndex` by default), merged per query
   and de-duplicated.
3. **Verify** (:func:`verify`): the ITM head scores every (candidate, query text) pair, in fixed-shape
   jitted chunks (:func:`jaxplain.models.blip.itm_scores`: memory bounded by one chunk of image tokens), and
   each query keeps the valid candidate nearest ``u0`` (``‖x − u0‖`` of the ITC embeddings), with its
   ``p(match)``. A query with none says so (``found`` False, ``id`` −1), never filled with an invalid item.

:func:`oracle` verifies every bank item for every query (a small bank), and :func:`compare` measures the
pipeline against it: found-rate (found / the oracle found one) and proximity (the answer's distance over the
oracle's).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain.batching import chunks
from jaxplain.counterfactual.index import ExactIndex
from jaxplain.counterfactual.verify import SAME_ITEM
from jaxplain.errors import InputError
from jaxplain.models import blip
from jaxplain.models.blip import ITM_CHUNK, BlipConfig
from jaxplain.models.transformer import dense

ABOVE, BELOW = "above", "below"
DIRECTIONS = (ABOVE, BELOW)
DEPTHS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
"""The default ``λ`` of the targets ``(u0 ± λ·v)/‖u0 ± λ·v‖``: from the query image's own neighbourhood
(0) to nearly the text's embedding (4: 76° from ``u0`` toward ``v`` for orthogonal ones)."""
EMBED_CHUNK = 32  # images run through the image tower at a time by ItmBank.from_pixels
DISTANCE_ROWS = 1024  # bank rows the oracle measures distances to at a time


class ItmBank(NamedTuple):
    """A bank of real images as the ITM pipeline reads it.

    Attributes:
      embeddings: ``[M, E]`` float32 unit ITC image embeddings (the index searches them).
      tokens: the images' tokens for the matching head: an array ``[M, S, Dv]`` (NumPy, memory map or jax)
        indexed by rows, or a function ``rows [C] → [C, S, Dv]`` (e.g.
        :func:`jaxplain.models.blip.tokens_from_pixels`) that makes them chunk by chunk.
      index: anything with ``search(queries [Q, E], k) → (ids [Q, k], scores)`` over ``embeddings``.
    """

    embeddings: np.ndarray
    tokens: Any
    index: Any

    @classmethod
    def build(cls, embeddings: np.ndarray, tokens: Any, index: Any = None) -> ItmBank:
        """A bank of precomputed embeddings and tokens (or a token function), with an exact index unless one
        is given."""
        x = np.asarray(embeddings, np.float32)
        return cls(x, tokens, ExactIndex(x) if index is None else index)

    @classmethod
    def from_pixels(
        cls, params: Any, config: BlipConfig, pixels: np.ndarray, keep_tokens: bool = False, chunk: int = EMBED_CHUNK
    ) -> ItmBank:
        """A bank made from pixels ``[M, 3, H, W]``: embeddings computed ``chunk`` images at a time; the tokens
        kept (``keep_tokens``: ``M · S · Dv`` floats) or recomputed from the pixels whenever the verifier
        scores a chunk."""
        params = jax.tree.map(jnp.asarray, params)
        make = blip.tokens_from_pixels(params, pixels, config)
        emb, toks = [], []
        for start in range(0, len(pixels), chunk):
            rows = np.arange(start, min(start + chunk, len(pixels)))
            t = make(np.pad(rows, (0, chunk - len(rows)), mode="edge"))[: len(rows)]
            if keep_tokens:
                toks.append(np.asarray(t))
            emb.append(np.asarray(_project(params, t, config)))
        tokens = np.concatenate(toks) if keep_tokens else make
        return cls.build(np.concatenate(emb), tokens)


@jax.jit
def _unit_rows(x):
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def _project(params, tokens, config):
    """Unit ITC embeddings of image tokens (the class token through ``vision_proj``)."""
    return _unit_rows(dense(tokens[:, 0], params["vision_proj"]))


class ItmCounterfactuals(NamedTuple):
    """One counterfactual (or none) per query.

    Attributes:
      ids: ``[N]`` int64 bank rows, ``-1`` where none was found.
      distance: ``[N]`` float64 ``‖x − u0‖`` in ITC space (``inf`` where none).
      p_match: ``[N]`` float32 the matching head's ``p(match)`` of (item, query text) (NaN where none).
      found: ``[N]`` whether a valid item was found.
      checked: ``[N]`` int64 how many distinct bank items the head scored for the query.
    """

    ids: np.ndarray
    distance: np.ndarray
    p_match: np.ndarray
    found: np.ndarray
    checked: np.ndarray


def _check_outcome(direction: str, tau: Any, n: int) -> np.ndarray:
    if direction not in DIRECTIONS:
        raise InputError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    t = np.broadcast_to(np.asarray(tau, np.float32), (n,)) if np.ndim(tau) == 0 else np.asarray(tau, np.float32)
    if t.shape != (n,) or not np.all((t >= 0) & (t <= 1)):
        raise InputError(f"tau must be one probability in [0, 1] or {n} of them (one per query), got {tau!r}")
    return t


def _check_queries(u0, ids, mask, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    u0 = np.asarray(u0, np.float32)
    ids = np.asarray(ids)
    if u0.ndim != 2 or u0.shape[1] != dim:
        raise InputError(f"query image embeddings must be [N, {dim}] (the bank's width), got {u0.shape}")
    if ids.ndim != 2 or len(ids) != len(u0):
        raise InputError(f"query token ids must be [N, T] with N = {len(u0)}, got {ids.shape}")
    if mask is not None and np.shape(mask) != ids.shape:
        raise InputError(f"query mask must have the shape of the ids {ids.shape}, got {np.shape(mask)}")
    return u0, ids, None if mask is None else np.asarray(mask)


def targets(u0: np.ndarray, v: np.ndarray, direction: str, depths: tuple[float, ...] = DEPTHS) -> np.ndarray:
    """Target embeddings ``[N, D, E]``: ``(u0 ± λ·v)/‖u0 ± λ·v‖`` for each depth ``λ`` (``+`` toward the text for
    ``"above"``, ``−`` away from it for ``"below"``), ``u0`` ``[N, E]`` the query images' unit ITC embeddings
    and ``v`` ``[N, E]`` their texts'."""
    if direction not in DIRECTIONS:
        raise InputError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    sign = 1.0 if direction == ABOVE else -1.0
    lam = np.asarray(depths, np.float32)[None, :, None]
    e = np.asarray(u0, np.float32)[:, None] + sign * lam * np.asarray(v, np.float32)[:, None]
    return np.asarray(_unit_rows(jnp.asarray(e)))


def _dedupe(cand: np.ndarray) -> np.ndarray:
    """Each row sorted, repeats (and ``-1``) moved to the end as ``-1``."""
    s = np.sort(cand, axis=1)
    repeat = np.zeros_like(s, bool)
    repeat[:, 1:] = s[:, 1:] == s[:, :-1]
    s = np.where(repeat | (s < 0), np.iinfo(np.int64).max, s)
    s = np.sort(s, axis=1)
    return np.where(s == np.iinfo(np.int64).max, -1, s)


def retrieve(index: Any, targets: np.ndarray, k: int) -> np.ndarray:
    """Candidates ``[N, D·k]`` int64: the ``k`` items nearest each of a query's ``D`` targets ``[N, D, E]``,
    merged, sorted by row and de-duplicated (repeats are ``-1``, at the end of the row)."""
    n, d, e = targets.shape
    ids, _ = index.search(np.ascontiguousarray(targets.reshape(n * d, e)), k)
    return _dedupe(np.asarray(ids, np.int64).reshape(n, -1))


def _distances(u0: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``‖x − u0‖`` ``[N, K]`` float64 of unit rows ``u0`` ``[N, E]`` and ``x`` ``[N, K, E]`` (or ``[K, E]``: the
    same items for every query, taken ``DISTANCE_ROWS`` at a time). Each entry is a product summed over its own
    row of ``E`` (one order whatever ``N`` and ``K``), so the verifier and the oracle give an item the same
    distance bit for bit."""
    u = np.asarray(u0, np.float64)[:, None, :]
    if np.ndim(x) == 2:
        parts = [_distances(u0, np.asarray(x[s])[None]) for s in chunks(len(x), DISTANCE_ROWS)]
        return np.concatenate(parts, axis=1) if parts else np.zeros((len(u), 0))
    dots = (u * np.asarray(x, np.float64)).sum(-1)
    return np.sqrt(np.maximum(2.0 - 2.0 * dots, 0.0))


def _pick(cand, dist, p, tau, direction, exclude) -> ItmCounterfactuals:
    """The nearest valid candidate per query (ties: the earlier column, i.e. the lower bank row)."""
    reach = p >= tau[:, None] if direction == ABOVE else p <= tau[:, None]
    ok = reach & (cand >= 0) & (cand != exclude[:, None]) & (dist > SAME_ITEM)
    key = np.where(ok, dist, np.inf)
    pos = np.argmin(key, axis=1)
    rows = np.arange(len(cand))
    found = np.isfinite(key[rows, pos])
    return ItmCounterfactuals(
        ids=np.where(found, cand[rows, pos], -1).astype(np.int64),
        distance=np.where(found, key[rows, pos], np.inf),
        p_match=np.where(found, p[rows, pos], np.nan).astype(np.float32),
        found=found,
        checked=(cand >= 0).sum(1).astype(np.int64),
    )


def _exclude(exclude, n: int) -> np.ndarray:
    return np.full(n, -1, np.int64) if exclude is None else np.asarray(exclude, np.int64).reshape(n)


def verify(
    params: Any,
    config: BlipConfig,
    bank: ItmBank,
    candidates: np.ndarray,
    u0: np.ndarray,
    token_ids: np.ndarray,
    mask: np.ndarray | None,
    direction: str,
    tau: float | np.ndarray,
    exclude: np.ndarray | None = None,
    chunk: int = ITM_CHUNK,
) -> ItmCounterfactuals:
    """Score every (candidate, query text) pair with the ITM head and keep, per query, the valid candidate
    nearest the query image.

    Args:
      params, config: the BLIP model.
      bank: the :class:`ItmBank` the candidates index.
      candidates: ``[N, K]`` bank rows per query (``-1``: none).
      u0: ``[N, E]`` the query images' unit ITC embeddings.
      token_ids, mask: ``[N, T]`` the query texts (mask None: read off the ids).
      direction, tau: the outcome, ``p(match) ≥ τ`` (``"above"``) or ``≤ τ`` (``"below"``); ``τ`` one value
        or ``[N]``.
      exclude: ``[N]`` a bank row per query that may not be returned (the query image itself), or None. An
        item within ``SAME_ITEM`` of ``u0`` is never returned either.
      chunk: pairs the head scores per call (bounds memory: one chunk's ``[chunk, S, Dv]`` tokens).

    Only the real candidates are scored (``-1`` slots are skipped), in chunks of one shape.
    """
    u0, token_ids, mask = _check_queries(u0, token_ids, mask, bank.embeddings.shape[1])
    n = len(u0)
    tau = _check_outcome(direction, tau, n)
    cand = np.asarray(candidates, np.int64)
    if cand.ndim != 2 or len(cand) != n:
        raise InputError(f"candidates must be [N, K] with N = {n}, got {cand.shape}")
    if cand.size and cand.max() >= len(bank.embeddings):
        raise InputError(f"candidate row {int(cand.max())} is outside the bank of {len(bank.embeddings)} items")
    excl = _exclude(exclude, n)
    dist = _distances(u0, bank.embeddings[np.maximum(cand, 0)])
    scored = (cand >= 0) & (cand != excl[:, None]) & (dist > SAME_ITEM)
    q, j = np.nonzero(scored)
    p = np.full(cand.shape, np.nan, np.float32)
    p[q, j] = blip.itm_scores(
        params, bank.tokens, token_ids, mask, config, image_rows=cand[q, j], text_rows=q, chunk=chunk
    )
    return _pick(cand, dist, p, tau, direction, excl)


def counterfactuals(
    params: Any,
    config: BlipConfig,
    bank: ItmBank,
    u0: np.ndarray,
    v: np.ndarray,
    token_ids: np.ndarray,
    mask: np.ndarray | None,
    direction: str,
    tau: float | np.ndarray,
    k: int = 16,
    depths: tuple[float, ...] = DEPTHS,
    exclude: np.ndarray | None = None,
    chunk: int = ITM_CHUNK,
) -> ItmCounterfactuals:
    """The pipeline: :func:`targets` → :func:`retrieve` (``k`` per target, so up to ``len(depths)·k``
    distinct candidates per query) → :func:`verify`. ``v`` ``[N, E]`` are the query texts' unit ITC
    embeddings; the other arguments as for :func:`verify`."""
    u0, token_ids, mask = _check_queries(u0, token_ids, mask, bank.embeddings.shape[1])
    cand = retrieve(bank.index, targets(u0, v, direction, depths), k)
    return verify(params, config, bank, cand, u0, token_ids, mask, direction, tau, exclude, chunk)


def oracle(
    params: Any,
    config: BlipConfig,
    bank: ItmBank,
    u0: np.ndarray,
    token_ids: np.ndarray,
    mask: np.ndarray | None,
    direction: str,
    tau: float | np.ndarray,
    exclude: np.ndarray | None = None,
    chunk: int = ITM_CHUNK,
) -> tuple[ItmCounterfactuals, np.ndarray]:
    """The best possible answer: the ITM head on every (bank item, query text) pair, and per query the valid
    item nearest the query image. Costs ``N · M`` head evaluations (in chunks of ``chunk`` pairs), so it is
    for small banks and for measuring the pipeline.

    Returns ``(answers, p [N, M] float32)``: the answers as :func:`verify` gives them, and every pair's
    ``p(match)`` (NaN for an excluded item, which is not scored).
    """
    u0, token_ids, mask = _check_queries(u0, token_ids, mask, bank.embeddings.shape[1])
    n, m = len(u0), len(bank.embeddings)
    cand = np.broadcast_to(np.arange(m, dtype=np.int64), (n, m))
    tau = _check_outcome(direction, tau, n)
    excl = _exclude(exclude, n)
    dist = _distances(u0, bank.embeddings)
    scored = (cand != excl[:, None]) & (dist > SAME_ITEM)
    q, j = np.nonzero(scored)
    p = np.full(cand.shape, np.nan, np.float32)
    p[q, j] = blip.itm_scores(params, bank.tokens, token_ids, mask, config, image_rows=j, text_rows=q, chunk=chunk)
    return _pick(cand, dist, p, tau, direction, excl), p


def compare(answers: ItmCounterfactuals, best: ItmCounterfactuals) -> dict[str, float]:
    """The pipeline's answers measured against the oracle's, for the same queries and outcome.

    Returns a dict:

    * ``queries``; ``exist``: queries for which the oracle found a valid item; ``found``: those for which the
      pipeline did; ``found_rate`` = found / exist (1.0 when none exist);
    * ``found_without_oracle``: queries the pipeline answered though the oracle found nothing (0 unless the
      two disagree on a score: a bug);
    * ``same_item``: the share of found queries answered with the oracle's own item;
    * ``proximity_median``, ``proximity_mean``, ``proximity_max``: the pipeline's distance over the oracle's,
      over the found queries (≥ 1: the pipeline checks a subset of the bank; NaN when none was found);
    * ``nearer_than_oracle``: found queries whose answer is nearer than the oracle's (0 unless a bug).
    """
    exist, found = np.asarray(best.found), np.asarray(answers.found)
    both = found & exist
    ratio = answers.distance[both] / best.distance[both]
    stat = lambda f: float(f(ratio)) if len(ratio) else float("nan")  # noqa: E731
    return {
        "queries": len(exist),
        "exist": int(exist.sum()),
        "found": int(both.sum()),
        "found_rate": float(both.sum() / exist.sum()) if exist.any() else 1.0,
        "found_without_oracle": int((found & ~exist).sum()),
        "same_item": float(np.mean(answers.ids[both] == best.ids[both])) if both.any() else float("nan"),
        "proximity_median": stat(np.median),
        "proximity_mean": stat(np.mean),
        "proximity_max": stat(np.max),
        "nearer_than_oracle": int((answers.distance[both] < best.distance[both]).sum()),
    }

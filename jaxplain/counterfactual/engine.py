"""The batched counterfactual pipeline: encode → target embeddings → retrieve → verify.

:func:`counterfactuals` explains many pairs at once. For the image side, each pair's image is
changed: the solver finds target embeddings near the image's that reach the wanted outcome, the
bank's index retrieves real images near each target, and the verifier
re-scores every candidate with the model and keeps the valid ones nearest the original. The text
side is symmetric (a text bank, the image fixed). ``search="exhaustive"`` is the oracle: it verifies
every bank item.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain.batching import map_blocks, to_bucket
from jaxplain.counterfactual.solver import SolverConfig, solve_targets
from jaxplain.counterfactual.verify import Verified
from jaxplain.errors import InputError
from jaxplain.models.bundle import Model
from jaxplain.objectives import (
    HIGHEST,
    SIM_ABOVE,
    SIM_BELOW,
    Goal,
    Want,
    margin,
    reported_score,
    scores,
    sigmoid_goal,
)
from jaxplain.zeroshot import DEFAULT_TEMPLATES, class_embeddings

PAIR_CHUNK = 1024  # pairs verified at once: bounds the [pairs, candidates, E] gather
# search="auto" verifies every bank item while pairs × items stays below this: on such small
# problems exhaustive verification costs about as much as solving targets and retrieving, and it
# needs no luck (in a bank of tight clusters, the valid items can lie off every target's path).
EXHAUSTIVE_BUDGET = 4_000_000
# search="auto" on a bigger problem: the pairs that retrieval left without any answer are verified
# against every bank item while their count × items stays below this. A pair answered rather than
# "not_found" is worth more time than a closer answer: at 16M pair-items the pass costs up to about
# 0.8 s on a 2-core CPU (lowering a similarity on the shipped 10k-image bank, retrieval answers 90–98%
# of the pairs that have an answer, 979 of 1,000 at level 0.2 and 903 of 993 at 0.4; this pass answers
# the rest).
RESCUE_BUDGET = 16_000_000
# Both budgets on an accelerator (any JAX backend but the CPU). There, verifying every item is a few large
# matrix products. On an H100, with the host's 16 cores running ScaNN, 1,000 pairs wanting another class on
# 1M items: the oracle 0.17 s end to end and 0.09 s after encoding, targets + retrieval + verification
# 0.13 s and 0.10 s, and the oracle misses nothing (retrieval found 990 of its 1,000). With float32
# products rounded to TF32 (JAX's GPU default, which jaxplain no longer uses) the oracle was ahead at every
# size tried, 100k to 4M items and 100 to 4,000 pairs; in full precision, 1e9 pair-items is the size
# measured, so the oracle is taken up to it.
ACCELERATOR_BUDGET = 1_000_000_000


def search_budgets(backend: str | None = None) -> tuple[int, int]:
    """``(exhaustive, rescue)`` pair × item budgets of ``search="auto"`` on a JAX backend (default: the
    default backend): :data:`EXHAUSTIVE_BUDGET` and :data:`RESCUE_BUDGET` on the CPU,
    :data:`ACCELERATOR_BUDGET` for both elsewhere."""
    if (backend or jax.default_backend()) == "cpu":
        return EXHAUSTIVE_BUDGET, RESCUE_BUDGET
    return ACCELERATOR_BUDGET, ACCELERATOR_BUDGET


@dataclasses.dataclass(frozen=True)
class Counterfactual:
    """One real bank item that changes the decision, with the scores that prove it."""

    rank: int
    bank_row: int
    bank_id: str
    item: str
    distance: float  # ‖x − u0‖ between unit embeddings
    score: float  # u·v (similarity outcomes) or p_c (class outcomes) under the model
    predicted: str | None  # the item's zero-shot class, where classes are given
    confidence: float | None  # the probability of that class
    margin: float  # the wanted outcome's margin at the item (positive: reached)
    label: int | None = None  # the bank's own label for the item, if it has labels


@dataclasses.dataclass(frozen=True)
class PairResult:
    """The answer for one pair.

    ``status`` is ``"found"``, ``"not_found"`` (no bank item that the search saw reaches the outcome),
    or ``"already"`` (the original already reaches it: there is nothing to change). ``search`` names the
    search path that answered the pair.
    """

    pair: int
    side: str
    want: str
    status: str
    original_score: float
    original_predicted: str | None
    counterfactuals: tuple[Counterfactual, ...]
    # which search answered: "index" (targets + retrieval), "exhaustive" (every bank item verified), or
    # "index+exhaustive" (retrieval found nothing, then every item was verified: search="auto")
    search: str = "index"

    @property
    def found(self) -> bool:
        return self.status == "found"

    def to_record(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        # Field by field: dataclasses.asdict deep-copies every value, a third of a streaming job's time per pair.
        d = dict(vars(self))
        d["counterfactuals"] = [dict(vars(c)) for c in self.counterfactuals]
        return d


@dataclasses.dataclass(frozen=True)
class CounterfactualResult:
    """Results for a batch of pairs, in input order, with timings of each stage (seconds)."""

    pairs: tuple[PairResult, ...]
    timings: dict[str, float]
    search: str
    # search="auto" on a big problem: pairs that retrieval left without an answer and that were then
    # verified against every bank item (their answers are the oracle's)
    exhaustive_pairs: int = 0

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> PairResult:
        return self.pairs[i]

    @property
    def found_rate(self) -> float:
        """Fraction of pairs (excluding those whose outcome already held) with a counterfactual."""
        asked = [p for p in self.pairs if p.status != "already"]
        return float(np.mean([p.found for p in asked])) if asked else float("nan")


def _as_list(x, n: int, what: str) -> list:
    if isinstance(x, (str, Want)) or x is None:
        return [x] * n
    x = list(x)
    if len(x) != n:
        raise InputError(f"{what}: {len(x)} given for {n} pairs")
    return x


@dataclasses.dataclass(frozen=True)
class Problem:
    """The arrays the solver and verifier need for N pairs of one side."""

    u0: np.ndarray  # [N, E] the side being changed
    anchor: np.ndarray  # [N, E] the fixed other side (or u0 when unused)
    classes: np.ndarray  # [C, E] (or [1, E] when unused)
    class_names: list[str] | None
    scale: float
    goal: Goal
    wants: list[Want]
    mesh: Any = None  # a "data" mesh the pairs' work is split over (None: the default device)
    decision: str = "softmax"  # the model's (see jaxplain.models.family)
    bias: float = 0.0  # the model's logit bias (SigLIP's b; 0 for CLIP)


def _on(problem: Problem) -> dict[str, Any]:
    """The bank calls' ``mesh`` argument for a problem (none without a mesh: any bank then serves)."""
    return {} if problem.mesh is None else {"mesh": problem.mesh}


def build_problem(
    model: Model,
    side: str,
    images,
    texts,
    wants: list[Want],
    bank,
    classes: Sequence[str] | None,
    templates: Sequence[str],
    mesh=None,
) -> Problem:
    """Encode the pairs and resolve every wanted outcome into a :class:`Goal`."""
    n = len(wants)
    needs_classes = any(w.needs_classes for w in wants)
    if side == "text" and needs_classes:
        raise InputError("the text side explains similarity outcomes (similarity>=S, similarity<=S, top:K)")
    if needs_classes and not classes:
        raise InputError("class outcomes (class:NAME, other-class, runner-up, prob:...) need class names")
    img = model.encode_images(images, mesh=mesh) if images is not None else None
    txt = model.encode_texts(texts, mesh=mesh) if texts is not None and not needs_classes else None
    if side == "image":
        u0, anchor = img, (txt if txt is not None else img)
    else:
        if img is None:
            raise InputError("the text side needs the images each text is scored against")
        u0, anchor = txt, img
    if u0 is None or len(u0) != n:
        raise InputError(f"side={side!r} needs {n} {'images' if side == 'image' else 'texts'}")
    class_names = list(classes) if needs_classes else None
    if class_names is not None and len(class_names) < 2:
        single = [i for i, w in enumerate(wants) if w.kind in ("other-class", "runner-up")]
        if single:
            raise InputError(f"pair {single[0]}: {wants[single[0]]} needs at least two classes; one was given")
    cls_emb = class_embeddings(model, class_names, templates) if needs_classes else u0[:1]
    scale = model.logit_scale
    order = _top_classes(u0, cls_emb)
    ranked = [i for i, w in enumerate(wants) if w.kind in ("top", "not-top")]
    if ranked and txt is None:
        raise InputError(f"pair {ranked[0]}: {wants[ranked[0]]} ranks the image for the pair's text; give texts")
    levels = dict(zip(ranked, bank.levels(anchor[ranked], [int(wants[i].value) for i in ranked]) if ranked else []))
    rows = []
    decision, bias = model.decision, model.logit_bias
    if decision == "sigmoid" and any(w.kind == "prob" for w in wants):
        anchor = np.array(anchor, np.float32, copy=True)  # a probability pair's anchor becomes its class
    for i, w in enumerate(wants):
        if w.kind in ("top", "not-top"):
            rows.append((SIM_ABOVE if w.kind == "top" else SIM_BELOW, 0, levels[i]))
        elif decision == "sigmoid" and w.kind == "prob":
            rows.append(sigmoid_goal(w, class_names, scale, bias))
            anchor[i] = cls_emb[class_names.index(w.name)]
        else:
            runner = int(order[i, 1]) if order.shape[1] > 1 else None
            if w.kind == "runner-up" and runner is None:
                raise InputError("runner-up needs at least two classes")
            rows.append(w.goal(class_names, predicted=int(order[i, 0]), runner_up=runner))
    return Problem(u0, anchor, cls_emb, class_names, scale, Goal.stack(rows), wants, mesh, decision, bias)


@functools.partial(jax.jit, static_argnames="k")
def _top_k_classes(u0, classes, k):
    return jax.lax.top_k(jnp.matmul(u0, classes.T, precision=HIGHEST), k)[1]


def _top_classes(u0: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """``[N, min(2, C)]``: each row's most similar class and the runner-up, by ``u0 · classes``.

    Jitted rather than a NumPy product: NumPy's BLAS threads keep spinning for a while after a call,
    and on a 2-core machine they slowed the solver that runs next by half.
    """
    padded = to_bucket(np.asarray(u0, np.float32), len(u0))
    return np.asarray(_top_k_classes(padded, jnp.asarray(classes, jnp.float32), min(2, len(classes))))[: len(u0)]


@jax.jit
def _original_scores(u0, anchor, classes, scale, goal):
    sim, z = scores(u0, anchor, classes, scale)
    m = jax.vmap(margin, in_axes=(0, 0, 0, None))(sim, z, goal, scale)
    return m, jax.vmap(reported_score)(sim, z, goal), z.argmax(1)


def _original(problem: Problem) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each pair's margin, reported score and zero-shot class at its original embedding.

    One jitted call, padded to the batch's size bucket: run op by op, these small computations also
    slowed the solver call that follows them by up to half (measured on a 2-core CPU).
    """
    n = len(problem.u0)
    u0, anchor, goal = to_bucket((problem.u0, problem.anchor, problem.goal), n)
    out = _original_scores(u0, anchor, problem.classes, jnp.float32(problem.scale), goal)
    return tuple(np.asarray(x)[:n] for x in out)


def _verify_chunked(cand: np.ndarray, bank, problem: Problem, rows: np.ndarray, top: int) -> Verified:
    on = _on(problem)

    def check(block):
        c, r = block
        goal = Goal(*(g[r] for g in problem.goal))
        return bank.verify(c, problem.u0[r], goal, problem.anchor[r], problem.classes, problem.scale, top, **on)

    return map_blocks(check, (cand, rows), len(rows), PAIR_CHUNK)


def _retrieve_and_verify(
    problem: Problem, bank, k: int, top: int, solver: SolverConfig, escalate: int, timings
) -> Verified:
    t = time.perf_counter()
    targets = solve_targets(
        problem.u0, problem.goal, problem.anchor, problem.classes, problem.scale, solver, mesh=problem.mesh
    )
    timings["targets"] = time.perf_counter() - t
    n = targets.embedding.shape[0]
    # The queries are the targets alone, not the original: on the shipped banks (class changes,
    # similarity and rank outcomes, image and text side) the original's own neighbours never held an
    # answer that the targets' neighbours missed. The depth-0 target already sits at the nearest point
    # of the wanted region, and the original's neighbours mostly share its decision.
    queries = np.asarray(targets.embedding, np.float32)
    d = queries.shape[1]
    timings["retrieve"] = timings["verify"] = 0.0
    rows = np.arange(n)
    ver = None
    for round_k in [k] + [min(bank.size, k * 8**r) for r in range(1, escalate + 1)]:
        t = time.perf_counter()
        ids, _ = bank.search(queries[rows].reshape(len(rows) * d, -1), round_k)
        cand = np.asarray(ids, np.int32).reshape(len(rows), d * ids.shape[1])
        timings["retrieve"] += time.perf_counter() - t
        t = time.perf_counter()
        got = _verify_chunked(cand, bank, problem, rows, top)
        timings["verify"] += time.perf_counter() - t
        if ver is None:
            ver = got
        else:  # the retried pairs had nothing valid: take the new answer whole
            for field, new in zip(ver, got):
                field[rows] = new
        # Pairs with no valid candidate are retried with more neighbours.
        rows = rows[~got.valid[:, 0]]
        if not len(rows) or round_k >= bank.size:
            break
    return ver


def counterfactuals(
    model: Model,
    images=None,
    texts: Sequence[str] | None = None,
    *,
    want: str | Want | Sequence[str | Want],
    bank,
    side: str = "image",
    classes: Sequence[str] | None = None,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    k: int = 64,
    top: int = 3,
    search: str = "auto",
    solver: SolverConfig = SolverConfig(),
    escalate: int = 1,
    mesh=None,
) -> CounterfactualResult:
    """Find, for every pair, the nearest real bank items for which the model's decision changes.

    Args:
      model: the model whose decisions are explained; ``bank`` must have been made by it.
      images: the pairs' images (paths, arrays, PIL images...), one per pair.
      texts: the pairs' texts, one per pair (similarity and retrieval outcomes; on the text side,
        the texts that are changed).
      want: the wanted outcome, one for all pairs or one per pair (see
        :class:`~jaxplain.objectives.Want` for the forms: ``"class:Sneaker"``, ``"other-class"``,
        ``"runner-up"``, ``"prob:Bag>=0.9"``, ``"similarity<=0.1"``, ``"top:5"``, ...).
      bank: a :class:`~jaxplain.counterfactual.bank.Bank` of real images (image side) or texts (text side).
      side: ``"image"`` (change the image) or ``"text"`` (change the text).
      classes: class names for class outcomes; ``templates`` make their prompt-ensembled embeddings.
      k: neighbours retrieved per query (each pair queries one target per solver depth).
      escalate: rounds of retrying the pairs with no valid candidate, each with 8× more neighbours.
      top: counterfactuals returned per pair, nearest first.
      search: ``"index"`` (targets + retrieval), ``"exhaustive"`` (the oracle: verify every item), or
        ``"auto"`` (exhaustive while pairs × bank items ≤ ``EXHAUSTIVE_BUDGET``, else index, and then
        exhaustive for the pairs that retrieval left without an answer, while pairs × items ≤
        ``RESCUE_BUDGET``: ``exhaustive_pairs`` of the result counts them; on a GPU or another
        accelerator both budgets are ``ACCELERATOR_BUDGET``, see :func:`search_budgets`).
      solver: target solver settings.
      mesh: a one-axis ``"data"`` mesh (:func:`jaxplain.sharding.make_mesh`) to split the work over its
        devices: encoding, targets and verification by pairs, the oracle by bank rows. The answers are
        those of one device (the encoder, verifier and oracle compute bit for bit the same numbers; an
        unconverged target may move by ~1e-3 with the batch shape). None (default): the default device.

    Returns:
      a :class:`CounterfactualResult`, one :class:`PairResult` per pair in input order.
    """
    start = time.perf_counter()
    if side not in ("image", "text"):
        raise InputError(f"side must be 'image' or 'text', got {side!r}")
    if search not in ("auto", "index", "exhaustive"):
        raise InputError(f"search must be 'auto', 'index' or 'exhaustive', got {search!r}")
    if bank.kind != side:
        raise InputError(
            f"{'an' if bank.kind == 'image' else 'a'} {bank.kind} bank cannot answer side={side!r}: "
            f"it holds {bank.kind}s"
        )
    bank.check_model(model)
    if model.decision != "softmax" and not hasattr(bank, "embeddings"):
        raise InputError(
            f"a {model.decision} decision reports each counterfactual's probabilities from its embedding: give a "
            "bank this process holds whole (--bank-sharding replicated)"
        )
    n = len(images) if images is not None else len(texts or [])
    if n == 0:
        raise InputError("no pairs given")
    wants = [w if isinstance(w, Want) else Want.parse(w) for w in _as_list(want, n, "want")]
    rescue = search == "auto"
    exhaustive_budget, rescue_budget = search_budgets()
    if search == "auto":
        search = "exhaustive" if n * bank.size <= exhaustive_budget else "index"
    if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1:
        raise InputError(f"top must be a whole number of at least 1, got {top!r}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k must be a whole number of at least 1, got {k!r}")
    top = min(top, bank.size - 1)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    problem = build_problem(model, side, images, texts, wants, bank, classes, templates, mesh)
    timings["encode"] = time.perf_counter() - t
    m0, s0, pred0 = _original(problem)
    if search == "exhaustive":
        t = time.perf_counter()
        ver = bank.exhaustive(
            problem.u0, problem.goal, problem.anchor, problem.classes, problem.scale, top, **_on(problem)
        )
        timings["verify"] = time.perf_counter() - t
    else:
        ver = _retrieve_and_verify(problem, bank, min(k, bank.size), top, solver, escalate, timings)
    rescued = np.zeros(0, np.int64)
    if rescue and search == "index":
        rescued = _exhaustive_rest(problem, bank, ver, m0, top, rescue_budget, timings)
    paths = np.full(n, search, object)
    paths[rescued] = "index+exhaustive"
    pairs = _pair_results(side, problem, bank, ver, m0, s0, pred0, paths)
    timings["total"] = time.perf_counter() - start
    return CounterfactualResult(pairs, timings, search, len(rescued))


def _exhaustive_rest(
    problem: Problem, bank, ver: Verified, m0: np.ndarray, top: int, budget: int, timings
) -> np.ndarray:
    """Verify every bank item for the pairs that retrieval left without an answer, while they fit the
    budget (pairs × bank items ≤ ``budget``); their rows of ``ver`` are replaced in place.

    Retrieval misses mostly where the valid items lie off the path from the original to its targets
    (lowering a similarity: the items below the level sit in other clusters). Returns the rows rescued.
    """
    rest = np.flatnonzero(~ver.valid[:, 0] & (m0 <= 0))
    if not len(rest) or len(rest) * bank.size > budget:
        return np.zeros(0, np.int64)
    t = time.perf_counter()
    got = bank.exhaustive(
        problem.u0[rest],
        Goal(*(g[rest] for g in problem.goal)),
        problem.anchor[rest],
        problem.classes,
        problem.scale,
        top,
        **_on(problem),
    )
    for field, new in zip(ver, got):
        field[rest] = new
    timings["verify"] += time.perf_counter() - t  # set by the retrieval that ran before
    return rest


def _sigmoid_report(problem: Problem, bank, ver: Verified):
    """The scores a sigmoid decision reports for pairs with classes: ``p_c = σ(s · u·v_c + b)`` of each pair's
    class ``c``, at the original and at every counterfactual, and the confidence ``σ`` of the top logit (the
    verifier's own scores are the softmax's, or the similarity a probability outcome became)."""
    c = np.asarray(problem.goal.cls)
    rows = np.asarray(ver.ids)
    emb = np.asarray(bank.embeddings)[np.clip(rows, 0, bank.size - 1)]  # [N, K, E]; invalid rows unused
    z = problem.scale * np.einsum("nke,ce->nkc", emb, problem.classes) + problem.bias
    p = 1 / (1 + np.exp(-z.astype(np.float64)))
    z0 = problem.scale * problem.u0 @ problem.classes.T + problem.bias
    p0 = 1 / (1 + np.exp(-z0.astype(np.float64)))
    score = np.take_along_axis(p, c[:, None, None], axis=2)[..., 0]
    return score, p.max(-1), p0[np.arange(len(c)), c]


def _pair_results(side, problem: Problem, bank, ver: Verified, m0, s0, pred0, paths) -> tuple[PairResult, ...]:
    """One :class:`PairResult` per pair. The arrays become Python lists once, not element by element."""
    names = problem.class_names
    labels = getattr(bank, "labels", None)
    score_a, conf_a = ver.score, ver.confidence
    if problem.decision == "sigmoid" and names:
        score_a, conf_a, s0 = _sigmoid_report(problem, bank, ver)
    ids, dist, score, pred, conf, marg, valid = (
        np.asarray(a).tolist() for a in (ver.ids, ver.distance, score_a, ver.predicted, conf_a, ver.margin, ver.valid)
    )
    out = []
    for i in range(len(m0)):
        cfs = []
        if m0[i] <= 0:
            for r in range(len(ids[i])):
                if not valid[i][r]:
                    break
                row = ids[i][r]
                cfs.append(
                    Counterfactual(
                        rank=r + 1,
                        bank_row=row,
                        bank_id=str(bank.ids[row]),
                        item=str(bank.items[row]),
                        distance=dist[i][r],
                        score=score[i][r],
                        predicted=names[pred[i][r]] if names else None,
                        confidence=conf[i][r] if names else None,
                        margin=marg[i][r],
                        label=None if labels is None else int(labels[row]),
                    )
                )
        status = "already" if m0[i] > 0 else ("found" if cfs else "not_found")
        out.append(
            PairResult(
                pair=i,
                side=side,
                want=str(problem.wants[i]),
                status=status,
                original_score=float(s0[i]),
                original_predicted=names[int(pred0[i])] if names else None,
                counterfactuals=tuple(cfs),
                search=str(paths[i]),
            )
        )
    return tuple(out)

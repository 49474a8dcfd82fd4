"""The uses of a CLIP model as pure functions of embeddings, and the outcomes a counterfactual may want.

Every wanted outcome is expressed as a *margin*: a number that is positive exactly when the outcome
is reached. Margins are in cosine units so that one solver setting suits every kind of outcome:

===============  ===========================================  ================================
kind             outcome                                      margin
===============  ===========================================  ================================
``SIM_ABOVE``    ``u·v > level``                              ``u·v − level``
``SIM_BELOW``    ``u·v < level``                              ``level − u·v``
``CLASS_WINS``   class ``c`` has the highest probability      ``(z_c − max_{j≠c} z_j) / s``
``CLASS_LOSES``  some class other than ``c`` wins             ``(max_{j≠c} z_j − z_c) / s``
``PROB_ABOVE``   ``p_c > τ``  (``level = log τ``)              ``(log p_c − log τ) / s``
``PROB_BELOW``   ``p_c < τ``  (``level = log τ``)              ``(log τ − log p_c) / s``
===============  ===========================================  ================================

with ``z = s · V u`` the zero-shot logits against prompt-ensembled class embeddings ``V`` ``[C, E]``
and ``s`` the model's temperature. Filtering is a threshold on ``u·v`` or ``p_c`` (one of the kinds
above, in either direction); retrieval ("enter/leave the top-k for a query among a bank") is a
similarity threshold set by the bank's k-th score (see :func:`retrieval_level`).

Margins take precomputed scores ``(sim, z)`` rather than embeddings, so a bank can be scored once
against all pairs (:func:`scores`) and the margins of many pairs read off cheaply.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain.errors import InputError

SIM_ABOVE, SIM_BELOW, CLASS_WINS, CLASS_LOSES, PROB_ABOVE, PROB_BELOW = range(6)
KIND_NAMES = ("similarity-above", "similarity-below", "class-wins", "class-loses", "prob-above", "prob-below")
CLASS_KINDS = (CLASS_WINS, CLASS_LOSES, PROB_ABOVE, PROB_BELOW)

# Scores decide whether a counterfactual is valid, so their products run at full float32 precision. On a
# GPU a float32 matrix product at default precision may round its inputs to TF32: on an H100 the dot
# products of unit 128-vectors were off by up to 1.4e-4 (3e-7 at HIGHEST), enough to move a distance
# by 0.01 or a logit by 0.01·s. On a CPU both precisions give the same numbers at the same speed.
HIGHEST = jax.lax.Precision.HIGHEST


class Goal(NamedTuple):
    """Per-pair wanted outcomes as arrays (a pytree, so it ``vmap``s over pairs).

    Attributes:
      kind: ``[N]`` int32, one of the kinds above.
      cls: ``[N]`` int32 class index for the class kinds (ignored otherwise).
      level: ``[N]`` float32 similarity level, or ``log τ`` for the probability kinds.
    """

    kind: jax.Array
    cls: jax.Array
    level: jax.Array

    @staticmethod
    def stack(goals: list[tuple[int, int, float]]) -> Goal:
        """Build from ``(kind, cls, level)`` triples, one per pair."""
        k, c, lv = zip(*goals) if goals else ((), (), ())
        return Goal(np.asarray(k, np.int32), np.asarray(c, np.int32), np.asarray(lv, np.float32))


def scores(
    e: jax.Array, anchor: jax.Array, classes: jax.Array, scale: jax.Array | float
) -> tuple[jax.Array, jax.Array]:
    """The model's scores of unit embeddings ``e`` ``[..., E]``.

    Returns ``sim = e · anchor`` ``[...]`` (``anchor`` ``[..., E]`` broadcasts against ``e``) and the
    zero-shot logits ``z = scale · e Vᵀ`` ``[..., C]`` against class embeddings ``classes`` ``[C, E]``.
    """
    # The temperature scales the small [C, E] matrix, not the [..., E] batch, and the similarity is a
    # contraction (a dot), not a product then a sum: on large candidate sets this is several times faster.
    sim = jnp.einsum("...e,...e->...", e, anchor, precision=HIGHEST)
    return sim, jnp.matmul(e, (scale * classes).T, precision=HIGHEST)


def margin(sim: jax.Array, z: jax.Array, goal: Goal, scale: jax.Array | float, smooth: bool = False) -> jax.Array:
    """The margin of one pair's wanted outcome (positive iff reached), from its scores.

    Args:
      sim: ``[...]`` similarities to the pair's anchor.
      z: ``[..., C]`` zero-shot logits.
      goal: one pair's :class:`Goal` (scalar fields).
      scale: the model's temperature.
      smooth: replace ``max_{j≠c} z_j`` by smooth bounds for gradient-based search — ``logsumexp``
        (an upper bound) for ``CLASS_WINS`` and ``logsumexp − log(C − 1)`` (a lower bound) for
        ``CLASS_LOSES`` — so the smooth margin never exceeds the exact one. The exact margin has
        kinks where two other classes tie, on which gradient steps stall.
    """
    zc = jnp.take(z, goal.cls, axis=-1)
    is_c = jnp.arange(z.shape[-1]) == goal.cls
    masked = jnp.where(is_c, -jnp.inf, z)
    if z.shape[-1] == 1:  # a single class: there is no other class
        hi = lo = jnp.full_like(zc, -jnp.inf)
    elif smooth:
        hi = jax.nn.logsumexp(masked, axis=-1)
        lo = hi - jnp.log(z.shape[-1] - 1.0)
    else:
        hi = lo = masked.max(-1)
    logp = zc - jax.nn.logsumexp(z, axis=-1)
    candidates = jnp.stack(
        [
            sim - goal.level,
            goal.level - sim,
            (zc - hi) / scale,
            (lo - zc) / scale,
            (logp - goal.level) / scale,
            (goal.level - logp) / scale,
        ]
    )
    return jnp.take(candidates, goal.kind, axis=0)


def reported_score(sim: jax.Array, z: jax.Array, goal: Goal) -> jax.Array:
    """The score a result reports for a pair: ``u·v`` for the similarity kinds, ``p_c`` for the class kinds."""
    p = jnp.take(jax.nn.softmax(z, axis=-1), goal.cls, axis=-1)
    return jnp.where(goal.kind <= SIM_BELOW, sim, p)


def retrieval_levels(
    queries: np.ndarray, bank: np.ndarray, ks: np.ndarray, exclude: np.ndarray | None = None, chunk: int = 256
) -> np.ndarray:
    """The similarity level that separates the top-``k`` for each query among ``bank`` from the rest.

    With ``o_i`` the i-th highest score of the bank (less the original item ``exclude``), a candidate
    from the bank ranks within the top ``k`` iff its score is at least ``o_k`` and outside iff at most
    ``o_{k+1}``. The level is their midpoint, so *enter* is ``SIM_ABOVE`` and *leave* ``SIM_BELOW`` at
    it, and the float32 noise of recomputing a score cannot move an item across.

    Args:
      queries: ``[R, E]`` query embeddings; bank: ``[M, E]``.
      ks: ``[R]`` the k of each query.
      exclude: ``[R]`` a bank row per query left out of the ranking, or ``-1``.
      chunk: queries scored at once (memory ``chunk × M``).

    Returns:
      ``[R]`` float levels.
    """
    bank = np.asarray(bank, np.float32)
    queries = np.asarray(queries, np.float32)
    ks = np.asarray(ks, np.int64)
    exclude = np.full(len(queries), -1) if exclude is None else np.asarray(exclude)
    size = len(bank) - (exclude >= 0)
    bad = (ks < 1) | (ks >= size)
    if bad.any():
        i = int(np.argmax(bad))
        raise InputError(f"top-{ks[i]}: the bank has only {size[i]} items to rank")
    levels = np.empty(len(queries), np.float32)
    for k in np.unique(ks):
        rows = np.flatnonzero(ks == k)
        for start in range(0, len(rows), chunk):
            r = rows[start : start + chunk]
            s = queries[r] @ bank.T
            mine = exclude[r] >= 0
            s[np.flatnonzero(mine), exclude[r][mine]] = -np.inf  # last in the order: as if removed
            # Only the k-th and (k+1)-th highest are needed: a partition, not a sort.
            top = -np.partition(-s, (k - 1, k), axis=1)
            levels[r] = (top[:, k - 1] + top[:, k]) / 2
    return levels


def retrieval_level(query: np.ndarray, bank: np.ndarray, k: int, exclude: int | None = None) -> float:
    """:func:`retrieval_levels` for one query."""
    excl = None if exclude is None else np.asarray([exclude])
    return float(retrieval_levels(np.asarray(query)[None], bank, np.asarray([k]), excl)[0])


_DECIMAL = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
_WHOLE = re.compile(r"^\d+$")


def _read_number(value: str, text: str, whole: bool = False) -> float:
    """The number of a wanted outcome's text (a decimal such as ``0.9``, ``-.25`` or ``1e-3``; a whole number
    for ``top:K``); anything else, ``inf`` and ``nan`` included, is an :class:`InputError` that quotes it."""
    v = value.strip()
    if not v:
        raise InputError(f"wanted outcome {text!r}: a number is missing at the end")
    if not (_WHOLE if whole else _DECIMAL).match(v):
        expected = "a whole number such as 5" if whole else "a decimal number such as 0.9"
        raise InputError(f"wanted outcome {text!r}: {v!r} is not {expected}")
    return float(v)


@dataclasses.dataclass(frozen=True)
class Want:
    """A wanted outcome as a user states it; :meth:`parse` reads the text form.

    =============================  ==========================================================
    text                           meaning
    =============================  ==========================================================
    ``class:NAME``                 class NAME wins
    ``other-class``                any class other than the predicted one wins
    ``runner-up``                  the class now second wins
    ``prob:NAME>=0.9``             p(NAME) rises above 0.9 (``<=`` for below)
    ``similarity>=0.3``            the image–text cosine rises above 0.3 (``<=`` for below)
    ``top:5`` / ``not-top:5``       the image enters / leaves the top 5 for the text among the bank
    =============================  ==========================================================
    """

    kind: str  # "class", "other-class", "runner-up", "prob", "similarity", "top", "not-top"
    name: str | None = None
    op: str | None = None  # ">=" or "<="
    value: float | None = None

    _PATTERNS = (
        (re.compile(r"^class:(?P<name>.+)$"), "class"),
        (re.compile(r"^other-class$"), "other-class"),
        (re.compile(r"^runner-up$"), "runner-up"),
        (re.compile(r"^prob:(?P<name>.+?)\s*(?P<op>>=|<=)\s*(?P<value>.*)$"), "prob"),
        (re.compile(r"^similarity\s*(?P<op>>=|<=)\s*(?P<value>.*)$"), "similarity"),
        (re.compile(r"^top:(?P<value>.*)$"), "top"),
        (re.compile(r"^not-top:(?P<value>.*)$"), "not-top"),
    )

    @classmethod
    def parse(cls, text: str) -> Want:
        """Read the text form (see the class docstring); a bad form is an :class:`InputError`."""
        if not isinstance(text, str):
            raise InputError(f"wanted outcome {text!r}: expected a string such as 'class:Sneaker'")
        t = text.strip()
        for pattern, kind in cls._PATTERNS:
            m = pattern.match(t)
            if m:
                g = m.groupdict()
                value = None if "value" not in g else _read_number(g["value"], text, whole=kind in ("top", "not-top"))
                want = cls(kind, g.get("name"), g.get("op"), value)
                want._check(text)
                return want
        raise InputError(
            f"wanted outcome {text!r} not understood; use class:NAME, other-class, runner-up, prob:NAME>=P, "
            "similarity>=S (or <=), top:K or not-top:K"
        )

    def _check(self, text: str) -> None:
        if self.kind == "prob" and not 0.0 < self.value < 1.0:
            raise InputError(f"wanted outcome {text!r}: a probability must lie strictly between 0 and 1")
        if self.kind == "similarity" and not -1.0 <= self.value <= 1.0:
            raise InputError(f"wanted outcome {text!r}: a cosine similarity lies in [-1, 1]")
        if self.kind in ("top", "not-top") and self.value < 1:
            raise InputError(f"wanted outcome {text!r}: k must be at least 1")

    @property
    def needs_classes(self) -> bool:
        return self.kind in ("class", "other-class", "runner-up", "prob")

    def goal(self, class_names: list[str] | None = None, predicted: int | None = None, runner_up: int | None = None):
        """The ``(kind, cls, level)`` triple, resolving class names and the model's current ranking."""
        if self.kind == "similarity":
            return (SIM_ABOVE if self.op == ">=" else SIM_BELOW), 0, self.value
        if self.kind in ("top", "not-top"):
            raise InputError("retrieval outcomes need the bank's level: use retrieval_level")
        if class_names is None:
            raise InputError(f"wanted outcome {self.kind}: the pair has no class names")
        if self.kind == "other-class":
            return CLASS_LOSES, predicted, 0.0
        if self.kind == "runner-up":
            return CLASS_WINS, runner_up, 0.0
        if self.name not in class_names:
            raise InputError(f"unknown class {self.name!r}; the classes are {', '.join(class_names)}")
        c = class_names.index(self.name)
        if self.kind == "class":
            return CLASS_WINS, c, 0.0
        return (PROB_ABOVE if self.op == ">=" else PROB_BELOW), c, math.log(self.value)

    def __str__(self) -> str:
        if self.kind == "class":
            return f"class:{self.name}"
        if self.kind == "prob":
            return f"prob:{self.name}{self.op}{self.value:g}"
        if self.kind == "similarity":
            return f"similarity{self.op}{self.value:g}"
        if self.kind in ("top", "not-top"):
            return f"{self.kind}:{int(self.value)}"
        return self.kind


def sigmoid_goal(want: Want, class_names: list[str], scale: float, bias: float) -> tuple[int, int, float]:
    """A probability outcome under a sigmoid decision, as the similarity threshold it is.

    Each class is decided on its own, ``p_c = σ(s · u·v_c + b)``, so ``p_c ≥ τ`` holds exactly when
    ``u·v_c ≥ (logit τ − b) / s``: a similarity outcome against the class embedding (the pair's anchor), with
    a margin in cosine units like every other. The argmax outcomes (``class:``, ``other-class``,
    ``runner-up``) need no such change: the bias is shared by all classes, so the logits order them as CLIP's do.

    Returns the ``(kind, cls, level)`` triple of :meth:`Want.goal`; the caller sets the pair's anchor to class
    ``cls``'s embedding.
    """
    want.goal(class_names)  # checks the class name
    tau = want.value
    level = (math.log(tau / (1 - tau)) - bias) / scale
    # the class index rides along (a similarity kind ignores it), so that results report p_c
    return (SIM_ABOVE if want.op == ">=" else SIM_BELOW), class_names.index(want.name), float(level)

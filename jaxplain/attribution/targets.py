"""The scalar an attribution explains: a pure function of the explained embedding, one per pair.

Every target is built from the uses of the model in :mod:`jaxplain.objectives`. With ``e`` the unit
embedding of the explained input (the image on the image side, the text on the text side), ``a`` the
pair's *anchor* (the other modality's embedding) and ``V`` ``[C, E]`` a set of *candidates* (class
embeddings on the image side) scored with the temperature ``s`` as ``z = s · V e``, and ``b`` the
model's bias (SigLIP's; 0 for CLIP):

================  ===========================================  ==============================================
kind              value                                        text form
================  ===========================================  ==============================================
``SIMILARITY``    ``e · a``                                    ``similarity``
``LOGIT``         ``z_c + b``                                  ``logit:NAME``, ``logit:predicted``
``PROB``          ``softmax(z)_c``, or ``σ(z_c + b)``          ``prob:NAME``, ``prob:predicted``
``CONTRAST``      ``z_c − z_o`` ("c rather than o")            ``contrast:A vs B`` (``predicted``/``runner-up``)
``MARGIN``        a wanted outcome's margin                    ``margin:WANT``, e.g. ``margin:prob:Bag>=0.5``
================  ===========================================  ==============================================

``PROB`` follows the model's decision: the softmax over the classes (CLIP) or the sigmoid of class ``c``
on its own (SigLIP). ``predicted`` and ``runner-up`` rank the classes by ``z`` under either decision (the
bias is shared by all classes).

``MARGIN`` is the signed distance to a filter's threshold or to a class change, in the cosine units of
:func:`jaxplain.objectives.margin` (positive when the outcome holds). Under a sigmoid decision
``margin:prob:NAME>=τ`` is the similarity margin ``e · v_c − (logit τ − b) / s`` against the class
embedding (:func:`jaxplain.objectives.sigmoid_goal`); ``<=`` is its negative.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain import objectives
from jaxplain.errors import InputError
from jaxplain.models.transformer import full_precision

SIMILARITY, LOGIT, PROB, CONTRAST, MARGIN = range(5)
KIND_NAMES = ("similarity", "logit", "prob", "contrast", "margin")


class Target(NamedTuple):
    """Per-pair targets as arrays (a pytree: it ``vmap``s over pairs).

    Attributes:
      kind: ``[N]`` int32, one of the kinds above.
      anchor: ``[N, E]`` the other modality's unit embedding (for ``SIMILARITY`` and similarity margins).
      cls: ``[N]`` int32 candidate index c.
      other: ``[N]`` int32 candidate index o for ``CONTRAST``.
      goal_kind: ``[N]`` int32 an :mod:`jaxplain.objectives` kind for ``MARGIN``.
      level: ``[N]`` float32 that goal's level.
    """

    kind: jax.Array
    anchor: jax.Array
    cls: jax.Array
    other: jax.Array
    goal_kind: jax.Array
    level: jax.Array


@full_precision
def value(
    e: jax.Array,
    target: Target,
    candidates: jax.Array,
    scale: jax.Array | float,
    bias: jax.Array | float = 0.0,
    sigmoid: jax.Array | float = 0.0,
) -> jax.Array:
    """The target of one pair (scalar fields in ``target``) for a unit embedding ``e`` ``[E]``.

    ``candidates`` ``[C, E]`` may be a single dummy row when no target of the batch uses them. ``bias`` is
    the model's logit bias and ``sigmoid`` 1 for a sigmoid decision per class, 0 for a softmax (arrays, so
    that one compiled function serves both).
    """
    sim = jnp.dot(e, target.anchor)
    z = scale * candidates @ e
    zc = z[target.cls]
    goal = objectives.Goal(target.goal_kind, target.cls, target.level)
    prob = jnp.where(sigmoid > 0, jax.nn.sigmoid(zc + bias), jax.nn.softmax(z)[target.cls])
    options = jnp.stack(
        [
            sim,
            zc + bias,
            prob,
            zc - z[target.other],
            objectives.margin(sim, z, goal, scale),
        ]
    )
    return options[target.kind]


def values(
    e: jax.Array,
    target: Target,
    candidates: jax.Array,
    scale: jax.Array | float,
    bias: jax.Array | float = 0.0,
    sigmoid: jax.Array | float = 0.0,
) -> jax.Array:
    """:func:`value` for a batch: ``e`` ``[N, E]`` → ``[N]``."""
    return jax.vmap(value, in_axes=(0, 0, None, None, None, None))(e, target, candidates, scale, bias, sigmoid)


@dataclasses.dataclass(frozen=True)
class TargetSpec:
    """A target as a user states it; :meth:`parse` reads the text form (see the module docstring)."""

    kind: str  # one of KIND_NAMES
    name: str | None = None  # class name, "predicted" or "runner-up"
    other: str | None = None  # the B of "contrast:A vs B"
    want: objectives.Want | None = None  # for "margin"

    _SIMPLE = re.compile(r"^(?P<kind>logit|prob):(?P<name>.+)$")
    _CONTRAST = re.compile(r"^contrast:(?P<a>.+?)\s+vs\s+(?P<b>.+)$")

    @classmethod
    def parse(cls, text: str | TargetSpec) -> TargetSpec:
        """Read ``similarity``, ``logit:NAME``, ``prob:NAME``, ``contrast:A vs B`` or ``margin:WANT``."""
        if isinstance(text, TargetSpec):
            return text
        if not isinstance(text, str):
            raise InputError(f"target {text!r}: expected a string such as 'similarity' or 'prob:predicted'")
        t = text.strip()
        if t == "similarity":
            return cls("similarity")
        if m := cls._SIMPLE.match(t):
            return cls(m["kind"], m["name"].strip())
        if m := cls._CONTRAST.match(t):
            return cls("contrast", m["a"].strip(), m["b"].strip())
        if t.startswith("margin:"):
            want = objectives.Want.parse(t.removeprefix("margin:"))
            if want.kind in ("top", "not-top"):
                raise InputError(f"target {text!r}: retrieval margins need a bank; use similarity>=LEVEL")
            return cls("margin", want=want)
        raise InputError(
            f"target {text!r} not understood; use similarity, logit:NAME, prob:NAME, contrast:A vs B "
            "(NAME may be 'predicted' or 'runner-up') or margin:WANT"
        )

    @property
    def needs_classes(self) -> bool:
        return self.kind in ("logit", "prob", "contrast") or (self.want is not None and self.want.needs_classes)

    @property
    def needs_anchor(self) -> bool:
        return self.kind == "similarity" or (self.want is not None and self.want.kind == "similarity")

    def __str__(self) -> str:
        if self.kind == "similarity":
            return "similarity"
        if self.kind == "contrast":
            return f"contrast:{self.name} vs {self.other}"
        if self.kind == "margin":
            return f"margin:{self.want}"
        return f"{self.kind}:{self.name}"


def _class_index(name: str, class_names: Sequence[str], ranked: np.ndarray) -> int:
    if name == "predicted":
        return int(ranked[0])
    if name == "runner-up":
        if len(ranked) < 2:
            raise InputError("target 'runner-up' needs at least two classes")
        return int(ranked[1])
    if name not in class_names:
        raise InputError(f"unknown class {name!r}; the classes are {', '.join(class_names)}")
    return list(class_names).index(name)


def build(
    specs: Sequence[TargetSpec],
    e: np.ndarray,
    anchors: np.ndarray | None,
    candidates: np.ndarray | None,
    class_names: Sequence[str] | None,
    scale: float,
    *,
    bias: float = 0.0,
    decision: str = "softmax",
) -> Target:
    """Resolve one :class:`TargetSpec` per pair into a :class:`Target`.

    Args:
      specs: ``N`` targets (``predicted``/``runner-up`` resolve against each pair's own ranking).
      e: ``[N, E]`` the explained embeddings at the input.
      anchors: ``[N, E]`` the paired embeddings, or None when no target needs them.
      candidates: ``[C, E]`` class embeddings, or None when no target needs them.
      class_names: the C names.
      scale: the model's temperature.
      bias: the model's logit bias.
      decision: ``"softmax"`` or ``"sigmoid"``; under a sigmoid a ``margin:prob:...`` target becomes a
        similarity margin whose anchor is the class embedding (:func:`jaxplain.objectives.sigmoid_goal`).
    """
    n, dim = e.shape
    if any(s.needs_anchor for s in specs) and anchors is None:
        raise InputError("a similarity target needs a text for each image (or an image for each text)")
    if any(s.needs_classes for s in specs) and candidates is None:
        raise InputError("a class target needs class names (classes=[...])")
    ranked = np.argsort(-(e @ candidates.T), axis=1, kind="stable") if candidates is not None else None
    anchor = np.zeros((n, dim), np.float32) if anchors is None else np.array(anchors, np.float32)
    rows = []
    for i, s in enumerate(specs):
        cls = other = goal_kind = 0
        level = 0.0
        if s.kind in ("logit", "prob", "contrast"):
            cls = _class_index(s.name, class_names, ranked[i])
        if s.kind == "contrast":
            other = _class_index(s.other, class_names, ranked[i])
            if other == cls:
                raise InputError(f"target {s}: the two classes are the same ({class_names[cls]!r}) for pair {i}")
        if s.kind == "margin" and decision == "sigmoid" and s.want.kind == "prob":
            goal_kind, cls, level = objectives.sigmoid_goal(s.want, list(class_names), scale, bias)
            anchor[i] = candidates[cls]
        elif s.kind == "margin":
            pred, runner = (int(ranked[i][0]), int(ranked[i][1])) if ranked is not None else (None, None)
            goal_kind, cls, level = s.want.goal(class_names, pred, runner)
        rows.append((KIND_NAMES.index(s.kind), cls, other, goal_kind, level))
    kind, cls, other, goal_kind, level = (np.asarray(c) for c in zip(*rows)) if rows else [np.zeros(0)] * 5
    return Target(
        kind=kind.astype(np.int32),
        anchor=anchor,
        cls=cls.astype(np.int32),
        other=other.astype(np.int32),
        goal_kind=goal_kind.astype(np.int32),
        level=level.astype(np.float32),
    )

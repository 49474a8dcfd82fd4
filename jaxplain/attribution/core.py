"""What every attribution method shares: the model's score of a batch of inputs, its gradient, and
scores of many perturbed copies evaluated in memory-bounded vmapped chunks.

A method is a pure function of ``(config, scoring, inputs, target, ...options)`` that returns per-pair
arrays; ``config`` and the options are static under ``jit``. :class:`Scoring` carries the arrays that
turn an embedding into the target's value, so that one compiled method serves every batch of targets.
The model's own functions come from its family (``scoring.family``), so a method runs on any family whose
structure it fits. Gradients of the per-example scores are taken as the gradient of their sum: the
examples of a batch do not interact, so this is exact and costs one backward pass for the whole batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain.attribution import targets
from jaxplain.attribution.targets import Target
from jaxplain.models.family import CLIP, Family


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Scoring:
    """What a method needs beside its inputs: the model's params and family, and the arrays that turn an
    embedding into the target's value. Build it from a model with :func:`scoring_for`.

    It is a pytree whose leaves are arrays and whose family is static, so one compiled method serves every
    batch of targets and every model of a family; the decision is an array flag for the same reason.

    Attributes:
      params: the model params.
      candidates: ``[C, E]`` class embeddings (one dummy row when unused).
      scale: the model's temperature ``s``.
      bias: the bias ``b`` added to every scaled similarity (SigLIP's; 0 for CLIP).
      sigmoid: 1 when the model decides by a sigmoid per class (``p_c = σ(z_c + b)``), 0 for a softmax over
        the classes.
      end_id: the tokenizer's end-of-text id, where a text's words stop (read by families whose config does
        not say it reliably; CLIP's positions come from its config).
      family: the model family (static), whose forward functions and structural facts the methods read.
    """

    params: Any
    candidates: jax.Array
    scale: jax.Array
    bias: jax.Array | float = 0.0
    sigmoid: jax.Array | float = 0.0
    end_id: jax.Array | int = -1
    family: Family = dataclasses.field(default=CLIP, metadata=dict(static=True))

    def _replace(self, **changes) -> Scoring:
        """A copy with some fields changed (as a NamedTuple's ``_replace``)."""
        return dataclasses.replace(self, **changes)


def scoring_for(model, candidates: np.ndarray | None = None, params: Any = None) -> Scoring:
    """The :class:`Scoring` of a :class:`~jaxplain.models.bundle.Model` against class embeddings
    ``candidates`` ``[C, E]`` (None: a dummy row); ``params`` replace the model's (e.g. cast)."""
    params = model.params if params is None else params
    family = model.family
    cands = np.zeros((1, model.embed_dim), np.float32) if candidates is None else candidates
    return Scoring(
        params,
        jnp.asarray(cands, jnp.float32),
        jnp.asarray(family.logit_scale(params), jnp.float32),
        jnp.asarray(family.logit_bias(params), jnp.float32),
        jnp.asarray(family.decision == "sigmoid", jnp.float32),
        jnp.asarray(getattr(model.tokenizer, "eos_id", -1), jnp.int32),
        family,
    )


def repeat(target: Target, times: int) -> Target:
    """Each pair's target repeated ``times`` times in a row: ``[N]`` → ``[N · times]``."""
    return jax.tree.map(lambda a: jnp.repeat(a, times, axis=0), target)


def image_scores(
    config: Any,
    scoring: Scoring,
    pixels: jax.Array,
    target: Target,
    *,
    collect: bool = False,
    taps: dict | None = None,
    patch_embeds: jax.Array | None = None,
) -> tuple[jax.Array, dict]:
    """Target values ``[B]`` of images ``[B, 3, H, W]`` (or of their patch embeddings ``[B, P, D]``) and
    the vision tower's intermediates."""
    e, aux = scoring.family.image_forward(
        scoring.params, pixels, config, collect=collect, taps=taps, patch_embeds=patch_embeds
    )
    return _values(e, target, scoring), aux


def text_scores(
    config: Any,
    scoring: Scoring,
    ids: jax.Array,
    embeds: jax.Array,
    target: Target,
    *,
    collect: bool = False,
    taps: dict | None = None,
) -> tuple[jax.Array, dict]:
    """Target values ``[B]`` of texts given as token embeddings ``[B, T, D]`` (``ids`` ``[B, T]`` locate
    each text's end-of-text token), and the text tower's intermediates."""
    e, aux = scoring.family.text_forward(scoring.params, ids, config, token_embeds=embeds, collect=collect, taps=taps)
    return _values(e, target, scoring), aux


def _values(e: jax.Array, target: Target, scoring: Scoring) -> jax.Array:
    return targets.values(e, target, scoring.candidates, scoring.scale, scoring.bias, scoring.sigmoid)


def embed_tokens(scoring: Scoring, ids: jax.Array) -> jax.Array:
    """Token embeddings ``[N, T, D]`` of ids ``[N, T]`` by the scoring's family (what text methods perturb)."""
    return scoring.family.embed_tokens(scoring.params, ids)


def value_and_input_grad(score_fn: Callable[[jax.Array], jax.Array], x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Scores ``[B]`` and their gradients with respect to the inputs ``x`` ``[B, ...]`` of a batched
    ``score_fn`` whose examples do not interact."""
    scores, vjp = jax.vjp(score_fn, x)
    return scores, vjp(jnp.ones_like(scores))[0]


def chunked_map(fn: Callable[[jax.Array], Any], xs: jax.Array, chunk: int) -> Any:
    """``fn`` over the leading axis of ``xs`` ``[M, ...]``, ``chunk`` rows at a time (vmapped within a
    chunk, sequential across chunks), so memory is bounded by the chunk."""
    return jax.lax.map(fn, xs, batch_size=max(1, min(chunk, xs.shape[0])))


def perturbed_scores(
    score_fn: Callable[[jax.Array, Target], jax.Array],
    inputs: jax.Array,
    target: Target,
    perturb: Callable[[jax.Array, jax.Array], jax.Array],
    params: jax.Array,
    budget: int,
) -> jax.Array:
    """Scores ``[N, M]`` of ``M`` perturbed copies of each of ``N`` inputs.

    Args:
      score_fn: batched inputs ``[B, ...]`` and targets ``[B]`` → scores ``[B]``.
      inputs: ``[N, ...]``.
      target: ``[N]`` per-pair targets.
      perturb: ``(inputs [N, ...], one perturbation's params)`` → perturbed inputs ``[N, ...]``.
      params: ``[M, ...]`` the perturbations' params (e.g. masks).
      budget: at most about this many model inputs per call (the memory bound).
    """
    n = inputs.shape[0]
    per_chunk = max(1, budget // max(n, 1))

    def one(p):
        return score_fn(perturb(inputs, p), target)

    return chunked_map(one, params, per_chunk).T

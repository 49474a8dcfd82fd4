"""What every attribution method shares: the model's score of a batch of inputs, its gradient, and
scores of many perturbed copies evaluated in memory-bounded vmapped chunks.

A method is a pure function of ``(config, scoring, inputs, target, ...options)`` that returns per-pair
arrays; ``config`` and the options are static under ``jit``. :class:`Scoring` carries the arrays that
turn an embedding into the target's value, so that one compiled method serves every batch of targets.
Gradients of the per-example scores are taken as the gradient of their sum: the examples of a batch do
not interact, so this is exact and costs one backward pass for the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxplain.attribution import targets
from jaxplain.attribution.targets import Target
from jaxplain.models import clip
from jaxplain.models.config import ClipConfig


class Scoring(NamedTuple):
    """The arrays a target's value needs beside the embedding.

    Attributes:
      params: the model params.
      candidates: ``[C, E]`` class embeddings (one dummy row when unused).
      scale: the model's temperature.
    """

    params: Any
    candidates: jax.Array
    scale: jax.Array


def repeat(target: Target, times: int) -> Target:
    """Each pair's target repeated ``times`` times in a row: ``[N]`` → ``[N · times]``."""
    return jax.tree.map(lambda a: jnp.repeat(a, times, axis=0), target)


def image_scores(
    config: ClipConfig,
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
    e, aux = clip.image_forward(scoring.params, pixels, config, collect=collect, taps=taps, patch_embeds=patch_embeds)
    return targets.values(e, target, scoring.candidates, scoring.scale), aux


def text_scores(
    config: ClipConfig,
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
    e, aux = clip.text_forward(scoring.params, ids, config, token_embeds=embeds, collect=collect, taps=taps)
    return targets.values(e, target, scoring.candidates, scoring.scale), aux


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

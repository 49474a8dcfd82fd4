"""Rank correlation between two explanations of the same input, for contrastivity and the sanity check."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxplain.metrics._common import flat


@jax.jit
def rank(x: jax.Array) -> jax.Array:
    """Ordinal ranks along the last axis: the smallest value gets 0, the largest ``F − 1``.

    Ties are broken by index (the earlier feature gets the lower rank), so every row is a permutation of
    ``0 … F − 1``; this differs from the averaged ranks of ``scipy.stats.spearmanr`` only where values tie.

    Args:
      x: ``[N, F]``.

    Returns:
      ``[N, F]`` float32.
    """
    order = jnp.argsort(jnp.asarray(x), axis=-1, stable=True)
    return jnp.argsort(order, axis=-1, stable=True).astype(jnp.float32)


def _constant(x: jax.Array) -> jax.Array:
    return jnp.max(x, axis=-1) == jnp.min(x, axis=-1)


@jax.jit
def spearman(a: jax.Array, b: jax.Array) -> jax.Array:
    """Spearman's ρ: the Pearson correlation of the ordinal ranks (:func:`rank`) of ``a`` and ``b``.

    Args:
      a, b: ``[N, F]`` (or ``[N, ...]``, flattened into features).

    Returns:
      ``[N]`` in ``[−1, 1]``. Rows with one feature, or where ``a`` or ``b`` is constant, give 0: such a row
      carries no ordering, and its ordinal ranks would only reflect the feature indices.
    """
    a, b = flat(a), flat(b)
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {a.shape} and {b.shape}")
    ra, rb = rank(a), rank(b)
    ra = ra - jnp.mean(ra, axis=-1, keepdims=True)
    rb = rb - jnp.mean(rb, axis=-1, keepdims=True)
    # Ranks are permutations of 0 … F − 1, so both variances are F(F² − 1)/12 > 0 whenever F > 1.
    den = jnp.sqrt(jnp.sum(ra**2, axis=-1) * jnp.sum(rb**2, axis=-1))
    rho = jnp.sum(ra * rb, axis=-1) / jnp.where(den > 0, den, 1)
    degenerate = (a.shape[-1] < 2) | _constant(a) | _constant(b)
    return jnp.where(degenerate, 0.0, rho)


@jax.jit
def contrastivity(contrastive: jax.Array, plain: jax.Array) -> jax.Array:
    """How much an "A rather than B" explanation differs from the plain "A" explanation.

    Args:
      contrastive: ``[N, F]``, attributions for the contrast.
      plain: ``[N, F]``, attributions for the target alone.

    Returns:
      ``[N]`` in ``[0, 1]``: ``(1 − ρ) / 2``; 0 for the same ranking, 1 for the reversed one. Higher is better.
    """
    return (1 - spearman(contrastive, plain)) / 2


@functools.partial(jax.jit, static_argnames="absolute")
def randomisation_similarity(trained: jax.Array, randomised: jax.Array, absolute: bool = True) -> jax.Array:
    """Model-randomisation sanity check (Adebayo et al. 2018, "Sanity checks for saliency maps").

    Args:
      trained: ``[N, F]``, attributions with the trained parameters.
      randomised: ``[N, F]``, attributions of the same inputs with randomised parameters
        (see :func:`jaxplain.metrics.randomise_layers`).
      absolute: compare ``|attribution|``, as in the paper, so that a sign flip counts as the same map (static).

    Returns:
      ``[N]`` Spearman ρ. Lower is better: an explanation that survives randomising the weights does not
      explain the model.
    """
    if absolute:
        trained, randomised = jnp.abs(jnp.asarray(trained)), jnp.abs(jnp.asarray(randomised))
    return spearman(trained, randomised)

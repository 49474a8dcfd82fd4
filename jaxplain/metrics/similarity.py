"""Rank correlation between two explanations of the same input, for contrastivity and the sanity check."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxplain.metrics._common import flat


@jax.jit
def rank(x: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    """Ranks along the last axis: the smallest value gets 0, the largest ``F − 1``; tied values share the
    mean of their places (as ``scipy.stats.rankdata`` and ``spearmanr`` do).

    Averaging ties matters for explanations: maps with many equal values (zeros after a ReLU, the zero
    scores outside a text's words) would otherwise be ranked by feature index, and two such maps would
    look alike only because their ties sit at the same places.

    Args:
      x: ``[N, F]``.
      valid: optional ``[N, F]`` booleans; only valid features are ranked (among themselves), the others
        get rank 0 and should be ignored.

    Returns:
      ``[N, F]`` float32.
    """
    x = jnp.asarray(x, jnp.float32)
    valid = jnp.ones(x.shape, bool) if valid is None else jnp.asarray(valid, bool)
    ordered = jnp.sort(jnp.where(valid, x, jnp.inf), axis=-1)  # invalid features sort last
    row = jax.vmap(lambda o, v: (jnp.searchsorted(o, v, side="left"), jnp.searchsorted(o, v, side="right")))
    lower, upper = row(ordered.reshape(-1, x.shape[-1]), x.reshape(-1, x.shape[-1]))
    r = ((lower + upper - 1) / 2).reshape(x.shape).astype(jnp.float32)
    return jnp.where(valid, r, 0.0)


def _constant(x: jax.Array, valid: jax.Array) -> jax.Array:
    hi = jnp.max(jnp.where(valid, x, -jnp.inf), axis=-1)
    lo = jnp.min(jnp.where(valid, x, jnp.inf), axis=-1)
    return hi == lo


@jax.jit
def spearman(a: jax.Array, b: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    """Spearman's ρ: the Pearson correlation of the ranks (:func:`rank`, ties averaged) of ``a`` and ``b``.

    Args:
      a, b: ``[N, F]`` (or ``[N, ...]``, flattened into features).
      valid: optional ``[N, F]`` booleans: correlate only these features of each row (e.g. the word tokens
        of texts of different lengths).

    Returns:
      ``[N]`` in ``[−1, 1]``. Rows with fewer than two (valid) features, or where ``a`` or ``b`` is constant,
      give 0: such a row carries no ordering.
    """
    a, b = flat(a), flat(b)
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {a.shape} and {b.shape}")
    valid = jnp.ones(a.shape, bool) if valid is None else flat(jnp.asarray(valid, bool))
    w = valid.astype(jnp.float32)
    count = w.sum(-1, keepdims=True)
    ra, rb = rank(a, valid), rank(b, valid)
    ra = (ra - jnp.sum(ra * w, -1, keepdims=True) / jnp.maximum(count, 1)) * w
    rb = (rb - jnp.sum(rb * w, -1, keepdims=True) / jnp.maximum(count, 1)) * w
    den = jnp.sqrt(jnp.sum(ra**2, axis=-1) * jnp.sum(rb**2, axis=-1))
    rho = jnp.sum(ra * rb, axis=-1) / jnp.where(den > 0, den, 1)
    degenerate = (count[:, 0] < 2) | _constant(a, valid) | _constant(b, valid)
    return jnp.where(degenerate, 0.0, rho)


@jax.jit
def contrastivity(contrastive: jax.Array, plain: jax.Array, valid: jax.Array | None = None) -> jax.Array:
    """How much an "A rather than B" explanation differs from the plain "A" explanation.

    Args:
      contrastive: ``[N, F]``, attributions for the contrast.
      plain: ``[N, F]``, attributions for the target alone.

    Returns:
      ``[N]`` in ``[0, 1]``: ``(1 − ρ) / 2``; 0 for the same ranking, 1 for the reversed one. Higher is better.
    """
    return (1 - spearman(contrastive, plain, valid)) / 2


@functools.partial(jax.jit, static_argnames="absolute")
def randomisation_similarity(
    trained: jax.Array, randomised: jax.Array, absolute: bool = True, valid: jax.Array | None = None
) -> jax.Array:
    """Model-randomisation sanity check (Adebayo et al. 2018, "Sanity checks for saliency maps").

    Args:
      trained: ``[N, F]``, attributions with the trained parameters.
      randomised: ``[N, F]``, attributions of the same inputs with randomised parameters
        (see :func:`jaxplain.metrics.randomise_layers`).
      absolute: compare ``|attribution|``, as in the paper, so that a sign flip counts as the same map (static).
      valid: optional ``[N, F]`` booleans, the features to compare (see :func:`spearman`).

    Returns:
      ``[N]`` Spearman ρ. Lower is better: an explanation that survives randomising the weights does not
      explain the model.
    """
    if absolute:
        trained, randomised = jnp.abs(jnp.asarray(trained)), jnp.abs(jnp.asarray(randomised))
    return spearman(trained, randomised, valid)

"""Quality of sets of counterfactuals: validity, proximity, sparsity and diversity.

Each pair gets up to ``K`` counterfactuals; ``present [N, K]`` marks the real ones, so that padding rows
(a search that found fewer than ``K``) count for nothing. Inputs may be embeddings ``[N, E]`` or any
``[N, ...]`` features, flattened.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _flat_k(x: jax.Array) -> jax.Array:
    """``[N, K, ...]`` → ``[N, K, F]``."""
    x = jnp.asarray(x)
    return x.reshape(*x.shape[:2], -1)


def _present_mean(values: jax.Array, present: jax.Array) -> jax.Array:
    """``[N, K]`` → ``[N]`` mean over present entries; NaN for a pair with none."""
    present = jnp.asarray(present, bool)
    count = jnp.sum(present, axis=-1)
    total = jnp.sum(jnp.where(present, values, 0), axis=-1)
    return jnp.where(count > 0, total / jnp.maximum(count, 1), jnp.nan)


def _differences(original: jax.Array, counterfactuals: jax.Array) -> jax.Array:
    """``[N, K, F]`` differences of each counterfactual from its original, flattened."""
    original = jnp.asarray(original)
    counterfactuals = jnp.asarray(counterfactuals)
    if counterfactuals.shape[:1] + counterfactuals.shape[2:] != original.shape:
        raise ValueError(
            f"counterfactuals must be [N, K, ...] for original {original.shape}, got {counterfactuals.shape}"
        )
    return _flat_k(counterfactuals) - original.reshape(original.shape[0], 1, -1)


@jax.jit
def validity(valid: jax.Array, present: jax.Array) -> jax.Array:
    """Fraction of the present counterfactuals that reach the wanted outcome.

    Args:
      valid: ``[N, K]`` bool.
      present: ``[N, K]`` bool.

    Returns:
      ``[N]`` in ``[0, 1]``; NaN for a pair with no counterfactual (so that means over pairs can skip it
      with ``nanmean`` rather than count it as a failure or a success).
    """
    return _present_mean(jnp.asarray(valid, jnp.float32), present)


@jax.jit
def proximity(original: jax.Array, counterfactuals: jax.Array, present: jax.Array) -> jax.Array:
    """Mean Euclidean distance of the present counterfactuals to the original.

    Args:
      original: ``[N, E]``.
      counterfactuals: ``[N, K, E]``.
      present: ``[N, K]`` bool.

    Returns:
      ``[N]``; NaN for a pair with no counterfactual.
    """
    return _present_mean(jnp.linalg.norm(_differences(original, counterfactuals), axis=-1), present)


@jax.jit
def sparsity(original: jax.Array, counterfactuals: jax.Array, present: jax.Array, atol: float = 1e-6) -> jax.Array:
    """Mean fraction of features a present counterfactual changes by more than ``atol``.

    Args:
      original: ``[N, F]``.
      counterfactuals: ``[N, K, F]``.
      present: ``[N, K]`` bool.
      atol: a feature counts as changed when ``|change| > atol``.

    Returns:
      ``[N]`` in ``[0, 1]``; lower means fewer features changed. NaN for a pair with no counterfactual.
    """
    changed = jnp.abs(_differences(original, counterfactuals)) > atol
    return _present_mean(jnp.mean(changed, axis=-1), present)


@jax.jit
def diversity(counterfactuals: jax.Array, present: jax.Array) -> jax.Array:
    """Mean Euclidean distance over the unordered pairs of present counterfactuals of each input.

    Args:
      counterfactuals: ``[N, K, E]``.
      present: ``[N, K]`` bool.

    Returns:
      ``[N]``; 0 where fewer than two are present (no spread to measure).
    """
    cf = _flat_k(counterfactuals)
    present = jnp.asarray(present, bool)
    k = cf.shape[1]
    pairs = present[:, :, None] & present[:, None, :] & jnp.triu(jnp.ones((k, k), bool), 1)
    # Differences rather than the Gram-matrix identity: exact zeros for equal points, and K is small.
    # The square root skips the masked pairs (the diagonal among them) so that gradients stay finite.
    sq = jnp.sum((cf[:, :, None] - cf[:, None, :]) ** 2, axis=-1)
    dist = jnp.where(pairs, jnp.sqrt(jnp.where(pairs, sq, 1)), 0)
    return jnp.sum(dist, axis=(1, 2)) / jnp.maximum(jnp.sum(pairs, axis=(1, 2)), 1)

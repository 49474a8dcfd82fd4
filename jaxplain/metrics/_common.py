"""Helpers the metric modules share."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def flat(x: jax.Array) -> jax.Array:
    """``[N, ...]`` → ``[N, F]``: every non-leading axis is a feature."""
    x = jnp.asarray(x)
    return x.reshape(x.shape[0], -1)


def nonneg_ratio(num: jax.Array, den: jax.Array) -> jax.Array:
    """``num / den`` for ``num, den ≥ 0``, defined at ``den == 0`` as its limit: 0 when ``num == 0``, else inf.

    "Nothing changed" stays 0 rather than NaN, and a change of something that was zero is infinitely large
    relative to it, rather than a number that depends on an arbitrary floor under ``den``.
    """
    safe = jnp.where(den > 0, den, 1)
    return jnp.where(den > 0, num / safe, jnp.where(num > 0, jnp.inf, 0.0))

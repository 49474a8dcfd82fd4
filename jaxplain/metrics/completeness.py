"""Completeness: do the attributions add up to the change of the score (as integrated gradients promise)?"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxplain.metrics._common import flat, nonneg_ratio


@jax.jit
def completeness_delta(attribution: jax.Array, f_input: jax.Array, f_baseline: jax.Array) -> jax.Array:
    """Signed gap ``Σ attribution − (f(input) − f(baseline))``.

    Args:
      attribution: ``[N, ...]``; summed over every non-leading axis.
      f_input: ``[N]``, the score of each input.
      f_baseline: ``[N]``, the score of its baseline.

    Returns:
      ``[N]``.
    """
    return jnp.sum(flat(attribution), axis=-1) - (jnp.asarray(f_input) - jnp.asarray(f_baseline))


@functools.partial(jax.jit, static_argnames="relative")
def completeness_error(
    attribution: jax.Array, f_input: jax.Array, f_baseline: jax.Array, relative: bool = False
) -> jax.Array:
    """``|completeness_delta|``, optionally relative to ``|f(input) − f(baseline)|``.

    Args:
      attribution, f_input, f_baseline: as in :func:`completeness_delta`.
      relative: divide by ``|f(input) − f(baseline)|`` (static). Where the score did not change, the relative
        error is 0 if the attributions also sum to 0 and inf otherwise.

    Returns:
      ``[N]``, ≥ 0.
    """
    error = jnp.abs(completeness_delta(attribution, f_input, f_baseline))
    if not relative:
        return error
    return nonneg_ratio(error, jnp.abs(jnp.asarray(f_input) - jnp.asarray(f_baseline)))

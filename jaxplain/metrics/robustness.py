"""Max-sensitivity: how much an explanation changes when the input is nudged (Yeh et al. 2019)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain.metrics._common import flat, nonneg_ratio


@functools.partial(jax.jit, static_argnames="normalize")
def max_sensitivity_from(explanation: jax.Array, perturbed: jax.Array, normalize: bool = True) -> jax.Array:
    """Largest L2 change of an explanation over explanations of perturbed inputs.

    Args:
      explanation: ``[N, F]``, the explanation of each original input.
      perturbed: ``[N, S, F]``, the explanations of ``S`` perturbed copies of each input.
      normalize: divide by ``‖explanation‖₂``, so that the value does not depend on the explanation's scale.
        A zero explanation gives 0 when no perturbed explanation differs from it and inf otherwise.

    Returns:
      ``[N]``: ``max_s ‖perturbed[:, s] − explanation‖₂`` (over its norm when ``normalize``).
    """
    explanation = jnp.asarray(explanation)
    perturbed = jnp.asarray(perturbed)
    if perturbed.shape[:1] + perturbed.shape[2:] != explanation.shape or perturbed.ndim != 3:
        raise ValueError(f"perturbed must be [N, S, F] for explanation {explanation.shape}, got {perturbed.shape}")
    change = jnp.max(jnp.linalg.norm(perturbed - explanation[:, None], axis=-1), axis=-1)
    if not normalize:
        return change
    return nonneg_ratio(change, jnp.linalg.norm(explanation, axis=-1))


def uniform_perturbations(key: jax.Array, x: jax.Array, samples: int, radius: float) -> jax.Array:
    """Copies of each input plus i.i.d. uniform noise in ``[−radius, radius)``.

    Args:
      key: PRNG key; the same key gives the same noise.
      x: ``[N, ...]`` floating.
      samples: copies per input, ≥ 1 (static).
      radius: half-width of the noise, ≥ 0.

    Returns:
      ``[N, samples, ...]`` in the dtype of ``x``.
    """
    if isinstance(samples, bool) or not isinstance(samples, int | np.integer) or samples < 1:
        raise ValueError(f"samples must be an integer ≥ 1, got {samples!r}")
    if isinstance(radius, int | float) and radius < 0:
        raise ValueError(f"radius must be ≥ 0, got {radius!r}")
    return _uniform_perturbations(key, jnp.asarray(x), samples, radius)


@functools.partial(jax.jit, static_argnames="samples")
def _uniform_perturbations(key: jax.Array, x: jax.Array, samples: int, radius: float) -> jax.Array:
    shape = (x.shape[0], samples, *x.shape[1:])
    return x[:, None] + jax.random.uniform(key, shape, x.dtype, minval=-radius, maxval=radius)


def max_sensitivity(
    explain_fn: Callable[[jax.Array], jax.Array],
    x: jax.Array,
    key: jax.Array,
    samples: int = 10,
    radius: float = 0.1,
    normalize: bool = True,
) -> jax.Array:
    """Max-sensitivity of ``explain_fn`` at ``x`` under uniform perturbations of radius ``radius``.

    ``explain_fn`` is called twice: once on ``x`` and once on all ``N · samples`` perturbed inputs in one
    batch. It maps ``[B, ...]`` inputs to ``[B, ...]`` explanations; their non-leading axes are flattened
    into features. Pure, so it can be jitted with ``explain_fn``, ``samples`` and ``normalize`` static.

    Args:
      explain_fn: inputs ``[B, ...]`` → explanations ``[B, ...]``.
      x: ``[N, ...]``.
      key: PRNG key for the perturbations.
      samples, radius: see :func:`uniform_perturbations`.
      normalize: see :func:`max_sensitivity_from`.

    Returns:
      ``[N]``.
    """
    x = jnp.asarray(x)
    n = x.shape[0]
    xs = uniform_perturbations(key, x, samples, radius)
    explanation = flat(explain_fn(x))
    perturbed = flat(explain_fn(xs.reshape(n * samples, *x.shape[1:]))).reshape(n, samples, -1)
    return max_sensitivity_from(explanation, perturbed, normalize)

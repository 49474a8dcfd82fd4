"""Deletion and insertion curves: perturb features in order of attribution and watch the model's score.

The arithmetic is kept apart from running the model: :func:`step_masks` says which features keep their
value at each step, :func:`apply_masks` builds the perturbed inputs from them, the caller scores those
inputs (``[N, steps + 1]``), and :func:`auc` reduces the curve to one number per pair.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

MODES = ("deletion", "insertion")


@jax.jit
def ranking(attribution: jax.Array) -> jax.Array:
    """Feature indices from most to least important.

    Args:
      attribution: ``[N, F]``.

    Returns:
      ``[N, F]`` int32: ``ranking[n, 0]`` is the feature with the highest attribution. Ties go to the lower
      index first (a stable sort of ``-attribution``).
    """
    a = jnp.asarray(attribution)
    if not jnp.issubdtype(a.dtype, jnp.floating):
        a = a.astype(jnp.float32)  # so that negation is defined for bool and unsigned inputs
    return jnp.argsort(-a, axis=-1, stable=True)


def _positions(attribution: jax.Array) -> jax.Array:
    """``[N, F]``: each feature's place in :func:`ranking` (0 = most important)."""
    return jnp.argsort(ranking(attribution), axis=-1, stable=True)


def step_counts(steps: int, fraction: float, num_features: int) -> np.ndarray:
    """``[steps + 1]`` int: how many features are perturbed at each step.

    ``n_k = ⌊k / steps · fraction · F + 0.5⌋``: rounded half up (not to even), so that hand-worked values are
    the obvious ones. Computed on the host from static arguments, in float64.
    """
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 1:
        raise ValueError(f"steps must be an integer ≥ 1, got {steps!r}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    k = np.arange(steps + 1, dtype=np.float64)
    return np.floor(k * fraction * num_features / steps + 0.5).astype(np.int32)


@functools.partial(jax.jit, static_argnames=("steps", "fraction", "mode"))
def step_masks(
    attribution: jax.Array,
    steps: int,
    fraction: float = 1.0,
    mode: str = "deletion",
    valid: jax.Array | None = None,
) -> jax.Array:
    """Masks for a deletion or insertion curve; 1 keeps a feature's original value, 0 puts in the baseline.

    At step ``k`` (``0 … steps``) the ``n_k`` most important features (see :func:`step_counts`) are
    perturbed: in ``"deletion"`` they are set to the baseline and the rest kept; in ``"insertion"`` the
    curve starts from the all-baseline input and they are the only features that keep their value.

    Args:
      attribution: ``[N, F]``.
      steps: number of steps after the unperturbed one, ≥ 1 (static).
      fraction: share of the features perturbed at the last step, in ``(0, 1]`` (static).
      mode: ``"deletion"`` or ``"insertion"`` (static).
      valid: optional ``[N, F]`` booleans: only these features are ranked and perturbed, and ``F`` in
        ``n_k`` becomes each row's count of valid features (e.g. the word tokens of texts of different
        lengths); the others keep their value at every step, in both modes.

    Returns:
      ``[N, steps + 1, F]`` float32.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    attribution = jnp.asarray(attribution)
    if attribution.ndim != 2:
        raise ValueError(f"attribution must be [N, F], got shape {attribution.shape}")
    if valid is None:
        counts = jnp.asarray(step_counts(steps, fraction, attribution.shape[-1]))[None, :, None]
        perturbed = _positions(attribution)[:, None, :] < counts
        keep = ~perturbed if mode == "deletion" else perturbed
        return keep.astype(jnp.float32)
    step_counts(steps, fraction, 1)  # validates steps and fraction
    valid = jnp.asarray(valid, bool)
    ranked = jnp.where(valid, attribution.astype(jnp.float32), -jnp.inf)  # invalid features rank last
    k = jnp.arange(steps + 1, dtype=jnp.float32)
    counts = jnp.floor(k[None] * fraction * valid.sum(-1, keepdims=True) / steps + 0.5)[:, :, None]
    perturbed = (_positions(ranked)[:, None, :] < counts) & valid[:, None, :]
    keep = ~perturbed if mode == "deletion" else perturbed | ~valid[:, None, :]
    return keep.astype(jnp.float32)


@jax.jit
def auc(curve: jax.Array) -> jax.Array:
    """Area under a curve sampled at evenly spaced points of ``[0, 1]`` (trapezoid rule).

    Args:
      curve: ``[N, S + 1]`` with ``S ≥ 1``.

    Returns:
      ``[N]``: the mean of the ``S`` trapezoids, so a constant curve ``c`` has area ``c``.
    """
    curve = jnp.asarray(curve)
    if curve.ndim != 2 or curve.shape[-1] < 2:
        raise ValueError(f"curve must be [N, S + 1] with at least two points, got shape {curve.shape}")
    return jnp.mean((curve[:, 1:] + curve[:, :-1]) / 2, axis=-1)


@jax.jit
def apply_masks(inputs: jax.Array, masks: jax.Array, baseline: jax.Array | float = 0.0) -> jax.Array:
    """Perturbed inputs ``mask · input + (1 − mask) · baseline``, one per mask.

    A feature may be a vector (a patch of pixels, a token embedding); its mask entry applies to all of it.

    Args:
      inputs: ``[N, F, ...]``.
      masks: ``[N, S, F]``, e.g. from :func:`step_masks`.
      baseline: broadcastable to ``[N, F, ...]``.

    Returns:
      ``[N, S, F, ...]`` in the dtype of ``inputs`` and ``baseline`` combined; the masks are cast to it, so
      integer inputs (token ids) need masks of 0 and 1.
    """
    inputs = jnp.asarray(inputs)
    masks = jnp.asarray(masks)
    n, f = inputs.shape[:2]
    if masks.ndim != 3 or masks.shape[0] != n or masks.shape[2] != f:
        raise ValueError(f"masks must be [N, S, F] = [{n}, S, {f}] for inputs {inputs.shape}, got {masks.shape}")
    baseline = jnp.broadcast_to(jnp.asarray(baseline), inputs.shape)
    dtype = jnp.result_type(inputs, baseline)
    m = masks.astype(dtype).reshape(masks.shape + (1,) * (inputs.ndim - 2))
    return m * inputs[:, None].astype(dtype) + (1 - m) * baseline[:, None].astype(dtype)

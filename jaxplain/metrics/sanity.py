"""Cascading model-parameter randomisation for the sanity check of Adebayo et al. (2018)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain.models import transformer

Params = dict[str, Any]

# Each tower's tensors after its layer stack, which cascading randomisation replaces first.
_HEADS = {"vision": ("post_ln", "projection"), "text": ("final_ln", "projection")}


def _redraw(z: jax.Array, x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """Standard normal ``z`` shifted and scaled to the mean and std of ``x`` over ``axes``, in ``x``'s dtype."""
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=axes, keepdims=True)
    std = jnp.std(x32, axis=axes, keepdims=True)
    return (mean + std * z).astype(x.dtype)


def randomise_layers(params: Params, key: jax.Array, tower: str = "vision", top: int | None = None) -> Params:
    """A copy of CLIP params with the top of one tower replaced by random values.

    The ``top`` last layers of ``params[tower]["layers"]`` (all of them when None; 0 replaces only the
    head), plus the tower's final layer norm (``post_ln`` for vision, ``final_ln`` for text) and its
    ``projection``, are redrawn i.i.d. normal with the mean and std of the tensor they replace: per layer
    slice for the stacked layer tensors, over the whole tensor for the head. Increasing ``top`` from 0
    gives the cascade "randomise from the top down", and the same key gives the same values for a layer
    at every step of it. A constant tensor (such as a freshly initialised bias) has zero std and comes
    back unchanged. Every other leaf is the same object as in ``params``. Layers may come in either
    layout (:func:`jaxplain.models.clip.unstack_layers`) and keep it.

    Args:
      params: jaxplain CLIP params (layout in :func:`jaxplain.models.init_params`).
      key: PRNG key.
      tower: ``"vision"`` or ``"text"``.
      top: how many of the last layers to randomise, ``0 ≤ top ≤ L``; None for all.

    Returns:
      Params of the same structure, shapes and dtypes.
    """
    if tower not in _HEADS:
        raise ValueError(f"tower must be one of {tuple(_HEADS)}, got {tower!r}")
    p = params[tower]
    num_layers = transformer.num_layers(p["layers"])
    top = num_layers if top is None else top
    if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= num_layers:
        raise ValueError(f"top must be an integer in [0, {num_layers}] or None, got {top!r}")
    # The head goes in as a tuple, so that both towers share a compiled function when their shapes agree.
    layers, head = _randomise(transformer.stack(p["layers"]), tuple(p[name] for name in _HEADS[tower]), key, top)
    if transformer.is_unstacked(p["layers"]):
        layers = transformer.unstack(layers)
    return {**params, tower: {**p, "layers": layers if top else p["layers"], **dict(zip(_HEADS[tower], head))}}


@jax.jit
def _randomise(layers: Params, head: tuple, key: jax.Array, top: jax.Array) -> tuple[Params, tuple]:
    """``layers`` with the last ``top`` slices of every stacked tensor redrawn, and ``head`` redrawn."""
    leaves, treedef = jax.tree.flatten(layers)
    head_leaves, head_def = jax.tree.flatten(head)
    # One draw for all tensors, cut into pieces: a single random-number kernel compiles much faster than
    # one per tensor. Noise is drawn for whole stacks, so that a layer gets the same values whatever
    # ``top`` is: each cascade step only adds layers to the previous one.
    sizes = [x.size for x in leaves + head_leaves]
    z = jnp.split(jax.random.normal(key, (sum(sizes),), jnp.float32), np.cumsum(sizes)[:-1])
    z = [piece.reshape(x.shape) for piece, x in zip(z, leaves + head_leaves)]
    # ``top`` is traced, so that every step of a cascade reuses one compiled function.
    redrawn = jnp.arange(leaves[0].shape[0]) >= leaves[0].shape[0] - top
    leaves = [
        jnp.where(redrawn.reshape(-1, *[1] * (x.ndim - 1)), _redraw(zx, x, tuple(range(1, x.ndim))), x)
        for zx, x in zip(z, leaves)
    ]
    head_leaves = [_redraw(zx, x, tuple(range(x.ndim))) for zx, x in zip(z[len(leaves) :], head_leaves)]
    return jax.tree.unflatten(treedef, leaves), jax.tree.unflatten(head_def, head_leaves)

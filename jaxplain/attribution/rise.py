"""RISE (Petsiuk, Das & Saenko, 2018): saliency from the scores of randomly masked images.

Each mask is a ``cells × cells`` grid of Bernoulli(``p``) cells, upsampled bilinearly to
``(cells + 1) · ⌈H / cells⌉`` pixels and cropped at a random shift, so its edges are soft and fall
anywhere. A pixel's saliency is ``Σ_m f(x ⊙ M_m + b ⊙ (1 − M_m)) · M_m(pixel) / (masks · p)``. Masks are
drawn from ``seed`` (the same masks for every pair) and evaluated in vmapped chunks of about ``budget``
inputs.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxplain.attribution import core, maps
from jaxplain.attribution.targets import Target
from jaxplain.models.config import ClipConfig


def rise_masks(key: jax.Array, count: int, cells: int, size: int, p: float) -> jax.Array:
    """``[count, size, size]`` soft masks in [0, 1]."""
    if not 0 < p < 1:
        raise ValueError(f"RISE keep probability p must lie in (0, 1), got {p}")
    if count < 1 or cells < 1:
        raise ValueError(f"RISE needs at least one mask and one cell, got masks={count}, cells={cells}")
    cell = math.ceil(size / cells)
    big = (cells + 1) * cell
    kg, ks = jax.random.split(key)
    grids = jax.random.bernoulli(kg, p, (count, cells, cells)).astype(jnp.float32)
    up = jax.image.resize(grids, (count, big, big), method="bilinear")
    shifts = jax.random.randint(ks, (count, 2), 0, cell)
    crops = jax.vmap(lambda m, s: jax.lax.dynamic_slice(m, (s[0], s[1]), (size, size)))(up, shifts)
    return jnp.clip(crops, 0.0, 1.0)  # bilinear resizing may overshoot 1 by a rounding error


def image_rise(
    config: ClipConfig,
    scoring: core.Scoring,
    pixels: jax.Array,
    target: Target,
    *,
    masks: int = 1000,
    cells: int | None = None,
    p: float = 0.5,
    seed: int = 0,
    baseline: jax.Array | float = 0.0,
    budget: int = 1024,
) -> dict:
    """RISE saliency as a pixel map ``[N, H, W]`` and its patch means ``[N, g, g]``. ``cells`` defaults
    to the patch grid's side."""
    v = config.vision
    cells = cells or v.image_size // v.patch_size
    m = rise_masks(jax.random.key(seed), masks, cells, v.image_size, p)
    b = jnp.broadcast_to(jnp.asarray(baseline, pixels.dtype), pixels.shape)

    def score_fn(x, t):
        return core.image_scores(config, scoring, x, t)[0]

    def apply(x, mask):
        return x * mask + b * (1 - mask)

    s = core.perturbed_scores(score_fn, pixels, target, apply, m, budget)  # [N, M]
    pm = jnp.einsum("nm,mhw->nhw", s, m) / (masks * p)
    return {"score": score_fn(pixels, target), "pixels": pm, "patches": maps.patch_means(pm, v.patch_size)}

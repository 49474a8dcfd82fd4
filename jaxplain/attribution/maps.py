"""Shapes of image attributions: pixel maps ``[N, H, W]`` and patch grids ``[N, g, g]``, and the
conversions between them."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def pixel_map(per_pixel: jax.Array, absolute: bool = False) -> jax.Array:
    """``[N, C, H, W]`` per-channel attributions → ``[N, H, W]``, summed over channels (of magnitudes
    when ``absolute``)."""
    return (jnp.abs(per_pixel) if absolute else per_pixel).sum(axis=1)


def patch_sums(pixels: jax.Array, patch: int) -> jax.Array:
    """``[N, H, W]`` → ``[N, H/p, W/p]``: the sum over each ``p × p`` patch (for additive attributions,
    whose patch value is the total of its pixels). Where the size is not a multiple of ``p`` (SigLIP at
    384 pixels with 14-pixel patches), the remainder, which no patch covers, is left out."""
    n, h, w = pixels.shape
    gh, gw = h // patch, w // patch
    pixels = pixels[:, : gh * patch, : gw * patch]
    return pixels.reshape(n, gh, patch, gw, patch).sum(axis=(2, 4))


def patch_means(pixels: jax.Array, patch: int) -> jax.Array:
    """``[N, H, W]`` → ``[N, H/p, W/p]``: the mean over each ``p × p`` patch (for saliency densities)."""
    return patch_sums(pixels, patch) / (patch * patch)


def grid(tokens: jax.Array) -> jax.Array:
    """Patch-token scores ``[N, g·g]`` (row-major, class token excluded) → ``[N, g, g]``."""
    n, p = tokens.shape
    g = round(p**0.5)
    return tokens.reshape(n, g, g)


def upsample(patches: jax.Array, size: int) -> jax.Array:
    """``[N, g, g]`` → ``[N, size, size]`` bilinear, for displaying a token-level map over pixels."""
    n = patches.shape[0]
    return jax.image.resize(patches, (n, size, size), method="bilinear")


def expand(patches: jax.Array, patch: int) -> jax.Array:
    """``[N, g, g]`` → ``[N, g·p, g·p]``: each patch's value on all its pixels (nearest)."""
    return jnp.repeat(jnp.repeat(patches, patch, axis=1), patch, axis=2)

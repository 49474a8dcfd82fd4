"""Occlusion: how much the score drops when part of the input is taken away.

Images: a ``window × window`` square slides with ``stride`` over the image and is filled with the
baseline; each position's score is ``f(x) − f(x occluded)``. With the default window and stride (the
model's patch size) the result is exactly the patch grid; a pixel's score is the mean over the windows
that cover it. Texts: each word is left out (its tokens removed and the rest shifted left), and its
score is the drop. All occluded inputs are evaluated in vmapped chunks of about ``budget`` inputs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain.attribution import core, maps
from jaxplain.attribution.targets import Target
from jaxplain.models.config import ClipConfig


def window_masks(size: int, window: int, stride: int) -> np.ndarray:
    """``[gy·gx, size, size]`` float32 masks, 1 inside each window position (row-major)."""
    if not 1 <= window <= size or stride < 1:
        raise ValueError(f"occlusion window {window} and stride {stride} do not fit a {size}-pixel image")
    starts = range(0, size - window + 1, stride)
    masks = np.zeros((len(starts) ** 2, size, size), np.float32)
    for i, (y, x) in enumerate((y, x) for y in starts for x in starts):
        masks[i, y : y + window, x : x + window] = 1
    return masks


def image_occlusion(
    config: ClipConfig,
    scoring: core.Scoring,
    pixels: jax.Array,
    target: Target,
    *,
    window: int | None = None,
    stride: int | None = None,
    baseline: jax.Array | float = 0.0,
    budget: int = 512,
) -> dict:
    """Score drops per window position, as a grid ``[N, gy, gx]`` (``patches`` when it is the patch grid)
    and as a pixel map ``[N, H, W]``."""
    v = config.vision
    window = window or v.patch_size
    stride = stride or window
    masks = jnp.asarray(window_masks(v.image_size, window, stride))
    b = jnp.broadcast_to(jnp.asarray(baseline, pixels.dtype), pixels.shape)

    def score_fn(x, t):
        return core.image_scores(config, scoring, x, t)[0]

    def occlude(x, m):
        return x * (1 - m) + b * m

    full = score_fn(pixels, target)
    drops = full[:, None] - core.perturbed_scores(score_fn, pixels, target, occlude, masks, budget)  # [N, M]
    g = round(masks.shape[0] ** 0.5)
    cover = masks.sum(0)
    pm = jnp.einsum("nm,mhw->nhw", drops, masks) / jnp.maximum(cover, 1)
    on_patches = window == stride == v.patch_size
    patches = drops.reshape(-1, g, g) if on_patches else maps.patch_means(pm, v.patch_size)
    return {"score": full, "patches": patches, "pixels": pm, "grid": drops.reshape(-1, g, g)}


def without_word(ids: jax.Array, words: jax.Array, w: int | jax.Array, pad_id: int) -> jax.Array:
    """``ids`` ``[N, T]`` with the tokens of word ``w`` removed, the rest shifted left and padded.

    ``words`` ``[N, T]`` gives each token's word index (−1 for special tokens and padding).
    """
    drop = words == w
    order = jnp.argsort(drop, axis=1, stable=True)  # kept tokens first, in their order
    shifted = jnp.take_along_axis(ids, order, axis=1)
    removed = jnp.take_along_axis(drop, order, axis=1)
    return jnp.where(removed, pad_id, shifted)


def text_occlusion(
    config: ClipConfig,
    scoring: core.Scoring,
    ids: jax.Array,
    target: Target,
    *,
    words: jax.Array,
    max_words: int,
    pad_id: int,
    budget: int = 2048,
) -> dict:
    """Leave-one-word-out: each word's drop ``f(text) − f(text without it)``, spread evenly over its tokens
    ``[N, T]``; ``word_scores`` ``[N, max_words]`` (0 beyond a text's last word)."""

    def score_fn(x, t):
        return core.text_scores(config, scoring, x, core.embed_tokens(scoring, x), t)[0]

    def remove(x, w):
        return without_word(x, words, w, pad_id)

    full = score_fn(ids, target)
    drops = full[:, None] - core.perturbed_scores(score_fn, ids, target, remove, jnp.arange(max_words), budget)
    present = (words[:, :, None] == jnp.arange(max_words)).any(axis=1)
    drops = jnp.where(present, drops, 0.0)
    counts = (words[:, :, None] == jnp.arange(max_words)).sum(axis=1)
    per_token = jnp.take_along_axis(drops / jnp.maximum(counts, 1), jnp.maximum(words, 0), axis=1)
    return {"score": full, "tokens": jnp.where(words >= 0, per_token, 0.0), "word_scores": drops}

"""Gradient saliency, gradient × input, and SmoothGrad (a wrapper around any gradient method).

Image results are pixel maps ``[N, H, W]`` (channels summed) with their patch sums ``[N, g, g]``; text
results are per-token scores ``[N, T]``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxplain.attribution import core, maps
from jaxplain.attribution.targets import Target
from jaxplain.models.config import ClipConfig


def _image_grad(config, scoring, pixels, target):
    return core.value_and_input_grad(lambda x: core.image_scores(config, scoring, x, target)[0], pixels)


def _image_result(config: ClipConfig, score: jax.Array, per_pixel: jax.Array, absolute: bool = False) -> dict:
    pm = maps.pixel_map(per_pixel, absolute)
    return {"score": score, "pixels": pm, "patches": maps.patch_sums(pm, config.vision.patch_size)}


def image_gradient(config: ClipConfig, scoring: core.Scoring, pixels: jax.Array, target: Target) -> dict:
    """Saliency: ``Σ_channels |∂f/∂x|`` per pixel (the magnitude of the score's gradient)."""
    score, g = _image_grad(config, scoring, pixels, target)
    return _image_result(config, score, g, absolute=True)


def image_gradient_x_input(config: ClipConfig, scoring: core.Scoring, pixels: jax.Array, target: Target) -> dict:
    """``Σ_channels x · ∂f/∂x`` per pixel (signed; the reference input is the all-zero normalised image)."""
    score, g = _image_grad(config, scoring, pixels, target)
    return _image_result(config, score, g * pixels)


def word_mask(ids: jax.Array, config: ClipConfig, scoring: core.Scoring | None = None) -> jax.Array:
    """``[N, T]`` True on the tokens of the words, by the family's
    :attr:`~jaxplain.models.family.Family.text_word_span` (CLIP, the default: after the start token, before
    the end-of-text token; SigLIP: before the first end id)."""
    family = core.CLIP if scoring is None else scoring.family
    end_id = -1 if scoring is None else scoring.end_id
    pos = jnp.arange(ids.shape[1])
    first, stop = family.text_word_span(ids, config, end_id)
    return (pos[None] >= first[:, None]) & (pos[None] < stop[:, None])


def text_gradient_x_input(config: ClipConfig, scoring: core.Scoring, ids: jax.Array, target: Target) -> dict:
    """``Σ_d e_d · ∂f/∂e_d`` per token, for the token embeddings ``e`` (the special tokens score 0)."""
    emb = core.embed_tokens(scoring, ids)
    score, g = core.value_and_input_grad(lambda x: core.text_scores(config, scoring, ids, x, target)[0], emb)
    return {"score": score, "tokens": jnp.where(word_mask(ids, config, scoring), (g * emb).sum(-1), 0.0)}


def image_smoothgrad(
    config: ClipConfig,
    scoring: core.Scoring,
    pixels: jax.Array,
    target: Target,
    *,
    base: Callable[..., dict],
    samples: int = 25,
    sigma: float = 0.15,
    seed: int = 0,
    **base_options,
) -> dict:
    """SmoothGrad: the mean of ``base`` over ``samples`` noisy copies of each image.

    The noise is Gaussian with standard deviation ``sigma`` times each image's value range. Samples are
    evaluated one batch of pairs at a time (a scan), so memory is that of ``base`` alone.
    """
    span = (pixels.max(axis=(1, 2, 3)) - pixels.min(axis=(1, 2, 3)))[:, None, None, None]
    keys = jax.random.split(jax.random.key(seed), samples)

    def step(acc, key):
        noisy = pixels + sigma * span * jax.random.normal(key, pixels.shape, pixels.dtype)
        out = base(config, scoring, noisy, target, **base_options)
        return (acc[0] + out["pixels"], acc[1] + out["patches"]), None

    g = config.vision.image_size // config.vision.patch_size
    zero = (jnp.zeros(pixels.shape[:1] + pixels.shape[2:]), jnp.zeros((pixels.shape[0], g, g)))
    (pm, patches), _ = jax.lax.scan(step, zero, keys)
    score = core.image_scores(config, scoring, pixels, target)[0]
    return {"score": score, "pixels": pm / samples, "patches": patches / samples}


def text_smoothgrad(
    config: ClipConfig,
    scoring: core.Scoring,
    ids: jax.Array,
    target: Target,
    *,
    samples: int = 25,
    sigma: float = 0.15,
    seed: int = 0,
) -> dict:
    """SmoothGrad of gradient × embedding: noise of ``sigma`` times each text's embedding value range
    is added to the word tokens' embeddings; the attribution is averaged over ``samples`` copies."""
    emb = core.embed_tokens(scoring, ids)
    words = word_mask(ids, config, scoring)[..., None]
    span = (emb.max(axis=(1, 2)) - emb.min(axis=(1, 2)))[:, None, None]
    keys = jax.random.split(jax.random.key(seed), samples)
    fn = lambda x: core.text_scores(config, scoring, ids, x, target)[0]  # noqa: E731

    def step(acc, key):
        noisy = emb + words * sigma * span * jax.random.normal(key, emb.shape, emb.dtype)
        _, g = core.value_and_input_grad(fn, noisy)
        return acc + (g * noisy).sum(-1), None

    tokens, _ = jax.lax.scan(step, jnp.zeros(ids.shape), keys)
    return {"score": fn(emb), "tokens": jnp.where(words[..., 0], tokens / samples, 0.0)}

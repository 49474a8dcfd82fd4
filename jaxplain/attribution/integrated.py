"""Integrated Gradients (Sundararajan et al., 2017) for images and for token embeddings.

``IG_i = (x_i − b_i) · ∫₀¹ ∂f/∂x_i (b + α (x − b)) dα``, approximated by a quadrature rule over
``steps`` points of the path. The attributions of an input sum to ``f(x) − f(b)`` in the limit; the
result carries the gap (``delta``), which shrinks as ``steps`` grows. The path's points are evaluated
in chunks of about ``budget`` model inputs, accumulating the weighted gradients, so memory does not grow
with ``steps``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain.attribution import core, maps
from jaxplain.attribution.gradient import word_mask
from jaxplain.attribution.targets import Target
from jaxplain.models.config import ClipConfig

RULES = ("gausslegendre", "riemann_middle", "riemann_trapezoid", "riemann_left", "riemann_right")


def path_points(steps: int, rule: str = "gausslegendre") -> tuple[np.ndarray, np.ndarray]:
    """Quadrature nodes ``α`` ``[steps]`` in [0, 1] and weights ``[steps]`` (summing to 1) for ``∫₀¹``."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    k = np.arange(steps, dtype=np.float64)
    if rule == "gausslegendre":
        x, w = np.polynomial.legendre.leggauss(steps)
        return (x + 1) / 2, w / 2
    if rule == "riemann_middle":
        return (k + 0.5) / steps, np.full(steps, 1 / steps)
    if rule == "riemann_left":
        return k / steps, np.full(steps, 1 / steps)
    if rule == "riemann_right":
        return (k + 1) / steps, np.full(steps, 1 / steps)
    if rule == "riemann_trapezoid":
        if steps < 2:
            raise ValueError("the trapezoid rule needs at least 2 steps")
        w = np.full(steps, 1 / (steps - 1))
        w[[0, -1]] /= 2
        return k / (steps - 1), w
    raise ValueError(f"unknown integration rule {rule!r}; use one of {', '.join(RULES)}")


def _chunks(steps: int, rule: str, per_chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights as ``[chunks, per_chunk]``, padded with zero-weight nodes."""
    alphas, weights = path_points(steps, rule)
    per_chunk = max(1, min(per_chunk, steps))
    pad = -steps % per_chunk
    alphas = np.concatenate([alphas, np.zeros(pad)]).reshape(-1, per_chunk)
    weights = np.concatenate([weights, np.zeros(pad)]).reshape(-1, per_chunk)
    return alphas.astype(np.float32), weights.astype(np.float32)


def path_gradient(score_fn, x: jax.Array, baseline: jax.Array, target: Target, steps: int, rule: str, budget: int):
    """``∫₀¹ ∂f/∂x (b + α (x − b)) dα`` ``[N, ...]`` by the quadrature rule, in chunks of the path.

    ``score_fn(inputs [B, ...], target [B]) → [B]``.
    """
    n = x.shape[0]
    alphas, weights = _chunks(steps, rule, max(1, budget // max(n, 1)))
    c = alphas.shape[1]
    tiled = jax.tree.map(lambda a: jnp.tile(a, (c,) + (1,) * (a.ndim - 1)), target)
    diff = x - baseline
    shape = (c, 1) + (1,) * (x.ndim - 1)

    def step(acc, aw):
        a, w = aw
        points = (baseline[None] + a.reshape(shape) * diff[None]).reshape(c * n, *x.shape[1:])
        _, g = core.value_and_input_grad(lambda p: score_fn(p, tiled), points)
        return acc + jnp.tensordot(w, g.reshape(c, n, *x.shape[1:]), axes=1), None

    total, _ = jax.lax.scan(step, jnp.zeros_like(x), (alphas, weights))
    return total


def image_ig(
    config: ClipConfig,
    scoring: core.Scoring,
    pixels: jax.Array,
    target: Target,
    *,
    baseline: jax.Array | float = 0.0,
    steps: int = 50,
    rule: str = "gausslegendre",
    budget: int = 128,
) -> dict:
    """Integrated Gradients over pixels. ``baseline``: normalised pixels ``[N, 3, H, W]`` or a number
    (0 is the dataset's mean colour). Returns pixel map, patch sums, ``score`` = f(x), ``baseline_score``
    = f(b) and ``delta`` = Σ attributions − (f(x) − f(b)).

    The path runs through the patch embeddings: they are an affine map ``W x + c`` of the pixels, so the
    point ``b + α (x − b)`` embeds to ``e_b + α (e_x − e_b)`` and the pixel gradient is ``Wᵀ`` of the
    embedding gradient — the same IG, without the patch embedding's forward and backward at every step.
    """
    b = jnp.broadcast_to(jnp.asarray(baseline, pixels.dtype), pixels.shape)
    params = scoring.params

    def score_fn(p, t):
        return core.image_scores(config, scoring, p, t)[0]

    def embedded_score(e, t):
        return core.image_scores(config, scoring, None, t, patch_embeds=e)[0]

    embed = scoring.family.embed_patches
    ex, eb = embed(params, pixels, config), embed(params, b, config)
    avg_e = path_gradient(embedded_score, ex, eb, target, steps, rule, budget)  # [N, P, D]
    _, back = jax.vjp(lambda q: embed(params, q, config), pixels)
    avg = back(avg_e.astype(ex.dtype))[0]
    attr = (pixels - b) * avg
    ends = score_fn(jnp.concatenate([pixels, b]), jax.tree.map(lambda a: jnp.concatenate([a, a]), target))
    fx, fb = jnp.split(ends, 2)
    pm = maps.pixel_map(attr)
    return {
        "score": fx,
        "baseline_score": fb,
        "delta": pm.sum(axis=(1, 2)) - (fx - fb),
        "pixels": pm,
        "patches": maps.patch_sums(pm, config.vision.patch_size),
    }


def text_ig(
    config: ClipConfig,
    scoring: core.Scoring,
    ids: jax.Array,
    target: Target,
    *,
    steps: int = 50,
    rule: str = "gausslegendre",
    budget: int = 1024,
) -> dict:
    """Integrated Gradients over token embeddings. The baseline keeps the start and end-of-text tokens
    and sets every word token's embedding to zero. Returns per-token scores ``[N, T]`` (0 on the
    special tokens), ``score``, ``baseline_score`` and ``delta``."""
    emb = core.embed_tokens(scoring, ids)
    words = word_mask(ids, config, scoring)
    b = jnp.where(words[..., None], 0.0, emb)

    def score_fn(x, t):
        reps = x.shape[0] // ids.shape[0]
        return core.text_scores(config, scoring, jnp.tile(ids, (reps, 1)), x, t)[0]

    avg = path_gradient(score_fn, emb, b, target, steps, rule, budget)
    tokens = ((emb - b) * avg).sum(-1)
    fx = score_fn(emb, target)
    fb = score_fn(b, target)
    return {"score": fx, "baseline_score": fb, "delta": tokens.sum(-1) - (fx - fb), "tokens": tokens}

"""Attention rollout (Abnar & Zuidema, 2020): how much each input token flows into the pooled token,
following the attention maps through the residual connections of every layer.

Each layer's head-fused attention ``A`` becomes ``Â = r·I + (1 − r)·A`` (``r`` accounts for the
residual path), rows renormalised; the rollout is ``Â_L ⋯ Â_2 Â_1``. The image's patch scores are the
class token's row; a text's token scores are its end-of-text token's row.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxplain.attribution import core, maps
from jaxplain.attribution.gradient import word_mask
from jaxplain.attribution.targets import Target
from jaxplain.models import clip
from jaxplain.models.config import ClipConfig

FUSIONS = ("mean", "max", "min")


def fuse_heads(attention: jax.Array, how: str) -> jax.Array:
    """``[..., H, T, T]`` → ``[..., T, T]`` by the mean, max or min over heads."""
    if how == "mean":
        return attention.mean(axis=-3)
    if how == "max":
        return attention.max(axis=-3)
    if how == "min":
        return attention.min(axis=-3)
    raise ValueError(f"unknown head fusion {how!r}; use one of {', '.join(FUSIONS)}")


def rollout_matrix(attention: jax.Array, residual: float = 0.5, head_fusion: str = "mean") -> jax.Array:
    """The rollout ``[..., T, T]`` of attention maps ``[..., L, H, T, T]`` (layer 0 first)."""
    a = fuse_heads(attention, head_fusion)
    eye = jnp.eye(a.shape[-1], dtype=a.dtype)
    a = residual * eye + (1 - residual) * a
    a = a / a.sum(axis=-1, keepdims=True)
    layers = jnp.moveaxis(a, -3, 0)
    out, _ = jax.lax.scan(lambda r, al: (al @ r, None), jnp.broadcast_to(eye, layers.shape[1:]), layers)
    return out


def image_rollout(
    config: ClipConfig,
    scoring: core.Scoring,
    pixels: jax.Array,
    target: Target,
    *,
    residual: float = 0.5,
    head_fusion: str = "mean",
) -> dict:
    """Rollout from the class token to the patches (it does not depend on the target; ``score`` is
    reported for completeness)."""
    score, aux = core.image_scores(config, scoring, pixels, target, collect=True)
    r = rollout_matrix(aux["attention"], residual, head_fusion)
    patches = maps.grid(r[:, 0, 1:])
    return {"score": score, "patches": patches, "pixels": maps.upsample(patches, config.vision.image_size)}


def text_rollout(
    config: ClipConfig,
    scoring: core.Scoring,
    ids: jax.Array,
    target: Target,
    *,
    residual: float = 0.5,
    head_fusion: str = "mean",
) -> dict:
    """Rollout from the end-of-text token to every token ``[N, T]``."""
    emb = clip.embed_tokens(scoring.params, ids)
    score, aux = core.text_scores(config, scoring, ids, emb, target, collect=True)
    r = rollout_matrix(aux["attention"], residual, head_fusion)
    row = jnp.take_along_axis(r, aux["eos"][:, None, None], axis=1)[:, 0]
    return {"score": score, "tokens": jnp.where(word_mask(ids, config), row, 0.0)}

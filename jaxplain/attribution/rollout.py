"""Attention rollout (Abnar & Zuidema, 2020): how much each input token flows into the pooled token,
following the attention maps through the residual connections of every layer.

Each layer's head-fused attention ``A`` becomes ``Â = r·I + (1 − r)·A`` (``r`` accounts for the
residual path), rows renormalised; the rollout is ``Â_L ⋯ Â_2 Â_1``. The image's patch scores are the row
of the pooled output: the class token's row (CLIP), or, for a tower pooled by an attention head (SigLIP),
the head's attention over the last layer's tokens (heads fused the same way) times the rollout. A text's
token scores are the row of the position it is pooled at (CLIP's end-of-text token, SigLIP's last).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxplain.attribution import core, maps
from jaxplain.attribution.gradient import word_mask
from jaxplain.attribution.targets import Target
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


def pooled_row(family, aux: dict, r: jax.Array, head_fusion: str = "mean") -> jax.Array:
    """``[N, P]`` the row of a token matrix ``r`` ``[N, T, T]`` read by the pooled image output, at the
    patches: the family's pooling attention over the last layer's tokens (heads fused, renormalised) times
    ``r``, without the class token where there is one."""
    pool = fuse_heads(family.image_pool_attention(aux)[..., None, :], head_fusion)[..., 0, :]  # [N, H, T] → [N, T]
    pool = pool / pool.sum(axis=-1, keepdims=True)
    row = jnp.einsum("nt,nts->ns", pool, r, precision=jax.lax.Precision.HIGHEST)  # exact for a one-hot row
    return row[:, int(family.class_token) :]


def image_rollout(
    config: ClipConfig,
    scoring: core.Scoring,
    pixels: jax.Array,
    target: Target,
    *,
    residual: float = 0.5,
    head_fusion: str = "mean",
) -> dict:
    """Rollout from the pooled output to the patches (it does not depend on the target; ``score`` is
    reported for completeness)."""
    score, aux = core.image_scores(config, scoring, pixels, target, collect=True)
    r = rollout_matrix(aux["attention"], residual, head_fusion)
    patches = maps.grid(pooled_row(scoring.family, aux, r, head_fusion))
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
    """Rollout from the pooled position (end-of-text token, or last position) to every token ``[N, T]``."""
    emb = core.embed_tokens(scoring, ids)
    score, aux = core.text_scores(config, scoring, ids, emb, target, collect=True)
    r = rollout_matrix(aux["attention"], residual, head_fusion)
    row = pooled_text_row(scoring.family, ids, config, r)
    return {"score": score, "tokens": jnp.where(word_mask(ids, config, scoring), row, 0.0)}


def pooled_text_row(family, ids: jax.Array, config, r: jax.Array) -> jax.Array:
    """``[N, T]`` the row of ``r`` ``[N, T, T]`` at the position each text is pooled at."""
    pos = family.text_pool_positions(ids, config)
    return jnp.take_along_axis(r, pos[:, None, None], axis=1)[:, 0]

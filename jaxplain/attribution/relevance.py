"""Gradient-weighted attention relevance (Chefer, Gur & Wolf, 2021, "Generic Attention-model
Explainability"; the method its authors apply to CLIP), for both towers.

With ``A_l`` a layer's attention maps ``[H, T, T]`` and ``∇A_l`` the target's gradient with respect to
them, ``Ā_l = mean_h (∇A_l ⊙ A_l)⁺`` and the relevance is updated from the identity as
``R ← R + Ā_l R`` for ``l = start_layer … L−1``. The image's patch relevance is the class token's row;
a text's token relevance is the row of the position it is pooled at (CLIP's end-of-text token, SigLIP's
last position: the rule is the same for any encoder read at one token).

An image tower without a class token (SigLIP: an attention-pooling head reads all the patches) has no
token row to read, and the head's attention is not tapped for its gradient: ``chefer`` on its images is
refused with an :class:`~jaxplain.errors.InputError` (``rollout`` starts from the head's attention instead).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxplain.attribution import core, maps
from jaxplain.attribution.gradient import word_mask
from jaxplain.attribution.rollout import pooled_text_row
from jaxplain.attribution.targets import Target
from jaxplain.errors import InputError
from jaxplain.models.config import ClipConfig


def relevance_matrix(attention: jax.Array, grads: jax.Array, start_layer: int = 0) -> jax.Array:
    """Relevance ``[..., T, T]`` from attention maps and their gradients ``[..., L, H, T, T]``."""
    a = jax.nn.relu(grads * attention).mean(axis=-3)  # [..., L, T, T]
    layers = jnp.moveaxis(a, -3, 0)[start_layer:]
    eye = jnp.broadcast_to(jnp.eye(a.shape[-1], dtype=a.dtype), layers.shape[1:])
    out, _ = jax.lax.scan(lambda r, al: (r + al @ r, None), eye, layers)
    return out


def _attention_grads(fn, shape, dtype):
    taps = {"attention": jnp.zeros(shape, dtype)}
    score, vjp, aux = jax.vjp(fn, taps, has_aux=True)
    grads = jnp.moveaxis(vjp(jnp.ones_like(score))[0]["attention"], 0, 1)  # [N, L, H, T, T]
    return score, aux, grads


def _check_start(start_layer: int, layers: int) -> None:
    if not 0 <= start_layer < layers:
        raise ValueError(f"start_layer {start_layer} out of range for a tower of {layers} blocks")


def image_relevance(
    config: ClipConfig, scoring: core.Scoring, pixels: jax.Array, target: Target, *, start_layer: int = 0
) -> dict:
    """Patch relevance ``[N, g, g]`` and its bilinear upsampling to pixels (towers with a class token)."""
    if not scoring.family.class_token:
        raise InputError(
            f"method 'chefer' on images reads the class token's relevance row, and {scoring.family.name} image "
            "towers have no class token (an attention head pools the patches); use 'rollout' (from the pooling "
            "head's attention), 'gradcam', 'ig', 'gradient_x_input', 'occlusion' or 'rise' for images, or "
            "'chefer' on texts"
        )
    v = config.vision
    _check_start(start_layer, v.num_layers)
    shape = (v.num_layers, pixels.shape[0], v.num_heads, v.num_positions, v.num_positions)
    score, aux, grads = _attention_grads(
        lambda tp: core.image_scores(config, scoring, pixels, target, collect=True, taps=tp), shape, pixels.dtype
    )
    r = relevance_matrix(aux["attention"], grads, start_layer)
    patches = maps.grid(r[:, 0, 1:])
    return {"score": score, "patches": patches, "pixels": maps.upsample(patches, v.image_size)}


def text_relevance(
    config: ClipConfig, scoring: core.Scoring, ids: jax.Array, target: Target, *, start_layer: int = 0
) -> dict:
    """Token relevance ``[N, T]`` (0 on the special tokens)."""
    t = config.text
    _check_start(start_layer, t.num_layers)
    emb = core.embed_tokens(scoring, ids)
    n, length = ids.shape
    shape = (t.num_layers, n, t.num_heads, length, length)
    score, aux, grads = _attention_grads(
        lambda tp: core.text_scores(config, scoring, ids, emb, target, collect=True, taps=tp), shape, emb.dtype
    )
    r = relevance_matrix(aux["attention"], grads, start_layer)
    row = pooled_text_row(scoring.family, ids, config, r)
    return {"score": score, "tokens": jnp.where(word_mask(ids, config, scoring), row, 0.0)}

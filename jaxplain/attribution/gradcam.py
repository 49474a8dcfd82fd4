"""Grad-CAM adapted to ViT tokens (Selvaraju et al., 2017; the token form of pytorch-grad-cam).

The patch tokens entering block ``layer`` play the part of a CNN's feature maps: each channel's weight
is its gradient averaged over the patches, and a patch's score is ``ReLU(Σ_d w_d · A_{p,d})``. The last
block's input is the default: in CLIP the last block's own output reaches the pooled embedding only
through the class token, so its patch tokens have no gradient. A tower without a class token (SigLIP,
pooled by an attention head over all its tokens) is read the same way, every token being a patch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxplain.attribution import core, maps
from jaxplain.attribution.targets import Target
from jaxplain.models.config import ClipConfig


def image_gradcam(
    config: ClipConfig, scoring: core.Scoring, pixels: jax.Array, target: Target, *, layer: int = -1
) -> dict:
    """Grad-CAM of the tokens entering block ``layer`` (negative counts from the end). Returns the
    patch grid ``[N, g, g]`` and its bilinear upsampling to pixels."""
    v = config.vision
    if not -v.num_layers <= layer < v.num_layers:
        raise ValueError(f"layer {layer} out of range for a vision tower of {v.num_layers} blocks")
    layer %= v.num_layers
    n, t = pixels.shape[0], v.num_positions
    taps = {"tokens": jnp.zeros((v.num_layers, n, t, v.hidden_size), pixels.dtype)}

    def fn(tp):
        return core.image_scores(config, scoring, pixels, target, collect=True, taps=tp)

    score, vjp, aux = jax.vjp(fn, taps, has_aux=True)
    first = int(scoring.family.class_token)  # the patches come after the class token, if any
    grads = vjp(jnp.ones_like(score))[0]["tokens"][layer][:, first:]  # [N, P, D]
    acts = aux["tokens"][:, layer, first:]
    weights = grads.mean(axis=1)
    cam = jax.nn.relu(jnp.einsum("npd,nd->np", acts, weights))
    patches = maps.grid(cam)
    return {"score": score, "patches": patches, "pixels": maps.upsample(patches, v.image_size)}

"""CLIP's contrastive loss: symmetric cross-entropy over the in-batch image–text similarities."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxplain.models import clip
from jaxplain.models.config import ClipConfig
from jaxplain.models.transformer import full_precision

# CLIP caps the temperature at 100 so that the logits cannot blow up early in training.
MAX_LOGIT_SCALE = math.log(100.0)


@full_precision
def contrastive_loss(image_emb: jax.Array, text_emb: jax.Array, logit_scale: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The mean of the image→text and text→image cross-entropies, pair ``i`` being the match of row ``i``.

    Args:
      image_emb: unit image embeddings ``[B, E]``.
      text_emb: unit text embeddings ``[B, E]``, row ``i`` describing image ``i``.
      logit_scale: the log-temperature (a scalar); it is capped at ``log(100)``.

    Returns:
      ``(loss, logits [B, B])`` with ``logits = exp(min(logit_scale, log 100)) · image_emb · text_embᵀ``.
    """
    scale = jnp.exp(jnp.minimum(logit_scale.astype(jnp.float32), MAX_LOGIT_SCALE))
    logits = scale * image_emb @ text_emb.T
    matches = jnp.arange(logits.shape[0])
    i2t = optax.softmax_cross_entropy_with_integer_labels(logits, matches)
    t2i = optax.softmax_cross_entropy_with_integer_labels(logits.T, matches)
    return (i2t.mean() + t2i.mean()) / 2, logits


def loss_fn(params: clip.Params, batch: dict[str, jax.Array], config: ClipConfig) -> tuple[jax.Array, dict[str, Any]]:
    """The contrastive loss of a batch and a few metrics.

    Args:
      params: the model params.
      batch: ``{"pixels": [B, 3, H, W] float32, "ids": [B, T] int32, "labels": [B] int32}``.
      config: the model config (static).

    Returns:
      ``(loss, metrics)``; ``metrics["class_accuracy"]`` is the fraction of images whose most similar
      in-batch caption describes their class (captions of the same class are interchangeable, so the
      exact-pair accuracy says little).
    """
    image_emb, _ = clip.image_forward(params, batch["pixels"], config)
    text_emb, _ = clip.text_forward(params, batch["ids"], config)
    loss, logits = contrastive_loss(image_emb, text_emb, params["logit_scale"])
    labels = batch["labels"]
    accuracy = jnp.mean(labels[jnp.argmax(logits, axis=1)] == labels)
    return loss, {"loss": loss, "class_accuracy": accuracy, "temperature": clip.logit_scale(params)}

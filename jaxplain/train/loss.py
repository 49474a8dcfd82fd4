"""The training losses: CLIP's contrastive loss (symmetric cross-entropy over the in-batch image–text
similarities) and SigLIP's sigmoid loss (a binary decision for every in-batch image–text pair)."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxplain.models import clip, siglip
from jaxplain.models.config import ClipConfig
from jaxplain.models.siglip import SiglipConfig
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


@full_precision
def sigmoid_loss(
    image_emb: jax.Array, text_emb: jax.Array, logit_scale: jax.Array, logit_bias: jax.Array, positives: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """SigLIP's loss: every in-batch pair ``(i, j)`` is a binary decision ``σ(z_ij)`` with
    ``z_ij = exp(logit_scale) · u_i·v_j + logit_bias``, positive where ``positives[i, j]``.

    Args:
      image_emb: unit image embeddings ``[B, E]``.
      text_emb: unit text embeddings ``[B, E]``.
      logit_scale: the log-temperature (a scalar; not capped, as in SigLIP).
      logit_bias: the bias (a scalar).
      positives: ``[B, B]`` bool, which texts describe which images (the diagonal for one caption per image;
        every caption of an image's class where captions are drawn per class).

    Returns:
      ``(loss, logits [B, B])``, the loss being ``-Σ_ij log σ(±z_ij) / B`` (summed over texts, averaged over
      images, as SigLIP normalises it).
    """
    logits = jnp.exp(logit_scale.astype(jnp.float32)) * image_emb @ text_emb.T + logit_bias.astype(jnp.float32)
    signs = jnp.where(positives, 1.0, -1.0)
    return -jnp.sum(jax.nn.log_sigmoid(signs * logits)) / logits.shape[0], logits


def siglip_loss_fn(
    params: siglip.Params, batch: dict[str, jax.Array], config: SiglipConfig
) -> tuple[jax.Array, dict[str, Any]]:
    """The sigmoid loss of a batch (:func:`sigmoid_loss`) and the metrics of :func:`loss_fn`, plus the bias.

    The captions of a batch are drawn per class and any caption of a class describes each of its images, so
    the positives are the pairs whose labels agree (not only the diagonal): what the model learns is the
    probability that a caption describes an image, the quantity its sigmoid decision reports.
    """
    image_emb, _ = siglip.image_forward(params, batch["pixels"], config)
    text_emb, _ = siglip.text_forward(params, batch["ids"], config)
    labels = batch["labels"]
    positives = labels[:, None] == labels[None, :]
    loss, logits = sigmoid_loss(image_emb, text_emb, params["logit_scale"], params["logit_bias"], positives)
    accuracy = jnp.mean(labels[jnp.argmax(logits, axis=1)] == labels)
    return loss, {
        "loss": loss,
        "class_accuracy": accuracy,
        "temperature": siglip.logit_scale(params),
        "bias": siglip.logit_bias(params),
    }

"""Zero-shot classification with prompt-template ensembling.

Each class gets one embedding: the class name is put into every template, the texts are encoded,
their unit embeddings averaged and the mean renormalised. Images are then scored against the class
embeddings with the model's temperature: ``p = softmax(s · u · Vᵀ)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain.errors import InputError
from jaxplain.models.bundle import Model

CLASS_CACHE_SIZE = 16  # sets of class embeddings kept per model (see class_embeddings)
DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a photo of the large {}.",
    "a photo of the small {}.",
    "a cropped photo of a {}.",
    "a close-up photo of a {}.",
    "a bright photo of a {}.",
    "a dark photo of a {}.",
    "a black and white photo of a {}.",
    "a low resolution photo of a {}.",
)


def ensemble(text_emb: jax.Array) -> jax.Array:
    """``[C, T, E]`` unit embeddings of C classes × T templates → ``[C, E]`` unit class embeddings."""
    mean = text_emb.mean(axis=-2)
    return mean / jnp.linalg.norm(mean, axis=-1, keepdims=True)


def zero_shot_logits(image_emb: jax.Array, class_emb: jax.Array, scale: jax.Array | float) -> jax.Array:
    """Scaled similarities ``[N, C]`` of unit image embeddings ``[N, E]`` to class embeddings ``[C, E]`` (at full
    float32 precision, as the counterfactual verifier scores them: see :data:`jaxplain.objectives.HIGHEST`)."""
    return scale * jnp.matmul(image_emb, class_emb.T, precision=jax.lax.Precision.HIGHEST)


def zero_shot_probs(image_emb: jax.Array, class_emb: jax.Array, scale: jax.Array | float) -> jax.Array:
    """Class probabilities ``[N, C]``: the softmax of :func:`zero_shot_logits`."""
    return jax.nn.softmax(zero_shot_logits(image_emb, class_emb, scale), axis=-1)


def prompts(class_names: Sequence[str], templates: Sequence[str]) -> list[str]:
    """The C × T prompt texts, class-major."""
    if not class_names:
        raise InputError("no class names given")
    if not templates:
        raise InputError("no prompt templates given")
    for t in templates:
        if not isinstance(t, str):
            raise InputError(f"template {t!r} is not a string")
        if "{}" not in t:
            raise InputError(f"template {t!r} has no '{{}}' for the class name")
        try:
            t.format("x")
        except (IndexError, KeyError, ValueError) as e:
            raise InputError(
                f"template {t!r} must hold one '{{}}' and no other braces (write '{{{{' and '}}}}' for literal "
                f"ones): {e}"
            ) from None
    seen: dict[str, int] = {}
    for i, c in enumerate(class_names):
        if not isinstance(c, str) or not c.strip():
            raise InputError(f"class name {i} ({c!r}) is empty")
        if c in seen:
            # Two classes of one name would split its probability, and a class outcome could name neither.
            raise InputError(f"class name {c!r} is given twice (classes {seen[c]} and {i}); class names must differ")
        seen[c] = i
    return [t.format(c) for c in class_names for t in templates]


def class_embeddings(
    model: Model, class_names: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES
) -> np.ndarray:
    """Prompt-ensembled class embeddings ``[C, E]`` (unit norm, float32).

    Kept on the model (:attr:`Model.text_cache`, up to ``CLASS_CACHE_SIZE`` sets of classes and templates),
    so that explaining batch after batch against the same classes encodes their prompts once.
    """
    texts = prompts(class_names, templates)  # validates the names and templates
    key = ("class embeddings", len(class_names), tuple(texts))
    cache = model.text_cache
    if key not in cache:
        emb = model.encode_texts(texts)
        bad = ~np.isfinite(np.asarray(emb)).all(axis=1)
        if bad.any():
            raise InputError(
                f"the model gave a non-finite embedding (NaN/inf) for the prompt {texts[int(np.argmax(bad))]!r}"
                + (f" and {int(bad.sum()) - 1} more" if bad.sum() > 1 else "")
            )
        if len(cache) >= CLASS_CACHE_SIZE:
            cache.pop(next(iter(cache)))  # the oldest
        cache[key] = np.asarray(ensemble(emb.reshape(len(class_names), len(templates), -1)))
    return cache[key].copy()


def classify(
    model: Model,
    images,
    class_names: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
) -> np.ndarray:
    """Zero-shot class probabilities ``[N, C]`` for images (any form :meth:`Model.encode_images` takes)."""
    cls = class_embeddings(model, class_names, templates)
    return probabilities(model, model.encode_images(images), cls)


def probabilities(model: Model, image_emb, class_emb) -> np.ndarray:
    """Class probabilities ``[N, C]`` by the model's own decision (:attr:`Model.decision`): CLIP's softmax
    over the classes (:func:`zero_shot_probs`), or SigLIP's sigmoid of each class on its own,
    ``σ(s · u · v_c + b)``, where several classes or none may pass 0.5."""
    if model.decision == "softmax":
        return np.asarray(zero_shot_probs(image_emb, class_emb, model.logit_scale))
    from jaxplain.models.family import class_probabilities

    return np.asarray(class_probabilities(image_emb, class_emb, model.logit_scale, model.logit_bias, model.decision))

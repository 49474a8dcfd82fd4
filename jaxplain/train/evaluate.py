"""Zero-shot accuracy of a model on labelled images, with a prompt ensemble."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxplain.models.bundle import Model
from jaxplain.zeroshot import DEFAULT_TEMPLATES, class_embeddings, zero_shot_probs


def zero_shot_predictions(
    model: Model,
    pixels: np.ndarray,
    class_names: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
) -> np.ndarray:
    """Predicted class ``[N]`` of preprocessed pixels ``[N, 3, H, W]``: the most probable of
    ``softmax(s · u · Vᵀ)`` over the class names × templates ensemble ``V``."""
    probs = zero_shot_probs(model.encode_pixels(pixels), class_embeddings(model, class_names, templates), 1.0)
    return np.asarray(probs).argmax(axis=1)


def zero_shot_accuracy(
    model: Model,
    images: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
) -> float:
    """Fraction of ``images`` (anything :meth:`Model.preprocess` takes, e.g. uint8 ``[N, 28, 28]``) whose
    zero-shot prediction is their label ``[N]``. Images go through the model's own preprocessing."""
    pixels = model.preprocess(list(images))
    return float(np.mean(zero_shot_predictions(model, pixels, class_names, templates) == np.asarray(labels)))

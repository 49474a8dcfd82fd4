"""Zero-shot accuracy of a model on labelled images, with a prompt ensemble."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxplain.models.bundle import Model
from jaxplain.zeroshot import DEFAULT_TEMPLATES, classify


def zero_shot_accuracy(
    model: Model,
    images: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
) -> float:
    """Fraction of ``images`` (anything :meth:`Model.encode_images` takes, e.g. uint8 ``[N, 28, 28]``) whose
    zero-shot prediction (:func:`jaxplain.zeroshot.classify`) is their label ``[N]``."""
    predicted = classify(model, list(images), class_names, templates).argmax(axis=1)
    return float(np.mean(predicted == np.asarray(labels)))

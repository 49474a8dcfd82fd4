"""jaxplain: explain the decisions of CLIP-style vision-language models at scale, in JAX.

The public API::

    model = jaxplain.load("path/or/hub-id")          # a Model bundle
    u = model.encode_images(["cat.png"])             # [N, E] unit-norm
    v = model.encode_texts(["a photo of a cat"])     # [N, E]
    p = jaxplain.classify(model, images, ["cat", "dog"])
    a = jaxplain.attribute(model, images, texts, method="ig")      # which patches drove u·v
    r = jaxplain.counterfactuals(model, images, texts, want="other-class", bank=bank, classes=names)

and, for functional research code, the pure functions in :mod:`jaxplain.models`
(``image_forward(params, pixels, config)``, ``text_forward(params, ids, config)``).
"""

from jaxplain.attribution import Attribution, attribute
from jaxplain.counterfactual import Bank, SolverConfig, build_bank, counterfactuals
from jaxplain.errors import CheckpointError, InputError, JaxplainError, ModelNotFoundError
from jaxplain.models import (
    ClipConfig,
    Model,
    encode_image,
    encode_text,
    image_forward,
    load,
    save,
    text_forward,
)
from jaxplain.objectives import Want
from jaxplain.zeroshot import DEFAULT_TEMPLATES, class_embeddings, classify, zero_shot_probs

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_TEMPLATES",
    "Attribution",
    "Bank",
    "CheckpointError",
    "ClipConfig",
    "InputError",
    "JaxplainError",
    "Model",
    "ModelNotFoundError",
    "SolverConfig",
    "Want",
    "attribute",
    "build_bank",
    "class_embeddings",
    "classify",
    "counterfactuals",
    "encode_image",
    "encode_text",
    "image_forward",
    "load",
    "save",
    "text_forward",
    "zero_shot_probs",
]

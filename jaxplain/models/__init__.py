"""CLIP in JAX: configs, pure forward functions, checkpoint conversion and loading."""

from jaxplain.models.bundle import Model, fingerprint
from jaxplain.models.clip import (
    embed_patches,
    embed_tokens,
    encode_image,
    encode_text,
    image_forward,
    init_params,
    logits,
    text_forward,
)
from jaxplain.models.config import ClipConfig, TextConfig, VisionConfig, config_from_hf_dict
from jaxplain.models.loading import load, save, save_checkpoint

__all__ = [
    "ClipConfig",
    "Model",
    "TextConfig",
    "VisionConfig",
    "config_from_hf_dict",
    "embed_patches",
    "embed_tokens",
    "encode_image",
    "encode_text",
    "fingerprint",
    "image_forward",
    "init_params",
    "load",
    "logits",
    "save",
    "save_checkpoint",
    "text_forward",
]

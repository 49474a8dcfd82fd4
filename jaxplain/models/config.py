"""Frozen configuration dataclasses for CLIP, read from a Hugging Face ``config.json``.

The configs are hashable, so jitted functions take them as static arguments.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from jaxplain.errors import CheckpointError

ACTIVATIONS = ("quick_gelu", "gelu", "gelu_new", "gelu_pytorch_tanh", "relu")


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """The text tower: a causal transformer over BPE tokens, pooled at the end-of-text token."""

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_layers: int = 12
    num_heads: int = 8
    max_positions: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    eos_token_id: int = 49407
    bos_token_id: int = 49406
    pad_token_id: int = 1

    @property
    def pool_by_argmax(self) -> bool:
        """Checkpoints whose config says ``eos_token_id == 2`` pool at the highest token id.

        That value was a long-standing mistake in the reference configs; the reference model keeps
        the old behaviour for them, and so does jaxplain.
        """
        return self.eos_token_id == 2


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """The image tower: a ViT with a class token, pre- and post-layer norms."""

    image_size: int = 224
    patch_size: int = 32
    num_channels: int = 3
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_layers: int = 12
    num_heads: int = 12
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5

    @property
    def grid_size(self) -> int:
        """Patches along one side of the image."""
        return self.image_size // self.patch_size

    @property
    def num_positions(self) -> int:
        """Tokens per image: the patches plus the class token."""
        return self.grid_size**2 + 1


@dataclasses.dataclass(frozen=True)
class ClipConfig:
    """A two-tower CLIP model: both towers project into a shared ``projection_dim`` space."""

    text: TextConfig = TextConfig()
    vision: VisionConfig = VisionConfig()
    projection_dim: int = 512
    logit_scale_init: float = 2.6592

    def to_hf_dict(self) -> dict[str, Any]:
        """The ``config.json`` content that transformers' ``CLIPModel`` reads."""
        t, v = self.text, self.vision
        return {
            "architectures": ["CLIPModel"],
            "model_type": "clip",
            "projection_dim": self.projection_dim,
            "logit_scale_init_value": self.logit_scale_init,
            "text_config": {
                "model_type": "clip_text_model",
                "vocab_size": t.vocab_size,
                "hidden_size": t.hidden_size,
                "intermediate_size": t.intermediate_size,
                "num_hidden_layers": t.num_layers,
                "num_attention_heads": t.num_heads,
                "max_position_embeddings": t.max_positions,
                "hidden_act": t.hidden_act,
                "layer_norm_eps": t.layer_norm_eps,
                "eos_token_id": t.eos_token_id,
                "bos_token_id": t.bos_token_id,
                "pad_token_id": t.pad_token_id,
                "projection_dim": self.projection_dim,
            },
            "vision_config": {
                "model_type": "clip_vision_model",
                "image_size": v.image_size,
                "patch_size": v.patch_size,
                "num_channels": v.num_channels,
                "hidden_size": v.hidden_size,
                "intermediate_size": v.intermediate_size,
                "num_hidden_layers": v.num_layers,
                "num_attention_heads": v.num_heads,
                "hidden_act": v.hidden_act,
                "layer_norm_eps": v.layer_norm_eps,
                "projection_dim": self.projection_dim,
            },
        }


def _pick(d: dict[str, Any], key: str, default: Any, where: str) -> Any:
    value = d.get(key, default)
    if value is None:
        value = default
    if isinstance(value, (list, tuple)):
        # image_size / patch_size may be given as a square pair; eos_token_id as a list.
        if len(set(value)) != 1:
            raise CheckpointError(f"{where}.{key} = {value!r}: only square images and one id are supported")
        value = value[0]
    return value


def config_from_hf_dict(d: dict[str, Any], source: str = "config.json") -> ClipConfig:
    """Build a :class:`ClipConfig` from the dictionary of a Hugging Face CLIP ``config.json``.

    Missing keys take the reference defaults (as transformers does); unsupported values raise
    :class:`~jaxplain.errors.CheckpointError` naming the key.
    """
    model_type = d.get("model_type", "clip")
    if model_type != "clip":
        raise CheckpointError(f"{source}: model_type is {model_type!r}; jaxplain.load reads 'clip' checkpoints")
    tdict = d.get("text_config") or d.get("text_config_dict") or {}
    vdict = d.get("vision_config") or d.get("vision_config_dict") or {}
    td, vd = TextConfig(), VisionConfig()
    text = TextConfig(
        **{
            f.name: _pick(tdict, hf, getattr(td, f.name), f"{source}: text_config")
            for f, hf in zip(dataclasses.fields(TextConfig), _TEXT_KEYS)
        }
    )
    vision = VisionConfig(
        **{
            f.name: _pick(vdict, hf, getattr(vd, f.name), f"{source}: vision_config")
            for f, hf in zip(dataclasses.fields(VisionConfig), _VISION_KEYS)
        }
    )
    for where, cfg in (("text_config", text), ("vision_config", vision)):
        if cfg.hidden_act not in ACTIVATIONS:
            raise CheckpointError(f"{source}: {where}.hidden_act = {cfg.hidden_act!r} is not one of {ACTIVATIONS}")
        if cfg.hidden_size % cfg.num_heads:
            raise CheckpointError(
                f"{source}: {where}.hidden_size {cfg.hidden_size} is not divisible by "
                f"num_attention_heads {cfg.num_heads}"
            )
    if vision.image_size % vision.patch_size:
        raise CheckpointError(
            f"{source}: vision_config.image_size {vision.image_size} is not a multiple of "
            f"patch_size {vision.patch_size}"
        )
    projection_dim = d.get("projection_dim") or tdict.get("projection_dim") or 512
    return ClipConfig(
        text=text,
        vision=vision,
        projection_dim=int(projection_dim),
        logit_scale_init=float(d.get("logit_scale_init_value", 2.6592)),
    )


# Hugging Face key for each dataclass field, in field order.
_TEXT_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "max_position_embeddings",
    "hidden_act",
    "layer_norm_eps",
    "eos_token_id",
    "bos_token_id",
    "pad_token_id",
)
_VISION_KEYS = (
    "image_size",
    "patch_size",
    "num_channels",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "hidden_act",
    "layer_norm_eps",
)


def read_config(directory: str | Path) -> ClipConfig:
    """Read ``config.json`` from a checkpoint directory."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{directory}: no config.json (is this a Hugging Face CLIP checkpoint directory?)")
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read it as JSON ({e})") from None
    return config_from_hf_dict(d, source=str(path))

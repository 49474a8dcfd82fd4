"""Frozen configuration dataclasses for CLIP, read from a Hugging Face ``config.json``.

The configs are hashable, so jitted functions take them as static arguments.
"""

from __future__ import annotations

import dataclasses
import json
import math
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
    """The image tower: a ViT with a class token, pre- and post-layer norms.

    ``pre_norm=False``: no layer norm between the embeddings and the first block (timm's ViT, as in SLIP);
    the params then hold no ``pre_ln``.
    """

    image_size: int = 224
    patch_size: int = 32
    num_channels: int = 3
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_layers: int = 12
    num_heads: int = 12
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    pre_norm: bool = True  # not read from a Hugging Face config (see ClipConfig.to_hf_dict)

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
        # A jaxplain extension, written only where it differs from CLIP (a CLIP config stays as transformers writes
        # it). config_from_hf_dict does not read it: the HF CLIP converter always has a pre-LN; SLIP's loader sets it.
        no_pre_norm = {} if v.pre_norm else {"pre_norm": False}
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
                **no_pre_norm,
            },
        }


# What each value must be, field by field: "size" a positive integer, "id" a non-negative integer, "eps" a
# positive finite number, "act" one of ACTIVATIONS, "channels" 3 (images are read as RGB); "finite" (a finite
# number) is the top-level logit_scale_init_value's.
_TEXT_KINDS = ("size", "size", "size", "size", "size", "size", "act", "eps", "id", "id", "id")
_VISION_KINDS = ("size", "size", "channels", "size", "size", "size", "size", "act", "eps")
# Keys that may be given as a list of equal values: a square image's two sides, a list of token ids.
_LIST_KEYS = ("image_size", "patch_size", "eos_token_id", "bos_token_id", "pad_token_id")


def _short(value: Any, n: int = 60) -> str:
    """``repr(value)``, cut to ``n`` characters."""
    text = repr(value)
    return text if len(text) <= n else text[: n - 1] + "…"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_value(value: Any, kind: str, key: str, source: str) -> Any:
    """``value`` if it is of ``kind`` (see ``_TEXT_KINDS``); else a :class:`CheckpointError` naming ``key``."""
    if kind == "size" and _is_int(value) and value > 0:
        return value
    if kind == "id" and _is_int(value) and value >= 0:
        return value
    if kind == "channels" and _is_int(value) and value == 3:
        return value
    if kind == "eps" and _is_number(value) and value > 0:
        return float(value)
    if kind == "finite" and _is_number(value):
        return float(value)
    if kind == "act" and isinstance(value, str) and value in ACTIVATIONS:
        return value
    want = {
        "size": "a positive integer",
        "id": "a non-negative integer",
        "channels": "3 (images are read as RGB)",
        "eps": "a positive finite number",
        "finite": "a finite number",
        "act": f"one of {', '.join(ACTIVATIONS)}",
    }[kind]
    raise CheckpointError(f"{source}: {key!r} must be {want}, got {_short(value)}")


def _section(d: dict[str, Any], name: str, source: str) -> tuple[str, dict[str, Any]]:
    """The tower dictionary ``name`` (or its old ``<name>_dict`` form) and the key it was read from."""
    for key in (name, f"{name}_dict"):
        value = d.get(key)
        if value is None:
            continue
        if not isinstance(value, dict):
            raise CheckpointError(
                f"{source}: {key!r} must be a JSON object, got {type(value).__name__} {_short(value)}"
            )
        return key, value
    return name, {}


def _field(d: dict[str, Any], key: str, default: Any, kind: str, where: str, source: str) -> Any:
    """The value of ``key`` in the tower dictionary ``d`` (``default`` when missing or null), checked."""
    value = d.get(key)
    if value is None:
        return default
    name = f"{where}.{key}"
    if isinstance(value, list) and key in _LIST_KEYS:
        what = "only square images are" if key in ("image_size", "patch_size") else "only one token id is"
        if not value or any(v != value[0] or type(v) is not type(value[0]) for v in value):
            raise CheckpointError(f"{source}: {name!r} is {_short(value)}: {what} supported")
        value = value[0]
    return _check_value(value, kind, name, source)


def config_from_hf_dict(d: dict[str, Any], source: str = "config.json") -> ClipConfig:
    """Build a :class:`ClipConfig` from the dictionary of a Hugging Face CLIP ``config.json``.

    Missing (or null) keys take the reference defaults, as transformers does. Every value is checked
    here, in one place, before any of it is used: a value of the wrong type or out of range (a size that
    is a string, zero or negative; a tower that is not an object; attention heads that do not divide the
    width; an unknown activation) raises :class:`~jaxplain.errors.CheckpointError` naming ``source`` and
    the key, e.g. ``config.json: 'vision_config.hidden_size' must be a positive integer, got '768'``.
    """
    if not isinstance(d, dict):
        raise CheckpointError(f"{source}: must hold a JSON object, got {type(d).__name__} {_short(d)}")
    model_type = d.get("model_type", "clip")
    if model_type != "clip":
        raise CheckpointError(f"{source}: model_type is {model_type!r}; jaxplain.load reads 'clip' checkpoints")
    towers = {}
    for name, cls, keys, kinds in (
        ("text_config", TextConfig, _TEXT_KEYS, _TEXT_KINDS),
        ("vision_config", VisionConfig, _VISION_KEYS, _VISION_KINDS),
    ):
        where, section = _section(d, name, source)
        defaults = cls()
        towers[name] = cls(
            **{
                f.name: _field(section, hf, getattr(defaults, f.name), kind, where, source)
                # the fields after the Hugging Face ones (VisionConfig.pre_norm) are jaxplain's own: defaults here
                for f, hf, kind in zip(dataclasses.fields(cls)[: len(keys)], keys, kinds, strict=True)
            }
        )
        cfg = towers[name]
        if cfg.hidden_size % cfg.num_heads:
            raise CheckpointError(
                f"{source}: '{where}.hidden_size' ({cfg.hidden_size}) must be divisible by "
                f"'{where}.num_attention_heads' ({cfg.num_heads})"
            )
    text, vision = towers["text_config"], towers["vision_config"]
    if vision.image_size % vision.patch_size:
        where = _section(d, "vision_config", source)[0]
        raise CheckpointError(
            f"{source}: '{where}.image_size' ({vision.image_size}) must be a multiple of "
            f"'{where}.patch_size' ({vision.patch_size})"
        )
    if d.get("projection_dim") is not None:
        projection_dim = _check_value(d["projection_dim"], "size", "projection_dim", source)
    else:
        where, section = _section(d, "text_config", source)
        projection_dim = _field(section, "projection_dim", 512, "size", where, source)
    scale = d.get("logit_scale_init_value")
    return ClipConfig(
        text=text,
        vision=vision,
        projection_dim=projection_dim,
        logit_scale_init=2.6592 if scale is None else _check_value(scale, "finite", "logit_scale_init_value", source),
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
    """Read ``config.json`` from a checkpoint directory, checked by :func:`config_from_hf_dict`.

    A missing file, a file that is not UTF-8 JSON, or JSON that is not an object raises
    :class:`~jaxplain.errors.CheckpointError` naming the file.
    """
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{directory}: no config.json (is this a Hugging Face CLIP checkpoint directory?)")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read it as JSON ({e})") from None
    return config_from_hf_dict(d, source=str(path))

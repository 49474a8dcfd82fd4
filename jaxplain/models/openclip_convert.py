"""OpenCLIP native checkpoints (ViT image tower, native text tower) loaded onto jaxplain's CLIP towers.

An OpenCLIP checkpoint directory holds ``open_clip_config.json`` (``{"model_cfg": {...}, "preprocess_cfg":
{...}}``) and ``open_clip_model.safetensors`` in OpenCLIP's own key layout (``visual.conv1.weight``,
``visual.transformer.resblocks.N.attn.in_proj_weight``, ``token_embedding.weight``, ``text_projection``,
...). The architecture of such a model is the CLIP of :mod:`jaxplain.models.clip`: a ViT with a class token,
``ln_pre`` and ``ln_post``, and a causal text transformer pooled at its end-of-text token (the highest id),
with exact GELU, or QuickGELU where ``quick_gelu`` is true.

* :func:`config_from_openclip_dict` / :func:`read_openclip_config` map the config to a
  :class:`~jaxplain.models.config.ClipConfig` and the preprocessing to an
  :class:`~jaxplain.data.images.ImageProcessing`. Every key is known: a variant jaxplain's CLIP does not
  compute (a timm or Hugging Face trunk, a ResNet, attentional pooling, no ``ln_pre``, layer scale, a
  non-causal or differently pooled text tower, a SigLIP-style logit bias, ...) or a key it has never seen
  is a :class:`~jaxplain.errors.CheckpointError` naming the key — never a model loaded wrongly.
* :func:`params_from_openclip_state` converts the tensors strictly: missing, left-over or mis-shaped
  tensors are listed by name.
* :func:`read_openclip_checkpoint` does both for a directory.

open_clip's own SigLIP models (``ViT-B-16-SigLIP`` and kin: a timm ``vit_*_siglip_*`` image trunk with an
attention-pooling head, a bidirectional native text tower pooled at its last position with a biased projection,
``init_logit_bias``) map onto :mod:`jaxplain.models.siglip` instead: :func:`siglip_config_from_openclip_dict`,
:func:`params_from_openclip_siglip_state`, :func:`read_openclip_siglip_checkpoint`.

:func:`load_openclip` is what :func:`jaxplain.load` calls for a directory with ``open_clip_config.json`` and
no ``config.json``: a CLIP-family or a SigLIP-family :class:`~jaxplain.models.bundle.Model`, with its tokenizer
and preprocessing.
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from jaxplain.data.images import ImageProcessing
from jaxplain.data.siglip_inputs import SiglipTokenizer
from jaxplain.data.tokenize import TOKENIZER_FILES, Tokenizer, bundled_bpe_dir
from jaxplain.errors import CheckpointError, InputError
from jaxplain.models.bundle import Model, fingerprint
from jaxplain.models.config import ClipConfig, TextConfig, VisionConfig
from jaxplain.models.convert import check_tensors, set_path

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"

# Non-persistent buffers older checkpoints may carry: the text tower's causal mask (rebuilt here).
IGNORED_KEYS = ("attn_mask",)

# OpenCLIP's defaults (its CLIP's ``init_logit_scale``, the OpenAI image statistics).
DEFAULT_LOGIT_SCALE = math.log(1 / 0.07)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

_INTERPOLATION = {
    "bicubic": int(Image.Resampling.BICUBIC),
    "bilinear": int(Image.Resampling.BILINEAR),
    "nearest": int(Image.Resampling.NEAREST),
}

# --- the config ---------------------------------------------------------------------------------------------
#
# Each tower key is one of: a value read into the ClipConfig (handled by name below); a key whose value must be
# the neutral one (the standard architecture) — anything else is refused; or a key that does not change the
# inference computation of this architecture (training-only settings, settings of other trunks that a present
# native trunk ignores) and is accepted whatever its value. Unknown keys are refused.

_CUSTOM_BLOCK = ("qk_norm", "scaled_cosine_attn", "scale_heads", "scale_attn_inner", "scale_attn", "scale_fc")

_VISION_READ = ("layers", "width", "head_width", "mlp_ratio", "patch_size", "image_size", "norm_kwargs")
_VISION_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "timm_model_name": (None,),
    "ls_init_value": (None,),
    "attentional_pool": (False,),
    "no_ln_pre": (False,),
    "pos_embed_type": ("learnable", "sin_cos_2d"),  # both are a stored [T, D] table added to the tokens
    "final_ln_after_pool": (False,),
    "pool_type": ("tok",),
    "output_tokens": (False,),
    "act_kwargs": (None, {}),
    "block_type": (None, "default"),
    "image_seq_len": (None,),
    **{k: (False,) for k in _CUSTOM_BLOCK},
}
_VISION_IGNORED = (
    "patch_dropout",  # training only
    "attn_pooler_queries",  # used only with attentional_pool
    "attn_pooler_heads",
    "timm_model_pretrained",  # used only with timm_model_name
    "timm_pool",
    "timm_proj",
    "timm_proj_bias",
    "timm_drop",
    "timm_drop_path",
    "timm_model_kwargs",
)

# hf_tokenizer_name: the tokenizer the loader must find in the directory (its end-of-text token must then be the
# highest id, where the text tower pools)
_TEXT_READ = (
    "context_length",
    "vocab_size",
    "width",
    "heads",
    "layers",
    "mlp_ratio",
    "norm_kwargs",
    "hf_tokenizer_name",
)
_TEXT_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "text_arch": ("clip",),
    "hf_model_name": (None,),
    "tokenizer_type": ("",),
    "tokenizer_mode": (None,),
    "variable_text": (False,),
    "ls_init_value": (None,),
    "embed_cls": (False,),
    "no_causal_mask": (False,),
    "final_ln_after_pool": (False,),
    "pool_type": ("argmax",),
    "proj_bias": (False,),
    "proj_type": ("linear",),
    "output_tokens": (False,),
    "act_kwargs": (None, {}),
    "block_type": (None, "default"),
    **{k: (False,) for k in _CUSTOM_BLOCK},
}
_TEXT_IGNORED = (
    "pad_id",  # used only by a bidirectional tower's padding mask
    "bos_id",
    "eos_id",  # used only with pool_type 'eos'
    "tokenizer_kwargs",  # how texts are tokenised, not how the model computes
    "tiktoken_name",
    # settings of the "modern" text tower and of Hugging Face trunks, unused by the native one
    "attention_mode",
    "pos_embed",
    "rope_temperature",
    "mlp_type",
    "norm_type",
    "norm_eps",
    "attn_gated",
    "pre_norm",
    "norm_placement",
    "zero_init_residual",
    "reg_tokens",
    "value_residual",
    "attention_bias",
    "mlp_bias",
    "gate_bias",
    "hf_model_pretrained",
    "hf_proj_type",
    "hf_pooler_type",
    "hf_model_config",
)

_MODEL_READ = ("embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "init_logit_scale")
_MODEL_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "init_logit_bias": (None,),  # SigLIP-style sigmoid models: a different decision
    "nonscalar_logit_scale": (False,),
    "custom_text": (False,),
    "multimodal_cfg": (None,),  # CoCa
    "audio_cfg": (None,),
    "genlip_cfg": (None,),
    "genlap_cfg": (None,),
}
_MODEL_IGNORED = ("output_dict", "cast_dtype")

_PREPROCESS_KEYS = ("size", "mode", "mean", "std", "interpolation", "resize_mode", "fill_color")


def _short(value: Any, n: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 1] + "…"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _bad(source: str, key: str, want: str, value: Any) -> CheckpointError:
    return CheckpointError(f"{source}: {key!r} must be {want}, got {_short(value)}")


def _positive_int(d: dict[str, Any], key: str, default: Any, where: str, source: str, square: bool = False) -> int:
    """``d[key]`` (``default`` when absent or null), a positive integer; ``square`` also takes ``[n, n]``."""
    value = d.get(key)
    if value is None:
        value = default
    name = f"{where}.{key}"
    if square and isinstance(value, (list, tuple)):
        if len(value) != 2 or not all(_is_int(v) for v in value) or value[0] != value[1]:
            raise CheckpointError(
                f"{source}: {name!r} is {_short(value)}: only square images and patches are supported"
            )
        value = value[0]
    if not (_is_int(value) and value > 0):
        raise _bad(source, name, "a positive integer", value)
    return value


def _check_keys(
    d: Any,
    where: str,
    source: str,
    read: tuple[str, ...],
    neutral: dict[str, tuple[Any, ...]],
    ignored: tuple[str, ...],
    arch: str = "native CLIP",
) -> dict[str, Any]:
    """``d`` if it is a JSON object whose every key is known and every neutral key has a supported value
    (``arch`` names the architecture in the messages)."""
    if not isinstance(d, dict):
        raise CheckpointError(f"{source}: {where!r} must be a JSON object, got {type(d).__name__} {_short(d)}")
    for key, value in d.items():
        name = f"{where}.{key}"
        if key in read or key in ignored:
            continue
        if key not in neutral:
            raise CheckpointError(
                f"{source}: {name!r} is not a setting jaxplain knows for OpenCLIP's {arch}; refused rather than "
                "loaded as a model it may not be"
            )
        allowed = neutral[key]
        if not any(value == a and type(value) is type(a) for a in allowed):
            want = " or ".join(json.dumps(a) for a in allowed)
            raise CheckpointError(
                f"{source}: {name!r} is {_short(value)}: this variant is not OpenCLIP's {arch} as jaxplain "
                f"computes it (supported: {want})"
            )
    return d


def _eps(d: dict[str, Any], where: str, source: str) -> float:
    """The layer-norm epsilon a tower's ``norm_kwargs`` sets (only ``eps`` is supported), else 1e-5."""
    kw = d.get("norm_kwargs")
    if kw is None:
        return 1e-5
    name = f"{where}.norm_kwargs"
    if not isinstance(kw, dict) or set(kw) - {"eps"}:
        raise CheckpointError(f"{source}: {name!r} is {_short(kw)}: only {{'eps': ...}} is supported")
    eps = kw.get("eps", 1e-5)
    if not (_is_number(eps) and eps > 0):
        raise _bad(source, f"{name}.eps", "a positive finite number", eps)
    return float(eps)


def _mlp_width(d: dict[str, Any], width: int, where: str, source: str) -> int:
    ratio = d.get("mlp_ratio", 4.0)
    if ratio is None:
        ratio = 4.0
    if not (_is_number(ratio) and ratio > 0 and int(width * ratio) > 0):
        raise _bad(source, f"{where}.mlp_ratio", "a positive number", ratio)
    return int(width * ratio)  # OpenCLIP's MLP width


def config_from_openclip_dict(d: Any, source: str = CONFIG_FILE) -> tuple[ClipConfig, ImageProcessing]:
    """``(ClipConfig, ImageProcessing)`` from the dictionary of an ``open_clip_config.json``.

    ``model_cfg`` maps to jaxplain's CLIP: vision heads ``width // head_width`` (``head_width`` 64 by default),
    MLP width ``int(width * mlp_ratio)``, activation ``"quick_gelu"`` where ``quick_gelu`` is true and exact
    ``"gelu"`` otherwise, layer-norm epsilon 1e-5 (or ``norm_kwargs.eps``), ``projection_dim = embed_dim``,
    ``max_positions = context_length``; the text tower pools at its end-of-text token, CLIP's highest id
    (``eos_token_id = vocab_size - 1``, ``bos_token_id = vocab_size - 2``). ``preprocess_cfg`` maps to an
    :class:`~jaxplain.data.images.ImageProcessing` (``resize_mode`` ``"shortest"``: shorter side resized, then a
    centre crop; ``"squash"``: resized to the square).

    Anything jaxplain would compute differently from OpenCLIP — an unknown key, a non-ViT trunk (``timm_model_name``,
    ``hf_model_name``, ResNet ``layers``), ``attentional_pool``, ``no_ln_pre``, ``final_ln_after_pool``,
    ``output_tokens``, a ``pool_type`` other than ``"tok"``/``"argmax"``, ``init_logit_bias``, layer scale, custom
    attention blocks, an image size that is not a multiple of the patch, ``resize_mode`` ``"longest"`` — raises a
    :class:`~jaxplain.errors.CheckpointError` naming ``source`` and the key.
    """
    if not isinstance(d, dict):
        raise CheckpointError(f"{source}: must hold a JSON object, got {type(d).__name__} {_short(d)}")
    if "model_cfg" not in d:
        raise CheckpointError(f"{source}: no 'model_cfg' (is this an OpenCLIP open_clip_config.json?)")
    m = _check_keys(d["model_cfg"], "model_cfg", source, _MODEL_READ, _MODEL_NEUTRAL, _MODEL_IGNORED)
    for key in ("embed_dim", "vision_cfg", "text_cfg"):
        if m.get(key) is None:
            raise CheckpointError(f"{source}: 'model_cfg.{key}' is missing")
    vc = _check_keys(m["vision_cfg"], "model_cfg.vision_cfg", source, _VISION_READ, _VISION_NEUTRAL, _VISION_IGNORED)
    tc = _check_keys(m["text_cfg"], "model_cfg.text_cfg", source, _TEXT_READ, _TEXT_NEUTRAL, _TEXT_IGNORED)
    embed_dim = _positive_int(m, "embed_dim", None, "model_cfg", source)
    quick = m.get("quick_gelu", False)
    if quick is None:
        quick = False
    if not isinstance(quick, bool):
        raise _bad(source, "model_cfg.quick_gelu", "true or false", quick)
    act = "quick_gelu" if quick else "gelu"
    scale = m.get("init_logit_scale")
    scale = DEFAULT_LOGIT_SCALE if scale is None else scale
    if not _is_number(scale):
        raise _bad(source, "model_cfg.init_logit_scale", "a finite number", scale)

    vw = "model_cfg.vision_cfg"
    if isinstance(vc.get("layers"), (list, tuple)):
        raise CheckpointError(
            f"{source}: '{vw}.layers' is {_short(vc['layers'])}: a ModifiedResNet image tower, not a ViT; refused"
        )
    width = _positive_int(vc, "width", 768, vw, source)
    head_width = _positive_int(vc, "head_width", 64, vw, source)
    if width % head_width:
        raise CheckpointError(
            f"{source}: '{vw}.width' ({width}) must be a multiple of '{vw}.head_width' ({head_width})"
        )
    image_size = _positive_int(vc, "image_size", 224, vw, source, square=True)
    patch_size = _positive_int(vc, "patch_size", 16, vw, source, square=True)
    if image_size % patch_size:
        raise CheckpointError(
            f"{source}: '{vw}.image_size' ({image_size}) must be a multiple of '{vw}.patch_size' ({patch_size})"
        )
    vision = VisionConfig(
        image_size=image_size,
        patch_size=patch_size,
        num_channels=3,
        hidden_size=width,
        intermediate_size=_mlp_width(vc, width, vw, source),
        num_layers=_positive_int(vc, "layers", 12, vw, source),
        num_heads=width // head_width,
        hidden_act=act,
        layer_norm_eps=_eps(vc, vw, source),
    )

    tw = "model_cfg.text_cfg"
    twidth = _positive_int(tc, "width", 512, tw, source)
    heads = _positive_int(tc, "heads", 8, tw, source)
    if twidth % heads:
        raise CheckpointError(f"{source}: '{tw}.width' ({twidth}) must be divisible by '{tw}.heads' ({heads})")
    vocab = _positive_int(tc, "vocab_size", 49408, tw, source)
    if vocab < 2:
        raise _bad(source, f"{tw}.vocab_size", "at least 2", vocab)
    text = TextConfig(
        vocab_size=vocab,
        hidden_size=twidth,
        intermediate_size=_mlp_width(tc, twidth, tw, source),
        num_layers=_positive_int(tc, "layers", 12, tw, source),
        num_heads=heads,
        max_positions=_positive_int(tc, "context_length", 77, tw, source),
        hidden_act=act,
        layer_norm_eps=_eps(tc, tw, source),
        eos_token_id=vocab - 1,
        bos_token_id=vocab - 2,
        pad_token_id=0,
    )
    config = ClipConfig(text=text, vision=vision, projection_dim=embed_dim, logit_scale_init=float(scale))
    return config, _processing(d.get("preprocess_cfg"), image_size, source)


def _processing(p: Any, image_size: int, source: str) -> ImageProcessing:
    """The :class:`ImageProcessing` of a ``preprocess_cfg`` (OpenCLIP's defaults for what it leaves out)."""
    p = {} if p is None else p
    if not isinstance(p, dict):
        raise CheckpointError(f"{source}: 'preprocess_cfg' must be a JSON object, got {type(p).__name__} {_short(p)}")
    for key in p:
        if key not in _PREPROCESS_KEYS:
            raise CheckpointError(f"{source}: 'preprocess_cfg.{key}' is not a preprocessing setting jaxplain knows")
    size = _positive_int(p, "size", image_size, "preprocess_cfg", source, square=True)
    if size != image_size:
        raise CheckpointError(
            f"{source}: 'preprocess_cfg.size' ({size}) must equal 'model_cfg.vision_cfg.image_size' ({image_size})"
        )
    if p.get("mode", "RGB") not in ("RGB", None):
        raise _bad(source, "preprocess_cfg.mode", '"RGB"', p["mode"])
    stats = {}
    for key, default, positive in (("mean", OPENAI_MEAN, False), ("std", OPENAI_STD, True)):
        v = p.get(key)
        v = default if v is None else v
        values = [v] * 3 if _is_number(v) else v if isinstance(v, (list, tuple)) and len(v) == 3 else None
        if values is None or not all(_is_number(x) and (x > 0 or not positive) for x in values):
            want = "3 positive numbers (one per channel)" if positive else "3 numbers (one per channel)"
            raise _bad(source, f"preprocess_cfg.{key}", want, v)
        stats[key] = tuple(float(x) for x in values)
    interp = p.get("interpolation") or "bicubic"
    if interp not in _INTERPOLATION:
        raise _bad(source, "preprocess_cfg.interpolation", f"one of {', '.join(_INTERPOLATION)}", interp)
    mode = p.get("resize_mode") or "shortest"
    fill = p.get("fill_color", 0)
    if fill is not None and not _is_int(fill):
        raise _bad(source, "preprocess_cfg.fill_color", "an integer", fill)
    common = dict(crop=(size, size), mean=stats["mean"], std=stats["std"], resample=_INTERPOLATION[interp])
    if mode == "shortest":
        return ImageProcessing(shortest_edge=size, **common)
    if mode == "squash":
        return ImageProcessing(shortest_edge=None, height=size, width=size, **common)
    if mode == "longest":
        raise CheckpointError(
            f"{source}: 'preprocess_cfg.resize_mode' is 'longest' (resize the longer side, then pad): not supported "
            "by jaxplain's image processing"
        )
    raise _bad(source, "preprocess_cfg.resize_mode", '"shortest" or "squash"', mode)


def read_config_dict(directory: str | Path) -> tuple[Any, Path]:
    """The parsed ``open_clip_config.json`` of a directory and its path. A missing or unreadable file is a
    :class:`CheckpointError` naming it."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory}: no {CONFIG_FILE} (is this an OpenCLIP checkpoint directory?)")
    try:
        return json.loads(path.read_text(encoding="utf-8")), path
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read it as JSON ({e})") from None


def read_openclip_config(directory: str | Path) -> tuple[ClipConfig, ImageProcessing]:
    """``(ClipConfig, ImageProcessing)`` of an OpenCLIP checkpoint directory's ``open_clip_config.json``, checked
    by :func:`config_from_openclip_dict`. A missing or unreadable file is a :class:`CheckpointError` naming it."""
    d, path = read_config_dict(directory)
    return config_from_openclip_dict(d, source=str(path))


# --- the tensors --------------------------------------------------------------------------------------------
#
# How a tensor is stored: "linear" is torch's [out, in] (transposed here); "patch" the conv kernel [D, C, p, p]
# (flattened to [C·p·p, D]); "in_proj" the stacked q, k, v [3D, D] weight or [3D] bias (split into the q, k, v
# dense params; the path names the leaf, "kernel" or "bias"); "plain" kept as is (OpenCLIP's own projections
# ``visual.proj`` and ``text_projection`` are already [in, out]).


def _specs(config: ClipConfig) -> Iterator[tuple[str, tuple, int | None, str, tuple[int, ...]]]:
    """Yield ``(openclip_key, param_path, layer_index, kind, shape)`` for every tensor of the model."""
    t, v, e = config.text, config.vision, config.projection_dim
    td, vd = t.hidden_size, v.hidden_size
    yield "logit_scale", ("logit_scale",), None, "plain", ()
    yield "token_embedding.weight", ("text", "token_embedding"), None, "plain", (t.vocab_size, td)
    yield "positional_embedding", ("text", "position_embedding"), None, "plain", (t.max_positions, td)
    yield "text_projection", ("text", "projection"), None, "plain", (td, e)
    patch = (vd, v.num_channels, v.patch_size, v.patch_size)
    yield "visual.conv1.weight", ("vision", "patch_embedding"), None, "patch", patch
    yield "visual.class_embedding", ("vision", "class_embedding"), None, "plain", (vd,)
    yield "visual.positional_embedding", ("vision", "position_embedding"), None, "plain", (v.num_positions, vd)
    yield "visual.proj", ("vision", "projection"), None, "plain", (vd, e)
    for name, leaf in (("weight", "scale"), ("bias", "bias")):
        yield f"ln_final.{name}", ("text", "final_ln", leaf), None, "plain", (td,)
        yield f"visual.ln_pre.{name}", ("vision", "pre_ln", leaf), None, "plain", (vd,)
        yield f"visual.ln_post.{name}", ("vision", "post_ln", leaf), None, "plain", (vd,)
    for tower, prefix, cfg in (("text", "", t), ("vision", "visual.", v)):
        d, f = cfg.hidden_size, cfg.intermediate_size
        for i in range(cfg.num_layers):
            base = f"{prefix}transformer.resblocks.{i}"
            for ln, short in (("ln_1", "ln1"), ("ln_2", "ln2")):
                yield f"{base}.{ln}.weight", (tower, "layers", short, "scale"), i, "plain", (d,)
                yield f"{base}.{ln}.bias", (tower, "layers", short, "bias"), i, "plain", (d,)
            yield f"{base}.attn.in_proj_weight", (tower, "layers", "attn", "kernel"), i, "in_proj", (3 * d, d)
            yield f"{base}.attn.in_proj_bias", (tower, "layers", "attn", "bias"), i, "in_proj", (3 * d,)
            for name, path, shape in (
                ("attn.out_proj", ("attn", "out"), (d, d)),
                ("mlp.c_fc", ("mlp", "fc1"), (f, d)),
                ("mlp.c_proj", ("mlp", "fc2"), (d, f)),
            ):
                yield f"{base}.{name}.weight", (tower, "layers", *path, "kernel"), i, "linear", shape
                yield f"{base}.{name}.bias", (tower, "layers", *path, "bias"), i, "plain", (shape[0],)


def expected_openclip_keys(config: ClipConfig) -> list[str]:
    """Every tensor name an OpenCLIP checkpoint of this config must hold."""
    return [s[0] for s in _specs(config)]


def params_from_openclip_state(
    state: dict[str, np.ndarray], config: ClipConfig, source: str = "checkpoint"
) -> dict[str, Any]:
    """OpenCLIP tensors → jaxplain's CLIP params (NumPy float32 arrays, layers stacked; see
    :func:`jaxplain.models.clip.init_params` for the layout).

    The stacked ``in_proj`` weight and bias are split into the q, k and v dense params, torch's ``[out, in]``
    linear weights transposed, the patch conv flattened; ``visual.proj`` and ``text_projection`` are already
    ``[in, out]``. Raises :class:`~jaxplain.errors.CheckpointError` naming every missing, left-over or mis-shaped
    tensor (a left-over one is, e.g., the layer scale or logit bias of a variant the config did not declare).
    """
    specs = list(_specs(config))
    check_tensors(state, specs, IGNORED_KEYS, source, expected_from="the config", config_name="its OpenCLIP config")

    layered: dict[tuple, list] = {}
    params: dict[str, Any] = {}
    for key, path, layer, kind, _ in specs:
        x = np.asarray(state[key], dtype=np.float32)
        if kind == "in_proj":
            *head, leaf = path
            for name, part in zip(("q", "k", "v"), np.split(x, 3, axis=0)):
                layered.setdefault((*head, name, leaf), []).append(part.T if leaf == "kernel" else part)
            continue
        if kind == "linear":
            x = x.T
        elif kind == "patch":
            x = x.reshape(x.shape[0], -1).T
        if layer is None:
            set_path(params, path, x)
        else:
            layered.setdefault(path, []).append(x)
    for path, xs in layered.items():
        set_path(params, path, np.stack(xs))
    return params


def read_openclip_checkpoint(directory: str | Path) -> tuple[dict[str, Any], ClipConfig, ImageProcessing]:
    """``(params, config, processing)`` of an OpenCLIP checkpoint directory (``open_clip_config.json`` and
    ``open_clip_model.safetensors``), both checked strictly (:func:`read_openclip_config`,
    :func:`params_from_openclip_state`; non-finite weights are refused too). Pickled weights
    (``open_clip_pytorch_model.bin``) are never read."""
    directory = Path(directory)
    config, processing = read_openclip_config(directory)
    state, path = _read_weights(directory)
    return params_from_openclip_state(state, config, source=str(path)), config, processing


def _read_weights(directory: Path) -> tuple[dict[str, np.ndarray], Path]:
    """The tensors of ``open_clip_model.safetensors`` (checked finite) and its path; pickles are never read."""
    from jaxplain.models.loading import _read_safetensors

    path = directory / WEIGHTS_FILE
    if not path.is_file():
        pickled = [n.name for n in sorted(directory.glob("*.bin"))]
        hint = f" ({', '.join(pickled)} is pickled, which jaxplain never unpickles)" if pickled else ""
        raise CheckpointError(f"{directory}: no {WEIGHTS_FILE}{hint}")
    return _read_safetensors(path), path


# --- open_clip's SigLIP: a timm ViT trunk with an attention-pooling head, a bidirectional native text tower ------
#
# timm's SigLIP ViTs with a MAP head, as timm/models/vision_transformer.py defines them: name → (width, depth, heads,
# mlp_ratio, patch, image size, activation). All have no class token, no pre-norm, a patch convolution with a bias,
# biased qkv, timm's LayerNorm (eps 1e-6) and an AttentionPoolLatent head (one latent query, biased q and kv, the
# trunk's MLP ratio and activation). The activation is timm's default nn.GELU (exact) unless the model sets
# act_layer='gelu_tanh'; open_clip's quick_gelu never reaches a timm trunk.

_EXACT, _TANH = "gelu", "gelu_pytorch_tanh"


def _timm_siglip_trunks() -> dict[str, tuple[int, int, int, float, int, int, str]]:
    trunks = {"vit_base_patch32_siglip_256": (768, 12, 12, 4.0, 32, 256, _TANH)}
    for size in (224, 256, 384, 512):
        trunks[f"vit_base_patch16_siglip_{size}"] = (768, 12, 12, 4.0, 16, size, _EXACT)
    for size in (256, 384, 512):
        trunks[f"vit_large_patch16_siglip_{size}"] = (1024, 24, 16, 4.0, 16, size, _TANH if size == 512 else _EXACT)
        trunks[f"vit_so400m_patch16_siglip_{size}"] = (1152, 27, 16, 3.7362, 16, size, _TANH)
    for size in (224, 378, 384):
        trunks[f"vit_so400m_patch14_siglip_{size}"] = (1152, 27, 16, 3.7362, 14, size, _EXACT)
    for size in (256, 384):
        trunks[f"vit_giantopt_patch16_siglip_{size}"] = (1536, 40, 16, 4.0, 16, size, _TANH)
    return trunks


TIMM_SIGLIP_TRUNKS = _timm_siglip_trunks()
"""The timm trunks jaxplain reads: name → ``(width, depth, heads, mlp_ratio, patch, image_size, activation)``."""

# timm.create_model keyword arguments (vision_cfg.timm_model_kwargs) that change only these numbers
_TIMM_KWARGS = ("embed_dim", "depth", "num_heads", "mlp_ratio", "patch_size", "img_size", "act_layer")
_TIMM_ACTS = {"gelu": _EXACT, "gelu_tanh": _TANH}

_SL_VISION_READ = ("timm_model_name", "timm_model_kwargs", "image_size")
_SL_VISION_NEUTRAL: dict[str, tuple[Any, ...]] = {"timm_pool": ("map",), "timm_proj": ("none",)}
# settings of the native ViT (a timm trunk replaces it, open_clip ignores them) and training-only ones
_SL_VISION_IGNORED = (
    *_VISION_READ,
    *(k for k in _VISION_NEUTRAL if k != "timm_model_name"),
    *(k for k in _VISION_IGNORED if k not in ("timm_pool", "timm_proj")),
)

_SL_TEXT_READ = (
    *_TEXT_READ,
    "act_kwargs",
    "tokenizer_kwargs",
    "proj_type",
    "proj_bias",
)
_SL_TEXT_NEUTRAL: dict[str, tuple[Any, ...]] = {
    **{k: v for k, v in _TEXT_NEUTRAL.items() if k not in ("proj_bias", "proj_type", "act_kwargs")},
    "no_causal_mask": (True,),  # SigLIP's text tower is bidirectional ...
    "pool_type": ("last",),  # ... and pooled at its last position
}
_SL_TEXT_IGNORED = tuple(k for k in _TEXT_IGNORED if k != "tokenizer_kwargs")

_SL_MODEL_READ = (*_MODEL_READ, "init_logit_bias", "custom_text", "nonscalar_logit_scale")
_SL_MODEL_NEUTRAL = {k: v for k, v in _MODEL_NEUTRAL.items() if k not in _SL_MODEL_READ}

# open_clip's text cleaning before a Hugging Face tokenizer (tokenizer_kwargs.clean; HFTokenizer's default)
CLEAN_MODES = ("whitespace", "lower", "canonicalize")
DEFAULT_CLEAN = "whitespace"


@dataclasses.dataclass(frozen=True)
class SiglipLayout:
    """Where an open_clip SigLIP checkpoint keeps what :mod:`jaxplain.models.siglip`'s params hold, and how its
    texts are tokenised.

    Attributes:
      text_prefix: ``"text."`` (``CustomTextCLIP``, ``custom_text`` true) or ``""`` (``CLIP``).
      text_projection: ``"linear"`` (an ``nn.Linear`` with a bias, ``proj_bias`` true), ``"matrix"`` (a
        ``[width, embed_dim]`` parameter without bias) or ``"none"`` (``proj_type`` ``"none"``: the identity).
      scalar_shape: the shape of ``logit_scale`` and ``logit_bias``: ``()``, or ``(1,)`` with
        ``nonscalar_logit_scale``.
      hf_tokenizer_name: the Hugging Face tokenizer the config names (None where it names none).
      clean: open_clip's cleaning of a text before the tokenizer sees it (one of :data:`CLEAN_MODES`).
    """

    text_prefix: str = "text."
    text_projection: str = "linear"
    scalar_shape: tuple[int, ...] = ()
    hf_tokenizer_name: str | None = None
    clean: str = DEFAULT_CLEAN


def _square(value: Any, name: str, source: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise CheckpointError(f"{source}: {name!r} is {_short(value)}: only square images are supported")
        value = value[0]
    if not (_is_int(value) and value > 0):
        raise _bad(source, name, "a positive integer", value)
    return value


def _trunk_name(vc: Any, source: str) -> str:
    """The vision_cfg's ``timm_model_name``, if it is a trunk jaxplain reads."""
    name = vc.get("timm_model_name") if isinstance(vc, dict) else None
    if name not in TIMM_SIGLIP_TRUNKS:
        raise CheckpointError(
            f"{source}: 'model_cfg.vision_cfg.timm_model_name' is {_short(name)}: jaxplain reads timm trunks only as "
            f"open_clip's SigLIP ViTs with an attention-pooling head ({', '.join(sorted(TIMM_SIGLIP_TRUNKS))}); "
            "other timm trunks (ConvNeXt, EVA, average-pooled or NaFlex ViTs, ...) are not supported"
        )
    return name


def _timm_trunk(vc: dict[str, Any], source: str) -> tuple[int, int, int, int, int, int, str]:
    """``(width, depth, heads, mlp_width, patch, image_size, activation)`` of a vision_cfg's timm trunk."""
    where = "model_cfg.vision_cfg"
    name = _trunk_name(vc, source)
    width, depth, heads, ratio, patch, size, act = TIMM_SIGLIP_TRUNKS[name]
    kw = vc.get("timm_model_kwargs") or {}
    if not isinstance(kw, dict):
        raise _bad(source, f"{where}.timm_model_kwargs", "a JSON object", kw)
    for key, value in kw.items():
        k = f"{where}.timm_model_kwargs.{key}"
        if key not in _TIMM_KWARGS:
            raise CheckpointError(
                f"{source}: {k!r} is not supported (jaxplain reads only {', '.join(_TIMM_KWARGS)} there)"
            )
        if key == "act_layer":
            if value not in _TIMM_ACTS:
                raise _bad(source, k, " or ".join(json.dumps(a) for a in _TIMM_ACTS), value)
            act = _TIMM_ACTS[value]
        elif key == "mlp_ratio":
            if not (_is_number(value) and value > 0):
                raise _bad(source, k, "a positive number", value)
            ratio = value
        elif key == "img_size":
            size = _square(value, k, source)
        elif key == "patch_size":
            patch = _square(value, k, source)
        else:
            if not (_is_int(value) and value > 0):
                raise _bad(source, k, "a positive integer", value)
            width, depth, heads = {"embed_dim": (value, depth, heads), "depth": (width, value, heads)}.get(
                key, (width, depth, value)
            )
    if width % heads:
        raise CheckpointError(f"{source}: the trunk's width ({width}) must be divisible by its heads ({heads})")
    if patch > size:
        raise CheckpointError(f"{source}: the trunk's patch ({patch}) is larger than its image size ({size})")
    if int(width * ratio) < 1:
        raise _bad(source, f"{where}.timm_model_kwargs.mlp_ratio", "a ratio that leaves an MLP", ratio)
    image_size = vc.get("image_size", 224)
    image_size = _square(224 if image_size is None else image_size, f"{where}.image_size", source)
    if image_size != size:
        raise CheckpointError(
            f"{source}: '{where}.image_size' ({image_size}) differs from the image size of the timm trunk "
            f"{name} ({size}; set by the name or timm_model_kwargs.img_size)"
        )
    return width, depth, heads, int(width * ratio), patch, size, act


def _text_act(tc: dict[str, Any], quick: bool, source: str) -> str:
    """The text tower's activation: open_clip's nn.GELU (or QuickGELU) with its ``act_kwargs``."""
    kw = tc.get("act_kwargs") or {}
    name = "model_cfg.text_cfg.act_kwargs"
    if not isinstance(kw, dict) or set(kw) - {"approximate"} or kw.get("approximate", "none") not in ("none", "tanh"):
        raise _bad(source, name, '{"approximate": "tanh"} or {"approximate": "none"} (nn.GELU\'s)', kw)
    if quick:
        if kw:
            raise CheckpointError(f"{source}: {name!r} with 'model_cfg.quick_gelu' true: QuickGELU takes no arguments")
        return "quick_gelu"
    return _TANH if kw.get("approximate") == "tanh" else _EXACT


def _clean_mode(tc: dict[str, Any], source: str) -> str:
    kw = tc.get("tokenizer_kwargs") or {}
    name = "model_cfg.text_cfg.tokenizer_kwargs"
    if not isinstance(kw, dict):
        raise _bad(source, name, "a JSON object", kw)
    for key, value in kw.items():
        if key == "strip_sep_token" and value is False:
            continue
        if key != "clean":
            raise CheckpointError(f"{source}: '{name}.{key}' is {_short(value)}: jaxplain supports only 'clean' there")
    clean = kw.get("clean", DEFAULT_CLEAN)
    if clean not in CLEAN_MODES:
        raise _bad(source, f"{name}.clean", " or ".join(json.dumps(c) for c in CLEAN_MODES), clean)
    return clean


def siglip_config_from_openclip_dict(d: Any, source: str = CONFIG_FILE) -> tuple[Any, Any, SiglipLayout]:
    """``(SiglipConfig, processing, SiglipLayout)`` from the dictionary of an open_clip SigLIP
    ``open_clip_config.json`` (``vision_cfg.timm_model_name`` a timm SigLIP ViT, see :data:`TIMM_SIGLIP_TRUNKS`).

    The image tower is the timm trunk (its numbers from the name, overridden by ``timm_model_kwargs``; LayerNorm
    eps 1e-6; the activation timm gives that trunk), pooled by its attention-pooling head: ``timm_pool`` must be
    ``"map"`` and ``timm_proj`` ``"none"``, so the embedding is the head's output and ``embed_dim`` must be the
    trunk's width. The text tower is open_clip's native one, bidirectional (``no_causal_mask`` true) and pooled at
    its last position (``pool_type`` ``"last"``), after ``ln_final`` (eps from ``norm_kwargs``, else 1e-5), with
    ``nn.GELU`` (``act_kwargs.approximate`` ``"tanh"``: the tanh form) and MLP width ``int(width * mlp_ratio)``;
    its projection to ``embed_dim`` is a biased linear (``proj_bias`` true), a bias-free matrix, or none
    (``proj_type`` ``"none"``, where the text width must be ``embed_dim``). ``init_logit_bias`` must be set (the
    sigmoid decision). The processing is :class:`~jaxplain.data.siglip_inputs.SiglipImageProcessing` for
    ``resize_mode`` ``"squash"`` (open_clip's SigLIP default), else :class:`ImageProcessing`.

    Anything else — another timm trunk or pooling, an image size the trunk does not take, a causal or
    differently pooled text tower, an unknown key — is a :class:`CheckpointError` naming ``source`` and the key.
    """
    from jaxplain.data.siglip_inputs import SiglipImageProcessing
    from jaxplain.models.siglip import SiglipConfig, SiglipTextConfig, SiglipVisionConfig

    if not isinstance(d, dict):
        raise CheckpointError(f"{source}: must hold a JSON object, got {type(d).__name__} {_short(d)}")
    if "model_cfg" not in d:
        raise CheckpointError(f"{source}: no 'model_cfg' (is this an OpenCLIP open_clip_config.json?)")
    arch = "SigLIP (timm ViT trunk, native text tower)"
    m = _check_keys(d["model_cfg"], "model_cfg", source, _SL_MODEL_READ, _SL_MODEL_NEUTRAL, _MODEL_IGNORED, arch)
    for key in ("embed_dim", "vision_cfg", "text_cfg"):
        if m.get(key) is None:
            raise CheckpointError(f"{source}: 'model_cfg.{key}' is missing")
    _trunk_name(m["vision_cfg"], source)  # another trunk is the first thing to say
    vc = _check_keys(
        m["vision_cfg"], "model_cfg.vision_cfg", source, _SL_VISION_READ, _SL_VISION_NEUTRAL, _SL_VISION_IGNORED, arch
    )
    if "timm_pool" not in vc or "timm_proj" not in vc:  # open_clip's defaults ('avg', 'linear') are not SigLIP's
        missing = "timm_pool" if "timm_pool" not in vc else "timm_proj"
        raise CheckpointError(
            f"{source}: 'model_cfg.vision_cfg.{missing}' is not set (open_clip's default is not SigLIP's): "
            'jaxplain reads timm trunks with timm_pool "map" and timm_proj "none"'
        )
    tc = _check_keys(
        m["text_cfg"], "model_cfg.text_cfg", source, _SL_TEXT_READ, _SL_TEXT_NEUTRAL, _SL_TEXT_IGNORED, arch
    )
    if not _is_number(m.get("init_logit_bias")):
        raise CheckpointError(
            f"{source}: 'model_cfg.init_logit_bias' is {_short(m.get('init_logit_bias'))}: a timm trunk is read only "
            "in open_clip's SigLIP models, whose sigmoid decision has a logit bias (a number)"
        )
    for key in ("quick_gelu", "custom_text", "nonscalar_logit_scale"):
        if not isinstance(m.get(key, False), bool):
            raise _bad(source, f"model_cfg.{key}", "true or false", m[key])
    if m.get("init_logit_scale") is not None and not _is_number(m["init_logit_scale"]):
        raise _bad(source, "model_cfg.init_logit_scale", "a finite number", m["init_logit_scale"])
    embed_dim = _positive_int(m, "embed_dim", None, "model_cfg", source)

    width, depth, heads, mlp, patch, size, act = _timm_trunk(vc, source)
    if width != embed_dim:
        raise CheckpointError(
            f"{source}: 'model_cfg.embed_dim' ({embed_dim}) differs from the width of the timm trunk ({width}): "
            'with timm_proj "none" the image embedding is the trunk\'s pooled output'
        )
    vision = SiglipVisionConfig(
        image_size=size,
        patch_size=patch,
        num_channels=3,
        hidden_size=width,
        intermediate_size=mlp,
        num_layers=depth,
        num_heads=heads,
        hidden_act=act,
        layer_norm_eps=1e-6,
    )

    tw = "model_cfg.text_cfg"
    twidth = _positive_int(tc, "width", 512, tw, source)
    theads = _positive_int(tc, "heads", 8, tw, source)
    if twidth % theads:
        raise CheckpointError(f"{source}: '{tw}.width' ({twidth}) must be divisible by '{tw}.heads' ({theads})")
    proj_type = tc.get("proj_type", "linear")
    if proj_type not in ("linear", "none"):
        raise _bad(source, f"{tw}.proj_type", '"linear" or "none"', proj_type)
    proj_bias = tc.get("proj_bias", False)
    if not isinstance(proj_bias, bool):
        raise _bad(source, f"{tw}.proj_bias", "true or false", proj_bias)
    projection = "none" if proj_type == "none" else "linear" if proj_bias else "matrix"
    if projection == "none" and twidth != embed_dim:
        raise CheckpointError(
            f"{source}: '{tw}.proj_type' is \"none\" but the text width ({twidth}) is not 'model_cfg.embed_dim' "
            f"({embed_dim}): the two embeddings could not be compared"
        )
    name = tc.get("hf_tokenizer_name")
    if name is not None and not isinstance(name, str):
        raise _bad(source, f"{tw}.hf_tokenizer_name", "a string", name)
    text = SiglipTextConfig(
        vocab_size=_positive_int(tc, "vocab_size", 49408, tw, source),
        hidden_size=twidth,
        intermediate_size=_mlp_width(tc, twidth, tw, source),
        num_layers=_positive_int(tc, "layers", 12, tw, source),
        num_heads=theads,
        max_positions=_positive_int(tc, "context_length", 77, tw, source),
        hidden_act=_text_act(tc, m.get("quick_gelu", False), source),
        layer_norm_eps=_eps(tc, tw, source),
        projection_size=embed_dim,
    )
    layout = SiglipLayout(
        text_prefix="text." if m.get("custom_text", False) else "",
        text_projection=projection,
        scalar_shape=(1,) if m.get("nonscalar_logit_scale", False) else (),
        hf_tokenizer_name=name,
        clean=_clean_mode(tc, source),
    )
    processing = _processing(d.get("preprocess_cfg"), size, source)
    if processing.shortest_edge is None:  # a squash: SigLIP's own preprocessing
        processing = SiglipImageProcessing(
            height=size, width=size, mean=processing.mean, std=processing.std, resample=processing.resample
        )
    return SiglipConfig(text=text, vision=vision), processing, layout


# How a tensor is stored, beyond the kinds above: "qkv" a fused [3D, D] weight or [3D] bias (timm's attn.qkv, and
# the text tower's in_proj) split into q, k, v; "kv" timm's pooling head's fused [2D, D] / [2D] split into k, v;
# "latent" the head's [1, 1, D] query (a [D] probe here); "pos" timm's [1, T, D] position table ([T, D] here);
# "scalar" logit_scale / logit_bias (0-d here).


def _siglip_specs(config: Any, layout: SiglipLayout) -> Iterator[tuple[str, tuple, int | None, str, tuple[int, ...]]]:
    """Yield ``(openclip_key, param_path, layer_index, kind, shape)`` for every tensor of an open_clip SigLIP."""
    t, v = config.text, config.vision
    td, vd, e = t.hidden_size, v.hidden_size, config.embed_dim
    for name in ("logit_scale", "logit_bias"):
        yield name, (name,), None, "scalar", layout.scalar_shape
    trunk = "visual.trunk."
    patch = (vd, v.num_channels, v.patch_size, v.patch_size)
    yield f"{trunk}patch_embed.proj.weight", ("vision", "patch_embedding", "kernel"), None, "patch", patch
    yield f"{trunk}patch_embed.proj.bias", ("vision", "patch_embedding", "bias"), None, "plain", (vd,)
    yield f"{trunk}pos_embed", ("vision", "position_embedding"), None, "pos", (1, v.num_positions, vd)
    pool, head = f"{trunk}attn_pool.", ("vision", "head")
    yield f"{pool}latent", (*head, "probe"), None, "latent", (1, 1, vd)
    for x, leaf, shape in (("weight", "kernel", (vd, vd)), ("bias", "bias", (vd,))):
        yield f"{pool}q.{x}", (*head, "attn", "q", leaf), None, "linear" if x == "weight" else "plain", shape
        yield f"{pool}kv.{x}", (*head, "attn", "kv", leaf), None, "kv", (2 * vd, *shape[1:])
        yield f"{pool}proj.{x}", (*head, "attn", "out", leaf), None, "linear" if x == "weight" else "plain", shape
    for x, leaf in (("weight", "scale"), ("bias", "bias")):
        yield f"{trunk}norm.{x}", ("vision", "post_ln", leaf), None, "plain", (vd,)
        yield f"{pool}norm.{x}", (*head, "ln", leaf), None, "plain", (vd,)
    vf = v.intermediate_size
    for fc, (n_in, n_out) in (("fc1", (vd, vf)), ("fc2", (vf, vd))):
        yield f"{pool}mlp.{fc}.weight", (*head, "mlp", fc, "kernel"), None, "linear", (n_out, n_in)
        yield f"{pool}mlp.{fc}.bias", (*head, "mlp", fc, "bias"), None, "plain", (n_out,)
    for i in range(v.num_layers):
        base = f"{trunk}blocks.{i}."
        for name, path, n_in, n_out in (
            ("attn.qkv", ("attn", "qkv"), vd, 3 * vd),
            ("attn.proj", ("attn", "out"), vd, vd),
            ("mlp.fc1", ("mlp", "fc1"), vd, vf),
            ("mlp.fc2", ("mlp", "fc2"), vf, vd),
        ):
            w, b = ("qkv", "qkv") if name == "attn.qkv" else ("linear", "plain")
            yield f"{base}{name}.weight", ("vision", "layers", *path, "kernel"), i, w, (n_out, n_in)
            yield f"{base}{name}.bias", ("vision", "layers", *path, "bias"), i, b, (n_out,)
        for ln, short in (("norm1", "ln1"), ("norm2", "ln2")):
            yield f"{base}{ln}.weight", ("vision", "layers", short, "scale"), i, "plain", (vd,)
            yield f"{base}{ln}.bias", ("vision", "layers", short, "bias"), i, "plain", (vd,)

    p = layout.text_prefix
    yield f"{p}token_embedding.weight", ("text", "token_embedding"), None, "plain", (t.vocab_size, td)
    yield f"{p}positional_embedding", ("text", "position_embedding"), None, "plain", (t.max_positions, td)
    for x, leaf in (("weight", "scale"), ("bias", "bias")):
        yield f"{p}ln_final.{x}", ("text", "final_ln", leaf), None, "plain", (td,)
    if layout.text_projection == "linear":
        yield f"{p}text_projection.weight", ("text", "head", "kernel"), None, "linear", (e, td)
        yield f"{p}text_projection.bias", ("text", "head", "bias"), None, "plain", (e,)
    elif layout.text_projection == "matrix":
        yield f"{p}text_projection", ("text", "head", "kernel"), None, "plain", (td, e)
    tf = t.intermediate_size
    for i in range(t.num_layers):
        base = f"{p}transformer.resblocks.{i}."
        yield f"{base}attn.in_proj_weight", ("text", "layers", "attn", "qkv", "kernel"), i, "qkv", (3 * td, td)
        yield f"{base}attn.in_proj_bias", ("text", "layers", "attn", "qkv", "bias"), i, "qkv", (3 * td,)
        for name, path, n_in, n_out in (
            ("attn.out_proj", ("attn", "out"), td, td),
            ("mlp.c_fc", ("mlp", "fc1"), td, tf),
            ("mlp.c_proj", ("mlp", "fc2"), tf, td),
        ):
            yield f"{base}{name}.weight", ("text", "layers", *path, "kernel"), i, "linear", (n_out, n_in)
            yield f"{base}{name}.bias", ("text", "layers", *path, "bias"), i, "plain", (n_out,)
        for ln, short in (("ln_1", "ln1"), ("ln_2", "ln2")):
            yield f"{base}{ln}.weight", ("text", "layers", short, "scale"), i, "plain", (td,)
            yield f"{base}{ln}.bias", ("text", "layers", short, "bias"), i, "plain", (td,)


def expected_openclip_siglip_keys(config: Any, layout: SiglipLayout = SiglipLayout()) -> list[str]:
    """Every tensor name an open_clip SigLIP checkpoint of this config and layout must hold."""
    return [s[0] for s in _siglip_specs(config, layout)]


def params_from_openclip_siglip_state(
    state: dict[str, np.ndarray], config: Any, layout: SiglipLayout = SiglipLayout(), source: str = "checkpoint"
) -> dict[str, Any]:
    """open_clip SigLIP tensors → :mod:`jaxplain.models.siglip` params (NumPy float32 arrays, layers stacked).

    The fused ``qkv`` / ``in_proj`` tensors are split into q, k and v, the pooling head's ``kv`` into k and v,
    torch's ``[out, in]`` weights transposed, the patch convolution flattened, the ``[1, …]`` position table and
    latent query squeezed; a bias-free text projection gets a zero bias, and ``proj_type`` ``"none"`` an identity
    head. Raises :class:`~jaxplain.errors.CheckpointError` naming every missing, left-over or mis-shaped tensor.
    """
    specs = list(_siglip_specs(config, layout))
    ignored = (f"{layout.text_prefix}attn_mask", "attn_mask")
    check_tensors(state, specs, ignored, source, expected_from="the config", config_name="its OpenCLIP config")

    layered: dict[tuple, list] = {}
    params: dict[str, Any] = {}

    def put(path: tuple, layer: int | None, x: np.ndarray) -> None:
        if layer is None:
            set_path(params, path, np.ascontiguousarray(x) if x.ndim else x)
        else:
            layered.setdefault(path, []).append(x)

    for key, path, layer, kind, _ in specs:
        x = np.asarray(state[key], dtype=np.float32)
        if kind in ("qkv", "kv"):
            *head, _, leaf = path
            names = ("q", "k", "v") if kind == "qkv" else ("k", "v")
            for name, part in zip(names, np.split(x, len(names), axis=0)):
                put((*head, name, leaf), layer, part.T if leaf == "kernel" else part)
            continue
        if kind == "linear":
            x = x.T
        elif kind == "patch":
            x = x.reshape(x.shape[0], -1).T
        elif kind in ("pos", "latent"):
            x = x.reshape(x.shape[-2:] if kind == "pos" else (-1,))
        elif kind == "scalar":
            x = x.reshape(())
        put(path, layer, x)
    for path, xs in layered.items():
        set_path(params, path, np.stack(xs))
    e, td = config.embed_dim, config.text.hidden_size
    if layout.text_projection != "linear":
        params["text"]["head"] = {
            "kernel": params["text"].get("head", {}).get("kernel", np.eye(td, e, dtype=np.float32)),
            "bias": np.zeros(e, np.float32),
        }
    return params


def read_openclip_siglip_checkpoint(directory: str | Path) -> tuple[dict[str, Any], Any, Any, SiglipLayout]:
    """``(params, SiglipConfig, processing, SiglipLayout)`` of an open_clip SigLIP checkpoint directory, checked
    strictly (:func:`siglip_config_from_openclip_dict`, :func:`params_from_openclip_siglip_state`; non-finite
    weights are refused too)."""
    directory = Path(directory)
    d, path = read_config_dict(directory)
    config, processing, layout = siglip_config_from_openclip_dict(d, source=str(path))
    state, weights = _read_weights(directory)
    return params_from_openclip_siglip_state(state, config, layout, source=str(weights)), config, processing, layout


# --- tokenizers and the loader ----------------------------------------------------------------------------------


def clean_text(text: str, mode: str) -> str:
    """open_clip's cleaning of a text before its Hugging Face tokenizer sees it (``tokenizer_kwargs.clean``):
    HTML entities unescaped (twice) and the text stripped, then for ``"whitespace"`` runs of white space made one
    space, for ``"lower"`` that and lowercasing, for ``"canonicalize"`` (SigLIP's) underscores made spaces, ASCII
    punctuation removed, lowercased and white space collapsed. (open_clip also runs ``ftfy.fix_text`` first, which
    repairs mis-decoded text; well-formed text is unchanged by it.)"""
    text = html.unescape(html.unescape(text)).strip()
    if mode == "canonicalize":
        text = text.replace("_", " ").translate(_PUNCTUATION).lower()
    elif mode == "lower":
        text = text.lower()
    elif mode != "whitespace":
        raise InputError(f"clean must be one of {', '.join(CLEAN_MODES)}, got {mode!r}")
    return " ".join(text.split())


_PUNCTUATION = str.maketrans("", "", string.punctuation)


class OpenClipTokenizer(SiglipTokenizer):
    """open_clip's ``HFTokenizer`` over a checkpoint's Hugging Face tokenizer: each text cleaned as open_clip
    cleans it (:func:`clean_text`), then tokenised, padded on the right to ``context_length`` and truncated
    there as :class:`~jaxplain.data.siglip_inputs.SiglipTokenizer` does. A text with nothing left once cleaned
    (``"!!!"`` under ``"canonicalize"``) is an :class:`InputError`."""

    def __init__(self, hf_tokenizer, context_length: int, clean: str = DEFAULT_CLEAN):
        super().__init__(hf_tokenizer, context_length)
        if clean not in CLEAN_MODES:
            raise InputError(f"clean must be one of {', '.join(CLEAN_MODES)}, got {clean!r}")
        self.clean = clean
        self.padding_side = "right"  # open_clip pads on the right whatever the tokenizer's default

    def ids(self, text: str, name: str = "text") -> list[int]:
        """Token ids of one cleaned text with its end-of-sequence token, truncated to the context."""
        if isinstance(text, str) and text.strip():
            cleaned = clean_text(text, self.clean)
            if not cleaned:
                raise InputError(f"{name} {text[:50]!r}: nothing is left once cleaned as open_clip does ({self.clean})")
            text = cleaned
        return super().ids(text, name)


_HF_TOKENIZER_FILES = ("spiece.model", "tokenizer.json", "tokenizer.model")


def _clip_tokenizer(directory: Path, config: ClipConfig, hf_name: str | None, source: Path) -> Tokenizer:
    """A CLIP model's tokenizer: the directory's tokenizer files, else jaxplain's bundled CLIP BPE (open_clip's
    default tokenizer), checked against the text tower (which pools at the highest id, the end of text)."""
    if any((directory / f).is_file() for f in TOKENIZER_FILES):
        tok = Tokenizer.from_directory(directory, config.text.max_positions)
    elif hf_name is not None:
        raise CheckpointError(
            f"{source}: 'model_cfg.text_cfg.hf_tokenizer_name' names the tokenizer {hf_name!r}, which {directory} "
            f"does not carry: put its tokenizer.json (or vocab.json and merges.txt) beside {CONFIG_FILE} "
            "(jaxplain's bundled CLIP BPE is another tokenizer)"
        )
    elif config.text.vocab_size == 49408:
        tok = Tokenizer.from_directory(bundled_bpe_dir(), config.text.max_positions)
    else:
        raise CheckpointError(
            f"{directory}: no tokenizer files (tokenizer.json, or vocab.json and merges.txt) and the vocabulary "
            f"({config.text.vocab_size} tokens) is not CLIP's standard one (49408), which jaxplain ships"
        )
    if tok.vocab_size > config.text.vocab_size:
        raise CheckpointError(
            f"{directory}: the tokenizer has {tok.vocab_size} tokens but the model's embedding table "
            f"has {config.text.vocab_size} rows"
        )
    if tok.eos_id != config.text.eos_token_id:
        raise CheckpointError(
            f"{directory}: the tokenizer's end-of-text id is {tok.eos_id}, but OpenCLIP's text tower pools at the "
            f"highest id, {config.text.eos_token_id} (vocab_size - 1): this is not the model's CLIP tokenizer"
        )
    return tok


def _siglip_tokenizer(directory: Path, config: Any, layout: SiglipLayout, source: Path) -> OpenClipTokenizer:
    if not any((directory / f).is_file() for f in _HF_TOKENIZER_FILES):
        named = (
            f"the tokenizer {layout.hf_tokenizer_name!r}" if layout.hf_tokenizer_name else "its Hugging Face tokenizer"
        )
        raise CheckpointError(
            f"{directory}: no tokenizer files ({', '.join(_HF_TOKENIZER_FILES)}): this open_clip SigLIP uses "
            f"{named} ({source.name}: 'model_cfg.text_cfg.hf_tokenizer_name'); put its files (spiece.model or "
            f"tokenizer.json, with tokenizer_config.json) beside {CONFIG_FILE}"
        )
    base = SiglipTokenizer.from_directory(directory, config.text.max_positions)
    tok = OpenClipTokenizer(base.hf, config.text.max_positions, layout.clean)
    if tok.vocab_size > config.text.vocab_size:
        raise CheckpointError(
            f"{directory}: the tokenizer has {tok.vocab_size} tokens but the model's embedding table "
            f"has {config.text.vocab_size} rows"
        )
    return tok


def _cast(params: Any, host: dict[str, Any], dtype: str) -> Any:
    from jaxplain.models import clip
    from jaxplain.models.loading import DTYPES

    if dtype != "float32":
        params = clip.cast_params(params, DTYPES[dtype])  # the temperature stays float32; so does a bias
        if "logit_bias" in host:
            params["logit_bias"] = jnp.asarray(host["logit_bias"])
    return params


def load_openclip(directory: Path, name: str, dtype: str) -> Model:
    """An OpenCLIP native checkpoint directory (``open_clip_config.json``, ``open_clip_model.safetensors``) as a
    :class:`~jaxplain.models.bundle.Model`; :func:`jaxplain.load` calls it for such a directory.

    * A ViT CLIP (:func:`read_openclip_checkpoint`) is a model of the CLIP family (softmax decision). Its
      tokenizer is the directory's Hugging Face CLIP tokenizer files (``tokenizer.json``, or ``vocab.json`` and
      ``merges.txt``) where it has them, else jaxplain's bundled CLIP BPE (open_clip's default tokenizer: 49,408
      tokens, lowercased, white space cleaned) at ``text_cfg.context_length``. A config that names another
      tokenizer (``text_cfg.hf_tokenizer_name``) needs its files in the directory.
    * An open_clip SigLIP (``vision_cfg.timm_model_name`` a timm SigLIP ViT; :func:`read_openclip_siglip_checkpoint`)
      is a model of the SigLIP family (sigmoid decision), tokenised by :class:`OpenClipTokenizer` over the
      directory's Hugging Face tokenizer files.

    Preprocessing comes from ``preprocess_cfg``; ``dtype`` is as in :func:`jaxplain.load`. Every problem (an
    unsupported config, a missing, left-over or mis-shaped tensor, a missing tokenizer) is a
    :class:`CheckpointError` naming the file and the key.
    """
    from jaxplain.models.family import CLIP, SIGLIP

    directory = Path(directory)
    d, path = read_config_dict(directory)
    m = d.get("model_cfg") if isinstance(d, dict) else None
    vc = m.get("vision_cfg") if isinstance(m, dict) else None
    if isinstance(vc, dict) and vc.get("timm_model_name") is not None:
        config, processing, layout = siglip_config_from_openclip_dict(d, source=str(path))
        state, weights = _read_weights(directory)
        host = params_from_openclip_siglip_state(state, config, layout, source=str(weights))
        tokenizer = _siglip_tokenizer(directory, config, layout, path)
        bos = tokenizer.hf.bos_token_id
        text = dataclasses.replace(
            config.text,
            pad_token_id=tokenizer.pad_id,
            eos_token_id=tokenizer.eos_id,
            bos_token_id=tokenizer.eos_id if bos is None else int(bos),
        )
        config, family = dataclasses.replace(config, text=text), SIGLIP
    else:
        config, processing = config_from_openclip_dict(d, source=str(path))
        state, weights = _read_weights(directory)
        host = params_from_openclip_state(state, config, source=str(weights))
        tokenizer = _clip_tokenizer(directory, config, m["text_cfg"].get("hf_tokenizer_name"), path)
        family = CLIP
    fp = fingerprint(config, host, processing=processing, tokenizer=tokenizer, family=family)
    params = _cast(jax.tree.map(jnp.asarray, host), host, dtype)
    return Model(
        name=name,
        config=config,
        params=params,
        tokenizer=tokenizer,
        processing=processing,
        fingerprint=fp,
        directory=directory,
        family=family,
    )

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

This module stands alone; it is not wired into :func:`jaxplain.load`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from jaxplain.data.images import ImageProcessing
from jaxplain.errors import CheckpointError
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

_TEXT_READ = ("context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio", "norm_kwargs")
_TEXT_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "text_arch": ("clip",),
    "hf_model_name": (None,),
    "hf_tokenizer_name": (None,),  # the end-of-text token must be CLIP's, the highest id
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
) -> dict[str, Any]:
    """``d`` if it is a JSON object whose every key is known and every neutral key has a supported value."""
    if not isinstance(d, dict):
        raise CheckpointError(f"{source}: {where!r} must be a JSON object, got {type(d).__name__} {_short(d)}")
    for key, value in d.items():
        name = f"{where}.{key}"
        if key in read or key in ignored:
            continue
        if key not in neutral:
            raise CheckpointError(
                f"{source}: {name!r} is not a setting jaxplain knows for OpenCLIP's native CLIP; refused rather than "
                "loaded as a model it may not be"
            )
        allowed = neutral[key]
        if not any(value == a and type(value) is type(a) for a in allowed):
            want = " or ".join(json.dumps(a) for a in allowed)
            raise CheckpointError(
                f"{source}: {name!r} is {_short(value)}: this variant is not jaxplain's CLIP architecture (supported: "
                f"{want})"
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


def read_openclip_config(directory: str | Path) -> tuple[ClipConfig, ImageProcessing]:
    """``(ClipConfig, ImageProcessing)`` of an OpenCLIP checkpoint directory's ``open_clip_config.json``, checked
    by :func:`config_from_openclip_dict`. A missing or unreadable file is a :class:`CheckpointError` naming it."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory}: no {CONFIG_FILE} (is this an OpenCLIP checkpoint directory?)")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read it as JSON ({e})") from None
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
    from jaxplain.models.loading import _read_safetensors

    directory = Path(directory)
    config, processing = read_openclip_config(directory)
    path = directory / WEIGHTS_FILE
    if not path.is_file():
        pickled = [n.name for n in sorted(directory.glob("*.bin"))]
        hint = f" ({', '.join(pickled)} is pickled, which jaxplain never unpickles)" if pickled else ""
        raise CheckpointError(f"{directory}: no {WEIGHTS_FILE}{hint}")
    state = _read_safetensors(path)
    return params_from_openclip_state(state, config, source=str(path)), config, processing

"""SLIP checkpoints (Mu et al., facebookresearch/SLIP) onto jaxplain's CLIP towers.

A SLIP (or SLIP-trained CLIP) model is CLIP with a timm ViT image tower: a patch conv *with* bias, a class
token, pre-LN blocks with a fused ``qkv``, exact GELU, layer norms of epsilon 1e-6, no layer norm before the
first block, a final ``norm`` over all tokens of which the class token is taken, then ``image_projection``
``[D, E]``. Its text tower is OpenAI CLIP's (``nn.MultiheadAttention``, QuickGELU, causal, pooled at the
end-of-text token, the highest id; ``text_projection`` ``[W, E]``). The SimCLR head ``image_mlp.*`` of SLIP
models is not part of either tower and is dropped.

The released files are pickles; they are read once, by :func:`read_slip_checkpoint`, with
``torch.load(weights_only=True)`` allowing only ``argparse.Namespace`` beyond torch's own tensor types, so
nothing in the file is executed. :func:`convert_slip` writes a directory that :func:`jaxplain.load` reads
without torch:

* ``config.json``: ``"model_type": "slip"`` and the CLIP config (``vision_config.pre_norm`` false, ``gelu``,
  eps 1e-6; text ``quick_gelu``, eps 1e-5), with what the checkpoint says of itself under ``"slip"``;
* ``model.safetensors``: the towers' tensors in SLIP's own key layout (``visual.blocks.0.attn.qkv.weight``, ...,
  ``module.`` stripped), float32;
* ``vocab.json``, ``merges.txt``: CLIP's BPE (SLIP tokenizes with it, context 77);
* ``preprocessor_config.json``: SLIP's evaluation transform: shorter side resized to the image size
  (bilinear), centre crop, ImageNet mean and std.

:func:`load_slip` (``jaxplain.load`` for such a directory) converts the tensors strictly with
:func:`params_from_slip_state` every time it loads.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from jaxplain.data.images import ImageProcessing
from jaxplain.errors import CheckpointError, InputError, OutputError
from jaxplain.models.config import ClipConfig, TextConfig, VisionConfig, config_from_hf_dict
from jaxplain.models.convert import check_tensors, set_path

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILES = ("vocab.json", "merges.txt")
WRITTEN = (WEIGHTS_FILE, *TOKENIZER_FILES, "NOTICE.md", "preprocessor_config.json", CONFIG_FILE)

# SLIP's evaluation normalisation (eval_zeroshot.py, main.py)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VISION_EPS, TEXT_EPS = 1e-6, 1e-5

# The globals a SLIP checkpoint needs beyond torch's tensor types: its training arguments (``args``).
SAFE_GLOBALS = (argparse.Namespace,)

# The prefixes dropped from the state dict: the SimCLR head of SLIP models (not part of either tower).
DROPPED_PREFIXES = ("image_mlp.",)

# Vision heads of SLIP's models (models.py): ViT-S is MoCo v3's, with 12 heads of width 32; ViT-B timm's
# vit_base_patch16_224 (12 heads); ViT-L vit_large_patch16_224 (16 heads). Keyed by the ``args.model`` suffix,
# with the width each implies; a checkpoint without a known ``args.model`` takes its heads from its width.
_VIT_BY_NAME = {"VITS16": (384, 12), "VITB16": (768, 12), "VITL16": (1024, 16)}
_HEADS_BY_WIDTH = {width: heads for width, heads in _VIT_BY_NAME.values()}
_MODEL_NAME = re.compile(r"^(SLIP|CLIP|SIMCLR)_(VIT[SBL]16)$")
# How torch's weights-only unpickler names a refused global ("Unsupported global: GLOBAL mod.name was not an
# allowed global ..."; for a blocked module such as os: "unsupported GLOBAL posix.system whose module ...").
_UNSUPPORTED_GLOBAL = re.compile(r"unsupported (?:global: )?GLOBAL ([\w.]+)", re.IGNORECASE)


# --- reading the pickle ---------------------------------------------------------------------------------------


def _torch():
    try:
        import torch
    except ImportError:
        raise InputError(
            "reading a SLIP .pt checkpoint needs torch (the file is a torch pickle); install the CPU wheel with "
            "`pip install torch==2.13.0`, convert once, then jaxplain.load the directory without torch"
        ) from None
    return torch


def _load_pickle(path: Path) -> Any:
    """``torch.load`` of ``path`` that allows no global but :data:`SAFE_GLOBALS` (nothing of the file runs)."""
    torch = _torch()
    import pickle

    if not path.is_file():
        raise CheckpointError(f"{path}: no such file" if not path.exists() else f"{path}: is not a file")
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = _UNSUPPORTED_GLOBAL.search(str(e))
        what = f"the global {found.group(1)}" if found else "a global"
        raise CheckpointError(
            f"{path}: refused: the pickle needs {what}, which a SLIP checkpoint does not hold (only "
            f"{', '.join(f'{g.__module__}.{g.__qualname__}' for g in SAFE_GLOBALS)} and torch's tensor types are "
            "allowed, and nothing of the file was run)"
        ) from None
    except (OSError, RuntimeError, ValueError, EOFError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: cannot read it as a torch checkpoint ({first})") from None


def _unwrap(obj: Any, source: str) -> tuple[dict[str, Any], Any]:
    """``(state_dict, args)`` of a loaded checkpoint: the dict wrapper (``state_dict`` or ``model``) or a bare
    state dict."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"{source}: holds a {type(obj).__name__}, not a dict of tensors or a checkpoint dict")
    for key in ("state_dict", "model"):
        if key in obj:
            state = obj[key]
            if not isinstance(state, dict):
                raise CheckpointError(f"{source}: {key!r} holds a {type(state).__name__}, not a dict of tensors")
            return state, obj.get("args")
    return obj, None


def slip_state(obj: Any, source: str = "checkpoint") -> tuple[dict[str, np.ndarray], str | None]:
    """``(tensors, model_name)`` of an unpickled SLIP checkpoint: the state dict (from the ``state_dict`` or
    ``model`` entry of a checkpoint dict, or the bare dict) with ``module.`` stripped, the ``image_mlp.*``
    SimCLR head dropped, every tensor as float32 NumPy; ``model_name`` is ``args.model`` where the checkpoint
    has one (``"SLIP_VITB16"``). A value that is not a tensor, or two keys that are one without ``module.``,
    raise :class:`CheckpointError` naming the key."""
    torch = _torch()
    state, args = _unwrap(obj, source)
    out: dict[str, np.ndarray] = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{source}: a state-dict key is {key!r}, not a tensor name")
        name = key[len("module.") :] if key.startswith("module.") else key
        if name.startswith(DROPPED_PREFIXES):
            continue
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{source}: {key!r} holds a {type(value).__name__}, not a tensor")
        if name in out:
            raise CheckpointError(f"{source}: {name!r} is there twice (with and without 'module.')")
        if not value.is_floating_point():
            raise CheckpointError(f"{source}: {key!r} is a {value.dtype} tensor; the towers hold floating-point ones")
        out[name] = value.detach().to(torch.float32).contiguous().numpy()
    model = getattr(args, "model", None) if args is not None else None
    return out, model if isinstance(model, str) else None


# --- the config, inferred from the tensors --------------------------------------------------------------------


def _anchor(state: dict[str, np.ndarray], key: str, ndim: int, source: str) -> tuple[int, ...]:
    if key not in state:
        raise CheckpointError(f"{source}: missing tensor {key!r} (is this a SLIP or CLIP checkpoint of SLIP?)")
    shape = tuple(state[key].shape)
    if len(shape) != ndim:
        raise CheckpointError(f"{source}: {key!r} has shape {shape}; a SLIP checkpoint's has {ndim} axes")
    return shape


def _depth(state: dict[str, np.ndarray], prefix: str) -> int:
    """How many blocks ``prefix.N.`` the state holds, counting from 0 (a gap shows as missing tensors later)."""
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    found = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    return max(found) + 1 if found else 0


def _vision_heads(width: int, model: str | None, override: int | None, source: str) -> int:
    if override is not None:
        heads = override
    else:
        found = _MODEL_NAME.match(model or "")
        if found:
            want, heads = _VIT_BY_NAME[found.group(2)]
            if width != want:
                raise CheckpointError(
                    f"{source}: args.model is {model!r}, whose image tower is {want} wide, but 'visual.cls_token' "
                    f"is {width} wide"
                )
        elif width in _HEADS_BY_WIDTH:
            heads = _HEADS_BY_WIDTH[width]
        else:
            raise CheckpointError(
                f"{source}: the image tower is {width} wide, not one of SLIP's ViTs ({sorted(_HEADS_BY_WIDTH)}), "
                "and the attention heads cannot be read from the tensors: give them (vision_heads, --vision-heads)"
            )
    if not (isinstance(heads, int) and heads > 0 and width % heads == 0):
        raise CheckpointError(f"{source}: {heads!r} vision heads do not divide the image tower's width {width}")
    return heads


def config_from_slip_state(
    state: dict[str, np.ndarray],
    model: str | None = None,
    source: str = "checkpoint",
    vision_heads: int | None = None,
    text_heads: int | None = None,
) -> ClipConfig:
    """The :class:`ClipConfig` of SLIP tensors (:func:`slip_state`), read from their shapes: widths, depths, MLP
    widths, patch and image size, vocabulary, context and embedding size. Attention heads do not show in the
    shapes: the vision tower's come from ``model`` (``args.model``: ``*_VITS16`` and ``*_VITB16`` 12,
    ``*_VITL16`` 16), else from its width (384 → 12, MoCo v3's ViT-S as SLIP uses it; 768 → 12; 1024 → 16),
    unless ``vision_heads`` is given; the text tower's are ``width // 64`` (512 → 8, OpenAI CLIP's rule) unless
    ``text_heads`` is given.

    A tensor the inference needs that is missing or of the wrong rank, a non-square patch or image, or widths
    that contradict each other raise :class:`CheckpointError` naming the key; everything else is checked
    by :func:`params_from_slip_state`.
    """
    if model is not None and model.startswith("SIMCLR"):
        raise CheckpointError(f"{source}: args.model is {model!r}: a SimCLR model has no text tower to convert")
    d, c, ph, pw = _anchor(state, "visual.patch_embed.proj.weight", 4, source)
    if ph != pw or c != 3:
        raise CheckpointError(
            f"{source}: 'visual.patch_embed.proj.weight' has shape {(d, c, ph, pw)}: a square patch over 3 channels "
            "is expected"
        )
    one, tokens, d2 = _anchor(state, "visual.pos_embed", 3, source)
    grid = math.isqrt(max(tokens - 1, 0))
    if one != 1 or d2 != d or tokens < 2 or grid * grid != tokens - 1:
        raise CheckpointError(
            f"{source}: 'visual.pos_embed' has shape {(one, tokens, d2)}: [1, 1 + g·g, {d}] is expected (a class "
            "token and a square grid of patches)"
        )
    vf = _anchor(state, "visual.blocks.0.mlp.fc1.weight", 2, source)[0]
    vision_heads = _vision_heads(d, model, vision_heads, source)
    vocab, width = _anchor(state, "token_embedding.weight", 2, source)
    context = _anchor(state, "positional_embedding", 2, source)[0]
    tf = _anchor(state, "transformer.resblocks.0.mlp.c_fc.weight", 2, source)[0]
    embed = _anchor(state, "image_projection", 2, source)[1]
    if text_heads is None and width % 64:
        raise CheckpointError(
            f"{source}: the text tower is {width} wide, not a multiple of CLIP's head width 64: give its heads"
        )
    heads = width // 64 if text_heads is None else text_heads
    if not (isinstance(heads, int) and heads > 0 and width % heads == 0):
        raise CheckpointError(f"{source}: {heads!r} text heads do not divide the text tower's width {width}")
    vision = VisionConfig(
        image_size=grid * ph,
        patch_size=ph,
        num_channels=3,
        hidden_size=d,
        intermediate_size=vf,
        num_layers=_depth(state, "visual.blocks"),
        num_heads=vision_heads,
        hidden_act="gelu",
        layer_norm_eps=VISION_EPS,
        pre_norm=False,
    )
    text = TextConfig(
        vocab_size=vocab,
        hidden_size=width,
        intermediate_size=tf,
        num_layers=_depth(state, "transformer.resblocks"),
        num_heads=heads,
        max_positions=context,
        hidden_act="quick_gelu",
        layer_norm_eps=TEXT_EPS,
        eos_token_id=vocab - 1,  # SLIP pools at the highest id: CLIP's end-of-text token, the last of its vocabulary
        bos_token_id=vocab - 2,
        pad_token_id=0,  # SLIP's tokenizer pads with 0
    )
    scale = state.get("logit_scale")
    scale = float(np.asarray(scale).reshape(-1)[0]) if scale is not None and np.size(scale) == 1 else math.log(1 / 0.07)
    return ClipConfig(text=text, vision=vision, projection_dim=embed, logit_scale_init=scale)


# --- the tensors ----------------------------------------------------------------------------------------------
#
# How a tensor is stored: "linear" torch's [out, in] (transposed here); "patch" the conv kernel [D, 3, p, p]
# (flattened to [3·p·p, D]); "qkv" a fused q, k, v [3D, D] weight or [3D] bias (split into the q, k, v dense
# params; the path names the leaf); "lead" a tensor with a leading singleton axis ([1, 1, D] class token,
# [1, T, D] positions: dropped here); "patch_bias" the conv's bias (added to the patch positions: see below);
# "plain" kept as is (SLIP's projections are [in, out] already).


def _specs(config: ClipConfig) -> Iterator[tuple[str, tuple, int | None, str, tuple[int, ...]]]:
    """Yield ``(slip_key, param_path, layer_index, kind, shape)`` for every tensor of the model."""
    t, v, e = config.text, config.vision, config.projection_dim
    td, vd = t.hidden_size, v.hidden_size
    yield "logit_scale", ("logit_scale",), None, "plain", ()
    yield "image_projection", ("vision", "projection"), None, "plain", (vd, e)
    yield "text_projection", ("text", "projection"), None, "plain", (td, e)
    patch = (vd, v.num_channels, v.patch_size, v.patch_size)
    yield "visual.patch_embed.proj.weight", ("vision", "patch_embedding"), None, "patch", patch
    yield "visual.patch_embed.proj.bias", ("vision", "patch_bias"), None, "patch_bias", (vd,)
    yield "visual.cls_token", ("vision", "class_embedding"), None, "lead", (1, 1, vd)
    yield "visual.pos_embed", ("vision", "position_embedding"), None, "lead", (1, v.num_positions, vd)
    yield "token_embedding.weight", ("text", "token_embedding"), None, "plain", (t.vocab_size, td)
    yield "positional_embedding", ("text", "position_embedding"), None, "plain", (t.max_positions, td)
    for name, leaf in (("weight", "scale"), ("bias", "bias")):
        yield f"visual.norm.{name}", ("vision", "post_ln", leaf), None, "plain", (vd,)
        yield f"ln_final.{name}", ("text", "final_ln", leaf), None, "plain", (td,)
    vision_layer = (("norm1", "ln1"), ("norm2", "ln2")), "attn.qkv", "attn.proj", ("mlp.fc1", "mlp.fc2")
    text_layer = (("ln_1", "ln1"), ("ln_2", "ln2")), "attn.in_proj", "attn.out_proj", ("mlp.c_fc", "mlp.c_proj")
    for tower, prefix, cfg, (norms, qkv, out, (fc1, fc2)) in (
        ("vision", "visual.blocks", v, vision_layer),
        ("text", "transformer.resblocks", t, text_layer),
    ):
        d, f = cfg.hidden_size, cfg.intermediate_size
        lay = (tower, "layers")
        for i in range(cfg.num_layers):
            base = f"{prefix}.{i}"
            for norm, short in norms:
                yield f"{base}.{norm}.weight", (*lay, short, "scale"), i, "plain", (d,)
                yield f"{base}.{norm}.bias", (*lay, short, "bias"), i, "plain", (d,)
            sep = "." if qkv.endswith("qkv") else "_"  # timm: qkv.weight; nn.MultiheadAttention: in_proj_weight
            yield f"{base}.{qkv}{sep}weight", (*lay, "attn", "kernel"), i, "qkv", (3 * d, d)
            yield f"{base}.{qkv}{sep}bias", (*lay, "attn", "bias"), i, "qkv", (3 * d,)
            dense = ((out, ("attn", "out"), (d, d)), (fc1, ("mlp", "fc1"), (f, d)), (fc2, ("mlp", "fc2"), (d, f)))
            for name, path, shape in dense:
                yield f"{base}.{name}.weight", (*lay, *path, "kernel"), i, "linear", shape
                yield f"{base}.{name}.bias", (*lay, *path, "bias"), i, "plain", (shape[0],)


def expected_slip_keys(config: ClipConfig) -> list[str]:
    """Every tensor name a SLIP checkpoint of this config must hold (after ``module.`` and ``image_mlp.*`` are
    gone)."""
    return [s[0] for s in _specs(config)]


def check_slip_state(state: dict[str, np.ndarray], config: ClipConfig, source: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` naming every missing, left-over (a classifier ``visual.head``, say) or
    mis-shaped tensor of SLIP tensors against ``config``."""
    check_tensors(state, list(_specs(config)), (), source, expected_from="the checkpoint's widths", config_name="SLIP")


def params_from_slip_state(state: dict[str, np.ndarray], config: ClipConfig, source: str = "checkpoint") -> dict:
    """SLIP tensors → jaxplain's CLIP params (NumPy float32, layers stacked; see
    :func:`jaxplain.models.clip.init_params`; no ``pre_ln``: ``config.vision.pre_norm`` is false).

    The fused ``qkv`` / ``in_proj`` weights and biases are split into q, k and v, torch's ``[out, in]`` linear
    weights transposed, the patch conv flattened. jaxplain's patch embedding has no bias, so the conv's bias is
    added to the position embeddings of the patch tokens (not the class token's): every token the first block
    sees is the same sum as timm's, so the model is the same function of the pixels; only the intermediate
    :func:`~jaxplain.models.clip.embed_patches` leaves the bias out. Strict: see :func:`check_slip_state`.
    """
    if config.vision.pre_norm:
        raise CheckpointError(f"{source}: a SLIP config has no pre-LN ('vision_config.pre_norm' must be false)")
    specs = list(_specs(config))
    check_slip_state(state, config, source)
    layered: dict[tuple, list] = {}
    params: dict[str, Any] = {}
    patch_bias = None
    for key, path, layer, kind, _ in specs:
        x = np.asarray(state[key], dtype=np.float32)
        if kind == "patch_bias":
            patch_bias = x
            continue
        if kind == "qkv":
            *head, leaf = path
            for name, part in zip(("q", "k", "v"), np.split(x, 3, axis=0)):
                layered.setdefault((*head, name, leaf), []).append(part.T if leaf == "kernel" else part)
            continue
        if kind == "linear":
            x = x.T
        elif kind == "patch":
            x = x.reshape(x.shape[0], -1).T
        elif kind == "lead":
            x = x.reshape(-1) if path[-1] == "class_embedding" else x[0]
        if layer is None:
            set_path(params, path, x)
        else:
            layered.setdefault(path, []).append(x)
    for path, xs in layered.items():
        set_path(params, path, np.stack(xs))
    positions = params["vision"]["position_embedding"].copy()
    positions[1:] += patch_bias
    params["vision"]["position_embedding"] = positions
    params["logit_scale"] = np.asarray(params["logit_scale"], np.float32).reshape(())
    return params


def read_slip_checkpoint(
    path: str | Path, vision_heads: int | None = None, text_heads: int | None = None
) -> tuple[dict[str, np.ndarray], ClipConfig, dict[str, Any]]:
    """``(tensors, config, about)`` of a SLIP ``.pt`` file, checked strictly.

    The file is read with ``torch.load(map_location="cpu", weights_only=True)`` under
    ``torch.serialization.safe_globals`` of :data:`SAFE_GLOBALS` (``argparse.Namespace``, SLIP's ``args``):
    a file that needs any other global is refused with a :class:`CheckpointError` naming it, and nothing of it
    is executed. ``tensors`` are :func:`slip_state`'s (float32, SLIP's key layout, no ``module.``, no
    ``image_mlp.*``); ``config`` is :func:`config_from_slip_state`'s, checked against every tensor
    (:func:`check_slip_state`); ``about`` holds what the file says of itself (``model``, ``epoch``,
    ``best_acc1`` where present).

    Raises:
      InputError: torch is not installed (the message says ``pip install torch==2.13.0``).
      CheckpointError: the file is missing, unreadable, refused, or its tensors are not a SLIP model's.
    """
    path = Path(path)
    obj = _load_pickle(path)
    state, model = slip_state(obj, str(path))
    config = config_from_slip_state(state, model, str(path), vision_heads, text_heads)
    check_slip_state(state, config, str(path))
    about: dict[str, Any] = {"model": model}
    if isinstance(obj, dict):
        for key in ("epoch", "best_acc1"):
            value = obj.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                about[key] = value
    return state, config, about


# --- the converted directory ------------------------------------------------------------------------------------


def slip_processing(image_size: int) -> ImageProcessing:
    """SLIP's evaluation transform at ``image_size``: shorter side resized to it (bilinear, torchvision's
    default), a centre crop, ImageNet mean and std."""
    return ImageProcessing(
        shortest_edge=image_size,
        crop=(image_size, image_size),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        resample=int(Image.Resampling.BILINEAR),
    )


def slip_config_dict(config: ClipConfig, about: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``config.json`` of a converted SLIP directory: the CLIP config with ``"model_type": "slip"``."""
    d = config.to_hf_dict()
    d.update(architectures=["SLIP"], model_type="slip", slip=dict(about or {}))
    return d


def config_from_slip_dict(d: Any, source: str = CONFIG_FILE) -> ClipConfig:
    """The :class:`ClipConfig` of a converted directory's ``config.json`` (:func:`slip_config_dict`): its
    ``model_type`` must be ``"slip"`` and ``vision_config.pre_norm`` false; the rest is checked as a CLIP config
    (:func:`~jaxplain.models.config.config_from_hf_dict`), each bad value a :class:`CheckpointError` naming the
    key."""
    if not isinstance(d, dict) or d.get("model_type") != "slip":
        raise CheckpointError(f"{source}: 'model_type' must be 'slip'")
    vision = d.get("vision_config")
    if not isinstance(vision, dict) or vision.get("pre_norm") is not False:
        raise CheckpointError(f"{source}: 'vision_config.pre_norm' must be false (SLIP's ViT has no pre-LN)")
    config = config_from_hf_dict({**d, "model_type": "clip"}, source)
    return dataclasses.replace(config, vision=dataclasses.replace(config.vision, pre_norm=False))


def _check_tokenizer(tokenizer_dir: Path, config: ClipConfig) -> None:
    from jaxplain.data.tokenize import Tokenizer

    for name in TOKENIZER_FILES:
        if not (tokenizer_dir / name).is_file():
            raise CheckpointError(f"{tokenizer_dir}: no {name} (a CLIP BPE tokenizer is vocab.json and merges.txt)")
    tok = Tokenizer.from_directory(tokenizer_dir, config.text.max_positions)
    if tok.vocab_size != config.text.vocab_size or tok.eos_id != config.text.eos_token_id:
        raise CheckpointError(
            f"{tokenizer_dir}: its tokenizer has {tok.vocab_size} tokens (end of text {tok.eos_id}), but the "
            f"checkpoint's embedding table {config.text.vocab_size} rows (end of text {config.text.eos_token_id})"
        )


def convert_slip(
    in_path: str | Path,
    out_dir: str | Path,
    *,
    vision_heads: int | None = None,
    text_heads: int | None = None,
    tokenizer_dir: str | Path | None = None,
) -> Path:
    """Convert a SLIP ``.pt`` checkpoint into a directory :func:`jaxplain.load` reads (needs torch; loading it
    does not). See the module docstring for what is written.

    Args:
      in_path: the ``.pt`` file (read by :func:`read_slip_checkpoint`: only ``argparse.Namespace`` is allowed
        beyond tensors, nothing of the file runs).
      out_dir: the output directory: new, empty, or an earlier conversion's (its files are replaced); a
        directory that holds anything else is refused, so no stray tokenizer or weights file is mixed in.
      vision_heads: the image tower's attention heads, where neither ``args.model`` nor the width tells them.
      text_heads: the text tower's, where they are not ``width // 64`` (SLIP's: 8 of width 64).
      tokenizer_dir: the CLIP BPE files (``vocab.json``, ``merges.txt``) to write; jaxplain's bundled CLIP
        vocabulary (SLIP's) by default. Its vocabulary must be the checkpoint's.

    Each file is written atomically (:mod:`jaxplain.outputs`), ``config.json`` last: a directory a failed run
    leaves has no ``config.json`` and does not load.

    Returns:
      ``out_dir`` as a :class:`~pathlib.Path`.
    """
    from safetensors.numpy import save

    from jaxplain.data.tokenize import bundled_bpe_dir
    from jaxplain.outputs import remove_stale_many, write_bytes, write_json

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: is a file; give a directory")
    if out.is_dir():
        remove_stale_many(out, WRITTEN)
        others = sorted(p.name for p in out.iterdir() if p.name not in WRITTEN)
        if others:
            raise OutputError(
                f"{out}: holds other files ({', '.join(others[:5])}{', ...' if len(others) > 5 else ''}); give a "
                "new or empty directory, or an earlier SLIP conversion's"
            )
    state, config, about = read_slip_checkpoint(in_path, vision_heads, text_heads)
    src = Path(tokenizer_dir) if tokenizer_dir is not None else bundled_bpe_dir()
    _check_tokenizer(src, config)
    about = {**about, "source": Path(in_path).name}

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{out}: cannot create the directory ({e.strerror or e})") from None
    if (out / CONFIG_FILE).exists():  # an earlier conversion: it stops loading until this one is whole
        (out / CONFIG_FILE).unlink()
    write_bytes(out / WEIGHTS_FILE, save(state, metadata={"format": "pt"}))
    for name in (*TOKENIZER_FILES, "NOTICE.md"):
        if (src / name).is_file():
            write_bytes(out / name, (src / name).read_bytes())
    write_json(out / "preprocessor_config.json", slip_processing(config.vision.image_size).to_hf_dict(), indent=2)
    write_json(out / CONFIG_FILE, slip_config_dict(config, about), indent=2)
    return out


def load_slip(directory: Path, name: str, dtype: str):
    """A converted SLIP directory (:func:`convert_slip`) as a :class:`~jaxplain.models.bundle.Model` of the CLIP
    family (``jaxplain.load`` calls it for ``"model_type": "slip"``).

    The towers are jaxplain's CLIP (:mod:`jaxplain.models.clip`) without the vision pre-LN, the tokenizer is the
    directory's CLIP BPE, the preprocessing its ``preprocessor_config.json`` (SLIP's: bilinear resize, centre
    crop, ImageNet statistics). Its decision is CLIP's softmax over classes with SLIP's learned temperature
    ``exp(logit_scale)``; SLIP's own zero-shot evaluation takes the argmax of the plain cosine similarities,
    which is the argmax of that softmax, so the classes it predicts are SLIP's.

    Raises:
      CheckpointError: an invalid config (naming the key), unreadable or non-finite weights, tensors that do
        not match the config (each named), or a tokenizer or preprocessing that does not fit the model.
    """
    import jax
    import jax.numpy as jnp

    from jaxplain.data.images import read_processing
    from jaxplain.models import clip
    from jaxplain.models.bundle import Model, fingerprint
    from jaxplain.models.loading import DTYPES, _load_tokenizer, _read_safetensors

    directory = Path(directory)
    path = directory / CONFIG_FILE
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read it as JSON ({e})") from None
    config = config_from_slip_dict(d, str(path))
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{directory}: no {WEIGHTS_FILE}")
    host = params_from_slip_state(_read_safetensors(weights), config, str(weights))
    tokenizer = _load_tokenizer(directory, config)
    processing = read_processing(directory, config.vision.image_size)
    if processing.crop != (config.vision.image_size,) * 2:
        raise CheckpointError(
            f"{directory / 'preprocessor_config.json'}: crops images to {processing.crop[0]}×{processing.crop[1]}, "
            f"but the vision tower takes {config.vision.image_size}×{config.vision.image_size}"
        )
    fp = fingerprint(config, host, processing=processing, tokenizer=tokenizer)
    params = jax.tree.map(jnp.asarray, host)
    if dtype != "float32":
        params = clip.cast_params(params, DTYPES[dtype])
    return Model(
        name=name,
        config=config,
        params=params,
        tokenizer=tokenizer,
        processing=processing,
        fingerprint=fp,
        directory=directory,
    )


def read_config_summary(directory: str | Path) -> str:
    """One line on a converted SLIP directory's model, e.g. ``SLIP_VITB16: image width 768, 12 layers, 12 heads,
    patch 16, 224 px; text width 512, 12 layers, 8 heads; embeddings 512``."""
    path = Path(directory) / CONFIG_FILE
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read it as JSON ({e})") from None
    c = config_from_slip_dict(d, str(path))
    v, t = c.vision, c.text
    model = (d.get("slip") or {}).get("model") if isinstance(d.get("slip"), dict) else None

    def n(count: int, what: str) -> str:
        return f"{count} {what}" + ("" if count == 1 else "s")

    return (
        f"{model or 'SLIP'}: image width {v.hidden_size}, {n(v.num_layers, 'layer')}, {n(v.num_heads, 'head')}, "
        f"patch {v.patch_size}, {v.image_size} px; text width {t.hidden_size}, {n(t.num_layers, 'layer')}, "
        f"{n(t.num_heads, 'head')}; embeddings {c.projection_dim}"
    )

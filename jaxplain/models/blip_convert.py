"""Strict conversion between transformers' ``BlipForImageTextRetrieval`` state dicts and jaxplain's BLIP params.

Both directions are pure functions over dicts of NumPy arrays. Every tensor the config implies must be
present with the right shape, and every tensor in the checkpoint must be used: anything missing, left over
or mis-shaped is a :class:`~jaxplain.errors.CheckpointError` that names it. The image–text matching head
(``itm_head``) and the text layers' cross-attention blocks are not part of the contrastive towers; they are
converted too, into ``params["itm"]``, and written back unchanged. Only the ``position_ids`` buffers
(:data:`IGNORED_KEYS`) are ignored. :func:`read_checkpoint` and :func:`write_checkpoint` read and write a
Hugging Face directory (``config.json`` + ``model.safetensors``).

:func:`load_blip` reads a whole directory as a :class:`BlipModel`: the weights, BERT's WordPiece tokenizer
(:class:`BlipTokenizer`) and BLIP's image preprocessing (:class:`BlipImageProcessing`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain.batching import chunks, map_bucketed
from jaxplain.data.images import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    RESAMPLE_FILTERS,
    ImageLike,
    ImageProcessing,
    _json_kind,
    _number,
    _positive_int,
    _show,
    describe,
)
from jaxplain.errors import CheckpointError, InputError
from jaxplain.models import blip
from jaxplain.models.blip import BlipConfig, stack_layers
from jaxplain.models.convert import check_tensors, get_path, read_hf_checkpoint, set_path, write_hf_checkpoint

# Buffers some checkpoints carry that are not weights (they equal arange(positions)).
IGNORED_KEYS = ("text_encoder.embeddings.position_ids", "vision_model.embeddings.position_ids")

# How a tensor is stored: "linear" is torch's [out, in] (transposed here); "patch" the conv kernel [D, 3, p, p]
# (flattened to [3·p·p, D]); "lead" a tensor with leading singleton axes ([1, 1, D] class token, [1, T, D]
# positions: dropped here); "qkv" the vision attention's fused [3D, D] weight or [3D] bias (split into the
# q, k, v dense params, whose path the spec names with "qkv" in place of the name); "plain" kept as is.


def _dense(hf: str, path: tuple, layer: int | None, n_in: int, n_out: int):
    yield f"{hf}.weight", (*path, "kernel"), layer, "linear", (n_out, n_in)
    yield f"{hf}.bias", (*path, "bias"), layer, "plain", (n_out,)


def _norm(hf: str, path: tuple, layer: int | None, d: int):
    yield f"{hf}.weight", (*path, "scale"), layer, "plain", (d,)
    yield f"{hf}.bias", (*path, "bias"), layer, "plain", (d,)


def _specs(config: BlipConfig) -> Iterator[tuple[str, tuple, int | None, str, tuple[int, ...]]]:
    """Yield ``(hf_key, param_path, layer_index, kind, hf_shape)`` for every tensor of the model."""
    t, v = config.text, config.vision
    td, vd, tf, vf = t.hidden_size, v.hidden_size, t.intermediate_size, v.intermediate_size
    emb = "vision_model.embeddings"
    yield f"{emb}.class_embedding", ("vision", "class_embedding"), None, "lead", (1, 1, vd)
    yield f"{emb}.position_embedding", ("vision", "position_embedding"), None, "lead", (1, v.num_positions, vd)
    patch = (vd, v.num_channels, v.patch_size, v.patch_size)
    yield f"{emb}.patch_embedding.weight", ("vision", "patch_embedding", "kernel"), None, "patch", patch
    yield f"{emb}.patch_embedding.bias", ("vision", "patch_embedding", "bias"), None, "plain", (vd,)
    for i in range(v.num_layers):
        base, lay = f"vision_model.encoder.layers.{i}", ("vision", "layers")
        yield f"{base}.self_attn.qkv.weight", (*lay, "attn", "qkv", "kernel"), i, "qkv", (3 * vd, vd)
        yield f"{base}.self_attn.qkv.bias", (*lay, "attn", "qkv", "bias"), i, "qkv", (3 * vd,)
        yield from _dense(f"{base}.self_attn.projection", (*lay, "attn", "out"), i, vd, vd)
        yield from _norm(f"{base}.layer_norm1", (*lay, "ln1"), i, vd)
        yield from _dense(f"{base}.mlp.fc1", (*lay, "mlp", "fc1"), i, vd, vf)
        yield from _dense(f"{base}.mlp.fc2", (*lay, "mlp", "fc2"), i, vf, vd)
        yield from _norm(f"{base}.layer_norm2", (*lay, "ln2"), i, vd)
    yield from _norm("vision_model.post_layernorm", ("vision", "post_ln"), None, vd)
    emb = "text_encoder.embeddings"
    yield f"{emb}.word_embeddings.weight", ("text", "token_embedding"), None, "plain", (t.vocab_size, td)
    yield f"{emb}.position_embeddings.weight", ("text", "position_embedding"), None, "plain", (t.max_positions, td)
    yield from _norm(f"{emb}.LayerNorm", ("text", "embed_ln"), None, td)
    for i in range(t.num_layers):
        base, lay = f"text_encoder.encoder.layer.{i}", ("text", "layers")
        for hf, name in (("query", "q"), ("key", "k"), ("value", "v")):
            yield from _dense(f"{base}.attention.self.{hf}", (*lay, "attn", name), i, td, td)
        yield from _dense(f"{base}.attention.output.dense", (*lay, "attn", "out"), i, td, td)
        yield from _norm(f"{base}.attention.output.LayerNorm", (*lay, "attn_ln"), i, td)
        if t.cross_attention:  # the matching head's, kept under "itm"
            cross = ("itm", "cross")
            for hf, name, n_in in (("query", "q", td), ("key", "k", vd), ("value", "v", vd)):
                yield from _dense(f"{base}.crossattention.self.{hf}", (*cross, "attn", name), i, n_in, td)
            yield from _dense(f"{base}.crossattention.output.dense", (*cross, "attn", "out"), i, td, td)
            yield from _norm(f"{base}.crossattention.output.LayerNorm", (*cross, "ln"), i, td)
        yield from _dense(f"{base}.intermediate.dense", (*lay, "mlp", "fc1"), i, td, tf)
        yield from _dense(f"{base}.output.dense", (*lay, "mlp", "fc2"), i, tf, td)
        yield from _norm(f"{base}.output.LayerNorm", (*lay, "mlp_ln"), i, td)
    yield from _dense("vision_proj", ("vision_proj",), None, vd, config.embed_dim)
    yield from _dense("text_proj", ("text_proj",), None, td, config.embed_dim)
    yield from _dense("itm_head", ("itm", "head"), None, td, 2)


def expected_keys(config: BlipConfig) -> list[str]:
    """Every tensor name a ``BlipForImageTextRetrieval`` checkpoint of this config must hold."""
    return [s[0] for s in _specs(config)]


def itm_keys(config: BlipConfig) -> list[str]:
    """The tensors of :func:`expected_keys` that belong to the matching head (kept under ``params["itm"]``,
    not read by the contrastive towers)."""
    return [s[0] for s in _specs(config) if s[1][0] == "itm"]


def _qkv_path(path: tuple, name: str) -> tuple:
    return (*path[:-2], name, path[-1])


def params_from_state_dict(
    state: dict[str, np.ndarray], config: BlipConfig, source: str = "checkpoint"
) -> dict[str, Any]:
    """transformers' ``BlipForImageTextRetrieval`` tensors → jaxplain BLIP params (NumPy float32 arrays,
    layers stacked; the matching head's tensors under ``"itm"``).

    Raises :class:`~jaxplain.errors.CheckpointError` naming every missing, left-over or mis-shaped tensor.
    """
    specs = list(_specs(config))
    check_tensors(state, specs, IGNORED_KEYS, source, expected_from="its config", config_name="its config")

    layered: dict[tuple, list] = {}
    params: dict = {}

    def put(path, layer, x):
        if layer is None:
            set_path(params, path, np.ascontiguousarray(x))
        else:
            layered.setdefault(path, []).append(x)

    for key, path, layer, kind, _ in specs:
        x = np.asarray(state[key], dtype=np.float32)
        if kind == "qkv":  # [3D, D] weight or [3D] bias → q, k, v
            for name, part in zip(("q", "k", "v"), np.split(x, 3, axis=0)):
                put(_qkv_path(path, name), layer, np.ascontiguousarray(part.T))
            continue
        if kind == "linear":
            x = x.T
        elif kind == "patch":
            x = x.reshape(x.shape[0], -1).T
        elif kind == "lead":
            x = x.reshape(x.shape[-2:]) if x.shape[1] > 1 else x.reshape(-1)
        put(path, layer, x)
    for path, xs in layered.items():
        set_path(params, path, np.stack(xs))
    return params


def state_dict_from_params(params: dict[str, Any], config: BlipConfig) -> dict[str, np.ndarray]:
    """jaxplain BLIP params (either layer layout) → transformers' ``BlipForImageTextRetrieval`` tensors
    (float32, contiguous), for saving. A param of the wrong shape is a :class:`CheckpointError` naming it."""
    params = stack_layers(params)
    v = config.vision
    state = {}
    for key, path, layer, kind, shape in _specs(config):
        if kind == "qkv":
            parts = [np.asarray(get_path(params, _qkv_path(path, name)), dtype=np.float32) for name in "qkv"]
            if layer is not None:
                parts = [p[layer] for p in parts]
            x = np.concatenate([p.T for p in parts], axis=0)
        else:
            x = np.asarray(get_path(params, path), dtype=np.float32)
            if layer is not None:
                x = x[layer]
            if kind == "linear":
                x = x.T
            elif kind == "patch":
                x = x.T.reshape(v.hidden_size, v.num_channels, v.patch_size, v.patch_size)
            elif kind == "lead":
                x = x.reshape(1, *((1,) if x.ndim == 1 else ()), *x.shape)
        if tuple(x.shape) != shape:
            raise CheckpointError(f"param {'/'.join(path)} has shape {x.shape}; {key} needs {shape}")
        state[key] = np.array(x, dtype=np.float32, order="C")
    return state


def read_checkpoint(directory: str | Path) -> tuple[dict[str, Any], BlipConfig]:
    """``(params, config)`` of a Hugging Face ``BlipForImageTextRetrieval`` directory (``config.json`` and
    ``model.safetensors``, or sharded safetensors), both checked strictly: an unreadable or invalid config,
    unreadable weights, non-finite values, or tensors that do not match the config are a
    :class:`CheckpointError` naming the file and the key."""
    return read_hf_checkpoint(directory, "BLIP", BlipConfig.from_hf_dict, params_from_state_dict)


def write_checkpoint(directory: str | Path, params: dict[str, Any], config: BlipConfig) -> None:
    """Write ``params`` as a Hugging Face ``BlipForImageTextRetrieval`` directory that transformers loads
    (``config.json`` and ``model.safetensors``)."""
    write_hf_checkpoint(directory, state_dict_from_params(params, config), config.to_hf_dict())


# --- loading a BLIP directory as a model: its tokenizer, its image preprocessing, and the model object ---------

BLIP_CONTEXT_LENGTH = 35
"""The text length BLIP's retrieval code tokenises to (``max_length=35``, padded to it)."""
BLIP_PROCESSOR_TYPES = ("BlipImageProcessor", "BlipImageProcessorFast", "BlipImageProcessorPil")
_TOKENIZER_FILES = ("vocab.txt", "tokenizer.json")
_MAX_CONTEXT = 100_000  # a tokenizer's model_max_length above this is transformers' "no limit" placeholder


def _short_text(text: str, n: int = 50) -> str:
    return repr(text if len(text) <= n else text[: n - 1] + "…")


class BlipTokenizer:
    """Turns texts into ``[N, context_length]`` int32 token ids for BLIP's text encoder.

    Wraps the checkpoint's own BERT WordPiece tokenizer (``BertTokenizer`` / ``BertTokenizerFast``, loaded
    offline by ``AutoTokenizer``): a row is ``[CLS]``, the text's word pieces (lowercased, as BERT-uncased
    does), ``[SEP]``, then ``[PAD]`` up to ``context_length`` — what ``BlipProcessor(text=...,
    padding="max_length", max_length=context_length, truncation=True)`` gives. The first token stays ``[CLS]``
    for the matching head too, as transformers' ``BlipForImageTextRetrieval`` reads it (the original BLIP code
    put ``[ENC]`` there). A longer text is truncated (its ``[SEP]`` kept) with a warning that names it; a text
    that is not a string or is empty is an :class:`~jaxplain.errors.InputError`.

    The attention mask is ``ids != pad_id`` (:meth:`mask`): ``[PAD]`` is never a token of a text.
    """

    def __init__(self, hf_tokenizer, context_length: int = BLIP_CONTEXT_LENGTH):
        if type(context_length) is not int or context_length < 2:
            raise InputError(f"context_length must be a whole number of at least 2, got {context_length!r}")
        self.hf = hf_tokenizer
        self.context_length = context_length
        for what in ("cls", "sep", "pad"):
            if getattr(hf_tokenizer, f"{what}_token_id") is None:
                raise CheckpointError(f"{type(hf_tokenizer).__name__}: the tokenizer has no [{what.upper()}] token")
        self.bos_id = int(hf_tokenizer.cls_token_id)
        self.eos_id = int(hf_tokenizer.sep_token_id)
        self.pad_id = int(hf_tokenizer.pad_token_id)

    @classmethod
    def from_directory(cls, directory: str | Path, context_length: int = BLIP_CONTEXT_LENGTH) -> BlipTokenizer:
        """Load the tokenizer of a checkpoint directory offline (``vocab.txt`` or ``tokenizer.json``, with
        ``tokenizer_config.json``). A directory that is missing, lacks tokenizer files or holds broken ones
        raises :class:`CheckpointError` naming it. ``context_length`` is capped by the tokenizer's
        ``model_max_length``."""
        from transformers import AutoTokenizer

        path = Path(directory)
        if not path.is_dir():
            why = "no such directory" if not path.exists() else "not a directory"
            raise CheckpointError(f"{directory}: cannot load its tokenizer: {why}")
        if not any((path / f).is_file() for f in _TOKENIZER_FILES):
            raise CheckpointError(
                f"{directory}: no tokenizer files (expected BERT's {' or '.join(_TOKENIZER_FILES)}, with "
                "tokenizer_config.json)"
            )
        try:
            hf = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError, ImportError, RuntimeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{directory}: cannot load its tokenizer ({type(e).__name__}: {e})") from None
        if hf is None or not callable(hf):
            raise CheckpointError(f"{directory}: cannot load its tokenizer (transformers found none)")
        n = getattr(hf, "model_max_length", None)
        if type(n) is int and 2 <= n <= _MAX_CONTEXT:
            context_length = min(context_length, n)
        return cls(hf, context_length)

    @property
    def vocab_size(self) -> int:
        """The number of token ids, added tokens ([DEC], [ENC]) included."""
        return len(self.hf)

    def ids(self, text: str, name: str = "text") -> list[int]:
        """Token ids of one text, ``[CLS] … [SEP]``, truncated to the context (with a warning)."""
        if not isinstance(text, str):
            raise InputError(f"{name}: expected a string, got {type(text).__name__}")
        if not text.strip():
            raise InputError(f"{name}: empty text")
        ids = list(self.hf(text, verbose=False).input_ids)
        if len(ids) > self.context_length:
            warnings.warn(
                f"{name} {_short_text(text)} has {len(ids)} tokens; truncated to the context length "
                f"{self.context_length}",
                stacklevel=3,
            )
            ids = list(self.hf(text, truncation=True, max_length=self.context_length, verbose=False).input_ids)
        return ids

    def tokens(self, text: str) -> list[str]:
        """The token strings of one text's row, ``[CLS]`` and ``[SEP]`` included (no padding): the rows of its
        cross-attention maps."""
        return self.hf.convert_ids_to_tokens(self.ids(text))

    def batch(self, texts: Sequence[str]) -> np.ndarray:
        """Texts → ``[N, context_length]`` int32, padded with ``pad_id``; the first bad text raises
        :class:`InputError` naming it."""
        if isinstance(texts, str):
            raise InputError("expected a list of texts, got a single string (wrap it in a list)")
        out = np.full((len(texts), self.context_length), self.pad_id, np.int32)
        for i, t in enumerate(texts):
            row = self.ids(t, f"text {i}")
            out[i, : len(row)] = row
        return out

    def mask(self, ids: np.ndarray) -> np.ndarray:
        """The attention mask ``[N, T]`` int32 of padded ids: 1 for tokens, 0 for padding."""
        return (np.asarray(ids) != self.pad_id).astype(np.int32)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """The same as :meth:`batch` (the interface of :class:`jaxplain.data.tokenize.Tokenizer`)."""
        return self.batch(texts)


@dataclasses.dataclass(frozen=True)
class BlipImageProcessing:
    """BLIP's image preprocessing (``BlipImageProcessor``, read from ``preprocessor_config.json``).

    Each image is converted to RGB (transparency composited onto white), resized to ``height`` × ``width``
    without keeping its aspect ratio (``resample``: a PIL filter code, 3 bicubic), rescaled by
    ``rescale_factor`` and normalised with ``mean`` and ``std`` (OpenAI CLIP's); no centre crop.
    """

    height: int = 384
    width: int = 384
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    resample: int = 3
    do_resize: bool = True
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True

    @classmethod
    def for_image_size(cls, size: int) -> BlipImageProcessing:
        """BLIP's standard preprocessing for a model that takes ``size``×``size`` images."""
        return cls(height=size, width=size)

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], source: str = "preprocessor_config.json") -> BlipImageProcessing:
        """Read a ``BlipImageProcessor`` ``preprocessor_config.json`` dictionary, strictly.

        A value of the wrong type or an impossible one raises :class:`CheckpointError` naming ``source`` and
        the key (``size`` must be ``{height, width}`` of positive integers; ``image_mean`` three numbers or
        one; ``image_std`` positive; ``rescale_factor`` positive; ``resample`` a PIL filter code; the
        ``do_*`` flags booleans, ``do_convert_rgb`` true); so does the config of another processor
        (``image_processor_type``). A key that is absent or null keeps its default.
        """
        if not isinstance(d, dict):
            raise CheckpointError(f"{source}: must be a JSON object of settings, got {_json_kind(d)}")

        def bad(key: str, want: str) -> CheckpointError:
            return CheckpointError(f"{source}: {key!r} must be {want}, got {_show(d[key])}")

        kind = d.get("image_processor_type")
        if kind is not None and kind not in BLIP_PROCESSOR_TYPES:
            raise bad("image_processor_type", f"one of {', '.join(BLIP_PROCESSOR_TYPES)}")
        kw: dict[str, Any] = {}
        size = d.get("size")
        if size is not None:
            ok = isinstance(size, dict) and set(size) == {"height", "width"}
            if not (ok and _positive_int(size["height"]) and _positive_int(size["width"])):
                raise bad("size", "{height, width} of positive integers")
            kw.update(height=size["height"], width=size["width"])
        for key, field, positive in (("image_mean", "mean", False), ("image_std", "std", True)):
            if d.get(key) is None:
                continue
            v = d[key]
            values = [v] * 3 if _number(v) else v if isinstance(v, list) and len(v) == 3 else None
            if values is None or not all(_number(x) and (x > 0 or not positive) for x in values):
                raise bad(key, "3 positive numbers (one per channel)" if positive else "3 numbers (one per channel)")
            kw[field] = tuple(float(x) for x in values)
        for key in ("do_resize", "do_rescale", "do_normalize", "do_convert_rgb"):
            if d.get(key) is None:
                continue
            if not isinstance(d[key], bool):
                raise bad(key, "true or false")
            if key == "do_convert_rgb":
                if not d[key]:
                    raise bad(key, "true (the model takes RGB images; jaxplain always converts them)")
            else:
                kw[key] = d[key]
        if d.get("rescale_factor") is not None:
            if not (_number(d["rescale_factor"]) and d["rescale_factor"] > 0):
                raise bad("rescale_factor", "a positive number")
            kw["rescale_factor"] = float(d["rescale_factor"])
        if d.get("resample") is not None:
            if type(d["resample"]) is not int or d["resample"] not in RESAMPLE_FILTERS:
                codes = ", ".join(f"{k} {v}" for k, v in RESAMPLE_FILTERS.items())
                raise bad("resample", f"a PIL resampling filter ({codes})")
            kw["resample"] = d["resample"]
        return cls(**kw)

    @classmethod
    def from_directory(cls, directory: str | Path, image_size: int = 384) -> BlipImageProcessing:
        """The preprocessing of a checkpoint directory, or BLIP's standard one at ``image_size`` if it has no
        ``preprocessor_config.json``. An unreadable file, invalid JSON, or a bad value raise
        :class:`CheckpointError` naming the file (and the line and column, or the key)."""
        path = Path(directory) / "preprocessor_config.json"
        if not path.exists() and not path.is_symlink():
            return cls.for_image_size(image_size)
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as e:
            why = f"{type(e).__name__}: {e}" if isinstance(e, OSError) else f"not UTF-8 text ({e.reason})"
            raise CheckpointError(f"{path}: cannot read it: {why}") from None
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
        return cls.from_hf_dict(d, source=str(path))

    def to_hf_dict(self) -> dict[str, Any]:
        """The ``preprocessor_config.json`` content for these settings (``BlipImageProcessor``'s)."""
        return {
            "image_processor_type": "BlipImageProcessor",
            "processor_class": "BlipProcessor",
            "do_resize": self.do_resize,
            "size": {"height": self.height, "width": self.width},
            "resample": self.resample,
            "do_rescale": self.do_rescale,
            "rescale_factor": self.rescale_factor,
            "do_normalize": self.do_normalize,
            "image_mean": list(self.mean),
            "image_std": list(self.std),
            "do_convert_rgb": True,
        }

    @functools.cached_property
    def _steps(self) -> ImageProcessing:
        """jaxplain's CLIP preprocessing set to these steps: a resize to (height, width), no centre crop."""
        return ImageProcessing(
            shortest_edge=None,
            height=self.height,
            width=self.width,
            crop=(self.height, self.width),
            mean=self.mean,
            std=self.std,
            resample=self.resample,
            do_resize=self.do_resize,
            do_center_crop=False,
            do_rescale=self.do_rescale,
            rescale_factor=self.rescale_factor,
            do_normalize=self.do_normalize,
        )

    def pixels(self, item: ImageLike, name: str | None = None) -> np.ndarray:
        """One item (path, bytes, PIL image, array) → normalised float32 pixels ``[3, height, width]``; a bad
        item raises :class:`InputError` naming it."""
        return self._steps.pixels(item, name or describe(item))

    def __call__(self, items: Sequence[ImageLike]) -> np.ndarray:
        """Items → pixels ``[N, 3, height, width]``; the first bad item raises :class:`InputError` naming it."""
        if isinstance(items, (str, Path, bytes)):
            raise InputError("expected a list of images, got a single one (wrap it in a list)")
        return self._steps(items)


def blip_fingerprint(
    config: BlipConfig, params: dict[str, Any], processing: BlipImageProcessing, tokenizer: BlipTokenizer
) -> str:
    """A short hash of all that decides a BLIP model's outputs: the config, the float32 weights (the matching
    head's included; either layer layout), the preprocessing and the tokenizer
    (:func:`jaxplain.models.bundle.tokenizer_identity`). Computed as
    :func:`jaxplain.models.bundle.fingerprint` is, with the family name ``blip`` first."""
    import hashlib

    import jax

    from jaxplain.models.bundle import tokenizer_identity

    h = hashlib.blake2b(digest_size=12)
    h.update(b"blip")
    h.update(json.dumps(config.to_hf_dict(), sort_keys=True).encode())
    for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(stack_layers(params))[0], key=lambda kv: str(kv[0])):
        h.update(str(path).encode())
        h.update(np.ascontiguousarray(np.asarray(leaf, np.float32)).tobytes())
    inputs = {"processing": processing.to_hf_dict(), "tokenizer": tokenizer_identity(tokenizer)}
    h.update(json.dumps(inputs, sort_keys=True, default=repr).encode())
    return h.hexdigest()


IMAGE_BATCH = 32  # images encoded per call
TEXT_BATCH = 256  # texts encoded per call


@dataclasses.dataclass(frozen=True, eq=False)
class BlipModel:
    """A loaded ``BlipForImageTextRetrieval`` checkpoint (build it with :func:`jaxplain.load` or
    :func:`load_blip`): its contrastive towers and its matching head, with its own inputs.

    Attributes:
      name: what it was loaded from.
      config: the frozen :class:`~jaxplain.models.blip.BlipConfig`.
      params: the weights (jax arrays, the compute dtype; see :func:`jaxplain.models.blip.init_params`).
      tokenizer: :class:`BlipTokenizer`; processing: :class:`BlipImageProcessing`.
      fingerprint: :func:`blip_fingerprint` of the float32 weights and the inputs.
      directory: the checkpoint directory.
    """

    name: str
    config: BlipConfig
    params: dict[str, Any]
    tokenizer: BlipTokenizer
    processing: BlipImageProcessing
    fingerprint: str
    directory: Path | None = None

    @property
    def embed_dim(self) -> int:
        """Width ``E`` of the contrastive space."""
        return self.config.embed_dim

    def preprocess(self, images: Sequence[ImageLike]) -> np.ndarray:
        """Images → normalised pixels ``[N, 3, H, W]`` float32."""
        return self.processing(images)

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Texts → ``(ids [N, context_length] int32, mask [N, context_length] int32)``."""
        ids = self.tokenizer(texts)
        return ids, self.tokenizer.mask(ids)

    def _pixels(self, images, batch_size: int) -> Iterator[np.ndarray]:
        if isinstance(images, np.ndarray) and images.ndim == 4:
            for s in chunks(len(images), batch_size):
                yield np.asarray(images[s], np.float32)
        else:
            for i in range(0, len(images), batch_size):
                yield self.processing(list(images[i : i + batch_size]))

    def _map_images(self, fn, images, batch_size: int, empty_shape: tuple[int, ...]) -> np.ndarray:
        run = lambda x: fn(self.params, x, self.config)  # noqa: E731
        out = [map_bucketed(run, px, batch_size) for px in self._pixels(images, batch_size)]
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, *empty_shape), np.float32)

    def encode_images(self, images: Sequence[ImageLike] | np.ndarray, batch_size: int = IMAGE_BATCH) -> np.ndarray:
        """Images (paths, bytes, PIL images, arrays) or pixels ``[N, 3, H, W]`` → unit ITC embeddings ``[N, E]``
        float32, decoded and encoded a batch at a time."""
        return self._map_images(_encode_image_jit, images, batch_size, (self.embed_dim,))

    def image_tokens(self, images: Sequence[ImageLike] | np.ndarray, batch_size: int = IMAGE_BATCH) -> np.ndarray:
        """Images or pixels → the tokens ``[N, S, Dv]`` float32 the matching head cross-attends to."""
        v = self.config.vision
        return self._map_images(_image_tokens_jit, images, batch_size, (v.num_positions, v.hidden_size))

    def encode_ids(self, token_ids: np.ndarray, batch_size: int = TEXT_BATCH) -> np.ndarray:
        """Padded ids ``[N, T]`` → unit ITC embeddings ``[N, E]`` float32 (the mask read off the ids)."""
        ids = np.asarray(token_ids, np.int32)
        return map_bucketed(lambda x: _encode_text_jit(self.params, x, self.config), ids, batch_size).astype(np.float32)

    def encode_texts(self, texts: Sequence[str], batch_size: int = TEXT_BATCH) -> np.ndarray:
        """Texts → unit ITC embeddings ``[N, E]`` float32."""
        return self.encode_ids(self.tokenizer(texts), batch_size)

    def similarity(self, images: Sequence[ImageLike], texts: Sequence[str]) -> np.ndarray:
        """The contrastive score, cosine similarity ``[N_images, N_texts]``."""
        return self.encode_images(images) @ self.encode_texts(texts).T

    def itm(self, images: Sequence[ImageLike] | np.ndarray, texts: Sequence[str], chunk: int = 64) -> np.ndarray:
        """``p(match)`` ``[N]`` of the pairs (image ``i``, text ``i``) by the matching head (in chunks of
        ``chunk`` pairs: :func:`jaxplain.models.blip.itm_scores`)."""
        if len(images) != len(texts):
            raise InputError(f"itm scores pairs: {len(images)} images but {len(texts)} texts")
        tokens = self.image_tokens(images)
        ids, mask = self.tokenize(texts)
        return blip.itm_scores(self.params, tokens, ids, mask, self.config, chunk=chunk)

    def attention_maps(self, image: ImageLike, text: str) -> dict[str, Any]:
        """The matching head's cross-attention of one pair on the image's patch grid: the dict of
        :func:`jaxplain.models.blip.cross_attention_maps` (``"maps"`` ``[L, H, T, g, g]``, ``"mean"``,
        ``"class_token"``), cut to the text's ``T`` real tokens, with ``"tokens"`` (their strings, [CLS] and
        [SEP] included) and ``"p_match"``."""
        tokens = jnp.asarray(self.image_tokens([image]))
        ids, mask = self.tokenize([text])
        n = int(mask.sum())
        p, aux = blip.itm_forward(self.params, tokens, jnp.asarray(ids[:, :n]), None, self.config, collect=True)
        out = blip.cross_attention_maps(aux["cross_attention"][0], self.config)
        out.update(tokens=self.tokenizer.hf.convert_ids_to_tokens(ids[0, :n].tolist()), p_match=float(p[0]))
        return out

    def __repr__(self) -> str:
        c = self.config
        return (
            f"BlipModel({self.name!r}, vision {c.vision.num_layers}×{c.vision.hidden_size} patch "
            f"{c.vision.patch_size} @ {c.vision.image_size}px, text {c.text.num_layers}×{c.text.hidden_size}, "
            f"embed {c.embed_dim}, fingerprint {self.fingerprint})"
        )


_encode_image_jit = jax.jit(blip.encode_image, static_argnames="config")
_image_tokens_jit = jax.jit(blip.image_tokens, static_argnames="config")
_encode_text_jit = jax.jit(blip.encode_text_ids, static_argnames="config")


def cast_params(params: dict[str, Any], dtype: Any) -> dict[str, Any]:
    """Floating params cast to ``dtype`` (a lower-precision compute mode); layer norms and softmax still run
    in float32 and the embeddings and ``p(match)`` come out float32."""
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)


def load_blip(directory: Path, name: str, dtype: str = "float32") -> BlipModel:
    """A transformers ``BlipForImageTextRetrieval`` directory as a :class:`BlipModel` (what
    :func:`jaxplain.load` returns for ``"model_type": "blip"``).

    Reads ``config.json`` and the safetensors weights strictly (:func:`read_checkpoint`), the BERT tokenizer
    (:meth:`BlipTokenizer.from_directory`) and ``preprocessor_config.json``
    (:meth:`BlipImageProcessing.from_directory`; BLIP's standard preprocessing at the tower's size where the
    directory has none). A tokenizer with more ids than the embedding table has rows, or a preprocessing whose
    size is not the tower's, is a :class:`CheckpointError` naming the directory.
    """
    from jaxplain.models.loading import DTYPES

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    directory = Path(directory)
    host, config = read_checkpoint(directory)
    tokenizer = BlipTokenizer.from_directory(directory)
    if tokenizer.vocab_size > config.text.vocab_size:
        raise CheckpointError(
            f"{directory}: the tokenizer has {tokenizer.vocab_size} tokens but the model's embedding table "
            f"has {config.text.vocab_size} rows"
        )
    size = config.vision.image_size
    processing = BlipImageProcessing.from_directory(directory, size)
    if (processing.height, processing.width) != (size, size):
        raise CheckpointError(
            f"{directory}: preprocessor_config.json resizes images to {processing.height}×{processing.width}, "
            f"but the vision tower takes {size}×{size}"
        )
    fp = blip_fingerprint(config, host, processing, tokenizer)
    params = jax.tree.map(jnp.asarray, host)
    if dtype != "float32":
        params = cast_params(params, DTYPES[dtype])
    return BlipModel(name, config, params, tokenizer, processing, fp, directory)

"""BLIP's image–text contrastive (ITC) towers and matching (ITM) head: pure functions of ``(params, inputs, config)``.

BLIP's retrieval model scores a pair two ways: the contrastive path (two independent towers, each projected
to a small shared space and compared by cosine similarity) and the image–text matching head (the text
encoder cross-attending to the image tokens). This module is the contrastive path, the one that embeds
images and texts on their own:

* the image tower is a ViT: a patch convolution with a bias, a class token, learned position embeddings,
  pre-norm blocks (``layer_norm1`` → self-attention → residual → ``layer_norm2`` → MLP → residual) and a
  post-layer norm; the class token goes through ``vision_proj`` to the embedding;
* the text tower is BERT-style: word plus position embeddings and a layer norm, then post-norm blocks
  (self-attention → residual → layer norm, MLP → residual → layer norm), bidirectional, with the padding
  mask; the first ([CLS]) position goes through ``text_proj`` to the embedding. In the contrastive path the
  text encoder runs without its cross-attention layers (they belong to the matching head and are kept,
  untouched, under ``params["itm"]``);
* the decision is the cosine similarity of the unit embeddings (:func:`similarity`).

The matching head is here too (:func:`itm_forward`): the text encoder run again over the text, each layer
cross-attending to all the image tokens, its [CLS] position mapped by ``itm_head`` to two logits, ``p(match)``
their softmax's second entry; :func:`itm_scores` scores many pairs in fixed-shape chunks and
:func:`cross_attention_maps` lays its cross-attention out on the patch grid.

``params`` is a nested dict of arrays (see :func:`init_params`); ``config`` is a frozen :class:`BlipConfig`, a
static argument under ``jit``. Each ``*_forward`` returns ``(embedding, intermediates)``, the embedding unit
norm in float32, with intermediates:

* ``"projected"``: the embedding before normalisation ``[N, E]``;
* ``"pooled"``: the class / [CLS] token of the tower's last hidden state ``[N, D]``;
* ``"tokens"``: the tower's last hidden state ``[N, T, D]`` — for images the tokens after the post-layer norm,
  which the matching head cross-attends to;
* with ``collect=True``: ``"layer_tokens"`` ``[N, L + 1, T, D]`` (encoder input, then each layer's output)
  and ``"attention"`` ``[N, L, H, T, T]``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain.batching import bucket, chunks, pad_edge
from jaxplain.errors import CheckpointError
from jaxplain.models.clip import patchify
from jaxplain.models.config import _field, _section, _short
from jaxplain.models.transformer import (
    activation,
    at_least_f32,
    attention,
    dense,
    encoder,
    full_precision,
    is_unstacked,
    layer_norm,
    stack,
    unstack,
)

Params = dict[str, Any]
TOWERS = ("text", "vision")


@dataclasses.dataclass(frozen=True)
class BlipTextConfig:
    """The text tower: a BERT-style bidirectional encoder pooled at the first ([CLS]) position.

    ``cross_attention`` (transformers' ``is_decoder``) says whether each layer also holds a cross-attention
    block over the image tokens: the matching head's, not used by the contrastive path."""

    vocab_size: int = 30524
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_layers: int = 12
    num_heads: int = 8
    max_positions: int = 512
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    bos_token_id: int = 30522
    eos_token_id: int = 2
    sep_token_id: int = 102
    cross_attention: bool = True


@dataclasses.dataclass(frozen=True)
class BlipVisionConfig:
    """The image tower: a ViT with a class token and a post-layer norm (no pre-layer norm)."""

    image_size: int = 384
    patch_size: int = 16
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_layers: int = 12
    num_heads: int = 12
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    num_channels: int = 3  # fixed: BLIP's patch convolution reads RGB

    @property
    def grid_size(self) -> int:
        """Patches along one side of the image (the convolution drops a remainder of pixels)."""
        return self.image_size // self.patch_size

    @property
    def num_positions(self) -> int:
        """Tokens per image: the class token, then the patches."""
        return self.grid_size**2 + 1


# Hugging Face key and kind of each dataclass field, in field order (kinds as in jaxplain.models.config;
# "bool" is checked here).
_TEXT_FIELDS = (
    ("vocab_size", "size"),
    ("hidden_size", "size"),
    ("intermediate_size", "size"),
    ("num_hidden_layers", "size"),
    ("num_attention_heads", "size"),
    ("max_position_embeddings", "size"),
    ("hidden_act", "act"),
    ("layer_norm_eps", "eps"),
    ("pad_token_id", "id"),
    ("bos_token_id", "id"),
    ("eos_token_id", "id"),
    ("sep_token_id", "id"),
    ("is_decoder", "bool"),
)
_VISION_FIELDS = (
    ("image_size", "size"),
    ("patch_size", "size"),
    ("hidden_size", "size"),
    ("intermediate_size", "size"),
    ("num_hidden_layers", "size"),
    ("num_attention_heads", "size"),
    ("hidden_act", "act"),
    ("layer_norm_eps", "eps"),
)


def _read(section: dict, hf: str, default: Any, kind: str, where: str, source: str) -> Any:
    if kind != "bool":
        return _field(section, hf, default, kind, where, source)
    value = section.get(hf)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise CheckpointError(f"{source}: '{where}.{hf}' must be true or false, got {_short(value)}")
    return value


@dataclasses.dataclass(frozen=True)
class BlipConfig:
    """BLIP's two contrastive towers, each projected to ``embed_dim`` (``image_text_hidden_size``)."""

    text: BlipTextConfig = BlipTextConfig()
    vision: BlipVisionConfig = BlipVisionConfig()
    embed_dim: int = 256

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], source: str = "config.json") -> BlipConfig:
        """Build a config from the dictionary of a Hugging Face BLIP ``config.json``
        (``BlipForImageTextRetrieval``'s, or any ``model_type: blip`` one).

        Missing (or null) keys take transformers' defaults. Every value is checked before use: a wrong type
        or a value out of range (a size that is a string, zero or negative; a tower that is not an object;
        heads that do not divide the width; a patch larger than the image; an unknown activation; an
        ``is_decoder`` that is not a boolean; a ``vision_config.num_channels`` other than 3) raises
        :class:`~jaxplain.errors.CheckpointError` naming ``source`` and the key. The text tower's
        ``encoder_hidden_size`` is the image width, as transformers sets it.
        """
        if not isinstance(d, dict):
            raise CheckpointError(f"{source}: must hold a JSON object, got {type(d).__name__} {_short(d)}")
        model_type = d.get("model_type", "blip")
        if model_type != "blip":
            raise CheckpointError(f"{source}: 'model_type' is {_short(model_type)}; this reads 'blip' checkpoints")
        towers: dict[str, Any] = {}
        for name, tower_cls, fields in (
            ("text_config", BlipTextConfig, _TEXT_FIELDS),
            ("vision_config", BlipVisionConfig, _VISION_FIELDS),
        ):
            where, section = _section(d, name, source)
            defaults = tower_cls()
            values = {
                f.name: _read(section, hf, getattr(defaults, f.name), kind, where, source)
                for f, (hf, kind) in zip(dataclasses.fields(tower_cls), fields, strict=False)
            }
            if name == "vision_config":
                values["num_channels"] = _field(section, "num_channels", 3, "channels", where, source)
            cfg = towers[name] = tower_cls(**values)
            if cfg.hidden_size % cfg.num_heads:
                raise CheckpointError(
                    f"{source}: '{where}.hidden_size' ({cfg.hidden_size}) must be divisible by "
                    f"'{where}.num_attention_heads' ({cfg.num_heads})"
                )
            if name == "vision_config" and cfg.patch_size > cfg.image_size:
                raise CheckpointError(
                    f"{source}: '{where}.patch_size' ({cfg.patch_size}) must not exceed "
                    f"'{where}.image_size' ({cfg.image_size})"
                )
        embed_dim = _field(d, "image_text_hidden_size", 256, "size", "config", source)
        return cls(text=towers["text_config"], vision=towers["vision_config"], embed_dim=embed_dim)

    def to_hf_dict(self) -> dict[str, Any]:
        """The ``config.json`` content that transformers' ``BlipForImageTextRetrieval`` reads."""
        text = {"model_type": "blip_text_model"}
        for f, (hf, _) in zip(dataclasses.fields(self.text), _TEXT_FIELDS, strict=True):
            text[hf] = getattr(self.text, f.name)
        text["encoder_hidden_size"] = self.vision.hidden_size
        vision = {"model_type": "blip_vision_model"}
        for f, (hf, _) in zip(dataclasses.fields(self.vision), _VISION_FIELDS, strict=False):
            vision[hf] = getattr(self.vision, f.name)
        return {
            "architectures": ["BlipForImageTextRetrieval"],
            "model_type": "blip",
            "image_text_hidden_size": self.embed_dim,
            "text_config": text,
            "vision_config": vision,
        }


def _unit(x: jax.Array) -> jax.Array:
    x = x.astype(at_least_f32(x.dtype))
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def _batch_first(aux: dict[str, jax.Array]) -> dict[str, jax.Array]:
    return {k: jnp.moveaxis(v, 0, 1) for k, v in aux.items()}


@full_precision
def embed_patches(params: Params, pixels: jax.Array, config: BlipConfig) -> jax.Array:
    """Patch embeddings ``[N, P, D]`` of pixels ``[N, 3, H, W]``: the patch convolution, its bias included,
    without the class token or the position embeddings."""
    v, p = config.vision, params["vision"]
    want = (v.num_channels, v.image_size, v.image_size)
    if pixels.ndim != 4 or tuple(pixels.shape[1:]) != want:
        raise ValueError(f"pixels must be [N, {want[0]}, {want[1]}, {want[2]}] for this model, got {pixels.shape}")
    kernel = p["patch_embedding"]["kernel"]
    covered = v.grid_size * v.patch_size  # the convolution's valid padding drops the remainder
    pixels = pixels[..., :covered, :covered].astype(kernel.dtype)
    return dense(patchify(pixels, v.patch_size), p["patch_embedding"])


@full_precision
def image_forward(
    params: Params, pixels: jax.Array, config: BlipConfig, collect: bool = False
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Encode preprocessed images with BLIP's contrastive image tower.

    Args:
      params: the model params.
      pixels: ``[N, 3, H, W]`` normalised pixels, ``H == W == config.vision.image_size``.
      config: the model config (static).
      collect: also return every layer's tokens and attention maps.

    Returns:
      ``(embedding [N, E], intermediates)``; ``intermediates["tokens"]`` ``[N, T, D]`` holds every image token
      after the post-layer norm (class token first).
    """
    v, p = config.vision, params["vision"]
    patches = embed_patches(params, pixels, config)
    cls = jnp.broadcast_to(p["class_embedding"].astype(patches.dtype), (*patches.shape[:-2], 1, v.hidden_size))
    x = jnp.concatenate([cls, patches], axis=-2) + p["position_embedding"]
    h, aux = encoder(x, p["layers"], num_heads=v.num_heads, act=v.hidden_act, eps=v.layer_norm_eps, collect=collect)
    aux = {"layer_tokens": aux["tokens"], "attention": aux["attention"]} if collect else {}
    aux = _batch_first(aux)
    tokens = layer_norm(h, p["post_ln"], v.layer_norm_eps)
    pooled = tokens[..., 0, :]
    projected = dense(pooled, params["vision_proj"])
    aux.update(tokens=tokens, pooled=pooled, projected=projected)
    return _unit(projected), aux


def embed_tokens(params: Params, token_ids: jax.Array) -> jax.Array:
    """Word embeddings ``[N, T, D]`` of ``token_ids`` ``[N, T]`` (before the position embeddings and the
    embedding layer norm)."""
    return jnp.asarray(params["text"]["token_embedding"])[token_ids]  # params may be NumPy arrays


def _self_attention_part(h: jax.Array, lp: Params, keep: jax.Array | None, config: BlipTextConfig):
    """A BERT layer's self-attention, its residual and its post-layer norm."""
    a, probs = attention(h, lp["attn"], config.num_heads, keep)
    return layer_norm(h + a, lp["attn_ln"], config.layer_norm_eps), probs


def _mlp_part(h: jax.Array, lp: Params, config: BlipTextConfig) -> jax.Array:
    """A BERT layer's MLP, its residual and its post-layer norm."""
    m = dense(activation(config.hidden_act)(dense(h, lp["mlp"]["fc1"])), lp["mlp"]["fc2"])
    return layer_norm(h + m, lp["mlp_ln"], config.layer_norm_eps)


def _text_block(h: jax.Array, lp: Params, keep: jax.Array | None, config: BlipTextConfig):
    """One post-norm BERT layer (without cross-attention); ``keep`` ``[..., 1, 1, T]`` marks real keys."""
    h, probs = _self_attention_part(h, lp, keep, config)
    return _mlp_part(h, lp, config), probs


@full_precision
def text_forward(
    params: Params,
    token_ids: jax.Array,
    mask: jax.Array | None,
    config: BlipConfig,
    collect: bool = False,
    *,
    token_embeds: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Encode tokenised texts with BLIP's contrastive text tower (no cross-attention).

    Args:
      params: the model params.
      token_ids: ``[N, T]`` int ids starting with the [CLS] id, ``T <= config.text.max_positions``.
      mask: ``[N, T]`` attention mask, 1 (or True) for real tokens and 0 for padding; None attends to all.
      config: the model config (static).
      collect: also return every layer's tokens and attention maps.
      token_embeds: optional ``[N, T, D]`` word embeddings used instead of looking up ``token_ids`` (which
        then only give the shape), for attributions over words.

    Returns:
      ``(embedding [N, E], intermediates)``.
    """
    t, p = config.text, params["text"]
    if token_ids.ndim != 2 or token_ids.shape[1] > t.max_positions:
        raise ValueError(f"token_ids must be [N, T] with T <= {t.max_positions}, got {token_ids.shape}")
    if mask is not None and tuple(mask.shape) != tuple(token_ids.shape):
        raise ValueError(f"mask must have the shape of token_ids {token_ids.shape}, got {mask.shape}")
    length = token_ids.shape[1]
    x = embed_tokens(params, token_ids) if token_embeds is None else token_embeds
    x = x.astype(p["token_embedding"].dtype) + p["position_embedding"][:length]
    x = layer_norm(x, p["embed_ln"], t.layer_norm_eps)
    keep = None if mask is None else (jnp.asarray(mask) != 0)[..., None, None, :]

    def block(h, lp):
        h, probs = _text_block(h, lp, keep, t)
        return h, ((h, probs) if collect else None)

    layers = p["layers"]
    if is_unstacked(layers):
        h, outs = x, []
        for lp in layers:
            h, out = block(h, lp)
            outs.append(out)
        stacked = jax.tree.map(lambda *a: jnp.stack(a), *outs) if collect and outs else None
    else:
        h, stacked = jax.lax.scan(block, x, layers)
    aux = {}
    if collect:
        hs, probs = stacked
        aux = _batch_first({"layer_tokens": jnp.concatenate([x[None], hs], axis=0), "attention": probs})
    pooled = h[..., 0, :]
    projected = dense(pooled, params["text_proj"])
    aux.update(tokens=h, pooled=pooled, projected=projected)
    return _unit(projected), aux


def encode_image(params: Params, pixels: jax.Array, config: BlipConfig) -> jax.Array:
    """Unit-norm image embeddings ``[N, E]`` for pixels ``[N, 3, H, W]``."""
    return image_forward(params, pixels, config)[0]


def encode_text(params: Params, token_ids: jax.Array, mask: jax.Array | None, config: BlipConfig) -> jax.Array:
    """Unit-norm text embeddings ``[N, E]`` for token ids ``[N, T]`` and their attention mask."""
    return text_forward(params, token_ids, mask, config)[0]


@full_precision
def similarity(image_emb: jax.Array, text_emb: jax.Array) -> jax.Array:
    """``[N_images, N_texts]`` cosine similarities of unit embeddings: the contrastive path's score
    (``BlipForImageTextRetrieval(..., use_itm_head=False)``'s ``itm_score``)."""
    return image_emb @ text_emb.T


# --- the image–text matching (ITM) head ----------------------------------------------------------------------


def image_tokens(params: Params, pixels: jax.Array, config: BlipConfig) -> jax.Array:
    """The image tokens ``[N, S, Dv]`` the matching head cross-attends to: every token of the image tower after
    its post-layer norm, class token first (``S = config.vision.num_positions``)."""
    return image_forward(params, pixels, config)[1]["tokens"]


def _cross_attention(h: jax.Array, image: jax.Array, p: Params, num_heads: int) -> tuple[jax.Array, jax.Array]:
    """Multi-head attention of the text tokens ``h`` ``[..., T, D]`` (queries) over the image tokens ``image``
    ``[..., S, Dv]`` (keys and values, projected from the image width to ``D``); every image token is attended
    to (transformers' ``encoder_attention_mask`` of ones). Returns ``([..., T, D], probs [..., H, T, S])``."""
    *batch, t, d = h.shape
    s, hd = image.shape[-2], d // num_heads
    q = dense(h, p["q"]).reshape(*batch, t, num_heads, hd)
    k = dense(image, p["k"]).reshape(*batch, s, num_heads, hd)
    v = dense(image, p["v"]).reshape(*batch, s, num_heads, hd)
    ft = at_least_f32(h.dtype)
    logits = jnp.einsum("...qhd,...khd->...hqk", q, k).astype(ft) * (hd**-0.5)
    probs = jax.nn.softmax(logits, axis=-1).astype(h.dtype)
    out = jnp.einsum("...hqk,...khd->...qhd", probs, v).reshape(*batch, t, d)
    return dense(out, p["out"]), probs


def _itm_block(h, lp, cp, image, keep, config: BlipTextConfig):
    """One layer of the text encoder as the matching head runs it: self-attention (with the padding mask), then
    cross-attention to the image tokens, then the MLP; each followed by its residual and post-layer norm."""
    h, self_probs = _self_attention_part(h, lp, keep, config)
    c, cross_probs = _cross_attention(h, image, cp["attn"], config.num_heads)
    h = layer_norm(h + c, cp["ln"], config.layer_norm_eps)
    return _mlp_part(h, lp, config), self_probs, cross_probs


@full_precision
def itm_forward(
    params: Params,
    image_tokens: jax.Array,
    token_ids: jax.Array,
    mask: jax.Array | None,
    config: BlipConfig,
    collect: bool = False,
    *,
    token_embeds: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """BLIP's image–text matching head on ``N`` (image, text) pairs: ``p(match)`` of each pair.

    As transformers' ``BlipForImageTextRetrieval(..., use_itm_head=True)``: the text encoder runs over the
    text's ids as they are (its first token, [CLS], is *not* replaced by an [ENC] token, as the original BLIP
    code does), bidirectionally with the padding mask, each layer cross-attending to every image token; the
    first position of its last hidden state goes through ``itm_head`` (a linear map to 2 logits) and
    ``p(match) = softmax(logits)[1]``.

    Args:
      params: the model params, with the matching head's under ``params["itm"]``.
      image_tokens: ``[N, S, Dv]`` image tokens (:func:`image_tokens`), one image per pair.
      token_ids: ``[N, T]`` int ids starting with the [CLS] id, ``T <= config.text.max_positions``.
      mask: ``[N, T]`` attention mask, 1 (or True) for real tokens and 0 for padding; None attends to all.
      config: the model config (static); ``config.text.cross_attention`` must be set.
      collect: also return every layer's attention maps.
      token_embeds: optional ``[N, T, D]`` word embeddings used instead of looking up ``token_ids``.

    Returns:
      ``(p_match [N] float32, intermediates)`` with ``"logits"`` ``[N, 2]`` (float32; transformers'
      ``itm_score``), ``"pooled"`` ``[N, D]`` (the [CLS] token fed to the head) and ``"tokens"`` ``[N, T, D]``
      (the last hidden state); with ``collect=True`` also ``"cross_attention"`` ``[N, L, H, T, S]`` (softmax
      weights of each text token over the image tokens, per layer and head; position 0 of ``S`` is the
      image's class token) and ``"self_attention"`` ``[N, L, H, T, T]``.
    """
    t, p = config.text, params["text"]
    if not t.cross_attention or "cross" not in params.get("itm", {}):
        raise ValueError("this model has no cross-attention layers (text_config.is_decoder is false): no ITM head")
    if token_ids.ndim != 2 or token_ids.shape[1] > t.max_positions:
        raise ValueError(f"token_ids must be [N, T] with T <= {t.max_positions}, got {token_ids.shape}")
    if mask is not None and tuple(mask.shape) != tuple(token_ids.shape):
        raise ValueError(f"mask must have the shape of token_ids {token_ids.shape}, got {mask.shape}")
    want = (config.vision.num_positions, config.vision.hidden_size)
    if image_tokens.ndim != 3 or tuple(image_tokens.shape[1:]) != want or image_tokens.shape[0] != token_ids.shape[0]:
        raise ValueError(
            f"image_tokens must be [N, {want[0]}, {want[1]}] with N = {token_ids.shape[0]} (one image per text), "
            f"got {image_tokens.shape}"
        )
    length = token_ids.shape[1]
    x = embed_tokens(params, token_ids) if token_embeds is None else token_embeds
    dtype = p["token_embedding"].dtype
    x = layer_norm(x.astype(dtype) + p["position_embedding"][:length], p["embed_ln"], t.layer_norm_eps)
    image = jnp.asarray(image_tokens).astype(dtype)
    keep = None if mask is None else (jnp.asarray(mask) != 0)[..., None, None, :]

    def block(h, lps):
        h, self_probs, cross_probs = _itm_block(h, *lps, image, keep, t)
        return h, ((self_probs, cross_probs) if collect else None)

    layers, cross = p["layers"], params["itm"]["cross"]
    if is_unstacked(layers):
        h, outs = x, []
        for lp, cp in zip(layers, unstack(cross), strict=True):
            h, out = block(h, (lp, cp))
            outs.append(out)
        stacked = jax.tree.map(lambda *a: jnp.stack(a), *outs) if collect and outs else None
    else:
        h, stacked = jax.lax.scan(block, x, (layers, stack(cross)))
    aux = {}
    if collect:
        self_probs, cross_probs = stacked
        aux = _batch_first({"self_attention": self_probs, "cross_attention": cross_probs})
    pooled = h[..., 0, :]
    logits = dense(pooled, params["itm"]["head"]).astype(at_least_f32(h.dtype))
    aux.update(logits=logits, pooled=pooled, tokens=h)
    return jax.nn.softmax(logits, axis=-1)[..., 1], aux


@functools.partial(jax.jit, static_argnames="config")
def _itm_chunk(params: Params, tokens: jax.Array, ids: jax.Array, mask: jax.Array, config: BlipConfig) -> jax.Array:
    return itm_forward(params, tokens, ids, mask, config)[0]


ITM_CHUNK = 64  # pairs the matching head scores at a time in itm_scores


def itm_scores(
    params: Params,
    image_tokens: Any,
    token_ids: Any,
    mask: Any,
    config: BlipConfig,
    *,
    image_rows: Any = None,
    text_rows: Any = None,
    chunk: int = ITM_CHUNK,
) -> np.ndarray:
    """``p(match)`` of ``M`` (image, text) pairs, scored ``chunk`` pairs at a time (host helper).

    Each chunk's image tokens and texts are gathered just before they are scored, so memory holds one chunk's
    ``[chunk, S, Dv]`` tokens whatever ``M`` is. Every call of the jitted head has the shape ``[C, S, Dv]``,
    ``C = min(chunk, bucket(M))`` (the last chunk is padded by repeating its last pair): one compilation per
    ``(C, T)`` and config.

    Args:
      params: the model params (jax arrays; NumPy ones are moved to the device once per call).
      image_tokens: the images' tokens ``[I, S, Dv]`` (a NumPy array, a memory map or a jax array, indexed by
        rows), or a function ``rows [C] int64 → [C, S, Dv]`` that makes them (e.g. runs the image tower on
        those rows' pixels: see :func:`tokens_from_pixels`).
      token_ids: ``[J, T]`` token ids; mask: ``[J, T]`` their attention mask (None: ``token_ids != pad``).
      config: the model config.
      image_rows, text_rows: ``[M]`` the image row and the text row of each pair. Both None: the pairs are
        image ``i`` with text ``i`` (``I == J == M``).
      chunk: pairs per call (bounds memory).

    Returns:
      ``[M]`` float32 ``p(match)``.
    """
    ids = np.asarray(token_ids)
    if ids.ndim != 2:
        raise ValueError(f"token_ids must be [J, T], got shape {ids.shape}")
    mask = (ids != config.text.pad_token_id) if mask is None else np.asarray(mask)
    if (image_rows is None) != (text_rows is None):
        raise ValueError("give both image_rows and text_rows, or neither")
    if image_rows is None:
        image_rows = text_rows = np.arange(len(ids))
    image_rows, text_rows = np.asarray(image_rows, np.int64), np.asarray(text_rows, np.int64)
    if image_rows.shape != text_rows.shape or image_rows.ndim != 1:
        raise ValueError(f"image_rows and text_rows must be [M] alike, got {image_rows.shape} and {text_rows.shape}")
    m = len(image_rows)
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1, got {chunk}")
    out = np.zeros(m, np.float32)
    if not m:
        return out
    params = jax.tree.map(jnp.asarray, params)
    size = min(chunk, bucket(m))
    gather = image_tokens if callable(image_tokens) else (lambda rows: image_tokens[rows])
    for s in chunks(m, size):
        rows_i = pad_edge(image_rows[s], size)
        rows_t = pad_edge(text_rows[s], size)
        tokens = jnp.asarray(gather(rows_i))
        p = _itm_chunk(params, tokens, jnp.asarray(ids[rows_t]), jnp.asarray(mask[rows_t]), config)
        out[s] = np.asarray(p)[: s.stop - s.start]
    return out


@functools.partial(jax.jit, static_argnames="config")
def _tokens_jit(params: Params, pixels: jax.Array, config: BlipConfig) -> jax.Array:
    return image_tokens(params, pixels, config)


def tokens_from_pixels(params: Params, pixels: Any, config: BlipConfig):
    """A function ``rows [C] → image tokens [C, S, Dv]`` that runs the image tower on ``pixels[rows]`` (pixels
    ``[I, 3, H, W]``: a NumPy array or a memory map), for :func:`itm_scores` over a bank whose tokens are too
    large to keep (``S · Dv`` floats per image: 443,136 at BLIP-base). One compilation per chunk shape."""
    params = jax.tree.map(jnp.asarray, params)
    return lambda rows: _tokens_jit(params, jnp.asarray(np.asarray(pixels[rows], np.float32)), config)


def cross_attention_maps(cross_attention: Any, config: BlipConfig) -> dict[str, np.ndarray]:
    """Per-token maps over the image's patch grid from the matching head's cross-attention.

    Args:
      cross_attention: ``[..., L, H, T, S]`` cross-attention weights (``itm_forward(..., collect=True)``'s
        ``"cross_attention"``, of one pair ``[L, H, T, S]`` or a batch ``[N, L, H, T, S]``).
      config: the model config (gives the grid: ``S = 1 + g²``, ``g = config.vision.grid_size``).

    Returns:
      A dict of float32 NumPy arrays:

      * ``"maps"`` ``[..., L, H, T, g, g]``: the weight each text token (row ``t``) gives each image patch, per
        layer and head, with the class-token position dropped and the patches laid out row by row as the
        patch convolution reads them (row ``i``, column ``j`` is the patch at pixels ``[i·p:(i+1)·p,
        j·p:(j+1)·p]``). A token's map sums to one minus its weight on the class token;
      * ``"mean"`` ``[..., L, T, g, g]``: ``"maps"`` averaged over the heads;
      * ``"class_token"`` ``[..., L, H, T]``: the weight on the class token that the maps leave out.

    Rows of padding tokens are whatever the head computed for them; slice them off by the text's mask.
    """
    a = np.asarray(cross_attention, np.float32)
    g = config.vision.grid_size
    if a.ndim < 4 or a.shape[-1] != g * g + 1:
        raise ValueError(f"cross_attention must be [..., L, H, T, {g * g + 1}] for this model, got {a.shape}")
    maps = a[..., 1:].reshape(*a.shape[:-1], g, g)
    return {"maps": maps, "mean": maps.mean(axis=-4), "class_token": a[..., 0]}


def encode_text_ids(params: Params, token_ids: jax.Array, config: BlipConfig) -> jax.Array:
    """Unit-norm text embeddings ``[N, E]`` of padded ids ``[N, T]``, the mask read off the ids
    (``ids != config.text.pad_token_id``: a tokenizer pads with [PAD], which no text holds). The
    ``(params, ids, config)`` signature of :class:`jaxplain.models.family.Family`'s text encoders."""
    return encode_text(params, token_ids, token_ids != config.text.pad_token_id, config)


def _with_layers(params: Params, layout) -> Params:
    out = {**params, **{tower: {**params[tower], "layers": layout(params[tower]["layers"])} for tower in TOWERS}}
    if "cross" in params.get("itm", {}):
        out["itm"] = {**params["itm"], "cross": layout(params["itm"]["cross"])}
    return out


def unstack_layers(params: Params) -> Params:
    """``params`` with each tower's ``layers`` (and the matching head's cross-attention layers) as a tuple of
    per-layer dicts: the same model, unrolled."""
    return _with_layers(params, unstack)


def stack_layers(params: Params) -> Params:
    """The inverse of :func:`unstack_layers`: every layer stack along a leading ``[L]`` axis."""
    return _with_layers(params, stack)


def _dense_init(key, n_in, n_out, layers=None):
    shape = (n_in, n_out) if layers is None else (layers, n_in, n_out)
    bias = (n_out,) if layers is None else (layers, n_out)
    return {"kernel": n_in**-0.5 * jax.random.normal(key, shape, jnp.float32), "bias": jnp.zeros(bias, jnp.float32)}


def _ln_init(d, layers=None):
    shape = (d,) if layers is None else (layers, d)
    return {"scale": jnp.ones(shape, jnp.float32), "bias": jnp.zeros(shape, jnp.float32)}


def _attn_init(key, d, n, d_kv=None):
    ks = jax.random.split(key, 4)
    d_kv = d if d_kv is None else d_kv
    sizes = {"q": d, "k": d_kv, "v": d_kv, "out": d}
    return {name: _dense_init(k, sizes[name], d, n) for name, k in zip(("q", "k", "v", "out"), ks)}


def _mlp_init(key, d, f, n):
    k1, k2 = jax.random.split(key)
    return {"fc1": _dense_init(k1, d, f, n), "fc2": _dense_init(k2, f, d, n)}


def init_params(key: jax.Array, config: BlipConfig) -> Params:
    """Random params in jaxplain's BLIP layout (float32), for tests and training from scratch.

    Layout (dense kernels ``[in, out]``; ``layers`` stacked along a leading ``[L]`` axis)::

      {"vision": {class_embedding [D], patch_embedding{kernel [3·p·p, D], bias}, position_embedding [T, D],
                  layers{ln1, attn{q,k,v,out}, ln2, mlp{fc1,fc2}}, post_ln},
       "text": {token_embedding [V, D], position_embedding [P, D], embed_ln,
                layers{attn{q,k,v,out}, attn_ln, mlp{fc1,fc2}, mlp_ln}},
       "vision_proj": {kernel [D, E], bias}, "text_proj": {kernel [D, E], bias},
       "itm": {"head": {kernel [D, 2], bias}, "cross": {attn{q,k,v,out}, ln}}}

    ``"itm"`` is the matching head's (its cross-attention layers only when ``config.text.cross_attention``);
    the contrastive towers do not read it.
    """
    t, v = config.text, config.vision
    ks = jax.random.split(key, 12)
    td, vd = t.hidden_size, v.hidden_size
    pdim = v.num_channels * v.patch_size**2
    itm: Params = {"head": _dense_init(ks[0], td, 2)}
    if t.cross_attention:
        itm["cross"] = {"attn": _attn_init(ks[1], td, t.num_layers, vd), "ln": _ln_init(td, t.num_layers)}
    return {
        "vision": {
            "class_embedding": vd**-0.5 * jax.random.normal(ks[2], (vd,)),
            "patch_embedding": _dense_init(ks[3], pdim, vd),
            "position_embedding": vd**-0.5 * jax.random.normal(ks[4], (v.num_positions, vd)),
            "layers": {
                "ln1": _ln_init(vd, v.num_layers),
                "attn": _attn_init(ks[5], vd, v.num_layers),
                "ln2": _ln_init(vd, v.num_layers),
                "mlp": _mlp_init(ks[6], vd, v.intermediate_size, v.num_layers),
            },
            "post_ln": _ln_init(vd),
        },
        "text": {
            "token_embedding": td**-0.5 * jax.random.normal(ks[7], (t.vocab_size, td)),
            "position_embedding": td**-0.5 * jax.random.normal(ks[8], (t.max_positions, td)),
            "embed_ln": _ln_init(td),
            "layers": {
                "attn": _attn_init(ks[9], td, t.num_layers),
                "attn_ln": _ln_init(td, t.num_layers),
                "mlp": _mlp_init(ks[10], td, t.intermediate_size, t.num_layers),
                "mlp_ln": _ln_init(td, t.num_layers),
            },
        },
        "vision_proj": _dense_init(ks[11], vd, config.embed_dim),
        "text_proj": _dense_init(jax.random.fold_in(ks[11], 1), td, config.embed_dim),
        "itm": itm,
    }

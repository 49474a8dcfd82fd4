"""SigLIP as pure functions of ``(params, inputs, config)``.

SigLIP is a two-tower model like CLIP, with three differences that matter here:

* the image tower has no class token and no pre-layer norm: patch embeddings (a convolution *with* a bias)
  plus learned position embeddings go through the encoder and a post-layer norm, and a multi-head
  attention-pooling head (a learned probe attending over the tokens, then a layer norm and MLP residual)
  gives the embedding; there is no image projection;
* the text tower is bidirectional (no causal mask) and is pooled at the *last* position (texts are padded to
  the full context with the pad id, and no attention mask is used, as in the original model), then a linear
  head with a bias maps it to the embedding;
* the decision is a sigmoid per (image, text) pair, ``sigmoid(exp(logit_scale) · u·v + logit_bias)``, not a
  softmax over the texts.

``params`` is a nested dict of arrays (see :func:`init_params`); ``config`` is a frozen
:class:`SiglipConfig`, a static argument under ``jit``. Each ``*_forward`` returns ``(embedding,
intermediates)``, the embedding unit-norm float32; intermediates are named as in
:mod:`jaxplain.models.clip`:

* ``"projected"``: the embedding before normalisation ``[N, E]``;
* ``"pooled"``: the pooled token ``[N, D]`` — for text the last position after the final layer norm, for
  images the attention-pooling head's output (which is also ``"projected"``: SigLIP has no image projection);
* with ``collect=True``: ``"tokens"`` ``[N, L + 1, T, D]`` (encoder input, then each layer's output),
  ``"attention"`` ``[N, L, H, T, T]``, and for images ``"pool_attention"`` ``[N, H, T]`` (the probe's
  attention over the tokens).

The encoder blocks are :func:`jaxplain.models.transformer.encoder`'s (pre-norm, full attention when no mask
is given); the attention-pooling head, whose single query attends over all tokens, is written here.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from jaxplain.errors import CheckpointError
from jaxplain.models.clip import patchify
from jaxplain.models.config import _field, _section, _short
from jaxplain.models.transformer import (
    activation,
    at_least_f32,
    dense,
    encoder,
    encoder_at,
    full_precision,
    layer_norm,
    stack,
    unstack,
)

Params = dict[str, Any]
TOWERS = ("text", "vision")

# The original model's decision at initialisation: temperature 10, bias -10 (SigLIP paper, section 3.2).
LOGIT_SCALE_INIT = math.log(10.0)
LOGIT_BIAS_INIT = -10.0


@dataclasses.dataclass(frozen=True)
class SiglipTextConfig:
    """The text tower: a bidirectional transformer pooled at the last position, then a linear head."""

    vocab_size: int = 32000
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_layers: int = 12
    num_heads: int = 12
    max_positions: int = 64
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6
    projection_size: int = 768
    pad_token_id: int = 1
    bos_token_id: int = 49406
    eos_token_id: int = 49407


@dataclasses.dataclass(frozen=True)
class SiglipVisionConfig:
    """The image tower: a ViT without a class token or pre-layer norm, pooled by attention (MAP head)."""

    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_layers: int = 12
    num_heads: int = 12
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6

    @property
    def grid_size(self) -> int:
        """Patches along one side of the image. The patch convolution has no padding, so an image size that
        is not a multiple of the patch size (384 with 14-pixel patches: 27 patches) drops the last rows and
        columns of pixels."""
        return self.image_size // self.patch_size

    @property
    def num_positions(self) -> int:
        """Tokens per image: the patches (there is no class token)."""
        return self.grid_size**2


# Hugging Face key and kind of each dataclass field, in field order (kinds as in jaxplain.models.config).
_TEXT_FIELDS = (
    ("vocab_size", "size"),
    ("hidden_size", "size"),
    ("intermediate_size", "size"),
    ("num_hidden_layers", "size"),
    ("num_attention_heads", "size"),
    ("max_position_embeddings", "size"),
    ("hidden_act", "act"),
    ("layer_norm_eps", "eps"),
    ("projection_size", "size"),
    ("pad_token_id", "id"),
    ("bos_token_id", "id"),
    ("eos_token_id", "id"),
)
_VISION_FIELDS = (
    ("image_size", "size"),
    ("patch_size", "size"),
    ("num_channels", "channels"),
    ("hidden_size", "size"),
    ("intermediate_size", "size"),
    ("num_hidden_layers", "size"),
    ("num_attention_heads", "size"),
    ("hidden_act", "act"),
    ("layer_norm_eps", "eps"),
)


@dataclasses.dataclass(frozen=True)
class SiglipConfig:
    """A two-tower SigLIP model; the text head maps into the image tower's width, where both embed."""

    text: SiglipTextConfig = SiglipTextConfig()
    vision: SiglipVisionConfig = SiglipVisionConfig()

    @property
    def embed_dim(self) -> int:
        """The width of both embeddings (the image tower's hidden size)."""
        return self.vision.hidden_size

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], source: str = "config.json") -> SiglipConfig:
        """Build a config from the dictionary of a Hugging Face ``SiglipModel`` ``config.json``.

        Missing (or null) keys take transformers' defaults; a missing text ``projection_size`` is the text
        width, as there. Every value is checked before use: a wrong type or a value out of range (a size
        that is a string, zero or negative; a tower that is not an object; heads that do not divide the
        width; a patch larger than the image; an unknown activation; an image
        tower without its attention-pooling head; a text head whose size differs from the image width, so
        the two embeddings could not be compared) raises :class:`~jaxplain.errors.CheckpointError` naming
        ``source`` and the key.
        """
        if not isinstance(d, dict):
            raise CheckpointError(f"{source}: must hold a JSON object, got {type(d).__name__} {_short(d)}")
        model_type = d.get("model_type", "siglip")
        if model_type != "siglip":
            raise CheckpointError(f"{source}: 'model_type' is {_short(model_type)}; this reads 'siglip' checkpoints")
        towers: dict[str, Any] = {}
        for name, tower_cls, fields in (
            ("text_config", SiglipTextConfig, _TEXT_FIELDS),
            ("vision_config", SiglipVisionConfig, _VISION_FIELDS),
        ):
            where, section = _section(d, name, source)
            defaults = tower_cls()
            values = {}
            for f, (hf, kind) in zip(dataclasses.fields(tower_cls), fields, strict=True):
                default = getattr(defaults, f.name)
                if hf == "projection_size":  # transformers: the text width when not given
                    default = values["hidden_size"]
                values[f.name] = _field(section, hf, default, kind, where, source)
            cfg = towers[name] = tower_cls(**values)
            if cfg.hidden_size % cfg.num_heads:
                raise CheckpointError(
                    f"{source}: '{where}.hidden_size' ({cfg.hidden_size}) must be divisible by "
                    f"'{where}.num_attention_heads' ({cfg.num_heads})"
                )
            if name == "vision_config":
                use_head = section.get("vision_use_head", True)
                if use_head is not True:
                    raise CheckpointError(
                        f"{source}: '{where}.vision_use_head' must be true (SigLIP's image embedding is its "
                        f"attention-pooling head's output), got {_short(use_head)}"
                    )
                if cfg.patch_size > cfg.image_size:
                    raise CheckpointError(
                        f"{source}: '{where}.patch_size' ({cfg.patch_size}) must not exceed "
                        f"'{where}.image_size' ({cfg.image_size})"
                    )
        text, vision = towers["text_config"], towers["vision_config"]
        if text.projection_size != vision.hidden_size:
            where = _section(d, "text_config", source)[0]
            raise CheckpointError(
                f"{source}: '{where}.projection_size' ({text.projection_size}) must equal the image width "
                f"'{_section(d, 'vision_config', source)[0]}.hidden_size' ({vision.hidden_size}): both "
                "embeddings live in one space"
            )
        return cls(text=text, vision=vision)

    def to_hf_dict(self) -> dict[str, Any]:
        """The ``config.json`` content that transformers' ``SiglipModel`` reads."""
        out: dict[str, Any] = {"architectures": ["SiglipModel"], "model_type": "siglip"}
        for name, tower, fields, model_type in (
            ("text_config", self.text, _TEXT_FIELDS, "siglip_text_model"),
            ("vision_config", self.vision, _VISION_FIELDS, "siglip_vision_model"),
        ):
            section = {"model_type": model_type}
            for f, (hf, _) in zip(dataclasses.fields(tower), fields, strict=True):
                section[hf] = getattr(tower, f.name)
            if name == "vision_config":
                section["vision_use_head"] = True
            out[name] = section
        return out


def _unit(x: jax.Array) -> jax.Array:
    x = x.astype(at_least_f32(x.dtype))
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def _batch_first(aux: dict[str, jax.Array]) -> dict[str, jax.Array]:
    return {k: jnp.moveaxis(v, 0, 1) for k, v in aux.items()}


def _mlp(x: jax.Array, p: Params, act: str) -> jax.Array:
    return dense(activation(act)(dense(x, p["fc1"])), p["fc2"])


@full_precision
def embed_patches(params: Params, pixels: jax.Array, config: SiglipConfig) -> jax.Array:
    """Patch embeddings ``[N, P, D]`` of pixels ``[N, C, H, W]``: the patch convolution, its bias included,
    without the position embeddings (an affine map of the pixels)."""
    v, p = config.vision, params["vision"]
    want = (v.num_channels, v.image_size, v.image_size)
    if pixels.ndim != 4 or tuple(pixels.shape[1:]) != want:
        raise ValueError(f"pixels must be [N, {want[0]}, {want[1]}, {want[2]}] for this model, got {pixels.shape}")
    kernel = p["patch_embedding"]["kernel"]
    covered = v.grid_size * v.patch_size  # the convolution's valid padding drops the remainder
    pixels = pixels[..., :covered, :covered].astype(kernel.dtype)
    return dense(patchify(pixels, v.patch_size), p["patch_embedding"])


def attention_pool(x: jax.Array, p: Params, config: SiglipVisionConfig) -> tuple[jax.Array, jax.Array]:
    """The attention-pooling (MAP) head over tokens ``x`` ``[N, T, D]``.

    A learned probe is the single query of a multi-head attention over the tokens (keys and values are the
    tokens, all with biases); its output ``h`` then gets a residual MLP, ``h + mlp(layer_norm(h))``.

    Returns the pooled embedding ``[N, D]`` and the probe's attention probabilities ``[N, H, T]``.
    """
    *batch, t, d = x.shape
    nh = config.num_heads
    hd = d // nh
    q = dense(p["probe"].astype(x.dtype), p["attn"]["q"]).reshape(nh, hd)
    k = dense(x, p["attn"]["k"]).reshape(*batch, t, nh, hd)
    v = dense(x, p["attn"]["v"]).reshape(*batch, t, nh, hd)
    ft = at_least_f32(x.dtype)
    logits = jnp.einsum("hd,...khd->...hk", q, k).astype(ft) * (hd**-0.5)
    probs = jax.nn.softmax(logits, axis=-1).astype(x.dtype)
    h = dense(jnp.einsum("...hk,...khd->...hd", probs, v).reshape(*batch, d), p["attn"]["out"])
    h = h + _mlp(layer_norm(h, p["ln"], config.layer_norm_eps), p["mlp"], config.hidden_act)
    return h, probs


@full_precision
def image_forward(
    params: Params,
    pixels: jax.Array,
    config: SiglipConfig,
    collect: bool = False,
    *,
    taps: dict[str, jax.Array] | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Encode preprocessed images.

    Args:
      params: the model params.
      pixels: ``[N, C, H, W]`` normalised pixels with ``H == W == config.vision.image_size`` (SigLIP's
        processors map pixels to ``[-1, 1]``).
      config: the model config (static).
      collect: also return per-layer tokens and attention maps, and the pooling head's attention.
      taps: additive interventions on the encoder's block inputs and attention maps, for gradients of
        intermediates (see :func:`jaxplain.models.transformer.encoder`).

    Returns:
      ``(embedding [N, D], intermediates)``.
    """
    v, p = config.vision, params["vision"]
    x = embed_patches(params, pixels, config) + p["position_embedding"]
    h, aux = encoder(
        x, p["layers"], num_heads=v.num_heads, act=v.hidden_act, eps=v.layer_norm_eps, collect=collect, taps=taps
    )
    aux = _batch_first(aux)
    h = layer_norm(h, p["post_ln"], v.layer_norm_eps)
    pooled, pool_probs = attention_pool(h, p["head"], v)
    if collect:
        aux["pool_attention"] = pool_probs
    aux.update(pooled=pooled, projected=pooled)
    return _unit(pooled), aux


def embed_tokens(params: Params, token_ids: jax.Array) -> jax.Array:
    """Token embeddings ``[N, T, D]`` of ``token_ids`` ``[N, T]`` (without the position embeddings)."""
    return jnp.asarray(params["text"]["token_embedding"])[token_ids]  # params may be NumPy arrays


@full_precision
def text_forward(
    params: Params,
    token_ids: jax.Array,
    config: SiglipConfig,
    collect: bool = False,
    *,
    token_embeds: jax.Array | None = None,
    taps: dict[str, jax.Array] | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Encode tokenised texts.

    Args:
      params: the model params.
      token_ids: ``[N, T]`` int ids, ``T <= config.text.max_positions``. SigLIP was trained on texts padded
        to the full context with the pad id and no attention mask, and pools the last position: pad them
        so (``T == max_positions``) for the model's real behaviour. No mask is applied here either.
      config: the model config (static).
      collect: also return per-layer tokens and attention maps.
      token_embeds: optional ``[N, T, D]`` input embeddings used instead of looking up ``token_ids``
        (which then only give the shape), for attributions over words.
      taps: additive interventions on the encoder's block inputs and attention maps (see
        :func:`jaxplain.models.transformer.encoder`).

    Returns:
      ``(embedding [N, E], intermediates)``.
    """
    t, p = config.text, params["text"]
    if token_ids.ndim != 2 or token_ids.shape[1] > t.max_positions:
        raise ValueError(f"token_ids must be [N, T] with T <= {t.max_positions}, got {token_ids.shape}")
    n, length = token_ids.shape
    x = embed_tokens(params, token_ids) if token_embeds is None else token_embeds
    x = x.astype(p["token_embedding"].dtype) + p["position_embedding"][:length]
    kw = dict(num_heads=t.num_heads, act=t.hidden_act, eps=t.layer_norm_eps)
    if collect or taps is not None:
        h, aux = encoder(x, p["layers"], collect=collect, taps=taps, **kw)
        aux, at_last = _batch_first(aux), h[:, -1]
    else:  # only the last position of the last layer is pooled: skip the rest of its work
        aux, at_last = {}, encoder_at(x, p["layers"], jnp.full((n,), length - 1, jnp.int32), mask=None, **kw)
    pooled = layer_norm(at_last, p["final_ln"], t.layer_norm_eps)
    projected = dense(pooled, p["head"])
    aux.update(pooled=pooled, projected=projected)
    return _unit(projected), aux


def encode_image(params: Params, pixels: jax.Array, config: SiglipConfig) -> jax.Array:
    """Unit-norm image embeddings ``[N, D]`` for pixels ``[N, C, H, W]``."""
    return image_forward(params, pixels, config)[0]


def encode_text(params: Params, token_ids: jax.Array, config: SiglipConfig) -> jax.Array:
    """Unit-norm text embeddings ``[N, E]`` for token ids ``[N, T]``."""
    return text_forward(params, token_ids, config)[0]


def logit_scale(params: Params) -> jax.Array:
    """The model's temperature ``s = exp(logit_scale)`` (a scalar, at least float32)."""
    return jnp.exp(params["logit_scale"].astype(at_least_f32(params["logit_scale"].dtype)))


def logit_bias(params: Params) -> jax.Array:
    """The model's learned bias ``b`` added to every scaled similarity (a scalar, at least float32)."""
    return params["logit_bias"].astype(at_least_f32(params["logit_bias"].dtype))


@full_precision
def logits(params: Params, image_emb: jax.Array, text_emb: jax.Array) -> jax.Array:
    """``logits_per_image`` ``[N_images, N_texts]``: ``exp(logit_scale) · u·v + logit_bias``."""
    return logit_scale(params) * (image_emb @ text_emb.T) + logit_bias(params)


def probabilities(params: Params, image_emb: jax.Array, text_emb: jax.Array) -> jax.Array:
    """``[N_images, N_texts]`` probabilities that each text matches each image: ``sigmoid`` of
    :func:`logits`, each pair on its own (a row need not sum to 1, unlike CLIP's softmax)."""
    return jax.nn.sigmoid(logits(params, image_emb, text_emb))


def unstack_layers(params: Params) -> Params:
    """``params`` with each tower's ``layers`` as a tuple of per-layer dicts (see
    :mod:`jaxplain.models.transformer`): the same model, run as unrolled blocks."""
    return {**params, **{tower: {**params[tower], "layers": unstack(params[tower]["layers"])} for tower in TOWERS}}


def stack_layers(params: Params) -> Params:
    """The inverse of :func:`unstack_layers`: each tower's layers stacked along a leading ``[L]`` axis."""
    return {**params, **{tower: {**params[tower], "layers": stack(params[tower]["layers"])} for tower in TOWERS}}


def _dense_init(key, n_in, n_out, layers=None):
    shape = (n_in, n_out) if layers is None else (layers, n_in, n_out)
    bias = (n_out,) if layers is None else (layers, n_out)
    std = n_in**-0.5
    return {"kernel": std * jax.random.normal(key, shape, jnp.float32), "bias": jnp.zeros(bias, jnp.float32)}


def _ln_init(d, layers=None):
    shape = (d,) if layers is None else (layers, d)
    return {"scale": jnp.ones(shape, jnp.float32), "bias": jnp.zeros(shape, jnp.float32)}


def _attn_init(key, d, layers=None):
    ks = jax.random.split(key, 4)
    return {name: _dense_init(k, d, d, layers) for name, k in zip(("q", "k", "v", "out"), ks)}


def _mlp_init(key, d, f, layers=None):
    k1, k2 = jax.random.split(key)
    return {"fc1": _dense_init(k1, d, f, layers), "fc2": _dense_init(k2, f, d, layers)}


def _layers_init(key, d, f, n):
    ka, km = jax.random.split(key)
    return {"ln1": _ln_init(d, n), "attn": _attn_init(ka, d, n), "ln2": _ln_init(d, n), "mlp": _mlp_init(km, d, f, n)}


def init_params(key: jax.Array, config: SiglipConfig) -> Params:
    """Random params in jaxplain's SigLIP layout (float32), for training from scratch and for tests.

    Layout: ``{"text": {token_embedding [V, D], position_embedding [P, D], layers, final_ln, head{kernel [D,
    E], bias [E]}}, "vision": {patch_embedding{kernel [C·p·p, D], bias [D]}, position_embedding [T, D],
    layers, post_ln, head{probe [D], attn{q,k,v,out}, ln, mlp{fc1,fc2}}}, "logit_scale": [], "logit_bias":
    []}`` where ``layers`` holds ``ln1, attn{q,k,v,out}, ln2, mlp{fc1,fc2}`` stacked along a leading ``[L]``
    axis and dense kernels are ``[in, out]``. The decision starts at temperature 10 and bias -10, as SigLIP's.
    """
    t, v = config.text, config.vision
    kt, kv = jax.random.split(key)
    kt = jax.random.split(kt, 4)
    kv = jax.random.split(kv, 7)
    pdim = v.num_channels * v.patch_size**2
    d = v.hidden_size
    return {
        "text": {
            "token_embedding": t.hidden_size**-0.5 * jax.random.normal(kt[0], (t.vocab_size, t.hidden_size)),
            "position_embedding": t.hidden_size**-0.5 * jax.random.normal(kt[1], (t.max_positions, t.hidden_size)),
            "layers": _layers_init(kt[2], t.hidden_size, t.intermediate_size, t.num_layers),
            "final_ln": _ln_init(t.hidden_size),
            "head": _dense_init(kt[3], t.hidden_size, t.projection_size),
        },
        "vision": {
            "patch_embedding": _dense_init(kv[0], pdim, d),
            "position_embedding": d**-0.5 * jax.random.normal(kv[1], (v.num_positions, d)),
            "layers": _layers_init(kv[2], d, v.intermediate_size, v.num_layers),
            "post_ln": _ln_init(d),
            "head": {
                "probe": d**-0.5 * jax.random.normal(kv[3], (d,)),
                "attn": _attn_init(kv[4], d),
                "ln": _ln_init(d),
                "mlp": _mlp_init(kv[5], d, v.intermediate_size),
            },
        },
        "logit_scale": jnp.asarray(LOGIT_SCALE_INIT, jnp.float32),
        "logit_bias": jnp.asarray(LOGIT_BIAS_INIT, jnp.float32),
    }

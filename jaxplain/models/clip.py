"""CLIP as pure functions of ``(params, inputs, config)``.

``params`` is a nested dict of arrays (see :func:`init_params` for its layout); ``config`` is a
frozen :class:`~jaxplain.models.config.ClipConfig`, passed as a static argument under ``jit``.
Each ``*_forward`` function returns ``(embedding, intermediates)`` where ``embedding`` is unit-norm
float32 and ``intermediates`` is a plain dict of arrays that explanation methods read:

* ``"projected"``: the embedding before normalisation ``[N, E]``;
* ``"pooled"``: the pooled token after the final layer norm ``[N, D]``;
* with ``collect=True``: ``"tokens"`` ``[N, L + 1, T, D]`` (encoder input, then each layer's
  output) and ``"attention"`` ``[N, L, H, T, T]`` (softmax probabilities of every layer).

The functions accept any leading batch size, and also run under ``vmap`` on single examples
(``[3, H, W]`` pixels or ``[T]`` ids, after adding the batch axis back in a wrapper), ``grad``
and ``jit``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain.models.config import ClipConfig
from jaxplain.models.transformer import at_least_f32, encoder, encoder_at, full_precision, layer_norm, stack, unstack

TOWERS = ("text", "vision")

Params = dict[str, Any]


def _unit(x: jax.Array) -> jax.Array:
    x = x.astype(at_least_f32(x.dtype))
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def _batch_first(aux: dict[str, jax.Array]) -> dict[str, jax.Array]:
    return {k: jnp.moveaxis(v, 0, 1) for k, v in aux.items()}


def patchify(pixels: jax.Array, patch_size: int) -> jax.Array:
    """``[N, C, H, W]`` pixels → ``[N, (H/p)·(W/p), C·p·p]`` patches in row-major grid order."""
    n, c, h, w = pixels.shape
    gh, gw = h // patch_size, w // patch_size
    x = pixels.reshape(n, c, gh, patch_size, gw, patch_size)
    return x.transpose(0, 2, 4, 1, 3, 5).reshape(n, gh * gw, c * patch_size * patch_size)


@full_precision
def image_forward(
    params: Params,
    pixels: jax.Array,
    config: ClipConfig,
    *,
    collect: bool = False,
    taps: dict[str, jax.Array] | None = None,
    patch_embeds: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Encode preprocessed images.

    Args:
      params: the model params.
      pixels: ``[N, C, H, W]`` normalised pixels with ``H == W == config.vision.image_size``.
      config: the model config (static).
      collect: also return per-layer tokens and attention maps.
      taps: additive interventions on the encoder's block inputs and attention maps, for gradients
        of intermediates (see :func:`jaxplain.models.transformer.encoder`).
      patch_embeds: optional ``[N, P, D]`` patch embeddings (:func:`embed_patches`) used instead of
        embedding ``pixels``, which then only give the batch size. The embedding is linear in the
        pixels, so gradients with respect to it map back to pixels exactly.

    Returns:
      ``(embedding [N, E], intermediates)``.
    """
    v, p = config.vision, params["vision"]
    if patch_embeds is None:
        x = embed_patches(params, pixels, config)
    else:
        x = patch_embeds.astype(p["patch_embedding"].dtype)
    cls = jnp.broadcast_to(p["class_embedding"], (x.shape[0], 1, x.shape[-1]))
    x = jnp.concatenate([cls, x], axis=1) + p["position_embedding"]
    if v.pre_norm:
        x = layer_norm(x, p["pre_ln"], v.layer_norm_eps)
    kw = dict(num_heads=v.num_heads, act=v.hidden_act, eps=v.layer_norm_eps)
    if collect or taps is not None:
        h, aux = encoder(x, p["layers"], collect=collect, taps=taps, **kw)
        aux, at_cls = _batch_first(aux), h[:, 0]
    else:  # only the class token of the last layer is pooled: skip the rest of its work
        aux, at_cls = {}, encoder_at(x, p["layers"], jnp.zeros(x.shape[0], jnp.int32), mask=None, **kw)
    pooled = layer_norm(at_cls, p["post_ln"], v.layer_norm_eps)
    projected = pooled @ p["projection"]
    aux.update(pooled=pooled, projected=projected)
    return _unit(projected), aux


@full_precision
def embed_patches(params: Params, pixels: jax.Array, config: ClipConfig) -> jax.Array:
    """Patch embeddings ``[N, P, D]`` of pixels ``[N, C, H, W]`` (a linear map of the pixels)."""
    v, p = config.vision, params["vision"]
    want = (v.num_channels, v.image_size, v.image_size)
    if pixels.ndim != 4 or tuple(pixels.shape[1:]) != want:
        raise ValueError(f"pixels must be [N, {want[0]}, {want[1]}, {want[2]}] for this model, got {pixels.shape}")
    dtype = p["patch_embedding"].dtype
    return patchify(pixels.astype(dtype), v.patch_size) @ p["patch_embedding"]


def embed_tokens(params: Params, token_ids: jax.Array) -> jax.Array:
    """Look up token embeddings ``[N, T, D]`` for ``token_ids`` ``[N, T]``.

    Perturb these and pass them to :func:`text_forward` as ``token_embeds`` to differentiate
    with respect to the input words.
    """
    return params["text"]["token_embedding"][token_ids]


def eos_positions(token_ids: jax.Array, config: ClipConfig) -> jax.Array:
    """Index ``[N]`` of the token each text is pooled at: its first end-of-text token."""
    if config.text.pool_by_argmax:
        return jnp.argmax(token_ids, axis=-1)
    return jnp.argmax(token_ids == config.text.eos_token_id, axis=-1)


@full_precision
def text_forward(
    params: Params,
    token_ids: jax.Array,
    config: ClipConfig,
    *,
    token_embeds: jax.Array | None = None,
    collect: bool = False,
    taps: dict[str, jax.Array] | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Encode tokenised texts.

    Args:
      params: the model params.
      token_ids: ``[N, T]`` int ids, ``T <= config.text.max_positions``; they locate the
        end-of-text token each text is pooled at.
      config: the model config (static).
      token_embeds: optional ``[N, T, D]`` input embeddings used instead of looking up
        ``token_ids`` (for attributions over words).
      collect: also return per-layer tokens and attention maps.
      taps: additive interventions on the encoder's block inputs and attention maps, for gradients
        of intermediates (see :func:`jaxplain.models.transformer.encoder`).

    Returns:
      ``(embedding [N, E], intermediates)``; intermediates also hold ``"eos"`` ``[N]``.
    """
    t, p = config.text, params["text"]
    if token_ids.ndim != 2 or token_ids.shape[1] > t.max_positions:
        raise ValueError(f"token_ids must be [N, T] with T <= {t.max_positions}, got {token_ids.shape}")
    n, length = token_ids.shape
    x = embed_tokens(params, token_ids) if token_embeds is None else token_embeds
    x = x.astype(p["token_embedding"].dtype) + p["position_embedding"][:length]
    causal = jnp.tril(jnp.ones((length, length), dtype=bool))
    kw = dict(num_heads=t.num_heads, act=t.hidden_act, eps=t.layer_norm_eps, mask=causal)
    eos = eos_positions(token_ids, config)
    if collect or taps is not None:
        h, aux = encoder(x, p["layers"], collect=collect, taps=taps, **kw)
        aux, at_eos = _batch_first(aux), h[jnp.arange(n), eos]
    else:  # only the end-of-text token of the last layer is pooled: skip the rest of its work
        aux, at_eos = {}, encoder_at(x, p["layers"], eos, **kw)
    pooled = layer_norm(at_eos, p["final_ln"], t.layer_norm_eps)
    projected = pooled @ p["projection"]
    aux.update(pooled=pooled, projected=projected, eos=eos)
    return _unit(projected), aux


def encode_image(params: Params, pixels: jax.Array, config: ClipConfig) -> jax.Array:
    """Unit-norm image embeddings ``[N, E]`` for pixels ``[N, C, H, W]``."""
    return image_forward(params, pixels, config)[0]


def encode_text(params: Params, token_ids: jax.Array, config: ClipConfig) -> jax.Array:
    """Unit-norm text embeddings ``[N, E]`` for token ids ``[N, T]``."""
    return text_forward(params, token_ids, config)[0]


def unstack_layers(params: Params) -> Params:
    """``params`` with each tower's ``layers`` as a tuple of per-layer dicts (see
    :mod:`jaxplain.models.transformer`): the same model, run as unrolled blocks on whole weight buffers.

    Every function here takes either layout. The unstacked one holds a copy of the layer weights; on a
    CPU it encodes small batches markedly faster (the stacked layout's scan copies each layer's weights
    out of the stack on every call). ``model.encode_*`` use it on their own.
    """
    return {**params, **{tower: {**params[tower], "layers": unstack(params[tower]["layers"])} for tower in TOWERS}}


def stack_layers(params: Params) -> Params:
    """The inverse of :func:`unstack_layers`: each tower's layers stacked along a leading ``[L]`` axis."""
    return {**params, **{tower: {**params[tower], "layers": stack(params[tower]["layers"])} for tower in TOWERS}}


def logit_scale(params: Params) -> jax.Array:
    """The model's temperature ``s = exp(logit_scale)`` (a scalar, float32)."""
    return jnp.exp(params["logit_scale"].astype(at_least_f32(params["logit_scale"].dtype)))


@full_precision
def logits(params: Params, image_emb: jax.Array, text_emb: jax.Array) -> jax.Array:
    """``logits_per_image`` ``[N_images, N_texts]``: scaled cosine similarities."""
    return logit_scale(params) * image_emb @ text_emb.T


def _dense_init(key, n_in, n_out, std, layers=None):
    shape = (n_in, n_out) if layers is None else (layers, n_in, n_out)
    bias = (n_out,) if layers is None else (layers, n_out)
    return {"kernel": std * jax.random.normal(key, shape, jnp.float32), "bias": jnp.zeros(bias, jnp.float32)}


def _ln_init(d, layers=None):
    shape = (d,) if layers is None else (layers, d)
    return {"scale": jnp.ones(shape, jnp.float32), "bias": jnp.zeros(shape, jnp.float32)}


def _layers_init(key, d, f, n):
    ks = jax.random.split(key, 6)
    std = d**-0.5
    return {
        "ln1": _ln_init(d, n),
        "attn": {name: _dense_init(k, d, d, std, n) for name, k in zip(("q", "k", "v", "out"), ks[:4])},
        "ln2": _ln_init(d, n),
        "mlp": {"fc1": _dense_init(ks[4], d, f, std, n), "fc2": _dense_init(ks[5], f, d, f**-0.5, n)},
    }


def init_params(key: jax.Array, config: ClipConfig) -> Params:
    """Random params in jaxplain's layout (float32), for training from scratch and for tests.

    Layout: ``{"text": {token_embedding [V, D], position_embedding [P, D], layers, final_ln,
    projection [D, E]}, "vision": {patch_embedding [C·p·p, D], class_embedding [D],
    position_embedding [T, D], pre_ln, layers, post_ln, projection [D, E]}, "logit_scale": []}``
    where ``layers`` holds ``ln1, attn{q,k,v,out}, ln2, mlp{fc1,fc2}`` stacked along a leading
    ``[L]`` axis and dense kernels are ``[in, out]``. A vision config with ``pre_norm=False`` has no
    ``pre_ln``.
    """
    t, v, e = config.text, config.vision, config.projection_dim
    kt, kv = jax.random.split(key)
    kt = jax.random.split(kt, 4)
    kv = jax.random.split(kv, 5)
    pdim = v.num_channels * v.patch_size**2
    params = {
        "text": {
            "token_embedding": 0.02 * jax.random.normal(kt[0], (t.vocab_size, t.hidden_size)),
            "position_embedding": 0.01 * jax.random.normal(kt[1], (t.max_positions, t.hidden_size)),
            "layers": _layers_init(kt[2], t.hidden_size, t.intermediate_size, t.num_layers),
            "final_ln": _ln_init(t.hidden_size),
            "projection": t.hidden_size**-0.5 * jax.random.normal(kt[3], (t.hidden_size, e)),
        },
        "vision": {
            "patch_embedding": pdim**-0.5 * jax.random.normal(kv[0], (pdim, v.hidden_size)),
            "class_embedding": v.hidden_size**-0.5 * jax.random.normal(kv[1], (v.hidden_size,)),
            "position_embedding": 0.02 * jax.random.normal(kv[2], (v.num_positions, v.hidden_size)),
            "pre_ln": _ln_init(v.hidden_size),
            "layers": _layers_init(kv[3], v.hidden_size, v.intermediate_size, v.num_layers),
            "post_ln": _ln_init(v.hidden_size),
            "projection": v.hidden_size**-0.5 * jax.random.normal(kv[4], (v.hidden_size, e)),
        },
        "logit_scale": jnp.asarray(config.logit_scale_init, jnp.float32),
    }
    if not v.pre_norm:
        del params["vision"]["pre_ln"]
    return params


def cast_params(params: Params, dtype: Any) -> Params:
    """Floating params cast to ``dtype`` (e.g. ``jnp.bfloat16`` for a lower-precision compute mode).

    The temperature stays float32: it is one number, and ``exp`` of it loses precision in 16 bits.
    """
    cast = jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)
    return {**cast, "logit_scale": params["logit_scale"]}


def num_params(params: Params) -> int:
    """How many numbers the params hold."""
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))

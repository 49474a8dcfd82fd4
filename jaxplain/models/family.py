"""Model families: what a :class:`~jaxplain.models.bundle.Model` needs to know about the towers it runs.

A family names its pure encoders, the layout helpers of its params, and its *decision*: how the scaled
similarities of an image to a set of texts become the probabilities a user reads.

- ``"softmax"`` (CLIP): ``p = softmax(s · u · Vᵀ)`` over the classes; they compete and sum to 1.
- ``"sigmoid"`` (SigLIP): ``p_c = σ(s · u · v_c + b)``, each class on its own; several classes, or none,
  may pass 0.5.

:func:`class_probabilities` computes either. The family is chosen by :func:`jaxplain.load` from the
checkpoint's ``config.json`` (``model_type``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from jaxplain import sharding
from jaxplain.models import clip, siglip
from jaxplain.objectives import HIGHEST

DECISIONS = ("softmax", "sigmoid")


def _on_devices(encode):
    """``encode(params, x, config)`` run by every device of ``mesh`` on its own rows of ``x`` ``[D·B, ...]``
    (the params replicated): each device runs the single-device program on a ``[B, ...]`` batch."""

    def run(params, x, config, mesh, axis=sharding.DATA):
        rows = PartitionSpec(axis)
        local = lambda p, v: encode(p, v, config)  # noqa: E731
        return jax.shard_map(local, mesh=mesh, in_specs=(PartitionSpec(), rows), out_specs=rows, check_vma=False)(
            params, x
        )

    return jax.jit(run, static_argnames=("config", "mesh", "axis"))


@dataclasses.dataclass(frozen=True, eq=False)
class Family:
    """One model family.

    Attributes:
      name: ``"clip"`` or ``"siglip"``.
      decision: ``"softmax"`` or ``"sigmoid"`` (see the module docstring).
      encode_image: ``(params, pixels [N, 3, H, W], config) → [N, E]`` unit embeddings (pure).
      encode_text: ``(params, ids [N, T], config) → [N, E]`` unit embeddings (pure).
      logit_scale: ``params → s``, the temperature.
      logit_bias: ``params → b``, added to every scaled similarity (0 for CLIP).
      unstack_layers, stack_layers: the two layouts of the params' layers.
      embed_dim: ``config → E``.
      causal_text: the text tower attends causally and pools at the end token, so a batch of ids may be
        cut after its longest text; a bidirectional tower pooled at the last position (SigLIP) must see
        every position it was trained with.

    What attribution methods read (pure functions and structural facts, so that a method has no branch per
    family):

    Attributes:
      image_forward: ``(params, pixels, config, *, collect=False, taps=None, patch_embeds=None) →
        (embedding [N, E], intermediates)``; ``patch_embeds`` ``[N, P, D]`` (from :attr:`embed_patches`)
        replace the embedding of ``pixels``.
      text_forward: ``(params, ids, config, *, token_embeds=None, collect=False, taps=None) → (embedding
        [N, E], intermediates)``.
      embed_patches: ``(params, pixels, config) → [N, P, D]``, an affine map of the pixels.
      embed_tokens: ``(params, ids) → [N, T, D]``.
      class_token: the image tokens start with a class token (position 0) that is pooled; without one
        (SigLIP) every token is a patch and a head pools them.
      image_pool_attention: ``(intermediates of a collect=True image forward) → [N, H, T]``: how the pooled
        output reads the last layer's tokens — a one-hot row at the class token (CLIP, ``H = 1``), or the
        attention-pooling head's attention (SigLIP).
      text_pool_positions: ``(ids [N, T], config) → [N]``, the position each text is pooled at (CLIP: its
        end-of-text token; SigLIP: the last position).
      text_word_span: ``(ids [N, T], config, end_id) → (first [N], stop [N])``, the positions of a text's
        words, ``first <= pos < stop`` (CLIP: after the start token, before the end-of-text token; SigLIP:
        from the start to before the first ``end_id``, the tokenizer's end id, which also pads).
      word_begins, word_ends: how word pieces mark word boundaries: a piece that begins with
        ``word_begins`` opens a word (SentencePiece's ``▁``), one that ends with ``word_ends`` closes it
        (CLIP's BPE ``</w>``); empty when unused.
    """

    name: str
    decision: str
    encode_image: Callable
    encode_text: Callable
    logit_scale: Callable
    logit_bias: Callable
    unstack_layers: Callable
    stack_layers: Callable
    embed_dim: Callable
    causal_text: bool
    image_forward: Callable
    text_forward: Callable
    embed_patches: Callable
    embed_tokens: Callable
    class_token: bool
    image_pool_attention: Callable
    text_pool_positions: Callable
    text_word_span: Callable
    word_begins: str = ""
    word_ends: str = ""

    def __post_init__(self):
        if self.decision not in DECISIONS:
            raise ValueError(f"decision must be one of {DECISIONS}, got {self.decision!r}")

    @functools.cached_property
    def image_jit(self):
        """:attr:`encode_image`, jitted (the config static)."""
        return jax.jit(self.encode_image, static_argnames="config")

    @functools.cached_property
    def text_jit(self):
        """:attr:`encode_text`, jitted (the config static)."""
        return jax.jit(self.encode_text, static_argnames="config")

    @functools.cached_property
    def image_sharded(self):
        """:attr:`encode_image` over the devices of a mesh (see :func:`_on_devices`)."""
        return _on_devices(self.encode_image)

    @functools.cached_property
    def text_sharded(self):
        """:attr:`encode_text` over the devices of a mesh (see :func:`_on_devices`)."""
        return _on_devices(self.encode_text)

    def __repr__(self) -> str:
        return f"Family({self.name!r}, decision={self.decision!r})"


def _no_bias(params: Any) -> jax.Array:
    return jnp.zeros((), jnp.float32)


def _class_token_row(aux: dict) -> jax.Array:
    """``[N, 1, T]``: the pooled output is the class token (position 0) of the last layer, as it is."""
    n, _, _, t, _ = aux["attention"].shape
    return jnp.zeros((n, 1, t), aux["attention"].dtype).at[:, :, 0].set(1)


def _clip_word_span(ids: jax.Array, config, end_id) -> tuple[jax.Array, jax.Array]:
    eos = clip.eos_positions(ids, config)
    return jnp.ones_like(eos), eos


def _siglip_image_forward(params, pixels, config, *, collect=False, taps=None, patch_embeds=None):
    """:func:`jaxplain.models.siglip.image_forward`, also from patch embeddings ``[N, P, D]``.

    siglip's forward embeds its pixels itself, so given patch embeddings it is fed all-zero pixels (whose
    patch embedding is the convolution's bias) and the difference is added at the first block's input: the
    tokens entering the encoder are then the given embeddings plus the position embeddings.
    """
    if patch_embeds is None:
        return siglip.image_forward(params, pixels, config, collect, taps=taps)
    v = config.vision
    n = patch_embeds.shape[0]
    zero = jnp.zeros((n, v.num_channels, v.image_size, v.image_size), patch_embeds.dtype)
    shift = patch_embeds - siglip.embed_patches(params, zero, config)
    taps = dict(taps or {})
    tokens = taps.get("tokens", jnp.zeros((v.num_layers, n, v.num_positions, v.hidden_size), shift.dtype))
    taps["tokens"] = tokens.at[0].add(shift.astype(tokens.dtype))
    return siglip.image_forward(params, zero, config, collect, taps=taps)


def _siglip_text_forward(params, ids, config, *, token_embeds=None, collect=False, taps=None):
    return siglip.text_forward(params, ids, config, collect, token_embeds=token_embeds, taps=taps)


def _last_positions(ids: jax.Array, config) -> jax.Array:
    return jnp.full(ids.shape[:1], ids.shape[1] - 1, jnp.int32)


def _siglip_word_span(ids: jax.Array, config, end_id) -> tuple[jax.Array, jax.Array]:
    stop = jnp.argmax(ids == end_id, axis=-1)
    return jnp.zeros_like(stop), stop


CLIP = Family(
    name="clip",
    decision="softmax",
    encode_image=clip.encode_image,
    encode_text=clip.encode_text,
    logit_scale=clip.logit_scale,
    logit_bias=_no_bias,
    unstack_layers=clip.unstack_layers,
    stack_layers=clip.stack_layers,
    embed_dim=lambda config: config.projection_dim,
    causal_text=True,
    image_forward=clip.image_forward,
    text_forward=clip.text_forward,
    embed_patches=clip.embed_patches,
    embed_tokens=clip.embed_tokens,
    class_token=True,
    image_pool_attention=_class_token_row,
    text_pool_positions=clip.eos_positions,
    text_word_span=_clip_word_span,
    word_ends="</w>",
)

SIGLIP = Family(
    name="siglip",
    decision="sigmoid",
    encode_image=siglip.encode_image,
    encode_text=siglip.encode_text,
    logit_scale=siglip.logit_scale,
    logit_bias=siglip.logit_bias,
    unstack_layers=siglip.unstack_layers,
    stack_layers=siglip.stack_layers,
    embed_dim=lambda config: config.embed_dim,
    causal_text=False,
    image_forward=_siglip_image_forward,
    text_forward=_siglip_text_forward,
    embed_patches=siglip.embed_patches,
    embed_tokens=siglip.embed_tokens,
    class_token=False,
    image_pool_attention=lambda aux: aux["pool_attention"],
    text_pool_positions=_last_positions,
    text_word_span=_siglip_word_span,
    word_begins="▁",  # U+2581, SentencePiece's mark of a word's first piece
)

FAMILIES = {f.name: f for f in (CLIP, SIGLIP)}


@functools.partial(jax.jit, static_argnames="decision")
def class_probabilities(
    image_emb: jax.Array, class_emb: jax.Array, scale: jax.Array | float, bias: jax.Array | float, decision: str
) -> jax.Array:
    """``[N, C]`` class probabilities of unit image embeddings against class embeddings, by ``decision``:
    ``softmax(s · u · Vᵀ)`` (``bias`` cancels out) or ``σ(s · u · Vᵀ + b)``."""
    z = scale * jnp.matmul(image_emb, class_emb.T, precision=HIGHEST) + bias
    return jax.nn.softmax(z, axis=-1) if decision == "softmax" else jax.nn.sigmoid(z)

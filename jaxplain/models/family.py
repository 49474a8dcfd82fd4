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

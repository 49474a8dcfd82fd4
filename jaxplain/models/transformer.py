"""The pieces both CLIP towers share: layer norm, multi-head attention, MLP, a scanned encoder.

All functions are pure and work on batched token arrays ``[N, T, D]``; they also work under
``vmap`` (with the batch axis removed). A tower's layers come in one of two layouts:

* **stacked** (the layout of ``model.params``): one dict whose arrays have a leading ``[L]`` axis, run
  with ``lax.scan``, so a 24-layer tower compiles one layer body;
* **unstacked** (:func:`unstack`): a tuple of ``L`` per-layer dicts, run as an unrolled loop. Each
  layer's weights are then whole buffers; the scan instead slices (copies) every layer's weights out of
  the stack on every call, which on a CPU costs more than the layer itself for small batches.

Both give the same numbers; pick stacked for compile time (training, gradients of many methods),
unstacked for the fastest inference.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

Params = dict[str, Any]

# The towers' matrix products run at full float32 precision on every backend. On a GPU, JAX's default may
# round float32 inputs to TF32: on an H100 a dot of unit 128-vectors was off by up to 1.4e-4 (3e-7 at
# "highest"), and the same image encoded in batches of other sizes got other embeddings at that level, so
# an item verified as a counterfactual in one batch could fail its re-check in another. PyTorch's default
# (no TF32 in matrix products) agrees with this one. On a CPU both give the same numbers at the same speed.
# Lower precision stays available the explicit way: params cast to bfloat16 (``clip.cast_params``).
MATMUL_PRECISION = "highest"


def full_precision(fn):
    """``fn`` with its matrix products traced at :data:`MATMUL_PRECISION` (their gradients too)."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with jax.default_matmul_precision(MATMUL_PRECISION):
            return fn(*args, **kwargs)

    return wrapped


def activation(name: str):
    """The element-wise activation a Hugging Face config names."""
    if name == "quick_gelu":
        return lambda x: x * jax.nn.sigmoid(1.702 * x)
    if name == "gelu":
        return lambda x: jax.nn.gelu(x, approximate=False)
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda x: jax.nn.gelu(x, approximate=True)
    if name == "relu":
        return jax.nn.relu
    raise ValueError(f"unknown activation {name!r}")


def at_least_f32(dtype) -> jnp.dtype:
    """The dtype for numerically sensitive steps: float32, or float64 when the input is float64."""
    return jnp.promote_types(dtype, jnp.float32)


def layer_norm(x: jax.Array, p: Params, eps: float) -> jax.Array:
    """Layer norm over the last axis, computed in at least float32 whatever the input dtype."""
    ft = at_least_f32(x.dtype)
    xf = x.astype(ft)
    mean = xf.mean(-1, keepdims=True)
    var = jnp.square(xf - mean).mean(-1, keepdims=True)
    y = (xf - mean) * jax.lax.rsqrt(var + eps)
    return (y * p["scale"].astype(ft) + p["bias"].astype(ft)).astype(x.dtype)


def dense(x: jax.Array, p: Params) -> jax.Array:
    """``x @ kernel + bias`` with ``kernel`` shaped ``[in, out]``."""
    return x @ p["kernel"] + p["bias"]


def attention(
    x: jax.Array, p: Params, num_heads: int, mask: jax.Array | None, probs_tap: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """Multi-head self-attention.

    Args:
      x: tokens ``[..., T, D]``.
      p: ``{"q", "k", "v", "out"}`` dense params.
      num_heads: heads; ``D`` must divide by it.
      mask: ``[T, T]`` booleans, True where a query may attend to a key; None for full attention.
      probs_tap: optional ``[..., H, T, T]`` added to the attention probabilities; with zeros, the
        gradient with respect to it is the gradient with respect to the attention maps.

    Returns:
      the attended tokens ``[..., T, D]`` and the attention probabilities ``[..., H, T, T]``.
    """
    *batch, t, d = x.shape
    hd = d // num_heads

    def heads(y):
        return y.reshape(*batch, t, num_heads, hd)

    q, k, v = heads(dense(x, p["q"])), heads(dense(x, p["k"])), heads(dense(x, p["v"]))
    ft = at_least_f32(x.dtype)
    logits = jnp.einsum("...qhd,...khd->...hqk", q, k).astype(ft) * (hd**-0.5)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(ft).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(x.dtype)
    if probs_tap is not None:
        probs = probs + probs_tap
    out = jnp.einsum("...hqk,...khd->...qhd", probs, v).reshape(*batch, t, d)
    return dense(out, p["out"]), probs


def is_unstacked(layers: Params | tuple[Params, ...]) -> bool:
    """Whether ``layers`` is the unstacked layout (a sequence of per-layer dicts)."""
    return isinstance(layers, (tuple, list))


def unstack(layers: Params) -> tuple[Params, ...]:
    """Stacked layers (arrays with a leading ``[L]`` axis) → a tuple of ``L`` per-layer dicts.
    A tuple is returned unchanged."""
    if is_unstacked(layers):
        return tuple(layers)
    return tuple(jax.tree.map(lambda a, i=i: a[i], layers) for i in range(num_layers(layers)))


def stack(layers: Params | tuple[Params, ...]) -> Params:
    """The inverse of :func:`unstack`; a stacked dict is returned unchanged."""
    if not is_unstacked(layers):
        return layers
    return jax.tree.map(lambda *a: jnp.stack(a), *layers)


def num_layers(layers: Params | tuple[Params, ...]) -> int:
    """How many blocks ``layers`` holds, in either layout."""
    if is_unstacked(layers):
        return len(layers)
    return jax.tree.leaves(layers)[0].shape[0]


def _split_last(layers: Params | tuple[Params, ...]) -> tuple[Params | tuple[Params, ...], Params]:
    """``(all blocks but the last, the last block)`` in the layout given."""
    if is_unstacked(layers):
        return tuple(layers[:-1]), layers[-1]
    return jax.tree.map(lambda a: a[:-1], layers), jax.tree.map(lambda a: a[-1], layers)


def encoder(
    x: jax.Array,
    layers: Params,
    *,
    num_heads: int,
    act: str,
    eps: float,
    mask: jax.Array | None = None,
    collect: bool = False,
    taps: dict[str, jax.Array] | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Pre-norm transformer blocks: scanned over stacked ``layers``, unrolled over a tuple of them.

    ``taps`` are additive interventions for reading gradients of intermediates without hooks:
    ``{"tokens": [L, ..., T, D]}`` is added to each block's input and ``{"attention": [L, ..., H, T,
    T]}`` to each block's attention probabilities (either key may be absent). Taps of zeros leave the
    output unchanged, and the gradient with respect to a tap is the gradient with respect to that
    intermediate.

    Returns the final tokens ``[..., T, D]`` and, when ``collect`` is set, a dict with
    ``"tokens"`` ``[L + 1, ..., T, D]`` (the encoder input, then each block's output) and
    ``"attention"`` ``[L, ..., H, T, T]``; otherwise an empty dict.
    """
    act_fn = activation(act)
    taps = taps or {}

    def block(h, xs):
        lp, tap = xs
        if "tokens" in tap:
            h = h + tap["tokens"]
        a, probs = attention(layer_norm(h, lp["ln1"], eps), lp["attn"], num_heads, mask, tap.get("attention"))
        h = h + a
        m = dense(act_fn(dense(layer_norm(h, lp["ln2"], eps), lp["mlp"]["fc1"])), lp["mlp"]["fc2"])
        h = h + m
        return h, ((h, probs) if collect else None)

    if is_unstacked(layers):
        if collect and not layers:
            raise ValueError("collect needs at least one layer")
        h, outs = x, []
        for i, lp in enumerate(layers):
            h, out = block(h, (lp, jax.tree.map(lambda a, i=i: a[i], taps)))
            outs.append(out)
        stacked = jax.tree.map(lambda *a: jnp.stack(a), *outs) if collect else None
    else:
        h, stacked = jax.lax.scan(block, x, (layers, taps))
    if not collect:
        return h, {}
    hs, probs = stacked
    return h, {"tokens": jnp.concatenate([x[None], hs], axis=0), "attention": probs}


def last_block_at(h: jax.Array, lp: Params, pos: jax.Array, *, num_heads: int, act: str, eps: float, causal: bool):
    """The last block's output at one token per sequence, ``[..., D]``, from its input ``h`` ``[..., T, D]``.

    A pooled embedding reads the last block at one token (the class token, or the end-of-text
    token), so only that token's query, attention output and MLP are needed — keys and values are
    still computed for every token. ``pos`` ``[...]`` is that token's index; with ``causal`` it
    attends to tokens up to ``pos``, as in the full causal block.
    """
    *batch, t, d = h.shape
    hd = d // num_heads
    x = layer_norm(h, lp["ln1"], eps)
    take = lambda a: jnp.take_along_axis(a, pos[..., None, None], axis=-2)[..., 0, :]  # noqa: E731
    q = dense(take(x), lp["attn"]["q"]).reshape(*batch, num_heads, hd)
    k = dense(x, lp["attn"]["k"]).reshape(*batch, t, num_heads, hd)
    v = dense(x, lp["attn"]["v"]).reshape(*batch, t, num_heads, hd)
    ft = at_least_f32(h.dtype)
    logits = jnp.einsum("...hd,...khd->...hk", q, k).astype(ft) * (hd**-0.5)
    if causal:
        visible = jnp.arange(t) <= pos[..., None]  # [..., T]
        logits = jnp.where(visible[..., None, :], logits, jnp.finfo(ft).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(h.dtype)
    out = jnp.einsum("...hk,...khd->...hd", probs, v).reshape(*batch, d)
    y = take(h) + dense(out, lp["attn"]["out"])
    return y + dense(activation(act)(dense(layer_norm(y, lp["ln2"], eps), lp["mlp"]["fc1"])), lp["mlp"]["fc2"])


def encoder_at(
    x: jax.Array, layers: Params, pos: jax.Array, *, num_heads: int, act: str, eps: float, mask: jax.Array | None
) -> jax.Array:
    """The encoder's final output at one token per sequence ``[..., D]``: equal to
    ``encoder(x, ...)[0]`` at ``pos``, without the last block's work on the other tokens."""
    first, last = _split_last(layers)
    h, _ = encoder(x, first, num_heads=num_heads, act=act, eps=eps, mask=mask)
    return last_block_at(h, last, pos, num_heads=num_heads, act=act, eps=eps, causal=mask is not None)

"""Strict conversion between transformers' ``BlipForImageTextRetrieval`` state dicts and jaxplain's BLIP params.

Both directions are pure functions over dicts of NumPy arrays. Every tensor the config implies must be
present with the right shape, and every tensor in the checkpoint must be used: anything missing, left over
or mis-shaped is a :class:`~jaxplain.errors.CheckpointError` that names it. The image–text matching head
(``itm_head``) and the text layers' cross-attention blocks are not part of the contrastive towers; they are
converted too, into ``params["itm"]``, and written back unchanged. Only the ``position_ids`` buffers
(:data:`IGNORED_KEYS`) are ignored. :func:`read_checkpoint` and :func:`write_checkpoint` read and write a
Hugging Face directory (``config.json`` + ``model.safetensors``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from jaxplain.errors import CheckpointError
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

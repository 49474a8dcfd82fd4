"""Strict conversion between transformers' ``SiglipModel`` state dicts and jaxplain's SigLIP params.

Both directions are pure functions over dicts of NumPy arrays. Every tensor the config implies must be
present with the right shape, and every tensor in the checkpoint must be used: anything missing, left over
or mis-shaped is a :class:`~jaxplain.errors.CheckpointError` that names it. :func:`read_checkpoint` and
:func:`write_checkpoint` read and write a Hugging Face directory (``config.json`` + ``model.safetensors``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from jaxplain.errors import CheckpointError
from jaxplain.models.convert import check_tensors, get_path, read_hf_checkpoint, set_path, write_hf_checkpoint
from jaxplain.models.siglip import SiglipConfig, stack_layers

# Buffers some checkpoints carry that are not weights (they equal arange(positions)).
IGNORED_KEYS = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")

_LAYER_TENSORS = (
    ("self_attn.q_proj", ("attn", "q")),
    ("self_attn.k_proj", ("attn", "k")),
    ("self_attn.v_proj", ("attn", "v")),
    ("self_attn.out_proj", ("attn", "out")),
    ("mlp.fc1", ("mlp", "fc1")),
    ("mlp.fc2", ("mlp", "fc2")),
)

# How a tensor is stored: "linear" is torch's [out, in] (transposed here); "patch" the conv kernel [D, C, p,
# p] (flattened to [C·p·p, D]); "scalar" a one-element [1] (a 0-d array here); "probe" the pooling head's [1,
# 1, D] (a [D] vector here); "in_proj" torch's MultiheadAttention stacked [3D, D] weight or [3D] bias (split
# into the q, k, v dense params here, whose path the spec names); "plain" kept as is.


def _specs(config: SiglipConfig) -> Iterator[tuple[str, tuple, int | None, str, tuple[int, ...]]]:
    """Yield ``(hf_key, param_path, layer_index, kind, hf_shape)`` for every tensor of the model."""
    t, v = config.text, config.vision
    td, vd = t.hidden_size, v.hidden_size
    yield "logit_scale", ("logit_scale",), None, "scalar", (1,)
    yield "logit_bias", ("logit_bias",), None, "scalar", (1,)
    yield "text_model.embeddings.token_embedding.weight", ("text", "token_embedding"), None, "plain", (t.vocab_size, td)
    pos = (t.max_positions, td)
    yield "text_model.embeddings.position_embedding.weight", ("text", "position_embedding"), None, "plain", pos
    yield "text_model.head.weight", ("text", "head", "kernel"), None, "linear", (t.projection_size, td)
    yield "text_model.head.bias", ("text", "head", "bias"), None, "plain", (t.projection_size,)
    conv, patch = "vision_model.embeddings.patch_embedding", (vd, v.num_channels, v.patch_size, v.patch_size)
    yield f"{conv}.weight", ("vision", "patch_embedding", "kernel"), None, "patch", patch
    yield f"{conv}.bias", ("vision", "patch_embedding", "bias"), None, "plain", (vd,)
    pos = (v.num_positions, vd)
    yield "vision_model.embeddings.position_embedding.weight", ("vision", "position_embedding"), None, "plain", pos
    head = "vision_model.head"
    yield f"{head}.probe", ("vision", "head", "probe"), None, "probe", (1, 1, vd)
    yield f"{head}.attention.in_proj_weight", ("vision", "head", "attn", "kernel"), None, "in_proj", (3 * vd, vd)
    yield f"{head}.attention.in_proj_bias", ("vision", "head", "attn", "bias"), None, "in_proj", (3 * vd,)
    yield f"{head}.attention.out_proj.weight", ("vision", "head", "attn", "out", "kernel"), None, "linear", (vd, vd)
    yield f"{head}.attention.out_proj.bias", ("vision", "head", "attn", "out", "bias"), None, "plain", (vd,)
    for name, leaf in (("weight", "scale"), ("bias", "bias")):
        yield f"text_model.final_layer_norm.{name}", ("text", "final_ln", leaf), None, "plain", (td,)
        yield f"vision_model.post_layernorm.{name}", ("vision", "post_ln", leaf), None, "plain", (vd,)
        yield f"{head}.layernorm.{name}", ("vision", "head", "ln", leaf), None, "plain", (vd,)
    vf = v.intermediate_size
    for fc, (n_in, n_out) in (("fc1", (vd, vf)), ("fc2", (vf, vd))):
        yield f"{head}.mlp.{fc}.weight", ("vision", "head", "mlp", fc, "kernel"), None, "linear", (n_out, n_in)
        yield f"{head}.mlp.{fc}.bias", ("vision", "head", "mlp", fc, "bias"), None, "plain", (n_out,)
    for tower, prefix, cfg in (("text", "text_model", t), ("vision", "vision_model", v)):
        d, f = cfg.hidden_size, cfg.intermediate_size
        for i in range(cfg.num_layers):
            base = f"{prefix}.encoder.layers.{i}"
            for ln, short in (("layer_norm1", "ln1"), ("layer_norm2", "ln2")):
                yield f"{base}.{ln}.weight", (tower, "layers", short, "scale"), i, "plain", (d,)
                yield f"{base}.{ln}.bias", (tower, "layers", short, "bias"), i, "plain", (d,)
            for hf, path in _LAYER_TENSORS:
                n_in, n_out = (d, f) if hf == "mlp.fc1" else (f, d) if hf == "mlp.fc2" else (d, d)
                yield f"{base}.{hf}.weight", (tower, "layers", *path, "kernel"), i, "linear", (n_out, n_in)
                yield f"{base}.{hf}.bias", (tower, "layers", *path, "bias"), i, "plain", (n_out,)


def expected_keys(config: SiglipConfig) -> list[str]:
    """Every tensor name a ``SiglipModel`` checkpoint of this config must hold."""
    return [s[0] for s in _specs(config)]


def params_from_state_dict(
    state: dict[str, np.ndarray], config: SiglipConfig, source: str = "checkpoint"
) -> dict[str, Any]:
    """transformers' ``SiglipModel`` tensors → jaxplain SigLIP params (NumPy float32 arrays, layers stacked).

    Raises :class:`~jaxplain.errors.CheckpointError` naming every missing, left-over or mis-shaped tensor.
    """
    specs = list(_specs(config))
    check_tensors(state, specs, IGNORED_KEYS, source, expected_from="its config", config_name="its config")

    layered: dict[tuple, list] = {}
    params: dict = {}
    for key, path, layer, kind, _ in specs:
        x = np.asarray(state[key], dtype=np.float32)
        if kind == "in_proj":  # [3D, D] weight or [3D] bias → q, k, v
            for name, part in zip(("q", "k", "v"), np.split(x, 3, axis=0)):
                set_path(params, (*path[:-1], name, path[-1]), np.ascontiguousarray(part.T))
            continue
        if kind == "linear":
            x = x.T
        elif kind == "patch":
            x = x.reshape(x.shape[0], -1).T
        elif kind == "scalar":
            x = x.reshape(())
        elif kind == "probe":
            x = x.reshape(-1)
        if layer is None:
            set_path(params, path, np.ascontiguousarray(x) if x.ndim else x)
        else:
            layered.setdefault(path, []).append(x)
    for path, xs in layered.items():
        set_path(params, path, np.stack(xs))
    return params


def state_dict_from_params(params: dict[str, Any], config: SiglipConfig) -> dict[str, np.ndarray]:
    """jaxplain SigLIP params (either layer layout) → transformers' ``SiglipModel`` tensors (float32,
    contiguous), for saving. A param of the wrong shape is a :class:`CheckpointError` naming it."""
    params = stack_layers(params)
    v = config.vision
    state = {}
    for key, path, layer, kind, shape in _specs(config):
        if kind == "in_proj":
            parts = [np.asarray(get_path(params, (*path[:-1], name, path[-1])), dtype=np.float32) for name in "qkv"]
            x = np.concatenate([p.T for p in parts], axis=0)
        else:
            x = np.asarray(get_path(params, path), dtype=np.float32)
            if layer is not None:
                x = x[layer]
            if kind == "linear":
                x = x.T
            elif kind == "patch":
                x = x.T.reshape(v.hidden_size, v.num_channels, v.patch_size, v.patch_size)
            elif kind == "scalar":
                x = x.reshape(1)
            elif kind == "probe":
                x = x.reshape(1, 1, -1)
        if tuple(x.shape) != shape:
            raise CheckpointError(f"param {'/'.join(path)} has shape {x.shape}; {key} needs {shape}")
        state[key] = np.array(x, dtype=np.float32, order="C")
    return state


def read_checkpoint(directory: str | Path) -> tuple[dict[str, Any], SiglipConfig]:
    """``(params, config)`` of a Hugging Face ``SiglipModel`` directory (``config.json`` and
    ``model.safetensors``, or sharded safetensors), both checked strictly: an unreadable or invalid config,
    unreadable weights, non-finite values, or tensors that do not match the config are a
    :class:`CheckpointError` naming the file and the key."""
    return read_hf_checkpoint(directory, "SigLIP", SiglipConfig.from_hf_dict, params_from_state_dict)


def write_checkpoint(directory: str | Path, params: dict[str, Any], config: SiglipConfig) -> None:
    """Write ``params`` as a Hugging Face ``SiglipModel`` directory that transformers loads
    (``config.json`` and ``model.safetensors``)."""
    write_hf_checkpoint(directory, state_dict_from_params(params, config), config.to_hf_dict())

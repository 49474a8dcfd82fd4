"""Strict conversion between Hugging Face ``CLIPModel`` state dicts and jaxplain params.

Both directions are pure functions over dicts of NumPy arrays. Every tensor the config implies must
be present with the right shape, and every tensor in the checkpoint must be used: anything missing,
left over or mis-shaped is an error that names it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxplain.errors import CheckpointError
from jaxplain.models.config import ClipConfig

# Buffers some checkpoints carry that are not weights (they equal arange(positions)).
IGNORED_KEYS = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")

# How a tensor is stored: "linear" is torch's [out, in] (transposed here), "patch" is the conv
# kernel [D, C, p, p], "plain" is kept as is.
_LAYER_TENSORS = (
    ("self_attn.q_proj", ("attn", "q")),
    ("self_attn.k_proj", ("attn", "k")),
    ("self_attn.v_proj", ("attn", "v")),
    ("self_attn.out_proj", ("attn", "out")),
    ("mlp.fc1", ("mlp", "fc1")),
    ("mlp.fc2", ("mlp", "fc2")),
)


def _specs(config: ClipConfig) -> Iterator[tuple[str, tuple, int | None, str, tuple[int, ...]]]:
    """Yield ``(hf_key, param_path, layer_index, kind, hf_shape)`` for every tensor of the model."""
    t, v, e = config.text, config.vision, config.projection_dim
    yield "logit_scale", ("logit_scale",), None, "plain", ()
    yield "text_projection.weight", ("text", "projection"), None, "linear", (e, t.hidden_size)
    yield "visual_projection.weight", ("vision", "projection"), None, "linear", (e, v.hidden_size)
    yield (
        "text_model.embeddings.token_embedding.weight",
        ("text", "token_embedding"),
        None,
        "plain",
        (
            t.vocab_size,
            t.hidden_size,
        ),
    )
    yield (
        "text_model.embeddings.position_embedding.weight",
        ("text", "position_embedding"),
        None,
        "plain",
        (
            t.max_positions,
            t.hidden_size,
        ),
    )
    for name in ("weight", "bias"):
        leaf = "scale" if name == "weight" else "bias"
        yield f"text_model.final_layer_norm.{name}", ("text", "final_ln", leaf), None, "plain", (t.hidden_size,)
        yield f"vision_model.pre_layrnorm.{name}", ("vision", "pre_ln", leaf), None, "plain", (v.hidden_size,)
        yield f"vision_model.post_layernorm.{name}", ("vision", "post_ln", leaf), None, "plain", (v.hidden_size,)
    yield "vision_model.embeddings.class_embedding", ("vision", "class_embedding"), None, "plain", (v.hidden_size,)
    yield (
        "vision_model.embeddings.patch_embedding.weight",
        ("vision", "patch_embedding"),
        None,
        "patch",
        (
            v.hidden_size,
            v.num_channels,
            v.patch_size,
            v.patch_size,
        ),
    )
    yield (
        "vision_model.embeddings.position_embedding.weight",
        ("vision", "position_embedding"),
        None,
        "plain",
        (
            v.num_positions,
            v.hidden_size,
        ),
    )
    for tower, prefix, cfg in (("text", "text_model", t), ("vision", "vision_model", v)):
        d, f = cfg.hidden_size, cfg.intermediate_size
        for i in range(cfg.num_layers):
            base = f"{prefix}.encoder.layers.{i}"
            for ln in ("layer_norm1", "layer_norm2"):
                short = "ln1" if ln == "layer_norm1" else "ln2"
                yield f"{base}.{ln}.weight", (tower, "layers", short, "scale"), i, "plain", (d,)
                yield f"{base}.{ln}.bias", (tower, "layers", short, "bias"), i, "plain", (d,)
            for hf, path in _LAYER_TENSORS:
                n_in, n_out = (d, f) if hf == "mlp.fc1" else (f, d) if hf == "mlp.fc2" else (d, d)
                yield f"{base}.{hf}.weight", (tower, "layers", *path, "kernel"), i, "linear", (n_out, n_in)
                yield f"{base}.{hf}.bias", (tower, "layers", *path, "bias"), i, "plain", (n_out,)


def expected_keys(config: ClipConfig) -> list[str]:
    """Every tensor name a checkpoint of this config must hold."""
    return [s[0] for s in _specs(config)]


def set_path(tree: dict, path: tuple, value: Any) -> None:
    """``tree[path[0]][path[1]]… = value``, making the dicts on the way."""
    for k in path[:-1]:
        tree = tree.setdefault(k, {})
    tree[path[-1]] = value


def get_path(tree: dict, path: tuple) -> Any:
    """``tree[path[0]][path[1]]…``."""
    for k in path:
        tree = tree[k]
    return tree


def check_tensors(
    state: dict[str, Any],
    specs: list[tuple],
    ignored: Sequence[str],
    source: str,
    expected_from: str = "its config",
    config_name: str = "its config",
) -> None:
    """Check a checkpoint's tensors against a converter's specs (``(key, path, layer, kind, shape)`` each):
    every key present with its shape, and nothing left over but the ``ignored`` keys. Raises
    :class:`~jaxplain.errors.CheckpointError` naming every missing, left-over or mis-shaped tensor."""
    wanted = {s[0] for s in specs}
    missing = sorted(wanted - state.keys())
    leftover = sorted(state.keys() - wanted - set(ignored))
    wrong = [
        f"{key}: {tuple(np.shape(state[key]))} in the checkpoint, {shape} expected from {expected_from}"
        for key, _, _, _, shape in specs
        if key in state and tuple(np.shape(state[key])) != shape
    ]
    problems = []
    if missing:
        problems.append(f"missing tensors ({len(missing)}): " + ", ".join(missing))
    if leftover:
        problems.append(f"left-over tensors not used by the model ({len(leftover)}): " + ", ".join(leftover))
    if wrong:
        problems.append("wrong shapes: " + "; ".join(wrong))
    if problems:
        raise CheckpointError(f"{source} does not match {config_name}:\n  " + "\n  ".join(problems))


def params_from_state_dict(state: dict[str, np.ndarray], config: ClipConfig, source: str = "checkpoint") -> dict:
    """Hugging Face ``CLIPModel`` tensors → jaxplain params (NumPy float32 arrays).

    Raises :class:`~jaxplain.errors.CheckpointError` naming every missing, left-over or mis-shaped
    tensor.
    """
    specs = list(_specs(config))
    check_tensors(state, specs, IGNORED_KEYS, source, expected_from="config.json")

    layered: dict[tuple, list] = {}
    params: dict = {}
    for key, path, layer, kind, _ in specs:
        x = np.asarray(state[key], dtype=np.float32)
        if kind == "linear":
            x = x.T
        elif kind == "patch":
            x = x.reshape(x.shape[0], -1).T
        if layer is None:
            set_path(params, path, x)
        else:
            layered.setdefault(path, []).append(x)
    for path, xs in layered.items():
        set_path(params, path, np.stack(xs))
    return params


def state_dict_from_params(params: dict, config: ClipConfig) -> dict[str, np.ndarray]:
    """jaxplain params → Hugging Face ``CLIPModel`` tensors (float32, contiguous), for saving."""
    v = config.vision
    state = {}
    for key, path, layer, kind, shape in _specs(config):
        x = np.asarray(get_path(params, path), dtype=np.float32)
        if layer is not None:
            x = x[layer]
        if kind == "linear":
            x = x.T
        elif kind == "patch":
            x = x.T.reshape(v.hidden_size, v.num_channels, v.patch_size, v.patch_size)
        if tuple(x.shape) != shape:
            raise CheckpointError(f"param {'/'.join(path)} has shape {x.shape}; {key} needs {shape}")
        state[key] = np.array(x, dtype=np.float32, order="C")  # ascontiguousarray would make 0-d 1-d
    return state


def read_hf_checkpoint(directory, what: str, config_from_dict, params_from_state) -> tuple[dict, Any]:
    """``(params, config)`` of a Hugging Face directory of a family ``what`` (``config.json`` and
    ``model.safetensors``, or sharded safetensors), both checked strictly: an unreadable or invalid config,
    unreadable weights, non-finite values, or tensors that do not match the config are a
    :class:`CheckpointError` naming the file and the key.

    ``config_from_dict(d, source)`` reads the config; ``params_from_state(state, config, source)`` the tensors.
    """
    from jaxplain.models.loading import read_weights  # it imports this module

    directory = Path(directory)
    path = directory / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{directory}: no config.json (is this a Hugging Face {what} checkpoint directory?)")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read it as JSON ({e})") from None
    config = config_from_dict(d, source=str(path))
    return params_from_state(read_weights(directory), config, source=str(directory)), config


def write_hf_checkpoint(directory, state: dict[str, np.ndarray], config_dict: dict) -> None:
    """Write tensors and a config as a Hugging Face directory that transformers loads (``config.json`` and
    ``model.safetensors``), each atomically and with the permissions of a new file
    (:mod:`jaxplain.outputs`)."""
    from safetensors.numpy import save

    from jaxplain.outputs import write_bytes, write_text

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_bytes(directory / "model.safetensors", save(state, metadata={"format": "pt"}))
    write_text(directory / "config.json", json.dumps(config_dict, indent=2) + "\n")

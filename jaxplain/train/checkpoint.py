"""Training checkpoints: params, optimizer state, step and seed in one safetensors file (never pickle).

Each leaf of the state pytree is stored under its key path (``params['vision']['pre_ln']['scale']``,
``opt_state[1][0].mu[...]``); restoring fills the leaves of a freshly initialised state of the same
structure, and any missing, left-over or mis-shaped tensor is an error that names it. The data
randomness of step ``t`` is a function of ``(seed, t)`` (see :mod:`jaxplain.train.pipeline`), so the
seed and step restore it exactly.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxplain.errors import CheckpointError

_NAME = re.compile(r"^step_(\d{8})\.safetensors$")


class TrainState(NamedTuple):
    """Everything a run needs to continue exactly: ``step`` steps have been taken with ``seed``."""

    params: Any
    opt_state: Any
    step: int
    seed: int


def _flatten(tree: Any, prefix: str) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {prefix + jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def checkpoint_path(directory: str | Path, step: int) -> Path:
    return Path(directory) / f"step_{step:08d}.safetensors"


def save_state(directory: str | Path, state: TrainState, metadata: dict[str, Any], keep: int = 2) -> Path:
    """Write ``state`` to ``directory/step_XXXXXXXX.safetensors`` atomically; keep the newest ``keep`` files.

    ``metadata`` (JSON-serialisable, e.g. the configs) is stored in the file header and checked on restore.
    """
    from safetensors.numpy import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {**_flatten(state.params, "params"), **_flatten(state.opt_state, "opt_state")}
    tensors["step"] = np.asarray(state.step, np.int64)
    tensors["seed"] = np.asarray(state.seed, np.int64)
    path = checkpoint_path(directory, state.step)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"jaxplain_train": json.dumps(metadata, sort_keys=True)})
    os.replace(tmp, path)  # a crash mid-write never leaves a truncated checkpoint under the real name
    for old in list_checkpoints(directory)[:-keep]:
        old.unlink()
    return path


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Checkpoint files of a directory, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if _NAME.match(p.name))


def latest_checkpoint(directory: str | Path) -> Path | None:
    found = list_checkpoints(directory)
    return found[-1] if found else None


def _fill(template: Any, tensors: dict[str, np.ndarray], prefix: str, path: Path) -> Any:
    named, treedef = jax.tree_util.tree_flatten_with_path(template)
    leaves = []
    for key_path, like in named:
        name = prefix + jax.tree_util.keystr(key_path)
        if name not in tensors:
            raise CheckpointError(f"{path}: no tensor {name}")
        value = tensors.pop(name)
        like = np.asarray(like)
        if value.shape != like.shape or value.dtype != like.dtype:
            raise CheckpointError(
                f"{path}: {name} is {value.dtype}{list(value.shape)}, this run expects {like.dtype}{list(like.shape)}"
            )
        leaves.append(value)
    return jax.tree_util.tree_unflatten(treedef, leaves)


def restore_state(path: str | Path, template: TrainState, metadata: dict[str, Any]) -> TrainState:
    """Read a checkpoint into the structure of ``template`` (a freshly initialised state).

    Raises:
      CheckpointError: the file is unreadable, was written with other ``metadata`` (model or training
        config), or its tensors do not match the template's.
    """
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="np") as f:
            saved = json.loads((f.metadata() or {}).get("jaxplain_train", "null"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: cannot read it as a training checkpoint ({e})") from None
    if saved != json.loads(json.dumps(metadata, sort_keys=True)):
        raise CheckpointError(f"{path}: written by a run with other settings:\n  saved: {saved}\n  now:   {metadata}")
    params = _fill(template.params, tensors, "params", path)
    opt_state = _fill(template.opt_state, tensors, "opt_state", path)
    step, seed = int(tensors.pop("step")), int(tensors.pop("seed"))
    if tensors:
        raise CheckpointError(f"{path}: left-over tensors {sorted(tensors)[:5]}")
    return TrainState(params, opt_state, step, seed)

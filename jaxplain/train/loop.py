"""The training loop: one jitted, data-parallel step, periodic checkpoints, a progress bar.

The step is a pure function ``(params, opt_state, batch) → (params, opt_state, metrics)``. The batch
is split along a ``"data"`` mesh axis over all devices and the params and optimizer state are
replicated, so the same code runs on one CPU, several devices, or fake CPU devices in tests; XLA
inserts the gradient all-reduce.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxplain.models import clip, siglip
from jaxplain.models.config import ClipConfig
from jaxplain.models.siglip import SiglipConfig
from jaxplain.sharding import DATA, make_mesh
from jaxplain.train.checkpoint import TrainState, latest_checkpoint, restore_state, save_state
from jaxplain.train.loss import MAX_LOGIT_SCALE, loss_fn, siglip_loss_fn

Batch = dict[str, np.ndarray]
# Weight decay applies to matrices that mix features, not to norms, biases, embeddings or the temperature.
_DECAYED = ("kernel", "projection", "patch_embedding")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train (the model itself is a :class:`~jaxplain.models.config.ClipConfig`).

    Attributes:
      steps: optimizer steps in the run (the schedule's length).
      batch_size: image–caption pairs per step, split evenly over the devices.
      learning_rate: peak AdamW learning rate, reached after ``warmup_steps`` and cosine-decayed to
        ``learning_rate · final_lr_fraction`` at ``steps``.
      weight_decay: AdamW decay of the weight matrices.
      clip_norm: gradients are rescaled to at most this global norm.
      seed: seeds the initial params and all data randomness.
      max_shift: images are translated by up to this many pixels (augmentation).
      flip: probability of a horizontal flip (augmentation).
    """

    steps: int = 1800
    batch_size: int = 256
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    final_lr_fraction: float = 0.02
    weight_decay: float = 0.05
    clip_norm: float = 1.0
    seed: int = 0
    max_shift: int = 1
    flip: float = 0.0

    def __post_init__(self):
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be below steps ({self.steps})")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")


ModelConfig = ClipConfig | SiglipConfig


@dataclasses.dataclass(frozen=True)
class Architecture:
    """What training needs to know about a model's architecture: its initial params, its loss, and the cap on
    its log-temperature (CLIP caps it at ``log 100``; SigLIP leaves it free)."""

    init_params: Callable[[jax.Array, Any], Any]
    loss_fn: Callable[[Any, Batch, Any], tuple[jax.Array, dict[str, Any]]]
    max_logit_scale: float | None


def architecture(model_config: ModelConfig) -> Architecture:
    """The :class:`Architecture` of a model config (a CLIP or SigLIP one)."""
    if isinstance(model_config, SiglipConfig):
        return Architecture(siglip.init_params, siglip_loss_fn, None)
    return Architecture(clip.init_params, loss_fn, MAX_LOGIT_SCALE)


def _decay_mask(params: clip.Params) -> Any:
    return jax.tree_util.tree_map_with_path(lambda path, _: getattr(path[-1], "key", None) in _DECAYED, params)


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW on a linear-warmup + cosine-decay schedule."""
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.learning_rate,
        warmup_steps=config.warmup_steps,
        decay_steps=config.steps,
        end_value=config.learning_rate * config.final_lr_fraction,
    )
    return optax.chain(
        optax.clip_by_global_norm(config.clip_norm),
        optax.adamw(schedule, b2=0.98, weight_decay=config.weight_decay, mask=_decay_mask),
    )


def init_state(model_config: ModelConfig, config: TrainConfig) -> TrainState:
    """Fresh params (from ``config.seed``) and optimizer state, at step 0."""
    params = architecture(model_config).init_params(jax.random.key(config.seed), model_config)
    return TrainState(params, make_optimizer(config).init(params), 0, config.seed)


def data_mesh() -> Mesh:
    """A one-axis mesh ``("data",)`` over all devices (:func:`jaxplain.sharding.make_mesh`)."""
    return make_mesh(DATA)


def make_train_step(
    model_config: ModelConfig, optimizer: optax.GradientTransformation, mesh: Mesh
) -> Callable[[clip.Params, Any, Batch], tuple[clip.Params, Any, dict[str, jax.Array]]]:
    """The jitted step ``(params, opt_state, batch) → (params, opt_state, metrics)``.

    The batch (``{"pixels" [B, 3, H, W], "ids" [B, T], "labels" [B]}``, host or device arrays) is
    sharded along ``"data"``; params, optimizer state and metrics are replicated. The old params and
    optimizer state are donated: do not use them after the call.
    """
    replicated = NamedSharding(mesh, PartitionSpec())
    sharded = NamedSharding(mesh, PartitionSpec("data"))
    arch = architecture(model_config)

    def step(params, opt_state, batch):
        grads, metrics = jax.grad(arch.loss_fn, has_aux=True)(params, batch, model_config)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        if arch.max_logit_scale is not None:
            # Cap the temperature parameter itself (as CLIP does), so the saved model uses the trained value.
            params = {**params, "logit_scale": jnp.minimum(params["logit_scale"], arch.max_logit_scale)}
        return params, opt_state, {**metrics, "grad_norm": optax.tree.norm(grads)}

    return jax.jit(
        step,
        in_shardings=(replicated, replicated, sharded),
        out_shardings=(replicated, replicated, replicated),
        donate_argnums=(0, 1),
    )


@functools.lru_cache(maxsize=4)
def compiled_train_step(model_config: ModelConfig, config: TrainConfig, mesh: Mesh):
    """:func:`make_train_step` with :func:`make_optimizer` of ``config``, cached: runs in one process with the
    same model, settings and mesh (e.g. a run and its resumption) share one compiled step."""
    return make_train_step(model_config, make_optimizer(config), mesh)


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        unit="img",
        unit_scale=True,
        desc="training",
        file=sys.stderr,
        dynamic_ncols=True,
        disable=not enabled,
    )


def train(
    model_config: ModelConfig,
    config: TrainConfig,
    source: Callable[[int], Batch],
    *,
    state: TrainState | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 200,
    until: int | None = None,
    progress: bool = True,
    log_every: int = 10,
) -> tuple[TrainState, dict[str, np.ndarray]]:
    """Train from ``state`` (fresh when None) up to step ``until`` (default ``config.steps``).

    Args:
      model_config: the model.
      config: the training settings.
      source: ``source(t)`` is batch ``t`` (see :class:`jaxplain.train.pipeline.BatchSource`).
      state: where to start; pass :func:`resume` 's result to continue a run.
      checkpoint_dir: where to write checkpoints, every ``checkpoint_every`` steps and when the run stops.
      checkpoint_every: steps between checkpoints.
      until: stop after this step (for tests and staged runs; the schedule still spans ``config.steps``).
      progress: show a progress bar with the loss and throughput.
      log_every: steps between updates of the metrics on the bar (reading them waits for the device).

    Returns:
      ``(state, history)`` with host params and ``history[name]`` the metric at each step taken ``[S]``.
    """
    until = config.steps if until is None else until
    mesh = data_mesh()
    if config.batch_size % mesh.size:
        raise ValueError(f"batch size {config.batch_size} does not divide over {mesh.size} devices")
    state = init_state(model_config, config) if state is None else state
    step_fn = compiled_train_step(model_config, config, mesh)
    replicated = NamedSharding(mesh, PartitionSpec())
    params, opt_state = jax.device_put((state.params, state.opt_state), replicated)
    metadata = checkpoint_metadata(model_config, config)
    history: list[dict[str, jax.Array]] = []
    step = state.step
    with _progress(until * config.batch_size, step * config.batch_size, progress) as bar:
        while step < until:
            # Dispatch is asynchronous: the host builds the next batch while the device computes.
            params, opt_state, metrics = step_fn(params, opt_state, source(step))
            history.append(metrics)
            step += 1
            bar.update(config.batch_size)
            if step % log_every == 0 or step == until:
                m = jax.device_get(metrics)
                bar.set_postfix(
                    step=step, loss=f"{m['loss']:.4f}", acc=f"{m['class_accuracy']:.3f}", T=f"{m['temperature']:.1f}"
                )
            if checkpoint_dir is not None and (step % checkpoint_every == 0 or step == until):
                save_state(checkpoint_dir, _host_state(params, opt_state, step, config.seed), metadata)
    out = {k: np.asarray([float(m[k]) for m in jax.device_get(history)]) for k in (history[0] if history else {})}
    return _host_state(params, opt_state, step, config.seed), out


def _host_state(params, opt_state, step: int, seed: int) -> TrainState:
    params, opt_state = jax.device_get((params, opt_state))
    return TrainState(params, opt_state, step, seed)


def checkpoint_metadata(model_config: ModelConfig, config: TrainConfig) -> dict[str, Any]:
    """What a checkpoint records about its run, and a resumed run must match."""
    return {"model": model_config.to_hf_dict(), "train": dataclasses.asdict(config)}


def resume(model_config: ModelConfig, config: TrainConfig, checkpoint_dir: str | Path) -> TrainState | None:
    """The state of the newest checkpoint in ``checkpoint_dir``, or None if there is none."""
    path = latest_checkpoint(checkpoint_dir)
    if path is None:
        return None
    template = init_state(model_config, config)
    return restore_state(path, template, checkpoint_metadata(model_config, config))

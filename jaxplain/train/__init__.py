"""Training CLIP or SigLIP from scratch: the contrastive and sigmoid losses, a data-parallel jitted step,
checkpoints, the command.

The public pieces::

    config = TrainConfig(steps=..., batch_size=...)
    state, history = train(model_config, config, source, checkpoint_dir=...)

with ``source`` a :class:`~jaxplain.train.pipeline.BatchSource` (batch ``t`` as a function of
``(seed, t)``) and ``model_config`` from :func:`~jaxplain.train.presets.model_config` (CLIP) or
:func:`~jaxplain.train.presets.siglip_model_config` (SigLIP).
"""

from jaxplain.train.checkpoint import TrainState, latest_checkpoint, restore_state, save_state
from jaxplain.train.loop import (
    Architecture,
    TrainConfig,
    architecture,
    compiled_train_step,
    data_mesh,
    init_state,
    make_optimizer,
    make_train_step,
    resume,
    train,
)
from jaxplain.train.loss import MAX_LOGIT_SCALE, contrastive_loss, loss_fn, siglip_loss_fn, sigmoid_loss
from jaxplain.train.pipeline import BatchSource, caption_table
from jaxplain.train.presets import PRESETS, model_config, siglip_model_config

__all__ = [
    "MAX_LOGIT_SCALE",
    "PRESETS",
    "Architecture",
    "BatchSource",
    "TrainConfig",
    "TrainState",
    "architecture",
    "caption_table",
    "compiled_train_step",
    "contrastive_loss",
    "data_mesh",
    "init_state",
    "latest_checkpoint",
    "loss_fn",
    "make_optimizer",
    "make_train_step",
    "model_config",
    "restore_state",
    "resume",
    "save_state",
    "siglip_loss_fn",
    "siglip_model_config",
    "sigmoid_loss",
    "train",
]

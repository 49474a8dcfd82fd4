"""Data files shipped inside the package: CLIP's BPE vocabulary and the models jaxplain ships.

A shipped model is a Hugging Face checkpoint directory under ``assets/models/NAME/``: ``fashion-clip``
(``CLIPModel``, softmax decision) and ``fashion-siglip`` (``SiglipModel``, sigmoid decision), both trained by
``jaxplain train`` on Fashion-MNIST; ``jaxplain.load(NAME)`` finds them offline.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

DEFAULT_MODEL = "fashion-clip"  # the model the commands use when none is named


def assets_dir() -> Path:
    """The folder of jaxplain's shipped data files."""
    return Path(str(resources.files("jaxplain") / "assets"))


def shipped_models() -> dict[str, Path]:
    """Models shipped with jaxplain, by name → their checkpoint directory."""
    root = assets_dir() / "models"
    if not root.is_dir():
        return {}
    return {d.name: d for d in sorted(root.iterdir()) if (d / "config.json").is_file()}

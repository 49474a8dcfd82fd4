"""Shared fixtures. Eight fake CPU devices are set up before jax is imported, for sharding tests."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import json
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures"
TINY = FIXTURES / "tiny-clip"


@pytest.fixture(scope="session")
def tiny_model():
    import jaxplain

    return jaxplain.load(TINY)


@pytest.fixture(scope="session")
def reference():
    """Outputs of transformers' PyTorch CLIPModel for the fixture images and texts."""
    data = dict(np.load(FIXTURES / "reference.npz", allow_pickle=False))
    meta = json.loads((FIXTURES / "reference.json").read_text())
    data["image_paths"] = [FIXTURES / "images" / n for n in meta["images"]]
    data["texts"] = meta["texts"]
    return data

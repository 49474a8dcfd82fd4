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


def dot_precisions(jaxpr) -> list:
    """The precision of every dot_general in a jaxpr, its sub-jaxprs (scan, map, jit) included."""
    out = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            out.append(eqn.params["precision"])
        for v in eqn.params.values():
            for sub in v if isinstance(v, (list, tuple)) else [v]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    out.extend(dot_precisions(inner))
    return out

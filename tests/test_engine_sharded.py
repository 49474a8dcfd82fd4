"""The whole counterfactual pipeline on a mesh of the 8 fake CPU devices gives the single-device answers."""

import jax
import numpy as np
import pytest

from jaxplain import sharding
from jaxplain.counterfactual.bank import build_bank
from jaxplain.counterfactual.engine import counterfactuals
from jaxplain.data import fashion_mnist

CLASSES = ["shirt", "trousers", "bag", "sandal"]


@pytest.fixture(scope="module")
def bank(tiny_model):
    images, _ = fashion_mnist.load_shipped_test()
    return build_bank(tiny_model, images=list(images[100:700]), backend="exact", progress=False)[0]


@pytest.mark.parametrize("search", ["exhaustive", "index"])
def test_pipeline_on_eight_devices_equals_one(tiny_model, bank, search):
    assert jax.device_count() == 8
    mesh = sharding.make_mesh()
    images = fashion_mnist.load_shipped_test()[0][:37]  # not a multiple of 8
    wants = ["other-class", "runner-up", "prob:bag>=0.5", "class:sandal"] * 9 + ["other-class"]
    kw = {"want": wants, "bank": bank, "classes": CLASSES, "search": search}
    one = counterfactuals(tiny_model, images, **kw)
    eight = counterfactuals(tiny_model, images, mesh=mesh, **kw)
    assert one.search == eight.search == search
    if search == "exhaustive":
        assert eight.pairs == one.pairs  # encoder and oracle bit for bit: every score and distance equal
    else:  # targets may move in the last bits; the answers do not
        got = [(p.status, [c.bank_row for c in p.counterfactuals]) for p in eight.pairs]
        assert got == [(p.status, [c.bank_row for c in p.counterfactuals]) for p in one.pairs]
        np.testing.assert_array_equal([p.original_score for p in eight.pairs], [p.original_score for p in one.pairs])
    assert sum(p.found for p in one.pairs) >= 10

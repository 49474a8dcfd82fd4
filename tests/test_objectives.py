"""Margins of every wanted outcome, computed by hand; parsing of the wanted-outcome text."""

import math

import numpy as np
import pytest

from jaxplain.errors import InputError
from jaxplain.objectives import (
    CLASS_LOSES,
    CLASS_WINS,
    PROB_ABOVE,
    PROB_BELOW,
    SIM_ABOVE,
    SIM_BELOW,
    Goal,
    Want,
    margin,
    reported_score,
    retrieval_level,
    retrieval_levels,
    scores,
)

Z = np.array([1.0, 3.0, 2.0])  # logits; the temperature is 2
# log p_1 = 3 − logsumexp(1, 3, 2) = −log(1 + e⁻¹ + e⁻²)
LOGP1 = -math.log(1 + math.exp(-1) + math.exp(-2))


@pytest.mark.parametrize(
    "kind, cls, level, want",
    [
        (SIM_ABOVE, 0, 0.2, 0.3 - 0.2),
        (SIM_BELOW, 0, 0.2, 0.2 - 0.3),
        (CLASS_WINS, 0, 0.0, (1 - 3) / 2),
        (CLASS_WINS, 1, 0.0, (3 - 2) / 2),
        (CLASS_LOSES, 1, 0.0, (2 - 3) / 2),
        (CLASS_LOSES, 2, 0.0, (3 - 2) / 2),
        (PROB_ABOVE, 1, math.log(0.5), (LOGP1 - math.log(0.5)) / 2),
        (PROB_BELOW, 1, math.log(0.5), (math.log(0.5) - LOGP1) / 2),
    ],
)
def test_margins_by_hand(kind, cls, level, want):
    goal = Goal(np.int32(kind), np.int32(cls), np.float32(level))
    assert float(margin(np.float32(0.3), Z, goal, 2.0)) == pytest.approx(want, abs=1e-6)


def test_reported_score():
    p = np.exp(Z - Z.max()) / np.exp(Z - Z.max()).sum()
    assert float(reported_score(0.3, Z, Goal(SIM_ABOVE, 0, 0.0))) == pytest.approx(0.3)
    assert float(reported_score(0.3, Z, Goal(PROB_ABOVE, 2, 0.0))) == pytest.approx(p[2], abs=1e-6)


def test_scores():
    e = np.array([[0.6, 0.8, 0.0]])
    sim, z = scores(e, np.array([[0.0, 1.0, 0.0]]), np.eye(3), 10.0)
    np.testing.assert_allclose(sim, [0.8])
    np.testing.assert_allclose(z, [[6.0, 8.0, 0.0]])


def test_retrieval_level():
    bank = np.array([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]])
    q = np.array([1.0, 0.0])  # scores 1.0, 0.8, 0.6, 0.0
    assert retrieval_level(q, bank, 2) == pytest.approx(0.7)  # between the 2nd (0.8) and the 3rd (0.6)
    assert retrieval_level(q, bank, 1, exclude=0) == pytest.approx(0.7)  # the original (1.0) is not ranked
    assert retrieval_level(q, bank, 3) == pytest.approx(0.3)
    with pytest.raises(InputError, match="only 3 items to rank"):
        retrieval_level(q, bank, 3, exclude=0)


@pytest.mark.parametrize(
    "text, goal",
    [
        ("class:Bag", (CLASS_WINS, 2, 0.0)),
        ("other-class", (CLASS_LOSES, 0, 0.0)),
        ("runner-up", (CLASS_WINS, 1, 0.0)),
        ("prob:Coat>=0.9", (PROB_ABOVE, 1, math.log(0.9))),
        ("prob: Coat <= 0.1", None),
        ("similarity>=0.3", (SIM_ABOVE, 0, 0.3)),
        ("similarity <= -0.1", (SIM_BELOW, 0, -0.1)),
    ],
)
def test_parse_and_resolve(text, goal):
    names = ["Shirt", "Coat", "Bag"]
    if goal is None:  # the name is taken up to the operator, spaces trimmed
        w = Want.parse("prob:Coat<=0.1")
        assert w.goal(names) == (PROB_BELOW, 1, pytest.approx(math.log(0.1)))
        return
    w = Want.parse(text)
    got = w.goal(names, predicted=0, runner_up=1)
    assert got[:2] == goal[:2] and got[2] == pytest.approx(goal[2])
    assert Want.parse(str(w)) == w


@pytest.mark.parametrize(
    "text, message",
    [
        ("make it a cat", "not understood"),
        ("prob:Bag>=1.5", "strictly between 0 and 1"),
        ("similarity>=2", r"lies in \[-1, 1\]"),
        ("top:0", "at least 1"),
    ],
)
def test_parse_errors(text, message):
    with pytest.raises(InputError, match=message):
        Want.parse(text)


def test_unknown_class_names_the_classes():
    with pytest.raises(InputError, match="unknown class 'Hat'; the classes are Shirt, Coat"):
        Want.parse("class:Hat").goal(["Shirt", "Coat"])


def test_smooth_margins_never_exceed_the_exact_ones():
    rng = np.random.RandomState(0)
    for _ in range(50):
        z = rng.randn(6) * 3
        for kind in (CLASS_WINS, CLASS_LOSES):
            goal = Goal(np.int32(kind), np.int32(rng.randint(6)), np.float32(0))
            assert float(margin(0.0, z, goal, 2.0, smooth=True)) <= float(margin(0.0, z, goal, 2.0)) + 1e-6


def test_retrieval_levels_in_a_batch_equal_sorting_each():
    rng = np.random.RandomState(3)
    bank = rng.randn(700, 8).astype(np.float32)
    queries = rng.randn(9, 8).astype(np.float32)
    ks = np.array([1, 5, 5, 2, 699, 1, 5, 3, 698])
    exclude = np.array([-1, 4, -1, 10, -1, 0, 699, -1, 3])
    got = retrieval_levels(queries, bank, ks, exclude, chunk=2)
    for q, k, x, level in zip(queries, ks, exclude, got):
        s = bank @ q
        if x >= 0:
            s = np.delete(s, x)
        s = -np.sort(-s)
        assert level == pytest.approx((s[k - 1] + s[k]) / 2, abs=1e-5)  # gemm vs gemv rounding
    with pytest.raises(InputError, match="top-699: the bank has only 699 items"):
        retrieval_levels(queries[:1], bank, [699], np.array([5]))

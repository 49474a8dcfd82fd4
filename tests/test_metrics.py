"""Explanation-quality metrics against values worked out by hand (the arithmetic is in the comments)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxplain.metrics import (
    CATEGORIES,
    METRICS,
    MetricInfo,
    apply_masks,
    auc,
    completeness_delta,
    completeness_error,
    contrastivity,
    diversity,
    max_sensitivity,
    max_sensitivity_from,
    proximity,
    randomisation_similarity,
    randomise_layers,
    rank,
    ranking,
    sparsity,
    spearman,
    step_counts,
    step_masks,
    uniform_perturbations,
    validity,
)

ATTR = np.array([[0.1, 0.9, 0.5, 0.3]])  # ranking: feature 1 (0.9), 2 (0.5), 3 (0.3), 0 (0.1)
TIED = np.array([[0.5, 0.2, 0.5, 0.2]])  # ties go to the lower index: 0, 2, 1, 3


# --- info ---------------------------------------------------------------------------------------------


def test_metric_table():
    higher = {"insertion_auc", "contrastivity", "validity", "diversity"}
    assert higher <= set(METRICS) and set(METRICS) - higher == {
        "deletion_auc",
        "max_sensitivity",
        "completeness_error",
        "randomisation_similarity",
        "proximity",
        "sparsity",
    }
    for name, info in METRICS.items():
        assert info.name == name
        assert info.higher_is_better == (name in higher)
        assert info.category in CATEGORIES and info.description
    assert METRICS["randomisation_similarity"].category == "sanity"
    assert {METRICS[n].category for n in ("validity", "proximity", "sparsity", "diversity")} == {"counterfactual"}
    with pytest.raises(ValueError, match="'speed'"):
        MetricInfo("x", True, "speed", "")


# --- faithfulness -------------------------------------------------------------------------------------


def test_ranking():
    np.testing.assert_array_equal(ranking(ATTR), [[1, 2, 3, 0]])
    np.testing.assert_array_equal(ranking(TIED), [[0, 2, 1, 3]])
    np.testing.assert_array_equal(ranking(np.array([[0, 1, 1]], np.uint8)), [[1, 2, 0]])


@pytest.mark.parametrize(
    "steps, fraction, f, want",
    [
        (2, 1.0, 4, [0, 2, 4]),  # k/2 · 4
        (2, 0.5, 4, [0, 1, 2]),  # k/2 · 0.5 · 4 = 0, 1, 2
        (3, 1.0, 4, [0, 1, 3, 4]),  # k · 4/3 = 0, 1.33, 2.67, 4
        (4, 1.0, 2, [0, 1, 1, 2, 2]),  # k · 2/4 = 0, 0.5, 1, 1.5, 2: halves round up (not 0, 0, 1, 2, 2)
        (2, 0.3, 5, [0, 1, 2]),  # k/2 · 1.5 = 0, 0.75, 1.5
    ],
)
def test_step_counts(steps, fraction, f, want):
    np.testing.assert_array_equal(step_counts(steps, fraction, f), want)


@pytest.mark.parametrize(
    "attr, steps, fraction, mode, want",
    [
        # n = 0, 2, 4: nothing, features 1 and 2, everything
        (ATTR, 2, 1.0, "deletion", [[1, 1, 1, 1], [1, 0, 0, 1], [0, 0, 0, 0]]),
        # n = 0, 1, 2: nothing, feature 1, features 1 and 2
        (ATTR, 2, 0.5, "deletion", [[1, 1, 1, 1], [1, 0, 1, 1], [1, 0, 0, 1]]),
        # insertion keeps only the n most important features: the complement of deletion
        (ATTR, 2, 1.0, "insertion", [[0, 0, 0, 0], [0, 1, 1, 0], [1, 1, 1, 1]]),
        (ATTR, 2, 0.5, "insertion", [[0, 0, 0, 0], [0, 1, 0, 0], [0, 1, 1, 0]]),
        # n = 0, 1, 2, 3, 4 in the order 0, 2, 1, 3
        (TIED, 4, 1.0, "deletion", [[1, 1, 1, 1], [0, 1, 1, 1], [0, 1, 0, 1], [0, 0, 0, 1], [0, 0, 0, 0]]),
    ],
)
def test_step_masks(attr, steps, fraction, mode, want):
    masks = step_masks(attr, steps, fraction, mode)
    assert masks.dtype == jnp.float32
    np.testing.assert_array_equal(masks, [want])


def test_step_masks_batched_per_pair():
    attr = np.concatenate([ATTR, TIED])
    masks = step_masks(attr, 2)
    assert masks.shape == (2, 3, 4)
    np.testing.assert_array_equal(masks[0], step_masks(ATTR, 2)[0])
    np.testing.assert_array_equal(masks[1, 1], [0, 1, 0, 1])  # TIED: features 0 and 2 go first


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        ({"steps": 0}, "got 0"),
        ({"steps": 2.0}, r"2\.0"),
        ({"steps": 2, "fraction": 0.0}, r"0\.0"),
        ({"steps": 2, "fraction": 1.5}, r"1\.5"),
        ({"steps": 2, "mode": "erase"}, "'erase'"),
    ],
)
def test_step_masks_bad_arguments(kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        step_masks(ATTR, **kwargs)


def test_step_masks_needs_two_axes():
    with pytest.raises(ValueError, match=r"\(4,\)"):
        step_masks(ATTR[0], 2)


@pytest.mark.parametrize(
    "curve, want",
    [
        ([1.0, 0.5, 0.0], 0.5),  # ((1 + 0.5)/2 + (0.5 + 0)/2) / 2 = (0.75 + 0.25) / 2
        ([0.0, 1.0, 1.0, 0.0], 2 / 3),  # (0.5 + 1 + 0.5) / 3
        ([0.7, 0.7, 0.7], 0.7),  # a constant curve has its value as area
        ([0.2, 0.8], 0.5),  # one trapezoid
    ],
)
def test_auc(curve, want):
    np.testing.assert_allclose(auc(np.array([curve])), [want], rtol=1e-6)


def test_auc_needs_two_points():
    with pytest.raises(ValueError, match=r"\(1, 1\)"):
        auc(np.ones((1, 1)))


def test_apply_masks_vector_features():
    x = np.array([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])  # [N=1, F=3, 2]
    masks = np.array([[[1, 0, 1], [0.5, 1, 0]]], np.float32)  # [1, S=2, 3]
    out = apply_masks(x, masks, 10.0)
    assert out.shape == (1, 2, 3, 2)
    # step 0: feature 1 replaced by the baseline; step 1: feature 0 half-way (0.5·1 + 0.5·10 = 5.5,
    # 0.5·2 + 0.5·10 = 6), feature 2 replaced
    np.testing.assert_allclose(out[0, 0], [[1, 2], [10, 10], [5, 6]])
    np.testing.assert_allclose(out[0, 1], [[5.5, 6], [3, 4], [10, 10]])
    # a baseline per feature, broadcast over the pair axis
    base = np.array([[[-1.0, -1.0], [-2.0, -2.0], [-3.0, -3.0]]])
    np.testing.assert_allclose(apply_masks(x, masks[:, :1], base)[0, 0], [[1, 2], [-2, -2], [5, 6]])


def test_apply_masks_with_step_masks_builds_the_deletion_curve():
    x = np.array([[10.0, 20.0, 30.0, 40.0]])
    out = apply_masks(x, step_masks(ATTR, 2), 0.0)
    np.testing.assert_array_equal(out[0], [[10, 20, 30, 40], [10, 0, 0, 40], [0, 0, 0, 0]])


def test_apply_masks_keeps_integer_tokens():
    ids = np.array([[5, 6, 7]], np.int32)
    out = apply_masks(ids, np.array([[[1, 0, 1]]], np.float32), np.int32(0))
    assert out.dtype == jnp.int32
    np.testing.assert_array_equal(out, [[[5, 0, 7]]])


def test_apply_masks_shape_mismatch():
    with pytest.raises(ValueError, match=r"\[1, S, 3\]"):
        apply_masks(np.zeros((1, 3)), np.zeros((1, 2, 4)), 0.0)


# --- robustness ---------------------------------------------------------------------------------------


def test_max_sensitivity_from():
    e = np.array([[3.0, 4.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    p = np.array(
        [
            [[3, 4], [3, 5], [0, 0]],  # distances 0, 1, 5 → 5; ‖e‖ = 5 → 1
            [[1, 1], [2, 1], [1, 0]],  # distances 1, √2, 0 → √2; ‖e‖ = 1 → √2
            [[0, 0], [0, 0], [0, 0]],  # nothing changes → 0, also normalised
            [[0, 0], [1, 0], [0, 0]],  # 1; relative to a zero explanation → inf
        ],
        np.float32,
    )
    np.testing.assert_allclose(max_sensitivity_from(e, p, normalize=False), [5, math.sqrt(2), 0, 1], rtol=1e-6)
    np.testing.assert_allclose(max_sensitivity_from(e, p), [1, math.sqrt(2), 0, np.inf], rtol=1e-6)


def test_max_sensitivity_from_shape_mismatch():
    with pytest.raises(ValueError, match=r"\(2, 3, 5\)"):
        max_sensitivity_from(np.zeros((2, 4)), np.zeros((2, 3, 5)))


# One input shape and sample count for all the tests that draw noise, so that they share one compiled kernel.
X = jnp.array([[[1.0, 2.0], [2.0, 0.0]], [[0.0, 0.0], [3.0, 4.0]]])  # [N=2, 2, 2]; ‖x‖ = 3 and 5


def test_uniform_perturbations():
    key = jax.random.key(0)
    xs = uniform_perturbations(key, X, 4, 0.25)
    assert xs.shape == (2, 4, 2, 2) and xs.dtype == jnp.float32
    noise = np.asarray(xs - X[:, None])
    # 32 draws in [−0.25, 0.25), spread over the whole interval
    assert noise.min() >= -0.25 and noise.max() < 0.25 and noise.min() < -0.125 and noise.max() > 0.125
    np.testing.assert_array_equal(uniform_perturbations(key, X, 4, 0.25), xs)
    assert not np.array_equal(uniform_perturbations(jax.random.key(1), X, 4, 0.25), xs)
    with pytest.raises(ValueError, match="got 0"):
        uniform_perturbations(key, X, 0, 0.1)
    with pytest.raises(ValueError, match=r"-0\.1"):
        uniform_perturbations(key, X, 2, -0.1)


def test_max_sensitivity_one_batched_call_on_perturbed_copies():
    calls = []

    def explain(x):  # a linear explanation: e(x + δ) − e(x) = 2δ
        calls.append(x.shape)
        return 2 * x

    x, key = X, jax.random.key(3)
    got = max_sensitivity(explain, x, key, samples=4, radius=0.1)
    assert calls == [(2, 2, 2), (8, 2, 2)]
    # by hand: max_s ‖2δ_s‖ / ‖2x‖ = max_s ‖δ_s‖ / ‖x‖ with the same noise
    delta = uniform_perturbations(key, x, 4, 0.1) - x[:, None]
    want = jnp.max(jnp.linalg.norm(delta.reshape(2, 4, -1), axis=-1), axis=-1) / jnp.array([3.0, 5.0])
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert np.all(got > 0) and np.all(got <= 0.1 * 2 / jnp.array([3.0, 5.0]))  # ‖δ‖ ≤ 0.1 · √4
    unnormalised = max_sensitivity(explain, x, key, samples=4, radius=0.1, normalize=False)
    np.testing.assert_allclose(unnormalised, 2 * want * jnp.array([3.0, 5.0]), rtol=1e-5)


def test_max_sensitivity_of_a_constant_explanation_is_zero():
    got = max_sensitivity(lambda x: jnp.ones((x.shape[0], 2)), X, jax.random.key(0), samples=4)
    np.testing.assert_array_equal(got, [0, 0])


# --- completeness -------------------------------------------------------------------------------------


def test_completeness():
    attr = np.array([[1.0, 2.0, 3.0], [0.5, -0.5, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    f_in = np.array([10.0, 1.0, 5.0, 5.0])
    f_base = np.array([3.0, 3.0, 5.0, 5.0])
    # Σ attr = 6, 0, 1, 0; f(x) − f(x') = 7, −2, 0, 0
    np.testing.assert_allclose(completeness_delta(attr, f_in, f_base), [6 - 7, 0 + 2, 1, 0])
    np.testing.assert_allclose(completeness_error(attr, f_in, f_base), [1, 2, 1, 0])
    # relative: 1/7, 2/2; a score that did not change: inf where the attributions do not sum to 0, else 0
    np.testing.assert_allclose(completeness_error(attr, f_in, f_base, relative=True), [1 / 7, 1, np.inf, 0])


def test_completeness_sums_every_non_leading_axis():
    attr = np.arange(8, dtype=np.float32).reshape(2, 2, 2)  # sums 0+1+2+3 = 6 and 4+5+6+7 = 22
    np.testing.assert_allclose(completeness_delta(attr, np.array([6.0, 20.0]), np.zeros(2)), [0, 2])


# --- similarity ---------------------------------------------------------------------------------------


def test_rank():
    # ascending: −1 (feature 3) is 0, 0.1 (1) is 1, and the tie 0.3 shares places 2 and 3: 2.5 each
    np.testing.assert_array_equal(rank(np.array([[0.3, 0.1, 0.3, -1.0]])), [[2.5, 1, 2.5, 0]])
    # only valid features are ranked: 0.3, 0.1, −1 among features 0, 1, 3 → 2, 1, 0 (feature 2 ignored)
    valid = np.array([[True, True, False, True]])
    np.testing.assert_array_equal(rank(np.array([[0.3, 0.1, 0.3, -1.0]]), valid), [[2, 1, 0, 0]])


@pytest.mark.parametrize(
    "a, b, rho",
    [
        # ρ = 1 − 6 Σd² / (n(n² − 1)): d = 0, −1, 1, 0 → 1 − 6·2/60 = 0.8
        ([1, 2, 3, 4], [1, 3, 2, 4], 0.8),
        # ranks of b: 0, 1, 2, 4, 3 → d = 0, 0, 0, −1, 1 → 1 − 12/120 = 0.9
        ([10, 20, 30, 40, 50], [5, 6, 7, 8, 7.5], 0.9),
        ([1, 2, 3, 4], [4, 3, 2, 1], -1.0),
        ([1, 2, 3, 4], [0.1, 0.2, 5, 9], 1.0),  # only the order counts
        ([2, 2, 2, 2], [1, 2, 3, 4], 0.0),  # constant row
        ([1, 2, 3, 4], [7, 7, 7, 7], 0.0),
        ([5], [3], 0.0),  # one feature
        # ties averaged: ranks 0.5, 0.5, 2 against 0, 1, 2 → centred −.5, −.5, 1 and −1, 0, 1:
        # Σ = .5 + 0 + 1 = 1.5, √(1.5 · 2) = √3 → ρ = 1.5 / √3
        ([1, 1, 2], [0, 1, 2], 1.5 / math.sqrt(3)),
        ([0, 0, 0, 1], [0, 0, 0, 1], 1.0),
    ],
)
def test_spearman(a, b, rho):
    np.testing.assert_allclose(spearman(np.array([a], float), np.array([b], float)), [rho], atol=1e-6)


def test_spearman_on_valid_features_only():
    a = np.array([[1.0, 2.0, 3.0, 4.0, 9.0]])
    b = np.array([[1.0, 3.0, 2.0, 4.0, -9.0]])
    valid = np.array([[True, True, True, True, False]])
    np.testing.assert_allclose(spearman(a, b, valid), [0.8], atol=1e-6)  # as [1, 2, 3, 4] vs [1, 3, 2, 4]
    np.testing.assert_allclose(contrastivity(a, b, valid), [0.1], atol=1e-6)
    one = np.array([[True, False, False, False, False]])
    np.testing.assert_allclose(spearman(a, b, one), [0.0])  # a single valid feature carries no order


def test_spearman_batched_and_flattened():
    a = np.array([[[1, 2], [3, 4]], [[1, 2], [3, 4]]], float)  # [N=2, 2, 2] → 4 features
    b = np.array([[[1, 3], [2, 4]], [[4, 3], [2, 1]]], float)
    np.testing.assert_allclose(spearman(a, b), [0.8, -1.0], atol=1e-6)
    with pytest.raises(ValueError, match="same shape"):
        spearman(np.zeros((1, 3)), np.zeros((1, 4)))


def test_contrastivity():
    a = np.array([[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4]], float)
    b = np.array([[1, 3, 2, 4], [1, 2, 3, 4], [4, 3, 2, 1]], float)
    # (1 − ρ) / 2 with ρ = 0.8, 1, −1
    np.testing.assert_allclose(contrastivity(a, b), [0.1, 0.0, 1.0], atol=1e-6)


def test_randomisation_similarity():
    trained = np.array([[1.0, -2.0, 3.0, -4.0]])
    randomised = np.array([[-1.0, 2.0, -3.0, 4.0]])  # every sign flipped: the same map in absolute value
    np.testing.assert_allclose(randomisation_similarity(trained, randomised), [1.0], atol=1e-6)
    # signed: ranks 2, 1, 3, 0 against 1, 2, 0, 3 → d = 1, −1, 3, −3, Σd² = 20 → 1 − 6·20/60 = −1
    np.testing.assert_allclose(randomisation_similarity(trained, randomised, absolute=False), [-1.0], atol=1e-6)


# --- sanity: cascading randomisation ------------------------------------------------------------------


def _clip_like_params() -> dict:
    """A few tensors in jaxplain's CLIP layout; no tensor is constant and each layer has its own scale.

    Layer ``l`` of a stack has mean ``l + 1`` and a spread growing with ``l``, so that statistics pooled over
    the stack would not match any one layer.
    """
    rng = np.random.default_rng(0)

    def stacked(*shape):
        layer = np.arange(1.0, shape[0] + 1).reshape(-1, *[1] * (len(shape) - 1))
        return layer + layer * rng.normal(size=shape)

    def tower(head_ln):
        return {
            "position_embedding": rng.normal(size=(3, 8)),
            "layers": {"ln1": {"scale": stacked(3, 8)}, "mlp": {"fc1": {"kernel": stacked(3, 64, 256)}}},
            head_ln: {"scale": 1 + 0.1 * rng.normal(size=8), "bias": 0.1 * rng.normal(size=8)},
            "projection": rng.normal(size=(8, 4)),
        }

    p = {"vision": {"patch_embedding": rng.normal(size=(4, 8)), **tower("post_ln")}, "text": tower("final_ln")}
    p["logit_scale"] = np.float32(2.6)
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), p)


@pytest.fixture(scope="module")
def params():
    return _clip_like_params()


def _paths(tree):
    """Leaves by path, as NumPy arrays to compare."""
    return {path: np.asarray(x) for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_randomise_all_layers(params):
    out = randomise_layers(params, jax.random.key(2), "vision")
    assert jax.tree.structure(out) == jax.tree.structure(params)
    # untouched: the same objects
    assert out["text"] is params["text"] and out["logit_scale"] is params["logit_scale"]
    for name in ("patch_embedding", "position_embedding"):
        assert out["vision"][name] is params["vision"][name]
    # touched: every layer slice and the head differ
    for tree in ("layers", "post_ln", "projection"):
        for path, new in _paths(out["vision"][tree]).items():
            old = _paths(params["vision"][tree])[path]
            assert new.shape == old.shape and new.dtype == old.dtype
            assert np.all(new != old), path


def test_randomised_slices_keep_mean_and_std(params):
    old = np.asarray(params["vision"]["layers"]["mlp"]["fc1"]["kernel"])  # [3, 64, 256]: 16384 values a layer
    new = np.asarray(randomise_layers(params, jax.random.key(2), "vision")["vision"]["layers"]["mlp"]["fc1"]["kernel"])
    # per layer the means are ≈ 1, 2, 3 and the stds ≈ 1, 2, 3: a draw pooled over the stack would match neither.
    # The standard error of a mean over 16384 values is std/128, of a std about std/181.
    std = old.std(axis=(1, 2))
    assert np.all(np.abs(new.mean(axis=(1, 2)) - old.mean(axis=(1, 2))) < 0.05 * std)
    np.testing.assert_allclose(new.std(axis=(1, 2)), std, rtol=0.05)
    # within each layer the new values are independent of the old (correlation ≈ 0 ± 0.008)
    for new_l, old_l in zip(new, old):
        assert abs(np.corrcoef(new_l.ravel(), old_l.ravel())[0, 1]) < 0.05


def test_randomise_top_layers_cascade(params):
    key = jax.random.key(4)
    one = randomise_layers(params, key, "text", top=1)
    two = randomise_layers(params, key, "text", top=2)
    assert one["vision"] is params["vision"]
    for path, old in _paths(params["text"]["layers"]).items():  # 3 layers
        new1, new2 = _paths(one["text"]["layers"])[path], _paths(two["text"]["layers"])[path]
        np.testing.assert_array_equal(new1[:2], old[:2])  # top=1: only the last layer is touched
        np.testing.assert_array_equal(new2[:1], old[:1])  # top=2: the last two
        assert np.all(new1[2] != old[2]) and np.all(new2[1] != old[1])
        np.testing.assert_array_equal(new2[2], new1[2])  # the cascade adds layers; the key fixes the values
    for name in ("final_ln", "projection"):
        for path, old in _paths(params["text"][name]).items():
            assert np.all(_paths(one["text"][name])[path] != old)
    head_only = randomise_layers(params, key, "text", top=0)
    untouched = zip(jax.tree.leaves(head_only["text"]["layers"]), jax.tree.leaves(params["text"]["layers"]))
    assert all(new is old for new, old in untouched)
    assert np.all(head_only["text"]["projection"] != params["text"]["projection"])


def test_randomise_is_deterministic_and_keeps_dtype(params):
    a = randomise_layers(params, jax.random.key(5), "vision", top=2)
    b = randomise_layers(params, jax.random.key(5), "vision", top=2)
    c = randomise_layers(params, jax.random.key(6), "vision", top=2)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert not np.array_equal(a["vision"]["projection"], c["vision"]["projection"])
    half = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    out = randomise_layers(half, jax.random.key(5), "vision")
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(out))


def test_randomise_leaves_a_constant_tensor_as_it_is(params):
    fresh = {**params, "vision": {**params["vision"], "post_ln": {"scale": jnp.ones(8), "bias": jnp.zeros(8)}}}
    out = randomise_layers(fresh, jax.random.key(1), "vision")  # a layer norm as initialised: no spread
    jax.tree.map(np.testing.assert_array_equal, out["vision"]["post_ln"], fresh["vision"]["post_ln"])


@pytest.mark.parametrize("kwargs, bad", [({"tower": "audio"}, "'audio'"), ({"top": 4}, "4"), ({"top": -1}, "-1")])
def test_randomise_bad_arguments(params, kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        randomise_layers(params, jax.random.key(0), **kwargs)


# --- counterfactual -----------------------------------------------------------------------------------


def test_validity():
    valid = np.array([[1, 0, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]], bool)
    present = np.array([[1, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]], bool)
    # row 0: present 0, 1, 2, of which 0 and 2 valid (3 is valid padding: ignored) → 2/3
    # row 1: present 1, 2, of which 1 valid → 1/2; row 2: none present → NaN
    np.testing.assert_allclose(validity(valid, present), [2 / 3, 1 / 2, np.nan], rtol=1e-6)


def test_proximity():
    original = np.array([[0.0, 0.0], [1.0, 1.0]])
    cfs = np.array([[[3.0, 4.0], [6.0, 8.0], [100.0, 100.0]], [[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]]])
    present = np.array([[1, 1, 0], [0, 0, 0]], bool)
    # row 0: (5 + 10) / 2, the absent (100, 100) ignored; row 1: none present
    np.testing.assert_allclose(proximity(original, cfs, present), [7.5, np.nan])


def test_sparsity():
    original = np.array([[1.0, 2.0, 3.0, 4.0]])
    cfs = np.array([[[1, 2, 3, 5], [0, 0, 3, 4], [1, 2, 3, 4 + 1e-7], [9, 9, 9, 9]]], np.float32)
    present = np.array([[1, 1, 1, 0]], bool)
    # changed: 1/4, 2/4, 0/4 (1e-7 ≤ atol); the absent one would be 4/4 → (0.25 + 0.5 + 0) / 3 = 0.25
    np.testing.assert_allclose(sparsity(original, cfs, present), [0.25])
    # with atol = 1.5 only the change 2 − 0 counts: (0 + 1/4 + 0) / 3
    np.testing.assert_allclose(sparsity(original, cfs, present, atol=1.5), [1 / 12], rtol=1e-6)
    np.testing.assert_allclose(sparsity(original, cfs, np.zeros((1, 4), bool)), [np.nan])
    with pytest.raises(ValueError, match=r"\(1, 4, 4\)"):
        sparsity(np.zeros((1, 3)), cfs, present)


def test_diversity():
    far = [50.0, 50.0]
    cfs = np.array(
        [
            [[0, 0], [3, 0], [0, 4], far],  # pairwise distances 3, 4, 5 → 4; the absent point ignored
            [[0, 0], [1, 1], far, far],  # one pair: √2
            [[0, 0], far, far, far],  # one present: no spread
        ]
    )
    present = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]], bool)
    np.testing.assert_allclose(diversity(cfs, present), [4, math.sqrt(2), 0], rtol=1e-6)
    grad = jax.grad(lambda c: diversity(c, present).sum())(jnp.asarray(cfs, jnp.float32))
    assert np.isfinite(grad).all()


# --- every arithmetic metric under jit -----------------------------------------------------------------

PRESENT = np.array([[1, 1, 0], [1, 0, 1]], bool)
CASES = [
    (ranking, (ATTR,), {}),
    (step_masks, (np.concatenate([ATTR, TIED]),), {"steps": 3, "fraction": 0.5, "mode": "insertion"}),
    (auc, (np.array([[1.0, 0.5, 0.0], [0.2, 0.4, 0.9]]),), {}),
    (apply_masks, (np.ones((1, 4, 2)), step_masks(ATTR, 2), np.zeros(2)), {}),
    (max_sensitivity_from, (np.array([[3.0, 4.0]]), np.array([[[3.0, 5.0], [0.0, 0.0]]])), {"normalize": True}),
    (completeness_delta, (np.ones((2, 3)), np.array([1.0, 4.0]), np.zeros(2)), {}),
    (completeness_error, (np.ones((2, 3)), np.array([1.0, 4.0]), np.zeros(2)), {"relative": True}),
    (rank, (np.array([[0.3, 0.1, 0.3, -1.0]]),), {}),
    (spearman, (np.array([[1.0, 2, 3, 4]]), np.array([[1.0, 3, 2, 4]])), {}),
    (contrastivity, (np.array([[1.0, 2, 3, 4]]), np.array([[1.0, 3, 2, 4]])), {}),
    (randomisation_similarity, (np.array([[1.0, -2, 3, 4]]), np.array([[1.0, 3, 2, 4]])), {"absolute": False}),
    (validity, (np.array([[1, 0, 1], [0, 0, 1]], bool), PRESENT), {}),
    (proximity, (np.zeros((2, 2)), np.arange(12.0).reshape(2, 3, 2), PRESENT), {}),
    (sparsity, (np.zeros((2, 2)), np.arange(12.0).reshape(2, 3, 2), PRESENT), {"atol": 0.5}),
    (diversity, (np.arange(12.0).reshape(2, 3, 2), PRESENT), {}),
]


@pytest.mark.parametrize("fn, args, static", CASES, ids=[c[0].__name__ for c in CASES])
def test_jit_matches_eager(fn, args, static):
    jitted = jax.jit(fn, static_argnames=tuple(static))
    np.testing.assert_allclose(jitted(*args, **static), fn(*args, **static), rtol=1e-6)


def test_max_sensitivity_jits():
    fn = jax.jit(max_sensitivity, static_argnames=("explain_fn", "samples", "normalize"))
    got = fn(jnp.sin, X, jax.random.key(0), samples=4, radius=0.2)
    np.testing.assert_allclose(got, max_sensitivity(jnp.sin, X, jax.random.key(0), samples=4, radius=0.2), rtol=1e-6)


def test_randomise_layers_jits(params):
    fn = jax.jit(randomise_layers, static_argnames=("tower", "top"))
    a = fn(params, jax.random.key(7), tower="text", top=1)
    b = randomise_layers(params, jax.random.key(7), "text", top=1)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), a, b)


def test_cascade_compiles_once(params, caplog):
    key = jax.random.key(8)
    randomise_layers(params, key, "vision", top=0)  # compiles for these shapes
    with jax.log_compiles(), caplog.at_level("WARNING"):
        for tower in ("vision", "text"):  # the towers' stacks and heads have the same shapes here
            for top in range(4):
                randomise_layers(params, key, tower, top=top)
    assert not [r for r in caplog.records if "Compiling" in r.getMessage()]


def test_step_masks_with_valid_features_per_row():
    # row 0: features 1..3 valid (3 words), ranked 2 > 3 > 1; row 1: features 0..1 valid, ranked 0 > 1
    attr = jnp.asarray([[9.0, 0.1, 0.9, 0.5], [0.3, 0.2, 7.0, 7.0]])
    valid = jnp.asarray([[False, True, True, True], [True, True, False, False]])
    m = np.asarray(step_masks(attr, 2, 1.0, "deletion", valid=valid))
    # row 0: n_k = ⌊k/2·3 + ½⌋ = 0, 2, 3 → step 1 deletes features 2 and 3; invalid feature 0 always kept
    np.testing.assert_array_equal(m[0], [[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    # row 1: n_k = ⌊k/2·2 + ½⌋ = 0, 1, 2
    np.testing.assert_array_equal(m[1], [[1, 1, 1, 1], [0, 1, 1, 1], [0, 0, 1, 1]])
    ins = np.asarray(step_masks(attr, 2, 1.0, "insertion", valid=valid))
    np.testing.assert_array_equal(ins[0], [[1, 0, 0, 0], [1, 0, 1, 1], [1, 1, 1, 1]])
    np.testing.assert_array_equal(ins[1], [[0, 0, 1, 1], [1, 0, 1, 1], [1, 1, 1, 1]])
    # all valid: the same masks as without ``valid``
    full = jnp.ones_like(valid)
    np.testing.assert_array_equal(step_masks(attr, 3, 0.5, "deletion", valid=full), step_masks(attr, 3, 0.5))


def test_randomise_unstacked_layers_keeps_the_layout(params):
    from jaxplain.models import transformer

    key = jax.random.key(4)
    flat = {**params, "text": {**params["text"], "layers": transformer.unstack(params["text"]["layers"])}}
    got = randomise_layers(flat, key, "text", top=2)["text"]
    want = randomise_layers(params, key, "text", top=2)["text"]
    assert isinstance(got["layers"], tuple) and len(got["layers"]) == 3
    for a, b in zip(jax.tree.leaves(transformer.stack(got["layers"])), jax.tree.leaves(want["layers"])):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(got["projection"], want["projection"])

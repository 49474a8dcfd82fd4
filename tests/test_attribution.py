"""Attribution methods against values computed independently: finite differences, direct loops over
occlusions and masks, hand-computed rollouts and relevances, and IG's completeness."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxplain
from jaxplain.attribution import (
    api,
    core,
    gradcam,
    gradient,
    integrated,
    occlusion,
    relevance,
    rise,
    rollout,
    targets,
    words,
)
from jaxplain.attribution.targets import Target, TargetSpec
from jaxplain.errors import InputError
from jaxplain.models import clip

TEXTS = ["a photo of a cat", "an ankle boot, seen from the side", "trousers", "a red dress with white dots"]
CLASSES = ["cat", "dog", "boot", "dress"]


@pytest.fixture(scope="module")
def pixels(reference):
    return np.asarray(reference["pixels"][:4], np.float32)


def similarity_target(model, images_emb, texts):
    anchors = model.encode_texts(texts)
    return targets.build([TargetSpec("similarity")] * len(texts), images_emb, anchors, None, None, 1.0)


def scoring_of(model, candidates=None, dtype=np.float32):
    params = jax.tree.map(lambda a: jnp.asarray(a, dtype), model.params)
    cands = np.zeros((1, model.embed_dim)) if candidates is None else candidates
    return core.Scoring(params, jnp.asarray(cands, dtype), clip.logit_scale(params))


def f64(tree):
    return jax.tree.map(
        lambda a: jnp.asarray(a, jnp.float64) if np.issubdtype(np.asarray(a).dtype, np.floating) else a, tree
    )


# ---------------------------------------------------------------- targets


def test_target_values_by_hand():
    e = jnp.asarray([1.0, 0.0])
    cands = jnp.asarray([[1.0, 0.0], [0.0, 1.0]])  # z = 2 · V e = [2, 0]
    base = dict(anchor=jnp.asarray([0.6, 0.8]), cls=0, other=1, goal_kind=2, level=0.0)

    def v(kind, **kw):
        t = Target(**{**base, "kind": kind, **kw})
        return float(targets.value(e, jax.tree.map(jnp.asarray, t), cands, 2.0))

    assert v(targets.SIMILARITY) == pytest.approx(0.6)
    assert v(targets.LOGIT) == pytest.approx(2.0)
    assert v(targets.LOGIT, cls=1) == pytest.approx(0.0)
    assert v(targets.PROB) == pytest.approx(np.exp(2) / (np.exp(2) + 1))
    assert v(targets.CONTRAST) == pytest.approx(2.0)  # z_0 − z_1
    assert v(targets.MARGIN) == pytest.approx(1.0)  # class 0 wins by (2 − 0) / s = 1
    assert v(targets.MARGIN, goal_kind=0, level=0.5) == pytest.approx(0.1)  # similarity 0.6 above 0.5


def test_target_parse_and_errors():
    assert TargetSpec.parse("contrast:Ankle boot vs Sneaker") == TargetSpec("contrast", "Ankle boot", "Sneaker")
    assert str(TargetSpec.parse("prob:predicted")) == "prob:predicted"
    assert TargetSpec.parse("margin:prob:Bag>=0.5").want.value == 0.5
    for bad in ("probability:x", "contrast:a", "margin:top:3", ""):
        with pytest.raises(InputError, match="target"):
            TargetSpec.parse(bad)
    e = np.eye(3, dtype=np.float32)
    with pytest.raises(InputError, match="class names"):
        targets.build([TargetSpec.parse("prob:x")], e[:1], None, None, None, 1.0)
    with pytest.raises(InputError, match="unknown class 'x'"):
        targets.build([TargetSpec.parse("prob:x")], e[:1], None, e, ["a", "b", "c"], 1.0)
    with pytest.raises(InputError, match="a text for each image"):
        targets.build([TargetSpec.parse("similarity")], e[:1], None, None, None, 1.0)


def test_predicted_and_runner_up_resolve_per_pair():
    e = np.asarray([[1.0, 0.2, 0.5], [0.1, 0.0, 1.0]], np.float32)
    t = targets.build([TargetSpec.parse("contrast:predicted vs runner-up")] * 2, e, None, np.eye(3), list("abc"), 1.0)
    assert t.cls.tolist() == [0, 2] and t.other.tolist() == [2, 0]


# ---------------------------------------------------------------- gradients vs finite differences


def test_image_gradient_methods_match_finite_differences(tiny_model, pixels):
    emb = tiny_model.encode_pixels(pixels)
    t = similarity_target(tiny_model, emb, TEXTS)
    cfg = tiny_model.config
    with jax.enable_x64(True):
        s = f64(scoring_of(tiny_model))
        x = jnp.asarray(pixels, jnp.float64)
        tt = f64(t)
        sal = np.asarray(gradient.image_gradient(cfg, s, x, tt)["pixels"])
        gxi = np.asarray(gradient.image_gradient_x_input(cfg, s, x, tt)["pixels"])
        f = jax.jit(lambda xx: core.image_scores(cfg, s, xx, tt)[0])
        eps, rng = 1e-5, np.random.RandomState(0)
        for _ in range(4):
            i, j = rng.randint(32, size=2)
            d = np.zeros((3, *x.shape), np.float64)  # one perturbation per channel, all pairs at once
            for c in range(3):
                d[c, :, c, i, j] = eps
            fd = np.stack([(np.asarray(f(x + d[c])) - np.asarray(f(x - d[c]))) / (2 * eps) for c in range(3)], 1)
            np.testing.assert_allclose(sal[:, i, j], np.abs(fd).sum(1), rtol=1e-5, atol=1e-9)
            np.testing.assert_allclose(gxi[:, i, j], (fd * pixels[:, :, i, j]).sum(1), rtol=1e-5, atol=1e-9)


def test_text_gradient_x_embedding_matches_a_directional_derivative(tiny_model, pixels):
    ids = tiny_model.tokenize(TEXTS)
    t = similarity_target(tiny_model, tiny_model.encode_ids(ids), TEXTS)
    t = t._replace(anchor=tiny_model.encode_pixels(pixels))
    cfg = tiny_model.config
    with jax.enable_x64(True):
        s, tt = f64(scoring_of(tiny_model)), f64(t)
        out = np.asarray(gradient.text_gradient_x_input(cfg, s, jnp.asarray(ids), tt)["tokens"])
        emb = clip.embed_tokens(s.params, ids)
        f = jax.jit(lambda e: core.text_scores(cfg, s, ids, e, tt)[0])
        eps = 1e-5
        for pos in (1, 2, 3):  # every text has at least one word; text 2 ("trousers") has one token
            d = np.zeros(emb.shape)
            d[:, pos] = np.asarray(emb[:, pos]) * eps  # along the token's own embedding: Σ_d e_d ∂f/∂e_d
            fd = (np.asarray(f(emb + d)) - np.asarray(f(emb - d))) / (2 * eps)
            inside = np.asarray(gradient.word_mask(ids, cfg))[:, pos]
            np.testing.assert_allclose(out[:, pos], np.where(inside, fd, 0.0), rtol=1e-5, atol=1e-10)


def test_taps_give_gradients_of_intermediates(tiny_model, pixels):
    """Grad-CAM reads token gradients through zero taps: they equal finite differences of the tokens,
    and the CAM built from those differences equals the method's output."""
    cfg, v = tiny_model.config, tiny_model.config.vision
    t = similarity_target(tiny_model, tiny_model.encode_pixels(pixels), TEXTS)
    layer = v.num_layers - 1
    with jax.enable_x64(True):
        s, tt, x = f64(scoring_of(tiny_model)), f64(t), jnp.asarray(pixels, jnp.float64)
        out = np.asarray(gradcam.image_gradcam(cfg, s, x, tt, layer=-1)["patches"])
        shape = (v.num_layers, 4, v.num_positions, v.hidden_size)

        def score(delta):  # delta [L, N, T, D] added at the blocks' inputs
            return core.image_scores(cfg, s, x, tt, taps={"tokens": delta})[0]

        _, aux = core.image_scores(cfg, s, x, tt, collect=True)
        acts = np.asarray(aux["tokens"][:, layer, 1:])  # [N, P, D]
        eps, (p, d) = 1e-5, acts.shape[1:]
        basis = np.zeros((p * d, *shape))
        for k in range(p * d):
            basis[k, layer, :, 1 + k // d, k % d] = eps
        fd = (jax.vmap(score)(jnp.asarray(basis)) - jax.vmap(score)(jnp.asarray(-basis))) / (2 * eps)
        grads = np.asarray(fd).T.reshape(4, p, d)
    cam = np.maximum(np.einsum("npd,nd->np", acts, grads.mean(1)), 0).reshape(4, 4, 4)
    np.testing.assert_allclose(out, cam, rtol=1e-5, atol=1e-9)
    assert cam.max() > 0


def test_chefer_relevance_uses_attention_gradients(tiny_model, pixels):
    """The attention gradients behind the relevance equal finite differences of the attention maps, and
    the relevance assembled from them in numpy equals the method's output."""
    cfg, v = tiny_model.config, tiny_model.config.vision
    t = similarity_target(tiny_model, tiny_model.encode_pixels(pixels[:1]), TEXTS[:1])
    with jax.enable_x64(True):
        s, tt, x = f64(scoring_of(tiny_model)), f64(t), jnp.asarray(pixels[:1], jnp.float64)
        out = np.asarray(relevance.image_relevance(cfg, s, x, tt)["patches"])
        shape = (v.num_layers, 1, v.num_heads, v.num_positions, v.num_positions)

        def score(delta):
            return core.image_scores(cfg, s, x, tt, taps={"attention": delta})[0][0]

        grads = np.asarray(jax.grad(score)(jnp.zeros(shape)))[:, 0]  # [L, H, T, T]
        picks = np.random.RandomState(0).choice(grads.size, 48, replace=False)
        basis = np.zeros((48, *shape))
        basis.reshape(48, -1)[np.arange(48), picks] = 1e-6
        fd = (jax.vmap(score)(jnp.asarray(basis)) - jax.vmap(score)(jnp.asarray(-basis))) / 2e-6
        np.testing.assert_allclose(grads.reshape(-1)[picks], np.asarray(fd), rtol=1e-5, atol=1e-9)
        _, aux = core.image_scores(cfg, s, x, tt, collect=True)
        attn = np.asarray(aux["attention"][0])  # [L, H, T, T]
    r = np.eye(v.num_positions)
    for layer in range(v.num_layers):
        r = r + np.maximum(grads[layer] * attn[layer], 0).mean(0) @ r
    np.testing.assert_allclose(out[0], r[0, 1:].reshape(4, 4), rtol=1e-6, atol=1e-12)


# ---------------------------------------------------------------- hand-computed rollout and relevance


def test_rollout_two_layers_by_hand():
    # two heads whose mean is A1 = [[.5, .5], [.2, .8]] and A2 = [[1, 0], [.4, .6]]
    a1 = np.asarray([[[0.6, 0.4], [0.2, 0.8]], [[0.4, 0.6], [0.2, 0.8]]])
    a2 = np.asarray([[[1.0, 0.0], [0.3, 0.7]], [[1.0, 0.0], [0.5, 0.5]]])
    r = np.asarray(rollout.rollout_matrix(jnp.asarray(np.stack([a1, a2]))))
    # Â1 = ½I + ½A1 = [[.75, .25], [.1, .9]], Â2 = [[1, 0], [.2, .8]]
    # Â2 Â1 = [[.75, .25], [.2·.75 + .8·.1, .2·.25 + .8·.9]] = [[.75, .25], [.23, .77]]
    np.testing.assert_allclose(r, [[0.75, 0.25], [0.23, 0.77]], atol=1e-7)
    # max fusion: A1 = [[.6, .6], [.2, .8]] → ½I + ½A1 = [[.8, .3], [.1, .9]], rows renormalised
    # to [[8/11, 3/11], [.1, .9]]; A2 = [[1, 0], [.5, .7]] → [[1, 0], [.25, .85]] → [[1, 0], [.25/1.1, .85/1.1]]
    r = np.asarray(rollout.rollout_matrix(jnp.asarray(np.stack([a1, a2])), head_fusion="max"))
    b1 = np.asarray([[8 / 11, 3 / 11], [0.1, 0.9]])
    b2 = np.asarray([[1, 0], [0.25 / 1.1, 0.85 / 1.1]])
    np.testing.assert_allclose(r, b2 @ b1, atol=1e-7)


def test_relevance_two_layers_by_hand():
    attn = np.asarray([[[[0.5, 0.5], [0.2, 0.8]]], [[[1.0, 0.0], [0.4, 0.6]]]])  # [L=2, H=1, 2, 2]
    grads = np.asarray([[[[2.0, -1.0], [1.0, 1.0]]], [[[1.0, 3.0], [-2.0, 0.5]]]])
    # Ā1 = relu(G⊙A) = [[1, 0], [.2, .8]], Ā2 = [[1, 0], [0, .3]]
    # R1 = I + Ā1 = [[2, 0], [.2, 1.8]]; R2 = R1 + Ā2 R1 = [[4, 0], [.2 + .06, 1.8 + .54]] = [[4, 0], [.26, 2.34]]
    r = np.asarray(relevance.relevance_matrix(jnp.asarray(attn), jnp.asarray(grads)))
    np.testing.assert_allclose(r, [[4.0, 0.0], [0.26, 2.34]], atol=1e-7)
    r = np.asarray(relevance.relevance_matrix(jnp.asarray(attn), jnp.asarray(grads), start_layer=1))
    np.testing.assert_allclose(r, [[2.0, 0.0], [0.0, 1.3]], atol=1e-7)  # I + Ā2


# ---------------------------------------------------------------- integrated gradients


def test_path_points():
    a, w = integrated.path_points(3, "riemann_trapezoid")
    np.testing.assert_allclose(a, [0, 0.5, 1]) and np.testing.assert_allclose(w, [0.25, 0.5, 0.25])
    a, w = integrated.path_points(4, "riemann_middle")
    np.testing.assert_allclose(a, [0.125, 0.375, 0.625, 0.875])
    a, w = integrated.path_points(2, "gausslegendre")  # nodes ½ ∓ ½/√3, weights ½
    np.testing.assert_allclose(a, [0.5 - 0.5 / np.sqrt(3), 0.5 + 0.5 / np.sqrt(3)]) and np.testing.assert_allclose(
        w, [0.5, 0.5]
    )
    for rule in integrated.RULES:
        assert integrated.path_points(7, rule)[1].sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown integration rule"):
        integrated.path_points(3, "simpson")


def test_ig_completeness(tiny_model, pixels):
    """Σ IG = f(x) − f(baseline), closer with more steps; a path chunked differently gives the same IG."""
    rough = jaxplain.attribute(tiny_model, pixels, TEXTS, method="ig", steps=4, rule="riemann_left")
    fine = jaxplain.attribute(tiny_model, pixels, TEXTS, method="ig", steps=64)
    change = fine.score - fine.baseline_score
    assert np.abs(change).min() > 1e-3  # the score really changes along the path
    np.testing.assert_allclose(fine.delta, fine.pixels.sum((1, 2)) - change, atol=1e-6)
    assert np.abs(fine.delta).max() < 1e-4 * np.abs(change).max()
    assert np.abs(fine.delta).max() < np.abs(rough.delta).max() / 10
    chunked = jaxplain.attribute(tiny_model, pixels, TEXTS, method="ig", steps=64, budget=12)
    np.testing.assert_allclose(chunked.pixels, fine.pixels, rtol=1e-4, atol=1e-7)
    # the patch grid is the sum of the pixel map over each patch
    np.testing.assert_allclose(fine.patches, fine.pixels.reshape(4, 4, 8, 4, 8).sum((2, 4)), rtol=1e-5, atol=1e-7)


def test_text_ig_completeness(tiny_model, pixels):
    a = jaxplain.attribute(tiny_model, pixels, TEXTS, method="ig", side="text", steps=64)
    b = integrated.text_ig(
        tiny_model.config,
        scoring_of(tiny_model),
        jnp.asarray(tiny_model.tokenize(TEXTS)),
        similarity_target(tiny_model, tiny_model.encode_texts(TEXTS), TEXTS)._replace(
            anchor=tiny_model.encode_pixels(pixels)
        ),
        steps=64,
    )
    np.testing.assert_allclose(a.tokens.sum(1), np.asarray(b["score"] - b["baseline_score"]), atol=2e-5)
    assert np.abs(a.delta).max() < 2e-5
    assert np.abs(a.score - np.asarray(b["baseline_score"])).min() > 1e-3


# ---------------------------------------------------------------- perturbation methods vs direct loops


def _score_direct(model, x, anchors):
    return model.encode_pixels(x) @ anchors.T


def test_image_occlusion_matches_a_loop(tiny_model, pixels):
    a = jaxplain.attribute(tiny_model, pixels, TEXTS, method="occlusion", budget=8)
    anchors = tiny_model.encode_texts(TEXTS)
    full = np.diag(_score_direct(tiny_model, pixels, anchors))
    expect = np.zeros((4, 4, 4))
    for gy in range(4):
        for gx in range(4):
            x = pixels.copy()
            x[:, :, gy * 8 : gy * 8 + 8, gx * 8 : gx * 8 + 8] = 0.0
            expect[:, gy, gx] = full - np.diag(_score_direct(tiny_model, x, anchors))
    np.testing.assert_allclose(a.patches, expect, atol=2e-6)
    np.testing.assert_allclose(a.pixels, np.kron(expect, np.ones((1, 8, 8))), atol=2e-6)
    # overlapping windows: a pixel's value is the mean over the windows that cover it
    b = jaxplain.attribute(tiny_model, pixels[:1], TEXTS[:1], method="occlusion", window=16, stride=8)
    x = pixels[:1].copy()
    x[:, :, 8:24, 8:24] = 0
    drop = full[0] - float(_score_direct(tiny_model, x, anchors[:1])[0, 0])
    assert b.pixels[0, 15, 15] == pytest.approx(
        np.mean(
            [
                drop,
                *[
                    full[0] - float(_score_direct(tiny_model, _occ(pixels[:1], y, xx), anchors[:1])[0, 0])
                    for y, xx in ((0, 0), (0, 8), (8, 0))
                ],
            ]
        ),
        abs=2e-6,
    )


def _occ(x, y, xx):
    x = x.copy()
    x[:, :, y : y + 16, xx : xx + 16] = 0
    return x


def test_text_occlusion_matches_a_loop(tiny_model, pixels):
    a = jaxplain.attribute(tiny_model, pixels, TEXTS, method="occlusion", side="text")
    ids = tiny_model.tokenize(TEXTS)
    u = tiny_model.encode_pixels(pixels)
    for n in range(len(TEXTS)):
        row = [int(i) for i in ids[n]]
        eos = row.index(tiny_model.tokenizer.eos_id)
        index = a.word_index[n]
        full = float(tiny_model.encode_ids(ids[n : n + 1])[0] @ u[n])
        for w in range(len(a.words[n])):
            kept = [row[p] for p in range(eos + 1) if index[p] != w]
            short = tiny_model.tokenizer.pad(kept)[None]
            drop = full - float(tiny_model.encode_ids(short)[0] @ u[n])
            assert a.word_scores[n][w] == pytest.approx(drop, abs=2e-6)
    assert a.words[1] == ["an", "ankle", "boot", ",", "seen", "from", "the", "side"]


def test_rise_matches_a_loop(tiny_model, pixels):
    a = jaxplain.attribute(tiny_model, pixels[:2], TEXTS[:2], method="rise", masks=40, cells=3, p=0.3, seed=7)
    masks = np.asarray(rise.rise_masks(jax.random.key(7), 40, 3, 32, 0.3))
    assert masks.shape == (40, 32, 32) and masks.min() >= 0 and masks.max() <= 1
    anchors = tiny_model.encode_texts(TEXTS[:2])
    expect = np.zeros((2, 32, 32))
    for m in masks:
        s = np.diag(_score_direct(tiny_model, pixels[:2] * m, anchors))
        expect += s[:, None, None] * m
    expect /= 40 * 0.3
    np.testing.assert_allclose(a.pixels, expect, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(a.patches, expect.reshape(2, 4, 8, 4, 8).mean((2, 4)), rtol=1e-4, atol=1e-6)


def test_rise_masks_are_deterministic_soft_and_keep_about_p():
    m = np.asarray(rise.rise_masks(jax.random.key(0), 500, 4, 28, 0.5))
    np.testing.assert_array_equal(m, np.asarray(rise.rise_masks(jax.random.key(0), 500, 4, 28, 0.5)))
    assert abs(m.mean() - 0.5) < 0.03
    assert ((m > 0.01) & (m < 0.99)).mean() > 0.2  # bilinear edges: not a binary mask


def test_smoothgrad_without_noise_is_its_base(tiny_model, pixels):
    base = jaxplain.attribute(tiny_model, pixels, TEXTS, method="gradient_x_input")
    sg = jaxplain.attribute(
        tiny_model, pixels, TEXTS, method="smoothgrad", base="gradient_x_input", samples=3, sigma=0.0
    )
    np.testing.assert_allclose(sg.pixels, base.pixels, rtol=1e-5, atol=1e-8)
    noisy = jaxplain.attribute(tiny_model, pixels, TEXTS, method="smoothgrad", samples=3, sigma=0.2)
    assert not np.allclose(noisy.pixels, base.pixels)
    tb = jaxplain.attribute(tiny_model, pixels, TEXTS, method="gradient_x_input", side="text")
    ts = jaxplain.attribute(tiny_model, pixels, TEXTS, method="smoothgrad", side="text", samples=2, sigma=0.0)
    np.testing.assert_allclose(ts.tokens, tb.tokens, rtol=1e-5, atol=1e-9)


# ---------------------------------------------------------------- words and the calling convention


def test_words_and_word_scores(tiny_model):
    ids = tiny_model.tokenize(["naïve café, ok"])
    eos = np.asarray(clip.eos_positions(ids, tiny_model.config))
    toks, index, ws = words.token_words(tiny_model.tokenizer, ids, eos)
    assert ws == [["naïve", "café", ",", "ok"]]
    assert toks[0][0] == "<|startoftext|>" and toks[0][-1] == "<|endoftext|>"
    assert index[0, 0] == -1 and index[0, eos[0]] == -1
    scores = np.arange(ids.shape[1], dtype=np.float32)
    expect = [scores[index[0] == w].sum() for w in range(4)]
    np.testing.assert_allclose(words.word_scores(scores, index[0], 4), expect)


def test_attribute_shapes_targets_and_errors(tiny_model, pixels):
    a = jaxplain.attribute(tiny_model, pixels, method="chefer", target="prob:predicted", classes=CLASSES)
    probs = jaxplain.classify(tiny_model, pixels, CLASSES)
    assert a.targets == [f"prob:{CLASSES[i]}" for i in probs.argmax(1)]
    np.testing.assert_allclose(a.score, probs.max(1), rtol=1e-5)
    assert a.patches.shape == (4, 4, 4) and a.pixels.shape == (4, 32, 32)
    c = jaxplain.attribute(
        tiny_model,
        pixels,
        method="gradient",
        target=["logit:cat", "contrast:dog vs cat", "margin:class:boot", "similarity"],
        texts=TEXTS,
        classes=CLASSES,
    )
    assert c.targets == ["logit:cat", "contrast:dog vs cat", "margin:class:boot", "similarity"]
    z = tiny_model.logit_scale * tiny_model.encode_pixels(pixels) @ jaxplain.class_embeddings(tiny_model, CLASSES).T
    sim = np.sum(tiny_model.encode_pixels(pixels) * tiny_model.encode_texts(TEXTS), 1)
    others = np.delete(z[2], 2).max()
    np.testing.assert_allclose(
        c.score, [z[0, 0], z[1, 1] - z[1, 0], (z[2, 2] - others) / tiny_model.logit_scale, sim[3]], rtol=1e-4, atol=1e-6
    )
    with pytest.raises(InputError, match="unknown method 'lime'"):
        jaxplain.attribute(tiny_model, pixels, TEXTS, method="lime")
    with pytest.raises(InputError, match="no text side"):
        jaxplain.attribute(tiny_model, pixels, TEXTS, method="gradcam", side="text")
    with pytest.raises(InputError, match="got 4 inputs to explain but 3 texts"):
        jaxplain.attribute(tiny_model, pixels, TEXTS[:3], method="gradient")
    with pytest.raises(InputError, match="bad options"):
        jaxplain.attribute(tiny_model, pixels, TEXTS, method="gradient", steps=3)
    with pytest.raises(ValueError, match="layer 5 out of range"):
        jaxplain.attribute(tiny_model, pixels, TEXTS, method="gradcam", layer=5)


def test_one_compile_per_bucket(tiny_model, pixels):
    api._compiled.cache_clear()
    jaxplain.attribute(tiny_model, pixels[:3], TEXTS[:3], method="gradient_x_input")
    fn = api._compiled("gradient_x_input", "image", tiny_model.config, ())
    size = fn._cache_size()
    jaxplain.attribute(tiny_model, pixels[:4], TEXTS, method="gradient_x_input")  # 3 and 4 share a bucket
    assert fn._cache_size() == size == 1


def test_baselines(tiny_model, pixels):
    black = api._pixel_baseline(tiny_model, "black", 2)
    pr = tiny_model.processing
    np.testing.assert_allclose(black[0, :, 0, 0], -np.asarray(pr.mean) / np.asarray(pr.std), rtol=1e-6)
    a = jaxplain.attribute(tiny_model, pixels[:2], TEXTS[:2], method="ig", baseline="black", steps=32)
    b = jaxplain.attribute(tiny_model, pixels[:2], TEXTS[:2], method="ig", baseline=black, steps=32)
    np.testing.assert_allclose(a.pixels, b.pixels, rtol=1e-6)
    assert np.all(np.abs(a.delta) < 0.01 * np.abs(a.score - a.baseline_score))
    with pytest.raises(InputError, match="baseline 'grey'"):
        jaxplain.attribute(tiny_model, pixels[:2], TEXTS[:2], method="ig", baseline="grey")


def test_text_methods_all_run_and_zero_outside_words(tiny_model, pixels):
    ids = tiny_model.tokenize(TEXTS)
    inside = np.asarray(gradient.word_mask(ids, tiny_model.config))
    for method in api.methods_for("text"):
        a = jaxplain.attribute(tiny_model, pixels, TEXTS, method=method, side="text")
        assert a.tokens.shape == ids.shape
        assert np.all(a.tokens[~inside] == 0), method
        for n in range(4):
            np.testing.assert_allclose(a.word_scores[n].sum(), a.tokens[n].sum(), rtol=1e-5, atol=1e-7)
    assert occlusion.without_word(
        jnp.asarray([[9, 1, 2, 3, 8, 8]]), jnp.asarray([[-1, 0, 1, 1, -1, -1]]), 1, 8
    ).tolist() == [[9, 1, 8, 8, 8, 8]]

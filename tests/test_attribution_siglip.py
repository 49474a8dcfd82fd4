"""Attribution on a SigLIP model: its targets follow the sigmoid decision (checked by hand in NumPy from the
embeddings), its methods run through SigLIP's towers (gradients against ``jax.grad`` of a hand-written target,
occlusion against hand-made occluded images, IG's completeness, rollout and Grad-CAM rebuilt by hand), its
word methods see exactly the words before the first end id, and chefer on its images is refused by name."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxplain
from jaxplain.attribution import core, rollout
from jaxplain.errors import InputError
from jaxplain.models import siglip
from jaxplain.models.family import SIGLIP
from jaxplain.models.siglip_convert import write_checkpoint
from jaxplain.zeroshot import class_embeddings
from tests.conftest import FIXTURES

TOKENIZER = FIXTURES / "siglip-tokenizer" / "siglip"
IMAGES = sorted((FIXTURES / "images").iterdir())[:4]
CLASSES = ["bag", "shoe", "shirt"]
TEMPLATES = ["a photo of a {}.", "a {}"]
SCALE, BIAS = 10.0, -2.0


def _perturbed(params, key):
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(tree, [x + 0.05 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)])


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A random SigLIP of the fixture's widths (16 patches of 4 pixels, 2 layers per tower, 16 text positions),
    every weight, LayerNorm and bias perturbed, with the test SentencePiece tokenizer; s = 10, b = −2."""
    from transformers import AutoTokenizer

    d = tmp_path_factory.mktemp("siglip") / "tiny-siglip"
    d.mkdir()
    cfg = json.loads((FIXTURES / "siglip" / "config.json").read_text())
    cfg["text_config"]["vocab_size"] = len(AutoTokenizer.from_pretrained(str(TOKENIZER), local_files_only=True))
    config = siglip.SiglipConfig.from_hf_dict(cfg)
    params = _perturbed(siglip.init_params(jax.random.key(3), config), jax.random.key(4))
    params = {**params, "logit_scale": jnp.asarray(np.log(SCALE), jnp.float32), "logit_bias": jnp.asarray(BIAS)}
    write_checkpoint(d, jax.tree.map(np.asarray, params), config)
    for f in TOKENIZER.iterdir():
        shutil.copy(f, d / f.name)
    m = jaxplain.load(d)
    assert m.family is SIGLIP and m.config.vision.num_positions == 16
    return m


@pytest.fixture(scope="module")
def pixels(model):
    return model.preprocess(IMAGES)


@pytest.fixture(scope="module")
def classes(model):
    return np.asarray(class_embeddings(model, CLASSES, TEMPLATES), np.float64)


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def hand_target(kind: str, c: int, o: int, v: np.ndarray):
    """The target as a jax function of the unit image embedding, written from SigLIP's decision."""
    vc, vo = jnp.asarray(v[c], jnp.float32), jnp.asarray(v[o], jnp.float32)
    if kind == "prob":
        return lambda u: jax.nn.sigmoid(SCALE * u @ vc + BIAS)
    return lambda u: SCALE * u @ vc - SCALE * u @ vo  # contrast: the bias cancels


# ---------------------------------------------------------------- targets


def test_targets_follow_the_sigmoid_decision_by_hand(model, pixels, classes):
    """prob is σ(s·u·v_c + b) (not a softmax), logit is s·u·v_c + b, contrast has no bias, predicted and
    runner-up rank by u·v_c, and margin:prob:c>=τ is u·v_c − (logit τ − b)/s."""
    u = np.asarray(model.encode_pixels(pixels), np.float64)
    sims = u @ classes.T
    ranked = np.argsort(-sims, axis=1)
    top, second = sims[np.arange(4), ranked[:, 0]], sims[np.arange(4), ranked[:, 1]]
    tau = 0.3
    level = (np.log(tau / (1 - tau)) - BIAS) / SCALE
    specs = {
        "prob:bag": sigmoid(SCALE * sims[:, 0] + BIAS),
        "logit:shoe": SCALE * sims[:, 1] + BIAS,
        "prob:predicted": sigmoid(SCALE * top + BIAS),
        "contrast:predicted vs runner-up": SCALE * (top - second),
        f"margin:prob:shirt>={tau}": sims[:, 2] - level,
        f"margin:prob:shirt<={tau}": level - sims[:, 2],
    }
    # every target for every image, in one call: pair k is image k % 4 with target k // 4
    a = jaxplain.attribute(
        model,
        np.tile(pixels, (len(specs), 1, 1, 1)),
        method="gradient",
        target=[t for t in specs for _ in range(4)],
        classes=CLASSES,
        templates=TEMPLATES,
    )
    np.testing.assert_allclose(a.score, np.concatenate(list(specs.values())), rtol=1e-5, atol=2e-6)
    assert a.targets[8:12] == [f"prob:{CLASSES[i]}" for i in ranked[:, 0]]
    assert not np.allclose(sigmoid(SCALE * sims + BIAS).sum(1), 1.0, atol=1e-2)  # really not a softmax


# ---------------------------------------------------------------- gradients


def test_gradient_equals_jax_grad_of_the_hand_written_target(model, pixels, classes):
    for kind, spec in (("prob", "prob:shoe"), ("contrast", "contrast:bag vs shirt")):
        c, o = (1, 0) if kind == "prob" else (0, 2)
        f = hand_target(kind, c, o, classes)

        def total(x, f=f):
            return f(siglip.image_forward(model.params, x, model.config)[0]).sum()

        g = np.asarray(jax.jit(jax.grad(total))(jnp.asarray(pixels)))  # [N, 3, H, W]; the images do not interact
        kw = dict(target=spec, classes=CLASSES, templates=TEMPLATES)
        sal = jaxplain.attribute(model, pixels, method="gradient", **kw)
        gxi = jaxplain.attribute(model, pixels, method="gradient_x_input", **kw)
        scale = np.abs(g).sum(1).max()
        np.testing.assert_allclose(sal.pixels, np.abs(g).sum(1), rtol=1e-4, atol=1e-5 * scale)
        np.testing.assert_allclose(gxi.pixels, (g * pixels).sum(1), rtol=1e-4, atol=1e-5 * scale)
        # the patch grid is the sum over each 4×4 patch
        np.testing.assert_allclose(sal.patches, np.abs(g).sum(1).reshape(4, 4, 4, 4, 4).sum((2, 4)), rtol=1e-4)


def test_patch_embedding_entry_point_equals_the_pixel_forward(model, pixels):
    """IG runs its path through the family's patch embeddings: from them SigLIP's tower gives the embedding
    its pixels give."""
    x = jnp.asarray(pixels)
    e = SIGLIP.embed_patches(model.params, x, model.config)
    got, aux = SIGLIP.image_forward(model.params, None, model.config, patch_embeds=e, collect=True)
    want, aux_want = siglip.image_forward(model.params, x, model.config, collect=True)
    np.testing.assert_allclose(got, want, atol=2e-6)
    np.testing.assert_allclose(aux["pool_attention"], aux_want["pool_attention"], atol=2e-6)


@pytest.mark.parametrize("spec", ["prob:bag", "contrast:shoe vs shirt"])
def test_image_ig_is_complete(model, pixels, classes, spec):
    """Σ attributions = f(x) − f(baseline): f computed by hand from the embeddings of the images and of the
    all-zero baseline (grey, SigLIP's pixels lie in [−1, 1]). Measured at 64 Gauss–Legendre steps in float32:
    |delta| ≤ 2.7e-7 (prob, gaps ≥ 0.048) and 5.4e-7 (contrast, gaps ≥ 0.011); asserted within 5e-6."""
    a = jaxplain.attribute(model, pixels, method="ig", target=spec, classes=CLASSES, templates=TEMPLATES, steps=64)
    u = np.asarray(model.encode_pixels(pixels), np.float64)
    ub = np.asarray(model.encode_pixels(np.zeros_like(pixels)), np.float64)

    def f(e):
        s = e @ classes.T
        return sigmoid(SCALE * s[:, 0] + BIAS) if spec.startswith("prob") else SCALE * (s[:, 1] - s[:, 2])

    np.testing.assert_allclose(a.score, f(u), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.baseline_score, f(ub), rtol=1e-5, atol=1e-6)
    gap = f(u) - f(ub)
    assert np.abs(gap).min() > 10 * np.abs(a.delta).max()  # the test is not vacuous
    np.testing.assert_allclose(a.pixels.sum(axis=(1, 2)), gap, atol=5e-6)
    np.testing.assert_allclose(a.patches.sum(axis=(1, 2)), gap, atol=5e-6)


# ---------------------------------------------------------------- perturbations


def test_occlusion_of_one_patch_is_the_hand_computed_drop(model, pixels, classes):
    a = jaxplain.attribute(model, pixels, method="occlusion", target="prob:shirt", classes=CLASSES, templates=TEMPLATES)

    def p_shirt(x):
        return sigmoid(SCALE * np.asarray(model.encode_pixels(x), np.float64) @ classes[2] + BIAS)

    full = p_shirt(pixels)
    for r, c in ((0, 0), (1, 2), (3, 3)):
        occluded = pixels.copy()
        occluded[:, :, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4] = 0.0
        np.testing.assert_allclose(a.patches[:, r, c], full - p_shirt(occluded), atol=2e-6)
    assert np.abs(a.patches).max() > 1e-3


def test_rise_runs_its_masks_through_the_sigmoid_target(model, pixels, classes):
    """RISE's saliency is Σ_m f(x ⊙ M_m) M_m / (masks · p): rebuilt here from the same masks and the targets
    computed by hand."""
    a = jaxplain.attribute(
        model, pixels[:2], method="rise", target="prob:bag", classes=CLASSES, templates=TEMPLATES, masks=16, seed=3
    )
    from jaxplain.attribution.rise import rise_masks

    m = np.asarray(rise_masks(jax.random.key(3), 16, 4, 16, 0.5))
    scores = np.stack(
        [sigmoid(SCALE * np.asarray(model.encode_pixels(pixels[:2] * mk), np.float64) @ classes[0] + BIAS) for mk in m],
        1,
    )
    np.testing.assert_allclose(a.pixels, np.einsum("nm,mhw->nhw", scores, m) / 8, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- token-level methods of the image tower


def test_image_rollout_starts_from_the_pooling_heads_attention(model, pixels):
    _, aux = siglip.image_forward(model.params, jnp.asarray(pixels), model.config, collect=True)
    attn = np.asarray(aux["attention"], np.float64).mean(2)  # [N, L, T, T]
    pool = np.asarray(aux["pool_attention"], np.float64).mean(1)  # [N, T]
    want = []
    for i in range(len(pixels)):
        r = np.eye(16)
        for layer in range(attn.shape[1]):
            al = 0.5 * np.eye(16) + 0.5 * attn[i, layer]
            r = (al / al.sum(1, keepdims=True)) @ r
        want.append(pool[i] @ r)
    a = jaxplain.attribute(model, pixels, ["a bag"], method="rollout")
    np.testing.assert_allclose(a.patches.reshape(len(pixels), 16), np.asarray(want), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(a.patches.sum(axis=(1, 2)), 1.0, rtol=1e-5)  # all the pooled mass is on patches


def test_image_gradcam_reads_every_token_as_a_patch(model, pixels, classes):
    """Grad-CAM of the last block's input: its token gradients taken by hand through siglip's taps."""
    v = model.config.vision
    f = hand_target("prob", 1, 0, classes)
    zero = jnp.zeros((v.num_layers, len(pixels), 16, v.hidden_size))

    def total(tokens):
        return f(
            siglip.image_forward(model.params, jnp.asarray(pixels), model.config, taps={"tokens": tokens})[0]
        ).sum()

    grads = np.asarray(jax.jit(jax.grad(total))(zero))[-1]  # [N, 16, D]
    _, aux = siglip.image_forward(model.params, jnp.asarray(pixels), model.config, collect=True)
    acts = np.asarray(aux["tokens"][:, -2])  # the last block's input
    cam = np.maximum(np.einsum("npd,nd->np", acts, grads.mean(1)), 0).reshape(-1, 4, 4)
    a = jaxplain.attribute(model, pixels, method="gradcam", target="prob:shoe", classes=CLASSES, templates=TEMPLATES)
    np.testing.assert_allclose(a.patches, cam, rtol=1e-4, atol=1e-6 * cam.max())
    assert cam.max() > 0


def test_chefer_on_siglip_images_is_refused_by_name(model, pixels):
    with pytest.raises(InputError) as e:
        jaxplain.attribute(model, pixels, ["a bag"], method="chefer")
    msg = str(e.value)
    assert "'chefer'" in msg and "siglip" in msg and "no class token" in msg and "'rollout'" in msg


# ---------------------------------------------------------------- words


TEXTS = ["a photo of a bag", "A RED Shoe!", "sneakers with laces"]
WORDS = [["a", "photo", "of", "a", "bag"], ["a", "red", "shoe"], ["sneakers", "with", "laces"]]


@pytest.mark.parametrize("method", ["gradient_x_input", "ig", "occlusion", "rollout", "chefer"])
def test_word_attributions_cover_exactly_the_words(model, pixels, method):
    """SigLIP's tokenizer pads with its end id and adds no start token: the words are the pieces before the
    first end id, grouped at SentencePiece's ▁; the end token and the padding score exactly 0."""
    ids = model.tokenize(TEXTS)
    ends = np.argmax(ids == model.tokenizer.eos_id, axis=1)
    options = {"steps": 4} if method == "ig" else {}
    a = jaxplain.attribute(model, pixels[:1], TEXTS, method=method, side="text", **options)
    assert a.words == WORDS
    for i in range(len(TEXTS)):
        inside = np.arange(ids.shape[1]) < ends[i]
        assert (a.word_index[i] >= 0).tolist() == inside.tolist()
        assert np.all(a.tokens[i][~inside] == 0.0)
        assert np.count_nonzero(a.tokens[i][inside]) >= inside.sum() - 1
        assert a.token_strings[i][-1] == "</s>" and len(a.token_strings[i]) == ends[i] + 1
        np.testing.assert_allclose(a.word_scores[i].sum(), a.tokens[i].sum(), rtol=1e-5, atol=1e-7)
    u = model.encode_pixels(pixels[:1])[0].astype(np.float64)
    np.testing.assert_allclose(a.score, np.asarray(model.encode_texts(TEXTS), np.float64) @ u, atol=2e-6)


def test_text_occlusion_and_ig_by_hand(model, pixels):
    """Leaving a word out is its tokens removed and the rest shifted left, padded with the end id: the drop of
    u·v equals the hand-made text's; IG over the word embeddings is complete (measured |delta| ≤ 1.1e-7 at 64
    steps, gaps ≥ 0.018; asserted within 2e-6)."""
    u = model.encode_pixels(pixels[:1])[0].astype(np.float64)
    occ = jaxplain.attribute(model, pixels[:1], TEXTS, method="occlusion", side="text")
    ids = model.tokenize(TEXTS)
    for i, words in enumerate(WORDS):
        full = np.asarray(model.encode_ids(ids[i : i + 1]), np.float64)[0] @ u
        for w in range(len(words)):
            kept = [t for t, k in zip(ids[i], occ.word_index[i]) if k != w]
            row = np.full(ids.shape[1], model.tokenizer.pad_id, np.int32)
            row[: len(kept)] = kept
            drop = full - np.asarray(model.encode_ids(row[None]), np.float64)[0] @ u
            assert occ.word_scores[i][w] == pytest.approx(drop, abs=2e-6)
    ig = jaxplain.attribute(model, pixels[:1], TEXTS, method="ig", side="text", steps=64)
    gap = ig.score - ig.baseline_score
    assert np.abs(gap).min() > 1e-3
    np.testing.assert_allclose(ig.tokens.sum(1), gap, atol=2e-6)


def test_one_compiled_method_serves_every_target_kind(model, pixels, tiny_model):
    """The decision and the bias are arrays of the scoring, not static arguments: SigLIP's targets of every
    kind, in one batch or another, run through one compiled gradient."""
    from jaxplain.attribution import api

    kw = dict(method="gradient", classes=CLASSES, templates=TEMPLATES)
    jaxplain.attribute(model, pixels, target="prob:bag", **kw)
    fn = api._compiled("gradient", "image", model.config, ())
    before = fn._cache_size()
    jaxplain.attribute(
        model, pixels, target=["logit:shoe", "contrast:bag vs shirt", "margin:prob:bag>=0.2", "prob:bag"], **kw
    )
    assert fn._cache_size() == before
    s = core.scoring_for(model)
    assert float(s.sigmoid) == 1.0 and float(s.bias) == pytest.approx(BIAS) and int(s.end_id) == 1
    c = core.scoring_for(tiny_model)
    assert float(c.sigmoid) == 0.0 and float(c.bias) == 0.0


def test_rollout_row_helper_is_the_class_token_row_for_clip():
    """For a tower with a class token the pooled row is row 0 of the matrix, without the class token."""
    from jaxplain.models.family import CLIP

    r = jnp.asarray(np.random.RandomState(0).rand(2, 5, 5))
    aux = {"attention": jnp.zeros((2, 1, 1, 5, 5))}
    np.testing.assert_array_equal(rollout.pooled_row(CLIP, aux, r), np.asarray(r)[:, 0, 1:])

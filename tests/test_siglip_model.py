"""A SigLIP checkpoint loaded as a Model: its towers, tokenizer and preprocessing, its sigmoid decision in
zero-shot classification (``classify`` and the command) and in counterfactuals, and a clear refusal where a
use is still built on CLIP's softmax (the demo; attribution follows the sigmoid: tests/test_attribution_siglip.py)."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxplain
from jaxplain.cli import main
from jaxplain.models import siglip
from jaxplain.models.family import SIGLIP
from jaxplain.models.siglip_convert import write_checkpoint
from jaxplain.zeroshot import class_embeddings, classify, prompts
from tests.conftest import FIXTURES

TOKENIZER = FIXTURES / "siglip-tokenizer" / "siglip"
IMAGES = sorted((FIXTURES / "images").iterdir())


def _perturbed(params, key):
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    out = [x + 0.05 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
    return jax.tree.unflatten(tree, out)


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory):
    """A random, perturbed SigLIP checkpoint of the fixture's widths whose vocabulary is the test tokenizer's."""
    d = tmp_path_factory.mktemp("siglip") / "tiny-siglip"
    d.mkdir()
    cfg = json.loads((FIXTURES / "siglip" / "config.json").read_text())
    from transformers import AutoTokenizer

    cfg["text_config"]["vocab_size"] = len(AutoTokenizer.from_pretrained(str(TOKENIZER), local_files_only=True))
    config = siglip.SiglipConfig.from_hf_dict(cfg)
    params = _perturbed(siglip.init_params(jax.random.key(3), config), jax.random.key(4))
    params = {**params, "logit_scale": jnp.asarray(np.log(10.0), jnp.float32), "logit_bias": jnp.asarray(-2.0)}
    write_checkpoint(d, jax.tree.map(np.asarray, params), config)
    for f in TOKENIZER.iterdir():
        shutil.copy(f, d / f.name)
    return d


def test_load_reads_a_siglip_checkpoint_with_its_own_inputs(siglip_dir):
    model = jaxplain.load(siglip_dir)
    assert model.family is SIGLIP and model.decision == "sigmoid"
    assert model.logit_scale == pytest.approx(10.0) and model.logit_bias == pytest.approx(-2.0)
    assert model.embed_dim == 32 and "siglip" in repr(model)
    assert jaxplain.load(siglip_dir).fingerprint == model.fingerprint
    # the towers on the model's own pixels and ids, every text at the full 16 positions (no cut after the end)
    pixels = model.preprocess(IMAGES)
    assert pixels.shape == (len(IMAGES), 3, 16, 16)
    want = siglip.encode_image(model.params, jnp.asarray(pixels), model.config)
    np.testing.assert_allclose(model.encode_images(IMAGES), want, atol=1e-6)
    texts = ["a photo of a bag", "A RED Shoe!", "shirt"]
    ids = model.tokenize(texts)
    assert ids.shape == (3, 16)
    want = siglip.encode_text(model.params, jnp.asarray(ids), model.config)
    np.testing.assert_allclose(model.encode_texts(texts), want, atol=1e-6)
    np.testing.assert_allclose(model.encode_ids(ids, batch_size=2), want, atol=1e-6)


def test_zero_shot_probabilities_are_its_sigmoid_per_class(siglip_dir):
    model = jaxplain.load(siglip_dir)
    names = ["bag", "shoe", "shirt"]
    probs = classify(model, IMAGES, names, ["a photo of a {}.", "a {}"])
    u = np.asarray(model.encode_images(IMAGES), np.float64)
    texts = np.asarray(model.encode_texts(prompts(names, ["a photo of a {}.", "a {}"])), np.float64)
    v = texts.reshape(3, 2, -1).mean(1)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    want = 1 / (1 + np.exp(-(10.0 * u @ v.T - 2.0)))  # by hand: σ(s·u·v_c + b), each class on its own
    np.testing.assert_allclose(probs, want, atol=1e-5)
    assert not np.allclose(probs.sum(1), 1.0, atol=1e-3)  # not a softmax
    np.testing.assert_allclose(class_embeddings(model, names, ["a photo of a {}.", "a {}"]), v, atol=1e-6)


def test_classify_command_reports_sigmoid_confidences(siglip_dir, tmp_path):
    out = tmp_path / "p.jsonl"
    files = [str(p) for p in IMAGES[:3]]
    argv = ["classify", "--model", str(siglip_dir), "--images", *files, "--classes", "bag,shoe", "--out", str(out)]
    assert main(argv) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    model = jaxplain.load(siglip_dir)
    probs = classify(model, IMAGES[:3], ["bag", "shoe"])
    for r, p in zip(rows, probs):
        assert r["prediction"] == ["bag", "shoe"][int(p.argmax())]
        assert r["confidence"] == pytest.approx(float(p.max()), abs=1e-6)
        assert [c for c, _ in r["top"]] == [["bag", "shoe"][i] for i in np.argsort(-p)]


def test_counterfactuals_follow_the_sigmoid_decision(siglip_dir):
    """Probability outcomes are per-class thresholds of σ(s·u·v_c + b); class outcomes are about the argmax.
    Every returned item is re-checked here by hand from its own embedding, and the index finds what the
    oracle (every bank item verified) finds."""
    from jaxplain.counterfactual.bank import build_bank
    from jaxplain.data import fashion_mnist

    model = jaxplain.load(siglip_dir)
    images, _ = fashion_mnist.load_shipped_test()
    bank, _ = build_bank(model, images=list(images[:300]), backend="exact", progress=False)
    names = ["bag", "shoe", "shirt"]
    v = class_embeddings(model, names)
    p_bank = 1 / (1 + np.exp(-(10.0 * np.asarray(bank.embeddings, np.float64) @ v.T - 2.0)))
    hi, lo = np.quantile(p_bank[:, 0], 0.9), np.quantile(p_bank[:, 1], 0.1)
    queries = list(images[1000:1012])
    wants = [f"prob:bag>={hi:.4f}", f"prob:shoe<={lo:.4f}", "other-class", "class:shirt", "runner-up"] * 2
    wants = (wants + wants)[: len(queries)]
    res = {
        search: jaxplain.counterfactuals(model, queries, want=wants, bank=bank, classes=names, search=search, top=3)
        for search in ("index", "exhaustive")
    }
    p0 = classify(model, queries, names)
    checked = 0
    for i, (w, pair) in enumerate(zip(wants, res["index"].pairs)):
        for cf in pair.counterfactuals:
            p = p_bank[cf.bank_row]
            if w.startswith("prob:bag"):
                assert p[0] >= hi and cf.score == pytest.approx(p[0], abs=1e-5)
            elif w.startswith("prob:shoe"):
                assert p[1] <= lo and cf.score == pytest.approx(p[1], abs=1e-5)
            elif w == "other-class":
                assert p.argmax() != p0[i].argmax()
            elif w == "class:shirt":
                assert p.argmax() == 2 and cf.score == pytest.approx(p[2], abs=1e-5)
            assert cf.confidence == pytest.approx(p.max(), abs=1e-5) and cf.predicted == names[int(p.argmax())]
            checked += 1
        if w.startswith("prob:bag"):
            assert pair.original_score == pytest.approx(p0[i, 0], abs=1e-5)
    assert checked > 10
    found = [[p.found for p in res[s].pairs] for s in ("index", "exhaustive")]
    assert found[0] == found[1] and sum(found[1]) > len(queries) // 2
    first = [[c.bank_row for c in p.counterfactuals[:1]] for p in res["exhaustive"].pairs]
    assert first == [[c.bank_row for c in p.counterfactuals[:1]] for p in res["index"].pairs]


@pytest.mark.reference
def test_the_loaded_model_equals_transformers_siglip(siglip_dir):
    torch = pytest.importorskip("torch")
    from transformers import AutoTokenizer, SiglipImageProcessor, SiglipModel

    model = jaxplain.load(siglip_dir)
    ref = SiglipModel.from_pretrained(str(siglip_dir)).eval()
    texts = ["a photo of a bag", "A RED Shoe!", "shirt"]
    ids = AutoTokenizer.from_pretrained(str(siglip_dir))(texts, padding="max_length", max_length=16)["input_ids"]
    pixels = SiglipImageProcessor(size={"height": 16, "width": 16})(
        [jaxplain.data.load_rgb(p) for p in IMAGES], return_tensors="np"
    )["pixel_values"]
    with torch.no_grad():
        out = ref(input_ids=torch.tensor(ids), pixel_values=torch.tensor(pixels))
    np.testing.assert_array_equal(model.tokenize(texts), np.asarray(ids))
    u, v = out.image_embeds.numpy(), out.text_embeds.numpy()
    np.testing.assert_allclose(model.encode_images(IMAGES), u, atol=1e-5)
    np.testing.assert_allclose(model.encode_texts(texts), v, atol=1e-5)
    np.testing.assert_allclose(
        classify(model, IMAGES, texts, ["{}"]), torch.sigmoid(out.logits_per_image).numpy(), atol=1e-5
    )

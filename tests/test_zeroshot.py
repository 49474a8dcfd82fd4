"""Zero-shot classification: prompt ensembling and probabilities checked by hand."""

import numpy as np
import pytest

import jaxplain
from jaxplain.errors import InputError
from jaxplain.zeroshot import ensemble, prompts, zero_shot_probs


def test_ensemble_by_hand():
    # two classes, two templates, E = 2
    emb = np.array([[[1.0, 0.0], [0.0, 1.0]], [[0.6, 0.8], [0.6, -0.8]]])
    out = np.asarray(ensemble(emb))
    s = 1 / np.sqrt(2)
    np.testing.assert_allclose(out, [[s, s], [1.0, 0.0]], atol=1e-7)


def test_probabilities_by_hand():
    u = np.array([[1.0, 0.0]])
    cls = np.array([[1.0, 0.0], [0.0, 1.0]])
    p = np.asarray(zero_shot_probs(u, cls, 2.0))
    # softmax([2, 0]) = [e²/(e²+1), 1/(e²+1)]
    e2 = np.exp(2.0)
    np.testing.assert_allclose(p, [[e2 / (e2 + 1), 1 / (e2 + 1)]], rtol=1e-6)


def test_prompts_class_major():
    assert prompts(["cat", "dog"], ["a {}.", "the {}!"]) == ["a cat.", "the cat!", "a dog.", "the dog!"]
    with pytest.raises(InputError, match="template 'a photo' has no"):
        prompts(["cat"], ["a photo"])
    with pytest.raises(InputError, match="class name 1 \\(''\\) is empty"):
        prompts(["cat", ""], ["{}"])
    with pytest.raises(InputError, match="no class names"):
        prompts([], ["{}"])


def test_classify_equals_the_composition(tiny_model, reference):
    names, templates = ["coat", "sneaker", "bag"], ["a photo of a {}.", "a {} on white."]
    p = jaxplain.classify(tiny_model, reference["image_paths"], names, templates)
    u = tiny_model.encode_images(reference["image_paths"])
    v = tiny_model.encode_texts([t.format(c) for c in names for t in templates]).reshape(3, 2, -1)
    c = v.mean(1)
    c /= np.linalg.norm(c, axis=-1, keepdims=True)
    logits = tiny_model.logit_scale * u @ c.T
    want = np.exp(logits - logits.max(1, keepdims=True))
    want /= want.sum(1, keepdims=True)
    np.testing.assert_allclose(p, want, atol=1e-6)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-6)


def test_class_embeddings_are_kept_on_the_model(tiny_model):
    import jax

    from jaxplain.zeroshot import class_embeddings

    names, templates = ["shirt", "boot"], ["a photo of a {}.", "a {}."]
    model = tiny_model.with_params(jax.tree.map(lambda a: a, tiny_model.params), same_model=True)  # own cache
    v = model.encode_texts([t.format(c) for c in names for t in templates]).reshape(2, 2, -1).mean(1)
    want = v / np.linalg.norm(v, axis=-1, keepdims=True)
    calls = []
    encode = model.encode_texts
    object.__setattr__(model, "encode_texts", lambda texts: calls.append(list(texts)) or encode(texts))
    first = class_embeddings(model, names, templates)
    np.testing.assert_allclose(first, want, atol=1e-6)
    first[:] = 0  # the caller's copy: the kept one is unchanged
    np.testing.assert_array_equal(class_embeddings(model, names, templates), class_embeddings(model, names, templates))
    np.testing.assert_allclose(class_embeddings(model, names, templates), want, atol=1e-6)
    assert len(calls) == 1
    other = class_embeddings(model, names, templates[:1])  # other templates: encoded afresh
    assert len(calls) == 2 and not np.allclose(other, want)
    with pytest.raises(InputError, match="empty"):
        class_embeddings(model, ["shirt", " "], templates)

"""The batched pipeline end to end on real images: every counterfactual re-checked independently.

The tiny random-weight model of the fixtures scores 400 real Fashion-MNIST test images; its
decisions are arbitrary but deterministic, which is all a check of the mechanics needs. The shipped
model's quality is measured in benchmarks/ and tests/test_engine_shipped.py.
"""

import numpy as np
import pytest

import jaxplain
from jaxplain.counterfactual.bank import build_bank
from jaxplain.counterfactual.engine import counterfactuals
from jaxplain.counterfactual.solver import SolverConfig
from jaxplain.data import fashion_mnist
from jaxplain.errors import InputError, JaxplainError

CLASSES = ["shirt", "trousers", "bag", "sandal"]
TEMPLATES = ["a photo of a {}.", "a {}."]


@pytest.fixture(scope="module")
def images():
    x, _ = fashion_mnist.load_shipped_test()
    return list(x[:400])


@pytest.fixture(scope="module")
def image_bank(tiny_model, images):
    bank, errors = build_bank(tiny_model, images=images[40:], backend="exact", progress=False)
    assert errors == []
    return bank


def probs_of(model, items):
    return jaxplain.classify(model, items, CLASSES, TEMPLATES)


@pytest.mark.parametrize("want", ["other-class", "runner-up", "class:", "prob:"])
def test_class_outcomes_are_real_and_valid(tiny_model, images, image_bank, want):
    queries = images[:40]
    # targets this random model can reach: its second most common class in the bank, and a
    # probability of it that a fifth of the bank exceeds
    bank_p = probs_of(tiny_model, images[40:])
    second = CLASSES[np.argsort(-np.bincount(bank_p.argmax(1), minlength=4))[1]]
    tau = round(float(np.quantile(bank_p[:, CLASSES.index(second)], 0.8)), 4)
    want = {"class:": f"class:{second}", "prob:": f"prob:{second}>={tau:.4f}"}.get(want, want)
    # This random model's valid items lie far from every target (its embeddings are all alike), so
    # the second escalation round (32 · 8² neighbours) takes in the whole bank: found = the oracle's.
    res = counterfactuals(
        tiny_model,
        queries,
        want=want,
        bank=image_bank,
        classes=CLASSES,
        templates=TEMPLATES,
        k=32,
        top=3,
        escalate=2,
        search="index",
    )
    oracle = counterfactuals(
        tiny_model,
        queries,
        want=want,
        bank=image_bank,
        classes=CLASSES,
        templates=TEMPLATES,
        top=3,
        search="exhaustive",
    )
    p0 = probs_of(tiny_model, queries)
    checked = 0
    for i, r in enumerate(res.pairs):
        assert r.original_predicted == CLASSES[p0[i].argmax()]
        for cf in r.counterfactuals:
            # independent re-check: re-encode the bank item from its image and score it
            p = probs_of(tiny_model, [image_bank_image(images, cf.bank_row)])[0]
            if want == "other-class":
                assert p.argmax() != p0[i].argmax()
            elif want == "runner-up":
                assert p.argmax() == np.argsort(-p0[i])[1]
            elif want.startswith("class:"):
                assert CLASSES[p.argmax()] == second
            else:
                assert p[CLASSES.index(second)] > tau
            assert cf.predicted == CLASSES[p.argmax()]
            checked += 1
        # the pipeline never beats the oracle, which sees every item
        o = oracle.pairs[i]
        if r.found:
            assert o.found and o.counterfactuals[0].distance <= r.counterfactuals[0].distance + 1e-5
    assert checked > 0
    assert [r.status for r in res.pairs] == [o.status for o in oracle.pairs]


def image_bank_image(images, row):
    return images[40 + row]


def test_auto_verifies_every_item_for_the_pairs_retrieval_left_unanswered(tiny_model, images, image_bank, monkeypatch):
    from jaxplain.counterfactual import engine

    queries = images[:40]
    texts = ["a photo of a shirt.", "a bag", "trousers on a chair", "a sandal"] * 10
    v = tiny_model.encode_texts(texts)
    # lower each similarity below the level of the 5% of bank images least like the text: the valid
    # items are few and lie off the path from the original to its targets
    levels = [float(np.quantile(image_bank.embeddings @ v[i], 0.05)) for i in range(40)]
    kw = dict(want=[f"similarity<={lv:.4f}" for lv in levels], bank=image_bank, k=4, top=2, escalate=0)
    oracle = counterfactuals(tiny_model, queries, texts, search="exhaustive", **kw)
    # the default (deep) similarity targets reach every pair the oracle answers
    deep = counterfactuals(tiny_model, queries, texts, search="index", **kw)
    assert [r.found for r in deep.pairs] == [o.found for o in oracle.pairs]
    # with shallow targets retrieval misses some, which "auto" then verifies against every item
    kw["solver"] = SolverConfig(similarity_depths=SolverConfig().depths)
    index = counterfactuals(tiny_model, queries, texts, search="index", **kw)
    missed = [i for i, r in enumerate(index.pairs) if r.status == "not_found"]
    assert index.exhaustive_pairs == 0
    assert any(oracle.pairs[i].found for i in missed)  # some have an answer that retrieval missed
    monkeypatch.setattr(engine.jax, "default_backend", lambda: "cpu")  # the CPU's budgets, on any machine
    monkeypatch.setattr(engine, "EXHAUSTIVE_BUDGET", 0)  # "auto" takes the index for these 40 pairs
    auto = counterfactuals(tiny_model, queries, texts, search="auto", **kw)
    assert auto.search == "index" and auto.exhaustive_pairs == len(missed)
    for i, (a, r, o) in enumerate(zip(auto.pairs, index.pairs, oracle.pairs)):
        # retrieval's answers stay; the pairs it missed get the oracle's
        want = o if i in missed else r
        assert a.status == want.status
        assert [c.bank_row for c in a.counterfactuals] == [c.bank_row for c in want.counterfactuals]
        np.testing.assert_allclose(
            [c.distance for c in a.counterfactuals], [c.distance for c in want.counterfactuals], atol=1e-6
        )
    monkeypatch.setattr(engine, "RESCUE_BUDGET", len(missed) * len(image_bank.embeddings) - 1)  # over budget
    auto = counterfactuals(tiny_model, queries, texts, search="auto", **kw)
    assert auto.exhaustive_pairs == 0 and auto.pairs == index.pairs


@pytest.mark.parametrize("search", ["index", "exhaustive"])
def test_similarity_outcomes_and_nothing_padded(tiny_model, images, image_bank, search):
    texts = ["a photo of a bag"] * 10
    u = tiny_model.encode_images(images[:10])
    v = tiny_model.encode_texts(texts[:1])[0]
    sims = image_bank.embeddings @ v
    level = float(np.quantile(sims, 0.9))  # 10% of the bank passes
    res = counterfactuals(
        tiny_model, images[:10], texts, want=f"similarity>={level}", bank=image_bank, top=5, search=search
    )
    for i, r in enumerate(res.pairs):
        assert r.original_score == pytest.approx(float(u[i] @ v), abs=1e-5)
        if r.status == "already":
            assert u[i] @ v > level and r.counterfactuals == ()
        for cf in r.counterfactuals:
            e = tiny_model.encode_images([image_bank_image(images, cf.bank_row)])[0]
            assert e @ v > level and cf.score == pytest.approx(float(e @ v), abs=1e-5)
            assert cf.distance == pytest.approx(float(np.linalg.norm(e - u[i])), abs=1e-4)
    # unreachable: no bank item is that similar — reported as not found, never padded
    res = counterfactuals(tiny_model, images[:3], texts[:3], want="similarity>=0.9999", bank=image_bank, search=search)
    assert [r.status for r in res.pairs] == ["not_found"] * 3
    assert all(r.counterfactuals == () for r in res.pairs)


@pytest.mark.parametrize("search", ["index", "exhaustive"])
def test_retrieval_enter_top_k(tiny_model, images, image_bank, search):
    texts = ["a photo of a sandal"] * 8
    res = counterfactuals(tiny_model, images[:8], texts, want="top:5", bank=image_bank, top=3, search=search)
    v = tiny_model.encode_texts(texts[:1])[0]
    bank_scores = image_bank.embeddings @ v
    for r in res.pairs:
        for cf in r.counterfactuals:
            rank = 1 + int(np.sum(bank_scores > bank_scores[cf.bank_row]))
            assert rank <= 5


@pytest.mark.parametrize("search", ["index", "exhaustive"])
def test_text_side(tiny_model, images, search):
    captions = [f"a {adj} {c}" for adj in ("dark", "light", "striped", "plain", "new") for c in CLASSES] * 2
    captions = list(dict.fromkeys(captions))
    bank, _ = build_bank(tiny_model, texts=captions, backend="exact", progress=False)
    u = tiny_model.encode_images(images[:6])
    t = ["a photo of a shirt"] * 6
    v0 = tiny_model.encode_texts(t[:1])[0]
    level = float(np.median(tiny_model.encode_texts(captions) @ u[0]))
    res = counterfactuals(
        tiny_model, images[:6], t, want=f"similarity<={level}", bank=bank, side="text", top=3, search=search
    )
    for i, r in enumerate(res.pairs):
        for cf in r.counterfactuals:
            e = tiny_model.encode_texts([cf.item])[0]
            assert e @ u[i] < level and cf.item in captions
            assert cf.distance == pytest.approx(float(np.linalg.norm(e - v0)), abs=1e-4)
    assert res.found_rate > 0


def test_bad_calls(tiny_model, images, image_bank, tmp_path):
    with pytest.raises(InputError, match=r"an image bank cannot answer side=.text."):
        counterfactuals(tiny_model, images[:2], ["a", "b"], want="similarity>=0.1", bank=image_bank, side="text")
    with pytest.raises(InputError, match="need class names"):
        counterfactuals(tiny_model, images[:2], want="other-class", bank=image_bank)
    with pytest.raises(InputError, match="not understood"):
        counterfactuals(tiny_model, images[:2], want="be different", bank=image_bank, classes=CLASSES)
    with pytest.raises(InputError, match="3 given for 2 pairs"):
        counterfactuals(tiny_model, images[:2], want=["other-class"] * 3, bank=image_bank, classes=CLASSES)
    params = dict(tiny_model.params, logit_scale=tiny_model.params["logit_scale"] + 1.0)
    other = tiny_model.with_params(params)
    assert other.fingerprint != tiny_model.fingerprint
    with pytest.raises(JaxplainError, match="a bank only serves the model that made it"):
        counterfactuals(other, images[:2], want="other-class", bank=image_bank, classes=CLASSES)


def test_auto_budgets_follow_the_backend(tiny_model, images, image_bank, monkeypatch):
    """On an accelerator, verifying every item costs about what retrieval does (measured on an H100): "auto"
    takes the oracle for problems far bigger than on a CPU."""
    from jaxplain.counterfactual import engine

    assert engine.search_budgets("cpu") == (engine.EXHAUSTIVE_BUDGET, engine.RESCUE_BUDGET)
    assert engine.search_budgets("gpu") == engine.search_budgets("tpu") == (engine.ACCELERATOR_BUDGET,) * 2
    queries = images[:8]
    monkeypatch.setattr(engine.jax, "default_backend", lambda: "cpu")
    monkeypatch.setattr(engine, "EXHAUSTIVE_BUDGET", 8 * len(image_bank.embeddings) - 1)  # 8 pairs: over it
    kw = dict(want="other-class", bank=image_bank, classes=CLASSES, templates=TEMPLATES, search="auto")
    assert counterfactuals(tiny_model, queries, **kw).search == "index"
    monkeypatch.setattr(engine.jax, "default_backend", lambda: "gpu")
    on_gpu = counterfactuals(tiny_model, queries, **kw)
    oracle = counterfactuals(tiny_model, queries, **{**kw, "search": "exhaustive"})
    assert on_gpu.search == "exhaustive" and on_gpu.pairs == oracle.pairs
    monkeypatch.setattr(engine, "ACCELERATOR_BUDGET", 8 * len(image_bank.embeddings) - 1)
    assert counterfactuals(tiny_model, queries, **kw).search == "index"

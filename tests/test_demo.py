"""``jaxplain demo`` end to end on the shipped model: every counterfactual in the report re-verified."""

import json
import re

import numpy as np
import pytest

import jaxplain
from jaxplain.cli import main
from jaxplain.data import captions, fashion_mnist

CLASSES = list(fashion_mnist.CLASS_NAMES)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--out", str(out), "--n", "3", "--seed", "1"]) == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return records, (out / "report.html").read_text()


def test_every_counterfactual_is_reverified(demo):
    records, html = demo
    model = jaxplain.load("fashion-clip")
    images, labels = fashion_mnist.load_shipped_test()
    bank_texts = set(captions.read_bank())
    assert len(records) == 3
    for r in records:
        p0 = jaxplain.classify(model, [images[r["image"]]], CLASSES)[0]
        assert r["predicted"] == CLASSES[p0.argmax()] and r["confidence"] == pytest.approx(p0.max(), abs=1e-5)
        assert r["label"] == CLASSES[labels[r["image"]]]
        for key in ("other_class", "runner_up"):
            cfs = r[key]["counterfactuals"]
            assert cfs, key
            p = jaxplain.classify(model, [images[c["bank_row"]] for c in cfs], CLASSES)
            for c, pc in zip(cfs, p):
                assert c["predicted"] == CLASSES[pc.argmax()] and c["confidence"] == pytest.approx(pc.max(), abs=1e-5)
                if key == "other_class":
                    assert pc.argmax() != p0.argmax()
                else:
                    assert CLASSES[pc.argmax()] == r["runner_up_name"] == CLASSES[np.argsort(-p0)[1]]
                # shown in the report, with the scores that prove it
                assert f'data-bank-id="{c["bank_id"]}"' in html
                assert f"{c['predicted']} {c['confidence']:.1%}" in html
        u = model.encode_images([images[r["image"]]])[0]
        for key, sign in (("lower", -1), ("raise", 1)):
            level = r[f"{key}_level"]
            for c in r[key]["counterfactuals"]:
                assert c["item"] in bank_texts
                s = float(model.encode_texts([c["item"]])[0] @ u)
                assert sign * (s - level) > 0 and c["score"] == pytest.approx(s, abs=1e-5)
                assert html.count(c["item"].replace("&", "&amp;")) >= 1


def test_attributions_are_recomputed_and_shown(demo):
    """The recorded pixel and word attributions are those jaxplain.attribute gives, and the report shows them."""
    records, html = demo
    model = jaxplain.load("fashion-clip")
    images, _ = fashion_mnist.load_shipped_test()
    sample = [images[r["image"]] for r in records]
    ig = jaxplain.attribute(model, sample, method="ig", steps=64, target="prob:predicted", classes=CLASSES)
    words = jaxplain.attribute(
        model, sample, [r["text"] for r in records], side="text", method="ig", steps=64, target="similarity"
    )
    for j, r in enumerate(records):
        a = r["attribution"]
        assert a["predicted"]["target"] == f"prob:{r['predicted']}"
        assert a["contrast"]["target"] == f"contrast:{r['predicted']} vs {r['runner_up_name']}"
        np.testing.assert_allclose(a["predicted"]["pixels"], ig.pixels[j], atol=2e-6)
        # IG's completeness: the pixels add up to the score's change from the mean-colour image
        for key in ("predicted", "contrast"):
            m = a[key]
            assert abs(m["delta"]) < 0.01 * abs(m["score"] - m["baseline_score"])
            assert np.sum(m["pixels"]) == pytest.approx(m["score"] - m["baseline_score"] + m["delta"], abs=1e-4)
        assert [w for w, _ in a["words"]] == words.words[j]
        np.testing.assert_allclose([x for _, x in a["words"]], words.word_scores[j], atol=2e-6)
        assert f"{r['predicted']} rather than {r['runner_up_name']}" in html
    assert html.count('<span class="jx-words">') == len(records)
    assert html.count('class="heat"') == 2 * len(records)


def test_report_is_self_contained(demo):
    _, html = demo
    assert html.startswith("<!doctype html>")
    assert not re.search(r'(src|href)="(?!data:)', html)  # every image inlined, nothing fetched
    assert html.count("data:image/png;base64,") >= 3 * (1 + 2 + 3 + 3)
    assert "other class found" in html and "fashion-clip" in html


def test_demo_with_own_images_and_a_saved_bank(tmp_path):
    from PIL import Image

    images, _ = fashion_mnist.load_shipped_test()
    folder = tmp_path / "mine"
    folder.mkdir()
    for i in range(40):
        Image.fromarray(images[i]).save(folder / f"{i:02d}.png")
    bank_dir = tmp_path / "bank"
    assert main(["bank", "build", "--model", "fashion-clip", "--images", str(folder), "--out", str(bank_dir)]) == 0
    (tmp_path / "caps.txt").write_text("a photo of a shoe\na photo of a bag\na photo of a dress\n")
    out = tmp_path / "demo"
    classes = ",".join(CLASSES)
    args = [
        "demo",
        "--out",
        str(out),
        "--images",
        str(folder),
        "--classes",
        classes,
        "--texts",
        str(tmp_path / "caps.txt"),
    ]
    assert main([*args, "--bank", str(bank_dir), "--n", "2"]) == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    html = (out / "report.html").read_text()
    assert len(records) == 2 and all(r["label"] is None for r in records)
    for r in records:
        for c in r["other_class"]["counterfactuals"]:
            assert c["item"].startswith(str(folder)) and c["predicted"] != r["predicted"]
            assert f'data-bank-id="{c["bank_id"]}"' in html


def test_demo_errors(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--images", str(tmp_path)]) == 2
    assert "name the classes with --classes" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["demo", "--out", str(tmp_path), "--n", "0"])
    assert e.value.code == 2
    assert "argument --n: must be at least 1, got 0" in capsys.readouterr().err


def test_demo_on_the_shipped_siglip(tmp_path):
    """``demo --model fashion-siglip``: the sigmoid decision, re-checked by hand, and a report that says so."""
    out = tmp_path / "demo"
    assert main(["demo", "--model", "fashion-siglip", "--out", str(out), "--n", "2", "--seed", "1"]) == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    html = (out / "report.html").read_text()
    model = jaxplain.load("fashion-siglip")
    images, _ = fashion_mnist.load_shipped_test()
    cls = jaxplain.class_embeddings(model, CLASSES)
    for r in records:
        u = model.encode_images([images[r["image"]]])[0]
        p = 1 / (1 + np.exp(-(model.logit_scale * (cls.astype(np.float64) @ u) + model.logit_bias)))  # by hand
        assert r["predicted"] == CLASSES[p.argmax()] and r["confidence"] == pytest.approx(p.max(), abs=1e-5)
        assert f"with {r['confidence']:.1%} (sigmoid)" in html
        for c in r["other_class"]["counterfactuals"]:
            pc = 1 / (
                1
                + np.exp(
                    -(model.logit_scale * (cls @ model.encode_images([images[c["bank_row"]]])[0]) + model.logit_bias)
                )
            )
            assert pc.argmax() != p.argmax() and c["confidence"] == pytest.approx(pc.max(), abs=1e-5)
        a = r["attribution"]["predicted"]
        assert a["score"] == pytest.approx(p.max(), abs=1e-4)  # IG explains the sigmoid probability
    assert "sigmoid of each class on its own" in html and "need not sum to 100%" in html

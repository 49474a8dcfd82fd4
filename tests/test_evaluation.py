"""Running the model for the explanation metrics: curves against direct loops, the table, the command."""

import csv
import io
import json
import shutil

import numpy as np
import pytest

import jaxplain
from jaxplain import metrics
from jaxplain.cli import main
from jaxplain.commands.evaluate import parse_options
from jaxplain.errors import InputError
from jaxplain.evaluation import Protocol, Table, _pair_scoring, evaluate, faithfulness_curves
from jaxplain.models import clip
from tests.conftest import FIXTURES, TINY

TEXTS = ["a photo of a cat", "an ankle boot, seen from the side", "trousers"]


@pytest.fixture(scope="module")
def pixels(reference):
    return np.asarray(reference["pixels"][:3], np.float32)


def test_image_deletion_and_insertion_curves_match_a_loop(tiny_model, pixels):
    a = jaxplain.attribute(tiny_model, pixels, TEXTS, method="gradient_x_input")
    t, scoring = _pair_scoring(tiny_model, a, TEXTS, None, None, jaxplain.DEFAULT_TEMPLATES)
    protocol = Protocol(steps=4, fraction=0.5)
    anchors = tiny_model.encode_texts(TEXTS)
    for mode in ("deletion", "insertion"):
        curve = faithfulness_curves(tiny_model, a, t, scoring, protocol, mode)
        assert curve.shape == (3, 5)
        for n in range(3):
            order = np.argsort(-a.patches[n].reshape(-1), kind="stable")
            for k in range(5):
                count = int(np.floor(k / 4 * 0.5 * 16 + 0.5))  # 0, 2, 4, 6, 8 patches
                x = pixels[n].copy() if mode == "deletion" else np.zeros_like(pixels[n])
                for p in order[:count]:
                    gy, gx = divmod(int(p), 4)
                    window = (slice(None), slice(gy * 8, gy * 8 + 8), slice(gx * 8, gx * 8 + 8))
                    x[window] = 0.0 if mode == "deletion" else pixels[n][window]
                expect = float(tiny_model.encode_pixels(x[None])[0] @ anchors[n])
                assert curve[n, k] == pytest.approx(expect, abs=2e-6), (mode, n, k)
    # step 0 of deletion is the unperturbed score
    np.testing.assert_allclose(
        faithfulness_curves(tiny_model, a, t, scoring, protocol, "deletion")[:, 0], a.score, atol=2e-6
    )


def test_text_deletion_curve_matches_a_loop(tiny_model, pixels):
    a = jaxplain.attribute(tiny_model, pixels, TEXTS, method="occlusion", side="text")
    t, scoring = _pair_scoring(tiny_model, a, TEXTS, pixels, None, jaxplain.DEFAULT_TEMPLATES)
    curve = faithfulness_curves(tiny_model, a, t, scoring, Protocol(steps=2), "deletion")
    u = tiny_model.encode_pixels(pixels)
    params, cfg = tiny_model.params, tiny_model.config
    for n in range(3):
        ids = a.inputs[n : n + 1]
        word_pos = np.flatnonzero(a.word_index[n] >= 0)
        order = word_pos[np.argsort(-a.tokens[n][word_pos], kind="stable")]
        for k in range(3):
            count = int(np.floor(k / 2 * len(word_pos) + 0.5))
            emb = np.asarray(clip.embed_tokens(params, ids)).copy()
            emb[0, order[:count]] = 0.0
            e = np.asarray(clip.text_forward(params, ids, cfg, token_embeds=emb)[0])[0]
            assert curve[n, k] == pytest.approx(float(e @ u[n]), abs=2e-6)


def test_evaluate_table_values(tiny_model, pixels):
    protocol = Protocol(steps=4, samples=2, radius=0.05)
    table = evaluate(tiny_model, pixels, TEXTS, methods=["random", "ig"], protocol=protocol, show_progress=False)
    ig = jaxplain.attribute(tiny_model, pixels, TEXTS, method="ig")
    assert table.rows["ig"]["completeness_error"] == pytest.approx(np.mean(np.abs(ig.delta)), rel=1e-5)
    t, scoring = _pair_scoring(tiny_model, ig, TEXTS, None, None, jaxplain.DEFAULT_TEMPLATES)
    curve = faithfulness_curves(tiny_model, ig, t, scoring, protocol, "deletion")
    assert table.rows["ig"]["deletion_auc"] == pytest.approx(float(np.mean(metrics.auc(curve))), rel=1e-6)
    # the random map does not depend on the weights at all: the sanity check must flag it
    assert table.rows["random"]["randomisation_similarity"] == pytest.approx(1.0)
    assert "completeness_error" not in table.rows["random"]
    assert "contrastivity" not in table.rows["ig"]  # a similarity target names no class
    md = table.markdown()
    assert "| method | deletion_auc (↓) | insertion_auc (↑) |" in md and "| random |" in md
    rows = list(csv.reader(io.StringIO(table.csv())))
    assert rows[0][:3] == ["method", "deletion_auc", "insertion_auc"]
    assert float(rows[2][1]) == pytest.approx(table.rows["ig"]["deletion_auc"], rel=1e-5)


def test_table_formatting_by_hand():
    t = Table(
        ["a", "b"],
        ["deletion_auc", "completeness_error"],
        {"a": {"deletion_auc": 0.25}, "b": {"deletion_auc": 0.125, "completeness_error": 1e-3}},
        pairs=7,
        side="image",
        target="prob:predicted",
        protocol=Protocol(steps=8),
    )
    lines = t.markdown().splitlines()
    assert lines[:4] == [
        "| method | deletion_auc (↓) | completeness_error (↓) |",
        "|---|---:|---:|",
        "| a | 0.2500 | – |",
        "| b | 0.1250 | 0.0010 |",
    ]
    assert "7 pairs, image side, target `prob:predicted`. deletion/insertion: 8 steps" in lines[5]
    assert t.csv() == "method,deletion_auc,completeness_error\na,0.25,\nb,0.125,0.001\n"


def test_contrastivity_with_class_targets(tiny_model, pixels):
    classes = ["cat", "dog", "boot"]
    table = evaluate(
        tiny_model,
        pixels,
        methods=["gradient_x_input", "rollout"],
        metric_names=["contrastivity"],
        target="prob:predicted",
        classes=classes,
        show_progress=False,
    )
    assert table.rows["rollout"]["contrastivity"] == 0.0  # rollout ignores the target: no contrast at all
    assert 0.0 < table.rows["gradient_x_input"]["contrastivity"] <= 1.0


def test_evaluate_errors(tiny_model, pixels):
    with pytest.raises(InputError, match="unknown metric 'speed'"):
        evaluate(tiny_model, pixels, TEXTS, methods=["ig"], metric_names=["speed"])
    with pytest.raises(InputError, match="method 'gradcam' cannot explain texts"):
        evaluate(tiny_model, pixels, TEXTS, methods=["gradcam"], side="text")


def test_parse_options():
    assert parse_options(["rise.masks=500", "ig.rule=riemann_middle", "ig.steps=8", "x.r=0.5"]) == {
        "rise": {"masks": 500},
        "ig": {"rule": "riemann_middle", "steps": 8},
        "x": {"r": 0.5},
    }
    with pytest.raises(InputError, match=r"METHOD\.KEY=VALUE"):
        parse_options(["masks=5"])


def test_evaluate_command(tmp_path, capsys):
    images = tmp_path / "imgs"
    shutil.copytree(FIXTURES / "images", images)
    (images / "00_broken.png").write_bytes(b"not a png")
    texts = tmp_path / "t.txt"
    texts.write_text("a photo of a cat\n")
    out = tmp_path / "eval"
    code = main(
        ["evaluate", "--model", str(TINY), "--images", str(images), "--texts", str(texts), "--limit", "4",
         "--methods", "random,occlusion", "--metrics", "deletion_auc,insertion_auc", "--steps", "4",
         "--option", "occlusion.window=16", "--out", str(out)]
    )  # fmt: skip
    assert code == 1  # the broken image is reported, the three good ones evaluated
    err = capsys.readouterr().err
    assert "skipped" in err and "00_broken.png" in err
    summary = json.loads((out / "evaluation.json").read_text())
    assert summary["pairs"] == 3 and summary["target"] == "similarity"
    assert summary["method_options"] == {"occlusion": {"window": 16}}
    assert set(summary["rows"]) == {"random", "occlusion"}
    assert (out / "evaluation.md").read_text().startswith("| method | deletion_auc (↓) | insertion_auc (↑) |")
    rows = list(csv.reader((out / "evaluation.csv").open()))
    assert [r[0] for r in rows] == ["method", "random", "occlusion"]
    assert (
        main(["evaluate", "--model", str(TINY), "--images", str(images), "--methods", "lime", "--out", str(out)]) == 2
    )
    assert "method 'lime' cannot explain images" in capsys.readouterr().err


def test_counterfactual_quality_by_hand():
    import jaxplain.data.fashion_mnist as fm
    from jaxplain.evaluation import counterfactual_quality

    model = jaxplain.load("fashion-clip")
    images, labels = fm.load_shipped_test()
    bank, _ = jaxplain.build_bank(model, images=list(images[:300]), labels=labels[:300], progress=False)
    queries = list(images[300:306])
    res = jaxplain.counterfactuals(model, queries, want="other-class", bank=bank, classes=list(fm.CLASS_NAMES), top=3)
    u = model.encode_images(queries)
    q = counterfactual_quality(res, bank, u)
    pairs = [p for p in res.pairs if p.counterfactuals]
    assert q["found_rate"] == res.found_rate and q["validity"] == 1.0  # the engine returns proven items only
    assert q["proximity"] == pytest.approx(
        np.mean([np.mean([c.distance for c in p.counterfactuals]) for p in pairs]), rel=1e-4
    )
    div = []
    for p in pairs:
        e = bank.embeddings[[c.bank_row for c in p.counterfactuals]]
        d = [np.linalg.norm(e[a] - e[b]) for a in range(len(e)) for b in range(a + 1, len(e))]
        div.append(np.mean(d) if d else 0.0)
    assert q["diversity"] == pytest.approx(np.mean(div), rel=1e-4)

"""The ``jaxplain`` command line: embed images and texts, bad items reported by name, the good ones written."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

import jaxplain
from jaxplain.cli import main
from tests.conftest import FIXTURES, TINY


def test_embed_images_in_file_name_order(tiny_model, tmp_path, capsys):
    out = tmp_path / "emb.npy"
    assert main(["embed", "--model", str(TINY), "--images", str(FIXTURES / "images"), "--out", str(out)]) == 0
    emb = np.load(out)
    files = sorted((FIXTURES / "images").iterdir())
    assert emb.dtype == np.float32 and emb.shape == (len(files), 24)
    np.testing.assert_allclose(emb, tiny_model.encode_images(files), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["items"] == [str(f) for f in files]
    assert manifest["fingerprint"] == tiny_model.fingerprint and manifest["errors"] == []
    assert "wrote 7 embeddings of dimension 24" in capsys.readouterr().err


def test_bad_image_is_reported_and_the_others_written(tiny_model, tmp_path, capsys):
    d = tmp_path / "imgs"
    shutil.copytree(FIXTURES / "images", d)
    (d / "03b_broken.png").write_bytes(b"\x89PNG truncated")
    out = tmp_path / "emb.npy"
    code = main(["embed", "--model", str(TINY), "--images", str(d), "--out", str(out), "--batch-size", "3"])
    assert code == 1
    err = capsys.readouterr().err
    assert f"skipped {d / '03b_broken.png'}: cannot read it as an image" in err
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert len(manifest["items"]) == 7 and str(d / "03b_broken.png") not in manifest["items"]
    assert manifest["errors"][0]["item"] == str(d / "03b_broken.png")
    np.testing.assert_allclose(np.load(out), tiny_model.encode_images(manifest["items"]), atol=1e-6)


def test_embed_texts_with_an_empty_and_a_long_line(tiny_model, tmp_path, capsys):
    lines = ["a photo of a coat", "", "a sandal", "a bag " * 60]
    f = tmp_path / "texts.txt"
    f.write_text("\n".join(lines) + "\n")
    out = tmp_path / "t.npy"
    assert main(["embed", "--model", str(TINY), "--texts", str(f), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"skipped {f}:2: empty text" in err
    assert f"warning: {f}:4 'a bag a bag" in err and "truncated to the context length 77" in err
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["items"] == [lines[0], lines[2], lines[3]]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = tiny_model.encode_texts([lines[0], lines[2], lines[3]])
    np.testing.assert_allclose(np.load(out), want, atol=1e-6)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "no/such-model-here", "--texts", "x.txt"], "could not be fetched from the Hugging Face Hub"),
        (
            ["--model", str(TINY), "--images", "/no/such/dir"],
            "jaxplain: skipped /no/such/dir: no such file\njaxplain: error: no item could be "
            "embedded (1 bad item: listed above); nothing written",
        ),
        (
            ["--model", str(TINY), "--texts", "/no/such/file.txt"],
            "/no/such/file.txt: no such file (of texts)",
        ),
    ],
)
def test_errors_are_one_clear_line(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert main(["embed", *args, "--out", str(tmp_path / "e.npy")]) == 2
    err = capsys.readouterr().err
    assert "jaxplain: error:" in err and message in err and "Traceback" not in err


def test_out_must_be_npy(tmp_path, capsys):
    assert main(["embed", "--model", str(TINY), "--texts", "x", "--out", str(tmp_path / "e.txt")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"jaxplain: error: --out {tmp_path / 'e.txt'}: does not end in .npy; give a file ending in .npy"
    )


def test_console_script_runs(tmp_path):
    out = tmp_path / "e.npy"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "jaxplain",
            "embed",
            "--model",
            str(TINY),
            "--images",
            str(FIXTURES / "images" / "01_rgb.png"),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert np.load(out).shape == (1, 24)


def test_classify_the_shipped_test_set(tiny_model, tmp_path, capsys):
    from jaxplain.data import fashion_mnist
    from jaxplain.zeroshot import DEFAULT_TEMPLATES

    out = tmp_path / "p.jsonl"
    assert main(["classify", "--model", str(TINY), "--limit", "40", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    images, labels = fashion_mnist.load_shipped_test()
    probs = jaxplain.classify(tiny_model, list(images[:40]), fashion_mnist.CLASS_NAMES, DEFAULT_TEMPLATES)
    names = fashion_mnist.CLASS_NAMES
    assert [r["prediction"] for r in rows] == [names[k] for k in probs.argmax(1)]
    assert [r["label"] for r in rows] == [names[k] for k in labels[:40]]
    np.testing.assert_allclose([r["confidence"] for r in rows], probs.max(1), atol=1e-5)
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    assert summary["images"] == 40
    assert summary["accuracy"] == pytest.approx(np.mean(probs.argmax(1) == labels[:40]))
    assert "zero-shot accuracy:" in capsys.readouterr().err


def test_classify_own_images_with_a_bad_one(tmp_path, capsys):
    d = tmp_path / "imgs"
    shutil.copytree(FIXTURES / "images", d)
    (d / "00_bad.jpg").write_bytes(b"nope")
    out = tmp_path / "p.jsonl"
    assert main(["classify", "--model", str(TINY), "--images", str(d), "--classes", "cat, dog", "--out", str(out)]) == 1
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 7 and {r["prediction"] for r in rows} <= {"cat", "dog"} and "label" not in rows[0]
    assert f"skipped {d / '00_bad.jpg'}" in capsys.readouterr().err


def test_classify_needs_class_names_for_own_images(tmp_path, capsys):
    args = ["classify", "--model", str(TINY), "--images", str(FIXTURES / "images"), "--out", str(tmp_path / "p.jsonl")]
    assert main(args) == 2
    assert "name the classes with --classes" in capsys.readouterr().err

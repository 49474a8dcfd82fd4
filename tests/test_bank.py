"""Banks of real items: built by the model, saved atomically, loaded only for the model that made them."""

import argparse
import shutil
import warnings

import numpy as np
import pytest

import jaxplain
from jaxplain.commands import bank as bank_command
from jaxplain.counterfactual import bank as bank_module
from jaxplain.counterfactual.bank import Bank, BankError, build_bank
from jaxplain.counterfactual.index import ExactIndex, ScannIndex, ScannParams
from jaxplain.errors import InputError, JaxplainError
from tests.conftest import FIXTURES, TINY

IMAGES = sorted((FIXTURES / "images").iterdir())
TEXTS = ["a photo of a coat", "a sandal", "an ankle boot on a white background", "a bag", "a pullover"]


@pytest.fixture(scope="module")
def image_bank(tiny_model):
    bank, errors = build_bank(tiny_model, images=IMAGES, batch_size=3, progress=False)
    assert errors == []
    return bank


@pytest.fixture(scope="module")
def other_model(tiny_model, tmp_path_factory):
    """tiny-clip with one weight changed: same shapes, another fingerprint."""
    from safetensors.numpy import load_file, save_file

    d = tmp_path_factory.mktemp("other") / "tiny-clip"
    shutil.copytree(TINY, d)
    state = load_file(str(d / "model.safetensors"))
    name = sorted(state)[0]
    state[name] = state[name].copy()
    state[name].flat[0] += 0.5
    save_file(state, str(d / "model.safetensors"), metadata={"format": "pt"})
    model = jaxplain.load(d)
    assert model.fingerprint != tiny_model.fingerprint
    return model


def clustered_bank(tiny_model, n: int = 5000, labels: bool = True) -> Bank:
    """A synthetic bank of tiny-clip's width with a ScaNN tree index, to test saving ScaNN banks."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((25, tiny_model.embed_dim))
    x = centres[rng.integers(0, 25, n)] + 0.3 * rng.standard_normal((n, tiny_model.embed_dim))
    emb = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    index = ScannIndex.build(emb, ScannParams(70, 7, n, 100))
    return Bank(
        kind="text",
        items=[f"caption {i}" for i in range(n)],
        ids=[f"text:{i + 1}" for i in range(n)],
        embeddings=emb,
        model_name=tiny_model.name,
        fingerprint=tiny_model.fingerprint,
        index=index,
        labels=rng.integers(0, 10, n) if labels else None,
    )


def test_image_bank_holds_the_models_embeddings(tiny_model, image_bank):
    assert image_bank.kind == "image" and len(image_bank) == 7 and image_bank.dim == tiny_model.embed_dim
    assert image_bank.items == [str(p) for p in IMAGES]
    assert image_bank.ids == [p.name for p in IMAGES]
    assert image_bank.fingerprint == tiny_model.fingerprint and image_bank.model_name == tiny_model.name
    assert isinstance(image_bank.index, ExactIndex) and image_bank.labels is None
    assert image_bank.embeddings.dtype == np.float32
    np.testing.assert_allclose(image_bank.embeddings, tiny_model.encode_images(IMAGES), atol=1e-6)
    rows, scores = image_bank.search(image_bank.embeddings, 3)
    assert rows[:, 0].tolist() == list(range(7))
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)


def test_text_bank_holds_the_models_embeddings(tiny_model):
    bank, errors = build_bank(tiny_model, texts=TEXTS, progress=False)
    assert errors == [] and bank.kind == "text"
    assert bank.items == TEXTS and bank.ids == [f"text:{i}" for i in range(1, 6)]
    np.testing.assert_allclose(bank.embeddings, tiny_model.encode_texts(TEXTS), atol=1e-6)


def test_uint8_array_images_with_labels(tiny_model):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 28, 28), dtype=np.uint8)
    labels = np.arange(10) % 3
    bank, errors = build_bank(tiny_model, images=images, labels=labels, batch_size=4, progress=False)
    assert errors == []
    assert bank.ids == bank.items == [str(i) for i in range(10)]
    np.testing.assert_array_equal(bank.labels, labels)
    np.testing.assert_allclose(bank.embeddings, tiny_model.encode_images(list(images)), atol=1e-6)


def test_bad_image_is_reported_by_name_and_the_others_kept(tiny_model, tmp_path):
    d = tmp_path / "imgs"
    shutil.copytree(FIXTURES / "images", d)
    broken = d / "03b_broken.png"
    broken.write_bytes(b"\x89PNG truncated")
    files = sorted(d.iterdir())
    labels = np.arange(len(files))
    bank, errors = build_bank(tiny_model, images=files, labels=labels, batch_size=3, progress=False)
    assert [e["item"] for e in errors] == [str(broken)]
    assert errors[0]["error"].startswith("cannot read it as an image")
    assert len(bank) == 7 and str(broken) not in bank.items and "03b_broken.png" not in bank.ids
    np.testing.assert_array_equal(bank.labels, [i for i, f in enumerate(files) if f != broken])
    np.testing.assert_allclose(bank.embeddings, tiny_model.encode_images(bank.items), atol=1e-6)


def test_bad_inputs_are_clear_errors(tiny_model):
    with pytest.raises(InputError, match=r"no item of the 2 could be encoded.*empty text"):
        build_bank(tiny_model, texts=["", " "], progress=False)
    with pytest.raises(InputError, match="exactly one of"):
        build_bank(tiny_model, progress=False)
    with pytest.raises(InputError, match="labels must be 5 integers"):
        build_bank(tiny_model, texts=TEXTS, labels=[1, 2], progress=False)
    with pytest.raises(InputError, match="the id 'x' is given to two items"):
        build_bank(tiny_model, texts=TEXTS[:2], ids=["x", "x"], progress=False)


def test_empty_text_is_named_by_file_and_line(tiny_model):
    bank, errors = build_bank(tiny_model, texts=["a coat", "", "a bag"], source="caps.txt", progress=False)
    assert errors == [{"item": "caps.txt:2", "error": "empty text"}]
    assert bank.ids == ["text:1", "text:3"] and bank.items == ["a coat", "a bag"]


@pytest.mark.parametrize("which", ["exact", "scann"])
def test_save_load_round_trip(tiny_model, image_bank, tmp_path, which):
    bank = image_bank if which == "exact" else clustered_bank(tiny_model)
    out = bank.save(tmp_path / "bank")
    loaded = Bank.load(out, tiny_model)
    assert type(loaded.index) is type(bank.index)
    np.testing.assert_array_equal(loaded.embeddings, bank.embeddings)
    assert loaded.items == bank.items and loaded.ids == bank.ids and loaded.kind == bank.kind
    assert (loaded.model_name, loaded.fingerprint) == (bank.model_name, bank.fingerprint)
    if bank.labels is None:
        assert loaded.labels is None
    else:
        np.testing.assert_array_equal(loaded.labels, bank.labels)
    queries = bank.embeddings[:50] + 0.1
    for k in (1, 5):
        np.testing.assert_array_equal(loaded.search(queries, k)[0], bank.search(queries, k)[0])
        np.testing.assert_array_equal(loaded.search(queries, k)[1], bank.search(queries, k)[1])


def test_loading_with_another_model_names_both_fingerprints(image_bank, other_model, tmp_path):
    image_bank.save(tmp_path / "bank")
    with pytest.raises(JaxplainError) as e:
        Bank.load(tmp_path / "bank", other_model)
    assert isinstance(e.value, BankError)
    assert image_bank.fingerprint in str(e.value) and other_model.fingerprint in str(e.value)
    with pytest.raises(BankError, match=other_model.fingerprint):
        image_bank.check_model(other_model)
    assert Bank.load(tmp_path / "bank").fingerprint == image_bank.fingerprint  # without a model: no check


def test_loading_a_bank_of_other_dimensions_names_both(tiny_model, tmp_path):
    emb = np.eye(16, dtype=np.float32)
    bank = Bank("text", list("abcdefghijklmnop"), list("abcdefghijklmnop"), emb, "m16", "f16", ExactIndex(emb))
    bank.save(tmp_path / "b16")
    with pytest.raises(BankError) as e:
        Bank.load(tmp_path / "b16", tiny_model)
    msg = str(e.value)
    assert "dimension 16" in msg and f"dimension {tiny_model.embed_dim}" in msg
    assert "f16" in msg and tiny_model.fingerprint in msg


@pytest.mark.parametrize("crash_in", ["arrays", "index"])
def test_a_crash_while_saving_leaves_the_old_bank_intact(tiny_model, image_bank, tmp_path, monkeypatch, crash_in):
    target = tmp_path / "bank"
    image_bank.save(target)
    new = clustered_bank(tiny_model, labels=True)
    if crash_in == "arrays":
        real_save, calls = np.save, []

        def save_then_crash(*args, **kwargs):  # the embeddings get written, then the labels crash
            calls.append(args[0])
            if len(calls) == 2:
                raise OSError("disk full")
            return real_save(*args, **kwargs)

        monkeypatch.setattr(bank_module.np, "save", save_then_crash)
    else:

        def crash(self, directory):
            raise RuntimeError("killed while serialising ScaNN")

        monkeypatch.setattr(ScannIndex, "save", crash)
    with pytest.raises((OSError, RuntimeError)):
        new.save(target)
    monkeypatch.undo()
    loaded = Bank.load(target, tiny_model)
    assert loaded.items == image_bank.items
    np.testing.assert_array_equal(loaded.embeddings, image_bank.embeddings)
    assert [p.name for p in tmp_path.iterdir()] == ["bank"]  # no temporary directory left behind
    new.save(target)  # and a complete save replaces it
    assert len(Bank.load(target, tiny_model)) == 5000


def test_save_refuses_to_overwrite_a_directory_that_is_not_a_bank(image_bank, tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not a jaxplain bank or index; refusing"):
        image_bank.save(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    with pytest.raises(BankError, match="not a bank"):
        Bank.load(tmp_path)


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="jaxplain")
    bank_command.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_bank_build_reports_a_broken_image_and_saves_the_rest(tiny_model, tmp_path, capsys):
    d = tmp_path / "imgs"
    shutil.copytree(FIXTURES / "images", d)
    (d / "03b_broken.png").write_bytes(b"\x89PNG truncated")
    out = tmp_path / "bank"
    code = cli(["bank", "build", "--model", str(TINY), "--images", str(d), "--out", str(out), "--batch-size", "3"])
    assert code == 1
    err = capsys.readouterr().err
    assert f"skipped {d / '03b_broken.png'}: cannot read it as an image" in err
    assert f"wrote bank {out}: 7 images of dimension {tiny_model.embed_dim}, exact index" in err
    assert "1 bad items skipped" in err
    bank = Bank.load(out, tiny_model)
    assert bank.ids == sorted(p.name for p in IMAGES)
    np.testing.assert_allclose(bank.embeddings, tiny_model.encode_images(bank.items), atol=1e-6)


def test_cli_bank_build_texts(tiny_model, tmp_path, capsys):
    f = tmp_path / "captions.txt"
    f.write_text("\n".join(TEXTS) + "\n")
    out = tmp_path / "texts"
    assert cli(["bank", "build", "--model", str(TINY), "--texts", str(f), "--out", str(out), "--index", "scann"]) == 0
    assert "5 texts of dimension" in capsys.readouterr().err
    bank = Bank.load(out, tiny_model)
    assert isinstance(bank.index, ScannIndex) and bank.items == TEXTS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_allclose(bank.embeddings, tiny_model.encode_texts(TEXTS), atol=1e-6)

"""jaxplain.load / save: local directories, the hub path offline, and errors that say what to do."""

import shutil

import jax
import numpy as np
import pytest

import jaxplain
from jaxplain.errors import CheckpointError, ModelNotFoundError
from tests.conftest import TINY


def test_load_local_directory(tiny_model):
    assert tiny_model.config.vision.image_size == 32
    assert tiny_model.config.projection_dim == 24
    assert tiny_model.tokenizer.context_length == 77
    assert tiny_model.processing.crop == (32, 32)
    assert "fingerprint" in repr(tiny_model)
    np.testing.assert_allclose(tiny_model.logit_scale, np.exp(np.asarray(tiny_model.params["logit_scale"])))


def test_save_then_load_is_exact(tiny_model, tmp_path, reference):
    out = jaxplain.save(tiny_model, tmp_path / "copy")
    again = jaxplain.load(out)
    assert again.fingerprint == tiny_model.fingerprint
    for a, b in zip(jax.tree.leaves(tiny_model.params), jax.tree.leaves(again.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(again.tokenize(["a coat"]), tiny_model.tokenize(["a coat"]))
    np.testing.assert_array_equal(
        again.encode_pixels(reference["pixels"]), tiny_model.encode_pixels(reference["pixels"])
    )


def test_fingerprint_changes_with_the_weights(tiny_model, tmp_path):
    from safetensors.numpy import load_file, save_file

    d = tmp_path / "changed"
    shutil.copytree(TINY, d)
    state = load_file(d / "model.safetensors")
    state["logit_scale"] = np.asarray(state["logit_scale"] + 1e-3, np.float32)
    save_file(state, d / "model.safetensors")
    assert jaxplain.load(d).fingerprint != tiny_model.fingerprint


def test_offline_hub_id_says_what_to_download(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(ModelNotFoundError) as e:
        jaxplain.load("openai/clip-vit-base-patch32")
    msg = str(e.value)
    assert "'openai/clip-vit-base-patch32' is not a local directory" in msg
    assert "hf download openai/clip-vit-base-patch32 --local-dir clip-vit-base-patch32" in msg
    assert "model.safetensors" in msg


def test_unknown_name_lists_shipped_models():
    with pytest.raises(ModelNotFoundError, match="no such directory, and not a hub id"):
        jaxplain.load("./no/such/dir")


def test_missing_tensor_through_load(tmp_path):
    from safetensors.numpy import load_file, save_file

    d = tmp_path / "broken"
    shutil.copytree(TINY, d)
    state = load_file(d / "model.safetensors")
    del state["vision_model.post_layernorm.bias"]
    save_file(state, d / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing tensors \(1\): vision_model\.post_layernorm\.bias"):
        jaxplain.load(d)


def test_pickled_checkpoints_are_refused(tmp_path):
    d = tmp_path / "pickled"
    shutil.copytree(TINY, d)
    (d / "model.safetensors").unlink()
    (d / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin, which jaxplain does not read"):
        jaxplain.load(d)


def test_corrupt_weights_file(tmp_path):
    d = tmp_path / "corrupt"
    shutil.copytree(TINY, d)
    (d / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="cannot read it as safetensors"):
        jaxplain.load(d)


def test_sharded_checkpoint(tiny_model, tmp_path):
    import json

    from safetensors.numpy import load_file, save_file

    d = tmp_path / "sharded"
    shutil.copytree(TINY, d)
    state = load_file(d / "model.safetensors")
    (d / "model.safetensors").unlink()
    keys = sorted(state)
    halves = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, ks in halves.items():
        save_file({k: state[k] for k in ks}, d / name)
    index = {"weight_map": {k: name for name, ks in halves.items() for k in ks}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    assert jaxplain.load(d).fingerprint == tiny_model.fingerprint


def test_missing_tokenizer_with_a_nonstandard_vocabulary(tmp_path):
    d = tmp_path / "notok"
    shutil.copytree(TINY, d)
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        (d / f).unlink()
    with pytest.raises(CheckpointError, match="no tokenizer files"):
        jaxplain.load(d)


def test_bfloat16_load(tiny_model, reference):
    low = jaxplain.load(TINY, dtype="bfloat16")
    assert low.params["vision"]["patch_embedding"].dtype == jax.numpy.bfloat16
    assert low.fingerprint == tiny_model.fingerprint
    cos = (low.encode_pixels(reference["pixels"]) * tiny_model.encode_pixels(reference["pixels"])).sum(-1)
    assert cos.min() > 0.99
    with pytest.raises(ValueError, match="dtype must be one of"):
        jaxplain.load(TINY, dtype="int8")

"""Hostile checkpoints: config values of the wrong type, non-finite weights, a model that gives non-finite
embeddings for some items, and fingerprints that cover the preprocessing (so banks cannot be mixed up)."""

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxplain
from jaxplain.batching import NON_FINITE_EMBEDDING, encode_batches, encode_stream
from jaxplain.errors import CheckpointError
from jaxplain.models.bundle import fingerprint
from jaxplain.models.config import config_from_hf_dict
from tests.conftest import FIXTURES, TINY

IMAGES = sorted((FIXTURES / "images").iterdir())


def copy_tiny(tmp_path, name="ckpt"):
    d = tmp_path / name
    shutil.copytree(TINY, d)
    return d


def edit_json(path, edit):
    d = json.loads(path.read_text())
    edit(d)
    path.write_text(json.dumps(d))


def load_error(d) -> str:
    with pytest.raises(CheckpointError) as e:
        jaxplain.load(d)
    return str(e.value)


# ---------------------------------------------------------------------------------------------- config.json


def _set(section, key, value):
    def edit(d):
        (d if section is None else d[section])[key] = value

    return edit


BAD_CONFIGS = [
    (
        _set("vision_config", "hidden_size", "768"),
        "'vision_config.hidden_size' must be a positive integer, got '768'",
    ),
    (_set("text_config", "hidden_size", 0), "'text_config.hidden_size' must be a positive integer, got 0"),
    (
        _set("vision_config", "num_hidden_layers", -2),
        "'vision_config.num_hidden_layers' must be a positive integer, got -2",
    ),
    (_set("text_config", "vocab_size", 1514.0), "'text_config.vocab_size' must be a positive integer, got 1514.0"),
    (_set("vision_config", "patch_size", True), "'vision_config.patch_size' must be a positive integer, got True"),
    (_set(None, "text_config", [1, 2]), "'text_config' must be a JSON object, got list [1, 2]"),
    (_set(None, "vision_config", "big"), "'vision_config' must be a JSON object, got str 'big'"),
    (
        _set("vision_config", "num_attention_heads", 5),
        "'vision_config.hidden_size' (32) must be divisible by 'vision_config.num_attention_heads' (5)",
    ),
    (
        _set("text_config", "layer_norm_eps", "1e-5"),
        "'text_config.layer_norm_eps' must be a positive finite number, got '1e-5'",
    ),
    (
        _set("text_config", "layer_norm_eps", -1e-5),
        "'text_config.layer_norm_eps' must be a positive finite number, got -1e-05",
    ),
    (
        _set("vision_config", "hidden_act", "swish"),
        "'vision_config.hidden_act' must be one of quick_gelu, gelu, gelu_new, gelu_pytorch_tanh, relu, got 'swish'",
    ),
    (
        _set("text_config", "hidden_act", ["gelu"]),
        "'text_config.hidden_act' must be one of quick_gelu, gelu, gelu_new, gelu_pytorch_tanh, relu, got ['gelu']",
    ),
    (_set("text_config", "eos_token_id", -1), "'text_config.eos_token_id' must be a non-negative integer, got -1"),
    (
        _set("text_config", "eos_token_id", [1513, 1512]),
        "'text_config.eos_token_id' is [1513, 1512]: only one token id is supported",
    ),
    (
        _set("vision_config", "image_size", []),
        "'vision_config.image_size' is []: only square images are supported",
    ),
    (
        _set("vision_config", "num_channels", 1),
        "'vision_config.num_channels' must be 3 (images are read as RGB), got 1",
    ),
    (
        _set("vision_config", "image_size", 36),
        "'vision_config.image_size' (36) must be a multiple of 'vision_config.patch_size' (8)",
    ),
    (_set(None, "projection_dim", "24"), "'projection_dim' must be a positive integer, got '24'"),
    (
        _set(None, "logit_scale_init_value", float("nan")),
        "'logit_scale_init_value' must be a finite number, got nan",
    ),
    (
        _set(None, "logit_scale_init_value", {"value": 2.6}),
        "'logit_scale_init_value' must be a finite number, got {'value': 2.6}",
    ),
]


@pytest.mark.parametrize(
    "edit, message", BAD_CONFIGS, ids=[m.split("'")[1] + str(i) for i, (_, m) in enumerate(BAD_CONFIGS)]
)
def test_a_bad_config_value_is_a_checkpoint_error_naming_the_file_and_key(tmp_path, edit, message):
    d = copy_tiny(tmp_path)
    edit_json(d / "config.json", edit)
    assert load_error(d) == f"{d / 'config.json'}: {message}"


def test_the_same_checks_from_a_dictionary():
    with pytest.raises(CheckpointError) as e:
        config_from_hf_dict({"vision_config": {"hidden_size": 768.5}}, source="cfg")
    assert str(e.value) == "cfg: 'vision_config.hidden_size' must be a positive integer, got 768.5"
    with pytest.raises(CheckpointError) as e:
        config_from_hf_dict({"vision_config": {"hidden_size": "768"}})
    assert str(e.value) == "config.json: 'vision_config.hidden_size' must be a positive integer, got '768'"
    with pytest.raises(CheckpointError) as e:
        config_from_hf_dict({"text_config_dict": [3]}, source="old.json")
    assert str(e.value) == "old.json: 'text_config_dict' must be a JSON object, got list [3]"


def test_null_values_take_the_defaults_and_old_section_names_are_read():
    cfg = config_from_hf_dict({"text_config": None, "vision_config_dict": {"patch_size": [16, 16], "hidden_act": None}})
    assert cfg.vision.patch_size == 16 and cfg.vision.hidden_act == "quick_gelu" and cfg.text.hidden_size == 512


@pytest.mark.parametrize(
    "text, message",
    [
        ("[1, 2, 3]", "must hold a JSON object, got list [1, 2, 3]"),
        ('"clip"', "must hold a JSON object, got str 'clip'"),
        (
            "{'model_type': 'clip'}",
            "cannot read it as JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))",
        ),
        ("", "cannot read it as JSON (Expecting value: line 1 column 1 (char 0))"),
    ],
)
def test_a_config_file_that_is_not_a_json_object(tmp_path, text, message):
    d = copy_tiny(tmp_path)
    (d / "config.json").write_text(text)
    assert load_error(d) == f"{d / 'config.json'}: {message}"


def test_a_config_file_that_is_not_utf8(tmp_path):
    d = copy_tiny(tmp_path)
    (d / "config.json").write_bytes(b'{"model_type": "cl\xefp"}')
    assert load_error(d) == (
        f"{d / 'config.json'}: cannot read it as JSON ('utf-8' codec can't decode byte 0xef in position 18: "
        "invalid continuation byte)"
    )


# -------------------------------------------------------------------------------------------- weights


def edit_weights(d, edit, name="model.safetensors"):
    from safetensors.numpy import load_file, save_file

    state = load_file(d / name)
    edit(state)
    save_file(state, d / name)


def test_nan_weights_are_refused_at_load_naming_the_tensor(tmp_path):
    d = copy_tiny(tmp_path)
    key = "vision_model.embeddings.patch_embedding.weight"

    def poison(state):
        state[key].reshape(-1)[[0, 5, 9]] = np.nan

    edit_weights(d, poison)
    assert (
        load_error(d) == f"{d / 'model.safetensors'}: {key!r} holds 3 NaN values (a model with them gives NaN scores)"
    )


def test_every_non_finite_tensor_is_named_with_its_counts(tmp_path):
    d = copy_tiny(tmp_path)

    def poison(state):
        state["text_projection.weight"].reshape(-1)[:2] = [np.inf, -np.inf]
        state["text_projection.weight"].reshape(-1)[7] = np.nan
        state["vision_model.post_layernorm.bias"][0] = np.inf

    edit_weights(d, poison)
    assert load_error(d) == (
        f"{d / 'model.safetensors'}: 'text_projection.weight' holds 1 NaN value and 2 infinite values; "
        "'vision_model.post_layernorm.bias' holds 1 infinite value (a model with them gives NaN scores)"
    )


def test_many_non_finite_tensors_are_counted_past_the_first_five(tmp_path):
    d = copy_tiny(tmp_path)
    keys = [
        f"text_model.encoder.layers.{i}.{n}.bias" for i in (0, 1) for n in ("layer_norm1", "layer_norm2", "mlp.fc1")
    ]

    def poison(state):
        for k in keys:
            state[k][0] = np.nan

    edit_weights(d, poison)
    shown = "; ".join(f"{k!r} holds 1 NaN value" for k in sorted(keys)[:5])
    assert load_error(d) == (
        f"{d / 'model.safetensors'}: {shown}; and 1 more tensors (a model with them gives NaN scores)"
    )


def test_a_temperature_that_overflows_is_refused(tmp_path):
    d = copy_tiny(tmp_path)
    edit_weights(d, lambda state: state.__setitem__("logit_scale", np.asarray(100.0, np.float32)))
    assert load_error(d) == (
        f"{d / 'model.safetensors'}: 'logit_scale' is 100.0, so the temperature exp(logit_scale) overflows to inf "
        "(a model with it gives NaN scores)"
    )


def test_a_sharded_checkpoint_names_the_shard_that_holds_nan(tmp_path):
    from safetensors.numpy import load_file, save_file

    d = copy_tiny(tmp_path)
    state = load_file(d / "model.safetensors")
    (d / "model.safetensors").unlink()
    keys = sorted(state)
    halves = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, ks in halves.items():
        save_file({k: state[k] for k in ks}, d / name)
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {k: name for name, ks in halves.items() for k in ks}})
    )
    assert jaxplain.load(d).config.projection_dim == 24  # the good sharded checkpoint loads
    bad = keys[1]
    edit_weights(d, lambda s: s[bad].reshape(-1).__setitem__(0, np.nan), "model-00002-of-00002.safetensors")
    assert load_error(d) == (
        f"{d / 'model-00002-of-00002.safetensors'}: {bad!r} holds 1 NaN value (a model with them gives NaN scores)"
    )
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": ["a"]}))
    assert load_error(d) == (
        f"{d / 'model.safetensors.index.json'}: 'weight_map' must be a JSON object of tensor name to file name"
    )


# ------------------------------------------------------------------------- non-finite embeddings, per item


def test_items_with_non_finite_embeddings_are_errors_and_their_batch_mates_are_kept(tiny_model, reference):
    pixels = np.asarray(reference["pixels"], np.float32)
    n = len(pixels)
    assert n >= 5
    bad = {1, 3}
    fed = pixels.copy()
    fed[1, 0, 0, 0] = np.inf
    fed[3, 2, 5, 5] = np.nan

    encode = lambda x: tiny_model.encode_pixels(x, 4)  # noqa: E731
    emb, kept, errors = encode_stream(n, lambda i: fed[i], lambda i: f"img{i}.png", encode, 4, "test", show=False)
    assert kept == [i for i in range(n) if i not in bad]
    assert errors == [{"item": f"img{i}.png", "error": NON_FINITE_EMBEDDING} for i in sorted(bad)]
    assert NON_FINITE_EMBEDDING == "the model gave a non-finite embedding (NaN/inf) for it"
    # each kept row is its item's embedding, as encoded in the same batch without the bad items' pixels
    clean = fed.copy()
    clean[sorted(bad)] = 0.0
    expected = np.concatenate([encode(clean[s : s + 4]) for s in range(0, n, 4)])
    np.testing.assert_array_equal(emb, expected[kept])
    np.testing.assert_allclose(emb, tiny_model.encode_pixels(pixels[kept]), atol=1e-6)


def test_a_model_that_overflows_on_some_inputs(tiny_model):
    """Patch weights scaled by 1e38: the patches of a black image (normalised pixels near -1.8) overflow float32
    to a NaN embedding, those of a lit one (near +1.2) do not, and layer norm undoes the scale."""
    params = jax.tree.map(lambda a: a, tiny_model.params)
    params["vision"]["patch_embedding"] = params["vision"]["patch_embedding"] * jnp.float32(1e38)
    hot = tiny_model.with_params(params)
    assert hot.fingerprint != tiny_model.fingerprint
    size = tiny_model.config.vision.image_size
    black = np.zeros((size, size, 3), np.uint8)
    lit = np.full((size, size, 3), 200, np.uint8)
    items = [black, lit, black, lit, lit, black]
    batches = list(
        encode_batches(
            range(len(items)),
            lambda i: hot.processing.pixels(items[i], f"item {i}"),
            lambda i: f"item {i}",
            lambda x: hot.encode_pixels(x, 4),
            batch_size=4,
            workers=0,
        )
    )
    assert [b.items for b in batches] == [[1, 3], [4]]
    assert [b.errors for b in batches] == [
        [{"item": "item 0", "error": NON_FINITE_EMBEDDING}, {"item": "item 2", "error": NON_FINITE_EMBEDDING}],
        [{"item": "item 5", "error": NON_FINITE_EMBEDDING}],
    ]
    want = hot.encode_pixels(hot.preprocess([lit]))
    for b in batches:
        assert np.isfinite(b.embeddings).all()
        np.testing.assert_allclose(b.embeddings, np.repeat(want, len(b.items), 0), atol=1e-6)


def test_a_batch_of_only_non_finite_embeddings_has_no_embeddings(tiny_model):
    x = np.full((2, 3, 32, 32), np.nan, np.float32)
    (batch,) = encode_batches(range(2), lambda i: x[i], str, lambda v: tiny_model.encode_pixels(v), 8, workers=0)
    assert batch.embeddings is None and batch.items == []
    assert batch.errors == [{"item": "0", "error": NON_FINITE_EMBEDDING}, {"item": "1", "error": NON_FINITE_EMBEDDING}]


# ----------------------------------------------------------------------------- fingerprint and preprocessing


def test_the_fingerprint_covers_the_image_normalisation(tiny_model, tmp_path):
    same, other = copy_tiny(tmp_path, "same"), copy_tiny(tmp_path, "other")
    edit_json(other / "preprocessor_config.json", lambda d: d.__setitem__("image_mean", [0.5, 0.5, 0.5]))
    a, b = jaxplain.load(same), jaxplain.load(other)
    assert a.fingerprint == jaxplain.load(same).fingerprint == tiny_model.fingerprint  # not the path: the content
    assert b.fingerprint != a.fingerprint
    for a_leaf, b_leaf in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_array_equal(a_leaf, b_leaf)  # the same weights, fed other pixels
    assert b.fingerprint == fingerprint(b.config, b.params, processing=b.processing, tokenizer=b.tokenizer)
    back = dataclasses.replace(b.processing, mean=a.processing.mean)  # the mean was all that differed
    assert fingerprint(b.config, b.params, processing=back, tokenizer=b.tokenizer) == a.fingerprint


def test_the_fingerprint_covers_the_crop_and_the_tokenizer(tiny_model):
    from jaxplain.data.tokenize import Tokenizer

    cfg, params, proc, tok = tiny_model.config, tiny_model.params, tiny_model.processing, tiny_model.tokenizer
    base = fingerprint(cfg, params, processing=proc, tokenizer=tok)
    assert base == tiny_model.fingerprint
    assert fingerprint(cfg, params, processing=dataclasses.replace(proc, crop=(30, 30)), tokenizer=tok) != base
    assert fingerprint(cfg, params, processing=dataclasses.replace(proc, std=(1.0, 1.0, 1.0)), tokenizer=tok) != base
    assert fingerprint(cfg, params, processing=proc, tokenizer=Tokenizer(tok.hf, 16)) != base
    assert fingerprint(cfg, params, processing=proc, tokenizer=None) != base
    tok.ids("a long enough text to be cut short", "t")  # using the tokenizer does not change its identity
    assert fingerprint(cfg, params, processing=proc, tokenizer=tok) == base


def test_with_params_keeps_the_fingerprint_of_the_same_weights(tiny_model):
    again = tiny_model.with_params(jax.tree.map(lambda a: a + 0, tiny_model.params))
    assert again.fingerprint == tiny_model.fingerprint


def test_a_bank_made_with_other_normalisation_is_refused(tiny_model, tmp_path):
    from jaxplain.counterfactual import Bank, BankError, build_bank

    other_dir = copy_tiny(tmp_path, "other-mean")
    edit_json(other_dir / "preprocessor_config.json", lambda d: d.__setitem__("image_mean", [0.5, 0.5, 0.5]))
    other = jaxplain.load(other_dir)
    bank, errors = build_bank(other, images=[str(p) for p in IMAGES[:4]], backend="exact", progress=False)
    assert errors == []
    where = bank.save(tmp_path / "bank")
    assert Bank.load(where, model=other).fingerprint == other.fingerprint
    with pytest.raises(BankError) as e:
        Bank.load(where, model=tiny_model)
    assert str(e.value).startswith(
        f"{where}: made by model {other.name!r} (fingerprint {other.fingerprint}, embeddings of dimension 24), "
        f"but the model given is {tiny_model.name!r} (fingerprint {tiny_model.fingerprint}, dimension 24)"
    )

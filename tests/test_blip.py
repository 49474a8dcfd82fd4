"""BLIP's contrastive towers in JAX (jaxplain.models.blip, blip_convert) against transformers'
``BlipForImageTextRetrieval`` (the ``use_itm_head=False`` path).

Two tiers:

* default: a tiny-width ``BlipForImageTextRetrieval`` saved with its outputs by
  ``tests/fixtures/make_blip_fixtures.py`` (``tests/fixtures/blip/``) is loaded and every output — embeddings,
  cosine similarities, last hidden states, every layer's tokens and attention — is checked within 1e-5;
  config, converter, masks, jit and vmap are checked without torch;
* ``reference`` (needs torch): random models at BLIP-base widths, every weight perturbed, compared live
  within 1e-4 on two input batches; a checkpoint written here is loaded by transformers.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxplain.errors import CheckpointError
from jaxplain.models import blip
from jaxplain.models.blip import BlipConfig, BlipTextConfig, BlipVisionConfig
from jaxplain.models.blip_convert import (
    IGNORED_KEYS,
    expected_keys,
    itm_keys,
    params_from_state_dict,
    read_checkpoint,
    state_dict_from_params,
    write_checkpoint,
)
from tests.conftest import FIXTURES

GOLDEN = FIXTURES / "blip"
GOLDEN_TOL = 1e-5
LIVE_TOL = 1e-4


def _max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


@pytest.fixture(scope="module")
def golden():
    params, config = read_checkpoint(GOLDEN)
    ref = dict(np.load(GOLDEN / "reference.npz", allow_pickle=False))
    return params, config, ref


def _inputs(ref):
    return jnp.asarray(ref["pixels"]), jnp.asarray(ref["ids"]), jnp.asarray(ref["mask"])


# --- the golden tier: outputs of transformers' BlipForImageTextRetrieval, saved ------------------------------


def test_golden_config_is_read():
    config = read_checkpoint(GOLDEN)[1]
    assert config.text == BlipTextConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_layers=2,
        num_heads=4,
        max_positions=16,
        pad_token_id=0,
        bos_token_id=63,
        eos_token_id=2,
        sep_token_id=62,
        cross_attention=True,
    )
    assert config.vision == BlipVisionConfig(
        image_size=16, patch_size=4, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4
    )
    assert config.embed_dim == 16 and config.vision.num_positions == 17


@pytest.mark.parametrize("collect", [False, True])
def test_golden_embeddings_and_similarity(golden, collect):
    params, config, ref = golden
    pixels, ids, mask = _inputs(ref)
    img, iaux = blip.image_forward(params, pixels, config, collect)
    txt, taux = blip.text_forward(params, ids, mask, config, collect)
    assert _max_diff(img, ref["image_embeds"]) < GOLDEN_TOL
    assert _max_diff(txt, ref["text_embeds"]) < GOLDEN_TOL
    assert _max_diff(iaux["projected"], ref["image_projected"]) < GOLDEN_TOL
    assert _max_diff(taux["projected"], ref["text_projected"]) < GOLDEN_TOL
    assert _max_diff(blip.similarity(img, txt), ref["similarity"]) < GOLDEN_TOL
    # the image tokens the matching head will cross-attend to: every token after the post-layer norm
    assert _max_diff(iaux["tokens"], ref["image_last"]) < GOLDEN_TOL * np.abs(ref["image_last"]).max()
    assert _max_diff(iaux["pooled"], ref["image_last"][:, 0]) < GOLDEN_TOL * np.abs(ref["image_last"]).max()
    assert _max_diff(taux["tokens"], ref["text_last"]) < GOLDEN_TOL * np.abs(ref["text_last"]).max()
    # the fixture is not degenerate: images embed apart, and similarities spread on both sides of zero
    assert np.max(np.abs(ref["image_embeds"][0] - ref["image_embeds"][1])) > 0.1
    assert ref["similarity"].min() < -0.1 and ref["similarity"].max() > 0.1


def test_golden_intermediates(golden):
    params, config, ref = golden
    pixels, ids, mask = _inputs(ref)
    _, iaux = blip.image_forward(params, pixels, config, collect=True)
    _, taux = blip.text_forward(params, ids, mask, config, collect=True)
    for name, aux in (("image", iaux), ("text", taux)):
        want = ref[f"{name}_tokens"]
        assert aux["layer_tokens"].shape == want.shape
        assert _max_diff(aux["layer_tokens"], want) < GOLDEN_TOL * np.abs(want).max()
        assert _max_diff(aux["attention"], ref[f"{name}_attention"]) < GOLDEN_TOL
    # padded keys get no attention in any layer
    pad = ref["mask"] == 0
    at_pad = np.broadcast_to(pad[:, None, None, None, :], taux["attention"].shape)
    assert np.abs(np.asarray(taux["attention"]))[at_pad].max() < 1e-30


def test_padding_does_not_change_a_text(golden):
    """With its mask, a padded text embeds as the same text without its padding."""
    params, config, ref = golden
    full = blip.encode_text(params, jnp.asarray(ref["ids"]), jnp.asarray(ref["mask"]), config)
    for i, row in enumerate(ref["mask"]):
        n = int(row.sum())
        alone = blip.encode_text(params, jnp.asarray(ref["ids"][i : i + 1, :n]), None, config)
        assert _max_diff(alone[0], full[i]) < 1e-6
        assert _max_diff(alone[0], ref["text_embeds"][i]) < GOLDEN_TOL
    # and without the mask the padded texts embed otherwise (the mask is applied)
    unmasked = blip.encode_text(params, jnp.asarray(ref["ids"]), None, config)
    assert _max_diff(unmasked[0], full[0]) < 1e-6  # the unpadded text
    assert _max_diff(unmasked[1:], full[1:]) > 1e-3


def test_unstacked_layers_give_the_same_numbers(golden):
    params, config, ref = golden
    pixels, ids, mask = _inputs(ref)
    flat = blip.unstack_layers(params)
    assert isinstance(flat["vision"]["layers"], tuple) and isinstance(flat["text"]["layers"], tuple)
    assert _max_diff(blip.encode_image(flat, pixels, config), ref["image_embeds"]) < GOLDEN_TOL
    assert _max_diff(blip.encode_text(flat, ids, mask, config), ref["text_embeds"]) < GOLDEN_TOL
    _, aux = blip.text_forward(flat, ids, mask, config, collect=True)
    assert _max_diff(aux["attention"], ref["text_attention"]) < GOLDEN_TOL
    assert state_dict_from_params(flat, config).keys() == state_dict_from_params(params, config).keys()


def test_jit_and_vmap_agree_with_the_batch_call(golden):
    params, config, ref = golden
    pixels, ids, mask = _inputs(ref)
    batch_img, batch_aux = blip.image_forward(params, pixels, config)
    batch_txt = blip.encode_text(params, ids, mask, config)
    img, aux = jax.jit(blip.image_forward, static_argnums=(2, 3))(params, pixels, config, True)
    assert _max_diff(img, batch_img) < 1e-6
    assert _max_diff(aux["tokens"], batch_aux["tokens"]) < 1e-6
    txt = jax.jit(blip.text_forward, static_argnums=(3, 4))(params, ids, mask, config, False)[0]
    assert _max_diff(txt, batch_txt) < 1e-6
    one_img = jax.vmap(lambda x: blip.encode_image(params, x[None], config)[0])
    one_txt = jax.vmap(lambda t, m: blip.encode_text(params, t[None], m[None], config)[0])
    assert _max_diff(jax.jit(one_img)(pixels), batch_img) < 1e-6
    assert _max_diff(jax.jit(one_txt)(ids, mask), batch_txt) < 1e-6
    assert _max_diff(batch_img, ref["image_embeds"]) < GOLDEN_TOL
    assert _max_diff(batch_txt, ref["text_embeds"]) < GOLDEN_TOL


def test_token_embeds_give_the_same_numbers(golden):
    params, config, ref = golden
    ids, mask = jnp.asarray(ref["ids"]), jnp.asarray(ref["mask"])
    out = blip.text_forward(params, ids, mask, config, token_embeds=blip.embed_tokens(params, ids))[0]
    assert _max_diff(out, ref["text_embeds"]) < GOLDEN_TOL


def test_gradients_flow_through_both_towers(golden):
    params, config, ref = golden
    pixels, ids, mask = _inputs(ref)

    def score(p):
        return blip.similarity(blip.encode_image(p, pixels, config), blip.encode_text(p, ids, mask, config)).sum()

    grads = jax.grad(score)(params)
    for path in (("vision", "class_embedding"), ("vision", "patch_embedding", "bias"), ("text", "embed_ln", "scale")):
        g = grads
        for k in path:
            g = g[k]
        assert np.abs(np.asarray(g)).max() > 0, path
    # the matching head's weights do not enter the contrastive path
    assert all(np.abs(np.asarray(g)).max() == 0 for g in jax.tree.leaves(grads["itm"]))


def test_bad_inputs_are_refused(golden):
    params, config, _ = golden
    with pytest.raises(ValueError, match=r"pixels must be \[N, 3, 16, 16\]"):
        blip.encode_image(params, jnp.zeros((1, 3, 8, 8)), config)
    with pytest.raises(ValueError, match="T <= 16"):
        blip.encode_text(params, jnp.zeros((1, 17), jnp.int32), None, config)
    with pytest.raises(ValueError, match="mask must have the shape"):
        blip.encode_text(params, jnp.zeros((2, 4), jnp.int32), jnp.ones((2, 5)), config)


def test_init_params_layout_matches_the_checkpoint_layout():
    config = BlipConfig(
        text=BlipTextConfig(vocab_size=40, hidden_size=16, intermediate_size=24, num_layers=2, num_heads=2,
                            max_positions=8),
        vision=BlipVisionConfig(image_size=10, patch_size=4, hidden_size=24, intermediate_size=32, num_layers=1,
                                num_heads=3),
        embed_dim=12,
    )  # fmt: skip
    params = blip.init_params(jax.random.PRNGKey(0), config)
    state = state_dict_from_params(params, config)  # every tensor present with its transformers shape
    assert sorted(state) == sorted(expected_keys(config))
    assert state["vision_model.embeddings.position_embedding"].shape == (1, 5, 24)  # 10 // 4 = 2: 4 patches + 1
    assert state["text_encoder.encoder.layer.1.crossattention.self.key.weight"].shape == (16, 24)
    img = blip.encode_image(params, jnp.ones((2, 3, 10, 10)), config)
    txt = blip.encode_text(params, jnp.ones((3, 8), jnp.int32), None, config)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(img), axis=-1), 1.0, rtol=1e-6)
    assert img.shape == (2, 12) and txt.shape == (3, 12)
    again = params_from_state_dict(state, config)
    assert _max_diff(blip.encode_image(again, jnp.ones((2, 3, 10, 10)), config), img) < 1e-6


# --- the golden tier of the matching (ITM) head ----------------------------------------------------------------


def _itm_inputs(params, config, ref):
    """The fixture's ITM pairs: text i with image i % N_images, the image tokens made here."""
    pair = np.arange(len(ref["ids"])) % len(ref["pixels"])
    tokens = blip.image_tokens(params, jnp.asarray(ref["pixels"]), config)[pair]
    return tokens, jnp.asarray(ref["ids"]), jnp.asarray(ref["mask"])


@pytest.mark.parametrize("unstacked", [False, True])
def test_golden_itm_head(golden, unstacked):
    params, config, ref = golden
    if unstacked:
        params = blip.unstack_layers(params)
        assert isinstance(params["itm"]["cross"], tuple)
    tokens, ids, mask = _itm_inputs(params, config, ref)
    p, aux = blip.itm_forward(params, tokens, ids, mask, config, collect=True)
    assert p.shape == (4,) and p.dtype == jnp.float32
    assert _max_diff(p, ref["itm_probability"]) < GOLDEN_TOL
    assert _max_diff(aux["logits"], ref["itm_score"]) < GOLDEN_TOL  # transformers' itm_score
    np.testing.assert_allclose(ref["itm_probability"], _softmax(ref["itm_score"])[:, 1], atol=1e-6)
    assert aux["cross_attention"].shape == (4, 2, 4, 16, 17) == ref["itm_cross_attention"].shape
    assert _max_diff(aux["cross_attention"], ref["itm_cross_attention"]) < GOLDEN_TOL
    assert _max_diff(aux["self_attention"], ref["itm_self_attention"]) < GOLDEN_TOL
    assert _max_diff(aux["tokens"], ref["itm_text_last"]) < GOLDEN_TOL * np.abs(ref["itm_text_last"]).max()
    # the fixture's pairs are not alike, and the head uses the image: another image, another score
    assert np.ptp(ref["itm_probability"]) > 0.1
    other = blip.itm_forward(params, tokens[::-1], ids, mask, config)[0]
    assert _max_diff(other, p) > 0.01
    # without collect the same numbers, and no maps
    p2, aux2 = blip.itm_forward(params, tokens, ids, mask, config)
    assert _max_diff(p2, p) == 0.0 and "cross_attention" not in aux2


def _softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_itm_padding_does_not_change_a_pair(golden):
    """With its mask, a padded text scores as the same text without its padding."""
    params, config, ref = golden
    tokens, ids, _ = _itm_inputs(params, config, ref)
    for i, row in enumerate(ref["mask"]):
        n = int(row.sum())
        alone = blip.itm_forward(params, tokens[i : i + 1], ids[i : i + 1, :n], None, config)[0]
        assert _max_diff(alone[0], ref["itm_probability"][i]) < GOLDEN_TOL


def test_itm_jit_vmap_and_gradients(golden):
    params, config, ref = golden
    tokens, ids, mask = _itm_inputs(params, config, ref)
    fn = jax.jit(blip.itm_forward, static_argnames=("config", "collect"))
    p, aux = fn(params, tokens, ids, mask, config=config, collect=True)
    assert _max_diff(p, ref["itm_probability"]) < GOLDEN_TOL
    assert _max_diff(aux["cross_attention"], ref["itm_cross_attention"]) < GOLDEN_TOL
    one = jax.vmap(lambda t, i, m: blip.itm_forward(params, t[None], i[None], m[None], config)[0][0])
    assert _max_diff(jax.jit(one)(tokens, ids, mask), p) < 1e-6
    # gradients reach the image tokens and the matching head's weights, not the contrastive projections
    g_tok, g_par = jax.grad(lambda t, q: blip.itm_forward(q, t, ids, mask, config)[0].sum(), argnums=(0, 1))(
        tokens, params
    )
    assert np.abs(np.asarray(g_tok)).max() > 0
    assert np.abs(np.asarray(g_par["itm"]["cross"]["attn"]["k"]["kernel"])).max() > 0
    assert np.abs(np.asarray(g_par["text_proj"]["kernel"])).max() == 0


def test_itm_scores_in_chunks_of_one_shape(golden):
    params, config, ref = golden
    tokens = np.asarray(_itm_inputs(params, config, ref)[0])
    want = np.asarray(ref["itm_probability"])
    for chunk in (1, 3):  # 3: the last chunk is padded
        got = blip.itm_scores(params, tokens, ref["ids"], ref["mask"], config, chunk=chunk)
        assert got.shape == (4,) and _max_diff(got, want) < GOLDEN_TOL, chunk
    # pairs by rows: every image with every text, and the mask read off the ids (pad id 0)
    img = np.asarray(blip.image_tokens(params, jnp.asarray(ref["pixels"]), config))
    rows_i, rows_t = np.meshgrid(np.arange(3), np.arange(4), indexing="ij")
    grid = blip.itm_scores(
        params, img, ref["ids"], None, config, image_rows=rows_i.ravel(), text_rows=rows_t.ravel(), chunk=5
    ).reshape(3, 4)
    assert _max_diff(grid[np.arange(4) % 3, np.arange(4)], want) < GOLDEN_TOL
    # the tokens may be made chunk by chunk from the pixels
    lazy = blip.tokens_from_pixels(params, ref["pixels"], config)
    again = blip.itm_scores(params, lazy, ref["ids"], ref["mask"], config, image_rows=np.arange(4) % 3,
                            text_rows=np.arange(4), chunk=2)  # fmt: skip
    assert _max_diff(again, want) < GOLDEN_TOL
    # one compiled shape per (chunk, T): another M in the same chunk size does not compile again
    blip.itm_scores(params, tokens[:1], ref["ids"][:1], ref["mask"][:1], config, chunk=1)
    size = blip._itm_chunk._cache_size()
    blip.itm_scores(params, np.concatenate([tokens] * 3), np.concatenate([ref["ids"]] * 3),
                    np.concatenate([ref["mask"]] * 3), config, chunk=1)  # fmt: skip
    assert blip._itm_chunk._cache_size() == size
    assert blip.itm_scores(params, tokens[:0], ref["ids"][:0], ref["mask"][:0], config).shape == (0,)


def test_cross_attention_maps_lay_the_weights_on_the_patch_grid(golden):
    _, config, ref = golden
    cross = ref["itm_cross_attention"]  # [N, L, H, T, 17]: class token then 4 × 4 patches
    out = blip.cross_attention_maps(cross[1], config)
    assert out["maps"].shape == (2, 4, 16, 4, 4) and out["mean"].shape == (2, 16, 4, 4)
    # patch (row 1, column 2) is image token 1 + 1·4 + 2
    np.testing.assert_array_equal(out["maps"][1, 3, 5, 1, 2], cross[1, 1, 3, 5, 7])
    np.testing.assert_array_equal(out["class_token"], cross[1, ..., 0])
    np.testing.assert_allclose(out["mean"][0, 2], cross[1, 0, :, 2, 1:].mean(0).reshape(4, 4), rtol=1e-6)
    np.testing.assert_allclose(out["maps"].sum((-1, -2)) + out["class_token"], 1.0, atol=1e-6)
    batched = blip.cross_attention_maps(cross, config)
    np.testing.assert_array_equal(batched["maps"][1], out["maps"])
    with pytest.raises(ValueError, match=r"\[\.\.\., L, H, T, 17\]"):
        blip.cross_attention_maps(cross[..., :16], config)


def test_itm_bad_inputs_are_refused(golden):
    params, config, ref = golden
    tokens, ids, mask = _itm_inputs(params, config, ref)
    with pytest.raises(ValueError, match=r"image_tokens must be \[N, 17, 32\] with N = 4"):
        blip.itm_forward(params, tokens[:3], ids, mask, config)
    with pytest.raises(ValueError, match="mask must have the shape"):
        blip.itm_forward(params, tokens, ids, mask[:, :5], config)
    plain = dataclasses.replace(config, text=dataclasses.replace(config.text, cross_attention=False))
    with pytest.raises(ValueError, match="no cross-attention layers"):
        blip.itm_forward(params, tokens, ids, mask, plain)
    with pytest.raises(ValueError, match="both image_rows and text_rows"):
        blip.itm_scores(params, np.asarray(tokens), ref["ids"], ref["mask"], config, image_rows=np.arange(4))


def test_encode_text_ids_reads_the_mask_off_the_ids(golden):
    params, config, ref = golden
    got = blip.encode_text_ids(params, jnp.asarray(ref["ids"]), config)
    assert _max_diff(got, ref["text_embeds"]) < GOLDEN_TOL


# --- config ----------------------------------------------------------------------------------------------


def test_config_round_trips_through_hf_dict():
    config = BlipConfig(
        text=BlipTextConfig(vocab_size=100, hidden_size=64, num_heads=4, max_positions=35, cross_attention=False),
        vision=BlipVisionConfig(image_size=224, patch_size=14, hidden_size=48, num_heads=4, num_layers=3),
        embed_dim=128,
    )
    d = config.to_hf_dict()
    assert d["model_type"] == "blip" and d["architectures"] == ["BlipForImageTextRetrieval"]
    assert d["text_config"]["encoder_hidden_size"] == 48 and d["text_config"]["is_decoder"] is False
    assert BlipConfig.from_hf_dict(json.loads(json.dumps(d))) == config
    assert config.vision.grid_size == 16 and config.vision.num_positions == 257


def test_config_defaults_are_transformers_defaults():
    transformers = pytest.importorskip("transformers")
    try:
        hf_config = transformers.BlipConfig
    except ImportError as e:  # a transformers whose backend cannot be imported
        pytest.skip(f"transformers.BlipConfig cannot be imported: {e}")
    assert BlipConfig.from_hf_dict(hf_config().to_dict()) == BlipConfig()
    assert BlipConfig.from_hf_dict({}) == BlipConfig()
    config = read_checkpoint(GOLDEN)[1]
    again = hf_config(**config.to_hf_dict()).to_dict()
    assert BlipConfig.from_hf_dict(again) == config


@pytest.mark.parametrize(
    "section, key, value, named",
    [
        ("text_config", "hidden_size", "768", "'text_config.hidden_size' must be a positive integer"),
        ("text_config", "vocab_size", 0, "'text_config.vocab_size' must be a positive integer"),
        ("text_config", "max_position_embeddings", -1, "'text_config.max_position_embeddings'"),
        ("text_config", "hidden_act", "swish", "'text_config.hidden_act' must be one of"),
        ("text_config", "layer_norm_eps", 0.0, "'text_config.layer_norm_eps' must be a positive finite"),
        ("text_config", "pad_token_id", -3, "'text_config.pad_token_id' must be a non-negative integer"),
        ("text_config", "is_decoder", "yes", "'text_config.is_decoder' must be true or false"),
        ("text_config", "num_attention_heads", 5, "'text_config.hidden_size' (768) must be divisible"),
        ("vision_config", "num_hidden_layers", True, "'vision_config.num_hidden_layers' must be a positive"),
        ("vision_config", "patch_size", 400, "'vision_config.patch_size' (400) must not exceed"),
        ("vision_config", "image_size", [384, 256], "'vision_config.image_size' is [384, 256]"),
        ("vision_config", "num_channels", 1, "'vision_config.num_channels' must be 3"),
        ("vision_config", "layer_norm_eps", float("nan"), "'vision_config.layer_norm_eps'"),
        (None, "image_text_hidden_size", 0, "'config.image_text_hidden_size' must be a positive integer"),
    ],
)
def test_bad_config_values_name_the_key(section, key, value, named):
    d = BlipConfig().to_hf_dict()
    (d if section is None else d[section])[key] = value
    with pytest.raises(CheckpointError, match=r"my/config.json") as e:
        BlipConfig.from_hf_dict(d, source="my/config.json")
    assert named in str(e.value)


@pytest.mark.parametrize(
    "d, named",
    [
        ([], "must hold a JSON object"),
        ({"model_type": "clip"}, "'model_type' is 'clip'"),
        ({"vision_config": "big"}, "'vision_config' must be a JSON object"),
    ],
)
def test_bad_config_shapes_are_named(d, named):
    with pytest.raises(CheckpointError, match=r"config.json") as e:
        BlipConfig.from_hf_dict(d)
    assert named in str(e.value)


def test_configs_are_hashable_static_arguments():
    assert hash(BlipConfig()) == hash(BlipConfig())
    with pytest.raises(dataclasses.FrozenInstanceError):
        BlipConfig().vision.hidden_size = 3


# --- the converter ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def golden_state(golden):
    from jaxplain.models.loading import read_weights

    return read_weights(GOLDEN), golden[1]


def test_converter_round_trips_the_checkpoint_exactly(golden_state):
    state, config = golden_state
    again = state_dict_from_params(params_from_state_dict(state, config), config)
    assert sorted(again) == sorted(state) == sorted(expected_keys(config))
    for key in state:
        np.testing.assert_array_equal(again[key], state[key], err_msg=key)


def test_matching_head_tensors_are_kept_under_itm(golden_state):
    state, config = golden_state
    params = params_from_state_dict(state, config)
    keys = itm_keys(config)
    assert len(keys) == 2 + config.text.num_layers * 10  # itm_head + per layer q, k, v, out, LayerNorm
    assert all(k.startswith("itm_head.") or ".crossattention." in k for k in keys)
    np.testing.assert_array_equal(params["itm"]["head"]["kernel"], state["itm_head.weight"].T)
    np.testing.assert_array_equal(
        params["itm"]["cross"]["attn"]["k"]["kernel"][1],
        state["text_encoder.encoder.layer.1.crossattention.self.key.weight"].T,
    )
    np.testing.assert_array_equal(
        params["itm"]["cross"]["ln"]["scale"][0],
        state["text_encoder.encoder.layer.0.crossattention.output.LayerNorm.weight"],
    )


def test_a_model_without_cross_attention_refuses_cross_attention_tensors(golden_state):
    state, config = golden_state
    plain = dataclasses.replace(config, text=dataclasses.replace(config.text, cross_attention=False))
    with pytest.raises(CheckpointError, match=r"left-over tensors not used by the model \(20\)"):
        params_from_state_dict(state, plain)
    kept = {k: v for k, v in state.items() if ".crossattention." not in k}
    params = params_from_state_dict(kept, plain)
    assert "cross" not in params["itm"] and sorted(state_dict_from_params(params, plain)) == sorted(kept)


def test_converter_ignores_position_id_buffers(golden_state):
    state, config = golden_state
    extra = {**state, **{k: np.arange(4)[None] for k in IGNORED_KEYS}}
    got = params_from_state_dict(extra, config)["vision"]["class_embedding"]
    np.testing.assert_array_equal(got, params_from_state_dict(state, config)["vision"]["class_embedding"])


def test_converter_names_missing_leftover_and_misshaped_tensors(golden_state):
    state, config = golden_state
    bad = dict(state)
    del bad["vision_model.encoder.layers.0.self_attn.qkv.bias"]
    del bad["itm_head.weight"]
    bad["text_encoder.pooler.dense.weight"] = np.zeros((32, 32), np.float32)
    bad["vision_model.embeddings.class_embedding"] = np.zeros((32,), np.float32)
    bad["text_proj.weight"] = np.zeros((256, 32), np.float32)
    with pytest.raises(CheckpointError, match="ckpt does not match its config") as e:
        params_from_state_dict(bad, config, source="ckpt")
    msg = str(e.value)
    assert "missing tensors (2): itm_head.weight, vision_model.encoder.layers.0.self_attn.qkv.bias" in msg
    assert "left-over tensors not used by the model (1): text_encoder.pooler.dense.weight" in msg
    assert "vision_model.embeddings.class_embedding: (32,) in the checkpoint, (1, 1, 32) expected" in msg
    assert "text_proj.weight: (256, 32) in the checkpoint, (16, 32) expected" in msg


def test_converter_refuses_a_checkpoint_of_another_config(golden_state):
    state, config = golden_state
    deeper = dataclasses.replace(config, vision=dataclasses.replace(config.vision, num_layers=3))
    with pytest.raises(CheckpointError, match=r"vision_model.encoder.layers.2.self_attn.qkv.weight"):
        params_from_state_dict(state, deeper)


def test_state_dict_from_params_names_a_misshaped_param(golden):
    params, config, _ = golden
    bad = {**params, "vision": {**params["vision"], "position_embedding": np.zeros((4, 32), np.float32)}}
    with pytest.raises(CheckpointError, match="vision/position_embedding has shape"):
        state_dict_from_params(bad, config)


def test_write_and_read_checkpoint(golden, tmp_path):
    params, config, ref = golden
    write_checkpoint(tmp_path / "copy", params, config)
    params2, config2 = read_checkpoint(tmp_path / "copy")
    assert config2 == config
    pixels, ids, mask = _inputs(ref)
    assert _max_diff(blip.encode_image(params2, pixels, config2), blip.encode_image(params, pixels, config)) == 0.0
    assert _max_diff(blip.encode_text(params2, ids, mask, config2), blip.encode_text(params, ids, mask, config)) == 0.0


def test_read_checkpoint_names_what_is_wrong(golden, tmp_path):
    with pytest.raises(CheckpointError, match=r"no config.json"):
        read_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot read it as JSON"):
        read_checkpoint(tmp_path)
    params, config, _ = golden
    nan = {**params, "text_proj": {**params["text_proj"], "bias": np.full(16, np.nan, np.float32)}}
    write_checkpoint(tmp_path / "nan", nan, config)
    with pytest.raises(CheckpointError, match=r"'text_proj\.bias' holds 16 NaN value"):
        read_checkpoint(tmp_path / "nan")


# --- the reference tier: live parity with transformers' BlipForImageTextRetrieval ---------------------------

# BLIP-base widths (ViT-B/16 at 384 pixels, BERT-base text) with 2 layers per tower
BASE_TEXT = dict(vocab=30524, width=768, heads=12, mlp=3072, layers=2, positions=35)
BASE_VISION = dict(width=768, heads=12, mlp=3072, layers=2, image=384, patch=16)


@pytest.fixture(scope="module")
def base_model():
    pytest.importorskip("torch")
    from tests.fixtures.make_blip_fixtures import build_model

    model = build_model(BASE_TEXT, BASE_VISION, embed=256, seed=0)
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    config = BlipConfig.from_hf_dict(model.config.to_dict(), source="blip-base")
    return model, params_from_state_dict(state, config, source="blip-base"), config


@pytest.mark.reference
@pytest.mark.parametrize("seed", [0, 1])
def test_parity_with_blip_for_image_text_retrieval(base_model, seed):
    from tests.fixtures.make_blip_fixtures import inputs, reference_outputs

    model, params, config = base_model
    pixels, ids, mask = inputs(BASE_TEXT, BASE_VISION, seed, n_images=2, n_texts=3)
    ref = reference_outputs(model, pixels, ids, mask, hidden=seed == 0)
    img, iaux = blip.image_forward(params, jnp.asarray(pixels), config, collect=seed == 0)
    txt, taux = blip.text_forward(params, jnp.asarray(ids), jnp.asarray(mask), config, collect=seed == 0)
    diffs = {
        "image_embeds": _max_diff(img, ref["image_embeds"]),
        "text_embeds": _max_diff(txt, ref["text_embeds"]),
        "similarity": _max_diff(blip.similarity(img, txt), ref["similarity"]),
        "image_tokens": _max_diff(iaux["tokens"], ref["image_last"]) / np.abs(ref["image_last"]).max(),
        "text_tokens": _max_diff(taux["tokens"], ref["text_last"]) / np.abs(ref["text_last"]).max(),
    }
    if seed == 0:  # every layer's tokens, relative to their size
        for name, aux in (("image", iaux), ("text", taux)):
            want = ref[f"{name}_tokens"]
            diffs[f"{name}_layers"] = _max_diff(aux["layer_tokens"], want) / np.abs(want).max()
    print(seed, {k: f"{v:.1e}" for k, v in diffs.items()})
    assert max(diffs.values()) < LIVE_TOL, diffs
    # the perturbed images embed apart (BLIP's own initialisation would embed every image alike)
    assert np.abs(ref["image_embeds"][0] - ref["image_embeds"][1]).max() > 0.05


@pytest.mark.reference
def test_transformers_loads_a_checkpoint_written_here(golden, tmp_path):
    torch = pytest.importorskip("torch")
    from transformers import BlipForImageTextRetrieval

    params, config, ref = golden
    write_checkpoint(tmp_path / "out", params, config)
    model = BlipForImageTextRetrieval.from_pretrained(str(tmp_path / "out")).eval()
    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(ref["ids"]),
            pixel_values=torch.from_numpy(ref["pixels"]),
            attention_mask=torch.from_numpy(ref["mask"]),
            use_itm_head=False,
        )
    assert _max_diff(out.itm_score.numpy(), ref["similarity"]) < 1e-6


@pytest.mark.reference
def test_itm_parity_with_blip_for_image_text_retrieval(base_model):
    """The matching head at BLIP-base widths against ``BlipForImageTextRetrieval(use_itm_head=True)``: p(match)
    from the pixels within 1e-4, and the cross-attention of every layer and head (transformers'
    ``output_attentions`` ``cross_attentions`` of the text encoder) within 1e-5."""
    import torch

    from tests.fixtures.make_blip_fixtures import inputs, itm_outputs

    model, params, config = base_model
    pixels, ids, mask = inputs(BASE_TEXT, BASE_VISION, 2, n_images=3, n_texts=3)
    pair = np.array([0, 1, 2])
    with torch.no_grad():
        logits = model(
            input_ids=torch.from_numpy(ids),
            pixel_values=torch.from_numpy(pixels[pair]),
            attention_mask=torch.from_numpy(mask),
            use_itm_head=True,
        ).itm_score.numpy()
        torch_tokens = model.vision_model(pixel_values=torch.from_numpy(pixels[pair])).last_hidden_state
        ref = {k: v.numpy() for k, v in itm_outputs(model, torch_tokens, torch.from_numpy(ids),
                                                   torch.from_numpy(mask)).items()}  # fmt: skip
    want = _softmax(logits)[:, 1]
    tokens = blip.image_tokens(params, jnp.asarray(pixels[pair]), config)
    p, aux = blip.itm_forward(params, tokens, jnp.asarray(ids), jnp.asarray(mask), config, collect=True)
    diffs = {
        "p_match": _max_diff(p, want),
        "logits": _max_diff(aux["logits"], logits),
        "cross_attention": _max_diff(aux["cross_attention"], ref["itm_cross_attention"]),
        "self_attention": _max_diff(aux["self_attention"], ref["itm_self_attention"]),
    }
    print({k: f"{v:.1e}" for k, v in diffs.items()}, "p:", np.round(want, 4))
    assert diffs["p_match"] < LIVE_TOL and diffs["logits"] < LIVE_TOL, diffs
    assert diffs["cross_attention"] < GOLDEN_TOL and diffs["self_attention"] < GOLDEN_TOL, diffs
    assert aux["cross_attention"].shape == (3, 2, 12, 35, 577)
    # not degenerate: the pairs score apart, and the cross-attention is not uniform over the 577 tokens
    assert np.ptp(want) > 0.05
    assert ref["itm_cross_attention"].max() > 10 / 577

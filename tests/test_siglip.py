"""SigLIP in JAX (jaxplain.models.siglip, siglip_convert) against transformers' ``SiglipModel``.

Two tiers:

* default: a tiny-width ``SiglipModel`` saved with its outputs by ``tests/fixtures/make_siglip_fixtures.py``
  (``tests/fixtures/siglip/``) is loaded and every output — embeddings, pooled tokens, logits, sigmoid
  probabilities, every layer's tokens and attention — is checked within 1e-5; config, converter, jit, vmap
  and the decision are checked without torch;
* ``reference`` (needs torch): random ``SiglipModel``s at ViT-B/16 and So400m/14 widths, every weight
  perturbed, compared live within 1e-4 on several pixel and id batches.
"""

from __future__ import annotations

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxplain.errors import CheckpointError
from jaxplain.models import siglip
from jaxplain.models.siglip import SiglipConfig, SiglipTextConfig, SiglipVisionConfig
from jaxplain.models.siglip_convert import (
    IGNORED_KEYS,
    expected_keys,
    params_from_state_dict,
    read_checkpoint,
    state_dict_from_params,
    write_checkpoint,
)
from tests.conftest import FIXTURES

GOLDEN = FIXTURES / "siglip"
GOLDEN_TOL = 1e-5
LIVE_TOL = 1e-4


def _max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


@pytest.fixture(scope="module")
def golden():
    params, config = read_checkpoint(GOLDEN)
    ref = dict(np.load(GOLDEN / "reference.npz", allow_pickle=False))
    return params, config, ref


# --- the golden tier: outputs of transformers' SiglipModel, saved -------------------------------------------


def test_golden_config_is_read():
    config = read_checkpoint(GOLDEN)[1]
    assert config.text == SiglipTextConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_layers=2,
        num_heads=4,
        max_positions=16,
        projection_size=32,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=1,
    )
    assert config.vision == SiglipVisionConfig(
        image_size=16, patch_size=4, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4
    )


@pytest.mark.parametrize("collect", [False, True])
def test_golden_embeddings_logits_probabilities(golden, collect):
    params, config, ref = golden
    img, iaux = siglip.image_forward(params, jnp.asarray(ref["pixels"]), config, collect)
    txt, taux = siglip.text_forward(params, jnp.asarray(ref["ids"]), config, collect)
    assert _max_diff(img, ref["image_embeds"]) < GOLDEN_TOL
    assert _max_diff(txt, ref["text_embeds"]) < GOLDEN_TOL
    assert _max_diff(iaux["pooled"], ref["image_pooled"]) < GOLDEN_TOL
    assert _max_diff(iaux["projected"], ref["image_pooled"]) < GOLDEN_TOL
    assert _max_diff(taux["pooled"], ref["text_pooled"]) < GOLDEN_TOL
    assert _max_diff(taux["projected"], ref["text_projected"]) < GOLDEN_TOL
    assert _max_diff(siglip.logits(params, img, txt), ref["logits_per_image"]) < GOLDEN_TOL
    assert _max_diff(siglip.probabilities(params, img, txt), ref["probs"]) < GOLDEN_TOL
    # the fixture's decisions are not degenerate: probabilities spread on both sides of 1/2
    assert ref["probs"].min() < 0.2 and ref["probs"].max() > 0.7


def test_golden_intermediates(golden):
    params, config, ref = golden
    _, iaux = siglip.image_forward(params, jnp.asarray(ref["pixels"]), config, collect=True)
    _, taux = siglip.text_forward(params, jnp.asarray(ref["ids"]), config, collect=True)
    for name, aux in (("image", iaux), ("text", taux)):
        assert _max_diff(aux["tokens"], ref[f"{name}_tokens"]) < GOLDEN_TOL * np.abs(ref[f"{name}_tokens"]).max()
        assert _max_diff(aux["attention"], ref[f"{name}_attention"]) < GOLDEN_TOL
    # the probe's attention: recompute it from the post-normed last tokens with the converted head weights
    v, head = config.vision, params["vision"]["head"]
    h = siglip.layer_norm(jnp.asarray(ref["image_tokens"][:, -1]), params["vision"]["post_ln"], v.layer_norm_eps)
    hd = v.hidden_size // v.num_heads
    q = (head["probe"] @ head["attn"]["q"]["kernel"] + head["attn"]["q"]["bias"]).reshape(v.num_heads, hd)
    k = (h @ head["attn"]["k"]["kernel"] + head["attn"]["k"]["bias"]).reshape(h.shape[0], -1, v.num_heads, hd)
    want = jax.nn.softmax(np.einsum("hd,nkhd->nhk", q, k) / math.sqrt(hd), axis=-1)
    assert _max_diff(iaux["pool_attention"], want) < GOLDEN_TOL


def test_unstacked_layers_give_the_same_numbers(golden):
    params, config, ref = golden
    flat = siglip.unstack_layers(params)
    assert isinstance(flat["vision"]["layers"], tuple)
    assert _max_diff(siglip.encode_image(flat, jnp.asarray(ref["pixels"]), config), ref["image_embeds"]) < GOLDEN_TOL
    assert _max_diff(siglip.encode_text(flat, jnp.asarray(ref["ids"]), config), ref["text_embeds"]) < GOLDEN_TOL
    assert state_dict_from_params(flat, config).keys() == state_dict_from_params(params, config).keys()


def test_jit_and_vmap_agree_with_the_batch_call(golden):
    params, config, ref = golden
    pixels, ids = jnp.asarray(ref["pixels"]), jnp.asarray(ref["ids"])
    batch_img, batch_aux = siglip.image_forward(params, pixels, config)
    batch_txt = siglip.encode_text(params, ids, config)
    jit_img = jax.jit(siglip.image_forward, static_argnums=(2, 3))
    img, aux = jit_img(params, pixels, config, True)
    assert _max_diff(img, batch_img) < 1e-6
    assert _max_diff(aux["pooled"], batch_aux["pooled"]) < 1e-6
    one_img = jax.vmap(lambda x: siglip.encode_image(params, x[None], config)[0])
    one_txt = jax.vmap(lambda t: siglip.encode_text(params, t[None], config)[0])
    assert _max_diff(one_img(pixels), batch_img) < 1e-6
    assert _max_diff(jax.jit(one_txt)(ids), batch_txt) < 1e-6
    assert _max_diff(jax.jit(siglip.text_forward, static_argnums=2)(params, ids, config)[0], batch_txt) < 1e-6
    assert _max_diff(batch_img, ref["image_embeds"]) < GOLDEN_TOL


def test_token_embeds_and_taps_are_the_identity_when_unchanged(golden):
    params, config, ref = golden
    ids = jnp.asarray(ref["ids"])
    embeds = siglip.embed_tokens(params, ids)
    zeros = {"tokens": jnp.zeros((config.text.num_layers, *embeds.shape))}
    out = siglip.text_forward(params, ids, config, token_embeds=embeds, taps=zeros)[0]
    assert _max_diff(out, ref["text_embeds"]) < GOLDEN_TOL


def test_gradients_flow_through_both_towers(golden):
    params, config, ref = golden

    def score(p):
        img = siglip.encode_image(p, jnp.asarray(ref["pixels"]), config)
        txt = siglip.encode_text(p, jnp.asarray(ref["ids"]), config)
        return siglip.probabilities(p, img, txt).sum()

    grads = jax.grad(score)(params)
    for path in (("vision", "head", "probe"), ("vision", "patch_embedding", "bias"), ("text", "head", "kernel")):
        g = grads
        for k in path:
            g = g[k]
        assert np.abs(np.asarray(g)).max() > 0, path
    assert np.isfinite(np.asarray(grads["logit_bias"])) and float(grads["logit_bias"]) > 0


# --- the decision -----------------------------------------------------------------------------------------


def test_logits_and_probabilities_by_hand(golden):
    params, _, ref = golden
    u, v = ref["image_embeds"].astype(np.float64), ref["text_embeds"].astype(np.float64)
    scale, bias = float(params["logit_scale"]), float(params["logit_bias"])
    want = math.exp(scale) * u @ v.T + bias
    got = siglip.logits(params, jnp.asarray(u, jnp.float32), jnp.asarray(v, jnp.float32))
    assert _max_diff(got, want) < 1e-5
    assert (
        _max_diff(siglip.probabilities(params, u.astype(np.float32), v.astype(np.float32)), 1 / (1 + np.exp(-want)))
        < 1e-6
    )


def test_probabilities_are_per_pair(golden):
    """A sigmoid per pair: an image's probability for a text does not depend on the other texts."""
    params, _, ref = golden
    u, v = jnp.asarray(ref["image_embeds"]), jnp.asarray(ref["text_embeds"])
    all_texts = siglip.probabilities(params, u, v)
    for j in range(v.shape[0]):
        assert _max_diff(siglip.probabilities(params, u, v[j : j + 1])[:, 0], all_texts[:, j]) < 1e-6
    assert not np.allclose(np.asarray(all_texts).sum(1), 1.0, atol=1e-2)


def test_init_params_decision_and_layout():
    config = SiglipConfig(
        text=SiglipTextConfig(vocab_size=50, hidden_size=16, intermediate_size=24, num_layers=1, num_heads=2,
                              max_positions=8, projection_size=24),
        vision=SiglipVisionConfig(image_size=12, patch_size=4, hidden_size=24, intermediate_size=32, num_layers=2,
                                  num_heads=3),
    )  # fmt: skip
    params = siglip.init_params(jax.random.PRNGKey(0), config)
    state = state_dict_from_params(params, config)  # every tensor present with its SiglipModel shape
    assert sorted(state) == sorted(expected_keys(config))
    assert state["logit_scale"].shape == (1,) and state["vision_model.head.probe"].shape == (1, 1, 24)
    img = siglip.encode_image(params, jnp.ones((2, 3, 12, 12)), config)
    txt = siglip.encode_text(params, jnp.ones((3, 8), jnp.int32), config)
    assert img.shape == (2, 24) and txt.shape == (3, 24)
    cos = np.asarray(img, np.float64) @ np.asarray(txt, np.float64).T
    assert _max_diff(siglip.logits(params, img, txt), 10.0 * cos - 10.0) < 1e-5


# --- config ----------------------------------------------------------------------------------------------


def test_config_round_trips_through_hf_dict():
    config = SiglipConfig(
        text=SiglipTextConfig(vocab_size=100, hidden_size=64, num_heads=4, projection_size=48, max_positions=16),
        vision=SiglipVisionConfig(image_size=384, patch_size=14, hidden_size=48, num_heads=4, num_layers=3),
    )
    d = config.to_hf_dict()
    assert d["model_type"] == "siglip" and d["vision_config"]["vision_use_head"] is True
    assert SiglipConfig.from_hf_dict(json.loads(json.dumps(d))) == config
    assert config.vision.grid_size == 27 and config.vision.num_positions == 729


def test_config_defaults_are_transformers_defaults():
    transformers = pytest.importorskip("transformers")
    hf = transformers.SiglipConfig().to_dict()
    assert SiglipConfig.from_hf_dict(hf) == SiglipConfig()
    assert SiglipConfig.from_hf_dict({}) == SiglipConfig()
    # a config written here is read back by transformers with the same values
    config = read_checkpoint(GOLDEN)[1]
    again = transformers.SiglipConfig(**config.to_hf_dict()).to_dict()
    assert SiglipConfig.from_hf_dict(again) == config


def test_missing_projection_size_is_the_text_width():
    d = {
        "text_config": {"hidden_size": 32, "num_attention_heads": 4},
        "vision_config": {"hidden_size": 32, "num_attention_heads": 4},
    }
    assert SiglipConfig.from_hf_dict(d).text.projection_size == 32


@pytest.mark.parametrize(
    "section, key, value, named",
    [
        ("text_config", "hidden_size", "768", "'text_config.hidden_size' must be a positive integer"),
        ("text_config", "vocab_size", 0, "'text_config.vocab_size' must be a positive integer"),
        ("text_config", "max_position_embeddings", -1, "'text_config.max_position_embeddings'"),
        ("text_config", "hidden_act", "swish", "'text_config.hidden_act' must be one of"),
        ("text_config", "layer_norm_eps", 0.0, "'text_config.layer_norm_eps' must be a positive finite"),
        ("text_config", "pad_token_id", -3, "'text_config.pad_token_id' must be a non-negative integer"),
        ("text_config", "projection_size", 512, "'text_config.projection_size' (512) must equal"),
        ("text_config", "num_attention_heads", 5, "'text_config.hidden_size' (768) must be divisible"),
        ("vision_config", "num_hidden_layers", True, "'vision_config.num_hidden_layers' must be a positive"),
        ("vision_config", "patch_size", 300, "'vision_config.patch_size' (300) must not exceed"),
        ("vision_config", "image_size", [224, 256], "'vision_config.image_size' is [224, 256]"),
        ("vision_config", "num_channels", 1, "'vision_config.num_channels' must be 3"),
        ("vision_config", "vision_use_head", False, "'vision_config.vision_use_head' must be true"),
        ("vision_config", "layer_norm_eps", float("nan"), "'vision_config.layer_norm_eps'"),
    ],
)
def test_bad_config_values_name_the_key(section, key, value, named):
    d = SiglipConfig().to_hf_dict()
    d[section][key] = value
    with pytest.raises(CheckpointError, match=r"my/config.json") as e:
        SiglipConfig.from_hf_dict(d, source="my/config.json")
    assert named in str(e.value)


@pytest.mark.parametrize(
    "d, named",
    [
        ([], "must hold a JSON object"),
        ({"model_type": "clip"}, "'model_type' is 'clip'"),
        ({"text_config": "big"}, "'text_config' must be a JSON object"),
    ],
)
def test_bad_config_shapes_are_named(d, named):
    with pytest.raises(CheckpointError, match=r"config.json") as e:
        SiglipConfig.from_hf_dict(d)
    assert named in str(e.value)


def test_configs_are_hashable_static_arguments():
    assert hash(SiglipConfig()) == hash(SiglipConfig())
    with pytest.raises(dataclasses.FrozenInstanceError):
        SiglipConfig().text.hidden_size = 3


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


def test_converter_ignores_position_id_buffers(golden_state):
    state, config = golden_state
    extra = {**state, **{k: np.arange(4)[None] for k in IGNORED_KEYS}}
    assert params_from_state_dict(extra, config)["logit_bias"] == params_from_state_dict(state, config)["logit_bias"]


def test_converter_names_missing_leftover_and_misshaped_tensors(golden_state):
    state, config = golden_state
    bad = dict(state)
    del bad["vision_model.head.attention.in_proj_bias"]
    del bad["text_model.encoder.layers.1.mlp.fc2.weight"]
    bad["vision_model.head.extra.weight"] = np.zeros(3, np.float32)
    bad["logit_bias"] = np.zeros((), np.float32)
    bad["vision_model.embeddings.patch_embedding.weight"] = np.zeros((32, 3, 5, 5), np.float32)
    with pytest.raises(CheckpointError, match="ckpt does not match its config") as e:
        params_from_state_dict(bad, config, source="ckpt")
    msg = str(e.value)
    assert (
        "missing tensors (2): text_model.encoder.layers.1.mlp.fc2.weight, vision_model.head.attention.in_proj_bias"
        in msg
    )
    assert "left-over tensors not used by the model (1): vision_model.head.extra.weight" in msg
    assert "logit_bias: () in the checkpoint, (1,) expected" in msg
    assert "vision_model.embeddings.patch_embedding.weight: (32, 3, 5, 5) in the checkpoint, (32, 3, 4, 4)" in msg


def test_converter_refuses_a_checkpoint_of_another_config(golden_state):
    state, config = golden_state
    deeper = dataclasses.replace(config, text=dataclasses.replace(config.text, num_layers=3))
    with pytest.raises(CheckpointError, match=r"text_model.encoder.layers.2.self_attn.q_proj.weight"):
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
    pixels = jnp.asarray(ref["pixels"])
    assert _max_diff(siglip.encode_image(params2, pixels, config2), siglip.encode_image(params, pixels, config)) == 0.0


def test_read_checkpoint_names_what_is_wrong(golden, tmp_path):
    with pytest.raises(CheckpointError, match=r"no config.json"):
        read_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot read it as JSON"):
        read_checkpoint(tmp_path)
    params, config, _ = golden
    write_checkpoint(tmp_path / "nan", {**params, "logit_bias": np.float32("nan")}, config)
    with pytest.raises(CheckpointError, match="'logit_bias' holds 1 NaN value"):
        read_checkpoint(tmp_path / "nan")


# --- the reference tier: live parity with transformers' SiglipModel ------------------------------------------

# text (vocab, width, heads, mlp, layers, positions), vision (width, heads, mlp, layers, image, patch)
LIVE_CASES = {
    "vit-b-16": (
        dict(vocab=32000, width=768, heads=12, mlp=3072, layers=2, positions=64),
        dict(width=768, heads=12, mlp=3072, layers=2, image=224, patch=16),
    ),
    "so400m-14-224": (
        dict(vocab=32000, width=1152, heads=16, mlp=4304, layers=1, positions=64),
        dict(width=1152, heads=16, mlp=4304, layers=1, image=224, patch=14),
    ),
    "so400m-14-384": (
        dict(vocab=32000, width=1152, heads=16, mlp=4304, layers=1, positions=64),
        dict(width=1152, heads=16, mlp=4304, layers=1, image=384, patch=14),
    ),
}


@pytest.mark.reference
@pytest.mark.parametrize("case", sorted(LIVE_CASES))
def test_parity_with_siglipmodel(case):
    pytest.importorskip("torch")
    from tests.fixtures.make_siglip_fixtures import build_model, inputs, reference_outputs

    text, vision = LIVE_CASES[case]
    model = build_model(text, vision, seed=0)
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    config = SiglipConfig.from_hf_dict(model.config.to_dict(), source=case)
    params = params_from_state_dict(state, config, source=case)
    for seed in (0, 1):
        pixels, ids = inputs(text, vision, seed, n_images=2, n_texts=3)
        ref = reference_outputs(model, pixels, ids, hidden=seed == 0)
        img, iaux = siglip.image_forward(params, jnp.asarray(pixels), config, collect=seed == 0)
        txt, taux = siglip.text_forward(params, jnp.asarray(ids), config, collect=seed == 0)
        diffs = {
            "image_embeds": _max_diff(img, ref["image_embeds"]),
            "text_embeds": _max_diff(txt, ref["text_embeds"]),
            "logits": _max_diff(siglip.logits(params, img, txt), ref["logits_per_image"]),
            "probs": _max_diff(siglip.probabilities(params, img, txt), ref["probs"]),
            "text_projected": _max_diff(taux["projected"], ref["text_projected"]),
        }
        if seed == 0:  # every layer's tokens, relative to their size
            for name, aux in (("image", iaux), ("text", taux)):
                want = ref[f"{name}_tokens"]
                diffs[f"{name}_tokens"] = _max_diff(aux["tokens"], want) / np.abs(want).max()
        print(case, seed, {k: f"{v:.1e}" for k, v in diffs.items()})
        assert max(diffs.values()) < LIVE_TOL, diffs
        assert 0.02 < ref["probs"].mean() < 0.98  # the perturbed decision is not saturated

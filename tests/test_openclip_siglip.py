"""open_clip's own SigLIP checkpoints (jaxplain.models.openclip_convert) through ``jaxplain.load``.

Two tiers:

* default (no torch): the golden directory ``tests/fixtures/openclip-siglip`` (a tiny open_clip SigLIP written by
  ``tests/fixtures/make_openclip_siglip_fixtures.py``, with the PyTorch forward's outputs on 2 images and 3 texts):
  ``jaxplain.load`` of it must give the same pixels and token ids, embeddings, logits and sigmoid probabilities
  within 1e-5; the config mapping of open_clip's real SigLIP configs, the key layouts and every refusal are
  checked too;
* ``reference`` (needs torch): the independent PyTorch forward of that script (timm's ViT trunk with its MAP head
  and exact GELU, open_clip's bidirectional text tower pooled at its last position with a biased projection) at
  ViT-B/16 SigLIP widths, random perturbed weights, written as an open_clip directory and loaded by
  ``jaxplain.load``: embeddings and probabilities within 1e-4. The same weights through transformers'
  ``SiglipModel`` agree with it when it is told the exact GELU, and differ by more than 1e-4 under its tanh GELU.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

import jaxplain
from jaxplain.data.siglip_inputs import SiglipImageProcessing
from jaxplain.errors import CheckpointError, InputError
from jaxplain.models import siglip
from jaxplain.models.family import SIGLIP
from jaxplain.models.openclip_convert import (
    CONFIG_FILE,
    TIMM_SIGLIP_TRUNKS,
    WEIGHTS_FILE,
    SiglipLayout,
    clean_text,
    expected_openclip_siglip_keys,
    params_from_openclip_siglip_state,
    read_openclip_siglip_checkpoint,
    siglip_config_from_openclip_dict,
)
from tests.conftest import FIXTURES

GOLDEN = FIXTURES / "openclip-siglip"
GOLDEN_TOL = 1e-5
LIVE_TOL = 1e-4


def _diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


@pytest.fixture(scope="module")
def golden():
    ref = dict(np.load(GOLDEN / "reference.npz", allow_pickle=False))
    meta = json.loads((GOLDEN / "reference.json").read_text())
    return jaxplain.load(GOLDEN), ref, meta


@pytest.fixture(scope="module")
def golden_state():
    from safetensors.numpy import load_file

    return load_file(str(GOLDEN / WEIGHTS_FILE))


def _copy_golden(tmp_path, config: dict | None = None, state: dict | None = None, tokenizer: bool = True):
    from safetensors.numpy import save_file

    out = tmp_path / "oc"
    out.mkdir()
    for f in GOLDEN.iterdir():
        if f.suffix in (".model", ".json") and f.name not in ("reference.json",):
            if tokenizer or f.name == CONFIG_FILE:
                shutil.copyfile(f, out / f.name)
    if config is not None:
        (out / CONFIG_FILE).write_text(json.dumps(config))
    if state is None:
        shutil.copyfile(GOLDEN / WEIGHTS_FILE, out / WEIGHTS_FILE)
    else:
        save_file({k: np.array(v, order="C") for k, v in state.items()}, str(out / WEIGHTS_FILE))
    return out


# --- the golden fixture --------------------------------------------------------------------------------------


def test_golden_loads_as_a_siglip_model(golden):
    model, ref, meta = golden
    assert model.family is SIGLIP and model.decision == "sigmoid"
    v, t = model.config.vision, model.config.text
    assert (v.hidden_size, v.num_heads, v.num_layers, v.patch_size, v.image_size, v.hidden_act) == (
        16, 2, 2, 4, 16, "gelu",
    )  # fmt: skip
    assert (t.hidden_size, t.num_layers, t.max_positions, t.vocab_size, t.hidden_act, t.layer_norm_eps) == (
        16, 2, 16, 160, "gelu", 1e-6,
    )  # fmt: skip
    assert isinstance(model.processing, SiglipImageProcessing)
    assert (model.processing.height, model.processing.mean, model.processing.resample) == (16, (0.5,) * 3, 3)
    # the pixels and ids the torch forward saw, made by jaxplain from the same images and texts
    pixels = model.preprocess([FIXTURES / "images" / n for n in meta["images"]])
    assert _diff(pixels, ref["pixels"]) < 1e-6
    np.testing.assert_array_equal(model.tokenize(meta["texts"]), ref["ids"])


def test_golden_embeddings_logits_probabilities(golden):
    model, ref, _ = golden
    u, v = model.encode_pixels(ref["pixels"]), model.encode_ids(ref["ids"])
    assert _diff(u, ref["image_embeds"]) < GOLDEN_TOL
    assert _diff(v, ref["text_embeds"]) < GOLDEN_TOL
    img, aux_i = siglip.image_forward(model.params, jnp.asarray(ref["pixels"]), model.config)
    txt, aux_t = siglip.text_forward(model.params, jnp.asarray(ref["ids"]), model.config)
    assert _diff(aux_i["projected"], ref["image_features"]) < GOLDEN_TOL
    assert _diff(aux_t["projected"], ref["text_features"]) < GOLDEN_TOL
    scale = model.logit_scale
    assert _diff(siglip.logits(model.params, img, txt), ref["logits"]) < GOLDEN_TOL * scale
    assert _diff(siglip.probabilities(model.params, img, txt), ref["probs"]) < GOLDEN_TOL
    # the probabilities are spread out, so the comparison says something
    assert ref["probs"].min() < 0.3 and ref["probs"].max() > 0.05


def test_golden_bfloat16_keeps_the_decision_in_float32(golden):
    model, ref, _ = golden
    half = jaxplain.load(GOLDEN, dtype="bfloat16")
    assert half.params["vision"]["layers"]["attn"]["q"]["kernel"].dtype == jnp.bfloat16
    assert half.params["logit_bias"].dtype == jnp.float32 and half.logit_bias == model.logit_bias
    assert half.fingerprint == model.fingerprint
    assert _diff(half.encode_pixels(ref["pixels"]), ref["image_embeds"]) < 0.05


def test_key_layout_is_open_clips(golden, golden_state):
    model, _, _ = golden
    keys = expected_openclip_siglip_keys(model.config)
    assert sorted(keys) == sorted(golden_state)
    for key in (
        "visual.trunk.patch_embed.proj.bias",
        "visual.trunk.pos_embed",
        "visual.trunk.blocks.1.attn.qkv.weight",
        "visual.trunk.attn_pool.latent",
        "visual.trunk.attn_pool.kv.weight",
        "text.transformer.resblocks.0.attn.in_proj_weight",
        "text.text_projection.bias",
        "logit_bias",
    ):
        assert key in keys


def test_text_tower_prefix_and_scalar_shapes(golden, golden_state, tmp_path):
    """open_clip's CLIP class (custom_text false) keeps the text tower at the top level; nonscalar_logit_scale
    stores the temperature and bias as [1]: the same model either way."""
    model, ref, _ = golden
    cfg = json.loads((GOLDEN / CONFIG_FILE).read_text())
    cfg["model_cfg"].update(custom_text=False, nonscalar_logit_scale=True)
    state = {k.removeprefix("text."): v for k, v in golden_state.items()}
    state["logit_scale"], state["logit_bias"] = state["logit_scale"].reshape(1), state["logit_bias"].reshape(1)
    other = jaxplain.load(_copy_golden(tmp_path, cfg, state))
    assert other.fingerprint == model.fingerprint
    np.testing.assert_array_equal(other.encode_ids(ref["ids"]), model.encode_ids(ref["ids"]))


def test_bias_free_and_absent_text_projections(golden_state):
    cfg = json.loads((GOLDEN / CONFIG_FILE).read_text())
    config, _, layout = siglip_config_from_openclip_dict(cfg)
    params = params_from_openclip_siglip_state(golden_state, config, layout)
    state = {k: v for k, v in golden_state.items() if not k.startswith("text.text_projection")}
    state["text.text_projection"] = golden_state["text.text_projection.weight"].T  # [width, embed]
    matrix = params_from_openclip_siglip_state(state, config, dataclasses.replace(layout, text_projection="matrix"))
    np.testing.assert_array_equal(matrix["text"]["head"]["kernel"], params["text"]["head"]["kernel"])
    np.testing.assert_array_equal(matrix["text"]["head"]["bias"], np.zeros(16, np.float32))
    del state["text.text_projection"]
    none = params_from_openclip_siglip_state(state, config, dataclasses.replace(layout, text_projection="none"))
    np.testing.assert_array_equal(none["text"]["head"]["kernel"], np.eye(16, dtype=np.float32))


def test_strict_tensors_are_named(golden_state, tmp_path):
    bad = dict(golden_state)
    del bad["visual.trunk.attn_pool.latent"]
    bad["visual.trunk.cls_token"] = np.zeros((1, 1, 16), np.float32)
    bad["visual.trunk.attn_pool.kv.weight"] = bad["visual.trunk.attn_pool.kv.weight"][:16]
    with pytest.raises(CheckpointError) as e:
        jaxplain.load(_copy_golden(tmp_path, state=bad))
    msg = str(e.value)
    assert WEIGHTS_FILE in msg
    for name in ("visual.trunk.attn_pool.latent", "visual.trunk.cls_token", "attn_pool.kv.weight: (16, 16)"):
        assert name in msg


def test_missing_tokenizer_names_what_to_download(tmp_path):
    with pytest.raises(CheckpointError, match=r"timm/ViT-B-16-SigLIP.*spiece\.model"):
        jaxplain.load(_copy_golden(tmp_path, tokenizer=False))


def test_read_checkpoint_and_layout():
    params, _, _, layout = read_openclip_siglip_checkpoint(GOLDEN)
    assert layout == SiglipLayout(hf_tokenizer_name="timm/ViT-B-16-SigLIP", clean="canonicalize")
    assert params["vision"]["head"]["probe"].shape == (16,) and params["logit_bias"].shape == ()
    assert params["vision"]["position_embedding"].shape == (16, 16)


# --- open_clip's text cleaning -------------------------------------------------------------------------------


def test_clean_text_modes():
    text = "  A photo_of a CAT!!  &amp;   friends "
    assert clean_text(text, "canonicalize") == "a photo of a cat friends"
    assert clean_text(text, "lower") == "a photo_of a cat!! & friends"
    assert clean_text(text, "whitespace") == "A photo_of a CAT!! & friends"
    with pytest.raises(InputError, match="clean"):
        clean_text(text, "ftfy")


def test_text_with_nothing_left_is_refused(golden):
    model, _, _ = golden
    with pytest.raises(InputError, match=r"text 1.*nothing is left"):
        model.tokenize(["a cat", "?!..."])
    assert model.tokenizer.padding_side == "right"


# --- the config mapping -------------------------------------------------------------------------------------

# open_clip's own configs (src/open_clip/model_configs/*.json), as shipped
B16_SIGLIP = {
    "embed_dim": 768,
    "init_logit_bias": -10,
    "custom_text": True,
    "vision_cfg": {
        "image_size": 224,
        "timm_model_name": "vit_base_patch16_siglip_224",
        "timm_model_pretrained": False,
        "timm_pool": "map",
        "timm_proj": "none",
    },
    "text_cfg": {
        "context_length": 64,
        "vocab_size": 32000,
        "hf_tokenizer_name": "timm/ViT-B-16-SigLIP",
        "tokenizer_kwargs": {"clean": "canonicalize"},
        "width": 768,
        "heads": 12,
        "layers": 12,
        "no_causal_mask": True,
        "proj_bias": True,
        "pool_type": "last",
        "norm_kwargs": {"eps": 1e-6},
    },
}
PREPROCESS = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic", "resize_mode": "squash"}


def _cfg(**changes) -> dict:
    m = copy.deepcopy(B16_SIGLIP)
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        target = m
        for p in parents:
            target = target[p]
        if value is None:
            target.pop(leaf, None)
        else:
            target[leaf] = value
    return {"model_cfg": m, "preprocess_cfg": PREPROCESS}


def test_vit_b_16_siglip_config():
    config, processing, layout = siglip_config_from_openclip_dict(_cfg())
    v, t = config.vision, config.text
    assert (v.hidden_size, v.num_layers, v.num_heads, v.intermediate_size, v.patch_size, v.image_size) == (
        768, 12, 12, 3072, 16, 224,
    )  # fmt: skip
    assert (v.hidden_act, v.layer_norm_eps, v.num_positions) == ("gelu", 1e-6, 196)
    assert (t.hidden_size, t.num_heads, t.intermediate_size, t.max_positions, t.vocab_size) == (
        768,
        12,
        3072,
        64,
        32000,
    )
    assert (t.hidden_act, t.layer_norm_eps, t.projection_size) == ("gelu", 1e-6, 768)
    assert processing == SiglipImageProcessing(height=224, width=224)
    assert layout == SiglipLayout("text.", "linear", (), "timm/ViT-B-16-SigLIP", "canonicalize")


@pytest.mark.parametrize(
    ("trunk", "text_act", "vision"),
    [
        # SigLIP 2 B/16: timm's trunk keeps exact GELU, open_clip's text tower is told the tanh form
        ("vit_base_patch16_siglip_384", {"approximate": "tanh"}, (768, 12, 3072, 16, 384, "gelu")),
        ("vit_base_patch32_siglip_256", None, (768, 12, 3072, 32, 256, "gelu_pytorch_tanh")),
        ("vit_large_patch16_siglip_512", None, (1024, 24, 4096, 16, 512, "gelu_pytorch_tanh")),
        ("vit_so400m_patch14_siglip_384", None, (1152, 27, 4304, 14, 384, "gelu")),
        ("vit_so400m_patch16_siglip_256", {"approximate": "tanh"}, (1152, 27, 4304, 16, 256, "gelu_pytorch_tanh")),
    ],
)
def test_timm_trunks_and_activations(trunk, text_act, vision):
    width, size = vision[0], vision[4]
    d = _cfg(embed_dim=width, vision_cfg__timm_model_name=trunk, vision_cfg__image_size=size)
    d["model_cfg"]["text_cfg"].update(width=width, heads=16, act_kwargs=text_act)
    config, _, _ = siglip_config_from_openclip_dict(d)
    v = config.vision
    assert (v.hidden_size, v.num_layers, v.intermediate_size, v.patch_size, v.image_size, v.hidden_act) == vision
    assert config.text.hidden_act == ("gelu_pytorch_tanh" if text_act else "gelu")
    assert TIMM_SIGLIP_TRUNKS[trunk][:2] == vision[:2]


def test_giant_text_projects_into_the_image_width():
    d = _cfg(embed_dim=1536, vision_cfg__timm_model_name="vit_giantopt_patch16_siglip_256", vision_cfg__image_size=256)
    d["model_cfg"]["text_cfg"].update(width=1152, heads=16, layers=27, mlp_ratio=3.7362)
    config, _, _ = siglip_config_from_openclip_dict(d)
    assert (config.vision.hidden_size, config.vision.num_layers, config.text.hidden_size) == (1536, 40, 1152)
    assert (config.text.intermediate_size, config.text.projection_size, config.embed_dim) == (4304, 1536, 1536)


def test_no_text_projection_and_shortest_resize():
    d = _cfg(text_cfg__proj_type="none", text_cfg__proj_bias=None)
    d["preprocess_cfg"] = {"resize_mode": "shortest"}
    _, processing, layout = siglip_config_from_openclip_dict(d)
    assert layout.text_projection == "none" and processing.shortest_edge == 224 and processing.crop == (224, 224)


SIGLIP_REFUSED = [
    ({"vision_cfg__timm_model_name": "convnext_base"}, "timm_model_name"),
    ({"vision_cfg__timm_model_name": "vit_base_patch16_siglip_gap_224"}, "timm_model_name"),
    ({"vision_cfg__timm_model_name": "naflexvit_base_patch16_siglip"}, "timm_model_name"),
    ({"vision_cfg__timm_pool": "avg"}, "timm_pool"),
    ({"vision_cfg__timm_pool": None}, "timm_pool"),
    ({"vision_cfg__timm_proj": "linear"}, "timm_proj"),
    ({"vision_cfg__image_size": 256}, "vision_cfg.image_size"),
    ({"vision_cfg__timm_model_kwargs": {"class_token": True}}, "timm_model_kwargs.class_token"),
    ({"vision_cfg__timm_model_kwargs": {"act_layer": "quick_gelu"}}, "act_layer"),
    ({"vision_cfg__timm_model_kwargs": {"num_heads": 5}}, "divisible"),
    ({"vision_cfg__some_new_setting": 1}, "some_new_setting"),
    ({"init_logit_bias": None}, "init_logit_bias"),
    ({"embed_dim": 512}, "embed_dim"),
    ({"multimodal_cfg": {"width": 768}}, "multimodal_cfg"),
    ({"text_cfg__no_causal_mask": False}, "no_causal_mask"),
    ({"text_cfg__pool_type": "argmax"}, "pool_type"),
    ({"text_cfg__hf_model_name": "google/mt5-base"}, "hf_model_name"),
    ({"text_cfg__embed_cls": True}, "embed_cls"),
    ({"text_cfg__act_kwargs": {"approximate": "erf"}}, "act_kwargs"),
    ({"text_cfg__tokenizer_kwargs": {"language": "de"}}, "tokenizer_kwargs.language"),
    ({"text_cfg__tokenizer_kwargs": {"clean": "ftfy"}}, "clean"),
    ({"text_cfg__proj_type": "mlp"}, "proj_type"),
    ({"text_cfg__proj_type": "none", "text_cfg__width": 512, "text_cfg__heads": 8}, "proj_type"),
    ({"text_cfg__width": 770}, "text_cfg.width"),
    ({"quick_gelu": True, "text_cfg__act_kwargs": {"approximate": "tanh"}}, "QuickGELU"),
]


@pytest.mark.parametrize(
    ("changes", "named"), SIGLIP_REFUSED, ids=[",".join(f"{k}={v!r}" for k, v in c.items()) for c, _ in SIGLIP_REFUSED]
)
def test_unsupported_siglip_configs_are_refused_by_name(changes, named):
    with pytest.raises(CheckpointError, match=named.replace(".", r"\.")):
        siglip_config_from_openclip_dict(_cfg(**changes), source="x/open_clip_config.json")


def test_refusals_reach_load(tmp_path):
    cfg = json.loads((GOLDEN / CONFIG_FILE).read_text())
    cfg["model_cfg"]["vision_cfg"]["timm_model_name"] = "convnext_tiny"
    with pytest.raises(CheckpointError, match=r"open_clip_config\.json.*timm_model_name.*ConvNeXt"):
        jaxplain.load(_copy_golden(tmp_path, cfg))


# --- the reference tier: the PyTorch forward at ViT-B/16 SigLIP widths -----------------------------------------


@pytest.fixture(scope="module")
def b16(tmp_path_factory):
    """The torch model at ViT-B/16 SigLIP widths, its directory loaded by jaxplain, and shared inputs."""
    pytest.importorskip("torch")
    from tests.fixtures.make_openclip_siglip_fixtures import B16, build_model, openclip_config, write_directory

    model = build_model(B16, seed=3)
    out = write_directory(tmp_path_factory.mktemp("oc-b16"), model, openclip_config(B16))
    rng = np.random.default_rng(0)
    pixels = rng.uniform(-1, 1, (2, 3, 224, 224)).astype(np.float32)
    ids = np.ones((3, 64), np.int32)  # </s> pads, as SigLIP's texts are
    for i, n in enumerate((64, 9, 30)):
        ids[i, :n] = rng.integers(2, 32000, n)
    return model, jaxplain.load(out), pixels, ids, model.outputs(pixels, ids)


@pytest.mark.reference
def test_matches_the_torch_forward_at_b16_widths(b16):
    torch_model, model, pixels, ids, want = b16
    v, t = model.config.vision, model.config.text
    assert (v.hidden_size, v.num_heads, v.patch_size, v.image_size, v.num_layers, v.hidden_act) == (
        768, 12, 16, 224, 2, "gelu",
    )  # fmt: skip
    assert (t.hidden_size, t.vocab_size, t.max_positions, model.embed_dim) == (768, 32000, 64, 768)
    img, aux_i = siglip.image_forward(model.params, jnp.asarray(pixels), model.config)
    txt, aux_t = siglip.text_forward(model.params, jnp.asarray(ids), model.config)
    assert _diff(aux_i["projected"], want["image_features"]) < LIVE_TOL * np.abs(want["image_features"]).max()
    assert _diff(aux_t["projected"], want["text_features"]) < LIVE_TOL * np.abs(want["text_features"]).max()
    assert _diff(model.encode_pixels(pixels), want["image_embeds"]) < LIVE_TOL
    assert _diff(model.encode_ids(ids), want["text_embeds"]) < LIVE_TOL
    assert _diff(siglip.probabilities(model.params, img, txt), want["probs"]) < LIVE_TOL
    assert math.isclose(model.logit_bias, torch_model.logit_bias.item(), rel_tol=1e-6)


def _siglipmodel(model, act: str):
    """transformers' SiglipModel holding the loaded weights (jaxplain's own SiglipModel converter), both towers
    told the activation ``act``."""
    import torch
    from transformers import SiglipConfig, SiglipModel

    from jaxplain.models.siglip_convert import state_dict_from_params

    d = model.config.to_hf_dict()
    d["text_config"]["hidden_act"] = d["vision_config"]["hidden_act"] = act
    hf = SiglipModel(SiglipConfig.from_dict(d)).eval()
    state = state_dict_from_params(jax_to_numpy(model.params), model.config)
    missing, unexpected = hf.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
    assert not unexpected and all(k.endswith("position_ids") for k in missing)
    return hf


def jax_to_numpy(tree):
    import jax

    return jax.tree.map(lambda x: np.asarray(x, np.float32), tree)


@pytest.mark.reference
def test_tanh_gelu_would_not_be_this_model(b16):
    """transformers' SiglipModel agrees with the torch forward when told the exact GELU, and not under the tanh
    GELU its SigLIP checkpoints declare: the activation per tower is what makes this open_clip's model."""
    import torch

    _, model, pixels, ids, want = b16
    got = {}
    for act in ("gelu", "gelu_pytorch_tanh"):
        with torch.no_grad():
            out = _siglipmodel(model, act)(input_ids=torch.from_numpy(ids.astype(np.int64)),
                                           pixel_values=torch.from_numpy(pixels))  # fmt: skip
        got[act] = (out.image_embeds.numpy(), out.text_embeds.numpy(), torch.sigmoid(out.logits_per_image).numpy())
    exact, tanh = got["gelu"], got["gelu_pytorch_tanh"]
    assert _diff(exact[0], want["image_embeds"]) < LIVE_TOL and _diff(exact[1], want["text_embeds"]) < LIVE_TOL
    assert _diff(exact[2], want["probs"]) < LIVE_TOL
    # measured: 6.3e-4 (images), 1.3e-4 (texts), 2.6e-4 (probabilities), where jaxplain is within 5e-7
    for got_tanh, key in zip(tanh, ("image_embeds", "text_embeds", "probs")):
        assert _diff(got_tanh, want[key]) > LIVE_TOL, key

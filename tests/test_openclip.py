"""OpenCLIP native checkpoints (jaxplain.models.openclip_convert) on jaxplain's CLIP towers.

Two tiers:

* default (no torch): the tiny Hugging Face CLIP fixture (``tests/fixtures/tiny-clip``, itself proved against
  transformers' ``CLIPModel``) is rewritten by hand, here, into OpenCLIP's directory layout
  (``open_clip_config.json`` + ``open_clip_model.safetensors``) and read back with
  :func:`read_openclip_checkpoint`: image and text embeddings must equal those of ``jaxplain.load`` of the
  fixture; ``jaxplain.load`` of that directory (a CLIP-family model) gives the fixture's pixels, ids, embeddings
  and fingerprinted weights, the bundled CLIP BPE gives transformers' CLIPTokenizer ids where the directory has no
  tokenizer, and the config mapping and every refusal (tokenizers, other architectures, tensors) are checked too;
* ``reference`` (needs torch): an independent PyTorch forward of OpenCLIP's ViT CLIP, written here from its
  architecture (``nn.MultiheadAttention`` with the stacked in-projection, class token, ``ln_pre``/``ln_post``,
  ``proj``, causal text tower pooled at the highest id), its module names giving OpenCLIP's key layout. Random
  perturbed weights at ViT-B/32 and ViT-H/14 widths, QuickGELU and exact GELU, converted and compared with
  ``clip.image_forward``/``text_forward`` within 1e-4.
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
from jaxplain.data.images import OPENAI_CLIP_MEAN
from jaxplain.data.tokenize import bundled_bpe_dir
from jaxplain.errors import CheckpointError
from jaxplain.models import clip
from jaxplain.models.bundle import fingerprint
from jaxplain.models.family import CLIP
from jaxplain.models.loading import read_weights
from jaxplain.models.openclip_convert import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    config_from_openclip_dict,
    expected_openclip_keys,
    params_from_openclip_state,
    read_openclip_checkpoint,
    read_openclip_config,
)
from tests.conftest import FIXTURES, TINY

LIVE_TOL = 1e-4
TEXTS = ["a photo of a cat", "a diagram of two towers", "A PULLOVER, knitted.", "sandal"]


# --- the tiny fixture, rewritten into OpenCLIP's layout by hand ------------------------------------------------


def hf_to_openclip(state: dict[str, np.ndarray], hf: dict) -> dict[str, np.ndarray]:
    """A Hugging Face ``CLIPModel`` state dict in OpenCLIP's key layout (written independently of the module
    under test: the mapping follows OpenCLIP's module names)."""
    out = {
        "logit_scale": np.asarray(state["logit_scale"]).reshape(()),  # a 0-d parameter in OpenCLIP
        "token_embedding.weight": state["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": state["text_model.embeddings.position_embedding.weight"],
        "ln_final.weight": state["text_model.final_layer_norm.weight"],
        "ln_final.bias": state["text_model.final_layer_norm.bias"],
        "text_projection": state["text_projection.weight"].T,  # OpenCLIP keeps [width, embed_dim]
        "visual.conv1.weight": state["vision_model.embeddings.patch_embedding.weight"],
        "visual.class_embedding": state["vision_model.embeddings.class_embedding"],
        "visual.positional_embedding": state["vision_model.embeddings.position_embedding.weight"],
        "visual.ln_pre.weight": state["vision_model.pre_layrnorm.weight"],
        "visual.ln_pre.bias": state["vision_model.pre_layrnorm.bias"],
        "visual.ln_post.weight": state["vision_model.post_layernorm.weight"],
        "visual.ln_post.bias": state["vision_model.post_layernorm.bias"],
        "visual.proj": state["visual_projection.weight"].T,
    }
    for hf_tower, oc_prefix, cfg in (("text_model", "", "text_config"), ("vision_model", "visual.", "vision_config")):
        for i in range(hf[cfg]["num_hidden_layers"]):
            a, b = f"{hf_tower}.encoder.layers.{i}", f"{oc_prefix}transformer.resblocks.{i}"
            for x in ("weight", "bias"):
                out[f"{b}.ln_1.{x}"] = state[f"{a}.layer_norm1.{x}"]
                out[f"{b}.ln_2.{x}"] = state[f"{a}.layer_norm2.{x}"]
                qkv = [state[f"{a}.self_attn.{n}_proj.{x}"] for n in "qkv"]
                out[f"{b}.attn.in_proj_{x}"] = np.concatenate(qkv, axis=0)
                out[f"{b}.attn.out_proj.{x}"] = state[f"{a}.self_attn.out_proj.{x}"]
                out[f"{b}.mlp.c_fc.{x}"] = state[f"{a}.mlp.fc1.{x}"]
                out[f"{b}.mlp.c_proj.{x}"] = state[f"{a}.mlp.fc2.{x}"]
    return {k: np.array(v, dtype=np.float32, order="C") for k, v in out.items()}


def tiny_openclip_config() -> dict:
    """The tiny fixture's config as an ``open_clip_config.json`` (its preprocessing too)."""
    hf = json.loads((TINY / "config.json").read_text())
    pre = json.loads((TINY / "preprocessor_config.json").read_text())
    t, v = hf["text_config"], hf["vision_config"]
    return {
        "model_cfg": {
            "embed_dim": hf["projection_dim"],
            "quick_gelu": v["hidden_act"] == "quick_gelu",
            "init_logit_scale": hf["logit_scale_init_value"],
            "vision_cfg": {
                "image_size": v["image_size"],
                "layers": v["num_hidden_layers"],
                "width": v["hidden_size"],
                "head_width": v["hidden_size"] // v["num_attention_heads"],
                "mlp_ratio": v["intermediate_size"] / v["hidden_size"],
                "patch_size": v["patch_size"],
            },
            "text_cfg": {
                "context_length": t["max_position_embeddings"],
                "vocab_size": t["vocab_size"],
                "width": t["hidden_size"],
                "heads": t["num_attention_heads"],
                "layers": t["num_hidden_layers"],
                "mlp_ratio": t["intermediate_size"] / t["hidden_size"],
            },
        },
        "preprocess_cfg": {
            "mean": pre["image_mean"],
            "std": pre["image_std"],
            "interpolation": "bicubic",
            "resize_mode": "shortest",
        },
    }


@pytest.fixture(scope="module")
def tiny_openclip_dir(tmp_path_factory):
    from safetensors.numpy import save_file

    out = tmp_path_factory.mktemp("openclip-tiny")
    hf = json.loads((TINY / "config.json").read_text())
    save_file(hf_to_openclip(read_weights(TINY), hf), str(out / WEIGHTS_FILE))
    (out / CONFIG_FILE).write_text(json.dumps(tiny_openclip_config(), indent=2))
    for name in TINY_TOKENIZER:  # hub repos often ship the Hugging Face tokenizer files beside the open_clip ones
        shutil.copyfile(TINY / name, out / name)
    return out


TINY_TOKENIZER = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json")


def _write_openclip(out, config: dict, state: dict, tokenizer: bool = False):
    from safetensors.numpy import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file({k: np.array(v, order="C") for k, v in state.items()}, str(out / WEIGHTS_FILE))
    (out / CONFIG_FILE).write_text(json.dumps(config))
    for name in TINY_TOKENIZER if tokenizer else ():
        shutil.copyfile(TINY / name, out / name)
    return out


def _tiny_state() -> dict[str, np.ndarray]:
    return hf_to_openclip(read_weights(TINY), json.loads((TINY / "config.json").read_text()))


def test_tiny_fixture_round_trip_equals_hf_load(tiny_openclip_dir, tiny_model):
    params, config, processing = read_openclip_checkpoint(tiny_openclip_dir)
    # the same model; OpenCLIP's tokenizer pads with 0 where the fixture's pads with its end-of-text id
    assert config == dataclasses.replace(
        tiny_model.config, text=dataclasses.replace(tiny_model.config.text, pad_token_id=0)
    )
    assert processing == tiny_model.processing
    images = [FIXTURES / "images" / n for n in ("01_rgb.png", "05_cmyk.jpg", "06_tall.png")]
    pixels = jnp.asarray(tiny_model.preprocess(images))
    ids = jnp.asarray(tiny_model.tokenize(TEXTS))
    want_img, want_aux = clip.image_forward(tiny_model.params, pixels, tiny_model.config, collect=True)
    got_img, got_aux = clip.image_forward(params, pixels, config, collect=True)
    want_txt, _ = clip.text_forward(tiny_model.params, ids, tiny_model.config)
    got_txt, _ = clip.text_forward(params, ids, config)
    np.testing.assert_array_equal(np.asarray(got_img), np.asarray(want_img))
    np.testing.assert_array_equal(np.asarray(got_txt), np.asarray(want_txt))
    np.testing.assert_array_equal(np.asarray(got_aux["attention"]), np.asarray(want_aux["attention"]))
    np.testing.assert_allclose(float(clip.logit_scale(params)), float(clip.logit_scale(tiny_model.params)))
    # the parity figure of the fixture against transformers (tests/fixtures/reference.npz) carries over
    ref = np.load(FIXTURES / "reference.npz")
    got = clip.image_forward(params, jnp.asarray(ref["pixels"]), config)[0]
    np.testing.assert_allclose(np.asarray(got), ref["image_embeds"], atol=1e-5)
    got = clip.text_forward(params, jnp.asarray(ref["input_ids"]), config)[0]
    np.testing.assert_allclose(np.asarray(got), ref["text_embeds"], atol=1e-5)


# --- through jaxplain.load ------------------------------------------------------------------------------------


def test_load_gives_the_tiny_models_outputs(tiny_openclip_dir, tiny_model):
    model = jaxplain.load(tiny_openclip_dir)
    assert model.family is CLIP and model.decision == "softmax" and model.directory == tiny_openclip_dir
    images = [FIXTURES / "images" / n for n in ("01_rgb.png", "04_gray.png", "06_tall.png")]
    np.testing.assert_array_equal(model.preprocess(images), tiny_model.preprocess(images))
    np.testing.assert_array_equal(model.tokenize(TEXTS), tiny_model.tokenize(TEXTS))
    np.testing.assert_array_equal(model.encode_images(images), tiny_model.encode_images(images))
    np.testing.assert_array_equal(model.encode_texts(TEXTS), tiny_model.encode_texts(TEXTS))
    assert model.logit_scale == tiny_model.logit_scale and model.logit_bias == 0.0
    # the same weights, preprocessing and tokenizer; the config differs only in the pad id (OpenCLIP pads with 0)
    want = fingerprint(
        model.config, tiny_model.params, processing=tiny_model.processing, tokenizer=tiny_model.tokenizer
    )
    assert model.fingerprint == want
    assert model.config == dataclasses.replace(
        tiny_model.config, text=dataclasses.replace(tiny_model.config.text, pad_token_id=0)
    )
    half = jaxplain.load(tiny_openclip_dir, dtype="bfloat16")
    assert half.params["vision"]["layers"]["attn"]["q"]["kernel"].dtype == jnp.bfloat16
    assert half.fingerprint == model.fingerprint
    assert np.abs(half.encode_texts(TEXTS) - model.encode_texts(TEXTS)).max() < 0.05


def test_bundled_clip_bpe_when_the_directory_has_none(tmp_path):
    """open_clip's default tokenizer is CLIP's BPE at the config's context: jaxplain's bundled copy gives the ids
    transformers' CLIPTokenizer gives (lowercased, white space cleaned, truncated keeping the end of text)."""
    from transformers import CLIPTokenizer

    cfg = tiny_openclip_config()
    cfg["model_cfg"]["text_cfg"]["vocab_size"] = 49408
    state = _tiny_state()
    state["token_embedding.weight"] = np.random.default_rng(0).normal(0, 0.1, (49408, 32)).astype(np.float32)
    model = jaxplain.load(_write_openclip(tmp_path / "oc", cfg, state))
    texts = ["A photo of a CAT.", "  two   towers,\tdrawn  ", "naïve café, 東京", "sandal " * 80]
    with pytest.warns(UserWarning, match="text 3.*truncated"):
        got = model.tokenize(texts)
    hf = CLIPTokenizer.from_pretrained(str(bundled_bpe_dir()))
    want = hf(texts, padding="max_length", max_length=77, truncation=True).input_ids
    np.testing.assert_array_equal(got, np.asarray(want))
    assert got.shape == (4, 77) and (got[:, 0] == 49406).all() and got[3, -1] == 49407
    assert model.tokenizer.vocab_size == 49408 and model.config.text.eos_token_id == 49407
    ids = jnp.asarray(got)
    want_txt = clip.text_forward(model.params, ids, model.config)[0]
    np.testing.assert_allclose(model.encode_ids(got), np.asarray(want_txt), atol=1e-6)


def test_tokenizer_refusals_name_what_is_needed(tmp_path):
    state = _tiny_state()
    cfg = tiny_openclip_config()
    cfg["model_cfg"]["text_cfg"]["hf_tokenizer_name"] = "org/their-tokenizer"
    with pytest.raises(CheckpointError, match=r"hf_tokenizer_name.*org/their-tokenizer.*tokenizer\.json"):
        jaxplain.load(_write_openclip(tmp_path / "named", cfg, state))
    assert jaxplain.load(_write_openclip(tmp_path / "named-here", cfg, state, tokenizer=True)).tokenizer.eos_id == 1513
    with pytest.raises(CheckpointError, match=r"no tokenizer files.*1514 tokens.*not CLIP's standard"):
        jaxplain.load(_write_openclip(tmp_path / "none", tiny_openclip_config(), state))
    # a tokenizer whose end of text is not the highest id, where the text tower pools
    big = tiny_openclip_config()
    big["model_cfg"]["text_cfg"]["vocab_size"] = 1600
    grown = dict(state, **{"token_embedding.weight": np.zeros((1600, 32), np.float32)})
    with pytest.raises(CheckpointError, match=r"end-of-text id is 1513.*highest id, 1599"):
        jaxplain.load(_write_openclip(tmp_path / "grown", big, grown, tokenizer=True))


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        (("vision_cfg", "layers"), [3, 4, 6, 3], "ModifiedResNet"),
        (("vision_cfg", "timm_model_name"), "convnext_base", "ConvNeXt"),
        (("vision_cfg", "attentional_pool"), True, "attentional_pool"),
        (("multimodal_cfg",), {"width": 512, "layers": 12}, "multimodal_cfg"),
    ],
    ids=["resnet", "convnext", "attentional_pool", "coca"],
)
def test_load_refuses_other_architectures_by_name(tmp_path, path, value, named):
    cfg = tiny_openclip_config()
    target = cfg["model_cfg"]
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(CheckpointError, match=rf"open_clip_config\.json.*{named}"):
        jaxplain.load(_write_openclip(tmp_path / "oc", cfg, _tiny_state(), tokenizer=True))


def test_load_refuses_leftover_tensors_by_name(tmp_path):
    state = dict(_tiny_state(), logit_bias=np.zeros((), np.float32))
    with pytest.raises(CheckpointError, match=r"(?s)open_clip_model\.safetensors.*left-over.*logit_bias"):
        jaxplain.load(_write_openclip(tmp_path / "oc", tiny_openclip_config(), state, tokenizer=True))


def test_config_mapping(tiny_openclip_dir):
    config, processing = read_openclip_config(tiny_openclip_dir)
    assert (config.vision.num_heads, config.vision.intermediate_size, config.vision.hidden_act) == (4, 64, "quick_gelu")
    assert (config.text.eos_token_id, config.text.bos_token_id, config.text.max_positions) == (1513, 1512, 77)
    assert processing.shortest_edge == 32 and processing.crop == (32, 32)

    h14 = {
        "model_cfg": {
            "embed_dim": 1024,
            "vision_cfg": {"image_size": 224, "layers": 32, "width": 1280, "head_width": 80, "patch_size": 14},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 1024, "heads": 16, "layers": 24},
        },
        "preprocess_cfg": {"resize_mode": "squash", "interpolation": "bilinear", "mean": [0.5] * 3, "std": 0.5},
    }
    config, processing = config_from_openclip_dict(h14)
    v, t = config.vision, config.text
    assert (v.num_heads, v.intermediate_size, v.hidden_act, v.grid_size, v.layer_norm_eps) == (
        16,
        5120,
        "gelu",
        16,
        1e-5,
    )
    assert (t.num_heads, t.intermediate_size, t.eos_token_id, t.num_layers) == (16, 4096, 49407, 24)
    assert config.projection_dim == 1024 and math.isclose(config.logit_scale_init, math.log(1 / 0.07))
    assert (processing.shortest_edge, processing.height, processing.width) == (None, 224, 224)
    assert processing.mean == (0.5, 0.5, 0.5) and processing.std == (0.5, 0.5, 0.5) and processing.resample == 2


REFUSED = [
    (("vision_cfg", "timm_model_name"), "vit_base_patch16_224", "timm_model_name"),
    (("text_cfg", "hf_model_name"), "xlm-roberta-base", "hf_model_name"),
    (("vision_cfg", "layers"), [3, 4, 6, 3], "vision_cfg.layers"),
    (("vision_cfg", "attentional_pool"), True, "attentional_pool"),
    (("vision_cfg", "no_ln_pre"), True, "no_ln_pre"),
    (("vision_cfg", "final_ln_after_pool"), True, "vision_cfg.final_ln_after_pool"),
    (("text_cfg", "final_ln_after_pool"), True, "text_cfg.final_ln_after_pool"),
    (("vision_cfg", "output_tokens"), True, "output_tokens"),
    (("vision_cfg", "pool_type"), "avg", "vision_cfg.pool_type"),
    (("text_cfg", "pool_type"), "last", "text_cfg.pool_type"),
    (("text_cfg", "no_causal_mask"), True, "no_causal_mask"),
    (("text_cfg", "proj_bias"), True, "proj_bias"),
    (("vision_cfg", "ls_init_value"), 1e-5, "ls_init_value"),
    (("vision_cfg", "qk_norm"), True, "qk_norm"),
    (("vision_cfg", "norm_kwargs"), {"elementwise_affine": False}, "norm_kwargs"),
    (("vision_cfg", "act_kwargs"), {"approximate": "tanh"}, "act_kwargs"),
    (("init_logit_bias",), -10.0, "init_logit_bias"),
    (("multimodal_cfg",), {"width": 512}, "multimodal_cfg"),
    (("vision_cfg", "some_new_setting"), 1, "some_new_setting"),
    (("vision_cfg", "width"), "768", "vision_cfg.width"),
    (("vision_cfg", "head_width"), 60, "head_width"),
    (("vision_cfg", "image_size"), [224, 256], "vision_cfg.image_size"),
    (("vision_cfg", "image_size"), 36, "vision_cfg.image_size"),
    (("text_cfg", "heads"), 5, "text_cfg.heads"),
    (("quick_gelu",), "yes", "quick_gelu"),
    (("embed_dim",), 0, "embed_dim"),
]


@pytest.mark.parametrize(("path", "value", "named"), REFUSED, ids=[f"{'.'.join(p)}={v!r}" for p, v, _ in REFUSED])
def test_unsupported_variants_are_refused_by_name(path, value, named):
    d = copy.deepcopy(tiny_openclip_config())
    target = d["model_cfg"]
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(CheckpointError, match=named.replace(".", r"\.")):
        config_from_openclip_dict(d, source="x/open_clip_config.json")


@pytest.mark.parametrize(
    ("pre", "named"),
    [({"resize_mode": "longest"}, "resize_mode"), ({"size": 64}, "preprocess_cfg.size"), ({"std": [1, 0, 1]}, "std"),
     ({"interpolation": "lanczos2"}, "interpolation"), ({"crop_pct": 0.9}, "crop_pct")],
)  # fmt: skip
def test_unsupported_preprocessing_is_refused(pre, named):
    d = tiny_openclip_config()
    d["preprocess_cfg"].update(pre)
    with pytest.raises(CheckpointError, match=named):
        config_from_openclip_dict(d)


def test_accepted_neutral_settings():
    d = tiny_openclip_config()
    d["model_cfg"]["vision_cfg"].update(patch_dropout=0.5, timm_pool="avg", block_type="default", image_size=[32, 32])
    d["model_cfg"]["text_cfg"].update(pad_id=0, pool_type="argmax", norm_kwargs={"eps": 1e-6})
    d["model_cfg"]["custom_text"] = False
    config, _ = config_from_openclip_dict(d)
    assert (
        config.vision.image_size == 32 and config.text.layer_norm_eps == 1e-6 and config.vision.layer_norm_eps == 1e-5
    )


def test_strict_state_names_every_problem(tiny_openclip_dir):
    config, _ = read_openclip_config(tiny_openclip_dir)
    hf = json.loads((TINY / "config.json").read_text())
    state = hf_to_openclip(read_weights(TINY), hf)
    assert sorted(state) == sorted(expected_openclip_keys(config))
    state["attn_mask"] = np.zeros((77, 77), np.float32)  # a buffer older checkpoints carry: ignored
    params_from_openclip_state(state, config)
    bad = dict(state)
    del bad["visual.ln_pre.weight"]
    bad["logit_bias"] = np.zeros((), np.float32)
    bad["visual.transformer.resblocks.0.ls_1.gamma"] = np.zeros(32, np.float32)
    bad["visual.proj"] = bad["visual.proj"].T
    with pytest.raises(CheckpointError) as e:
        params_from_openclip_state(bad, config, source="ck")
    msg = str(e.value)
    for name in ("visual.ln_pre.weight", "logit_bias", "ls_1.gamma", "visual.proj: (24, 32)"):
        assert name in msg


def test_missing_files_are_named(tmp_path, tiny_openclip_dir):
    with pytest.raises(CheckpointError, match=CONFIG_FILE):
        read_openclip_config(tmp_path)
    (tmp_path / CONFIG_FILE).write_text((tiny_openclip_dir / CONFIG_FILE).read_text())
    (tmp_path / "open_clip_pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(CheckpointError, match=r"open_clip_pytorch_model\.bin is pickled"):
        read_openclip_checkpoint(tmp_path)
    (tmp_path / CONFIG_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot read it as JSON"):
        read_openclip_config(tmp_path)


# --- the reference tier: an independent PyTorch OpenCLIP ViT CLIP -------------------------------------------

# vision (width, layers, head_width, patch, image), text (width, heads, layers, vocab, context), embed_dim
CASES = {
    "vit-b-32": ((768, 2, 64, 32, 224), (512, 8, 1, 49408, 77), 512),
    "vit-h-14": ((1280, 1, 80, 14, 224), (1024, 16, 1, 49408, 77), 1024),
}


def torch_openclip(case: str, quick_gelu: bool, seed: int):
    """``(model, open_clip_config dict)``: a PyTorch CLIP built from OpenCLIP's architecture, module names as
    OpenCLIP's (so its ``state_dict`` has OpenCLIP's keys), every weight random and perturbed."""
    from collections import OrderedDict

    import torch
    from torch import nn

    (vw, vl, hw, patch, size), (tw, th, tl, vocab, ctx), embed = CASES[case]

    class QuickGELU(nn.Module):
        def forward(self, x):
            return x * torch.sigmoid(1.702 * x)

    class Block(nn.Module):
        def __init__(self, d, heads):
            super().__init__()
            self.ln_1 = nn.LayerNorm(d)
            self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
            self.ln_2 = nn.LayerNorm(d)
            act = QuickGELU() if quick_gelu else nn.GELU()
            self.mlp = nn.Sequential(
                OrderedDict([("c_fc", nn.Linear(d, 4 * d)), ("gelu", act), ("c_proj", nn.Linear(4 * d, d))])
            )

        def forward(self, x, mask=None):
            h = self.ln_1(x)
            x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
            return x + self.mlp(self.ln_2(x))

    class Transformer(nn.Module):
        def __init__(self, d, layers, heads):
            super().__init__()
            self.resblocks = nn.ModuleList([Block(d, heads) for _ in range(layers)])

        def forward(self, x, mask=None):
            for block in self.resblocks:
                x = block(x, mask)
            return x

    class Visual(nn.Module):
        def __init__(self):
            super().__init__()
            grid = size // patch
            self.conv1 = nn.Conv2d(3, vw, kernel_size=patch, stride=patch, bias=False)
            self.class_embedding = nn.Parameter(torch.randn(vw))
            self.positional_embedding = nn.Parameter(torch.randn(grid * grid + 1, vw))
            self.ln_pre = nn.LayerNorm(vw)
            self.transformer = Transformer(vw, vl, vw // hw)
            self.ln_post = nn.LayerNorm(vw)
            self.proj = nn.Parameter(torch.randn(vw, embed))

        def forward(self, pixels):
            x = self.conv1(pixels).flatten(2).transpose(1, 2)
            cls = self.class_embedding.expand(x.shape[0], 1, -1)
            x = self.ln_pre(torch.cat([cls, x], dim=1) + self.positional_embedding)
            x = self.ln_post(self.transformer(x))
            return x[:, 0] @ self.proj

    class CLIP(nn.Module):
        def __init__(self):
            super().__init__()
            self.visual = Visual()
            self.token_embedding = nn.Embedding(vocab, tw)
            self.positional_embedding = nn.Parameter(torch.randn(ctx, tw))
            self.transformer = Transformer(tw, tl, th)
            self.ln_final = nn.LayerNorm(tw)
            self.text_projection = nn.Parameter(torch.randn(tw, embed))
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
            mask = torch.full((ctx, ctx), float("-inf")).triu(1)
            self.register_buffer("attn_mask", mask, persistent=False)

        def encode_text(self, ids):
            x = self.token_embedding(ids) + self.positional_embedding[: ids.shape[1]]
            n = ids.shape[1]
            x = self.ln_final(self.transformer(x, self.attn_mask[:n, :n]))
            return x[torch.arange(x.shape[0]), ids.argmax(dim=-1)] @ self.text_projection

    torch.manual_seed(seed)
    model = CLIP().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_pre.weight", "ln_post.weight", "ln_final.weight")):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            elif name == "logit_scale":
                p.fill_(4.2)
            elif name in ("visual.class_embedding", "visual.positional_embedding"):
                p.copy_(torch.randn_like(p) * vw**-0.5)  # OpenCLIP's scale: the patches dominate the tokens
            elif name in ("token_embedding.weight", "positional_embedding"):
                p.copy_(torch.randn_like(p) * (0.5 if name.startswith("token") else 0.1))
            elif name == "visual.conv1.weight":
                p.copy_(torch.randn_like(p) * p[0].numel() ** -0.5)
            elif name in ("visual.proj", "text_projection"):  # [in, out]
                p.copy_(torch.randn_like(p) * p.shape[0] ** -0.5)
            else:  # torch's [out, in]; q and k larger, for sharp attention that depends on the input
                gain = 3.0 if name.endswith("in_proj_weight") else 1.0
                p.copy_(torch.randn_like(p) * gain * p.shape[1] ** -0.5)
    cfg = {
        "model_cfg": {
            "embed_dim": embed,
            "quick_gelu": quick_gelu,
            "vision_cfg": {"image_size": size, "layers": vl, "width": vw, "head_width": hw, "patch_size": patch},
            "text_cfg": {"context_length": ctx, "vocab_size": vocab, "width": tw, "heads": th, "layers": tl},
        },
        "preprocess_cfg": {"mean": list(OPENAI_CLIP_MEAN), "std": [0.3, 0.3, 0.3]},
    }
    return model, cfg


def _ids(rng, n: int, vocab: int, ctx: int) -> np.ndarray:
    """CLIP-like ids: start token, words, the end-of-text token (the highest id), then padding zeros."""
    ids = np.zeros((n, ctx), np.int64)
    for i, length in enumerate(rng.integers(1, ctx - 1, n)):
        ids[i, 0] = vocab - 2
        ids[i, 1 : length + 1] = rng.integers(0, vocab - 2, length)
        ids[i, length + 1] = vocab - 1
    ids[0, 1 : ctx - 1] = rng.integers(0, vocab - 2, ctx - 2)  # a text that fills the context
    ids[0, ctx - 1] = vocab - 1
    return ids


@pytest.mark.reference
@pytest.mark.parametrize("quick_gelu", [True, False], ids=["quick_gelu", "gelu"])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_torch_openclip_architecture(case, quick_gelu, tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.numpy import save_file

    model, cfg = torch_openclip(case, quick_gelu, seed=len(case) + quick_gelu)
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    assert "visual.transformer.resblocks.0.attn.in_proj_weight" in state and "text_projection" in state
    save_file(state, str(tmp_path / WEIGHTS_FILE))
    (tmp_path / CONFIG_FILE).write_text(json.dumps(cfg))
    params, config, _ = read_openclip_checkpoint(tmp_path)
    assert config.vision.num_heads == CASES[case][0][0] // CASES[case][0][2]

    rng = np.random.default_rng(0)
    size, (vocab, ctx) = CASES[case][0][4], CASES[case][1][3:]
    pixels = rng.normal(size=(3, 3, size, size)).astype(np.float32)
    ids = _ids(rng, 4, vocab, ctx)
    with torch.no_grad():
        want_img = model.visual(torch.from_numpy(pixels)).numpy()
        want_txt = model.encode_text(torch.from_numpy(ids)).numpy()
    img, img_aux = clip.image_forward(params, jnp.asarray(pixels), config)
    txt, txt_aux = clip.text_forward(params, jnp.asarray(ids, jnp.int32), config)
    # the unnormalised projections (OpenCLIP's encode_* outputs) and the unit embeddings
    np.testing.assert_allclose(np.asarray(img_aux["projected"]), want_img, atol=LIVE_TOL * np.abs(want_img).max())
    np.testing.assert_allclose(np.asarray(txt_aux["projected"]), want_txt, atol=LIVE_TOL * np.abs(want_txt).max())
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(np.asarray(img), unit(want_img), atol=LIVE_TOL)
    np.testing.assert_allclose(np.asarray(txt), unit(want_txt), atol=LIVE_TOL)
    scale = float(model.logit_scale.detach().exp())
    want_logits = scale * unit(want_img) @ unit(want_txt).T
    np.testing.assert_allclose(np.asarray(clip.logits(params, img, txt)), want_logits, atol=LIVE_TOL * scale)

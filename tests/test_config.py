"""Configs of the real checkpoints jaxplain supports, read from their config.json values."""

import json

import pytest

from jaxplain.errors import CheckpointError
from jaxplain.models.config import ClipConfig, config_from_hf_dict, read_config

# Tower sizes, activation and image size of the published checkpoints' config.json files; the
# end-of-text id takes both values seen in the wild (2 selects the reference's legacy argmax pooling).
REAL = {
    "openai/clip-vit-base-patch32": dict(
        text=dict(hidden_size=512, intermediate_size=2048, num_attention_heads=8, num_hidden_layers=12),
        vision=dict(
            hidden_size=768,
            intermediate_size=3072,
            num_attention_heads=12,
            num_hidden_layers=12,
            image_size=224,
            patch_size=32,
        ),
        projection_dim=512,
        act="quick_gelu",
        positions=50,
        eos=2,
    ),
    "openai/clip-vit-base-patch16": dict(
        text=dict(hidden_size=512, intermediate_size=2048, num_attention_heads=8, num_hidden_layers=12),
        vision=dict(
            hidden_size=768,
            intermediate_size=3072,
            num_attention_heads=12,
            num_hidden_layers=12,
            image_size=224,
            patch_size=16,
        ),
        projection_dim=512,
        act="quick_gelu",
        positions=197,
        eos=2,
    ),
    "openai/clip-vit-large-patch14": dict(
        text=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12),
        vision=dict(
            hidden_size=1024,
            intermediate_size=4096,
            num_attention_heads=16,
            num_hidden_layers=24,
            image_size=224,
            patch_size=14,
        ),
        projection_dim=768,
        act="quick_gelu",
        positions=257,
        eos=2,
    ),
    "openai/clip-vit-large-patch14-336": dict(
        text=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12),
        vision=dict(
            hidden_size=1024,
            intermediate_size=4096,
            num_attention_heads=16,
            num_hidden_layers=24,
            image_size=336,
            patch_size=14,
        ),
        projection_dim=768,
        act="quick_gelu",
        positions=577,
        eos=2,
    ),
    "laion/CLIP-ViT-H-14-laion2B-s32B-b79K": dict(
        text=dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24),
        vision=dict(
            hidden_size=1280,
            intermediate_size=5120,
            num_attention_heads=16,
            num_hidden_layers=32,
            image_size=224,
            patch_size=14,
        ),
        projection_dim=1024,
        act="gelu",
        positions=257,
        eos=49407,
    ),
}


def hf_dict(spec):
    return {
        "model_type": "clip",
        "projection_dim": spec["projection_dim"],
        "text_config": {**spec["text"], "hidden_act": spec["act"], "eos_token_id": spec["eos"]},
        "vision_config": {**spec["vision"], "hidden_act": spec["act"]},
    }


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_configs(name):
    spec = REAL[name]
    cfg = config_from_hf_dict(hf_dict(spec))
    assert cfg.vision.num_positions == spec["positions"]
    assert cfg.projection_dim == spec["projection_dim"]
    assert cfg.text.hidden_act == cfg.vision.hidden_act == spec["act"]
    assert cfg.vision.hidden_size == spec["vision"]["hidden_size"]
    assert cfg.vision.num_layers == spec["vision"]["num_hidden_layers"]
    assert cfg.text.num_layers == spec["text"]["num_hidden_layers"]
    assert cfg.text.max_positions == 77  # not in these files: the reference default
    assert cfg.text.pool_by_argmax == (spec["eos"] == 2)


def test_round_trip_through_hf_dict():
    cfg = config_from_hf_dict(hf_dict(REAL["openai/clip-vit-large-patch14-336"]))
    assert config_from_hf_dict(cfg.to_hf_dict()) == cfg
    assert config_from_hf_dict({}) == ClipConfig()


def test_list_valued_sizes_and_ids():
    cfg = config_from_hf_dict({"vision_config": {"image_size": [224, 224]}, "text_config": {"eos_token_id": [7]}})
    assert cfg.vision.image_size == 224 and cfg.text.eos_token_id == 7


@pytest.mark.parametrize(
    "d, message",
    [
        ({"model_type": "siglip"}, "config.json: model_type is 'siglip'; jaxplain.load reads 'clip' checkpoints"),
        (
            {"vision_config": {"hidden_act": "swish"}},
            "config.json: 'vision_config.hidden_act' must be one of quick_gelu, gelu, gelu_new, gelu_pytorch_tanh, "
            "relu, got 'swish'",
        ),
        (
            {"text_config": {"hidden_size": 100, "num_attention_heads": 8}},
            "config.json: 'text_config.hidden_size' (100) must be divisible by 'text_config.num_attention_heads' (8)",
        ),
        (
            {"vision_config": {"image_size": 225}},
            "config.json: 'vision_config.image_size' (225) must be a multiple of 'vision_config.patch_size' (32)",
        ),
        (
            {"vision_config": {"image_size": [224, 200]}},
            "config.json: 'vision_config.image_size' is [224, 200]: only square images are supported",
        ),
    ],
)
def test_bad_configs_name_the_key(d, message):
    with pytest.raises(CheckpointError) as e:
        config_from_hf_dict(d)
    assert str(e.value) == message


def test_read_config_errors(tmp_path):
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        read_config(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot read it as JSON"):
        read_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"projection_dim": 64}))
    assert read_config(tmp_path).projection_dim == 64

"""SLIP checkpoints (jaxplain.models.slip_convert, ``jaxplain convert slip``) on jaxplain's CLIP towers.

Two tiers:

* default (no torch): the golden fixture ``tests/fixtures/slip`` (made by ``tests/fixtures/make_slip_fixtures.py``:
  a tiny random SLIP checkpoint converted by ``convert_slip``, and what an independent PyTorch forward computes
  for two fixture images and three texts) loaded by ``jaxplain.load``: preprocessing, token ids, embeddings and
  logits must match within 1e-5; the loader's strictness; the ``pre_norm`` option of the CLIP config;
* ``reference`` (needs torch): SLIP ``.pt`` files saved as SLIP's ``main.py`` saves them (``module.`` keys,
  the SimCLR head, optimizer and scaler states, ``args`` as an ``argparse.Namespace``) from the independent
  PyTorch SLIP of ``make_slip_fixtures.py`` at ViT-S/16 and ViT-B/16 widths (224 px, text 512 wide, vocabulary
  49408, context 77, embeddings 512; one or two blocks), converted through the command line and loaded: image
  and text embeddings and zero-shot logits within 1e-4; pickles that need any other global refused without
  running them; missing, left-over and mis-shaped tensors refused by name.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxplain
from jaxplain.errors import CheckpointError, InputError
from jaxplain.models import clip
from jaxplain.models.config import ClipConfig, VisionConfig, config_from_hf_dict
from tests.conftest import FIXTURES

SLIP = FIXTURES / "slip"
IMAGES = [FIXTURES / "images" / n for n in ("01_rgb.png", "06_tall.png")]
TEXTS = ["a photo of a cat", "a diagram of two towers", "A PULLOVER, knitted."]
GOLDEN_TOL = 1e-5
LIVE_TOL = 1e-4


def _pooled(ids: np.ndarray, eos: int) -> np.ndarray:
    return np.argmax(ids == eos, axis=-1)


def _assert_same_ids(got: np.ndarray, slip_ids: np.ndarray, eos: int) -> None:
    """jaxplain's ids equal SLIP's up to and including the end-of-text token (SLIP pads with 0 after it, jaxplain
    with its pad id; the causal text tower never looks past the end), and pool at the same place (SLIP: argmax)."""
    assert got.shape == slip_ids.shape
    np.testing.assert_array_equal(_pooled(got, eos), slip_ids.argmax(-1))
    for row, ref in zip(got, slip_ids, strict=True):
        end = int(np.argmax(ref == eos)) + 1
        np.testing.assert_array_equal(row[:end], ref[:end])
        assert not ref[end:].any()


# --- default tier: the golden fixture -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def golden():
    return jaxplain.load(SLIP), np.load(SLIP / "reference.npz")


def test_golden_fixture_matches_the_pytorch_forward(golden):
    model, ref = golden
    assert model.decision == "softmax" and model.config.vision.pre_norm is False
    assert "pre_ln" not in model.params["vision"]
    assert (model.config.vision.hidden_act, model.config.vision.layer_norm_eps) == ("gelu", 1e-6)
    assert (model.config.text.hidden_act, model.config.text.layer_norm_eps) == ("quick_gelu", 1e-5)
    # SLIP's evaluation preprocessing (bilinear shorter side, centre crop, ImageNet statistics)
    pixels = model.preprocess(IMAGES)
    np.testing.assert_allclose(pixels, ref["pixels"], atol=1e-6)
    ids = model.tokenize(TEXTS)
    _assert_same_ids(ids, ref["input_ids"], model.config.text.eos_token_id)
    img = np.asarray(clip.encode_image(model.params, jnp.asarray(ref["pixels"]), model.config))
    txt = np.asarray(clip.encode_text(model.params, jnp.asarray(ids), model.config))
    np.testing.assert_allclose(img, ref["image_embeds"], atol=GOLDEN_TOL)
    np.testing.assert_allclose(txt, ref["text_embeds"], atol=GOLDEN_TOL)
    np.testing.assert_allclose(img @ txt.T, ref["cosine"], atol=GOLDEN_TOL)
    np.testing.assert_allclose(np.asarray(clip.logits(model.params, img, txt)), ref["logits"], atol=GOLDEN_TOL)
    # the bundle's batched helpers give the same; the softmax decision picks SLIP's plain-cosine class
    np.testing.assert_allclose(model.encode_images(IMAGES), ref["image_embeds"], atol=GOLDEN_TOL)
    np.testing.assert_allclose(model.encode_texts(TEXTS), ref["text_embeds"], atol=GOLDEN_TOL)
    probs = jax.nn.softmax(clip.logits(model.params, img, txt), axis=-1)
    np.testing.assert_array_equal(np.argmax(probs, -1), np.argmax(ref["cosine"], -1))
    # the embeddings depend on the input (no constant output hides a wiring error)
    assert float(ref["image_embeds"][0] @ ref["image_embeds"][1]) < 0.9


def test_golden_fixture_bfloat16_loads(golden):
    model, ref = golden
    low = jaxplain.load(SLIP, dtype="bfloat16")
    img = np.asarray(clip.encode_image(low.params, jnp.asarray(ref["pixels"]), low.config))
    np.testing.assert_allclose(img, ref["image_embeds"], atol=0.05)
    assert low.fingerprint == model.fingerprint


def _copy_fixture(tmp_path: Path) -> Path:
    out = tmp_path / "slip"
    shutil.copytree(SLIP, out)
    return out


def _edit_weights(directory: Path, edit) -> None:
    from safetensors.numpy import load_file, save_file

    state = load_file(str(directory / "model.safetensors"))
    edit(state)
    save_file(state, str(directory / "model.safetensors"))


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda s: s.pop("visual.blocks.1.attn.proj.bias"), "missing tensors (1): visual.blocks.1.attn.proj.bias"),
        (lambda s: s.update({"visual.head.weight": np.zeros((10, 32), np.float32)}), "visual.head.weight"),
        (lambda s: s.update({"image_mlp.layer1.weight": np.zeros((24, 32), np.float32)}), "image_mlp.layer1.weight"),
        (lambda s: s.update({"text_projection": np.zeros((32, 8), np.float32)}), "text_projection: (32, 8)"),
        (lambda s: s.update({"visual.norm.weight": np.full(32, np.nan, np.float32)}), "'visual.norm.weight' holds"),
    ],
)
def test_load_refuses_tensors_that_do_not_match(tmp_path, edit, named):
    directory = _copy_fixture(tmp_path)
    _edit_weights(directory, edit)
    with pytest.raises(CheckpointError, match=r"model.safetensors") as e:
        jaxplain.load(directory)
    assert named in str(e.value)


def test_load_refuses_a_config_with_a_pre_norm(tmp_path):
    directory = _copy_fixture(tmp_path)
    d = json.loads((directory / "config.json").read_text())
    d["vision_config"]["pre_norm"] = True
    (directory / "config.json").write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match=r"'vision_config.pre_norm' must be false"):
        jaxplain.load(directory)
    d["vision_config"].update(pre_norm=False, hidden_size="32")
    (directory / "config.json").write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match=r"'vision_config.hidden_size' must be a positive integer"):
        jaxplain.load(directory)


def test_convert_without_torch_says_what_to_install(tmp_path, monkeypatch):
    from jaxplain.models.slip_convert import convert_slip

    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    (tmp_path / "x.pt").write_bytes(b"not read")
    with pytest.raises(InputError, match=r"pip install torch==2\.13\.0"):
        convert_slip(tmp_path / "x.pt", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_pre_norm_option_of_the_clip_config():
    cfg = ClipConfig(
        vision=VisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_heads=4)
    )
    assert "pre_norm" not in cfg.to_hf_dict()["vision_config"]  # CLIP configs are written as before
    no_pre = dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, pre_norm=False))
    assert no_pre.to_hf_dict()["vision_config"]["pre_norm"] is False
    # the Hugging Face CLIP reader keeps its pre-LN (its converter reads one), whatever the key says
    assert config_from_hf_dict(no_pre.to_hf_dict()).vision.pre_norm is True
    params = clip.init_params(jax.random.PRNGKey(0), no_pre)
    assert "pre_ln" not in params["vision"] and "pre_ln" in clip.init_params(jax.random.PRNGKey(0), cfg)["vision"]
    pixels = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 32, 32))
    # without the pre-LN, the first block sees the embeddings themselves: a model whose blocks are zeroed out
    # (identity residuals) pools post_ln(class token + its position) exactly
    zero = jax.tree.map(jnp.zeros_like, params["vision"]["layers"])
    p = {**params, "vision": {**params["vision"], "layers": zero}}
    _, aux = clip.image_forward(p, pixels, no_pre)
    v = params["vision"]
    x = v["class_embedding"] + v["position_embedding"][0]
    mu, var = x.mean(), x.var()
    want = (x - mu) / jnp.sqrt(var + no_pre.vision.layer_norm_eps) * v["post_ln"]["scale"] + v["post_ln"]["bias"]
    np.testing.assert_allclose(np.asarray(aux["pooled"]), np.broadcast_to(np.asarray(want), (2, 32)), atol=1e-5)


# --- reference tier: .pt files, converted through the command line ---------------------------------------------


def _torch_helpers():
    pytest.importorskip("torch")
    sys.path.insert(0, str(FIXTURES))
    try:
        import make_slip_fixtures as m
    finally:
        sys.path.remove(str(FIXTURES))
    return m


def _write_marker(path):
    Path(path).write_text("the pickle ran code")


class _Runs:
    """Unpickling an instance calls ``_write_marker``: a file that executes code when it is read."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (_write_marker, (self.path,))


class _RunsShell:
    """Unpickling an instance calls ``os.system``."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _convert(pt: Path, out: Path, *extra: str) -> int:
    from jaxplain.cli import main

    return main(["convert", "slip", str(pt), str(out), *extra])


LIVE = [
    # (args.model, image width, heads, image blocks, text blocks): SLIP's ViT-S/16 is MoCo v3's, 12 heads
    pytest.param("SLIP_VITS16", 384, 12, 2, 1, id="slip-vit-s16"),
    pytest.param("CLIP_VITB16", 768, 12, 1, 2, id="clip-vit-b16"),
]


@pytest.mark.reference
@pytest.mark.parametrize(("name", "width", "heads", "vlayers", "tlayers"), LIVE)
def test_live_parity_through_the_command_line(tmp_path, capsys, name, width, heads, vlayers, tlayers):
    import argparse

    from jaxplain.data.tokenize import bundled_bpe_dir

    m = _torch_helpers()
    import torch

    vision = dict(width=width, layers=vlayers, heads=heads, mlp=4 * width, image=224, patch=16)
    text = dict(vocab=49408, width=512, layers=tlayers, heads=8, mlp=2048, context=77)
    ref_model = m.build_model(vision, text, embed=512, ssl=dict(mlp=64, emb=32), seed=width)
    pt = tmp_path / "checkpoint_best.pt"
    m.save_checkpoint(ref_model, pt, name)
    with torch.serialization.safe_globals([argparse.Namespace]):
        saved = torch.load(pt, weights_only=True)["state_dict"]
    assert any(k.startswith("module.image_mlp.") for k in saved)

    assert _convert(pt, tmp_path / "out") == 0
    layers = f"{vlayers} layer" + "s" * (vlayers > 1)
    assert f"({name}: image width {width}, {layers}, {heads} heads, patch 16, 224 px;" in capsys.readouterr().err
    model = jaxplain.load(tmp_path / "out")
    c = model.config
    assert (c.vision.hidden_size, c.vision.num_heads, c.vision.num_layers, c.vision.patch_size) == (
        width,
        heads,
        vlayers,
        16,
    )
    assert (c.text.num_heads, c.text.num_layers, c.text.max_positions, c.projection_dim) == (8, tlayers, 77, 512)

    pixels = m.slip_pixels(IMAGES, 224)
    np.testing.assert_allclose(model.preprocess(IMAGES), pixels, atol=1e-6)
    slip_ids = m.slip_ids(TEXTS, bundled_bpe_dir())
    ids = model.tokenize(TEXTS)
    _assert_same_ids(ids, slip_ids, 49407)
    np.testing.assert_array_equal(ids[0, :7], [49406, 320, 1125, 539, 320, 2368, 49407])  # CLIP's own ids

    want = m.reference_outputs(ref_model, pixels, slip_ids)
    img = model.encode_images(IMAGES)
    txt = model.encode_texts(TEXTS)
    for got, key in ((img, "image_embeds"), (txt, "text_embeds")):
        err = float(np.abs(got - want[key]).max())
        assert err < LIVE_TOL, f"{key}: max difference {err}"
    logits = np.asarray(clip.logits(model.params, jnp.asarray(img), jnp.asarray(txt)))
    np.testing.assert_allclose(logits, want["logits"], atol=LIVE_TOL)
    np.testing.assert_allclose(img @ txt.T, want["cosine"], atol=LIVE_TOL)
    np.testing.assert_array_equal(np.argmax(logits, -1), np.argmax(want["cosine"], -1))
    assert float(want["image_embeds"][0] @ want["image_embeds"][1]) < 0.95  # input-dependent embeddings

    # the converted directory: SLIP's key layout without module., no SimCLR head; config.json last, complete
    from safetensors import safe_open

    with safe_open(str(tmp_path / "out" / "model.safetensors"), framework="np") as f:
        keys = set(f.keys())
    assert "visual.blocks.0.attn.qkv.weight" in keys and "visual.patch_embed.proj.bias" in keys
    assert not any(k.startswith(("module.", "image_mlp.")) for k in keys)
    about = json.loads((tmp_path / "out" / "config.json").read_text())["slip"]
    assert about == {"model": name, "epoch": 25, "best_acc1": 34.5, "source": "checkpoint_best.pt"}


@pytest.fixture(scope="module")
def tiny_state():
    """The tiny model's SLIP state dict (``module.`` keys, SimCLR head included), torch tensors."""
    m = _torch_helpers()
    model = m.build_model(**m.TINY, seed=0)
    return {"module." + k: v for k, v in model.state_dict().items()}


def _save(tmp_path: Path, obj, name: str = "slip.pt") -> Path:
    import torch

    path = tmp_path / name
    torch.save(obj, str(path))
    return path


@pytest.mark.reference
@pytest.mark.parametrize("runs", [_Runs, _RunsShell], ids=["own-function", "os.system"])
def test_a_pickle_that_runs_code_is_refused_unrun(tmp_path, tiny_state, runs, capsys):
    import argparse

    from jaxplain.models.slip_convert import read_slip_checkpoint

    marker = tmp_path / "marker"
    pt = _save(tmp_path, {"state_dict": tiny_state, "args": argparse.Namespace(model="SLIP_VITS16"), "x": runs(marker)})
    with pytest.raises(CheckpointError, match="refused") as e:
        read_slip_checkpoint(pt, vision_heads=4, text_heads=2)
    assert ("_write_marker" if runs is _Runs else "system") in str(e.value)
    assert not marker.exists()
    assert _convert(pt, tmp_path / "out", "--vision-heads", "4") == 2
    assert "refused" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "out" / "config.json").exists()


@pytest.mark.reference
def test_wrappers_and_what_is_dropped(tmp_path, tiny_state):
    from jaxplain.models.slip_convert import read_slip_checkpoint

    golden = jaxplain.load(SLIP)
    bare = {k[len("module.") :]: v for k, v in tiny_state.items()}
    for obj in ({"model": tiny_state}, bare, {"state_dict": bare, "epoch": 1}):
        state, config, _ = read_slip_checkpoint(_save(tmp_path, obj), vision_heads=4, text_heads=2)
        assert not any(k.startswith(("module.", "image_mlp.")) for k in state)
        assert dataclasses.replace(config, logit_scale_init=0.0) == dataclasses.replace(
            golden.config, logit_scale_init=0.0
        )


@pytest.mark.reference
@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (
            lambda s: s.pop("module.visual.blocks.1.mlp.fc2.weight"),
            "missing tensors (1): visual.blocks.1.mlp.fc2.weight",
        ),
        (
            lambda s: s.pop("module.transformer.resblocks.0.attn.in_proj_bias"),
            "transformer.resblocks.0.attn.in_proj_bias",
        ),
        (lambda s: s.pop("module.visual.pos_embed"), "missing tensor 'visual.pos_embed'"),
        (lambda s: s.update({"module.visual.head.weight": _zeros(10, 32)}), "left-over tensors not used by the model"),
        (lambda s: s.update({"module.visual.head.weight": _zeros(10, 32)}), "visual.head.weight"),
        (lambda s: s.update({"module.visual.blocks.2.norm1.weight": _zeros(32)}), "visual.blocks.2.attn.qkv.weight"),
        (lambda s: s.update({"module.text_projection": _zeros(32, 8)}), "text_projection: (32, 8) in the checkpoint"),
        (lambda s: s.update({"module.visual.norm.bias": _zeros(31)}), "visual.norm.bias: (31,)"),
        (lambda s: s.update({"module.visual.pos_embed": _zeros(1, 18, 32)}), "'visual.pos_embed' has shape"),
        (lambda s: s.update({"module.logit_scale": 2.0}), "'module.logit_scale' holds a float"),
        (lambda s: s.update({"visual.norm.bias": _zeros(32)}), "'visual.norm.bias' is there twice"),
    ],
)
def test_tensors_that_do_not_match_are_refused_by_name(tmp_path, tiny_state, edit, named):
    from jaxplain.models.slip_convert import read_slip_checkpoint

    state = dict(tiny_state)
    edit(state)
    pt = _save(tmp_path, {"state_dict": state})
    with pytest.raises(CheckpointError, match=str(pt).replace(".", r"\.")) as e:
        read_slip_checkpoint(pt, vision_heads=4, text_heads=2)
    assert named in str(e.value)


def _zeros(*shape):
    import torch

    return torch.zeros(shape)


@pytest.mark.reference
def test_heads_and_model_names(tmp_path, tiny_state, capsys):
    import argparse

    from jaxplain.models.slip_convert import read_slip_checkpoint

    def with_args(model):
        return _save(tmp_path, {"state_dict": tiny_state, "args": argparse.Namespace(model=model)}, f"{model}.pt")

    with pytest.raises(CheckpointError, match="SimCLR model has no text tower"):
        read_slip_checkpoint(with_args("SIMCLR_VITS16"))
    with pytest.raises(CheckpointError, match=r"'SLIP_VITB16', whose image tower is 768 wide, but 'visual.cls_token'"):
        read_slip_checkpoint(with_args("SLIP_VITB16"))
    with pytest.raises(CheckpointError, match="32 wide, not one of SLIP's ViTs"):
        read_slip_checkpoint(with_args("MY_MODEL"), text_heads=2)
    with pytest.raises(CheckpointError, match="3 vision heads do not divide"):
        read_slip_checkpoint(with_args("MY_MODEL"), vision_heads=3, text_heads=2)
    with pytest.raises(CheckpointError, match="text tower is 32 wide, not a multiple of CLIP's head width 64"):
        read_slip_checkpoint(with_args("MY_MODEL"), vision_heads=4)
    # the command line: the image tower's heads by flag; the text tower's rule refuses this toy width (exit 2)
    assert _convert(with_args("MY_MODEL"), tmp_path / "out", "--vision-heads", "4") == 2
    assert "head width 64" in capsys.readouterr().err


@pytest.mark.reference
def test_output_directory_rules(tmp_path, tiny_state):
    from jaxplain.errors import OutputError
    from jaxplain.models.slip_convert import convert_slip

    m = _torch_helpers()
    pt = _save(tmp_path, {"state_dict": tiny_state})
    bpe = tmp_path / "bpe"
    from jaxplain.data.tokenize import write_reduced_bpe

    write_reduced_bpe(bpe, m.TINY_MERGES)
    out = tmp_path / "out"
    kw = dict(vision_heads=4, text_heads=2, tokenizer_dir=bpe)
    convert_slip(pt, out, **kw)
    convert_slip(pt, out, **kw)  # an earlier conversion's directory is replaced
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["config.json", "model.safetensors", "vocab.json", "merges.txt", "preprocessor_config.json"]
    )
    (out / "tokenizer.json").write_text("{}")
    with pytest.raises(OutputError, match=r"holds other files \(tokenizer\.json\)"):
        convert_slip(pt, out, **kw)
    # a tokenizer whose vocabulary is not the checkpoint's is refused before anything is written
    with pytest.raises(CheckpointError, match="its tokenizer has 49408 tokens"):
        convert_slip(pt, tmp_path / "other", vision_heads=4, text_heads=2)
    assert not (tmp_path / "other").exists()


@pytest.mark.reference
def test_make_slip_fixtures_reproduces_the_committed_fixture(tmp_path):
    from safetensors.numpy import load_file

    m = _torch_helpers()
    m.main(tmp_path / "slip")
    got, want = load_file(str(tmp_path / "slip" / "model.safetensors")), load_file(str(SLIP / "model.safetensors"))
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    a, b = np.load(tmp_path / "slip" / "reference.npz"), np.load(SLIP / "reference.npz")
    for k in b.files:
        np.testing.assert_allclose(a[k], b[k], atol=1e-6, err_msg=k)
    for name in ("config.json", "preprocessor_config.json", "vocab.json", "merges.txt"):
        assert (tmp_path / "slip" / name).read_text() == (SLIP / name).read_text(), name

"""Training a SigLIP: the sigmoid loss by hand, batches at the full context, exact resume, the command, and
the model it writes read back by jaxplain and by transformers' SiglipModel."""

import argparse
import math

import jax
import numpy as np
import pytest

import jaxplain
import jaxplain.train.evaluate
from jaxplain.data import fashion_mnist as fm
from jaxplain.data.siglip_inputs import SiglipImageProcessing, SiglipTokenizer
from jaxplain.models import siglip
from jaxplain.models.family import SIGLIP
from jaxplain.train import BatchSource, TrainConfig, architecture, resume, siglip_model_config, sigmoid_loss, train
from jaxplain.train.spiece import PAD_ID, canonical, write_caption_spiece

BATCH = 16
CONFIG = TrainConfig(steps=12, batch_size=BATCH, learning_rate=3e-3, warmup_steps=2, seed=0, max_shift=1)
CONTEXT = 16


def test_sigmoid_loss_by_hand():
    u = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], np.float32)
    v = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]], np.float32)
    positives = np.array([[1, 1, 0], [0, 0, 1], [0, 0, 1]], bool)
    t, b = math.log(5.0), -2.0
    loss, logits = sigmoid_loss(u, v, np.float32(t), np.float32(b), positives)
    z = 5.0 * (u.astype(np.float64) @ v.T) + b
    np.testing.assert_allclose(logits, z, rtol=1e-6)
    sign = np.where(positives, 1.0, -1.0)
    expected = np.sum(np.log1p(np.exp(-sign * z))) / 3  # -log σ(x) = log(1 + e^-x)
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    # SigLIP's temperature is not capped (CLIP's is, at 100)
    _, logits = sigmoid_loss(u, v, np.float32(math.log(1000.0)), np.float32(0.0), positives)
    np.testing.assert_allclose(logits[0, 0], 1000.0, rtol=1e-5)
    assert architecture(siglip_model_config("tiny", 64, eos_id=1, pad_id=1)).max_logit_scale is None


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tok_dir = tmp_path_factory.mktemp("spiece")
    vocab = write_caption_spiece(tok_dir, 512, CONTEXT)
    tokenizer = SiglipTokenizer.from_directory(tok_dir, CONTEXT)
    model = siglip_model_config("tiny", vocab, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, max_positions=CONTEXT)
    images, labels = fm.load_shipped_test()
    processing = SiglipImageProcessing.for_image_size(28)
    source = BatchSource.build(
        images[:256],
        labels[:256],
        tokenizer,
        processing.image_processing,
        batch_size=BATCH,
        seed=0,
        max_shift=1,
        cut_captions=False,
    )
    return {"tok_dir": tok_dir, "tokenizer": tokenizer, "model": model, "source": source, "processing": processing}


def test_spiece_vocabulary(setup):
    tok = setup["tokenizer"]
    assert tok.kind.startswith("SiglipTokenizer") and tok.pad_id == tok.eos_id == 1 and PAD_ID == 0
    assert canonical("A T-shirt/top,  ok!") == "a tshirttop ok"
    # the captions are whole pieces: "ankle" and "boot" are words of the vocabulary, then </s>, then padding
    row = tok(["a photo of an Ankle boot."])[0]
    pieces = tok.hf.convert_ids_to_tokens([int(i) for i in row])
    assert pieces[:7] == ["▁a", "▁photo", "▁of", "▁an", "▁ankle", "▁boot", "</s>"]
    assert pieces[7:] == ["</s>"] * (CONTEXT - 7)


def test_batches_keep_the_full_context(setup):
    batch = setup["source"](3)
    assert batch["ids"].shape == (BATCH, CONTEXT) and batch["pixels"].shape == (BATCH, 3, 28, 28)
    # SigLIP's preprocessing: pixels in [-1, 1] (mean = std = 0.5)
    images, _ = fm.load_shipped_test()
    idx = setup["source"].indices(3)
    expected = setup["processing"]([images[i] for i in idx])
    shifted = np.abs(batch["pixels"] - expected).max(axis=(1, 2, 3)) > 0  # the shift moves some images
    np.testing.assert_array_equal(batch["pixels"][~shifted], expected[~shifted])
    assert batch["pixels"].min() >= -1 and batch["pixels"].max() <= 1


def test_loss_falls_and_resume_is_exact(setup, tmp_path):
    model, source = setup["model"], setup["source"]
    full, history = train(model, CONFIG, source, progress=False)
    assert history["loss"][-3:].mean() < history["loss"][:3].mean()
    assert "bias" in history  # the bias is learned
    assert not np.allclose(history["bias"][-1], siglip.LOGIT_BIAS_INIT)
    train(model, CONFIG, source, until=6, checkpoint_dir=tmp_path, progress=False)
    restored = resume(model, CONFIG, tmp_path)
    assert restored.step == 6
    resumed, _ = train(model, CONFIG, source, state=restored, progress=False)
    for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(resumed.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _data_dir(tmp_path):
    images, labels = fm.load_shipped_test()
    data = tmp_path / "data"
    data.mkdir()
    for (image_file, label_file), part in zip(fm.SPLITS.values(), (slice(256), slice(-64, None))):
        fm.write_idx(data / image_file, images[part])
        fm.write_idx(data / label_file, labels[part].astype(np.uint8))
    return data


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from jaxplain.train.command import register

    tmp = tmp_path_factory.mktemp("siglip-train")
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    out = tmp / "model"
    argv = ["train", "--arch", "siglip", "--data", str(_data_dir(tmp)), "--out", str(out), "--preset", "tiny"]
    argv += ["--vocab", "512", "--steps", "12", "--warmup", "2", "--lr", "0.003", "--batch-size", str(BATCH)]
    argv += ["--checkpoint-every", "6", "--no-progress"]
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    return out


def test_train_command_writes_a_siglip(trained):
    report = (trained / "TRAINING.md").read_text()
    assert "--arch siglip" in report and "--vocab 512" in report and "SigLIP (sigmoid loss" in report
    assert "zero-shot accuracy, 64 test images" in report
    model = jaxplain.load(trained)
    assert model.family is SIGLIP and model.decision == "sigmoid"
    assert model.config.text.max_positions == CONTEXT and model.config.vision.image_size == 28
    assert model.processing == SiglipImageProcessing.for_image_size(28)
    # the zero-shot decision is the sigmoid of the scaled similarity plus the learned bias
    images, _ = fm.load_shipped_test()
    u = model.encode_images(list(images[:4]))
    v = model.encode_texts(["a photo of a bag.", "a photo of a dress."])
    p = jaxplain.zeroshot.probabilities(model, u, v)
    z = model.logit_scale * (u.astype(np.float64) @ v.T.astype(np.float64)) + model.logit_bias
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-z)), rtol=1e-5)


@pytest.mark.reference
def test_trained_siglip_loads_in_transformers(trained):
    torch = pytest.importorskip("torch")
    from transformers import AutoTokenizer, SiglipModel

    model = jaxplain.load(trained)
    reference = SiglipModel.from_pretrained(str(trained)).eval()
    hf_tok = AutoTokenizer.from_pretrained(str(trained))
    texts = ["a photo of a Sneaker.", "a dark pair of trousers.", "a blurry photo of a handbag."]
    ids = hf_tok(texts, padding="max_length", max_length=CONTEXT, return_tensors="np")["input_ids"]
    np.testing.assert_array_equal(ids, model.tokenize(texts))
    images, _ = fm.load_shipped_test()
    pixels = model.preprocess(list(images[:6]))
    with torch.no_grad():
        out = reference(input_ids=torch.tensor(ids), pixel_values=torch.tensor(pixels))
    np.testing.assert_allclose(model.encode_pixels(pixels), out.image_embeds.numpy(), atol=1e-5)
    np.testing.assert_allclose(model.encode_ids(ids), out.text_embeds.numpy(), atol=1e-5)
    u, v = model.encode_pixels(pixels), model.encode_ids(ids)
    probs = jaxplain.zeroshot.probabilities(model, u, v)
    np.testing.assert_allclose(probs, torch.sigmoid(out.logits_per_image).numpy(), atol=1e-5)


def test_shipped_siglip_classifies_fashion_mnist():
    model = jaxplain.load("fashion-siglip")
    assert model.family is SIGLIP and model.config.vision.image_size == 28 and model.config.text.max_positions == 16
    size = sum(f.stat().st_size for f in model.directory.iterdir())
    assert size <= 10 * 2**20
    images, labels = fm.load_shipped_test()
    accuracy = jaxplain.train.evaluate.zero_shot_accuracy(model, images[:1000], labels[:1000], fm.CLASS_NAMES)
    assert accuracy > 0.85  # 87.46% on all 10,000 (TRAINING.md)


@pytest.mark.reference
def test_shipped_siglip_matches_transformers():
    test_trained_siglip_loads_in_transformers(jaxplain.load("fashion-siglip").directory)


def test_save_refuses_a_model_the_clip_format_cannot_hold(tmp_path):
    from jaxplain.errors import InputError

    with pytest.raises(InputError, match=r"fashion-siglip: save writes the Hugging Face CLIP format.*\(siglip\)"):
        jaxplain.save(jaxplain.load("fashion-siglip"), tmp_path / "x")
    assert not (tmp_path / "x").exists()

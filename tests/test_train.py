"""Training: the loss, a data-parallel step on the 8 fake devices, exact resume, save → load, the command."""

import argparse
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import jaxplain
from jaxplain.data import fashion_mnist as fm
from jaxplain.data.tokenize import Tokenizer, write_reduced_bpe
from jaxplain.errors import CheckpointError
from jaxplain.models import clip
from jaxplain.models.loading import save_checkpoint
from jaxplain.train import (
    BatchSource,
    TrainConfig,
    compiled_train_step,
    contrastive_loss,
    data_mesh,
    init_state,
    make_optimizer,
    make_train_step,
    model_config,
    resume,
    train,
)
from jaxplain.train.checkpoint import checkpoint_path, restore_state, save_state
from jaxplain.train.evaluate import zero_shot_accuracy
from jaxplain.train.pipeline import shift_and_flip

BATCH = 32  # 4 pairs on each of the 8 fake devices
# One training setup for all tests, so that they share one compiled step.
CONFIG = TrainConfig(steps=40, batch_size=BATCH, learning_rate=3e-3, warmup_steps=4, seed=0, max_shift=1, flip=0.5)
MERGES = 500


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tok_dir = tmp_path_factory.mktemp("bpe")
    vocab = write_reduced_bpe(tok_dir, MERGES)
    tokenizer = Tokenizer.from_directory(tok_dir, 32)
    model = model_config("tiny", vocab)
    images, labels = fm.load_shipped_test()
    source = BatchSource.build(
        images[:512], labels[:512], tokenizer, fm.processing(), batch_size=BATCH, seed=0, max_shift=1, flip=0.5
    )
    return {"tok_dir": tok_dir, "tokenizer": tokenizer, "model": model, "source": source}


def assert_trees_equal(a, b):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_contrastive_loss_by_hand():
    u = np.eye(2, dtype=np.float32)
    loss, logits = contrastive_loss(u, u, np.float32(math.log(2.0)))
    np.testing.assert_allclose(logits, [[2, 0], [0, 2]], rtol=1e-6)
    np.testing.assert_allclose(loss, math.log(1 + math.exp(-2)), rtol=1e-6)
    # Asymmetric case: image→text and text→image differ; the loss is their mean.
    text = np.array([[1, 0], [0.6, 0.8]], np.float32)
    loss, _ = contrastive_loss(u, text, np.float32(0.0))
    s = u @ text.T
    i2t = -np.mean([s[i, i] - np.log(np.exp(s[i]).sum()) for i in range(2)])
    t2i = -np.mean([s[i, i] - np.log(np.exp(s[:, i]).sum()) for i in range(2)])
    np.testing.assert_allclose(loss, (i2t + t2i) / 2, rtol=1e-6)
    # The temperature is capped at 100.
    _, logits = contrastive_loss(u, u, np.float32(math.log(1000.0)))
    np.testing.assert_allclose(logits[0, 0], 100.0, rtol=1e-5)


def test_batches_are_a_function_of_seed_and_step(setup):
    source = setup["source"]
    again = BatchSource.build(
        source.images,
        source.labels,
        setup["tokenizer"],
        fm.processing(),
        batch_size=BATCH,
        seed=0,
        max_shift=1,
        flip=0.5,
    )
    a, b = source(7), again(7)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(source(8)["pixels"], a["pixels"])
    # One epoch of batches visits every image once.
    epoch = np.concatenate([source.indices(t) for t in range(512 // BATCH)])
    assert sorted(epoch.tolist()) == list(range(512))
    # Captions are those of the batch's labels, padded with end-of-text.
    batch = source(0)
    texts = setup["tokenizer"].hf.batch_decode(batch["ids"][:4], skip_special_tokens=True)
    for text, label in zip(texts, batch["labels"][:4]):
        assert any(name.lower() in text for name in source.space.synonyms[label])


def test_shift_and_flip_values():
    images = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
    flipped = shift_and_flip(np.random.default_rng(0), images, 0, 1.0)
    np.testing.assert_array_equal(flipped, images[:, :, ::-1])
    shifted = shift_and_flip(np.random.default_rng(0), images, 1, 0.0)
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1)))
    for out, pad in zip(shifted, padded):
        windows = [pad[dy : dy + 4, dx : dx + 4] for dy in range(3) for dx in range(3)]
        assert any(np.array_equal(out, w) for w in windows)


def test_loss_falls(setup):
    state, history = train(setup["model"], CONFIG, setup["source"], progress=False)
    assert state.step == 40 and history["loss"].shape == (40,)
    first, last = history["loss"][0], history["loss"][-5:].mean()
    # Untrained towers give nearly parallel embeddings, so the first loss is above log(32) = 3.47.
    np.testing.assert_allclose(first, 3.934, atol=0.01)
    assert last < 3.3 and last < first - 0.6, (first, last)
    assert history["class_accuracy"][-5:].mean() > 0.2  # chance: 0.1
    assert history["temperature"][-1] != history["temperature"][0]


def test_data_parallel_step_equals_one_device(setup):
    assert jax.device_count() == 8
    model, opt = setup["model"], make_optimizer(CONFIG)
    state = init_state(model, CONFIG)
    batch = setup["source"](0)
    outs = []
    one_device = Mesh(np.array(jax.devices()[:1]), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    # The 8-device step is the one test_loss_falls compiled (inputs placed as train() places them).
    for mesh, step in (
        (data_mesh(), compiled_train_step(model, CONFIG, data_mesh())),
        (one_device, make_train_step(model, opt, one_device)),
    ):
        replicated = NamedSharding(mesh, PartitionSpec())
        fresh = jax.tree.map(jnp.copy, (state.params, state.opt_state))  # the step donates its inputs
        params, _, metrics = step(*jax.device_put(fresh, replicated), batch)
        outs.append((jax.device_get(params), float(metrics["loss"])))
    (p8, loss8), (p1, loss1) = outs
    np.testing.assert_allclose(loss8, loss1, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(p8), jax.tree.leaves(p1)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_resume_is_exact(setup, tmp_path):
    model, source = setup["model"], setup["source"]
    config = CONFIG
    straight, _ = train(model, config, source, until=5, progress=False)
    _, _ = train(model, config, source, checkpoint_dir=tmp_path, until=3, progress=False)  # saves when it stops
    assert checkpoint_path(tmp_path, 3).is_file()
    restored = resume(model, config, tmp_path)
    assert restored.step == 3 and restored.seed == 0
    resumed, _ = train(model, config, source, state=restored, checkpoint_dir=tmp_path, until=5, progress=False)
    assert resumed.step == 5
    assert_trees_equal(resumed.params, straight.params)
    assert_trees_equal(resumed.opt_state, straight.opt_state)
    # The final checkpoint holds the final state, bit for bit.
    assert_trees_equal(resume(model, config, tmp_path).params, straight.params)


def test_checkpoint_refuses_another_run(setup, tmp_path):
    model = setup["model"]
    state = init_state(model, CONFIG)
    meta = {"run": 1}
    path = save_state(tmp_path, state, meta)
    with pytest.raises(CheckpointError, match="other settings"):
        restore_state(path, state, {"run": 2})
    other = model_config("tiny", model.text.vocab_size + 1)
    with pytest.raises(CheckpointError, match=r"params\['text'\]\['token_embedding'\] is float32"):
        restore_state(path, init_state(other, CONFIG), meta)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read it"):
        restore_state(path, state, meta)


def test_save_load_round_trip(setup, tmp_path):
    model = setup["model"]
    params = init_state(model, CONFIG).params
    params = jax.tree.map(lambda x: x + 0.01 * np.sign(np.asarray(x)), params)  # not the init values
    out = save_checkpoint(tmp_path / "m", model, params, setup["tok_dir"], fm.processing())
    loaded = jaxplain.load(out)
    assert loaded.config == model
    assert_trees_equal(loaded.params, params)
    images, _ = fm.load_shipped_test()
    pixels = loaded.preprocess(list(images[:16]))
    np.testing.assert_array_equal(pixels, setup["source"].pixel_table[:, images[:16]].transpose(1, 0, 2, 3))
    want = np.asarray(clip.encode_image(params, pixels, model))
    np.testing.assert_allclose(loaded.encode_pixels(pixels), want, atol=1e-6)
    texts = ["a photo of a Sneaker.", "a striped pair of trousers for sale."]
    np.testing.assert_array_equal(loaded.tokenize(texts), setup["tokenizer"](texts))
    ids = loaded.tokenize(texts)
    np.testing.assert_allclose(loaded.encode_texts(texts), np.asarray(clip.encode_text(params, ids, model)), atol=1e-6)


def test_train_command(tmp_path):
    from jaxplain.train.command import _train_config, register

    images, labels = fm.load_shipped_test()
    data = tmp_path / "data"
    data.mkdir()
    for (image_file, label_file), part, suffix in zip(fm.SPLITS.values(), (slice(256), slice(-64, None)), (".gz", "")):
        fm.write_idx(data / (image_file + suffix), images[part])
        fm.write_idx(data / (label_file + suffix), labels[part].astype(np.uint8))
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    out = tmp_path / "model"
    argv = ["train", "--data", str(data), "--out", str(out), "--preset", "tiny", "--merges", str(MERGES)]
    argv += ["--steps", "40", "--warmup", "4", "--lr", "0.003", "--batch-size", str(BATCH), "--max-shift", "1"]
    argv += ["--flip", "0.5", "--checkpoint-every", "20", "--no-progress"]
    args = parser.parse_args(argv)
    assert _train_config(args) == CONFIG  # so the command reuses the step the other tests compiled
    assert args.func(args) == 0
    report = (out / "TRAINING.md").read_text()
    assert "jaxplain train --data" in report and "--steps 40" in report and "| steps | 0 → 40 |" in report
    assert "zero-shot accuracy, 10,000 test images" not in report and "zero-shot accuracy, 64 test images" in report
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step_00000020.safetensors",
        "step_00000040.safetensors",
    ]
    model = jaxplain.load(out)
    assert model.config.text.vocab_size == 512 + MERGES + 2
    assert model.config.text.eos_token_id == 1013 and model.tokenizer.eos_id == 1013
    assert model.config.text.bos_token_id == 1012 and model.tokenizer.bos_id == 1012


def test_shipped_model_classifies_fashion_mnist():
    model = jaxplain.load("fashion-clip")
    assert model.config.vision.image_size == 28 and model.config.text.max_positions == 32
    assert model.processing == fm.processing()
    images, labels = fm.load_shipped_test()
    accuracy = zero_shot_accuracy(model, images[:1000], labels[:1000], fm.CLASS_NAMES)
    assert accuracy > 0.85


@pytest.mark.reference
def test_shipped_model_matches_transformers():
    torch = pytest.importorskip("torch")
    from transformers import CLIPModel, CLIPTokenizer

    model = jaxplain.load("fashion-clip")
    reference = CLIPModel.from_pretrained(str(model.directory)).eval()
    tokenizer = CLIPTokenizer.from_pretrained(str(model.directory))
    texts = ["a photo of a Sneaker.", "a dark pair of trousers for sale.", "a blurry photo of a handbag."]
    ids = tokenizer(texts, padding="max_length", max_length=32, return_tensors="np")["input_ids"]
    np.testing.assert_array_equal(ids, model.tokenize(texts))
    images, _ = fm.load_shipped_test()
    pixels = model.preprocess(list(images[:8]))
    with torch.no_grad():
        out = reference(input_ids=torch.tensor(ids), pixel_values=torch.tensor(pixels))
    np.testing.assert_allclose(model.encode_pixels(pixels), out.image_embeds.numpy(), atol=1e-4)
    np.testing.assert_allclose(model.encode_ids(ids), out.text_embeds.numpy(), atol=1e-4)
    assert model.logit_scale == pytest.approx(float(reference.logit_scale.detach().exp()), rel=1e-6)

"""Parity with transformers' PyTorch CLIP on committed golden outputs (no torch needed).

The reference values were computed by ``tests/fixtures/make_fixtures.py`` with ``CLIPModel``,
``CLIPImageProcessorPil`` and ``CLIPTokenizer``, and Pillow 13.0. Pillow 12.3 resizes the fixture images
differently (normalised pixels up to 0.175 apart, seen on another machine), hence ``pillow>=13.0``.
"""

import warnings

import numpy as np

import jaxplain
from jaxplain.data.tokenize import Tokenizer, bundled_bpe_dir

TOL = 1e-4


def test_preprocessing_matches_reference(tiny_model, reference):
    pixels = tiny_model.preprocess(reference["image_paths"])
    assert pixels.shape == reference["pixels"].shape
    np.testing.assert_allclose(pixels, reference["pixels"], atol=TOL, rtol=0)


def test_token_ids_match_reference(tiny_model, reference):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ids = tiny_model.tokenize(reference["texts"])
    np.testing.assert_array_equal(ids, reference["input_ids"])


def test_token_ids_of_the_standard_vocabulary(reference):
    tok = Tokenizer.from_directory(bundled_bpe_dir(), 77)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ids = tok(reference["texts"])
    np.testing.assert_array_equal(ids, reference["full_vocab_ids"])
    # The published check of the vocabulary:
    assert list(tok(["a photo of a cat"])[0, :7]) == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_image_embeddings_match_reference(tiny_model, reference):
    emb = tiny_model.encode_pixels(reference["pixels"])
    np.testing.assert_allclose(emb, reference["image_embeds"], atol=TOL, rtol=0)


def test_text_embeddings_match_reference(tiny_model, reference):
    emb = tiny_model.encode_ids(reference["input_ids"])
    np.testing.assert_allclose(emb, reference["text_embeds"], atol=TOL, rtol=0)


def test_logits_match_reference(tiny_model, reference):
    u = tiny_model.encode_images(reference["image_paths"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        v = tiny_model.encode_texts(reference["texts"])
    logits = np.asarray(jaxplain.models.logits(tiny_model.params, u, v))
    np.testing.assert_allclose(logits, reference["logits_per_image"], atol=TOL, rtol=0)

"""Tokenisation: the checkpoint's CLIPTokenizer, padding, truncation with a warning, reduced vocabularies."""

import json

import numpy as np
import pytest
from transformers import CLIPTokenizer

from jaxplain.data.tokenize import Tokenizer, bundled_bpe_dir, write_reduced_bpe
from jaxplain.errors import InputError

TEXTS = ["a photo of a cat", "An ANKLE boot!", "naïve café 12€", "a sandal and a bag " * 20, "two  spaces\tand\ttabs"]


@pytest.fixture(scope="module")
def standard():
    return Tokenizer.from_directory(bundled_bpe_dir(), 77)


def test_matches_clip_tokenizer_padded_and_truncated(standard):
    ref = CLIPTokenizer.from_pretrained(str(bundled_bpe_dir()))
    want = ref(TEXTS, padding="max_length", max_length=77, truncation=True, return_tensors="np")["input_ids"]
    with pytest.warns(UserWarning):
        got = standard(TEXTS)
    assert got.dtype == np.int32 and got.shape == (5, 77)
    np.testing.assert_array_equal(got, want)


def test_truncation_warning_names_the_text(standard):
    long = "the quick brown fox " * 30
    with pytest.warns(
        UserWarning, match=r"text 1 'the quick brown fox.*' has 122 tokens; truncated to the context length 77"
    ):
        ids = standard(["short", long])
    assert ids[1, -1] == standard.eos_id and ids[1, 0] == standard.bos_id
    assert (ids[1, 1:-1] != standard.eos_id).all()


def test_empty_and_non_string_texts_are_errors(standard):
    with pytest.raises(InputError, match="text 2: empty text"):
        standard(["a", "b", "   "])
    with pytest.raises(InputError, match="text 0: expected a string, got int"):
        standard([3])
    with pytest.raises(InputError, match="single string"):
        standard("a photo")


def test_reduced_vocabulary(tmp_path):
    size = write_reduced_bpe(tmp_path, 300)
    assert size == 512 + 300 + 2
    vocab = json.loads((tmp_path / "vocab.json").read_text())
    assert vocab["<|endoftext|>"] == size - 1 and vocab["<|startoftext|>"] == size - 2
    assert vocab["in"] == 512  # the first merge, "i n"
    tok = Tokenizer.from_directory(tmp_path, 77)
    full = Tokenizer.from_directory(bundled_bpe_dir(), 77)
    for text in ["a photo of a sneaker", "Ünïcödé and emoji 👟", "trousers"]:
        small_ids = tok.ids(text)
        assert max(small_ids) < size
        # every text still tokenises, into more (or as many) pieces, and decodes to the same string
        assert len(small_ids) >= len(full.ids(text))
        assert tok.hf.decode(small_ids, skip_special_tokens=True) == full.hf.decode(
            full.ids(text), skip_special_tokens=True
        )

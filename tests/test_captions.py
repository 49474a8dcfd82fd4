"""Caption generation: determinism, coverage of the classes, the token table layout, the shipped bank."""

import numpy as np

from jaxplain.data.captions import ADJECTIVES, TEMPLATES, CaptionSpace, read_bank
from jaxplain.data.fashion_mnist import CLASS_NAMES
from jaxplain.zeroshot import DEFAULT_TEMPLATES

SPACE = CaptionSpace()


def test_text_from_indices():
    assert SPACE.text(7, 0, 0, ADJECTIVES.index("white")) == "a photo of a white Sneaker."
    assert SPACE.text(1, TEMPLATES.index("a {} for sale."), 1, -1) == "a pair of trousers for sale."
    assert [s[0] for s in SPACE.synonyms] == list(CLASS_NAMES)
    assert set(DEFAULT_TEMPLATES) <= set(TEMPLATES)


def test_same_seed_same_captions():
    labels = np.arange(40) % 10
    a = SPACE.captions(np.random.default_rng(3), labels)
    b = SPACE.captions(np.random.default_rng(3), labels)
    c = SPACE.captions(np.random.default_rng(4), labels)
    assert a == b
    assert a != c
    assert SPACE.captions(np.random.default_rng(0), [7]) == ["a catalogue photo of a dark trainer."]


def test_draws_cover_all_classes_and_options():
    labels = np.repeat(np.arange(10), 1000)
    draws = SPACE.draw(np.random.default_rng(0), labels)
    for c in range(10):
        mine = draws[labels == c]
        assert set(mine[:, 1]) == set(range(len(SPACE.synonyms[c])))
        assert set(mine[:, 0]) == set(range(len(TEMPLATES)))
    assert set(draws[:, 2]) == set(range(-1, len(ADJECTIVES)))
    assert abs(np.mean(draws[:, 2] >= 0) - SPACE.p_adjective) < 0.02
    texts = SPACE.captions(np.random.default_rng(1), labels[::50])
    for c, text in zip(labels[::50], texts):
        assert any(name.lower() in text.lower() for name in SPACE.synonyms[c])


def test_flat_index_matches_the_table():
    table = SPACE.table_texts()
    assert len(table) == np.prod(SPACE.table_shape) == 10 * len(TEMPLATES) * 5 * (len(ADJECTIVES) + 1)
    labels = np.random.default_rng(0).integers(0, 10, 200)
    draws = SPACE.draw(np.random.default_rng(5), labels)
    texts = SPACE.captions(np.random.default_rng(5), labels)
    assert [table[i] for i in SPACE.flat_index(labels, draws)] == texts


def test_bank_is_distinct_balanced_and_reproducible():
    texts, labels = SPACE.bank(500, seed=2)
    assert len(set(texts)) == 500
    assert np.bincount(labels).tolist() == [50] * 10
    assert SPACE.bank(500, seed=2)[0] == texts


def test_shipped_bank_is_the_generated_one():
    shipped = read_bank()
    assert shipped == SPACE.bank(3000, seed=0)[0]

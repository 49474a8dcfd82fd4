"""BLIP's inputs, ``jaxplain.load`` of BLIP, and counterfactuals whose decision is BLIP's matching head.

* tokenizer and preprocessing (needs transformers, not torch): jaxplain's :class:`BlipTokenizer` and
  :class:`BlipImageProcessing` against transformers' ``BlipProcessor`` (``BertTokenizer`` +
  ``BlipImageProcessor``) on the fixture images and a few texts, with the tiny WordPiece vocabulary of
  ``tests/fixtures/blip-tokenizer/``;
* loading: a checkpoint directory with that tokenizer loads through ``jaxplain.load`` as a ``BlipModel``
  whose encoders and matching head equal the pure functions; bad directories are named;
* counterfactuals (:mod:`jaxplain.counterfactual.itm`) on the golden tiny BLIP (``tests/fixtures/blip/``),
  a bank of 64 random-pixel images and 8 queries: the oracle equals a one-pair-at-a-time loop, every
  answer reaches its outcome under ``itm_forward`` (default tier) and under transformers'
  ``BlipForImageTextRetrieval`` (reference tier), and the pipeline is measured against the oracle.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxplain
from jaxplain.counterfactual import itm
from jaxplain.errors import CheckpointError, InputError
from jaxplain.models import blip
from jaxplain.models.blip import BlipConfig, BlipTextConfig, BlipVisionConfig
from jaxplain.models.blip_convert import (
    BlipImageProcessing,
    BlipModel,
    BlipTokenizer,
    read_checkpoint,
    write_checkpoint,
)
from tests.conftest import FIXTURES

GOLDEN = FIXTURES / "blip"
TOKENIZER = FIXTURES / "blip-tokenizer"
IMAGES = sorted((FIXTURES / "images").iterdir())
TEXTS = [
    "A photo of two dogs running on the grass!",
    "a man riding a horse",
    "Zebras, sitting quietly",  # pieces and an unknown word
    "the  RED   car",
    "a very " * 30 + "long text",  # more than 35 tokens: truncated
]


def _max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


# --- tokenizer and image preprocessing against transformers' BlipProcessor -------------------------------------


@pytest.fixture(scope="module")
def processor():
    from transformers import AutoTokenizer, BlipImageProcessor, BlipProcessor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        images = BlipImageProcessor(size={"height": 64, "width": 64})
        return BlipProcessor(image_processor=images, tokenizer=AutoTokenizer.from_pretrained(str(TOKENIZER)))


def test_tokenizer_equals_blip_processor(processor):
    tok = BlipTokenizer.from_directory(TOKENIZER)
    assert tok.context_length == 35 and tok.vocab_size == 262
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (2, 3, 0)  # [CLS], [SEP], [PAD] of vocab.txt
    assert tok.hf.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [260, 261]  # added after the vocabulary
    with pytest.warns(UserWarning, match=r"text 4 .* truncated to the context length 35"):
        ids = tok(TEXTS)
    want = processor(text=TEXTS, padding="max_length", max_length=35, truncation=True, return_tensors="np")
    np.testing.assert_array_equal(ids, want["input_ids"])
    np.testing.assert_array_equal(tok.mask(ids), want["attention_mask"])
    assert ids.dtype == np.int32 and ids[4, -1] == tok.eos_id  # truncated, [SEP] kept
    assert tok.tokens("Zebras sitting") == ["[CLS]", "z", "##e", "##b", "##r", "##a", "##s", "sitting", "[SEP]"]
    assert tok.ids("the  RED   car") == tok.ids("the red car")  # lowercased, white space collapsed


def test_tokenizer_refuses_bad_texts_and_directories(tmp_path):
    tok = BlipTokenizer.from_directory(TOKENIZER)
    with pytest.raises(InputError, match="text 1: empty text"):
        tok(["a dog", "  "])
    with pytest.raises(InputError, match="text 0: expected a string, got int"):
        tok([3])
    with pytest.raises(InputError, match="single string"):
        tok("a dog")
    with pytest.raises(CheckpointError, match="no tokenizer files"):
        BlipTokenizer.from_directory(tmp_path)
    with pytest.raises(CheckpointError, match="no such directory"):
        BlipTokenizer.from_directory(tmp_path / "absent")


def test_image_preprocessing_equals_blip_image_processor(processor):
    from PIL import Image

    ours = BlipImageProcessing.from_hf_dict(json.loads(processor.image_processor.to_json_string()))
    assert ours == BlipImageProcessing(height=64, width=64)
    got = ours(IMAGES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = processor(images=[Image.open(p) for p in IMAGES], return_tensors="np")["pixel_values"]
    assert got.shape == want.shape == (len(IMAGES), 3, 64, 64) and got.dtype == np.float32
    diff = _max_diff(got, want)
    print(f"pixels: max diff {diff:.1e}")
    assert diff < 1e-5
    assert BlipImageProcessing.from_hf_dict(BlipImageProcessing().to_hf_dict()) == BlipImageProcessing()


@pytest.mark.parametrize(
    "key, value, named",
    [
        ("size", {"shortest_edge": 384}, "'size' must be {height, width} of positive integers"),
        ("size", {"height": 0, "width": 384}, "'size' must be {height, width}"),
        ("image_mean", [0.5, 0.5], "'image_mean' must be 3 numbers"),
        ("image_std", [0.5, 0.0, 0.5], "'image_std' must be 3 positive numbers"),
        ("rescale_factor", -1, "'rescale_factor' must be a positive number"),
        ("resample", 9, "'resample' must be a PIL resampling filter"),
        ("do_normalize", "yes", "'do_normalize' must be true or false"),
        ("do_convert_rgb", False, "'do_convert_rgb' must be true"),
        ("image_processor_type", "CLIPImageProcessor", "'image_processor_type' must be one of BlipImageProcessor"),
    ],
)
def test_bad_preprocessor_values_name_the_key(key, value, named):
    d = {**BlipImageProcessing().to_hf_dict(), key: value}
    with pytest.raises(CheckpointError, match=r"my/preprocessor_config\.json") as e:
        BlipImageProcessing.from_hf_dict(d, source="my/preprocessor_config.json")
    assert named in str(e.value)


# --- jaxplain.load of a BLIP directory -----------------------------------------------------------------------

# widths that fit the fixture tokenizer (262 ids, [CLS] 2, [SEP] 3, [DEC] 260)
LOAD_CONFIG = BlipConfig(
    text=BlipTextConfig(vocab_size=262, hidden_size=32, intermediate_size=48, num_layers=1, num_heads=4,
                        max_positions=40, bos_token_id=260, sep_token_id=3),
    vision=BlipVisionConfig(image_size=32, patch_size=8, hidden_size=24, intermediate_size=32, num_layers=1,
                            num_heads=4),
    embed_dim=16,
)  # fmt: skip


def _perturbed(key, config):
    """Random params with every weight moved off its initial value (biases off zero, norms off one)."""
    params = blip.init_params(key, config)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.fold_in(key, 7), len(leaves))
    return jax.tree.unflatten(tree, [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def _write_model_dir(directory: Path, config=LOAD_CONFIG, seed=0) -> dict:
    params = _perturbed(jax.random.PRNGKey(seed), config)
    write_checkpoint(directory, params, config)
    for f in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(TOKENIZER / f, directory / f)
    processing = BlipImageProcessing.for_image_size(config.vision.image_size)
    (directory / "preprocessor_config.json").write_text(json.dumps(processing.to_hf_dict()))
    return params


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("blip-model")
    _write_model_dir(d)
    return d


def test_load_gives_a_blip_model_equal_to_the_pure_functions(model_dir):
    model = jaxplain.load(model_dir)
    assert isinstance(model, BlipModel) and model.config == LOAD_CONFIG and model.embed_dim == 16
    assert "BlipModel(" in repr(model) and model.fingerprint in repr(model)
    texts = ["a dog on the grass", "two cats sitting on a bed", "a red car"]
    ids, mask = model.tokenize(texts)
    pixels = model.preprocess(IMAGES[:3])
    img = blip.encode_image(model.params, jnp.asarray(pixels), model.config)
    txt = blip.encode_text(model.params, jnp.asarray(ids), jnp.asarray(mask), model.config)
    assert _max_diff(model.encode_images(IMAGES[:3]), img) < 1e-6
    assert _max_diff(model.encode_images(pixels), img) < 1e-6
    assert _max_diff(model.encode_texts(texts), txt) < 1e-6
    tokens = blip.image_tokens(model.params, jnp.asarray(pixels), model.config)
    assert _max_diff(model.image_tokens(IMAGES[:3]), tokens) < 1e-5  # tokens of size ~2, batched in 8s
    p = blip.itm_forward(model.params, tokens, jnp.asarray(ids), jnp.asarray(mask), model.config)[0]
    assert _max_diff(model.itm(IMAGES[:3], texts), p) < 1e-6
    maps = model.attention_maps(IMAGES[1], "two cats sitting on a bed")
    assert maps["tokens"] == ["[CLS]", "two", "cats", "sitting", "on", "a", "bed", "[SEP]"]
    assert maps["maps"].shape == (1, 4, 8, 4, 4) and abs(maps["p_match"] - float(p[1])) < 1e-6
    with pytest.raises(InputError, match="2 images but 3 texts"):
        model.itm(IMAGES[:2], texts)
    # the same directory, the same fingerprint; other weights, another
    assert jaxplain.load(model_dir).fingerprint == model.fingerprint
    bf16 = jaxplain.load(model_dir, dtype="bfloat16")
    assert bf16.params["text"]["token_embedding"].dtype == jnp.bfloat16 and bf16.fingerprint == model.fingerprint
    assert _max_diff(bf16.encode_texts(texts), txt) < 0.05


def test_load_names_what_is_wrong(model_dir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(model_dir, other)
    _write_model_dir(other, seed=1)
    assert jaxplain.load(other).fingerprint != jaxplain.load(model_dir).fingerprint
    bad = tmp_path / "bad"
    shutil.copytree(model_dir, bad)
    (bad / "preprocessor_config.json").write_text(json.dumps({"size": {"height": 64, "width": 64}}))
    with pytest.raises(CheckpointError, match=r"resizes images to 64×64, but the vision tower takes 32×32"):
        jaxplain.load(bad)
    (bad / "preprocessor_config.json").write_text("{oops")
    with pytest.raises(CheckpointError, match=r"preprocessor_config.json: not valid JSON"):
        jaxplain.load(bad)
    (bad / "preprocessor_config.json").unlink()  # BLIP's standard preprocessing at the tower's size
    assert jaxplain.load(bad).processing == BlipImageProcessing.for_image_size(32)
    (bad / "vocab.txt").unlink()
    with pytest.raises(CheckpointError, match="no tokenizer files"):
        jaxplain.load(bad)
    small = tmp_path / "small"
    small_config = BlipConfig(text=BlipTextConfig(**{**LOAD_CONFIG.text.__dict__, "vocab_size": 200}),
                              vision=LOAD_CONFIG.vision, embed_dim=16)  # fmt: skip
    _write_model_dir(small, small_config)
    with pytest.raises(CheckpointError, match="the tokenizer has 262 tokens but the model's embedding table has 200"):
        jaxplain.load(small)


@pytest.mark.reference
def test_loaded_model_equals_transformers_blip_processor_and_model(model_dir):
    torch = pytest.importorskip("torch")
    from PIL import Image
    from transformers import BlipForImageTextRetrieval, BlipProcessor

    model = jaxplain.load(model_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proc = BlipProcessor.from_pretrained(str(model_dir))
    ref = BlipForImageTextRetrieval.from_pretrained(str(model_dir)).eval()
    texts = ["a dog on the grass", "two cats sitting on a bed", "a red car", "a photo of a boat"]
    images = [Image.open(p) for p in IMAGES[:4]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inputs = proc(images=images, text=texts, padding="max_length", max_length=35, return_tensors="pt")
    with torch.no_grad():
        logits = ref(**inputs, use_itm_head=True).itm_score.numpy()
        cos = ref(**inputs, use_itm_head=False).itm_score.numpy()
    want = np.exp(logits[:, 1]) / np.exp(logits).sum(1)
    got = model.itm(IMAGES[:4], texts)
    sim = model.similarity(IMAGES[:4], texts)
    print(f"itm p max diff {_max_diff(got, want):.1e}, similarity {_max_diff(sim, cos):.1e}")
    assert _max_diff(got, want) < 1e-4
    assert _max_diff(sim, cos) < 1e-4
    assert np.ptp(want) > 0.01


# --- counterfactuals under the matching head -----------------------------------------------------------------

N_BANK, N_QUERIES = 64, 8


@pytest.fixture(scope="module")
def problem():
    """The golden tiny BLIP, 64 random-pixel bank images, 8 query images (the first 2 also in the bank: rows 5
    and 9) with random texts, and every (query text, bank image) p(match)."""
    params, config = read_checkpoint(GOLDEN)
    params = jax.tree.map(jnp.asarray, params)
    rng = np.random.RandomState(0)
    bank_px = rng.normal(0, 1, (N_BANK, 3, 16, 16)).astype(np.float32)
    q_px = rng.normal(0, 1, (N_QUERIES, 3, 16, 16)).astype(np.float32)
    q_px[0], q_px[1] = bank_px[5], bank_px[9]
    ids = np.zeros((N_QUERIES, 16), np.int64)
    for i in range(N_QUERIES):
        n = rng.randint(3, 17)
        ids[i, :n] = rng.randint(3, 64, n)
    mask = (ids != 0).astype(np.int64)
    bank = itm.ItmBank.from_pixels(params, config, bank_px, keep_tokens=True)
    u0 = np.asarray(blip.encode_image(params, jnp.asarray(q_px), config))
    v = np.asarray(blip.encode_text(params, jnp.asarray(ids), jnp.asarray(mask), config))
    # brute force, one pair at a time
    one = jax.jit(lambda t, i, m: blip.itm_forward(params, t[None], i[None], m[None], config)[0][0])
    p_loop = np.array([[float(one(bank.tokens[j], ids[q], mask[q])) for j in range(N_BANK)] for q in range(N_QUERIES)])
    return dict(params=params, config=config, bank_px=bank_px, bank=bank, u0=u0, v=v, ids=ids, mask=mask,
                p_loop=p_loop)  # fmt: skip


def _tau(p: np.ndarray, quantile: float) -> float:
    """A threshold between two consecutive scores (none sits on it), near the quantile."""
    s = np.sort(p.ravel())
    i = int(quantile * (len(s) - 1))
    return float((s[i] + s[i + 1]) / 2)


def _loop_oracle(pb, dist, tau, direction, exclude):
    """The nearest valid bank item per query, by Python loops."""
    out = []
    for q in range(len(pb)):
        best = (-1, np.inf)
        for j in range(pb.shape[1]):
            ok = pb[q, j] >= tau if direction == "above" else pb[q, j] <= tau
            if ok and j != exclude[q] and dist[q, j] > 1e-3 and dist[q, j] < best[1]:
                best = (j, dist[q, j])
        out.append(best[0])
    return np.array(out)


OUTCOMES = [("above", 0.5), ("below", 0.5), ("above", 0.9), ("below", 0.1)]


@pytest.mark.parametrize("direction, quantile", OUTCOMES)
def test_oracle_equals_a_brute_force_loop(problem, direction, quantile):
    pr = problem
    tau = _tau(pr["p_loop"], quantile)
    passing = pr["p_loop"] >= tau if direction == "above" else pr["p_loop"] <= tau
    assert 0 < passing.mean() < 1  # some but not all bank items reach the outcome
    exclude = np.array([5, -1, -1, -1, -1, -1, -1, -1])  # query 1 (bank row 9) is excluded by its distance
    best, p = itm.oracle(pr["params"], pr["config"], pr["bank"], pr["u0"], pr["ids"], pr["mask"], direction, tau,
                         exclude=exclude, chunk=24)  # fmt: skip
    scored = ~np.isnan(p)
    assert not scored[0, 5] and not scored[1, 9] and scored.sum() == N_QUERIES * N_BANK - 2
    assert _max_diff(p[scored], pr["p_loop"][scored]) < 1e-6
    dist = np.linalg.norm(pr["bank"].embeddings[None].astype(np.float64) - pr["u0"][:, None], axis=-1)
    want = _loop_oracle(pr["p_loop"], dist, tau, direction, exclude)
    np.testing.assert_array_equal(best.ids, want)
    np.testing.assert_array_equal(best.found, want >= 0)
    f = best.found
    np.testing.assert_allclose(best.distance[f], dist[np.arange(N_QUERIES)[f], want[f]], atol=1e-6)  # float32 units
    np.testing.assert_array_equal(best.p_match[f], p[np.arange(N_QUERIES)[f], want[f]])


@pytest.mark.parametrize("direction, quantile", OUTCOMES)
def test_counterfactuals_reach_the_outcome_and_are_measured_against_the_oracle(problem, direction, quantile):
    pr = problem
    tau = _tau(pr["p_loop"], quantile)
    args = (pr["params"], pr["config"], pr["bank"])
    queries = (pr["ids"], pr["mask"], direction, tau)
    answers = itm.counterfactuals(*args, pr["u0"], pr["v"], *queries, k=4, chunk=16)
    best, _ = itm.oracle(*args, pr["u0"], *queries, chunk=16)
    f = answers.found
    # every answer reaches the outcome under the head, re-scored one pair at a time
    one = jax.jit(lambda t, i, m: blip.itm_forward(pr["params"], t[None], i[None], m[None], pr["config"])[0][0])
    for q in np.flatnonzero(f):
        p = float(one(pr["bank"].tokens[answers.ids[q]], pr["ids"][q], pr["mask"][q]))
        assert abs(p - answers.p_match[q]) < 1e-6
        assert (p >= tau) if direction == "above" else (p <= tau), (q, p, tau)
    assert (
        np.all(answers.ids[~f] == -1) and np.all(np.isinf(answers.distance[~f])) and np.isnan(answers.p_match[~f]).all()
    )
    # the query images that are bank rows 5 and 9 are never their own counterfactual
    assert answers.ids[0] != 5 and answers.ids[1] != 9
    # consistent with the oracle: found implies it exists; never nearer than the oracle's answer
    assert np.all(best.found[f])
    assert np.all(answers.distance[f] >= best.distance[f])
    same = answers.ids == best.ids
    np.testing.assert_array_equal(answers.distance[f & same], best.distance[f & same])  # bit for bit
    m = itm.compare(answers, best)
    print(direction, f"tau={tau:.3f}", m, "checked:", answers.checked.tolist())
    assert m["exist"] == best.found.sum() and m["found"] == f.sum()
    assert m["found_rate"] == (f.sum() / best.found.sum() if best.found.any() else 1.0)
    assert m["found_without_oracle"] == 0 and m["nearer_than_oracle"] == 0
    assert m["found"] == 0 or m["proximity_median"] >= 1.0
    assert m["found"] > 0  # the pipeline answers some queries
    assert answers.checked.max() <= 6 * 4 and answers.checked.min() >= 4  # 6 depths × k = 4, merged


def test_a_bank_without_tokens_recomputes_them_and_gives_the_same_answers(problem):
    pr = problem
    lazy = itm.ItmBank.from_pixels(pr["params"], pr["config"], pr["bank_px"], keep_tokens=False, chunk=16)
    assert callable(lazy.tokens) and _max_diff(lazy.embeddings, pr["bank"].embeddings) < 1e-6
    tau = _tau(pr["p_loop"], 0.5)
    got = itm.counterfactuals(pr["params"], pr["config"], lazy, pr["u0"], pr["v"], pr["ids"], None, "above", tau, k=4)
    want = itm.counterfactuals(pr["params"], pr["config"], pr["bank"], pr["u0"], pr["v"], pr["ids"], pr["mask"],
                               "above", tau, k=4)  # fmt: skip
    np.testing.assert_array_equal(got.ids, want.ids)
    assert _max_diff(got.p_match[got.found], want.p_match[want.found]) < 1e-6


@pytest.mark.reference
@pytest.mark.parametrize("direction, quantile", OUTCOMES[:2])
def test_counterfactuals_reach_the_outcome_under_transformers(problem, direction, quantile):
    torch = pytest.importorskip("torch")
    from transformers import BlipForImageTextRetrieval

    pr = problem
    ref = BlipForImageTextRetrieval.from_pretrained(str(GOLDEN)).eval()
    tau = _tau(pr["p_loop"], quantile)
    answers = itm.counterfactuals(pr["params"], pr["config"], pr["bank"], pr["u0"], pr["v"], pr["ids"], pr["mask"],
                                  direction, tau, k=4)  # fmt: skip
    q = np.flatnonzero(answers.found)
    assert len(q)
    with torch.no_grad():
        logits = ref(
            input_ids=torch.from_numpy(pr["ids"][q]),
            pixel_values=torch.from_numpy(pr["bank_px"][answers.ids[q]]),
            attention_mask=torch.from_numpy(pr["mask"][q]),
            use_itm_head=True,
        ).itm_score.numpy()
        # and the oracle's whole score matrix, for the first two queries
        all_logits = ref(
            input_ids=torch.from_numpy(np.repeat(pr["ids"][:2], N_BANK, 0)),
            pixel_values=torch.from_numpy(np.tile(pr["bank_px"], (2, 1, 1, 1))),
            attention_mask=torch.from_numpy(np.repeat(pr["mask"][:2], N_BANK, 0)),
            use_itm_head=True,
        ).itm_score.numpy()
    p = np.exp(logits[:, 1]) / np.exp(logits).sum(1)
    print(direction, f"tau={tau:.3f}", "p(match) by transformers:", np.round(p, 4), "max diff",
          f"{_max_diff(p, answers.p_match[q]):.1e}")  # fmt: skip
    assert _max_diff(p, answers.p_match[q]) < 1e-5
    assert np.all(p >= tau) if direction == "above" else np.all(p <= tau)
    p_all = (np.exp(all_logits[:, 1]) / np.exp(all_logits).sum(1)).reshape(2, N_BANK)
    assert _max_diff(p_all, pr["p_loop"][:2]) < 1e-5


def test_targets_move_toward_or_away_from_the_text(problem):
    pr = problem
    up = itm.targets(pr["u0"], pr["v"], "above")
    down = itm.targets(pr["u0"], pr["v"], "below", depths=(0.0, 1.0))
    assert up.shape == (N_QUERIES, len(itm.DEPTHS), 16) and down.shape == (N_QUERIES, 2, 16)
    np.testing.assert_allclose(np.linalg.norm(up, axis=-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(up[:, 0], pr["u0"], atol=1e-6)
    sim_up = np.einsum("nde,ne->nd", up, pr["v"])
    assert np.all(np.diff(sim_up, axis=1) > 0)  # deeper: nearer the text
    expect = (pr["u0"] - pr["v"]) / np.linalg.norm(pr["u0"] - pr["v"], axis=-1, keepdims=True)
    np.testing.assert_allclose(down[:, 1], expect, atol=1e-6)


def test_retrieve_merges_and_dedupes():
    class Fixed:
        def search(self, queries, k):
            return np.array([[3, 1], [1, 7], [2, 3], [2, 2]])[: len(queries), :k], None

    got = itm.retrieve(Fixed(), np.zeros((2, 2, 4), np.float32), 2)
    np.testing.assert_array_equal(got, [[1, 3, 7, -1], [2, 3, -1, -1]])


def test_compare_by_hand():
    inf, nan = np.inf, np.nan
    best = itm.ItmCounterfactuals(
        ids=np.array([4, 7, -1, 2]), distance=np.array([0.5, 1.0, inf, 0.25]),
        p_match=np.array([0.9, 0.8, nan, 0.7]), found=np.array([True, True, False, True]), checked=np.full(4, 9),
    )  # fmt: skip
    got = itm.ItmCounterfactuals(
        ids=np.array([4, 9, -1, -1]), distance=np.array([0.5, 1.5, inf, inf]),
        p_match=np.array([0.9, 0.6, nan, nan]), found=np.array([True, True, False, False]), checked=np.full(4, 3),
    )  # fmt: skip
    m = itm.compare(got, best)
    assert m["queries"] == 4 and m["exist"] == 3 and m["found"] == 2
    assert m["found_rate"] == pytest.approx(2 / 3) and m["same_item"] == 0.5
    assert m["proximity_median"] == pytest.approx(1.25) and m["proximity_max"] == 1.5
    assert m["found_without_oracle"] == 0 and m["nearer_than_oracle"] == 0


def test_bad_outcomes_and_queries_are_refused(problem):
    pr = problem
    args = (pr["params"], pr["config"], pr["bank"], pr["u0"], pr["v"], pr["ids"], pr["mask"])
    with pytest.raises(InputError, match="direction must be one of"):
        itm.counterfactuals(*args, "sideways", 0.5)
    with pytest.raises(InputError, match=r"tau must be one probability in \[0, 1\] or 8 of them"):
        itm.counterfactuals(*args, "above", 1.5)
    with pytest.raises(InputError, match="tau must be"):
        itm.counterfactuals(*args, "above", np.full(3, 0.5))
    with pytest.raises(InputError, match=r"query image embeddings must be \[N, 16\]"):
        itm.verify(pr["params"], pr["config"], pr["bank"], np.zeros((8, 2), int), pr["u0"][:, :4], pr["ids"], None,
                   "above", 0.5)  # fmt: skip
    with pytest.raises(InputError, match="outside the bank of 64 items"):
        itm.verify(pr["params"], pr["config"], pr["bank"], np.full((8, 2), 64), pr["u0"], pr["ids"], None,
                   "above", 0.5)  # fmt: skip

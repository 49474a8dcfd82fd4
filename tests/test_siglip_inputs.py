"""SigLIP and SigLIP 2 inputs equal transformers' processors: the checkpoint's tokenizer, padded to 64 tokens,
and SiglipImageProcessor's square resize, rescale and normalisation.

The tokenizers are the tiny fixtures made by ``tests/fixtures/make_siglip_tokenizer.py``: a SentencePiece
model saved by transformers' ``SiglipTokenizer`` and a Gemma-kind ``tokenizer.json`` in a ``siglip2``
checkpoint directory.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from transformers import AutoTokenizer, SiglipImageProcessorPil

from jaxplain.data.siglip_inputs import SIGLIP_CONTEXT_LENGTH, SiglipImageProcessing, SiglipTokenizer
from jaxplain.errors import CheckpointError, InputError

FIXTURES = Path(__file__).parent / "fixtures"
TOKENIZERS = FIXTURES / "siglip-tokenizer"
IMAGES = sorted((FIXTURES / "images").iterdir())
RNG = np.random.RandomState(3)

TEXTS = [
    "a photo of a cat",
    "A PHOTO OF A CAT",
    "a photo of a cat!!!",
    'An ankle-boot, seen (from) the side; "quoted" & <tagged>?',
    "a naïve café — 12 € ünïcödé, crème brûlée",
    "東京の写真 and фотография кошки 🐱👟",
    "two  spaces\tand\ttabs\nand a newline  ",
    "a sandal and a bag " * 20,
    "x",
    "▁a piece marker ▁▁ inside",
    "digits 0123456789 and 3.14",
]


def sentencepiece_dir():
    pytest.importorskip("sentencepiece")
    return TOKENIZERS / "siglip"


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
    """SigLIP 2's tokenizer files without the checkpoint's config.json: plain Gemma (no lowercasing)."""
    out = tmp_path_factory.mktemp("siglip_inputs_gemma")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TOKENIZERS / "siglip2" / f, out / f)
    return out


@pytest.fixture(scope="module")
def right_padded_dir(tmp_path_factory):
    """SigLIP 2's tokenizer with ``padding_side`` set to right in its tokenizer_config.json."""
    out = tmp_path_factory.mktemp("siglip_inputs_right")
    for f in (TOKENIZERS / "siglip2").iterdir():
        shutil.copy(f, out / f.name)
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    (out / "tokenizer_config.json").write_text(json.dumps({**cfg, "padding_side": "right"}))
    return out


def directory(kind, request):
    if kind == "siglip":
        return sentencepiece_dir()
    if kind == "siglip2":
        return TOKENIZERS / "siglip2"
    return request.getfixturevalue(f"{kind}_dir")


def reference_ids(path, texts, length):
    ref = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    return np.asarray(ref(texts, padding="max_length", max_length=length, truncation=True).input_ids)


@pytest.mark.parametrize("kind", ["siglip", "siglip2", "gemma", "right_padded"])
@pytest.mark.parametrize("length", [SIGLIP_CONTEXT_LENGTH, 12])
def test_ids_equal_the_reference_tokenizer_padded_to_max_length(kind, length, request):
    path = directory(kind, request)
    tok = SiglipTokenizer.from_directory(path, context_length=length)
    with pytest.warns(UserWarning, match="truncated"):  # at least the long text is
        got = tok.batch(TEXTS)
    assert got.dtype == np.int32 and got.shape == (len(TEXTS), length)
    np.testing.assert_array_equal(got, reference_ids(path, TEXTS, length))
    # every row holds its end-of-sequence token, where the tokenizer's padding side leaves it
    for row in got:
        content = row[row != tok.pad_id] if tok.pad_id != tok.eos_id else row[: list(row).index(tok.eos_id) + 1]
        assert content[-1] == tok.eos_id


def test_siglip_tokenizer_lowercases_strips_punctuation_and_pads_with_its_eos():
    tok = SiglipTokenizer.from_directory(sentencepiece_dir())
    assert (tok.kind, tok.context_length, tok.eos_id, tok.pad_id, tok.padding_side) == (
        "SiglipTokenizer",
        64,
        1,
        1,
        "right",
    )
    plain = tok.ids("a photo of a cat")
    assert plain[-1] == 1 and 1 not in plain[:-1]
    for variant in ["A PHOTO OF A CAT", "a photo of a cat!!!", "a, photo: of (a) cat.", "  a   photo\tof a\ncat "]:
        assert tok.ids(variant) == plain, variant
    # the tokens are SentencePiece's own for the canonical text
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(TOKENIZERS / "siglip" / "spiece.model"))
    assert plain[:-1] == sp.encode("a photo of a cat")
    row = tok.pad(plain)
    assert row.tolist() == plain + [1] * (64 - len(plain))


def test_siglip2_tokenizer_lowercases_and_gemma_does_not(gemma_dir):
    siglip2 = SiglipTokenizer.from_directory(TOKENIZERS / "siglip2")
    gemma = SiglipTokenizer.from_directory(gemma_dir)
    assert siglip2.kind == "Siglip2Tokenizer" and gemma.kind == "GemmaTokenizer"
    for tok in (siglip2, gemma):
        assert (tok.eos_id, tok.pad_id, tok.context_length, tok.padding_side) == (1, 0, 64, "left")
    assert siglip2.ids("A PHOTO OF A CAT") == siglip2.ids("a photo of a cat") == gemma.ids("a photo of a cat")
    assert gemma.ids("A PHOTO OF A CAT") != gemma.ids("a photo of a cat")
    # Gemma keeps punctuation (as byte tokens here) and appends <eos>, with no <bos>
    ids = siglip2.ids("a cat!")
    assert ids[-1] == 1 and 2 not in ids and siglip2.hf.convert_ids_to_tokens(ids[-2]) == "<0x21>"
    # left padding: the pads come first, the text ends the row
    row = siglip2.pad(ids)
    assert row[-len(ids) :].tolist() == ids and (row[: -len(ids)] == 0).all()


def test_truncation_keeps_the_eos_and_names_the_text():
    tok = SiglipTokenizer.from_directory(TOKENIZERS / "siglip2", context_length=10)
    long = "a photo of a cat " * 10
    with pytest.warns(UserWarning, match=r"text 1 'a photo of a cat a photo.*' has \d+ tokens; truncated to .* 10"):
        got = tok.batch(["short", long])
    assert got[1, -1] == tok.eos_id and (got[1] != tok.pad_id).all()
    full = tok.hf(long).input_ids
    assert got[1, :-1].tolist() == full[:9]


@pytest.mark.parametrize("kind", ["siglip", "siglip2"])
def test_bad_texts_are_errors_naming_them(kind, request):
    tok = SiglipTokenizer.from_directory(directory(kind, request))
    with pytest.raises(InputError, match="text 2: empty text"):
        tok.batch(["a", "b", "  \t\n"])
    for bad, what in ((None, "NoneType"), (3, "int"), (b"a cat", "bytes")):
        with pytest.raises(InputError, match=f"text 1: expected a string, got {what}"):
            tok.batch(["a", bad])
    with pytest.raises(InputError, match="single string"):
        tok.batch("a photo")
    assert tok.batch([]).shape == (0, 64) and tok([]).dtype == np.int32
    with pytest.raises(InputError, match="do not fit the context length 64"):
        tok.pad([5] * 65)


def test_punctuation_only_text_has_no_siglip_tokens():
    tok = SiglipTokenizer.from_directory(sentencepiece_dir())
    with pytest.raises(InputError, match=r"text 1 '\?!\.\.\.': no tokens once the tokenizer has canonicalised it"):
        tok.batch(["a cat", "?!..."])


def test_unloadable_tokenizer_directories_are_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no such directory"):
        SiglipTokenizer.from_directory(tmp_path / "absent")
    with pytest.raises(CheckpointError, match="no tokenizer files"):
        SiglipTokenizer.from_directory(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=f"{tmp_path}: cannot load its tokenizer"):
        SiglipTokenizer.from_directory(tmp_path)
    with pytest.raises(InputError, match="context_length"):
        SiglipTokenizer.from_directory(TOKENIZERS / "siglip2", context_length=0)


# ---------------------------------------------------------------- images


def reference_pixels(images, **kw):
    return SiglipImageProcessorPil(**kw)(images=images, return_tensors="np")["pixel_values"]


@pytest.mark.parametrize("resample", [3, 2], ids=["bicubic", "bilinear"])
@pytest.mark.parametrize("size", [(224, 224), (48, 40)])
def test_fixture_images_equal_siglip_image_processor(resample, size):
    h, w = size
    mine = SiglipImageProcessing(height=h, width=w, resample=resample)
    want = reference_pixels(
        [Image.open(p) for p in IMAGES], size={"height": h, "width": w}, resample=resample
    )  # RGB, RGBA, palette GIF, grey, CMYK JPEG, tall, small
    got = mine(IMAGES)
    assert got.dtype == np.float32 and got.shape == (len(IMAGES), 3, h, w)
    np.testing.assert_allclose(got, want, atol=1e-5)
    for i, p in enumerate(IMAGES):
        np.testing.assert_array_equal(mine.pixels(p), got[i])
    assert got.min() >= -1.0 and got.max() <= 1.0


def test_a_real_siglip_config_and_its_round_trip():
    config = {  # as SigLIP checkpoints ship it
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_processor_type": "SiglipImageProcessor",
        "image_std": [0.5, 0.5, 0.5],
        "processor_class": "SiglipProcessor",
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "size": {"height": 64, "width": 64},
    }
    p = SiglipImageProcessing.from_hf_dict(config)
    assert p == SiglipImageProcessing.for_image_size(64) and p.resample == int(Image.Resampling.BICUBIC)
    assert SiglipImageProcessing.from_hf_dict(p.to_hf_dict()) == p
    assert SiglipImageProcessing() == SiglipImageProcessing.for_image_size(224)
    ref = SiglipImageProcessorPil(**{k: v for k, v in config.items() if k not in ("image_processor_type",)})
    imgs = [Image.open(x) for x in IMAGES]
    np.testing.assert_allclose(p(IMAGES), ref(images=imgs, return_tensors="np")["pixel_values"], atol=1e-5)
    other = {
        **config,
        "image_mean": [0.1, 0.2, 0.3],
        "image_std": 0.25,
        "resample": 2,
        "size": {"height": 30, "width": 50},
    }
    q = SiglipImageProcessing.from_hf_dict(other)
    assert (q.mean, q.std, q.resample, q.height, q.width) == ((0.1, 0.2, 0.3), (0.25,) * 3, 2, 30, 50)
    want = reference_pixels(
        imgs, image_mean=[0.1, 0.2, 0.3], image_std=0.25, resample=2, size={"height": 30, "width": 50}
    )
    np.testing.assert_allclose(q(IMAGES), want, atol=1e-5)


def test_the_square_resize_ignores_the_aspect_ratio_and_values_are_v_over_127_5_minus_1():
    strip = RNG.randint(0, 256, (20, 100, 3), dtype=np.uint8)
    p = SiglipImageProcessing(height=32, width=32)
    got = p.pixels(strip)
    resized = np.asarray(Image.fromarray(strip).resize((32, 32), Image.Resampling.BICUBIC), np.float64)
    np.testing.assert_allclose(got, (resized / 255 - 0.5).transpose(2, 0, 1) / 0.5, atol=1e-6)
    np.testing.assert_allclose(got, reference_pixels([strip], size={"height": 32, "width": 32})[0], atol=1e-5)
    levels = np.array([0, 51, 128, 255], np.uint8)
    flat = np.repeat(np.repeat(levels[:, None, None], 32, 1), 32, 2)[..., None].repeat(3, -1)  # [4, 32, 32, 3]
    out = p(list(flat))
    np.testing.assert_allclose(out[:, 0, 0, 0], levels / 127.5 - 1, atol=1e-6)
    assert out[0].min() == -1.0 and out[3].max() == 1.0


def test_arrays_and_pil_images_equal_the_reference():
    items = [
        RNG.randint(0, 256, (40, 30, 3), dtype=np.uint8),
        RNG.randint(0, 256, (3, 17, 50), dtype=np.uint8),
        Image.fromarray(RNG.randint(0, 256, (33, 21, 4), dtype=np.uint8), "RGBA"),
        Image.fromarray(RNG.randint(0, 256, (33, 21), dtype=np.uint8), "L"),
    ]
    want = reference_pixels(items, size={"height": 24, "width": 24})
    np.testing.assert_allclose(SiglipImageProcessing(height=24, width=24)(items), want, atol=1e-5)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("size", 224, r"'size' must be \{height, width\} of positive integers, got 224"),
        ("size", {"shortest_edge": 224}, r"'size' must be \{height, width\}.*got \{\"shortest_edge\": 224\}"),
        ("size", {"height": 0, "width": 224}, "'size' must be"),
        ("size", {"height": 224, "width": 224, "longest_edge": 300}, r"'size' must be .*\(and no other keys\)"),
        ("image_mean", [0.5, 0.5], "'image_mean' must be 3 numbers"),
        ("image_std", [0.5, 0.0, 0.5], "'image_std' must be 3 positive numbers"),
        ("do_resize", "yes", "'do_resize' must be true or false"),
        ("do_center_crop", True, "'do_center_crop' must be false .*no crop"),
        ("do_pad", True, "'do_pad' must be false"),
        ("do_convert_rgb", False, "'do_convert_rgb' must be true"),
        ("resample", 7, "'resample' must be a PIL resampling filter"),
        ("resample", 2.0, "'resample' must be a PIL resampling filter"),
        ("rescale_factor", -1, "'rescale_factor' must be a positive number"),
        ("image_processor_type", "CLIPImageProcessor", "'image_processor_type' must be one of SiglipImageProcessor"),
        (
            "image_processor_type",
            "Siglip2ImageProcessor",
            r"'image_processor_type' Siglip2.* variable-resolution \(NaFlex\)",
        ),
    ],
)
def test_bad_config_values_name_the_key(key, value, message):
    with pytest.raises(CheckpointError, match="^cfg.json: " + message):
        SiglipImageProcessing.from_hf_dict({"size": {"height": 224, "width": 224}, key: value}, source="cfg.json")


def test_reading_a_checkpoint_directory(tmp_path):
    assert SiglipImageProcessing.from_directory(tmp_path) == SiglipImageProcessing()
    path = tmp_path / "preprocessor_config.json"
    path.write_text(json.dumps(SiglipImageProcessing(height=96, width=80, resample=2).to_hf_dict()))
    assert SiglipImageProcessing.from_directory(tmp_path) == SiglipImageProcessing(height=96, width=80, resample=2)
    path.write_text('{"size": {"height": 96,}')
    with pytest.raises(CheckpointError, match=r"preprocessor_config.json: not valid JSON .*line 1, column"):
        SiglipImageProcessing.from_directory(tmp_path)
    path.write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="must be a JSON object of settings, got an array"):
        SiglipImageProcessing.from_directory(tmp_path)


def test_bad_items_are_named(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"this is not a png")
    p = SiglipImageProcessing(height=16, width=16)
    with pytest.raises(InputError, match=r"broken\.png: cannot read it as an image"):
        p([IMAGES[0], bad])
    with pytest.raises(InputError, match="no such file"):
        p.pixels(tmp_path / "absent.png")
    with pytest.raises(InputError, match="single one"):
        p(str(IMAGES[0]))
    assert p([]).shape == (0, 3, 16, 16)
    keep = SiglipImageProcessing(do_resize=False)
    a, b = RNG.randint(0, 256, (8, 8, 3), dtype=np.uint8), RNG.randint(0, 256, (8, 9, 3), dtype=np.uint8)
    assert keep([a, a]).shape == (2, 3, 8, 8)
    with pytest.raises(InputError, match=r"item 1 .*9×8 pixels, but do_resize is false and the first image is 8×8"):
        keep([a, b])


def test_a_sentencepiece_model_without_the_package_says_what_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "sentencepiece" else real(name, *a)
    )
    with pytest.raises(CheckpointError, match=r"SentencePiece model \(spiece.model\); install the sentencepiece"):
        SiglipTokenizer.from_directory(TOKENIZERS / "siglip")

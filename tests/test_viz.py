"""Heat-map overlays and word highlights, checked against colours and blends computed by hand."""

import numpy as np
import pytest
from PIL import Image

from jaxplain.data.images import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ImageProcessing
from jaxplain.viz.heatmap import (
    NAN_COLOUR,
    NEGATIVE,
    POSITIVE,
    SEQUENTIAL,
    ZERO,
    colorize,
    display_image,
    overlay,
    side_by_side,
    upsample,
)
from jaxplain.viz.text import GAP, MARGIN, UNSIGNED, highlight_ansi, highlight_html, highlight_image

RNG = np.random.RandomState(0)
FIRST, LAST = tuple(SEQUENTIAL[0].astype(int)), tuple(SEQUENTIAL[-1].astype(int))


def test_colorize_unsigned_endpoints_and_interpolation():
    # vmax defaults to the max, 2.0. 0.6 / 2 = 0.3 lies 0.4 of the way from anchor 2 to anchor 3:
    # (85, 15, 109) + 0.4 · ((136, 34, 106) - (85, 15, 109)) = (105.4, 22.6, 107.8).
    c = colorize(np.array([[0.0, 2.0], [0.6, np.nan]]))
    assert c.shape == (2, 2, 3) and c.dtype == np.uint8
    assert tuple(c[0, 0]) == FIRST == (0, 0, 4)
    assert tuple(c[0, 1]) == LAST == (252, 255, 164)
    assert tuple(c[1, 0]) == (105, 23, 108)
    assert tuple(c[1, 1]) == NAN_COLOUR


def test_colorize_unsigned_clips_to_vmax_and_guards_zero():
    c = colorize(np.array([[0.0, 1.0, 5.0]]), vmax=1.0)
    assert [tuple(x) for x in c[0]] == [FIRST, LAST, LAST]
    assert (colorize(np.zeros((3, 3))) == FIRST).all()


def test_colorize_signed():
    # Signed because of the negative entry; vmax = max |v| = 2. 0.5 / 2 = 0.25 of the way white → red:
    # 255 + 0.25 · ((178, 24, 43) - 255) = (235.75, 197.25, 202).
    c = colorize(np.array([[-2.0, 0.0, 2.0, 0.5, np.nan]]))
    assert [tuple(x) for x in c[0]] == [NEGATIVE, ZERO, POSITIVE, (236, 197, 202), NAN_COLOUR]
    clipped = colorize(np.array([[-9.0, 1.0, 9.0]]), vmax=2.0)
    assert [tuple(x) for x in clipped[0]] == [NEGATIVE, (216, 140, 149), POSITIVE]  # (216.5, 139.5, 149), half-even
    assert ZERO == (255, 255, 255)
    # Forced signed without negatives: 0 is white, not the ramp's black.
    assert tuple(colorize(np.array([[0.0, 1.0]]), signed=True)[0, 0]) == ZERO
    # Forced unsigned: negatives clip to the ramp's start.
    assert tuple(colorize(np.array([[-1.0, 1.0]]), signed=False)[0, 0]) == FIRST


def test_upsample_nearest_is_blocks():
    grid = np.array([[1.0, 2.0], [3.0, -4.0]])
    up = upsample(grid, (4, 4), smooth=False)
    assert up.dtype == np.float32
    np.testing.assert_array_equal(up, np.kron(grid, np.ones((2, 2))))


def test_upsample_bilinear():
    np.testing.assert_allclose(upsample(np.full((7, 7), 0.3), (224, 224)), 0.3, rtol=1e-6)
    # Pixel centres of the 4-wide row sit at -0.25, 0.25, 0.75, 1.25 in grid coordinates (edges clamp).
    np.testing.assert_allclose(upsample(np.array([[0.0, 1.0]]), (1, 4)), [[0.0, 0.25, 0.75, 1.0]], atol=1e-6)
    assert upsample(np.zeros((4, 2)), (40, 30)).shape == (40, 30)
    with pytest.raises(ValueError, match="must be"):
        upsample(np.zeros((1, 4, 4)), (8, 8))


def test_display_image_undoes_clip_normalisation():
    img = RNG.randint(0, 256, (9, 13, 3), dtype=np.uint8)
    proc = ImageProcessing(do_resize=False, do_center_crop=False)
    assert proc.mean == OPENAI_CLIP_MEAN and proc.std == OPENAI_CLIP_STD
    pixels = proc.pixels(img)
    assert pixels.shape == (3, 9, 13)
    back = np.asarray(display_image(pixels, proc)).astype(int)
    assert np.abs(back - img).max() <= 1
    with pytest.raises(ValueError, match="ImageProcessing"):
        display_image(pixels)


def test_display_image_other_inputs(tmp_path):
    gray = RNG.randint(0, 256, (5, 6), dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(display_image(gray)), np.repeat(gray[..., None], 3, -1))
    rgb = RNG.randint(0, 256, (5, 6, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "x.png")
    for item in (rgb, Image.fromarray(rgb).convert("RGBA"), tmp_path / "x.png", str(tmp_path / "x.png")):
        out = display_image(item)
        assert out.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(out), rgb)


def test_overlay_blends():
    img = RNG.randint(0, 256, (4, 6, 3), dtype=np.uint8)
    img[0, 0] = (10, 21, 30)
    heat = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]])  # unsigned, max 3 at the top-left cell
    np.testing.assert_array_equal(np.asarray(overlay(img, heat, alpha=0.0, size=None)), img)
    expected = colorize(upsample(heat, (4, 6)))
    np.testing.assert_array_equal(np.asarray(overlay(img, heat, alpha=1.0, size=None)), expected)
    # Pixel (0, 0): half of (10, 21, 30) and half of the ramp's end (252, 255, 164).
    half = np.asarray(overlay(img, heat, alpha=0.5, size=None, smooth=False))
    assert tuple(half[0, 0]) == (131, 138, 97)
    with pytest.raises(ValueError, match="alpha"):
        overlay(img, heat, alpha=1.5)


def test_overlay_resizes_small_images_crisply():
    img = RNG.randint(0, 256, (28, 28), dtype=np.uint8)
    heat = RNG.rand(7, 7)
    plain = np.asarray(overlay(img, heat, alpha=0.0, size=112))
    assert plain.shape == (112, 112, 3)
    np.testing.assert_array_equal(plain[..., 0], np.kron(img, np.ones((4, 4), np.uint8)))
    blended = np.asarray(overlay(img, heat, alpha=0.5, size=112, smooth=False))
    blocks = blended.reshape(28, 4, 28, 4, 3)
    assert (blocks == blocks[:, :1, :, :1]).all()  # each source pixel (and heat cell) is uniform


def test_overlay_shrinks_large_images_and_reads_model_pixels():
    proc = ImageProcessing.for_image_size(32)
    pixels = proc.pixels(RNG.randint(0, 256, (40, 50, 3), dtype=np.uint8))
    out = overlay(pixels, np.ones((4, 4)), alpha=0.0, size=None, processing=proc)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(display_image(pixels, proc)))
    wide = overlay(np.zeros((300, 600, 3), np.uint8), np.ones((7, 7)), size=224)
    assert wide.size == (224, 112)


def test_side_by_side():
    a, b = Image.new("RGB", (10, 20), (255, 0, 0)), Image.new("RGB", (30, 6), (0, 0, 255))
    strip = side_by_side([a, b], gap=4, background=(0, 255, 0))
    assert strip.size == (44, 20)
    assert strip.getpixel((0, 0)) == (255, 0, 0)
    assert strip.getpixel((11, 10)) == (0, 255, 0)  # the gap
    assert strip.getpixel((14, 10)) == (0, 0, 255)  # b, centred: rows 7..12
    assert strip.getpixel((14, 0)) == (0, 255, 0)
    with pytest.raises(ValueError):
        side_by_side([])


def test_highlight_html():
    out = highlight_html(["a", '<b>&"', "c"], [2.0, -1.0, 0.5])
    assert out == (
        '<span class="jx-words">'
        '<span style="background: rgba(178,24,43,1)" title="+2">a</span> '
        '<span style="background: rgba(33,102,172,0.5)" title="-1">&lt;b&gt;&amp;&quot;</span> '
        '<span style="background: rgba(178,24,43,0.25)" title="+0.5">c</span>'
        "</span>"
    )
    unsigned = highlight_html(["x", "y"], [3.0, 1.0])
    assert "rgba(255,140,0,1)" in unsigned and "rgba(255,140,0,0.333)" in unsigned
    assert "rgba(255,140,0,0.5)" in highlight_html(["x"], [1.0], vmax=2.0)
    assert "rgba(255,140,0,0)" in highlight_html(["x"], [0.0])  # all zero: no division by zero


def test_highlight_length_mismatch():
    for f in (highlight_html, highlight_ansi, highlight_image):
        with pytest.raises(ValueError, match="2 words but 3 scores"):
            f(["a", "b"], [1.0, 2.0, 3.0])


def test_highlight_ansi():
    out = highlight_ansi(["low", "HIGH"], [0.25, 1.0])
    # Unsigned: HIGH at full orange; low is white blended a quarter toward it, (255, 226.25, 191.25).
    assert "\x1b[48;2;255;140;0m\x1b[30mHIGH\x1b[0m" in out
    assert out.startswith("\x1b[48;2;255;226;191m\x1b[30mlow\x1b[0m ")
    assert UNSIGNED == (255, 140, 0)


def test_highlight_image():
    words = ["strong", "weaker", "opposite"] * 10
    scores = [4.0, 1.0, -2.0] * 10
    img = highlight_image(words, scores, width=300)
    assert img.mode == "RGB" and img.width == 300 and img.height > 0
    assert img.getpixel((MARGIN, MARGIN)) == POSITIVE  # the first box, strongest word: full red
    assert img.getpixel((MARGIN - 1, MARGIN)) == (255, 255, 255)
    # The gap after the first box is white; the second box is a quarter toward red.
    row = np.asarray(img)[MARGIN]
    first_end = int(np.argmax((row[MARGIN:] == 255).all(-1))) + MARGIN
    assert (row[first_end : first_end + GAP] == 255).all()
    assert tuple(row[first_end + GAP]) == (236, 197, 202)
    assert highlight_image(words, scores, width=150).height > img.height  # narrower wraps to more lines

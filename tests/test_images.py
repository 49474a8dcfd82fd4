"""Preprocessing equals transformers' CLIPImageProcessor (PIL backend) for every kind of input."""

import io

import numpy as np
import pytest
from PIL import Image
from transformers import CLIPImageProcessorPil

from jaxplain.data.images import ImageProcessing, list_images, load_rgb
from jaxplain.errors import InputError

RNG = np.random.RandomState(1)


def reference(images, size=32, crop=32, **kw):
    proc = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": crop, "width": crop}, **kw)
    return proc(images=images, return_tensors="np")["pixel_values"]


def mine(images, size=32, crop=32):
    return ImageProcessing(shortest_edge=size, crop=(crop, crop))(images)


def rgb(h, w):
    return RNG.randint(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("h, w", [(50, 70), (70, 50), (32, 32), (33, 200), (20, 12), (1000, 31)])
def test_sizes_and_aspect_ratios(h, w):
    img = Image.fromarray(rgb(h, w))
    np.testing.assert_allclose(mine([img]), reference([img]), atol=1e-6)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "LA", "I;16"])
def test_pil_modes(mode):
    base = Image.fromarray(rgb(40, 56))
    if mode == "RGBA":
        a = base.convert("RGBA")
        a.putalpha(Image.fromarray(RNG.randint(0, 256, (40, 56), dtype=np.uint8)))
        img = a
    elif mode == "I;16":
        # 16 bits keep their high byte; the reference's convert("RGB") would clip them to 255
        wide = RNG.randint(0, 65535, (40, 56)).astype(np.uint16)
        img = Image.fromarray(wide)
        np.testing.assert_allclose(mine([img]), reference([Image.fromarray((wide >> 8).astype(np.uint8))]), atol=1e-6)
        return
    else:
        img = base.convert(mode)
    np.testing.assert_allclose(mine([img]), reference([img]), atol=1e-6)


def test_palette_with_transparency_is_composited_on_white():
    img = Image.fromarray(rgb(30, 30)).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    img.info["transparency"] = 0
    np.testing.assert_allclose(mine([img]), reference([img]), atol=1e-6)
    rgb_img = load_rgb(img)
    idx = np.asarray(img) == 0
    assert idx.any() and (np.asarray(rgb_img)[idx] == 255).all()


@pytest.mark.parametrize(
    "array",
    [
        RNG.randint(0, 256, (40, 30, 3), dtype=np.uint8),
        RNG.randint(0, 256, (40, 30), dtype=np.uint8),
        RNG.randint(0, 256, (40, 30, 4), dtype=np.uint8),
        RNG.randint(0, 256, (3, 40, 30), dtype=np.uint8),
        RNG.rand(40, 30, 3).astype(np.float32),
    ],
    ids=["hwc", "gray", "rgba", "chw", "float01"],
)
def test_arrays(array):
    if array.ndim == 2:  # the reference takes no 2-D arrays in a list; grey means equal channels
        want = reference([np.repeat(array[..., None], 3, -1)])
    elif array.dtype.kind == "f":  # floats are already in [0, 1]: the reference must not rescale them again
        want = reference([array], do_rescale=False)
    else:
        want = reference([array])
    np.testing.assert_allclose(mine([array]), want, atol=1e-6)


def test_batches_of_arrays_at_the_model_size_equal_the_reference_and_the_per_image_path():
    # uint8 arrays of one shape that need no resize or crop take a vectorised path (a lookup table)
    proc = ImageProcessing(shortest_edge=32, crop=(32, 32))
    grey = [RNG.randint(0, 256, (32, 32), dtype=np.uint8) for _ in range(5)]
    colour = [rgb(32, 32) for _ in range(5)]
    for batch, ref_in in ((grey, [np.repeat(g[..., None], 3, -1) for g in grey]), (colour, colour)):
        assert proc._ready_batch(batch) is not None
        got = proc(batch)
        np.testing.assert_array_equal(got, np.stack([proc.pixels(x) for x in batch]))
        np.testing.assert_allclose(got, reference(ref_in), atol=1e-6)
        # by hand: (v / 255 − mean) / std, channel by channel
        v = np.asarray(ref_in, np.float64).transpose(0, 3, 1, 2) / 255
        hand = (v - np.asarray(proc.mean)[:, None, None]) / np.asarray(proc.std)[:, None, None]
        np.testing.assert_allclose(got, hand, rtol=1e-6, atol=1e-6)
    # other shapes, sizes, dtypes or a mixed list go image by image (and still agree with the reference)
    for batch in ([rgb(40, 30)] * 2, [grey[0], colour[0]], [grey[0], grey[1][:31]], [grey[0].astype(np.float32) / 255]):
        assert proc._ready_batch(batch) is None
    mixed = [grey[0], colour[0]]
    np.testing.assert_allclose(proc(mixed), reference([np.repeat(grey[0][..., None], 3, -1), colour[0]]), atol=1e-6)


def test_paths_and_bytes_equal_pil(tmp_path):
    img = Image.fromarray(rgb(45, 61))
    path = tmp_path / "x.png"
    img.save(path)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    out = mine([str(path), path, buf.getvalue(), img])
    for i in range(1, 4):
        np.testing.assert_array_equal(out[0], out[i])


def test_non_default_processing_settings():
    img = Image.fromarray(rgb(50, 80))
    p = ImageProcessing(shortest_edge=48, crop=(40, 40), mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    want = CLIPImageProcessorPil(
        size={"shortest_edge": 48},
        crop_size={"height": 40, "width": 40},
        image_mean=[0.5] * 3,
        image_std=[0.25, 0.5, 1.0],
    )(images=[img], return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(p([img]), want, atol=1e-6)
    assert ImageProcessing.from_hf_dict(p.to_hf_dict(), 224) == p


def test_bad_items_are_named(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"this is not a png")
    proc = ImageProcessing.for_image_size(32)
    with pytest.raises(InputError, match=r"broken\.png: cannot read it as an image"):
        proc([str(bad)])
    with pytest.raises(InputError, match=r"missing\.png: no such file"):
        proc([str(tmp_path / "missing.png")])
    with pytest.raises(InputError, match=r"item 1 \(ndarray \(4, 4, 3\) float32\): float image arrays must lie in"):
        proc([rgb(8, 8), np.full((4, 4, 3), 2.0, np.float32)])
    with pytest.raises(InputError, match="NaN"):
        proc([np.full((4, 4, 3), np.nan, np.float32)])
    with pytest.raises(InputError, match="image arrays must be uint8 or float"):
        proc([np.zeros((4, 4, 3), np.int64)])
    with pytest.raises(InputError, match=r"\[H, W\], \[H, W, C\] or \[C, H, W\]"):
        proc([np.zeros((5, 6, 7), np.uint8)])
    with pytest.raises(InputError, match="not an image"):
        proc([12345])


def test_list_images_sorts_directories_and_keeps_given_files(tmp_path):
    for name in ("b.png", "a.jpg", "c.txt", "A.PNG"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in list_images([tmp_path])] == ["A.PNG", "a.jpg", "b.png"]
    assert [p.name for p in list_images([tmp_path / "b.png", tmp_path / "a.jpg"])] == ["b.png", "a.jpg"]
    # a missing path given by name is kept: it fails on its own when decoded, and the batch goes on
    assert list_images([tmp_path / "nope", tmp_path / "b.png"]) == [tmp_path / "nope", tmp_path / "b.png"]

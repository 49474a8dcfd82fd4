"""Hostile images and configs: each is refused on its own, with a message naming it and the reason, in bounded
memory; images are read as a viewer shows them (EXIF orientation, 16-bit depth)."""

import errno
import io
import json
import os
import struct
import subprocess
import sys
import textwrap
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from jaxplain.data import images
from jaxplain.data.decode import decode_parallel
from jaxplain.data.images import ImageProcessing, load_rgb, read_processing, scan_images
from jaxplain.errors import CheckpointError, InputError

ROOT = Path(__file__).resolve().parents[1]


def png(width: int, height: int, rows: int = 1, depth: int = 8, colour: int = 0, raw: bytes | None = None) -> bytes:
    """A PNG whose header declares ``width``×``height`` but whose data holds only ``rows`` rows of zeros: a few
    hundred bytes, and PIL reads its size from the header without decoding."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    channels = {0: 1, 2: 3}[colour]
    if raw is None:
        raw = (b"\0" + bytes(width * channels * depth // 8)) * rows
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --- decompression bombs and extreme aspect ratios ---------------------------------------------------


def test_a_bomb_is_refused_from_its_header_naming_its_size(tmp_path):
    big = write(tmp_path / "big.png", png(30000, 30000))
    assert big.stat().st_size < 1000
    want = (
        f"{big}: 30000×30000 pixels (900,000,000) is more than jaxplain decodes "
        "(89,478,485; set JAXPLAIN_MAX_IMAGE_PIXELS to raise it)"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's DecompressionBombWarning would fail here
        with pytest.raises(InputError) as e:
            load_rgb(big)
    assert str(e.value) == want
    # bytes, and just over PIL's warning threshold (PIL itself would only warn, then decode 100M pixels)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InputError) as e:
            ImageProcessing.for_image_size(224).pixels(png(10000, 10000), "upload 3")
    assert str(e.value) == (
        "upload 3: 10000×10000 pixels (100,000,000) is more than jaxplain decodes "
        "(89,478,485; set JAXPLAIN_MAX_IMAGE_PIXELS to raise it)"
    )


def test_the_bound_is_read_from_the_environment_at_each_call(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXPLAIN_MAX_IMAGE_PIXELS", "100")
    img = io.BytesIO()
    Image.new("RGB", (10, 10), (1, 2, 3)).save(img, format="PNG")
    assert load_rgb(img.getvalue()).getpixel((0, 0)) == (1, 2, 3)
    with pytest.raises(InputError) as e:
        load_rgb(png(11, 10, rows=10), "x")
    assert (
        str(e.value)
        == "x: 11×10 pixels (110) is more than jaxplain decodes (100; set JAXPLAIN_MAX_IMAGE_PIXELS to raise it)"
    )
    monkeypatch.setenv("JAXPLAIN_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(InputError) as e:
        load_rgb(img.getvalue(), "x")
    assert str(e.value) == "JAXPLAIN_MAX_IMAGE_PIXELS='lots': must be a positive whole number of pixels"
    monkeypatch.delenv("JAXPLAIN_MAX_IMAGE_PIXELS")
    assert images.max_pixels() == images.MAX_PIXELS == 89_478_485


def test_pils_own_bomb_error_inside_a_decoder_is_the_items_error(monkeypatch):
    def bomb(self):
        raise Image.DecompressionBombError(
            "Image size (400000000 pixels) exceeds limit of 178956970 pixels, could be decompression bomb DOS attack."
        )

    monkeypatch.setattr(ImageFile.ImageFile, "load", bomb)
    with pytest.raises(InputError) as e:
        load_rgb(png(4, 4, rows=4), "frames.gif")
    assert str(e.value) == (
        "frames.gif: a part of it has 400,000,000 pixels, more than PIL decodes "
        "(178,956,970; PIL.Image.MAX_IMAGE_PIXELS sets it)"
    )


def test_a_strip_whose_resize_would_be_huge_is_refused(tmp_path):
    strip = write(tmp_path / "strip.png", png(1, 20000, rows=20000))
    assert strip.stat().st_size < 1000
    with pytest.raises(InputError) as e:
        ImageProcessing.for_image_size(224).pixels(strip)
    assert str(e.value) == (
        f"{strip}: 1×20000 pixels (aspect ratio 20,000:1) would be resized to 224×4480000 "
        "(1,003,520,000 pixels), more than jaxplain resizes to (16,777,216)"
    )
    # the same strip at the model's own height needs no resize beyond the bound: it is read
    wide = ImageProcessing(shortest_edge=4, crop=(4, 4))
    assert wide.pixels(png(20000, 1, rows=1)).shape == (3, 4, 4)


def test_a_bad_item_in_a_batch_leaves_the_others_done(tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(good)
    items = [good, write(tmp_path / "big.png", png(30000, 30000)), write(tmp_path / "strip.png", png(1, 20000, 20000))]
    proc = ImageProcessing.for_image_size(32)
    out = list(decode_parallel(items, proc.pixels, workers=2))
    assert out[0].error is None and out[0].value.shape == (3, 32, 32)
    assert out[1].value is None and out[1].error.startswith(f"{items[1]}: 30000×30000 pixels (900,000,000) is more")
    assert out[2].value is None and out[2].error.startswith(f"{items[2]}: 1×20000 pixels (aspect ratio 20,000:1)")


CHILD = textwrap.dedent(
    """
    import json, re, resource, sys, time, types
    from pathlib import Path
    # import jaxplain.data.images alone, without the package's __init__ (which imports jax)
    for name in ("jaxplain", "jaxplain.data"):
        module = types.ModuleType(name)
        module.__path__ = [str(Path(sys.argv[1], *name.split(".")))]
        sys.modules[name] = module
    from jaxplain.data.images import ImageProcessing
    from jaxplain.errors import InputError

    def peak_kib():  # the peak resident memory since the last reset, else since the process began
        try:
            return int(re.search(r"VmHWM:\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1))
        except (OSError, AttributeError):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def current_kib():
        try:
            return int(re.search(r"VmRSS:\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1))
        except (OSError, AttributeError):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    data = Path(sys.argv[2]).read_bytes()
    proc = ImageProcessing.for_image_size(224)
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the peak, so it is this image's alone
    except OSError:
        pass
    before = current_kib()
    start = time.perf_counter()
    try:
        proc.pixels(data, "item")
        error = None
    except InputError as e:
        error = str(e)
    seconds = time.perf_counter() - start
    grown = peak_kib() - before
    print(json.dumps({"error": error, "seconds": seconds, "grown_kib": grown, "jax": "jax" in sys.modules}))
    """
)


def decode_in_child(path: Path) -> dict:
    run = subprocess.run(
        [sys.executable, "-c", CHILD, str(ROOT), str(path)], capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(run.stdout)


def test_memory_per_image_is_bounded_whatever_the_file_declares(tmp_path):
    normal = tmp_path / "normal.jpg"
    Image.fromarray(np.random.RandomState(0).randint(0, 256, (1200, 1600, 3), np.uint8)).save(normal)
    cases = {
        "bomb": write(tmp_path / "bomb.png", png(60000, 60000)),  # 10.8 GB as RGB if decoded
        "strip": write(tmp_path / "strip.png", png(1, 20000, 20000)),  # 3 GB if resized
        "normal": normal,
    }
    got = {k: decode_in_child(p) for k, p in cases.items()}
    assert not any(g["jax"] for g in got.values())
    assert got["bomb"]["error"].startswith("item: 60000×60000 pixels (3,600,000,000) is more than jaxplain decodes")
    assert got["strip"]["error"].startswith("item: 1×20000 pixels (aspect ratio 20,000:1) would be resized")
    assert got["normal"]["error"] is None
    for k in ("bomb", "strip"):
        assert got[k]["grown_kib"] < 8 * 1024, got  # a few pages: nothing is decoded or resized
    # a 1600×1200 photo: 5.8 MB decoded, about three times that at the peak (decode, convert, resize)
    assert got["normal"]["grown_kib"] < 64 * 1024, got


# --- paths that are not images -------------------------------------------------------------------------


def message(item) -> str:
    with pytest.raises(InputError) as e:
        load_rgb(item)
    return str(e.value)


def test_unreadable_paths_say_what_is_wrong(tmp_path):
    loop = tmp_path / "loop.png"
    loop.symlink_to(tmp_path / "loop.png")
    dangling = tmp_path / "gone.png"
    dangling.symlink_to(tmp_path / "nowhere.png")
    folder = tmp_path / "folder.png"
    folder.mkdir()
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    assert message(loop) == f"{loop}: a symbolic link loop"
    assert message(dangling) == f"{dangling}: a broken symbolic link (to {tmp_path / 'nowhere.png'})"
    assert message(tmp_path / "missing.png") == f"{tmp_path / 'missing.png'}: no such file"
    assert message(folder) == f"{folder}: a directory, not an image"
    assert message(fifo) == f"{fifo}: not a regular file (a named pipe)"  # refused, not waited on
    inner = tmp_path / "file.png" / "x.png"
    (tmp_path / "file.png").write_bytes(b"")
    assert message(inner) == f"{inner}: no such file (a part of its path is a file, not a directory)"
    denied = PermissionError(errno.EACCES, "Permission denied")
    assert images._path_problem(tmp_path / "x.png", denied) == "permission denied"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_a_file_without_read_permission(tmp_path):
    locked = tmp_path / "locked.png"
    Image.new("RGB", (4, 4)).save(locked)
    locked.chmod(0)
    assert message(locked) == f"{locked}: permission denied"


def test_broken_files_and_empty_images_are_named(tmp_path):
    full = io.BytesIO()
    Image.new("RGB", (50, 50)).save(full, format="PNG")
    cut = write(tmp_path / "cut.png", full.getvalue()[:60])
    assert message(cut).startswith(f"{cut}: cannot read it as an image (")
    assert message(Image.new("RGB", (0, 5))) == "Image: an image of 0×5 pixels has no pixels"


def test_scan_images_lists_what_it_leaves_out(tmp_path):
    for name in ("b.png", "a.JPG", "notes.txt", "README", ".DS_Store", "archive.tar.gz"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    files, unsupported = scan_images([tmp_path, tmp_path / "missing.png", tmp_path / "notes.txt"])
    assert files == [
        tmp_path / "a.JPG",
        tmp_path / "b.png",
        tmp_path / "loop.png",  # fails on its own when decoded: "a symbolic link loop"
        tmp_path / "missing.png",
        tmp_path / "notes.txt",  # given by name: read by its content
    ]
    assert unsupported == [
        (tmp_path / "README", "not an image file by its suffix (it has none)"),
        (tmp_path / "archive.tar.gz", "not an image file by its suffix (.gz)"),
        (tmp_path / "notes.txt", "not an image file by its suffix (.txt)"),
        (tmp_path / "sub", "a folder (folders inside a folder are not read)"),
    ]
    assert images.list_images([tmp_path]) == files[:3]


# --- images as a viewer shows them ---------------------------------------------------------------------


def test_exif_orientation_is_applied_to_files_and_bytes(tmp_path):
    rng = np.random.RandomState(0)
    stored = Image.fromarray(rng.randint(0, 256, (30, 50, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: rotate 90° clockwise to view
    path = tmp_path / "turned.jpg"
    stored.save(path, exif=exif, quality=95)
    with Image.open(path) as raw:
        as_stored = np.asarray(raw.convert("RGB"))
    assert as_stored.shape == (30, 50, 3)
    want = np.rot90(as_stored, k=-1)  # clockwise
    for item in (path, path.read_bytes()):
        got = np.asarray(load_rgb(item))
        assert got.shape == (50, 30, 3)
        np.testing.assert_array_equal(got, want)


def test_sixteen_bit_images_keep_their_high_byte(tmp_path):
    grey = np.array([[0, 255, 256, 32768], [40000, 65280, 65535, 1000]], np.uint16)
    path = tmp_path / "grey16.png"
    Image.fromarray(grey).save(path)
    with Image.open(path) as f:
        assert f.mode == "I;16"
    got = np.asarray(load_rgb(path))
    np.testing.assert_array_equal(got[..., 0], [[0, 0, 1, 128], [156, 255, 255, 3]])
    assert (got[..., 0] == got[..., 1]).all() and (got[..., 0] == got[..., 2]).all()
    # mode I (32-bit) holding 16-bit values, and one that does not
    np.testing.assert_array_equal(np.asarray(load_rgb(Image.fromarray(grey.astype(np.int32))))[..., 0], got[..., 0])
    assert message(Image.fromarray(np.array([[-1, 70000]], np.int32))) == (
        "Image: a 32-bit integer image must hold 16-bit values, got [-1, 70000]"
    )
    # a 16-bit RGB PNG: PIL keeps the high byte itself
    raw = b"".join(b"\0" + np.tile(np.array([0x8000, 0xFFFF, 0x0100], ">u2"), 3).tobytes() for _ in range(2))
    rgb48 = png(3, 2, depth=16, colour=2, raw=raw)
    assert load_rgb(rgb48).getpixel((0, 0)) == (128, 255, 1)


def test_non_finite_pixels_are_refused_on_every_path():
    assert message(Image.fromarray(np.array([[0.5, np.nan]], np.float32))) == (
        "Image: the image array holds NaN or infinity"
    )
    assert message(Image.fromarray(np.array([[0.5, 1.5]], np.float32))) == (
        "Image: float image arrays must lie in [0, 1], got [0.5, 1.5]"
    )
    assert np.asarray(load_rgb(Image.fromarray(np.array([[0.5, 1.0]], np.float32))))[0, :, 0].tolist() == [127, 255]
    proc = ImageProcessing.for_image_size(8)
    for dtype in (np.float16, np.float32, np.float64):
        for bad in (np.nan, np.inf, -np.inf):
            a = np.full((8, 8, 3), 0.5, dtype)
            a[3, 4, 1] = bad
            with pytest.raises(InputError) as e:
                proc([np.zeros((8, 8, 3), np.uint8), a])
            assert (
                str(e.value)
                == f"item 1 (ndarray (8, 8, 3) {np.dtype(dtype).name}): the image array holds NaN or infinity"
            )


# --- preprocessor configs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, value, want",
    [
        ("crop_size", 0, "'crop_size' must be a positive integer or {height, width}, got 0"),
        ("crop_size", -3, "'crop_size' must be a positive integer or {height, width}, got -3"),
        ("crop_size", "224", "'crop_size' must be a positive integer or {height, width}, got \"224\""),
        (
            "crop_size",
            {"height": 224},
            "'crop_size' must be a positive integer or {height, width}, got {\"height\": 224}",
        ),
        ("size", [224, 224], "'size' must be a positive integer, {shortest_edge} or {height, width}, got [224, 224]"),
        (
            "size",
            {"shortest_edge": 0},
            "'size' must be a positive integer, {shortest_edge} or {height, width}, got {\"shortest_edge\": 0}",
        ),
        ("image_std", [0.26, 0, 0.27], "'image_std' must be 3 positive numbers (one per channel), got [0.26, 0, 0.27]"),
        ("image_std", [0.26, 0.26], "'image_std' must be 3 positive numbers (one per channel), got [0.26, 0.26]"),
        ("image_std", 0, "'image_std' must be 3 positive numbers (one per channel), got 0"),
        ("image_mean", [0.5, "0.5", 0.5], "'image_mean' must be 3 numbers (one per channel), got [0.5, \"0.5\", 0.5]"),
        (
            "image_mean",
            [0.5, float("nan"), 0.5],
            "'image_mean' must be 3 numbers (one per channel), got [0.5, NaN, 0.5]",
        ),
        ("rescale_factor", 0, "'rescale_factor' must be a positive number, got 0"),
        ("rescale_factor", "1/255", "'rescale_factor' must be a positive number, got \"1/255\""),
        (
            "resample",
            7,
            "'resample' must be a PIL resampling filter (0 nearest, 1 lanczos, 2 bilinear, 3 bicubic, 4 box, "
            "5 hamming), got 7",
        ),
        ("resample", True, "'resample' must be a PIL resampling filter"),
        ("do_normalize", "yes", "'do_normalize' must be true or false, got \"yes\""),
        ("do_resize", 1, "'do_resize' must be true or false, got 1"),
    ],
)
def test_bad_config_values_name_the_key(key, value, want):
    with pytest.raises(CheckpointError) as e:
        ImageProcessing.from_hf_dict({key: value}, 224)
    assert str(e.value).startswith(f"preprocessor_config.json: {want}")


def test_good_config_forms_are_read():
    p = ImageProcessing.from_hf_dict(
        {
            "size": {"height": 32, "width": 48},
            "crop_size": 30,
            "image_mean": 0.5,
            "image_std": [1, 2, 4],
            "resample": 2,
        },
        224,
    )
    assert (p.shortest_edge, p.height, p.width, p.crop) == (None, 32, 48, (30, 30))
    assert (p.mean, p.std, p.resample) == ((0.5, 0.5, 0.5), (1.0, 2.0, 4.0), 2)
    assert ImageProcessing.from_hf_dict({"size": None, "image_std": None}, 28) == ImageProcessing.for_image_size(28)


def test_read_processing_names_the_file(tmp_path):
    config = tmp_path / "preprocessor_config.json"
    assert read_processing(tmp_path, 32) == ImageProcessing.for_image_size(32)
    config.write_text('{"crop_size": 224,\n "size": }')
    with pytest.raises(CheckpointError) as e:
        read_processing(tmp_path, 32)
    assert str(e.value) == f"{config}: not valid JSON (Expecting value at line 2, column 10)"
    config.write_text("[224]")
    with pytest.raises(CheckpointError) as e:
        read_processing(tmp_path, 32)
    assert str(e.value) == f"{config}: must be a JSON object of settings, got an array"
    config.write_text('{"crop_size": 0}')
    with pytest.raises(CheckpointError) as e:
        read_processing(tmp_path, 32)
    assert str(e.value) == f"{config}: 'crop_size' must be a positive integer or {{height, width}}, got 0"
    config.write_bytes(b'\xef\xbb\xbf{"crop_size": 16, "size": 16}')  # a BOM is not an error
    assert read_processing(tmp_path, 32).crop == (16, 16)
    config.write_bytes(b'{"crop_size": "\xff"}')
    with pytest.raises(CheckpointError) as e:
        read_processing(tmp_path, 32)
    assert str(e.value) == f"{config}: cannot read it: not UTF-8 text (invalid start byte at byte 15)"

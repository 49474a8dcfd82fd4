"""Image decoding and CLIP preprocessing, equal to transformers' ``CLIPImageProcessor``.

Steps: convert to RGB (transparency composited onto white), resize the shortest side with bicubic
resampling, centre-crop, rescale to ``[0, 1]``, normalise with the checkpoint's mean and std.
Accepted items: file paths, raw bytes, PIL images, and arrays ``[H, W]``, ``[H, W, C]`` or
``[C, H, W]`` with ``C`` in 1, 3, 4 (uint8, or floats in ``[0, 1]``).

Hostile files are refused per item, as an :class:`~jaxplain.errors.InputError` naming the item, and
memory per image stays bounded whatever the file's size on disk:

- The header is read first (PIL opens lazily) and an image of more than :func:`max_pixels` pixels
  (``MAX_PIXELS`` = 89,478,485 by default, PIL's own threshold: 256 MiB decoded at 3 bytes a pixel, 341 MiB
  at 4; the environment variable ``JAXPLAIN_MAX_IMAGE_PIXELS`` overrides it) is refused before a pixel is
  decoded. jaxplain's bound replaces PIL's ``Image.MAX_IMAGE_PIXELS`` check for the file's main image, so
  PIL's ``DecompressionBombWarning`` is not raised there; a ``DecompressionBombError`` that a format raises
  inside its own decoder (a GIF frame, an icon entry) becomes the same per-item error.
- A resize that would make more than ``MAX_RESIZED_PIXELS`` pixels (a 1×20000 strip resized to a
  shortest edge of 224 would be 224×4,480,000, 3 GB) is refused, naming the aspect ratio. (Resizing only
  the window that the centre crop keeps would not give PIL's pixels exactly: PIL chooses the order of its
  two passes by their cost, and a window changes it.)
- Files and bytes are turned as a viewer shows them (their EXIF orientation is applied, as transformers'
  ``load_image`` does); PIL images and arrays given in memory are taken as they are.
- 16-bit images (modes ``I;16``, ``I;16B``, ``I;16L``, and ``I`` with values in ``[0, 65535]``) keep
  their high byte (``v >> 8``, as PIL itself reduces 16-bit RGB PNGs to 8 bits): 32768 becomes 128, where
  PIL's ``convert("RGB")`` (and so transformers) would clip it to 255. Float images (mode ``F``) are read
  like float arrays: finite values in ``[0, 1]``.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import io
import json
import math
import os
import re
import stat
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, ImageOps

from jaxplain.errors import CheckpointError, InputError

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")

ImageLike = Any  # str | Path | bytes | PIL.Image.Image | np.ndarray

MAX_PIXELS = 89_478_485
"""Pixels decoded per image at most, by default (PIL's ``Image.MAX_IMAGE_PIXELS``: 1 GiB / 4 / 3): the
decoded image then takes at most 256 MiB at 3 bytes a pixel (RGB), 341 MiB at 4 (RGBA, 16- and 32-bit
modes); with its conversion and resize, an RGB image at the bound peaks at about 685 MB
(``benchmarks/bench_decode_memory.py``)."""
MAX_PIXELS_ENV = "JAXPLAIN_MAX_IMAGE_PIXELS"
MAX_RESIZED_PIXELS = 16 * 2**20
"""A resize to more pixels than this (48 MiB of RGB; 224 × 74,898, an aspect ratio of 334:1 at 224) is refused."""
RESAMPLE_FILTERS = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def max_pixels() -> int:
    """The most pixels jaxplain decodes per image: ``$JAXPLAIN_MAX_IMAGE_PIXELS`` if set, else ``MAX_PIXELS``.

    Read at each call, so a process may change it. A value that is not a positive whole number raises
    :class:`InputError` naming the variable.
    """
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return MAX_PIXELS
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise InputError(f"{MAX_PIXELS_ENV}={raw!r}: must be a positive whole number of pixels")
    return n


def describe(item: ImageLike, index: int | None = None) -> str:
    """A short name for an input item, for error messages."""
    if isinstance(item, (str, Path)):
        return str(item)
    what = f"{type(item).__name__}"
    if isinstance(item, np.ndarray):
        what += f" {item.shape} {item.dtype}"
    return what if index is None else f"item {index} ({what})"


def _composite_on_white(img: Image.Image) -> Image.Image:
    if "A" in img.getbands() or img.info.get("transparency") is not None:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _array_to_rgb(a: np.ndarray, name: str) -> np.ndarray:
    """An array image → ``[H, W, 3]`` uint8, as the reference converts arrays."""
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 3, 4) or min(a.shape[:2]) < 1:
        raise InputError(f"{name}: an image array must be [H, W], [H, W, C] or [C, H, W] with C in 1, 3, 4")
    if np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise InputError(f"{name}: the image array holds NaN or infinity")
        if a.min() < 0.0 or a.max() > 1.0:
            raise InputError(f"{name}: float image arrays must lie in [0, 1], got [{a.min():.3g}, {a.max():.3g}]")
        if a.shape[-1] == 4:
            a = a[..., 3:4] * a[..., :3] + (1 - a[..., 3:4])
        a = (a * 255).astype(np.uint8)
    elif a.dtype == np.uint8:
        if a.shape[-1] == 4:
            alpha = a[..., 3:4] / 255
            a = np.round(alpha * a[..., :3] + (1 - alpha) * 255).astype(np.uint8)
    else:
        raise InputError(f"{name}: image arrays must be uint8 or float in [0, 1], got {a.dtype}")
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    return a


def load_rgb(item: ImageLike, name: str | None = None) -> Image.Image:
    """Decode one item into an RGB PIL image; a bad item raises :class:`InputError` naming it.

    A path that cannot be opened says why: ``no such file``, ``a broken symbolic link (to …)``, ``a
    symbolic link loop``, ``a directory, not an image``, ``permission denied``, ``not a regular file (…)``.
    A file or bytes of more than :func:`max_pixels` pixels is refused from its header, before decoding;
    see the module's docstring for EXIF orientation and 16-bit and float images.
    """
    name = name or describe(item)
    if isinstance(item, np.ndarray):
        return Image.fromarray(_array_to_rgb(item, name))
    if isinstance(item, Image.Image):
        img = item
    elif isinstance(item, (str, Path)):
        with _open_path(Path(item), name) as fp:
            img = _decode(fp, name)
    elif isinstance(item, (bytes, bytearray, memoryview)):
        img = _decode(io.BytesIO(bytes(item)), name)
    else:
        raise InputError(f"{name}: not an image (expected a path, bytes, a PIL image or an array)")
    if min(img.size) < 1:
        raise InputError(f"{name}: an image of {img.size[0]}×{img.size[1]} pixels has no pixels")
    return _to_rgb(img, name)


def _path_problem(path: Path, e: OSError) -> str:
    """Why ``path`` cannot be opened, in words."""
    if e.errno == errno.ELOOP:
        return "a symbolic link loop"
    if e.errno == errno.ENOENT:
        if path.is_symlink():
            return f"a broken symbolic link (to {os.readlink(path)})"
        return "no such file"
    if e.errno == errno.ENOTDIR:
        return "no such file (a part of its path is a file, not a directory)"
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if e.errno == errno.EISDIR:
        return "a directory, not an image"
    if e.errno == errno.ENAMETOOLONG:
        return "its name is too long"
    return f"cannot open it ({e.strerror or e})"


_FILE_KINDS = ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"))


def _open_path(path: Path, name: str) -> IO[bytes]:
    """``path`` opened for reading, or :class:`InputError` saying why not (checked before opening, so that a
    named pipe is refused rather than waited on)."""
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            raise InputError(f"{name}: a directory, not an image")
        if not stat.S_ISREG(mode):
            kind = next((k for test, k in _FILE_KINDS if test(mode)), "a special file")
            raise InputError(f"{name}: not a regular file ({kind})")
        return open(path, "rb")  # the caller closes it
    except OSError as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f"{name}: {_path_problem(path, e)}") from None


def _open_lazy(fp: IO[bytes]) -> Image.Image:
    """The image in ``fp`` with only its header read: ``Image.open`` without PIL's own pixel-count check
    (which warns, or raises without the size), so that :func:`_check_pixels` can name the size and apply
    jaxplain's bound. Formats are tried in PIL's registry order, as ``Image.open`` tries them."""
    prefix = fp.read(16)
    tried: set[str] = set()
    for register in (Image.preinit, Image.init):
        register()
        for fmt in [f for f in Image.ID if f not in tried]:
            tried.add(fmt)
            factory, accept = Image.OPEN[fmt]
            ok = accept(prefix) if accept else True
            if not ok or isinstance(ok, str):
                continue
            fp.seek(0)
            try:
                return factory(fp, "")
            except (SyntaxError, IndexError, TypeError, struct.error):
                continue
    fp.seek(0)
    return Image.open(fp)  # identifies nothing either: raises UnidentifiedImageError with PIL's reasons


def _check_pixels(size: tuple[int, int], name: str) -> None:
    w, h = size
    limit = max_pixels()
    if w * h > limit:
        raise InputError(
            f"{name}: {w}×{h} pixels ({w * h:,}) is more than jaxplain decodes "
            f"({limit:,}; set {MAX_PIXELS_ENV} to raise it)"
        )


def _decode(fp: IO[bytes], name: str) -> Image.Image:
    """The image in ``fp``, decoded after its size is checked, turned by its EXIF orientation."""
    try:
        img = _open_lazy(fp)
        _check_pixels(img.size, name)
        img.load()
        ImageOps.exif_transpose(img, in_place=True)
        return img
    except InputError:
        raise
    except Image.DecompressionBombError as e:
        nums = [f"{int(x):,}" for x in re.findall(r"\d+", str(e))]
        n, limit = [*nums, "?", "?"][:2]
        raise InputError(
            f"{name}: a part of it has {n} pixels, more than PIL decodes ({limit}; PIL.Image.MAX_IMAGE_PIXELS sets it)"
        ) from None
    except MemoryError:
        raise InputError(f"{name}: not enough memory to decode it") from None
    except Exception as e:  # a malformed file makes PIL raise many kinds of error; each is this item's
        raise InputError(f"{name}: cannot read it as an image ({e or type(e).__name__})") from None


def _to_rgb(img: Image.Image, name: str) -> Image.Image:
    """Any PIL mode → RGB: 16-bit grey keeps its high byte, float grey is read as a float array, and
    transparency is composited onto white."""
    if img.mode.startswith("I;16") or img.mode == "I":
        a = np.asarray(img)
        if img.mode == "I" and a.size and (a.min() < 0 or a.max() > 65535):
            raise InputError(f"{name}: a 32-bit integer image must hold 16-bit values, got [{a.min()}, {a.max()}]")
        grey = (a.astype(np.uint32) >> 8).astype(np.uint8)
        rgb = np.repeat(grey[..., None], 3, axis=-1)
        clear = img.info.get("transparency")
        if isinstance(clear, int) and not isinstance(clear, bool):
            rgb[a == clear] = 255
        return Image.fromarray(rgb)
    if img.mode == "F":
        return Image.fromarray(_array_to_rgb(np.asarray(img), name))
    return _composite_on_white(img)


@dataclasses.dataclass(frozen=True)
class ImageProcessing:
    """The preprocessing a checkpoint expects (its ``preprocessor_config.json``).

    ``shortest_edge`` set: the shorter side is resized to it keeping the aspect ratio; otherwise the
    image is resized to ``(height, width)``. Then a ``crop`` centre crop (zero-padded if too small).
    """

    shortest_edge: int | None = 224
    height: int | None = None
    width: int | None = None
    crop: tuple[int, int] = (224, 224)
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    resample: int = int(Image.Resampling.BICUBIC)
    do_resize: bool = True
    do_center_crop: bool = True
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True

    @classmethod
    def for_image_size(cls, size: int) -> ImageProcessing:
        """CLIP's standard preprocessing for a model that takes ``size``×``size`` images."""
        return cls(shortest_edge=size, crop=(size, size))

    @classmethod
    def from_hf_dict(
        cls, d: dict[str, Any], image_size: int, source: str = "preprocessor_config.json"
    ) -> ImageProcessing:
        """Read a ``preprocessor_config.json`` dictionary (both its old and new key forms).

        A value of the wrong type or an impossible one raises :class:`CheckpointError` naming ``source`` and
        the key, e.g. ``preprocessor_config.json: 'crop_size' must be a positive integer or {height, width},
        got 0``. A key that is absent or null keeps its default; ``image_mean`` and ``image_std`` take three
        numbers or one for every channel.
        """
        if not isinstance(d, dict):
            raise CheckpointError(f"{source}: must be a JSON object of settings, got {_json_kind(d)}")

        def bad(key: str, want: str, value: Any = None) -> CheckpointError:
            got = d[key] if d.get(key) is not None else value  # absent or null: the model's image size stood in
            return CheckpointError(f"{source}: {key!r} must be {want}, got {_show(got)}")

        kw: dict[str, Any] = {}
        size = d["size"] if d.get("size") is not None else image_size
        if _positive_int(size):
            kw["shortest_edge"] = size
        elif isinstance(size, dict) and _positive_int(size.get("shortest_edge")):
            kw["shortest_edge"] = size["shortest_edge"]
        elif isinstance(size, dict) and _positive_int(size.get("height")) and _positive_int(size.get("width")):
            kw.update(shortest_edge=None, height=size["height"], width=size["width"])
        else:
            raise bad("size", "a positive integer, {shortest_edge} or {height, width}", size)
        crop = d["crop_size"] if d.get("crop_size") is not None else image_size
        if _positive_int(crop):
            kw["crop"] = (crop, crop)
        elif isinstance(crop, dict) and _positive_int(crop.get("height")) and _positive_int(crop.get("width")):
            kw["crop"] = (crop["height"], crop["width"])
        else:
            raise bad("crop_size", "a positive integer or {height, width}", crop)
        for key, field, positive in (("image_mean", "mean", False), ("image_std", "std", True)):
            if d.get(key) is None:
                continue
            v = d[key]
            values = [v] * 3 if _number(v) else v if isinstance(v, list) and len(v) == 3 else None
            if values is None or not all(_number(x) and (x > 0 or not positive) for x in values):
                raise bad(key, "3 positive numbers (one per channel)" if positive else "3 numbers (one per channel)")
            kw[field] = tuple(float(x) for x in values)
        for key in ("do_resize", "do_center_crop", "do_rescale", "do_normalize"):
            if d.get(key) is not None:
                if not isinstance(d[key], bool):
                    raise bad(key, "true or false")
                kw[key] = d[key]
        if d.get("rescale_factor") is not None:
            if not (_number(d["rescale_factor"]) and d["rescale_factor"] > 0):
                raise bad("rescale_factor", "a positive number")
            kw["rescale_factor"] = float(d["rescale_factor"])
        if d.get("resample") is not None:
            if type(d["resample"]) is not int or d["resample"] not in RESAMPLE_FILTERS:
                codes = ", ".join(f"{k} {v}" for k, v in RESAMPLE_FILTERS.items())
                raise bad("resample", f"a PIL resampling filter ({codes})")
            kw["resample"] = int(d["resample"])
        return cls(**kw)

    def to_hf_dict(self) -> dict[str, Any]:
        """The ``preprocessor_config.json`` content for these settings."""
        size = (
            {"shortest_edge": self.shortest_edge}
            if self.shortest_edge
            else {"height": self.height, "width": self.width}
        )
        return {
            "image_processor_type": "CLIPImageProcessor",
            "do_resize": self.do_resize,
            "size": size,
            "resample": self.resample,
            "do_center_crop": self.do_center_crop,
            "crop_size": {"height": self.crop[0], "width": self.crop[1]},
            "do_rescale": self.do_rescale,
            "rescale_factor": self.rescale_factor,
            "do_normalize": self.do_normalize,
            "image_mean": list(self.mean),
            "image_std": list(self.std),
            "do_convert_rgb": True,
        }

    def _resize_to(self, w: int, h: int) -> tuple[int, int]:
        if not self.shortest_edge:
            return self.width, self.height
        s = self.shortest_edge
        if w <= h:
            return s, int(s * h / w)
        return int(s * w / h), s

    def pixels(self, item: ImageLike, name: str | None = None) -> np.ndarray:
        """One item → normalised float32 pixels ``[3, crop_h, crop_w]``; a bad item raises :class:`InputError`.

        A resize to more than ``MAX_RESIZED_PIXELS`` pixels (an image of extreme aspect ratio: a 1×20000
        strip to a shortest edge of 224 would be 224×4,480,000) is refused, naming the aspect ratio and the
        size it would make, before any memory is spent on it.
        """
        name = name or describe(item)
        img = load_rgb(item, name)
        if self.do_resize:
            w, h = img.size
            rw, rh = self._resize_to(w, h)
            if rw * rh > MAX_RESIZED_PIXELS:
                raise InputError(
                    f"{name}: {w}×{h} pixels (aspect ratio {max(w, h) / min(w, h):,.0f}:1) would be resized to "
                    f"{rw}×{rh} ({rw * rh:,} pixels), more than jaxplain resizes to ({MAX_RESIZED_PIXELS:,})"
                )
            img = img.resize((rw, rh), resample=self.resample)
        a = np.asarray(img, dtype=np.uint8)
        if self.do_center_crop:
            a = _center_crop(a, *self.crop)
        return self._normalise(a)

    def __call__(self, items: Sequence[ImageLike]) -> np.ndarray:
        """Items → pixels ``[N, 3, H, W]``; the first bad item raises :class:`InputError`.

        For batch jobs that must go on past bad items, call :meth:`pixels` per item.
        """
        if not len(items):
            return np.zeros((0, 3, *self.crop), np.float32)
        batch = self._ready_batch(items)
        if batch is not None:
            return self._normalise(batch)
        return np.stack([self.pixels(x, describe(x, i)) for i, x in enumerate(items)])

    def _ready_batch(self, items: Sequence[ImageLike]) -> np.ndarray | None:
        """``[N, H, W, 3]`` uint8 when every item is a uint8 array ``[H, W]`` or ``[H, W, 3]`` of one shape
        that resizing and cropping would leave as it is (an image already at the model's size), else None.

        Such a batch (a dataset already at the model's resolution) skips the per-image round trip through
        PIL; the result is the same as :meth:`pixels` gives image by image.
        """
        first = items[0]
        if not isinstance(first, np.ndarray) or first.dtype != np.uint8 or first.ndim not in (2, 3):
            return None
        if first.ndim == 3 and first.shape[-1] != 3:
            return None
        h, w = first.shape[:2]
        if (self.do_resize and self._resize_to(w, h) != (w, h)) or (self.do_center_crop and self.crop != (h, w)):
            return None
        if not all(isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.shape == first.shape for x in items):
            return None
        a = np.stack(items)
        return np.repeat(a[..., None], 3, axis=-1) if a.ndim == 3 else a

    @functools.cached_property
    def _table(self) -> np.ndarray:
        """``[3, 256]`` float32: each channel's normalised value of every uint8 level, computed in float64."""
        x = np.broadcast_to(np.arange(256, dtype=np.float64)[:, None], (256, 3))
        if self.do_rescale:
            x = x * self.rescale_factor
        if self.do_normalize:
            x = (x - np.asarray(self.mean)) / np.asarray(self.std)
        return np.ascontiguousarray(x.astype(np.float32).T)

    def _normalise(self, a: np.ndarray) -> np.ndarray:
        """uint8 ``[..., H, W, 3]`` → float32 ``[..., 3, H, W]``, rescaled and normalised (a table lookup:
        a uint8 level has 256 values per channel)."""
        return np.stack([self._table[c][a[..., c]] for c in range(3)], axis=-3)


def _center_crop(a: np.ndarray, ch: int, cw: int) -> np.ndarray:
    h, w = a.shape[:2]
    top, left = (h - ch) // 2, (w - cw) // 2
    if top >= 0 and left >= 0:
        return a[top : top + ch, left : left + cw]
    # Smaller than the crop: centre it on a zero canvas, as the reference does.
    nh, nw = max(h, ch), max(w, cw)
    canvas = np.zeros((nh, nw, a.shape[2]), a.dtype)
    tp, lp = -(-(nh - h) // 2), -(-(nw - w) // 2)
    canvas[tp : tp + h, lp : lp + w] = a
    top, left = top + tp, left + lp
    return canvas[max(0, top) : top + ch, max(0, left) : left + cw]


def _positive_int(v: Any) -> bool:
    return type(v) is int and v > 0


def _number(v: Any) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


def _show(v: Any) -> str:
    """A config value as its JSON text (what the user sees in the file)."""
    try:
        text = json.dumps(v)
    except (TypeError, ValueError):
        text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."


def _json_kind(v: Any) -> str:
    kinds = ((list, "an array"), (str, "a string"), (bool, "a boolean"), ((int, float), "a number"))
    return "null" if v is None else next((k for t, k in kinds if isinstance(v, t)), type(v).__name__)


def read_processing(directory: str | Path, image_size: int) -> ImageProcessing:
    """The preprocessing of a checkpoint directory, or CLIP's standard one if it has no config.

    An unreadable file, invalid JSON, or a bad value raise :class:`CheckpointError` naming the file (and
    the line and column, or the key).
    """
    path = Path(directory) / "preprocessor_config.json"
    if not path.exists() and not path.is_symlink():
        return ImageProcessing.for_image_size(image_size)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        why = _path_problem(path, e) if isinstance(e, OSError) else f"not UTF-8 text ({e.reason} at byte {e.start})"
        raise CheckpointError(f"{path}: cannot read it: {why}") from None
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    return ImageProcessing.from_hf_dict(d, image_size, source=str(path))


def scan_images(paths: Sequence[str | Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The image files of ``paths``, and the other entries of its directories with why each is left out.

    A directory is expanded into its files with an image suffix (``IMAGE_SUFFIXES``, any case), sorted by
    name; its hidden entries (names starting with ``.``) are skipped without a word; every other entry is in
    ``unsupported`` as ``(path, reason)``: ``not an image file by its suffix (.txt)``, ``a folder (folders
    inside a folder are not read)``. A directory that cannot be listed is in ``unsupported`` too. A path
    given by name that is not a directory is kept in ``files`` in the given order, whatever it is, even one
    that does not exist or is a symbolic link loop: it fails on its own when decoded (:func:`load_rgb` says
    why), so one bad name does not end a batch.
    """
    files: list[Path] = []
    unsupported: list[tuple[Path, str]] = []
    for p in map(Path, paths):
        if not p.is_dir():
            files.append(p)
            continue
        try:
            entries = sorted(p.iterdir(), key=lambda f: f.name)
        except OSError as e:
            unsupported.append((p, f"cannot list this folder: {_path_problem(p, e)}"))
            continue
        for f in entries:
            if f.name.startswith("."):
                continue
            if f.suffix.lower() in IMAGE_SUFFIXES:
                files.append(f)
            elif f.is_dir():
                unsupported.append((f, "a folder (folders inside a folder are not read)"))
            else:
                unsupported.append((f, f"not an image file by its suffix ({f.suffix or 'it has none'})"))
    return files, unsupported


def list_images(paths: Sequence[str | Path]) -> list[Path]:
    """The files of :func:`scan_images` (directories expanded, files kept in the given order, a missing one
    too); for the entries left out of directories, call :func:`scan_images`."""
    return scan_images(paths)[0]

"""Image decoding and CLIP preprocessing, equal to transformers' ``CLIPImageProcessor``.

Steps: convert to RGB (transparency composited onto white), resize the shortest side with bicubic
resampling, centre-crop, rescale to ``[0, 1]``, normalise with the checkpoint's mean and std.
Accepted items: file paths, raw bytes, PIL images, and arrays ``[H, W]``, ``[H, W, C]`` or
``[C, H, W]`` with ``C`` in 1, 3, 4 (uint8, or floats in ``[0, 1]``).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from jaxplain.errors import InputError

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")

ImageLike = Any  # str | Path | bytes | PIL.Image.Image | np.ndarray


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
    """Decode one item into an RGB PIL image; a bad item raises :class:`InputError` naming it."""
    name = name or describe(item)
    try:
        if isinstance(item, Image.Image):
            img = item
        elif isinstance(item, (str, Path)):
            with Image.open(item) as f:
                f.load()
                img = f
        elif isinstance(item, (bytes, bytearray, memoryview)):
            img = Image.open(io.BytesIO(bytes(item)))
            img.load()
        elif isinstance(item, np.ndarray):
            return Image.fromarray(_array_to_rgb(item, name))
        else:
            raise InputError(f"{name}: not an image (expected a path, bytes, a PIL image or an array)")
    except FileNotFoundError:
        raise InputError(f"{name}: no such file") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f"{name}: cannot read it as an image ({e})") from None
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
    def from_hf_dict(cls, d: dict[str, Any], image_size: int) -> ImageProcessing:
        """Read a ``preprocessor_config.json`` dictionary (both its old and new key forms)."""
        size = d.get("size", image_size)
        kw: dict[str, Any] = {}
        if isinstance(size, int):
            kw["shortest_edge"] = size
        elif "shortest_edge" in size:
            kw["shortest_edge"] = int(size["shortest_edge"])
        else:
            kw.update(shortest_edge=None, height=int(size["height"]), width=int(size["width"]))
        crop = d.get("crop_size", image_size)
        kw["crop"] = (crop, crop) if isinstance(crop, int) else (int(crop["height"]), int(crop["width"]))
        for key, field in (("image_mean", "mean"), ("image_std", "std")):
            if d.get(key) is not None:
                kw[field] = tuple(float(x) for x in d[key])
        for key in ("do_resize", "do_center_crop", "do_rescale", "do_normalize", "rescale_factor", "resample"):
            if d.get(key) is not None:
                kw[key] = d[key]
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
        """One item → normalised float32 pixels ``[3, crop_h, crop_w]``."""
        img = load_rgb(item, name)
        if self.do_resize:
            img = img.resize(self._resize_to(*img.size), resample=self.resample)
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


def read_processing(directory: str | Path, image_size: int) -> ImageProcessing:
    """The preprocessing of a checkpoint directory, or CLIP's standard one if it has no config."""
    path = Path(directory) / "preprocessor_config.json"
    if not path.is_file():
        return ImageProcessing.for_image_size(image_size)
    return ImageProcessing.from_hf_dict(json.loads(path.read_text()), image_size)


def list_images(paths: Sequence[str | Path]) -> list[Path]:
    """Expand directories into their image files sorted by name; files are kept in the given order.

    A path that does not exist raises :class:`InputError` naming it.
    """
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted((f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES), key=lambda f: f.name))
        elif p.exists():
            out.append(p)
        else:
            raise InputError(f"{p}: no such file or directory")
    return out

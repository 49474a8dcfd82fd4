"""Heat maps of attributions over images, with NumPy and Pillow only.

:func:`overlay` is the one call most uses need: it takes an image (a path, a PIL image, a uint8 array
or the model's normalised pixels) and a heat map on any grid (a ViT patch grid such as ``[7, 7]``, or
a pixel map), and returns the blended picture. The pieces it is made of are public too:
:func:`display_image` (anything → RGB picture), :func:`upsample` (grid → pixels), :func:`colorize`
(values → colours) and :func:`side_by_side` (a strip such as "image | heat map | overlay").

Colours. Unsigned maps (all values ≥ 0) use :data:`SEQUENTIAL`, an inferno-like ramp from near
black (0) through purple, red and orange to pale yellow (``vmax``). Signed maps use a diverging ramp
from :data:`NEGATIVE` (``-vmax``) through :data:`ZERO` (0) to :data:`POSITIVE` (``+vmax``). NaN is
:data:`NAN_COLOUR`. Colours between anchors are interpolated linearly in RGB and rounded.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from jaxplain.data.images import ImageProcessing, load_rgb

# Nine anchors of an inferno-like ramp at 0, 1/8, ..., 1 (RGB).
SEQUENTIAL = np.array(
    [
        (0, 0, 4),
        (31, 12, 72),
        (85, 15, 109),
        (136, 34, 106),
        (186, 54, 85),
        (227, 89, 51),
        (249, 140, 10),
        (249, 201, 50),
        (252, 255, 164),
    ],
    dtype=np.float64,
)
NEGATIVE = (33, 102, 172)  # blue at -vmax
ZERO = (255, 255, 255)  # white at 0
POSITIVE = (178, 24, 43)  # red at +vmax
NAN_COLOUR = (128, 128, 128)


def _scale(values: np.ndarray, vmax: float | None, signed: bool) -> float:
    """``vmax`` or its default (max value, or max magnitude when signed); 1 when that is not positive."""
    if vmax is None:
        finite = values[np.isfinite(values)]
        vmax = float((np.abs(finite) if signed else finite).max()) if finite.size else 0.0
    # An all-zero map would divide by zero; any positive scale shows it as all-zero colours.
    return float(vmax) if vmax > 0 else 1.0


def colorize(values: Any, signed: bool | None = None, vmax: float | None = None) -> np.ndarray:
    """Values ``[H, W]`` → colours ``[H, W, 3]`` uint8 (any shape ``S`` → ``[*S, 3]``).

    Args:
      values: the heat map, floats.
      signed: diverging blue–white–red colours for ``[-vmax, vmax]`` if True, the sequential ramp
        for ``[0, vmax]`` if False; None picks True iff any value is negative.
      vmax: the value shown at full colour; values beyond it are clipped. Default: the largest value
        (unsigned) or the largest magnitude (signed).
    """
    v = np.asarray(values, dtype=np.float64)
    nan = np.isnan(v)
    if signed is None:
        signed = bool((v[~nan] < 0).any())
    scale = _scale(v, vmax, signed)
    t = np.where(nan, 0.0, v) / scale
    if signed:
        t = np.clip(t, -1.0, 1.0)[..., None]
        end = np.where(t < 0, np.asarray(NEGATIVE, np.float64), np.asarray(POSITIVE, np.float64))
        rgb = np.asarray(ZERO, np.float64) + np.abs(t) * (end - np.asarray(ZERO, np.float64))
    else:
        pos = np.clip(t, 0.0, 1.0) * (len(SEQUENTIAL) - 1)
        lo = np.minimum(np.floor(pos).astype(np.int64), len(SEQUENTIAL) - 2)
        frac = (pos - lo)[..., None]
        rgb = SEQUENTIAL[lo] + frac * (SEQUENTIAL[lo + 1] - SEQUENTIAL[lo])
    rgb[nan] = NAN_COLOUR
    return np.round(rgb).astype(np.uint8)


def upsample(heat: Any, size: tuple[int, int], smooth: bool = True) -> np.ndarray:
    """A grid ``[h, w]`` → a map ``[H, W]`` float32, with ``size = (H, W)``.

    ``smooth`` resizes bilinearly (Pillow's, which aligns pixel centres, so a constant map stays
    constant); otherwise each grid cell becomes a block (nearest neighbour).
    """
    h = np.asarray(heat, dtype=np.float32)
    if h.ndim != 2:
        raise ValueError(f"a heat map must be [h, w], got shape {h.shape}")
    height, width = size
    img = Image.fromarray(h)  # a 2-D float32 array is Pillow's mode "F"
    img = img.resize((width, height), Image.Resampling.BILINEAR if smooth else Image.Resampling.NEAREST)
    return np.asarray(img, dtype=np.float32)


def _unnormalise(pixels: np.ndarray, processing: ImageProcessing) -> np.ndarray:
    """Normalised model pixels ``[3, H, W]`` → uint8 ``[H, W, 3]``, undoing ``processing``."""
    x = np.moveaxis(pixels.astype(np.float64), 0, -1)
    if processing.do_normalize:
        x = x * np.asarray(processing.std) + np.asarray(processing.mean)
    if processing.do_rescale:
        x = x / processing.rescale_factor
    return np.round(np.clip(x, 0, 255)).astype(np.uint8)


def display_image(image: Any, processing: ImageProcessing | None = None) -> Image.Image:
    """An RGB picture of ``image``.

    Args:
      image: a path, bytes, a PIL image, a uint8 array ``[H, W, 3]`` or ``[H, W]`` (anything
        :func:`jaxplain.data.images.load_rgb` reads), or the model's normalised pixels ``[3, H, W]``
        float (one item of :class:`~jaxplain.data.images.ImageProcessing`'s output).
      processing: how the pixels were normalised; required for normalised pixels.
    """
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if hasattr(image, "__array__"):  # NumPy and JAX arrays
        a = np.asarray(image)
        if a.ndim == 3 and a.shape[0] == 3 and np.issubdtype(a.dtype, np.floating):
            if processing is None:
                raise ValueError(
                    f"float pixels {a.shape} are taken to be normalised model input: pass the "
                    "ImageProcessing that made them to undo the normalisation"
                )
            return Image.fromarray(_unnormalise(a, processing))
        return load_rgb(a)
    return load_rgb(image)


def _fit(img: Image.Image, size: int | None) -> Image.Image:
    """``img`` scaled so its longer side is ``size``; enlarged without smoothing so pixels stay crisp."""
    if size is None:
        return img
    w, h = img.size
    s = size / max(w, h)
    new = (max(1, round(w * s)), max(1, round(h * s)))
    if new == img.size:
        return img
    return img.resize(new, Image.Resampling.NEAREST if s > 1 else Image.Resampling.BICUBIC)


def overlay(
    image: Any,
    heat: Any,
    alpha: float = 0.5,
    size: int | None = 224,
    signed: bool | None = None,
    smooth: bool = True,
    processing: ImageProcessing | None = None,
    vmax: float | None = None,
) -> Image.Image:
    """A heat map ``[h, w]`` (a patch grid or a pixel map) drawn over an image.

    The image (see :func:`display_image`) is scaled so its longer side is ``size`` (None keeps its
    size); the heat map is upsampled to the same ``[H, W]`` (see :func:`upsample`), coloured (see
    :func:`colorize`) and blended: ``out = (1 - alpha) · image + alpha · colour``, rounded. So
    ``alpha=0`` gives the image and ``alpha=1`` the coloured map.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    img = _fit(display_image(image, processing), size)
    w, h = img.size
    colour = colorize(upsample(heat, (h, w), smooth=smooth), signed=signed, vmax=vmax)
    out = (1.0 - alpha) * np.asarray(img, dtype=np.float64) + alpha * colour
    return Image.fromarray(np.round(out).astype(np.uint8))


def side_by_side(
    images: list[Image.Image], gap: int = 4, background: tuple[int, int, int] = (255, 255, 255)
) -> Image.Image:
    """The images in one horizontal strip, ``gap`` pixels apart, vertically centred on ``background``."""
    if not images:
        raise ValueError("side_by_side needs at least one image")
    width = sum(im.width for im in images) + gap * (len(images) - 1)
    height = max(im.height for im in images)
    strip = Image.new("RGB", (width, height), background)
    x = 0
    for im in images:
        strip.paste(im.convert("RGB"), (x, (height - im.height) // 2))
        x += im.width + gap
    return strip

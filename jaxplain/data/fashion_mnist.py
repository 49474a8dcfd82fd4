"""Fashion-MNIST: an IDX reader, the class names, the shipped test set and its pixel preprocessing.

The IDX format (LeCun's MNIST files): a big-endian header — two zero bytes, a type code, the number
of dimensions ``k`` — then ``k`` big-endian uint32 sizes, then the values in row-major order. Files
may be gzipped. Fashion-MNIST (Zalando SE, MIT licence) ships four of them: ``train-images-idx3-ubyte``
``[60000, 28, 28]``, ``train-labels-idx1-ubyte`` ``[60000]``, and the ``t10k-*`` test pair with 10,000.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from jaxplain.data.images import ImageProcessing
from jaxplain.errors import InputError

CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
IMAGE_SIZE = 28
SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Mean and std of the training pixels (after rescaling to [0, 1]); the same for the three channels
# because the grey images are repeated into RGB.
MEAN, STD = 0.2860, 0.3530

# IDX type code → NumPy dtype (big-endian, as stored).
_IDX_TYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4")}
_IDX_TYPES.update({0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")})
_GZIP_MAGIC = b"\x1f\x8b"


def parse_idx(data: bytes, name: str = "IDX data") -> np.ndarray:
    """Decode the bytes of an (uncompressed) IDX file into an array in native byte order.

    Raises:
      InputError: the header is malformed or the payload size does not match it; the message names
        ``name``.
    """
    if len(data) < 4:
        raise InputError(f"{name}: too short for an IDX header ({len(data)} bytes)")
    if data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise InputError(f"{name}: not an IDX file (magic bytes {data[:4].hex()}, expected 0000 + type code + ndim)")
    dtype, ndim = _IDX_TYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise InputError(f"{name}: truncated IDX header ({len(data)} bytes, {ndim} dimensions need {header})")
    shape = tuple(int(s) for s in np.frombuffer(data, ">u4", ndim, offset=4))
    want = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != want:
        raise InputError(f"{name}: header says shape {shape} of {dtype.name} ({want} bytes), the file has {len(data)}")
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file, gzipped or not (detected from its first bytes, not its name)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == _GZIP_MAGIC:
            raw = gzip.decompress(raw)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise InputError(f"{path}: cannot read it ({e})") from None
    return parse_idx(raw, str(path))


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Write an array as an IDX file (gzipped if ``path`` ends in ``.gz``), e.g. to save a subset of a split."""
    codes = {dtype.newbyteorder("="): code for code, dtype in _IDX_TYPES.items()}
    array = np.asarray(array)
    if array.dtype not in codes:
        raise ValueError(f"IDX cannot store {array.dtype}; use one of {sorted(d.name for d in codes)}")
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path = Path(path)
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)
    return path


def _find(directory: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    raise InputError(
        f"{directory}: no {stem} or {stem}.gz (Fashion-MNIST's IDX files; on Debian: "
        "apt-get install dataset-fashion-mnist puts them in /usr/share/datasets/fashion-mnist)"
    )


def has_split(directory: str | Path, split: str) -> bool:
    """Whether ``directory`` holds both IDX files of ``split`` (gzipped or not)."""
    directory = Path(directory)
    return all(any((directory / (stem + gz)).is_file() for gz in ("", ".gz")) for stem in SPLITS[split])


def load_split(directory: str | Path, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Read one split of Fashion-MNIST from a directory holding its IDX files.

    Returns:
      ``(images [N, 28, 28] uint8, labels [N] int32)`` with labels in ``0..9`` (see :data:`CLASS_NAMES`).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    directory = Path(directory)
    image_file, label_file = (_find(directory, stem) for stem in SPLITS[split])
    images, labels = read_idx(image_file), read_idx(label_file)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise InputError(f"{image_file}: expected uint8 images [N, 28, 28], got {images.dtype} {images.shape}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise InputError(f"{label_file}: expected uint8 labels [N], got {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise InputError(f"{image_file} has {len(images)} images but {label_file} has {len(labels)} labels")
    if len(labels) and labels.max() >= len(CLASS_NAMES):
        raise InputError(f"{label_file}: label {labels.max()} is not a Fashion-MNIST class (0..9)")
    return images, labels.astype(np.int32)


def shipped_dir() -> Path:
    """The folder of the Fashion-MNIST test set, licence notice and caption bank shipped with jaxplain."""
    from jaxplain.assets import assets_dir

    return assets_dir() / "fashion-mnist"


def load_shipped_test() -> tuple[np.ndarray, np.ndarray]:
    """The 10,000 Fashion-MNIST test images ``[N, 28, 28]`` uint8 and labels ``[N]`` int32 shipped with jaxplain."""
    return load_split(shipped_dir(), "test")


def processing() -> ImageProcessing:
    """The preprocessing of the shipped model: 28×28, grey repeated into RGB, Fashion-MNIST's mean and std.

    Resizing and cropping a 28×28 image to 28×28 leave it unchanged, so for Fashion-MNIST images the
    preprocessing is a per-value map; larger images are resized as for any CLIP checkpoint.
    """
    return ImageProcessing(shortest_edge=IMAGE_SIZE, crop=(IMAGE_SIZE, IMAGE_SIZE), mean=(MEAN,) * 3, std=(STD,) * 3)


def pixel_table(proc: ImageProcessing) -> np.ndarray:
    """``[3, 256]`` float32: the normalised value of each uint8 grey level in each channel.

    Computed with the same float64 arithmetic as :meth:`ImageProcessing.pixels`, so that looking
    values up in it gives bit-identical pixels. Raises ``ValueError`` if ``proc`` would resize or crop
    a 28×28 image (a table cannot express that).
    """
    size = (IMAGE_SIZE, IMAGE_SIZE)
    keeps_size = not proc.do_resize or (
        proc.shortest_edge == IMAGE_SIZE if proc.shortest_edge else (proc.height, proc.width) == size
    )
    if not keeps_size or (proc.do_center_crop and tuple(proc.crop) != size):
        raise ValueError(f"this preprocessing changes the size of 28×28 images ({proc}); use it image by image")
    x = np.arange(256, dtype=np.uint8)[:, None].astype(np.float64).repeat(3, axis=1)
    if proc.do_rescale:
        x = x * proc.rescale_factor
    if proc.do_normalize:
        x = (x - np.asarray(proc.mean)) / np.asarray(proc.std)
    return np.ascontiguousarray(x.astype(np.float32).T)


def to_pixels(images: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Grey 28×28 uint8 images ``[N, 28, 28]`` → normalised pixels ``[N, 3, 28, 28]`` float32.

    ``table`` is :func:`pixel_table` of the model's preprocessing; the result equals
    ``ImageProcessing.pixels`` on each image (for preprocessing that keeps 28×28 images as they are).
    """
    if images.dtype != np.uint8 or images.ndim != 3:
        raise InputError(f"expected uint8 grey images [N, H, W], got {images.dtype} {images.shape}")
    return table[:, images].transpose(1, 0, 2, 3)

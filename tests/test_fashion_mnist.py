"""The IDX reader on hand-made files, the shipped test set, and the vectorised preprocessing."""

import gzip
import struct

import numpy as np
import pytest

from jaxplain.data import fashion_mnist as fm
from jaxplain.data.images import ImageProcessing
from jaxplain.errors import InputError


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    """An IDX file written by hand: 0, 0, type code, ndim, big-endian sizes, big-endian values."""
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(struct.pack(">I", s) for s in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_split(directory, images, labels, split="train", compress=False):
    names = fm.SPLITS[split]
    for name, data in zip(names, (idx_bytes(images), idx_bytes(labels))):
        if compress:
            (directory / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (directory / name).write_bytes(data)


@pytest.fixture
def small_split():
    images = (np.arange(3 * 28 * 28) % 256).astype(np.uint8).reshape(3, 28, 28)
    labels = np.array([0, 9, 4], np.uint8)
    return images, labels


@pytest.mark.parametrize("compress", [False, True])
def test_load_split_reads_hand_made_files(tmp_path, small_split, compress):
    images, labels = small_split
    write_split(tmp_path, images, labels, "test", compress)
    got_images, got_labels = fm.load_split(tmp_path, "test")
    assert got_images.dtype == np.uint8 and got_labels.dtype == np.int32
    np.testing.assert_array_equal(got_images, images)
    assert got_images[1, 0, 0] == (28 * 28) % 256 == 16
    assert got_labels.tolist() == [0, 9, 4]


def test_parse_idx_multibyte_types():
    values = np.array([[1, -2, 70000], [3, 4, -5]], np.int32)
    got = fm.parse_idx(idx_bytes(values, 0x0C))
    assert got.dtype == np.int32 and got.dtype.isnative
    assert got.tolist() == [[1, -2, 70000], [3, 4, -5]]
    floats = fm.parse_idx(idx_bytes(np.array([0.5, -1.25], np.float64), 0x0E))
    assert floats.tolist() == [0.5, -1.25]


def test_truncated_file_names_it_and_the_sizes(tmp_path, small_split):
    images, labels = small_split
    write_split(tmp_path, images, labels)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    message = r"train-images-idx3-ubyte: header says shape \(3, 28, 28\) of uint8 \(2368 bytes\), the file has 2358"
    with pytest.raises(InputError, match=message):
        fm.load_split(tmp_path, "train")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x01\x02\x08\x01", "not an IDX file"),
        (b"\x00\x00\x08", "too short"),
        (b"\x00\x00\x08\x03\x00\x00", "truncated IDX header"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x00", "not an IDX file"),
    ],
)
def test_malformed_headers(tmp_path, data, message):
    path = tmp_path / "bad.idx"
    path.write_bytes(data)
    with pytest.raises(InputError, match=f"bad.idx: {message}"):
        fm.read_idx(path)


def test_corrupt_gzip_and_missing_files(tmp_path, small_split):
    images, labels = small_split
    write_split(tmp_path, images, labels, compress=True)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:12])
    with pytest.raises(InputError, match=r"train-labels-idx1-ubyte\.gz: cannot read it"):
        fm.load_split(tmp_path, "train")
    with pytest.raises(InputError, match=r"no t10k-images-idx3-ubyte or t10k-images-idx3-ubyte\.gz"):
        fm.load_split(tmp_path, "test")
    assert fm.has_split(tmp_path, "train") and not fm.has_split(tmp_path, "test")


def test_inconsistent_splits(tmp_path, small_split):
    images, labels = small_split
    write_split(tmp_path, images[:, :27, :27], labels)
    with pytest.raises(InputError, match=r"expected uint8 images \[N, 28, 28\], got uint8 \(3, 27, 27\)"):
        fm.load_split(tmp_path, "train")
    write_split(tmp_path, images, labels[:2])
    with pytest.raises(InputError, match=r"has 3 images but .* has 2 labels"):
        fm.load_split(tmp_path, "train")
    write_split(tmp_path, images, np.array([0, 10, 1], np.uint8))
    with pytest.raises(InputError, match="label 10 is not a Fashion-MNIST class"):
        fm.load_split(tmp_path, "train")


def test_write_idx_round_trip(tmp_path):
    values = np.array([[1, -2, 70000]], np.int32)
    path = fm.write_idx(tmp_path / "x.idx", values)
    assert path.read_bytes() == idx_bytes(values, 0x0C)
    np.testing.assert_array_equal(fm.read_idx(fm.write_idx(tmp_path / "x.idx.gz", values)), values)
    with pytest.raises(ValueError, match="IDX cannot store uint16"):
        fm.write_idx(tmp_path / "y.idx", np.zeros(2, np.uint16))


def test_shipped_test_set():
    images, labels = fm.load_shipped_test()
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    assert np.bincount(labels).tolist() == [1000] * 10
    assert int(images.sum(dtype=np.int64)) == 573469082
    assert images[0, 13, 13] == 89
    assert len(fm.CLASS_NAMES) == 10 and fm.CLASS_NAMES[9] == "Ankle boot"


def test_vectorised_preprocessing_equals_image_processing():
    images, _ = fm.load_shipped_test()
    proc = fm.processing()
    sample = images[::500]
    fast = fm.to_pixels(sample, fm.pixel_table(proc))
    assert fast.shape == (20, 3, 28, 28) and fast.dtype == np.float32
    np.testing.assert_array_equal(fast, proc(list(sample)))
    np.testing.assert_array_equal(fast[0, 1, 13, 13], np.float32((89 / 255 - fm.MEAN) / fm.STD))
    # It is also what the preprocessor_config.json of a saved model gives back.
    restored = ImageProcessing.from_hf_dict(proc.to_hf_dict(), 28)
    assert restored == proc


def test_pixel_table_refuses_preprocessing_that_resizes():
    with pytest.raises(ValueError, match="changes the size"):
        fm.pixel_table(ImageProcessing.for_image_size(224))
    with pytest.raises(InputError, match="uint8 grey images"):
        fm.to_pixels(np.zeros((2, 28, 28), np.float32), fm.pixel_table(fm.processing()))

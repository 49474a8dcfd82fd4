"""Size buckets and bucketed mapping."""

import numpy as np
import pytest

from jaxplain.batching import bucket, chunks, map_blocks, map_bucketed, pad_edge, pad_rows, to_bucket


@pytest.mark.parametrize(
    "n, cap, want",
    [(1, None, 1), (3, None, 4), (8, None, 8), (9, None, 16), (100, None, 128), (50, 64, 64), (5, 4, 8)],
)
def test_bucket(n, cap, want):
    assert bucket(n, cap) == want


def test_bucket_rejects_empty():
    with pytest.raises(ValueError):
        bucket(0)


def test_pad_rows_and_chunks():
    x = np.arange(6).reshape(3, 2)
    np.testing.assert_array_equal(pad_rows(x, 5), [[0, 1], [2, 3], [4, 5], [0, 0], [0, 0]])
    assert [(s.start, s.stop) for s in chunks(10, 4)] == [(0, 4), (4, 8), (8, 10)]


def test_map_bucketed_sees_only_bucket_shapes():
    seen = []

    def fn(x):
        seen.append(x.shape[0])
        return x * 2

    x = np.arange(21, dtype=np.float32)[:, None]
    out = map_bucketed(fn, x, batch_size=16)
    np.testing.assert_array_equal(out, x * 2)
    assert seen == [16, 8]


def test_map_blocks_joins_each_output_field():
    x = np.arange(10.0)
    pairs = (x, {"y": np.arange(10) * 10})
    seen = []

    def fn(block):
        a, d = block
        seen.append(len(a))
        return {"sum": a + d["y"], "first": np.repeat(a[:1], len(a))}

    out = map_blocks(fn, pairs, 10, 4)
    assert seen == [4, 4, 2]
    np.testing.assert_array_equal(out["sum"], np.arange(10.0) * 11)
    np.testing.assert_array_equal(out["first"], [0, 0, 0, 0, 4, 4, 4, 4, 8, 8])


def test_to_bucket_pads_with_the_last_row():
    x = np.arange(10.0).reshape(5, 2)
    out = to_bucket((x, {"ids": np.array([3, 1, 4, 1, 5])}), 5)  # bucket 8
    np.testing.assert_array_equal(np.asarray(out[0]), np.concatenate([x, [[8.0, 9.0]] * 3]))
    np.testing.assert_array_equal(np.asarray(out[1]["ids"]), [3, 1, 4, 1, 5, 5, 5, 5])
    np.testing.assert_array_equal(pad_edge(x, 5), x)


def test_blocks_of_no_rows_are_refused():
    with pytest.raises(ValueError, match="batch size must be positive, got 0"):
        map_blocks(lambda b: b, np.arange(3), 3, 0)

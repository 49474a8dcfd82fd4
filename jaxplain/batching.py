"""Size buckets, so jitted functions compile once per bucket rather than once per batch size."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

MIN_BUCKET = 1


def bucket(n: int, cap: int | None = None) -> int:
    """The padded size for a batch of ``n``: the next power of two (at least ``MIN_BUCKET``),
    but never above ``cap`` when ``n <= cap``."""
    if n < 1:
        raise ValueError(f"batch size must be positive, got {n}")
    b = max(MIN_BUCKET, 1 << (n - 1).bit_length())
    return min(b, cap) if cap is not None and n <= cap else b


def pad_rows(x: np.ndarray, size: int) -> np.ndarray:
    """Pad ``x`` along axis 0 with zeros up to ``size`` rows."""
    if x.shape[0] == size:
        return x
    pad = np.zeros((size - x.shape[0], *x.shape[1:]), x.dtype)
    return np.concatenate([x, pad])


def chunks(n: int, batch_size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``batch_size`` covering ``range(n)``."""
    for start in range(0, n, batch_size):
        yield slice(start, min(n, start + batch_size))


def map_bucketed(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch_size: int) -> np.ndarray:
    """Apply a batched ``fn`` to ``x`` in chunks of ``batch_size``, each padded to its bucket.

    Every call of ``fn`` sees one of a few shapes, so a jitted ``fn`` compiles once per bucket.
    """
    outs = [
        np.asarray(fn(pad_rows(x[s], bucket(s.stop - s.start, batch_size))))[: s.stop - s.start]
        for s in chunks(len(x), batch_size)
    ]
    if not outs:
        return np.asarray(fn(pad_rows(x[:0], MIN_BUCKET)))[:0]
    return np.concatenate(outs)

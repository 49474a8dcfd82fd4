"""Batching: size buckets (jitted functions compile once per bucket, not once per batch size), and
streams of items that are prepared one by one, so a bad item is reported instead of failing a batch."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import numpy as np

from jaxplain.errors import InputError

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


def pad_edge(x: np.ndarray, size: int) -> np.ndarray:
    """Pad ``x`` along axis 0 to ``size`` rows by repeating its last row (keeps padded rows valid inputs)."""
    if x.shape[0] == size:
        return x
    return np.concatenate([x, np.repeat(x[-1:], size - x.shape[0], axis=0)])


def to_bucket(arrays, n: int):
    """A pytree of ``n``-row host arrays as device arrays of ``bucket(n)`` rows, padded with
    :func:`pad_edge`: a jitted function then compiles once per bucket, and its padded rows are valid inputs."""
    import jax
    import jax.numpy as jnp

    b = bucket(n)
    return jax.tree.map(lambda a: jnp.asarray(pad_edge(np.asarray(a), b)), arrays)


def chunks(n: int, batch_size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``batch_size`` covering ``range(n)``."""
    if batch_size < 1:
        raise ValueError(f"batch size must be positive, got {batch_size}")
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


def map_blocks(fn: Callable, arrays, n: int, block: int):
    """``fn`` on consecutive blocks of at most ``block`` rows of a pytree of ``n``-row ``arrays``; its
    outputs (a pytree of arrays, rows first) are joined back along the rows, as NumPy arrays.

    For work whose cost or memory grows faster than its batch: ``fn`` pads each block to its own
    bucket, so a jitted ``fn`` compiles for the full block and the last one's bucket."""
    import jax

    outs = [fn(jax.tree.map(lambda a, s=s: a[s], arrays)) for s in chunks(n, block)]
    return jax.tree.map(lambda *parts: np.concatenate([np.asarray(p) for p in parts]), *outs)


def progress(total: int, desc: str, unit: str, show: bool = True):
    """A progress bar on standard error (``show=False``: a silent one)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, disable=not show)


class EncodedBatch(NamedTuple):
    """One batch of :func:`encode_batches`: ``embeddings [B, E]`` of the ``B`` good ``items`` (in input order),
    and the ``{"item", "error"}`` records of the bad items met since the previous batch (those ``prepare``
    refused, then this batch's items whose embedding is not finite)."""

    embeddings: np.ndarray | None
    items: list[Any]
    errors: list[dict]


NON_FINITE_EMBEDDING = "the model gave a non-finite embedding (NaN/inf) for it"


def finite_rows(
    embeddings: np.ndarray | None, items: list[Any], name: Callable[[Any], str]
) -> tuple[np.ndarray | None, list[Any], list[dict]]:
    """Split a batch's embeddings ``[B, E]`` of ``items`` into the rows that are finite and the rest.

    Returns the finite rows (None if there are none), their items, and an ``{"item", "error"}`` record
    (:data:`NON_FINITE_EMBEDDING`) naming each item whose embedding holds a NaN or an infinity: inputs a
    model overflows on (e.g. in float16), or pixels that are not finite. Each row is its own item's: the
    other items of the batch are kept as they are.
    """
    if embeddings is None:
        return None, items, []
    emb = np.asarray(embeddings)
    ok = np.isfinite(emb.reshape(len(emb), -1)).all(axis=1)
    if ok.all():
        return embeddings, items, []
    errors = [{"item": name(item), "error": NON_FINITE_EMBEDDING} for item, good in zip(items, ok) if not good]
    kept = [item for item, good in zip(items, ok) if good]
    return (emb[ok] if ok.any() else None), kept, errors


class _Raised(NamedTuple):
    """An exception other than :class:`InputError` raised by ``prepare`` in a worker, to be re-raised by the
    consumer: only bad input is reported and skipped, a bug still stops the job."""

    exception: BaseException


def encode_batches(
    items: Iterable[Any],
    prepare: Callable[[Any], np.ndarray],
    name: Callable[[Any], str],
    encode: Callable[[np.ndarray], np.ndarray],
    batch_size: int,
    workers: int | None = None,
) -> Iterator[EncodedBatch]:
    """Prepare items (catching bad ones) on a pool of threads while the good ones are encoded a batch at a time.

    Args:
      items: any iterable, pulled lazily; an item with an ``error`` attribute that is set (an error
        :class:`~jaxplain.data.sources.Record`) is reported as it is.
      prepare: item → model input (e.g. pixels ``[3, H, W]``); raises :class:`InputError` for a bad item.
      name: item → the name errors report.
      encode: stacked inputs ``[B, ...]`` → embeddings ``[B, E]``; an item whose row is not finite is
        reported (:func:`finite_rows`) and dropped, the others of its batch kept.
      workers: threads preparing items (:func:`~jaxplain.data.decode.decode_parallel`; None: one per core,
        0: in this thread). They prepare up to ``batch_size + workers`` items ahead, so the next batch is
        being decoded while this one encodes (the device releases the GIL). The batches, and so the
        embeddings, are the same for any ``workers``: every batch but the last holds ``batch_size`` items.

    Yields:
      :class:`EncodedBatch` es; the last one may hold no embeddings (None) and only errors.
    """
    from jaxplain.data.decode import decode_parallel, default_workers

    if batch_size < 1:
        raise ValueError(f"batch size must be positive, got {batch_size}")
    workers = default_workers() if workers is None else workers

    def guarded(item):
        try:
            return prepare(item)
        except InputError:
            raise
        except Exception as e:  # not bad input: re-raised in the consumer's thread
            return _Raised(e)

    def encoded(pending, kept, errors) -> EncodedBatch:
        emb, good, bad = finite_rows(encode(np.stack(pending)) if pending else None, kept, name)
        return EncodedBatch(emb, good, errors + bad)

    pending, kept, errors = [], [], []
    for d in decode_parallel(items, guarded, workers=workers, prefetch=batch_size + workers):
        if isinstance(d.value, _Raised):
            raise d.value.exception
        if d.error is not None:
            label = name(d.item)
            errors.append({"item": label, "error": d.error.removeprefix(f"{label}: ")})
            continue
        pending.append(d.value)
        kept.append(d.item)
        if len(pending) == batch_size:
            yield encoded(pending, kept, errors)
            pending, kept, errors = [], [], []
    if pending or errors:
        yield encoded(pending, kept, errors)


def encode_stream(
    n: int,
    prepare: Callable[[int], np.ndarray],
    name: Callable[[int], str],
    encode: Callable[[np.ndarray], np.ndarray],
    batch_size: int,
    desc: str,
    unit: str = "item",
    show: bool = True,
    workers: int | None = None,
) -> tuple[np.ndarray | None, list[int], list[dict]]:
    """Prepare items (catching bad ones) and encode the good ones a batch at a time: :func:`encode_batches`
    over the indices ``range(n)``, with a progress bar.

    Args:
      n: number of items.
      prepare: item index → model input (e.g. pixels ``[3, H, W]``); raises :class:`InputError` for a bad item.
      name: item index → the name errors report.
      encode: stacked inputs ``[B, ...]`` → embeddings ``[B, E]``.
      workers: threads preparing items ahead of the encoder (see :func:`encode_batches`; 0: none).

    Returns:
      the embeddings ``[K, E]`` of the ``K`` good items (None if there were none), their indices,
      and one ``{"item", "error"}`` record per bad item: one ``prepare`` refused, or one whose embedding is
      not finite (:data:`NON_FINITE_EMBEDDING`).
    """
    rows, kept, errors = [], [], []
    with progress(n, desc, unit, show) as bar:
        for batch in encode_batches(range(n), prepare, name, encode, batch_size, workers):
            if batch.embeddings is not None:
                rows.append(batch.embeddings)
            kept += batch.items
            errors += batch.errors
            bar.update(len(batch.items) + len(batch.errors))
    return (np.concatenate(rows) if rows else None), kept, errors

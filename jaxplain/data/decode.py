"""Decoding overlapped with the device: a pool prepares the next items (image bytes → pixels) while the
consumer encodes the current batch, with results in input order and memory bounded by ``prefetch``.

    for d in decode_parallel(read_records(shards), lambda r: model.processing.pixels(r.image, r.where)):
        if d.error: report(d.item.where, d.error)
        else: batch.append(d.value)  # encode a full batch: workers keep decoding meanwhile

Threads, not processes (``benchmarks/bench_decode.py``, 1600×1200 JPEGs → ``[3, 224, 224]``). PIL releases
the GIL while it decodes and resizes: a Python loop beside a thread that prepares images kept 51–72% of its
speed, against 26–44% beside a thread running Python. On the project's 2-vCPU machine, shared with other
jobs, neither pool beat one inline worker by more than 1.2× (threads × 2: 1.02–1.20×, processes × 2:
1.07–1.23×, within the run-to-run noise), so a process pool's costs buy nothing: it pickles every encoded
image in and every float32 result out, and needs a picklable ``prepare`` (no lambdas, no closures over a
model). What pays everywhere is the overlap: the device releases the GIL too, so the encoder runs while
the workers decode (1.36× on a quiet run with a device as fast as the decoding).
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

from jaxplain.errors import InputError

DEFAULT_PREFETCH = 128


class Decoded(NamedTuple):
    """One item and what ``prepare`` made of it.

    Attributes:
      item: the input item (e.g. a :class:`~jaxplain.data.sources.Record`).
      value: ``prepare(item)``, or None when it failed.
      error: why it failed (an :class:`InputError`'s message without the item's ``where`` prefix; another
        exception's type and message), or the item's own ``error``; None on success.
    """

    item: Any
    value: Any
    error: str | None


def default_workers() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on every platform
        return os.cpu_count() or 1


def decode_parallel(
    items: Iterable[Any],
    prepare: Callable[[Any], Any],
    workers: int | None = None,
    prefetch: int | None = None,
) -> Iterator[Decoded]:
    """``prepare`` applied to every item by a pool of threads, yielded lazily in input order.

    Args:
      items: any iterable, pulled lazily (by the consumer's thread). An item with an ``error`` attribute
        that is set (an error :class:`~jaxplain.data.sources.Record`) passes through without ``prepare``.
      prepare: item → value (e.g. pixels ``[3, H, W]``); it may raise: the error is kept with its item and
        the stream goes on.
      workers: threads (None: one per core, :func:`default_workers`); 0 runs ``prepare`` in the consumer's
        thread, one item at a time (no overlap).
      prefetch: items submitted ahead of the consumer, done or not (None: ``DEFAULT_PREFETCH``, at least
        ``workers``). It bounds memory: at most ``prefetch`` prepared values wait at any time. Set it to about
        the encoder's batch size, so that a whole next batch is prepared while the device encodes one.
    """
    workers = default_workers() if workers is None else workers
    if workers < 0:
        raise InputError(f"workers must be 0 or more, got {workers}")
    if workers == 0:
        return (_prepare_one(prepare, item) for item in items)
    prefetch = max(workers, DEFAULT_PREFETCH if prefetch is None else prefetch)
    return _pooled(items, prepare, workers, prefetch)


def _pooled(items: Iterable[Any], prepare: Callable, workers: int, prefetch: int) -> Iterator[Decoded]:
    pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="jaxplain-decode")
    try:
        yield from ordered_map(pool, prepare, items, prefetch)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def ordered_map(
    pool: concurrent.futures.Executor, prepare: Callable, items: Iterable[Any], prefetch: int
) -> Iterator[Decoded]:
    """:func:`decode_parallel`'s loop over any executor (a process pool needs a picklable ``prepare``)."""
    if prefetch < 1:
        raise InputError(f"prefetch must be positive, got {prefetch}")
    pending: collections.deque = collections.deque()
    it = iter(items)

    def submit(item) -> None:
        own = getattr(item, "error", None)
        if own is None:
            future = pool.submit(_guarded, prepare, item)
        else:
            future = concurrent.futures.Future()
            future.set_result((None, own))
        pending.append((item, future))

    try:
        for item in it:
            submit(item)
            if len(pending) >= prefetch:
                break
        while pending:
            item, future = pending.popleft()
            value, error = future.result()
            for nxt in it:  # refill before handing out, so the pool is not short while the consumer works
                submit(nxt)
                break
            yield Decoded(item, value, error)
    finally:
        for _, future in pending:
            future.cancel()


def _prepare_one(prepare: Callable, item: Any) -> Decoded:
    own = getattr(item, "error", None)
    return Decoded(item, None, own) if own is not None else Decoded(item, *_guarded(prepare, item))


def _guarded(prepare: Callable, item: Any) -> tuple[Any, str | None]:
    """``(prepare(item), None)`` or ``(None, why it failed)``. Runs in a worker; at module level, so that a
    process pool can pickle it, and returning no copy of the item, which a process would send back."""
    try:
        return prepare(item), None
    except InputError as e:
        where = getattr(item, "where", None)
        text = str(e)
        return None, (text.removeprefix(f"{where}: ") if where else text)
    except Exception as e:  # a batch job reports the item and goes on, whatever broke
        return None, f"{type(e).__name__}: {e}"

"""Decoding camera-size JPEGs into CLIP pixels: one worker against several, threads against processes, and
decoding overlapped with a device's encoding, measured side by side in one run.

The images are Fashion-MNIST test images (shipped with jaxplain) tiled and upscaled to 1600×1200 with
camera-like noise, saved as JPEG quality 90 (~0.5 MB each, as a phone photo). Each is turned into
``[3, 224, 224]`` pixels by CLIP's standard preprocessing (:meth:`ImageProcessing.pixels`), through
:func:`jaxplain.data.decode.decode_parallel` (threads) or its loop over a process pool.

The overlap case stands in for a GPU with a sleep per batch (a device's encoding uses no host core and
releases the GIL): "serial" decodes a batch and then encodes it; "overlapped" encodes while the pool
decodes the next batch.

    python benchmarks/bench_decode.py [--images 96] [--repeats 5]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import io
import os
import threading
import time

import numpy as np
from PIL import Image

from jaxplain.data import fashion_mnist
from jaxplain.data.decode import decode_parallel, default_workers, ordered_map
from jaxplain.data.images import ImageProcessing

SIZE = (1600, 1200)


def camera_jpegs(n: int, seed: int = 0) -> list[bytes]:
    """``n`` distinct 1600×1200 JPEGs: 4×3 Fashion-MNIST images upscaled, tinted, with sensor-like noise."""
    images = fashion_mnist.load_shipped_test()[0]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        tiles = images[rng.choice(len(images), 12, replace=False)].reshape(3, 4, 28, 28)
        grid = tiles.transpose(0, 2, 1, 3).reshape(84, 112).astype(np.float32)
        big = np.asarray(Image.fromarray(grid.astype(np.uint8)).resize(SIZE, Image.Resampling.BICUBIC), np.float32)
        tint = rng.uniform(0.6, 1.0, 3)
        rgb = big[..., None] * tint + rng.normal(0, 6, (*big.shape, 3))
        buf = io.BytesIO()
        Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def pixels_of(processing: ImageProcessing, data: bytes) -> np.ndarray:
    """What a worker does with one item (module level, so a process pool can pickle it)."""
    return processing.pixels(data, "image")


def timed(pool, prepare, jpegs, workers: int) -> float:
    """Seconds to prepare every JPEG in order: ``pool`` None → :func:`decode_parallel` with ``workers``
    threads (0: inline), else its loop over that (already started) process pool."""
    start = time.perf_counter()
    if pool is None:
        out = decode_parallel(jpegs, prepare, workers=workers, prefetch=4 * max(1, workers))
    else:
        out = ordered_map(pool, prepare, jpegs, 4 * workers)
    for d in out:
        assert d.error is None, d.error
    return time.perf_counter() - start


def python_rate_beside(work, seconds: float = 1.0) -> float:
    """Iterations per second of a pure-Python loop in this thread while another thread runs ``work`` over and
    over: high when ``work`` releases the GIL (threads can then run side by side), low when it holds it."""
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            work()

    t = threading.Thread(target=loop)
    t.start()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        n += 1
    stop.set()
    t.join()
    return n / seconds


def spin(n: int = 20000) -> None:
    """Pure Python: holds the GIL except when the interpreter switches threads."""
    x = 0
    for i in range(n):
        x += i


def overlap(jpegs, prepare, workers: int, batch: int, device_s: float) -> tuple[float, float]:
    """Seconds for decode-then-encode batch by batch, and for encoding while the pool decodes ahead."""
    start = time.perf_counter()
    for s in range(0, len(jpegs), batch):
        [d.value for d in decode_parallel(jpegs[s : s + batch], prepare, workers=workers, prefetch=batch)]
        time.sleep(device_s)
    serial = time.perf_counter() - start
    start = time.perf_counter()
    pending = []
    for d in decode_parallel(jpegs, prepare, workers=workers, prefetch=batch + workers):
        pending.append(d.value)
        if len(pending) == batch:
            time.sleep(device_s)
            pending = []
    if pending:
        time.sleep(device_s)
    return serial, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=5, help="rounds over all decoders")
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()

    cores = default_workers()
    jpegs = camera_jpegs(args.images)
    processing = ImageProcessing.for_image_size(224)
    prepare = functools.partial(pixels_of, processing)
    mb = sum(map(len, jpegs)) / len(jpegs) / 1e6
    load = os.getloadavg()[0]
    print(f"{len(jpegs)} JPEGs {SIZE[0]}×{SIZE[1]}, {mb:.2f} MB each, → [3, 224, 224]; {cores} cores, load {load:.1f}")

    ref = [prepare(j) for j in jpegs]
    threaded = decode_parallel(jpegs, prepare, workers=cores)
    assert all(np.array_equal(a, d.value) for a, d in zip(ref, threaded)), "threads changed the pixels"

    counts = sorted({1, 2, cores // 2 or 1, cores})
    pools = {w: concurrent.futures.ProcessPoolExecutor(w) for w in counts}
    for w, pool in pools.items():  # start the processes (and import jaxplain in them) outside the timing
        list(ordered_map(pool, prepare, jpegs[:w], w))
    configs = [("inline (workers=0)", None, 0)]
    configs += [(f"threads × {w}", None, w) for w in counts]
    configs += [(f"processes × {w}", pools[w], w) for w in counts]
    # Rounds interleave the decoders, so that load from other work on the machine falls on all of them.
    times: dict[str, list[float]] = {name: [] for name, _, _ in configs}
    for r in range(args.repeats):
        for name, pool, w in configs[r % len(configs) :] + configs[: r % len(configs)]:
            times[name].append(timed(pool, prepare, jpegs, w))
    for pool in pools.values():
        pool.shutdown()
    base = min(times[configs[0][0]])
    print(f"{'decoder':<22}{'images/s':>10}{'ms/image':>10}{'speed-up':>10}{'median':>9}")
    for name, _, _ in configs:
        t, med = min(times[name]), float(np.median(times[name]))
        print(f"{name:<22}{len(jpegs) / t:>10.1f}{1e3 * t / len(jpegs):>10.2f}{base / t:>9.2f}×{base / med:>8.2f}×")
    print("(best of the rounds; 'median': the speed-up of the median round over the best inline round)")

    free = python_rate_beside(lambda: time.sleep(0.005))
    held = python_rate_beside(spin)
    beside = python_rate_beside(lambda: prepare(jpegs[0]))
    print(
        f"a Python loop beside a thread that prepares images runs at {beside / free:.0%} of its speed beside a "
        f"sleeping thread ({held / free:.0%} beside a thread running Python): the GIL is mostly free while PIL "
        "decodes and resizes"
    )

    per_image = base / len(jpegs)
    device_s = per_image * args.batch / cores  # a device as fast as the threads' decoding
    serial, overlapped = overlap(jpegs, prepare, cores, args.batch, device_s)
    print(
        f"with a device taking {1e3 * device_s:.0f} ms per batch of {args.batch} (threads × {cores}): "
        f"decode then encode {serial:.2f} s, overlapped {overlapped:.2f} s ({serial / overlapped:.2f}×)"
    )


if __name__ == "__main__":
    main()

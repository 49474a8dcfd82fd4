"""Peak memory per image decoded into CLIP pixels, whatever the file declares: each case runs in a fresh process
that imports ``jaxplain.data.images`` alone (not the package's ``__init__``, which imports jax), resets its peak
resident memory (Linux's ``/proc/self/clear_refs``; elsewhere ``resource.getrusage``'s peak since start), turns
one file into ``[3, 224, 224]`` pixels, and reports the growth of its peak and the time.

Cases: a PNG whose header declares 60000×60000 pixels (138 bytes; 10.8 GB as RGB if decoded), a 1×20000 strip
(118 bytes; its resize to a shortest edge of 224 would be 224×4,480,000, 3 GB), a 1600×1200 photo (JPEG), and
a solid PNG just under the decoding bound ``MAX_PIXELS`` (the most memory one image may take).

    python benchmarks/bench_decode_memory.py [--no-largest]
"""

from __future__ import annotations

import argparse
import json
import struct
import subprocess
import sys
import tempfile
import textwrap
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent(
    r"""
    import json, re, resource, sys, time, types
    from pathlib import Path
    for name in ("jaxplain", "jaxplain.data"):
        module = types.ModuleType(name)
        module.__path__ = [str(Path(sys.argv[1], *name.split(".")))]
        sys.modules[name] = module
    from jaxplain.data.images import ImageProcessing
    from jaxplain.errors import InputError

    def status(key):
        try:
            return int(re.search(key + r":\s+(\d+)", Path("/proc/self/status").read_text()).group(1))
        except (OSError, AttributeError):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    path = sys.argv[2]
    proc = ImageProcessing.for_image_size(224)
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    before = status("VmRSS")
    start = time.perf_counter()
    try:
        proc.pixels(path)
        error = None
    except InputError as e:
        error = str(e)
    print(json.dumps({"error": error, "seconds": time.perf_counter() - start, "grown_kib": status("VmHWM") - before}))
    """
)


def header_only_png(width: int, height: int, rows: int) -> bytes:
    """A grey PNG declaring ``width``×``height`` with ``rows`` rows of data: PIL reads the size lazily."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = (b"\0" + bytes(width)) * rows
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def measure(path: Path) -> dict:
    """One decode in a fresh process: its error (or None), seconds and peak growth in KiB."""
    run = subprocess.run(
        [sys.executable, "-c", CHILD, str(ROOT), str(path)], capture_output=True, text=True, check=True, timeout=600
    )
    return json.loads(run.stdout)


def main() -> None:
    """Write the cases into a temporary folder, measure each, print a table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-largest", action="store_true", help="skip the image at the bound (writing it takes ~1 GB)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="jaxplain-bench-decode-memory-") as tmp:
        tmp = Path(tmp)
        cases = {
            "bomb 60000×60000 (header)": tmp / "bomb.png",
            "strip 1×20000": tmp / "strip.png",
            "photo 1600×1200": tmp / "photo.jpg",
        }
        cases["bomb 60000×60000 (header)"].write_bytes(header_only_png(60000, 60000, 1))
        cases["strip 1×20000"].write_bytes(header_only_png(1, 20000, 20000))
        rng = np.random.RandomState(0)
        Image.fromarray(rng.randint(0, 256, (1200, 1600, 3), np.uint8)).save(cases["photo 1600×1200"], quality=90)
        if not args.no_largest:
            side = 9459  # 9459² = 89,472,681 pixels, just under MAX_PIXELS
            cases[f"solid {side}×{side} (the bound)"] = tmp / "largest.png"
            Image.new("RGB", (side, side), (90, 120, 150)).save(tmp / "largest.png", compress_level=1)
        print(f"{'case':32} {'file':>10} {'peak growth':>12} {'seconds':>8}  result")
        for label, path in cases.items():
            r = measure(path)
            result = "pixels [3, 224, 224]" if r["error"] is None else r["error"].split(": ", 1)[1][:70]
            size = path.stat().st_size
            print(f"{label:32} {size:>10,} {r['grown_kib'] / 1024:>9.1f} MB {r['seconds']:>8.3f}  {result}")


if __name__ == "__main__":
    main()

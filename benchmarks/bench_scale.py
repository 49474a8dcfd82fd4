"""At scale: the memory and speed of ``jaxplain explain`` streaming a pairs file, and of ``jaxplain bank build``
on a folder of camera-size JPEGs, each against the in-memory call doing the same work, measured in one run.

Sections (``--sections``, default all three):

* ``memory``: ``python -m jaxplain explain`` in a fresh process per size (``--sizes``, default 10k, 100k
  and 1M pairs; a size whose estimated run time, from the sizes before it, exceeds ``--max-run-s`` is
  skipped and its estimate printed), on the shipped model and a bank built once from its 10,000 shipped
  test images. The pairs are ``fashion-mnist-test:N`` images with the 10 class names and mixed wants
  (``other-class``, ``runner-up``, ``class:NAME``). The child's peak RSS is read from ``os.wait4``
  (its own ``ru_maxrss``, not the maximum over every child so far), and psutil samples its RSS while it
  runs (at half and at 95% of the run: the growth within one run). Goal: flat, bounded by ``--chunk``.
* ``throughput``: pairs/s of the streaming job, in-process through ``jaxplain.cli.main`` after a warm-up
  run (model and bank load, line scan and writing included; compilation excluded), against
  ``jaxplain.counterfactuals`` on the same pairs at once (pixels already in memory), interleaved, the
  median of ``--repeats``; then the streaming job once in a new process (start-up and compilation
  included), and the per-pair cost of reading a line (JSON, ``Want.parse``, ``processing.pixels``).
  Goal: streaming ≥ 0.95× the in-memory call.
* ``bank``: ``jaxplain bank build`` (in-process, after a warm-up build that compiles the same batch
  shapes) on a folder of ``--jpegs`` JPEGs of ``--jpeg-size`` (shipped images upscaled onto drawn, noisy
  backgrounds, quality 90), against ``model.encode_pixels`` on the same images decoded and preprocessed
  in memory. Goal: ≥ 0.9×. Also the measured decode+preprocess cost per image (one thread, and through
  ``jaxplain.data.decode.decode_parallel`` where present) and encode cost per image, and the bound they
  set when decoding shares the CPU with the model: ``t_enc / (t_enc + t_dec)``. On the shipped model and
  on a random-weight CLIP of ViT-B/32 sizes (``--b32-jpegs`` images, default 500: its encoder costs far
  more per image on a CPU).

Every ratio is of two runs made side by side in this run; the absolute figures move with the machine's load.

    python benchmarks/bench_scale.py [--sections memory,throughput,bank] [--sizes 10000,100000,1000000]
        [--chunk 4096] [--search index] [--tput-pairs 16384] [--repeats 3] [--jpegs 5000]
        [--jpeg-size 1024x768] [--b32-jpegs 500] [--models shipped,b32] [--scratch DIR] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import multiprocessing
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

import jaxplain
from jaxplain import cli
from jaxplain.counterfactual import Bank, build_bank, counterfactuals
from jaxplain.data import fashion_mnist

REPO = Path(__file__).resolve().parents[1]
CLASSES = list(fashion_mnist.CLASS_NAMES)
SHIPPED = "fashion-clip"
MIB = 1024 * 1024


def _log(text: str) -> None:
    print(text, flush=True)


# --- pairs -------------------------------------------------------------------------------------------------


def pair_spec(n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """``n`` pairs: shipped test-image indices ``[n]`` and one wanted outcome each (a third of each form)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, 10_000, n)
    kind = rng.integers(0, 3, n)
    named = rng.integers(0, len(CLASSES), n)
    forms = np.array(["other-class", "runner-up"] + [f"class:{c}" for c in CLASSES], dtype=object)
    wants = forms[np.where(kind < 2, kind, 2 + named)]
    return idx, list(wants)


def write_pairs(path: Path, n: int, seed: int) -> Path:
    """A JSON-lines pairs file (written once per size and seed; reused while it is complete)."""
    if path.is_file() and path.with_suffix(".ok").is_file():
        return path
    classes = json.dumps(CLASSES)
    block = 100_000
    tmp = path.with_suffix(".partial")
    with tmp.open("w", encoding="utf-8") as f:
        for start in range(0, n, block):
            idx, wants = pair_spec(min(block, n - start), seed + start)
            f.write(
                "".join(
                    f'{{"image": "fashion-mnist-test:{i}", "classes": {classes}, "want": {json.dumps(w)}}}\n'
                    for i, w in zip(idx.tolist(), wants)
                )
            )
    tmp.replace(path)
    path.with_suffix(".ok").write_text(f"{n}\n")
    return path


def read_spec(n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """The pairs :func:`write_pairs` writes, as arrays (same blocks, same seeds)."""
    idx, wants = [], []
    for start in range(0, n, 100_000):
        i, w = pair_spec(min(100_000, n - start), seed + start)
        idx.append(i)
        wants += w
    return np.concatenate(idx), wants


def shipped_bank(scratch: Path) -> Path:
    """The bank of the 10,000 shipped test images, built once by this run and saved (what explain loads)."""
    model = jaxplain.load(SHIPPED)
    images, labels = fashion_mnist.load_shipped_test()
    t = time.perf_counter()
    bank, _ = build_bank(model, images=images, labels=labels, progress=False)
    out = bank.save(scratch / "bank-fashion-clip")
    _log(f"bank: {len(bank):,} shipped images, {bank.index.backend} index, built in {time.perf_counter() - t:.1f} s")
    return out


# --- child processes ---------------------------------------------------------------------------------------


def run_child(argv: list[str], log: Path) -> dict:
    """Run ``argv`` in a new process; its exit status, wall time, peak RSS (``wait4``) and sampled RSS."""
    import psutil

    samples: list[tuple[float, int]] = []
    with log.open("wb") as f:
        start = time.perf_counter()
        p = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, cwd=REPO)
        stop = threading.Event()

        def sample() -> None:
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(p.pid)
                while not stop.wait(0.25):
                    samples.append((time.perf_counter() - start, proc.memory_info().rss))

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - start
        stop.set()
        th.join()
    p.returncode = os.waitstatus_to_exitcode(status)

    def at(frac: float) -> float:
        later = [rss for t, rss in samples if t >= frac * wall]
        return later[0] / MIB if later else float("nan")

    return {"rc": p.returncode, "wall": wall, "peak": usage.ru_maxrss / 1024, "half": at(0.5), "late": at(0.95)}


def explain_argv(bank: Path, pairs: Path, out: Path, args) -> list[str]:
    return [
        "explain",
        "--model",
        SHIPPED,
        "--bank",
        str(bank),
        "--pairs",
        str(pairs),
        "--out",
        str(out),
        "--chunk",
        str(args.chunk),
        "--search",
        args.search,
    ]


def job_seconds(log_text: str) -> float:
    """The time ``jaxplain explain`` reports for itself (after Python's and JAX's import)."""
    m = re.search(r"explained [\d,]+ pairs? .* in ([\d.]+) s", log_text)
    return float(m.group(1)) if m else float("nan")


def manifest_records(out: Path) -> tuple[int, dict]:
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    return manifest["records"], manifest["summary"]


# --- section 1: memory -------------------------------------------------------------------------------------


def section_memory(args, scratch: Path, bank: Path) -> None:
    _log(f"\n== memory: python -m jaxplain explain in a fresh process per size (chunk {args.chunk}) ==")
    sizes = [args.chunk] + [n for n in args.sizes if n != args.chunk]  # one chunk: the floor
    rows, per_pair = [], None
    for n in sizes:
        if rows and args.max_run_s > 0:
            n0, r0 = rows[-1]["n"], rows[-1]
            estimate = r0["wall"] + (n - n0) * per_pair
            if estimate > args.max_run_s:
                _log(
                    f"  {n:,} pairs skipped: estimated {estimate:.0f} s ({per_pair * 1e3:.2f} ms per pair) > "
                    f"--max-run-s {args.max_run_s:.0f}"
                )
                rows.append({"n": n, "skipped": estimate})
                continue
        pairs = write_pairs(scratch / f"pairs-{n}-s{args.seed}.jsonl", n, args.seed)
        out = scratch / f"explain-mem-{n}"
        shutil.rmtree(out, ignore_errors=True)
        argv = [sys.executable, "-m", "jaxplain", *explain_argv(bank, pairs, out, args)]
        r = run_child(argv, scratch / f"explain-mem-{n}.log")
        text = (scratch / f"explain-mem-{n}.log").read_text(encoding="utf-8", errors="replace")
        if r["rc"] not in (0, 1):
            raise SystemExit(f"explain failed on {n} pairs (exit {r['rc']}):\n{text[-2000:]}")
        records, summary = manifest_records(out)
        r.update(n=n, job=job_seconds(text), records=records, found=summary.get("found", 0))
        r["parts"] = -(-n // args.chunk)
        done = [x for x in rows if "skipped" not in x]
        if done and n > done[-1]["n"]:  # the slope of the last two sizes: start-up excluded
            per_pair = max((r["wall"] - done[-1]["wall"]) / (n - done[-1]["n"]), r["wall"] / n / 4)
        else:
            per_pair = r["wall"] / n
        rows.append(r)
        _log(f"  {n:,} pairs: peak {r['peak']:.0f} MiB, {r['wall']:.1f} s")
        shutil.rmtree(out, ignore_errors=True)
    base = next((r for r in rows if r["n"] == min(args.sizes) and "skipped" not in r), None)
    _log(
        f"\n{'pairs':>10} {'parts':>6} {'records':>9} {'found':>9} {'wall s':>8} {'job s':>8} {'pairs/s':>8} "
        f"{'peak MiB':>9} {'@50% MiB':>9} {'@95% MiB':>9} {'peak/smallest':>14}"
    )
    for r in rows:
        if "skipped" in r:
            _log(f"{r['n']:>10,} {'':>6} skipped: estimated {r['skipped']:.0f} s on this machine now")
            continue
        ratio = f"{r['peak'] / base['peak']:.3f}" if base else "-"
        _log(
            f"{r['n']:>10,} {r['parts']:>6} {r['records']:>9,} {r['found']:>9,} {r['wall']:>8.1f} {r['job']:>8.1f} "
            f"{r['n'] / r['wall']:>8.0f} {r['peak']:>9.0f} {r['half']:>9.0f} {r['late']:>9.0f} {ratio:>14}"
        )
    big = [r for r in rows if "skipped" not in r and r["n"] == max(args.sizes)]
    if base and big:
        _log(f"peak RSS {big[0]['n']:,} / {base['n']:,} pairs: {big[0]['peak'] / base['peak']:.3f}")
    if per_pair:
        _log(f"cost per pair (slope of wall time between the two largest sizes run): {per_pair * 1e3:.3f} ms")
    _log(
        f"reproduce: python benchmarks/bench_scale.py --sections memory --sizes {','.join(map(str, args.sizes))} "
        f"--chunk {args.chunk} --search {args.search} --max-run-s {args.max_run_s:.0f}"
    )


# --- section 2: throughput ---------------------------------------------------------------------------------


def _shallow_record(p) -> dict:
    """``PairResult.to_record`` built field by field (its fields hold no mutable values to copy)."""
    d = {f.name: getattr(p, f.name) for f in dataclasses.fields(p)}
    d["counterfactuals"] = [{f.name: getattr(c, f.name) for f in dataclasses.fields(c)} for c in p.counterfactuals]
    return d


def section_throughput(args, scratch: Path, bank_dir: Path) -> None:
    import argparse as ap

    from jaxplain.commands.explain import explain_shard
    from jaxplain.data.sources import SourceConfig, list_shards

    n = args.tput_pairs
    _log(f"\n== throughput: {n:,} pairs, streaming job (chunk {args.chunk}) vs in-memory call, search={args.search} ==")
    pairs = write_pairs(scratch / f"pairs-{n}-s{args.seed}.jsonl", n, args.seed)
    idx, wants = read_spec(n, args.seed)
    t = time.perf_counter()
    model = jaxplain.load(SHIPPED)
    t_model = time.perf_counter() - t
    t = time.perf_counter()
    bank = Bank.load(bank_dir, model=model)
    t_bank = time.perf_counter() - t
    t = time.perf_counter()
    shards = list_shards(str(pairs), config=SourceConfig(chunk=args.chunk))
    t_scan = time.perf_counter() - t
    images = fashion_mnist.load_shipped_test()[0]
    pixels = fashion_mnist.to_pixels(images[idx], fashion_mnist.pixel_table(model.processing))
    parts = [slice(s, min(s + args.chunk, n)) for s in range(0, n, args.chunk)]
    kw = dict(bank=bank, classes=CLASSES, k=64, top=3, search=args.search)
    context = {
        "base": pairs.parent,
        "model": model,
        "shipped": lambda: images,
        "banks": {"image": bank, "text": bank},
        "args": ap.Namespace(k=64, top=3, search=args.search),
        "defaults": {"want": None, "classes": None, "templates": None},
        "mesh": None,
        "checked": set(),
    }

    def whole() -> int:
        return sum(p.found for p in counterfactuals(model, pixels, want=wants, **kw).pairs)

    def chunked() -> int:
        return sum(sum(p.found for p in counterfactuals(model, pixels[c], want=wants[c], **kw).pairs) for c in parts)

    def explained() -> int:
        return sum(r["status"] == "found" for shard in shards for r in explain_shard(shard, context))

    def job(tag: str) -> int:
        out = scratch / f"explain-tput-{tag}"
        shutil.rmtree(out, ignore_errors=True)
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = cli.main(explain_argv(bank_dir, pairs, out, args))
        if rc not in (0, 1):
            raise SystemExit(f"explain failed (exit {rc}):\n{err.getvalue()[-2000:]}")
        found = manifest_records(out)[1].get("found", 0)
        shutil.rmtree(out, ignore_errors=True)
        return found

    methods = {
        "in-memory counterfactuals(), all pairs at once (the baseline)": whole,
        f"in-memory counterfactuals(), in chunks of {args.chunk}": chunked,
        "explain_shard() per chunk: lines parsed, no files": explained,
        "streaming job, cli.main explain in-process (warm)": lambda: job("warm"),
    }
    t = time.perf_counter()
    for fn in methods.values():
        fn()
    _log(f"warm-up (compilation) of every method: {time.perf_counter() - t:.1f} s")
    runs: dict[str, list[tuple[float, int]]] = {name: [] for name in methods}
    names = list(methods)
    for r in range(args.repeats):  # interleaved, the order rotating, so that the machine's load falls on all
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t = time.perf_counter()
            found = methods[name]()
            runs[name].append((time.perf_counter() - t, found))
        _log(f"  repeat {r + 1}: " + ", ".join(f"{runs[m][-1][0]:.2f}" for m in names) + " s")
    med = {name: statistics.median(x[0] for x in v) for name, v in runs.items()}

    # the same job in a new process: start-up, model load and compilation included
    out = scratch / "explain-tput-cold"
    shutil.rmtree(out, ignore_errors=True)
    cold = run_child(
        [sys.executable, "-m", "jaxplain", *explain_argv(bank_dir, pairs, out, args)], scratch / "explain-cold.log"
    )
    shutil.rmtree(out, ignore_errors=True)

    # what the job does per line before the engine
    sample = pairs.read_bytes().split(b"\n")[: args.chunk]
    t = time.perf_counter()
    for raw in sample:
        json.loads(raw.decode("utf-8"))
    t_json = (time.perf_counter() - t) / len(sample)
    t = time.perf_counter()
    for i in idx[: len(sample)]:
        model.processing.pixels(images[i], "x")
    t_pix = (time.perf_counter() - t) / len(sample)
    t = time.perf_counter()
    fashion_mnist.to_pixels(images[idx[: len(sample)]], fashion_mnist.pixel_table(model.processing))
    t_table = (time.perf_counter() - t) / len(sample)

    # turning results into JSON records: PairResult.to_record (what explain_lines does per pair) against a
    # shallow conversion of the same fields (checked equal)
    res = counterfactuals(model, pixels[parts[0]], want=wants[parts[0]], **kw).pairs
    t = time.perf_counter()
    records = [p.to_record() for p in res]
    t_record = (time.perf_counter() - t) / len(res)
    t = time.perf_counter()
    shallow = [_shallow_record(p) for p in res]
    t_shallow = (time.perf_counter() - t) / len(res)
    if shallow != records:
        raise SystemExit("the shallow record differs from PairResult.to_record")

    base = med[names[0]]
    _log(f"\n{f'run (median of {args.repeats})':62} {'seconds':>8} {'pairs/s':>8} {'found':>7} {'× baseline':>11}")
    for name in names:
        _log(f"{name:62} {med[name]:8.2f} {n / med[name]:8.0f} {runs[name][0][1]:7,} {base / med[name]:11.3f}")
    _log(
        f"{'streaming job, python -m jaxplain explain, new process':62} {cold['wall']:8.2f} {n / cold['wall']:8.0f} "
        f"{'':7} {base / cold['wall']:11.3f}"
    )
    _log("(runs, s: " + "; ".join(", ".join(f"{x[0]:.2f}" for x in runs[m]) for m in names) + ")")
    _log(
        f"the job's fixed costs, measured apart: model load {t_model:.2f} s, bank load {t_bank:.2f} s, line scan "
        f"{t_scan:.3f} s; per line: json.loads {t_json * 1e6:.0f} µs, processing.pixels of a 28×28 image "
        f"{t_pix * 1e6:.0f} µs (fashion_mnist.to_pixels over the batch: {t_table * 1e6:.1f} µs per image); "
        f"per pair, baseline {base / n * 1e6:.0f} µs"
    )
    _log(
        f"per pair: PairResult.to_record {t_record * 1e6:.0f} µs (dataclasses.asdict, twice over the counterfactuals); "
        f"the same dict built field by field {t_shallow * 1e6:.1f} µs"
    )
    _log(
        f"reproduce: python benchmarks/bench_scale.py --sections throughput --tput-pairs {n} --chunk {args.chunk} "
        f"--search {args.search} --repeats {args.repeats}"
    )


# --- section 3: bank build ---------------------------------------------------------------------------------


def _make_jpeg(job: tuple[int, int, int, int, str]) -> int:
    """Write one camera-size JPEG: a shipped image upscaled onto a drawn gradient background, with noise."""
    from PIL import Image, ImageDraw, ImageFilter

    i, seed, w, h, out = job
    cache = _make_jpeg.__dict__
    if "images" not in cache:  # once per worker: the images and a noise field that each JPEG crops at random
        cache["images"] = fashion_mnist.load_shipped_test()[0]
        cache["noise"] = np.random.default_rng(seed).normal(0, 5, (h + 64, w + 64, 3)).astype(np.int16)
    rng = np.random.default_rng([seed, i])
    small = rng.uniform(40, 220, (2, 2, 3)).astype(np.uint8)  # a gradient: 2×2 colours upscaled
    bg = Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(bg)
    for _ in range(int(rng.integers(4, 12))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(20, w // 2)), y0 + int(rng.integers(20, h // 2))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        shape = rng.integers(0, 3)
        if shape == 0:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        elif shape == 1:
            draw.rectangle((x0, y0, x1, y1), outline=colour, width=int(rng.integers(2, 12)))
        else:
            draw.line((x0, y0, x1, y1), fill=colour, width=int(rng.integers(2, 16)))
    bg = bg.filter(ImageFilter.GaussianBlur(1.2))
    side = int(min(w, h) * rng.uniform(0.6, 0.9))
    images = cache["images"]
    item = Image.fromarray(images[int(rng.integers(0, len(images)))]).resize((side, side), Image.Resampling.BICUBIC)
    tint = Image.new("RGB", (side, side), tuple(int(v) for v in rng.integers(120, 256, 3)))
    bg.paste(tint, (int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))), item)
    dy, dx = int(rng.integers(0, 64)), int(rng.integers(0, 64))
    a = np.asarray(bg, np.int16) + cache["noise"][dy : dy + h, dx : dx + w]
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=90)
    return os.path.getsize(out)


def make_jpegs(directory: Path, n: int, size: tuple[int, int], seed: int) -> list[Path]:
    """``n`` JPEGs in ``directory`` (made once, by a pool of processes; reused while complete)."""
    marker = directory / ".complete"
    files = [directory / f"img-{i:06d}.jpg" for i in range(n)]
    if marker.is_file() and marker.read_text().strip() == str(n):
        return files
    directory.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    jobs = [(i, seed, size[0], size[1], str(f)) for i, f in enumerate(files)]
    with multiprocessing.get_context("spawn").Pool(os.cpu_count() or 1) as pool:
        sizes = pool.map(_make_jpeg, jobs, chunksize=16)
    marker.write_text(f"{n}\n")
    _log(
        f"made {n:,} JPEGs {size[0]}×{size[1]} quality 90 in {directory} ({np.mean(sizes) / 1024:.0f} KiB each on "
        f"average) in {time.perf_counter() - t:.0f} s"
    )
    return files


def b32_checkpoint(directory: Path) -> Path:
    """A random-weight CLIP with ViT-B/32's sizes (224 px, patch 32, width 768, 12 layers; text 512 × 12)."""
    import jax

    from jaxplain.data.images import ImageProcessing
    from jaxplain.data.tokenize import bundled_bpe_dir
    from jaxplain.models import clip
    from jaxplain.models.config import ClipConfig, TextConfig, VisionConfig
    from jaxplain.models.loading import save_checkpoint

    if (directory / "model.safetensors").is_file() and (directory / ".complete").is_file():
        return directory
    config = ClipConfig(
        text=TextConfig(hidden_size=512, intermediate_size=2048, num_layers=12, num_heads=8),
        vision=VisionConfig(image_size=224, patch_size=32, hidden_size=768, intermediate_size=3072, num_layers=12),
        projection_dim=512,
    )
    params = clip.init_params(jax.random.key(0), config)
    save_checkpoint(directory, config, params, bundled_bpe_dir(), ImageProcessing.for_image_size(224))
    (directory / ".complete").write_text("ok\n")
    return directory


def bank_build_once(model_ref: str, files: list[Path], out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    err = io.StringIO()
    t = time.perf_counter()
    with contextlib.redirect_stderr(err):
        rc = cli.main(["bank", "build", "--model", model_ref, "--images", *map(str, files), "--out", str(out)])
    took = time.perf_counter() - t
    if rc != 0:
        raise SystemExit(f"bank build failed (exit {rc}):\n{err.getvalue()[-2000:]}")
    shutil.rmtree(out, ignore_errors=True)
    return took


def _drafted(path: Path, proc):
    """The image at ``path`` decoded at the smallest JPEG scale that still covers ``proc``'s resize target."""
    from PIL import Image

    with Image.open(path) as im:
        w, h = im.size
        if proc.do_resize and proc.shortest_edge:
            k = proc.shortest_edge / min(w, h)
            target = (int(w * k), int(h * k))
        else:
            target = (proc.width or w, proc.height or h) if proc.do_resize else (w, h)
        im.draft("RGB", target)
        return im.convert("RGB")


def bank_case(label: str, model_ref: str, files: list[Path], scratch: Path, repeats: int) -> dict:
    from jaxplain.models.bundle import IMAGE_BATCH

    model = jaxplain.load(model_ref)
    n = len(files)
    out = scratch / f"bank-build-{label}"
    # warm-up: the batch shapes of the timed build (full batches and the last one)
    bank_build_once(model_ref, files[: IMAGE_BATCH + n % IMAGE_BATCH], out)
    # decode + preprocess, one thread (what the build's loop does per image), kept for the encode baseline
    t = time.perf_counter()
    pixels = np.stack([model.processing.pixels(f, str(f)) for f in files])
    t_dec = (time.perf_counter() - t) / n
    t_pool, workers = float("nan"), 0
    with contextlib.suppress(ImportError):  # the decode pool is recent: absent in older trees
        from jaxplain.data.decode import decode_parallel, default_workers

        workers = default_workers()
        t = time.perf_counter()
        for _ in decode_parallel(files, lambda f: model.processing.pixels(f, str(f)), prefetch=2 * IMAGE_BATCH):
            pass
        t_pool = (time.perf_counter() - t) / n
    # JPEG decoding at a reduced DCT scale (PIL's draft), no smaller than the resize target: what decoding
    # could cost; not what the build does (the pixels then differ slightly from CLIPImageProcessor's)
    t = time.perf_counter()
    for f in files:
        model.processing.pixels(_drafted(f, model.processing), str(f))
    t_draft = (time.perf_counter() - t) / n
    model.encode_pixels(pixels[: IMAGE_BATCH + n % IMAGE_BATCH], IMAGE_BATCH)  # compile
    t = time.perf_counter()
    jaxplain.load(model_ref)  # what each build pays first (files warm in the page cache, as for the build)
    t_load = time.perf_counter() - t
    builds, encodes = [], []
    for r in range(repeats):
        for which in "be" if r % 2 == 0 else "eb":
            if which == "b":
                builds.append(bank_build_once(model_ref, files, out))
            else:
                t = time.perf_counter()
                model.encode_pixels(pixels, IMAGE_BATCH)
                encodes.append(time.perf_counter() - t)
    t_build, t_encode = statistics.median(builds), statistics.median(encodes)
    t_enc = t_encode / n
    res = {
        "label": label,
        "n": n,
        "build": t_build,
        "encode": t_encode,
        "ratio": t_encode / t_build,
        "t_dec": t_dec,
        "t_pool": t_pool,
        "t_enc": t_enc,
        "t_draft": t_draft,
        "load": t_load,
        "ratio_loaded": t_encode / (t_build - t_load),
        "bound": t_enc / (t_enc + t_dec),
        "bound_pool": t_enc / (t_enc + t_pool),
        "workers": workers,
    }
    _log(f"  {label}: build {t_build:.1f} s, encode-only {t_encode:.1f} s, ratio {res['ratio']:.3f}")
    del pixels
    return res


def section_bank(args, scratch: Path) -> None:
    w, h = args.jpeg_size
    _log(f"\n== bank build: {w}×{h} JPEGs, `jaxplain bank build` vs encode_pixels on pixels in memory ==")
    n_all = max(args.jpegs if "shipped" in args.models else 0, args.b32_jpegs if "b32" in args.models else 0)
    files = make_jpegs(scratch / f"jpegs-{w}x{h}-s{args.seed}", n_all, (w, h), args.seed)
    rows = []
    if "shipped" in args.models:
        rows.append(bank_case("fashion-clip", SHIPPED, files[: args.jpegs], scratch, args.bank_repeats))
    if "b32" in args.models:
        ckpt = b32_checkpoint(scratch / "clip-b32-random")
        rows.append(bank_case("ViT-B/32 random", str(ckpt), files[: args.b32_jpegs], scratch, args.bank_repeats))
    _log(
        f"\n{'model':16} {'images':>7} {'build s':>8} {'img/s':>7} {'encode s':>9} {'img/s':>7} {'ratio':>6} "
        f"{'load s':>7} {'ratio-load':>10} {'dec ms':>7} {'pool ms':>8} {'draft ms':>9} {'enc ms':>7} {'bound':>6} "
        f"{'bound pool':>10} {'bound draft':>11}"
    )
    for r in rows:
        _log(
            f"{r['label']:16} {r['n']:>7,} {r['build']:>8.1f} {r['n'] / r['build']:>7.1f} {r['encode']:>9.1f} "
            f"{r['n'] / r['encode']:>7.1f} {r['ratio']:>6.3f} {r['load']:>7.2f} {r['ratio_loaded']:>10.3f} "
            f"{r['t_dec'] * 1e3:>7.2f} {r['t_pool'] * 1e3:>8.2f} {r['t_draft'] * 1e3:>9.2f} {r['t_enc'] * 1e3:>7.2f} "
            f"{r['bound']:>6.3f} {r['bound_pool']:>10.3f} {r['t_enc'] / (r['t_enc'] + r['t_draft']):>11.3f}"
        )
    _log(
        "ratio = encode-only s / build s (goal ≥ 0.9); load s = the model load each build does first; ratio-load = "
        "the ratio with the build's time less that load; dec ms = decode + resize + normalise per image in one "
        "thread (what the build does per image); pool ms = the same per image through data.decode.decode_parallel "
        f"({rows[0]['workers'] if rows else 0} threads); draft ms = the same with PIL's JPEG draft (DCT-scaled "
        "decoding, not reference-equal pixels); enc ms = encode_pixels per image; bound = t_enc / (t_enc + t_dec), "
        "the best ratio while decoding shares the CPU with the encoder and is not hidden behind it; bound pool, "
        "bound draft = the same with those decode times"
    )
    _log(
        f"reproduce: python benchmarks/bench_scale.py --sections bank --models {','.join(args.models)} "
        f"--jpegs {args.jpegs} --b32-jpegs {args.b32_jpegs} --jpeg-size {w}x{h} --bank-repeats {args.bank_repeats}"
    )


# --- main --------------------------------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    return [int(float(x)) for x in text.split(",") if x]


def _size(text: str) -> tuple[int, int]:
    w, h = text.lower().split("x")
    return int(w), int(h)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--sections", default="memory,throughput,bank", help="comma-separated: memory, throughput, bank")
    ap.add_argument("--sizes", type=_ints, default=[10_000, 100_000, 1_000_000], help="pairs per memory run")
    ap.add_argument("--max-run-s", type=float, default=900, help="skip a memory size estimated to run longer (0: none)")
    ap.add_argument("--chunk", type=int, default=4096, help="explain --chunk (default 4096, explain's own)")
    ap.add_argument("--search", default="index", choices=["index", "auto", "exhaustive"])
    ap.add_argument("--tput-pairs", type=int, default=16_384, help="pairs of the throughput runs")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each throughput method")
    ap.add_argument("--jpegs", type=int, default=5000, help="JPEGs for the shipped model's bank build")
    ap.add_argument("--b32-jpegs", type=int, default=500, help="JPEGs for the ViT-B/32-sized model's bank build")
    ap.add_argument("--jpeg-size", type=_size, default=(1024, 768), help="WxH of the JPEGs (default 1024x768)")
    ap.add_argument("--models", default="shipped,b32", help="bank section: shipped, b32")
    ap.add_argument("--bank-repeats", type=int, default=1, help="timed bank builds (and encodes) per model")
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/jaxplain-bench-scale"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke test of every section, ~2 minutes)")
    args = ap.parse_args()
    if args.quick:
        args.sizes, args.chunk, args.tput_pairs, args.repeats = [2048, 8192], 1024, 2048, 2
        args.jpegs, args.b32_jpegs, args.bank_repeats = 256, 32, 1
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = set(args.sections) - {"memory", "throughput", "bank"} | set(args.models) - {"shipped", "b32"}
    if unknown:
        ap.error(f"unknown section or model: {', '.join(sorted(unknown))}")
    scratch = args.scratch
    scratch.mkdir(parents=True, exist_ok=True)
    _log(f"jaxplain {getattr(jaxplain, '__version__', '?')}; {os.cpu_count()} CPU cores; scratch {scratch}")
    start = time.perf_counter()
    bank = shipped_bank(scratch) if {"memory", "throughput"} & set(args.sections) else None
    if "memory" in args.sections:
        section_memory(args, scratch, bank)
    if "throughput" in args.sections:
        section_throughput(args, scratch, bank)
    if "bank" in args.sections:
        section_bank(args, scratch)
    _log(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()

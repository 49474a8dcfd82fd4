"""``jaxplain evaluate``: attribution methods × explanation-quality metrics on a set of pairs, as a table.

By default it explains the shipped model's zero-shot prediction (``prob:predicted``) on the first
``--limit`` Fashion-MNIST test images with every image method, and writes ``evaluation.md``,
``evaluation.csv`` and ``evaluation.json`` (the table, the protocol, the skipped items) to ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from jaxplain.assets import DEFAULT_MODEL
from jaxplain.commands.classify import _class_names
from jaxplain.commands.common import (
    EXIT_BAD_ITEMS,
    EXIT_OK,
    bad_items,
    fraction,
    non_negative_int,
    output,
    positive_float,
    positive_int,
    read_lines,
    report,
)
from jaxplain.errors import InputError


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from jaxplain.evaluation import DEFAULT_METRICS, Protocol

    d = Protocol()
    p = subparsers.add_parser(
        "evaluate",
        help="measure how good attribution methods are (deletion/insertion AUC, stability, ...)",
        description=(__doc__ or "").split("\n\n", 1)[1],
    )
    p.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"checkpoint directory, shipped name or hub id ({DEFAULT_MODEL})"
    )
    p.add_argument("--images", nargs="+", metavar="DIR_OR_FILE", help="images (default: the shipped test set)")
    p.add_argument("--texts", metavar="FILE", help="texts, one per line: one per image, or a single one for all")
    p.add_argument("--classes", help="comma-separated class names (default with the shipped images: theirs)")
    p.add_argument("--classes-file", help="a text file of class names, one per line")
    p.add_argument("--side", choices=["image", "text"], default="image", help="explain the images or the texts")
    p.add_argument("--target", help="what is explained (default: prob:predicted with classes, else similarity)")
    p.add_argument("--methods", help="comma-separated methods (default: all methods of the side)")
    p.add_argument("--metrics", help=f"comma-separated metrics (default: {','.join(DEFAULT_METRICS)})")
    p.add_argument("--limit", type=positive_int, default=100, help="use the first N images (default 100)")
    p.add_argument("--steps", type=positive_int, default=d.steps, help=f"deletion/insertion steps (default {d.steps})")
    p.add_argument("--fraction", type=fraction, default=d.fraction, help="share of features perturbed (default 1)")
    p.add_argument(
        "--samples", type=positive_int, default=d.samples, help=f"max-sensitivity samples (default {d.samples})"
    )
    p.add_argument(
        "--radius", type=positive_float, default=d.radius, help=f"max-sensitivity noise (default {d.radius})"
    )
    p.add_argument("--seed", type=non_negative_int, default=d.seed, help="seed for noise and randomised weights")
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="METHOD.KEY=VALUE",
        help="a method option, e.g. rise.masks=500 or ig.steps=32 (repeatable)",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=run)
    return p


def _value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_options(items: list[str]) -> dict[str, dict[str, Any]]:
    """``["rise.masks=500", "ig.steps=32"]`` → ``{"rise": {"masks": 500}, "ig": {"steps": 32}}``."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        head, eq, value = item.partition("=")
        method, dot, key = head.partition(".")
        if not (eq and dot and method and key):
            raise InputError(f"--option {item!r}: use METHOD.KEY=VALUE, e.g. rise.masks=500")
        out.setdefault(method.strip(), {})[key.strip()] = _value(value.strip())
    return out


def _images(args: argparse.Namespace, model):
    """Pixels of the good images, their names, and the skipped ones."""
    from jaxplain.commands.common import image_files
    from jaxplain.data import fashion_mnist

    if args.images:
        files = image_files(args.images)
        if not files:
            raise InputError(f"no image files found in {' '.join(args.images)}")
        items, names = files, [str(f) for f in files]
    else:
        images, _ = fashion_mnist.load_shipped_test()
        items, names = list(images), [f"fashion-mnist-test:{i}" for i in range(len(images))]
    items, names = items[: args.limit], names[: args.limit]
    rows, kept, errors = [], [], []
    for i, (item, name) in enumerate(zip(items, names)):
        try:
            rows.append(model.processing.pixels(item, name))
            kept.append(i)
        except InputError as e:
            errors.append({"item": name, "error": str(e).removeprefix(f"{name}: ")})
    return (np.stack(rows) if rows else None), kept, names, errors


def run(args: argparse.Namespace) -> int:
    with output(args.out, kind="directory") as out:
        return _run(args, out)


def _run(args: argparse.Namespace, out: Path) -> int:
    from jaxplain.attribution.api import methods_for
    from jaxplain.data import fashion_mnist
    from jaxplain.evaluation import DEFAULT_METRICS, Protocol, evaluate
    from jaxplain.models import load

    classes = _class_names(args)
    if classes is None and not args.images:
        classes = list(fashion_mnist.CLASS_NAMES)
    target = args.target or ("prob:predicted" if classes else "similarity")
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else methods_for(args.side)
    metric_names = [m.strip() for m in args.metrics.split(",")] if args.metrics else list(DEFAULT_METRICS)
    protocol = Protocol(args.steps, args.fraction, args.samples, args.radius, args.seed)
    options = parse_options(args.option)
    unknown = sorted(set(options) - set(methods))
    if unknown:
        raise InputError(f"--option for {unknown[0]!r}, which is not among the methods evaluated")

    from jaxplain.outputs import write_json, write_text

    model = load(args.model)
    pixels, kept, names, errors = _images(args, model)
    report(errors)
    if pixels is None:
        raise InputError(f"no image could be read ({bad_items(errors)}); nothing evaluated")
    texts = None
    if args.texts:
        lines = [t for t in read_lines(args.texts, "texts") if t.strip()]
        if len(lines) not in (1, len(names)):
            raise InputError(f"{args.texts}: {len(lines)} texts for {len(names)} images; give one per image or one")
        texts = lines if len(lines) == 1 else [lines[i] for i in kept]
    start = time.perf_counter()
    table = evaluate(
        model,
        pixels,
        texts,
        methods=methods,
        metric_names=metric_names,
        target=target,
        side=args.side,
        classes=classes,
        protocol=protocol,
        method_options=options,
    )
    seconds = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "evaluation.md", table.markdown())
    write_text(out / "evaluation.csv", table.csv())
    summary = {
        "model": model.name,
        "fingerprint": model.fingerprint,
        "pairs": len(kept),
        "side": args.side,
        "target": target,
        "classes": classes,
        "protocol": vars(protocol),
        "method_options": options,
        "rows": {m: {k: (None if np.isnan(v) else v) for k, v in r.items()} for m, r in table.rows.items()},
        "directions": {m: ("higher" if _info(m).higher_is_better else "lower") for m in metric_names},
        "bad_items": errors,
        "seconds": round(seconds, 2),
    }
    write_json(out / "evaluation.json", summary)
    print(table.markdown(), file=sys.stderr)
    print(f"evaluated {len(methods)} methods on {len(kept)} pairs in {seconds:.1f} s; table: {out}", file=sys.stderr)
    return EXIT_BAD_ITEMS if errors else EXIT_OK


def _info(name: str):
    from jaxplain.metrics import METRICS

    return METRICS[name]

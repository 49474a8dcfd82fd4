"""``jaxplain demo``: explain real decisions of a model and write ``results.jsonl`` and ``report.html``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from jaxplain.assets import DEFAULT_MODEL
from jaxplain.commands.common import (
    EXIT_BAD_ITEMS,
    EXIT_OK,
    bad_items,
    non_negative_int,
    output,
    positive_int,
    read_lines,
    report,
)
from jaxplain.errors import InputError


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "demo",
        help="explain a sample of real decisions end to end: results.jsonl and a self-contained report.html",
        description=(
            "Zero-shot classify a sample of images and, for each, find the nearest real images for which the model "
            "would choose another class (and its second choice), and the nearest captions that would lower or raise "
            "its score, each verified by the model. With no options it runs the model shipped with jaxplain on its "
            "10,000 Fashion-MNIST test images and 3,000 captions, offline. Writes OUT/results.jsonl and "
            "OUT/report.html (images embedded)."
        ),
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"checkpoint directory, shipped name or hub id ({DEFAULT_MODEL})"
    )
    p.add_argument("--images", metavar="DIR", help="your own images (the sample is drawn from them; they are the bank)")
    p.add_argument("--classes", help="comma-separated class names (needed with --images)")
    p.add_argument("--texts", metavar="FILE", help="your own caption bank, one caption per line")
    p.add_argument("--bank", metavar="BANK", help="a saved image bank (`jaxplain bank build`) to retrieve from")
    p.add_argument("--n", type=positive_int, default=8, help="images to explain (default 8)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="which images are drawn (default 0)")
    p.set_defaults(func=run)
    return p


def _data(args):
    from jaxplain.commands.common import image_files
    from jaxplain.demo import DemoData, shipped_data

    data = shipped_data()
    if args.images:
        if not args.classes:
            raise InputError("with --images, name the classes with --classes a,b,c")
        files = image_files([args.images])
        if not files:
            raise InputError(f"no image files found in {args.images}")
        data = DemoData(images=files, names=[f.name for f in files], classes=[], captions=data.captions)
    if args.classes:
        classes = [c.strip() for c in args.classes.split(",") if c.strip()]
        if len(classes) < 2:
            raise InputError("--classes needs at least two class names")
        if data.labels is not None and len(classes) != len(data.classes):
            raise InputError(f"the shipped test set has {len(data.classes)} classes; {len(classes)} names were given")
        data = DemoData(data.images, data.names, classes, data.captions, data.labels)
    if args.texts:
        captions = [t for t in read_lines(args.texts, "captions") if t.strip()]
        if not captions:
            raise InputError(f"{args.texts}: no captions")
        data = DemoData(data.images, data.names, data.classes, captions, data.labels)
    return data


def run(args: argparse.Namespace) -> int:
    with output(args.out, kind="directory") as out:
        return _run(args, out)


def _run(args: argparse.Namespace, out: Path) -> int:
    from jaxplain.demo import run_demo
    from jaxplain.models import load
    from jaxplain.outputs import atomic_writer, json_line, write_text
    from jaxplain.viz.report import render

    data = _data(args)
    model = load(args.model)
    errors: list[dict] = []
    if args.images:
        data, errors = _readable(data, model)
        report(errors)
        if not data.images:
            raise InputError(f"no image could be read ({bad_items(errors)}); nothing written")
    bank = None
    if args.bank:
        from jaxplain.counterfactual import Bank

        bank = Bank.load(args.bank, model=model)
        if bank.kind != "image":
            raise InputError(f"--bank {args.bank}: a {bank.kind} bank; the demo retrieves images")
    records, summary, image_bank, _ = run_demo(model, data, n=args.n, seed=args.seed, image_bank=bank)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_writer(out / "results.jsonl", "w") as f:
        for r in records:
            f.write(json_line(r, where=f"{out / 'results.jsonl'}: {r['name']}") + "\n")

    def image_of(ref):
        if not isinstance(ref, dict):
            return data.images[ref]
        if bank is None:  # the bank was built from data.images, row for row
            return data.images[ref["bank_row"]]
        item = Path(image_bank.items[ref["bank_row"]])  # a saved bank: show the file if it is there
        return item if item.is_file() else None

    write_text(out / "report.html", render(records, summary, image_of))
    found = summary["found"]
    print(
        f"explained {summary['images']} images in {summary['seconds']:.1f} s: another class found for "
        f"{found['other-class']:.0%}, the runner-up for {found['runner-up']:.0%}; "
        f"report: {out / 'report.html'}",
        file=sys.stderr,
    )
    return EXIT_BAD_ITEMS if errors else EXIT_OK


def _readable(data, model):
    """The demo's data less the images that cannot be read (each decoded once here, in a bounded size), and
    those images as ``{"item", "error"}`` records."""
    from jaxplain.demo import DemoData

    keep, errors = [], []
    for f, name in zip(data.images, data.names):
        try:
            model.processing.pixels(f, str(f))
            keep.append((f, name))
        except InputError as e:
            errors.append({"item": str(f), "error": str(e).removeprefix(f"{f}: ")})
    images, names = [f for f, _ in keep], [n for _, n in keep]
    return DemoData(images, names, data.classes, data.captions, data.labels), errors

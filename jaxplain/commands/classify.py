"""``jaxplain classify``: zero-shot classification of images, with accuracy where labels are known."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from jaxplain.assets import DEFAULT_MODEL
from jaxplain.commands.common import (
    EXIT_BAD_ITEMS,
    EXIT_OK,
    bad_items,
    encode_stream,
    output,
    positive_int,
    read_lines,
    report,
)
from jaxplain.errors import InputError


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "classify",
        help="zero-shot classify images; accuracy on the shipped Fashion-MNIST test set by default",
        description=(
            "Zero-shot classify images with a prompt ensemble (every class name in every template, averaged "
            "per class). Without --images it classifies the 10,000 Fashion-MNIST test images shipped with "
            "jaxplain and reports the accuracy. Writes one JSON line per image to OUT (prediction, "
            "confidence, top-3, and the label where known) and a summary to OUT with .summary.json."
        ),
    )
    p.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"checkpoint directory, shipped name or hub id ({DEFAULT_MODEL})"
    )
    p.add_argument("--images", nargs="+", metavar="DIR_OR_FILE", help="image files and/or directories")
    p.add_argument("--classes", help="comma-separated class names (default: the Fashion-MNIST classes)")
    p.add_argument("--classes-file", help="a text file of class names, one per line")
    p.add_argument("--templates-file", help="prompt templates with {} for the class name, one per line")
    p.add_argument("--limit", type=positive_int, help="classify only the first N images")
    p.add_argument("--out", required=True, help="output .jsonl file")
    p.add_argument("--batch-size", type=positive_int, default=256, help="images per forward pass (default 256)")
    p.set_defaults(func=run)
    return p


def _class_names(args: argparse.Namespace) -> list[str] | None:
    if args.classes and args.classes_file:
        raise InputError("give --classes or --classes-file, not both")
    if args.classes:
        return [c.strip() for c in args.classes.split(",")]
    if args.classes_file:
        return [c.strip() for c in read_lines(args.classes_file, "class names") if c.strip()]
    return None


def _inputs(args: argparse.Namespace):
    """Items, their names, their labels (or None), and the class names."""
    from jaxplain.commands.common import image_files
    from jaxplain.data import fashion_mnist

    classes = _class_names(args)
    if args.images:
        if classes is None:
            raise InputError("with --images, name the classes with --classes or --classes-file")
        files = image_files(args.images)
        if not files:
            raise InputError(f"no image files found in {' '.join(args.images)}")
        items, names, labels = files, [str(f) for f in files], None
    else:
        images, labels = fashion_mnist.load_shipped_test()
        items, names = list(images), [f"fashion-mnist-test:{i}" for i in range(len(images))]
        if classes is None:
            classes = list(fashion_mnist.CLASS_NAMES)
        elif len(classes) != len(fashion_mnist.CLASS_NAMES):
            raise InputError(f"the Fashion-MNIST test set has 10 classes; {len(classes)} class names were given")
    if args.limit is not None:
        items, names = items[: args.limit], names[: args.limit]
        labels = None if labels is None else labels[: args.limit]
    return items, names, labels, classes


def run(args: argparse.Namespace) -> int:
    from jaxplain.outputs import remove_stale

    with output(args.out, suffixes=[".jsonl"]) as out:
        remove_stale(out.with_suffix(".summary.json"))
        return _run(args, out)


def _run(args: argparse.Namespace, out: Path) -> int:
    from jaxplain.models import load
    from jaxplain.outputs import atomic_writer, json_line, write_json
    from jaxplain.zeroshot import DEFAULT_TEMPLATES, class_embeddings, probabilities

    items, names, labels, classes = _inputs(args)
    templates = read_lines(args.templates_file, "templates") if args.templates_file else list(DEFAULT_TEMPLATES)
    templates = [t for t in templates if t.strip()]
    model = load(args.model)
    start = time.perf_counter()
    cls_emb = class_embeddings(model, classes, templates)
    emb, kept, errors = encode_stream(
        len(items),
        lambda i: model.processing.pixels(items[i], names[i]),
        lambda i: names[i],
        lambda x: model.encode_pixels(x, args.batch_size),
        args.batch_size,
        "classifying",
        "img",
    )
    report(errors)
    if emb is None:
        raise InputError(f"no image could be classified ({bad_items(errors)}); nothing written")
    probs = probabilities(model, emb, cls_emb)
    seconds = time.perf_counter() - start
    pred = probs.argmax(1)
    with atomic_writer(out, "w") as f:
        for row, i in enumerate(kept):
            top = np.argsort(-probs[row])[:3]
            rec = {
                "item": names[i],
                "prediction": classes[pred[row]],
                "confidence": round(float(probs[row, pred[row]]), 6),
                "top": [[classes[c], round(float(probs[row, c]), 6)] for c in top],
            }
            if labels is not None:
                rec["label"] = classes[labels[i]]
                rec["correct"] = bool(pred[row] == labels[i])
            f.write(json_line(rec, where=names[i]) + "\n")
    summary = {
        "model": model.name,
        "fingerprint": model.fingerprint,
        "classes": classes,
        "templates": templates,
        "images": len(kept),
        "bad_items": errors,
        "seconds": round(seconds, 2),
    }
    if labels is not None:
        y = np.asarray(labels)[kept]
        summary["accuracy"] = float(np.mean(pred == y))
        summary["per_class_accuracy"] = {
            c: float(np.mean(pred[y == k] == k)) for k, c in enumerate(classes) if (y == k).any()
        }
    write_json(out.with_suffix(".summary.json"), summary)
    print(_summary_text(summary, out), file=sys.stderr)
    return EXIT_BAD_ITEMS if errors else EXIT_OK


def _summary_text(summary: dict, out: Path) -> str:
    lines = [f"classified {summary['images']} images in {summary['seconds']:.1f} s with {summary['model']}"]
    if "accuracy" in summary:
        lines.append(f"zero-shot accuracy: {summary['accuracy']:.2%}")
        lines += [f"  {c:14} {a:.2%}" for c, a in summary["per_class_accuracy"].items()]
    lines.append(f"predictions: {out}; summary: {out.with_suffix('.summary.json')}")
    return "\n".join(lines)

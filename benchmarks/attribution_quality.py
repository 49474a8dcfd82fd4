"""How faithful and how stable is each attribution method on the shipped model? A table.

Explains the shipped model's zero-shot prediction (``prob:predicted``, the probability of the class it
predicts, against the ten Fashion-MNIST class names) for the first ``--n`` test images with every image
method, and measures deletion and insertion AUC (patches replaced by the mean colour in attribution
order, 16 steps) and max-sensitivity (``--samples`` noisy copies per image). The ``random`` row is the
baseline: a method that does not beat it on deletion AUC is said to, in the last line.

    python benchmarks/attribution_quality.py [--n 500] [--samples 4] [--out table.md]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import jaxplain
from jaxplain.attribution import methods_for
from jaxplain.data import fashion_mnist
from jaxplain.evaluation import Protocol, evaluate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=500, help="test images (default 500)")
    ap.add_argument("--samples", type=int, default=4, help="max-sensitivity samples per image (default 4)")
    ap.add_argument("--radius", type=float, default=0.05, help="max-sensitivity noise radius (default 0.05)")
    ap.add_argument("--steps", type=int, default=16, help="deletion/insertion steps (default 16)")
    ap.add_argument("--rise-masks", type=int, default=250, help="RISE masks per image (default 250)")
    ap.add_argument("--methods", help="comma-separated subset of the image methods")
    ap.add_argument("--out", help="also write the table to this Markdown file")
    args = ap.parse_args()

    model = jaxplain.load("fashion-clip")
    images, _ = fashion_mnist.load_shipped_test()
    pixels = model.preprocess(list(images[: args.n]))
    others = [m for m in methods_for("image") if m != "random"]
    methods = args.methods.split(",") if args.methods else ["random", *others]
    start = time.perf_counter()
    table = evaluate(
        model,
        pixels,
        methods=methods,
        metric_names=["deletion_auc", "insertion_auc", "max_sensitivity", "completeness_error"],
        target="prob:predicted",
        classes=list(fashion_mnist.CLASS_NAMES),
        protocol=Protocol(steps=args.steps, samples=args.samples, radius=args.radius),
        method_options={"rise": {"masks": args.rise_masks}},
    )
    seconds = time.perf_counter() - start
    text = table.markdown()
    if "random" in table.rows:
        rnd = table.rows["random"]["deletion_auc"]
        losers = [m for m in methods if m != "random" and not table.rows[m]["deletion_auc"] < rnd]
        text += (
            "\nEvery method beats the random baseline on deletion AUC.\n"
            if not losers
            else f"\nNot better than random on deletion AUC: {', '.join(losers)}.\n"
        )
    text += f"\n({np.round(seconds / 60, 1)} min on this machine; RISE with {args.rise_masks} masks.)\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()

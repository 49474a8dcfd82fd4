"""The target solver on large batches: one call over every pair against blocks of ``CPU_SOLVE_BLOCK`` pairs.

Pairs are the shipped test images wanting another class, against the shipped model's class embeddings; the
two ways run interleaved, ``--repeats`` times each after compiling, and the medians are compared, with the
largest difference between their targets (the shapes differ, so float32 rounding may too).

    python benchmarks/bench_solver.py [--pairs 10000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import jaxplain
from jaxplain.counterfactual import solver
from jaxplain.data import fashion_mnist
from jaxplain.objectives import CLASS_LOSES, Goal
from jaxplain.zeroshot import class_embeddings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    model = jaxplain.load("fashion-clip")
    images, _ = fashion_mnist.load_shipped_test()
    images = [images[i % len(images)] for i in range(args.pairs)]
    u0 = model.encode_images(images)
    classes = class_embeddings(model, list(fashion_mnist.CLASS_NAMES), jaxplain.DEFAULT_TEMPLATES)
    goal = Goal.stack([(CLASS_LOSES, int(c), 0.0) for c in np.argmax(u0 @ classes.T, axis=1)])  # another class
    block = solver.CPU_SOLVE_BLOCK

    def run(size: int):
        solver.CPU_SOLVE_BLOCK = size
        t = time.perf_counter()
        out = solver.solve_targets(u0, goal, u0, classes, model.logit_scale)
        return time.perf_counter() - t, out

    sizes = {"one call": args.pairs, f"blocks of {block}": block}
    for size in sizes.values():  # compile
        run(size)
    times = {name: [] for name in sizes}
    for _ in range(args.repeats):
        for name, size in sizes.items():
            dt, out = run(size)
            times[name].append(dt)
            if name == "one call":
                whole = out
            else:
                diff = float(np.abs(out.embedding - whole.embedding).max())
    solver.CPU_SOLVE_BLOCK = block
    (one, blocked) = (float(np.median(times[name])) for name in sizes)
    print(f"{args.pairs} pairs × {len(solver.SolverConfig().depths)} depths, median of {args.repeats}:")
    print(f"  one call {one:.3f} s, blocks of {block} pairs {blocked:.3f} s: {one / blocked:.1f}× faster in blocks")
    print(f"  largest difference between their target embeddings: {diff:.1e}")


if __name__ == "__main__":
    main()

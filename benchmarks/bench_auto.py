"""Where ``search="auto"`` should stop verifying every item: the oracle against targets + retrieval +
verification, end to end, by bank size and pair count, on the default JAX backend.

Banks are the shipped model's 10,000 real test-image embeddings, each joined by perturbed copies (as in
``bench_counterfactuals.py``), indexed by ScaNN; pairs are test images wanting another class. Each cell runs
both searches once to compile, then ``--repeats`` times each, and prints the medians, their ratio and the
found counts. On a 2-core CPU the oracle loses from a few million pair-items on (``EXHAUSTIVE_BUDGET``); on an
H100 it kept up to 1e9 (``ACCELERATOR_BUDGET``).

    python benchmarks/bench_auto.py [--sizes 100000,1000000] [--pairs 100,1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

import jaxplain
from jaxplain.counterfactual import Bank, build_bank, build_index, counterfactuals
from jaxplain.data import fashion_mnist

CLASSES = list(fashion_mnist.CLASS_NAMES)


def synthetic_bank(real: np.ndarray, labels: np.ndarray, n: int, rng) -> np.ndarray:
    """The real embeddings, then perturbed copies of them (noise of half their within-class spread) up to ``n``."""
    centres = np.stack([real[labels == c].mean(0) for c in range(len(CLASSES))])
    spread = float(np.sqrt(np.mean(np.sum((real - centres[labels]) ** 2, axis=1)) / real.shape[1]))
    emb = np.repeat(real, -(-n // len(real)), axis=0)[:n]
    emb[len(real) :] += rng.normal(0, spread / 2, size=(max(0, n - len(real)), real.shape[1])).astype(np.float32)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="100000,1000000", help="bank sizes, comma-separated")
    ap.add_argument("--pairs", default="100,1000", help="pair counts, comma-separated")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    model = jaxplain.load("fashion-clip")
    images, labels = fashion_mnist.load_shipped_test()
    real, _ = build_bank(model, images=images, labels=labels, progress=False)
    rng = np.random.default_rng(0)
    print(f"backend {jax.default_backend()}; medians of {args.repeats} runs, end to end (seconds)")
    head = ("bank", "pairs", "pair-items", "oracle", "index", "oracle/index")
    print("{:>10} {:>6} {:>12} {:>9} {:>8} {:>14}".format(*head))
    for n in (int(s) for s in args.sizes.split(",")):
        emb = synthetic_bank(real.embeddings, labels, n, rng)
        items = [f"synthetic:{i}" for i in range(n)]
        bank = Bank("image", items, items, emb, model.name, model.fingerprint, build_index(emb, "scann"), labels=None)
        for p in (int(s) for s in args.pairs.split(",")):
            queries = [images[i] for i in rng.choice(len(images), size=p, replace=False)]
            kw = dict(want="other-class", bank=bank, classes=CLASSES)
            times, found = {}, {}
            for search in ("exhaustive", "index"):
                counterfactuals(model, queries, search=search, **kw)  # compile
                runs = []
                for _ in range(args.repeats):
                    t = time.perf_counter()
                    res = counterfactuals(model, queries, search=search, **kw)
                    runs.append(time.perf_counter() - t)
                times[search], found[search] = float(np.median(runs)), sum(r.found for r in res.pairs)
            print(
                f"{n:>10,} {p:>6} {n * p:>12.1e} {times['exhaustive']:>9.3f} {times['index']:>8.3f} "
                f"{times['exhaustive'] / times['index']:>14.2f}   (found: oracle {found['exhaustive']}, "
                f"index {found['index']})",
                flush=True,
            )


if __name__ == "__main__":
    main()

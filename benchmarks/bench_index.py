"""Nearest-neighbour search: the exact index (jitted matmul + top-k) vs ScaNN, side by side in one run.

For each bank size, a synthetic bank of clustered unit vectors (``size / 200`` centres, Gaussian spread;
uniform random vectors have no near neighbours worth finding) and a set of fresh queries from the same
distribution. Both indexes are built (timed), warmed up on the same query count (compilation is not
timed), then timed over the queries at each k, median of the repeats. Reported: build seconds,
queries/s of each, the ratio ScaNN / exact (above 1.0: ScaNN is faster), and ScaNN's recall@k against
the exact index, on the queries and on midpoints of two bank items (as counterfactual targets lie
between clusters). ``build_index("auto")`` switches to ScaNN at the size where the ratio passes 1.

    python benchmarks/bench_index.py [--size 100000 ...] [--dim 128] [--queries 1000] [--k 10 100]
    python benchmarks/bench_index.py --size 1000000          # a million-item bank (several minutes)
    python benchmarks/bench_index.py --size 2048 4096 8192 16384 32768 65536 --k 10   # the crossover
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from jaxplain.counterfactual.index import AUTO_SCANN_MIN_SIZE, ExactIndex, ScannIndex

GEN_BLOCK = 65536


def clustered_unit_vectors(n: int, dim: int, centres: np.ndarray, spread: float, rng) -> np.ndarray:
    """``[n, dim]`` float32 unit vectors: a random centre plus Gaussian noise of norm ≈ ``spread``, normalised.

    Generated in blocks so that a million-row bank needs no float64 temporaries.
    """
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, GEN_BLOCK):
        m = min(GEN_BLOCK, n - start)
        x = centres[rng.integers(0, len(centres), m)]
        x = x + rng.standard_normal((m, dim), dtype=np.float32) * np.float32(spread / np.sqrt(dim))
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of ``|found ∩ truth| / k`` for ids ``[Q, k]``."""
    k = truth.shape[1]
    hits = (found[:, :, None] == truth[:, None, :]).any(axis=2).sum(axis=1)
    return float(hits.mean() / k)


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median seconds over ``repeats`` calls, and the last result."""
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def run_size(n: int, args: argparse.Namespace) -> None:
    rng = np.random.default_rng(args.seed)
    centres = rng.standard_normal((max(1, n // 200), args.dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    bank = clustered_unit_vectors(n, args.dim, centres, args.spread, rng)
    queries = clustered_unit_vectors(args.queries, args.dim, centres, args.spread, rng)
    # counterfactual targets move from one item towards another: midpoints of two random bank items
    between = bank[rng.integers(0, n, args.queries)] + bank[rng.integers(0, n, args.queries)]
    between /= np.linalg.norm(between, axis=1, keepdims=True)

    t = time.perf_counter()
    exact = ExactIndex(bank)
    exact_build = time.perf_counter() - t
    t = time.perf_counter()
    scann = ScannIndex.build(bank)
    scann_build = time.perf_counter() - t
    print(
        f"\nbank {n:,} × {args.dim}, {len(centres):,} centres, {args.queries:,} queries; build: exact "
        f"{exact_build:.2f} s, ScaNN {scann_build:.2f} s ({scann.params})",
        flush=True,
    )
    print(f"{'k':>5} {'exact q/s':>12} {'ScaNN q/s':>12} {'ScaNN/exact':>12} {'recall@k':>9} {'(between)':>9}")
    for k in args.k:
        exact.search(queries, k), scann.search(queries, k)  # warm-up: compilation, allocation
        te, (truth, _) = timed(lambda k=k: exact.search(queries, k), args.repeats)
        ts, (found, _) = timed(lambda k=k: scann.search(queries, k), args.repeats)
        between_recall = recall(scann.search(between, k)[0], exact.search(between, k)[0])
        print(
            f"{truth.shape[1]:>5} {len(queries) / te:>12,.0f} {len(queries) / ts:>12,.0f} {te / ts:>12.2f} "
            f"{recall(found, truth):>9.4f} {between_recall:>9.4f}",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, nargs="+", default=[100_000], help="bank sizes (default 100000)")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--k", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--spread", type=float, default=0.75, help="noise norm around each centre (centres have norm 1)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(f"build_index('auto') takes ScaNN from {AUTO_SCANN_MIN_SIZE:,} items")
    for n in args.size:
        run_size(n, args)


if __name__ == "__main__":
    main()

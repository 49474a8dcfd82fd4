"""A bank split into row shards with one ScaNN index each, against one index over the whole bank.

For each bank it compares, in one run:

* ``whole``: one ScaNN index (:meth:`ScannParams.for_size`), searching ``l`` of its ``L`` leaves;
* ``S×total``: ``S`` shards (as below) searching ``max(1, round(l / S))`` leaves each: the whole's total of
  leaves, fewer items scored;
* ``S×work``: ``S`` consecutive row shards, each with its own index (``L_s = round(√n_s)`` leaves: the
  for_size rule, with a tree even below ``SCANN_TREE_MIN_SIZE``), each searching the same *share* of its
  leaves as the whole does, ``l_s = max(1, round(l · L_s / L))``: the items scored with the quantised codes,
  ``Σ l_s · n_s / L_s``, are then those of the whole index (EQUAL WORK). Each shard re-orders its own
  ``max(100, 2k)`` candidates exactly, so re-ordering costs ``S``× the whole's (printed);
* ``S×leaves``: each shard searching as many leaves as the whole (``l``; ``S``× the work);
* ``whole rR``: the whole index re-ordering ``R = S · max(100, 2k)`` candidates, as many as ``S`` shards do
  together (a search-time setting: same searcher), so that ``S×work`` against it is equal work in both stages;
* ``S×recall``: each shard's leaves from :func:`calibrate_leaves` for the recall@k that the whole index
  reaches on the calibration sample of the whole bank (EQUAL RECALL), each shard's recall@k of its own top-k;
* ``S×recall/S``: the same target for each shard's recall of its own top ``⌈k · n_s / N⌉`` among the ``k``
  it returns (``RecallTarget(share=True)``): its part of the merged answer when rows are in random order.

It prints recall@k against exact search of the whole bank, and, where the bank holds the shipped model's
embeddings, found-rate and median proximity ratio against the oracle (``search="exhaustive"``) through
``counterfactuals(..., search="index")`` with the sharded index in the bank. The banks:

(a) synthetic: ``--synthetic`` clustered unit vectors × ``--dim`` (200 centres); queries are fresh points of
    the clusters (as ``benchmarks/bench_index.py``) and the calibration sample's kind (another seed). The
    shipped model's embeddings are 128-d, so this bank cannot go through the engine;
(b) the shipped model's 10,000 real Fashion-MNIST test images, pairs and oracle as
    ``benchmarks/bench_counterfactuals.py``; recall also on the solver's real targets for the pairs;
(c) ``--big`` embeddings: the 10,000 real ones each joined by perturbed copies (as
    ``bench_counterfactuals.py``'s big bank), through the engine as (b).

It also prints how well the calibration sample predicts the leaves that the real targets need.

    python benchmarks/bench_shards.py [--pairs 1000] [--k 64] [--shards 2 4 8] [--synthetic 60000] [--big 60000]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import time

import numpy as np

import jaxplain
from jaxplain.counterfactual import Bank, build_bank, counterfactuals
from jaxplain.counterfactual.engine import build_problem
from jaxplain.counterfactual.index import SCANN_TREE_MIN_SIZE, ExactIndex, ScannIndex, ScannParams
from jaxplain.counterfactual.shards import (
    ShardedIndex,
    calibrate_leaves,
    calibration_queries,
    recall_at_k,
    shard_bounds,
    shard_top,
    with_leaves,
)
from jaxplain.counterfactual.solver import SolverConfig, solve_targets
from jaxplain.data import fashion_mnist
from jaxplain.objectives import Want

CLASSES = list(fashion_mnist.CLASS_NAMES)
WANTS = ("other-class", "runner-up")


def clustered_unit_vectors(n: int, centres: np.ndarray, spread: float, rng) -> np.ndarray:
    x = centres[rng.integers(0, len(centres), n)]
    x = x + rng.standard_normal(x.shape, dtype=np.float32) * np.float32(spread / np.sqrt(centres.shape[1]))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def shard_params(n: int) -> ScannParams:
    """The for_size rule, with a tree also below SCANN_TREE_MIN_SIZE (so that small shards are compared too)."""
    if n >= SCANN_TREE_MIN_SIZE:
        return ScannParams.for_size(n)
    leaves = max(2, round(math.sqrt(n)))
    return ScannParams(leaves, math.ceil(math.sqrt(leaves)), n, min(n, 100))


@dataclasses.dataclass
class Config:
    name: str
    index: ScannIndex | ShardedIndex
    calibrated: str = ""  # the calibration's recall per shard, for the table


def leaves_of(index) -> list[int]:
    shards = index.indexes if isinstance(index, ShardedIndex) else [index]
    return [ix.params.num_leaves_to_search for ix in shards]


def work(index, k: int) -> tuple[int, float, int]:
    """(leaves searched, items scored with the quantised codes (expected: leaves × mean leaf size), re-ordered)."""
    shards = index.indexes if isinstance(index, ShardedIndex) else [index]
    leaves = sum(ix.params.num_leaves_to_search for ix in shards)
    scored = sum(ix.params.num_leaves_to_search * ix.size / ix.params.num_leaves for ix in shards)
    reorder = sum(min(ix.size, max(ix.params.reorder, 2 * k)) for ix in shards)
    return leaves, scored, reorder


def configurations(emb: np.ndarray, shard_counts, k: int, seed: int) -> tuple[list[Config], float]:
    """The whole index and, per shard count, equal work / equal leaves / equal recall; and the target recall."""
    t = time.perf_counter()
    whole = ScannIndex.build(emb)
    t_whole = time.perf_counter() - t
    # the whole index's recall on the calibration sample is the target of the equal-recall shards
    sample = calibration_queries(emb, seed=seed)
    target = recall_at_k(whole.search(sample, k)[0], ExactIndex(emb).search(sample, k)[0])
    configs = [Config("whole", whole)]
    leaves, searched = whole.params.num_leaves, whole.params.num_leaves_to_search
    built = f"built whole in {t_whole:.1f} s"
    for s in shard_counts:
        bounds = shard_bounds(len(emb), s)
        t = time.perf_counter()
        shards = [ScannIndex.build(emb[a:b], shard_params(b - a)) for a, b in itertools.pairwise(bounds)]
        built += f", {s} shards in {time.perf_counter() - t:.1f} s"
        same_share = [with_leaves(ix, max(1, round(searched * ix.params.num_leaves / leaves))) for ix in shards]
        same_leaves = [with_leaves(ix, min(searched, ix.params.num_leaves)) for ix in shards]
        cals = [
            calibrate_leaves(ix, emb[a:b], k, target, seed=seed + 1 + i)
            for i, (ix, a, b) in enumerate(zip(shards, bounds[:-1], bounds[1:]))
        ]
        calibrated = [with_leaves(ix, c.leaves) for ix, c in zip(shards, cals)]
        share_cals = [
            calibrate_leaves(ix, emb[a:b], k, target, seed=seed + 1 + i, top=shard_top(k, b - a, len(emb)))
            for i, (ix, a, b) in enumerate(zip(shards, bounds[:-1], bounds[1:]))
        ]
        share_calibrated = [with_leaves(ix, c.leaves) for ix, c in zip(shards, share_cals)]
        same_total = [with_leaves(ix, max(1, round(searched / s))) for ix in shards]
        reorder = dataclasses.replace(whole.params, reorder=s * max(whole.params.reorder, 2 * k))
        configs += [
            Config(f"{s}×total", ShardedIndex(same_total, bounds[:-1])),
            Config(f"{s}×work", ShardedIndex(same_share, bounds[:-1])),
            Config(f"{s}×leaves", ShardedIndex(same_leaves, bounds[:-1])),
            Config(f"{s}×recall", ShardedIndex(calibrated, bounds[:-1]), " ".join(f"{c.recall:.3f}" for c in cals)),
            Config(
                f"{s}×recall/S",
                ShardedIndex(share_calibrated, bounds[:-1]),
                " ".join(f"{c.recall:.3f}" for c in share_cals),
            ),
            Config(f"whole r{reorder.reorder}", ScannIndex(whole.searcher, whole.size, whole.dim, reorder)),
        ]
    print(f"  {built}; calibration target (whole index, calibration sample, recall@{k}): {target:.4f}", flush=True)
    return configs, target


def print_recalls(configs: list[Config], query_sets: dict[str, np.ndarray], emb: np.ndarray, ks) -> dict:
    exact = ExactIndex(emb)
    truths = {(name, k): exact.search(q, k)[0] for name, q in query_sets.items() for k in ks}
    cols = [f"{name} @{k}" for name in query_sets for k in ks]
    print(f"  {'config':11} {'leaves/shard':>12} {'total':>6} {'scored':>7} {'reorder':>7} " + " ".join(cols))
    out = {}
    for c in configs:
        leaves, scored, reorder = work(c.index, max(ks))
        per = leaves_of(c.index)
        per_s = str(per[0]) if len(set(per)) == 1 else f"{min(per)}–{max(per)}"
        rs = [recall_at_k(c.index.search(q, k)[0], truths[name, k]) for name, q in query_sets.items() for k in ks]
        out[c.name] = rs
        print(
            f"  {c.name:11} {per_s:>12} {leaves:>6} {scored / len(emb):>7.2%} {reorder:>7} "
            + " ".join(f"{r:>{len(col)}.4f}" for r, col in zip(rs, cols))
            + (f"   (calibrated per shard: {c.calibrated})" if c.calibrated else ""),
            flush=True,
        )
    return out


def synthetic(args) -> None:
    rng = np.random.default_rng(args.seed)
    centres = rng.standard_normal((200, args.dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    emb = clustered_unit_vectors(args.synthetic, centres, 0.75, rng)
    print(f"\n(a) synthetic bank {len(emb):,} × {args.dim}, 200 centres")
    configs, _ = configurations(emb, args.shards, args.k, args.seed)
    queries = {
        "fresh": clustered_unit_vectors(1000, centres, 0.75, rng),
        "sample": calibration_queries(emb, seed=args.seed + 100),
    }
    print_recalls(configs, queries, emb, sorted({10, args.k}))


def real_targets(model, images, pairs, bank) -> np.ndarray:
    """The solver's target embeddings for the pairs and both wanted outcomes, as the engine queries them."""
    out = []
    for want in WANTS:
        wants = [Want.parse(want)] * len(pairs)
        prob = build_problem(
            model, "image", [images[i] for i in pairs], None, wants, bank, CLASSES, jaxplain.DEFAULT_TEMPLATES
        )
        tg = solve_targets(prob.u0, prob.goal, prob.anchor, prob.classes, prob.scale, SolverConfig())
        out.append(np.asarray(tg.embedding, np.float32).reshape(-1, bank.dim))
    return np.concatenate(out)


def engine_table(model, images, pairs, bank: Bank, configs: list[Config], k: int) -> None:
    queries = [images[i] for i in pairs]
    kw = dict(classes=CLASSES, k=k, top=3)
    oracle = {w: counterfactuals(model, queries, want=w, bank=bank, search="exhaustive", **kw) for w in WANTS}
    head = "".join(f" {w + ' found':>17} {'rate':>6} {'prox.':>6}" for w in WANTS)
    print(f"  {'config':11}{head} {'retrieve s':>10}   (prox.: median proximity ratio to the oracle)")
    for c in configs:
        b = dataclasses.replace(bank, index=c.index)
        row, t_retrieve = "", 0.0
        for w in WANTS:
            res = counterfactuals(model, queries, want=w, bank=b, search="index", **kw)
            t_retrieve += res.timings["retrieve"]
            found = np.array([r.found for r in res.pairs])
            ofound = np.array([o.found for o in oracle[w].pairs])
            both = found & ofound
            d_p = np.median([r.counterfactuals[0].distance for r, f in zip(res.pairs, both) if f])
            d_o = np.median([o.counterfactuals[0].distance for o, f in zip(oracle[w].pairs, both) if f])
            row += f" {f'{found.sum()}/{ofound.sum()}':>17} {found.sum() / ofound.sum():6.4f} {d_p / d_o:6.4f}"
        print(f"  {c.name:11}{row} {t_retrieve:10.2f}", flush=True)


def prediction(configs: list[Config], emb: np.ndarray, targets: np.ndarray, k: int, seed: int) -> None:
    """Leaves chosen on the calibration sample vs on the real targets, for several recall targets."""
    print(f"  leaves chosen for recall@{k} ≥ r: calibration sample → real targets (their recall at the sample's)")
    for c in configs:
        if not (c.name == "whole" or c.name.endswith("×recall")):
            continue
        first = c.index.indexes[0] if isinstance(c.index, ShardedIndex) else c.index
        rows = emb[: first.size]
        cells = []
        for r in (0.9, 0.95, 0.97, 0.99):
            s = calibrate_leaves(first, rows, k, r, seed=seed)
            t = calibrate_leaves(first, rows, k, r, queries=targets)
            real_at = recall_at_k(
                with_leaves(first, s.leaves).search(targets, k)[0], ExactIndex(rows).search(targets, k)[0]
            )
            cells.append(
                f"{r}: {s.leaves}{'' if s.reached else '!'} → {t.leaves}{'' if t.reached else '!'} ({real_at:.3f})"
            )
        print(f"    {c.name + (' shard 0' if c.name != 'whole' else ''):16} " + ";  ".join(cells), flush=True)


def model_bank(model, images, pairs, bank: Bank | np.ndarray, label: str, args) -> None:
    """Tables (b) and (c): ``bank`` is the real bank, or embeddings ``[N, E]`` by the model."""
    emb = bank.embeddings if isinstance(bank, Bank) else bank
    print(f"\n{label}: {len(emb):,} × {emb.shape[1]}, {len(pairs)} pairs wanting {' / '.join(WANTS)}")
    configs, _ = configurations(emb, args.shards, args.k, args.seed)
    if not isinstance(bank, Bank):
        items = [f"synthetic:{i}" for i in range(len(emb))]
        bank = Bank("image", items, items, emb, model.name, model.fingerprint, configs[0].index)
    targets = real_targets(model, images, pairs, bank)
    queries = {"targets": targets, "sample": calibration_queries(emb, seed=args.seed + 100)}
    print_recalls(configs, queries, emb, [args.k])
    engine_table(model, images, pairs, bank, configs, args.k)
    prediction(configs, emb, targets, args.k, args.seed + 200)


def perturbed_copies(real: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """``[n, E]``: each real embedding followed by perturbed copies of it (Gaussian noise of half the bank's
    within-class spread, renormalised), as ``bench_counterfactuals.py``'s big bank."""
    rng = np.random.default_rng(0)
    centres = np.stack([real[labels == c].mean(0) for c in np.unique(labels)])
    spread = float(np.sqrt(np.mean(np.sum((real - centres[labels]) ** 2, axis=1)) / real.shape[1]))
    reps = -(-n // len(real))
    emb = np.repeat(real, reps, axis=0)[:n]
    copy = np.arange(n) % reps != 0
    emb[copy] += rng.normal(0, spread / 2, (int(copy.sum()), real.shape[1])).astype(np.float32)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="fashion-clip")
    ap.add_argument("--pairs", type=int, default=1000)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--shards", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--synthetic", type=int, default=60_000, help="rows of the synthetic bank (0: skip it)")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--big", type=int, default=60_000, help="rows of the real + perturbed bank (0: skip it)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    start = time.perf_counter()
    if args.synthetic:
        synthetic(args)
    model = jaxplain.load(args.model)
    images, labels = fashion_mnist.load_shipped_test()
    bank, _ = build_bank(model, images=images, labels=labels, progress=False)
    pairs = np.random.default_rng(args.seed).choice(len(images), size=args.pairs, replace=False)
    model_bank(model, images, pairs, bank, "(b) the shipped model's real bank", args)
    if args.big:
        big = perturbed_copies(bank.embeddings, bank.labels, args.big)
        model_bank(model, images, pairs, big, "(c) real + perturbed bank", args)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()

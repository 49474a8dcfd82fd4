"""Counterfactual quality and speed on the shipped model and its bank of real images.

Quality (``--quality``): the bank is the 10,000 shipped Fashion-MNIST test images; the pairs are
``--pairs`` of those images (random, fixed seed) with a wanted class change (``other-class`` and
``runner-up``). For each outcome it runs the pipeline (targets + ScaNN retrieval + verification) and
the oracle (every bank item verified) and prints:

* validity: the share of returned counterfactuals that are valid when re-checked independently
  (the bank image re-encoded from its pixels and zero-shot classified afresh);
* found-rate: pairs with a counterfactual from the pipeline ÷ pairs with one from the oracle;
* median proximity ``‖x − u0‖`` of the nearest counterfactual, pipeline and oracle, over the pairs
  both found, and their ratio.

Speed (``--speed``), ratios measured side by side in one run:

* the batched pipeline on ``--pairs`` pairs vs the same work one pair at a time in a Python loop,
  with the class embeddings the model keeps between calls, and without them (each call encoding the
  class prompts again, as a call that stands alone does);
* the pipeline vs the oracle on a bank of ``--big`` embeddings (default 1,000,000): the 10,000 real
  embeddings each joined by perturbed copies (Gaussian noise of the bank's own within-class spread,
  renormalised), indexed by ScaNN (build time printed apart); the median of ``--repeats`` interleaved
  runs of each, end to end and without the encoding of the query images that both do first; with
  ScaNN's recall@k against exact search for the pipeline's own queries.

    python benchmarks/bench_counterfactuals.py --quality --speed [--pairs 1000] [--big 1000000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import jaxplain
from jaxplain.counterfactual import Bank, ExactIndex, build_bank, build_index, counterfactuals
from jaxplain.counterfactual.engine import build_problem
from jaxplain.counterfactual.solver import SolverConfig, solve_targets
from jaxplain.data import fashion_mnist
from jaxplain.objectives import Want

CLASSES = list(fashion_mnist.CLASS_NAMES)


def setup(model_name: str):
    model = jaxplain.load(model_name)
    images, labels = fashion_mnist.load_shipped_test()
    t = time.perf_counter()
    bank, _ = build_bank(model, images=images, labels=labels, progress=False)
    took = time.perf_counter() - t
    print(f"model {model_name}; bank: {len(bank)} real images, {bank.index.backend} index, built in {took:.1f} s")
    return model, images, labels, bank


def quality(model, images, bank, pairs: np.ndarray, k: int) -> None:
    queries = [images[i] for i in pairs]
    print(f"\nquality over {len(pairs)} pairs (k={k}):")
    head = ("want", "validity", "found", "oracle", "found-rate", "median prox.", "oracle", "ratio")
    print("{:12} {:>9} {:>7} {:>7} {:>10} {:>12} {:>8} {:>6}".format(*head))
    for want in ("other-class", "runner-up"):
        for search in ("index", "exhaustive"):  # compile first: the timings are of the work
            counterfactuals(model, queries, want=want, bank=bank, classes=CLASSES, k=k, top=3, search=search)
        t = time.perf_counter()
        res = counterfactuals(model, queries, want=want, bank=bank, classes=CLASSES, k=k, top=3, search="index")
        t_pipe = time.perf_counter() - t
        t = time.perf_counter()
        orc = counterfactuals(model, queries, want=want, bank=bank, classes=CLASSES, top=3, search="exhaustive")
        t_orc = time.perf_counter() - t
        # independent re-check of every returned item: re-encode its image, classify afresh
        rows = [(i, c) for i, r in enumerate(res.pairs) for c in r.counterfactuals]
        p_items = jaxplain.classify(model, [images[c.bank_row] for _, c in rows], CLASSES)
        p_orig = jaxplain.classify(model, queries, CLASSES)
        ok = []
        for (i, _), p in zip(rows, p_items):
            if want == "other-class":
                ok.append(p.argmax() != p_orig[i].argmax())
            else:
                ok.append(p.argmax() == np.argsort(-p_orig[i])[1])
        found = np.array([r.found for r in res.pairs])
        ofound = np.array([o.found for o in orc.pairs])
        both = found & ofound
        d_p = np.median([r.counterfactuals[0].distance for r, b in zip(res.pairs, both) if b])
        d_o = np.median([o.counterfactuals[0].distance for o, b in zip(orc.pairs, both) if b])
        print(
            f"{want:12} {np.mean(ok):9.2%} {found.sum():7d} {ofound.sum():7d} {found.sum() / ofound.sum():10.4f} "
            f"{d_p:12.4f} {d_o:8.4f} {d_p / d_o:6.4f}   (pipeline {t_pipe:.1f} s, oracle {t_orc:.1f} s; "
            f"{len(ok)} items re-checked; pipeline-only finds: {(found & ~ofound).sum()})"
        )


def speed(model, images, bank, pairs: np.ndarray, k: int, big: int, repeats: int) -> None:
    queries = [images[i] for i in pairs]
    n = len(pairs)
    # search="index" throughout: "auto" would verify every bank item for a single pair (and so time
    # another method one pair at a time), and verifies exhaustively the pairs retrieval leaves unanswered
    kw = dict(bank=bank, classes=CLASSES, k=k, top=3, search="index")
    counterfactuals(model, queries, want="other-class", **kw)  # compile both shapes first
    counterfactuals(model, queries[:1], want="other-class", **kw)
    batch_runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        counterfactuals(model, queries, want="other-class", **kw)
        batch_runs.append(time.perf_counter() - t)
    t_batch = float(np.median(batch_runs))
    t = time.perf_counter()
    for q in queries:
        counterfactuals(model, [q], want="other-class", **kw)
    t_loop = time.perf_counter() - t
    # The model keeps the class embeddings it made (Model.text_cache), so the loop above encodes the
    # class prompts once. Emptying that cache before each call times the loop as each call stood alone.
    t = time.perf_counter()
    for q in queries:
        model.text_cache.clear()
        counterfactuals(model, [q], want="other-class", **kw)
    t_alone = time.perf_counter() - t
    print(f"\nspeed, {n} pairs on the {len(bank)}-image bank:")
    print(f"  batched {t_batch:.2f} s (median of {repeats}), one pair at a time {t_loop:.2f} s: ", end="")
    print(f"{t_loop / t_batch:.1f}× faster batched")
    print(
        f"  one pair at a time, each call also encoding the class prompts (no cache): {t_alone:.2f} s: "
        f"{t_alone / t_batch:.1f}×"
    )

    # A big bank: real embeddings and perturbed copies of them.
    rng = np.random.default_rng(0)
    real = bank.embeddings
    labels = bank.labels
    centres = np.stack([real[labels == c].mean(0) for c in range(10)])
    spread = float(np.sqrt(np.mean(np.sum((real - centres[labels]) ** 2, axis=1)) / real.shape[1]))
    reps = -(-big // len(real))
    emb = np.repeat(real, reps, axis=0)[:big]
    emb[len(real) :] += rng.normal(0, spread / 2, size=(big - len(real), real.shape[1])).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    t = time.perf_counter()
    index = build_index(emb, "scann")
    t_build = time.perf_counter() - t
    items = [f"synthetic:{i}" for i in range(big)]
    big_bank = Bank("image", items, items, emb, model.name, model.fingerprint, index, labels=None)
    kw = dict(bank=big_bank, classes=CLASSES, k=k, top=3)
    counterfactuals(model, queries, want="other-class", search="index", **kw)  # compile
    counterfactuals(model, queries, want="other-class", search="exhaustive", **kw)
    runs = {"index": [], "exhaustive": []}
    for _ in range(repeats):  # interleaved, so that a change in the machine's load falls on both
        for search, out in runs.items():
            t = time.perf_counter()
            res = counterfactuals(model, queries, want="other-class", search=search, **kw)
            out.append((time.perf_counter() - t, res))
    (t_pipe, res), (t_orc, orc) = (sorted(runs[s], key=lambda r: r[0])[len(runs[s]) // 2] for s in runs)
    found = np.array([r.found for r in res.pairs])
    ofound = np.array([o.found for o in orc.pairs])
    stages = ", ".join(f"{k} {v:.2f}" for k, v in res.timings.items() if k != "total")
    print(f"\n{big:,}-embedding bank (ScaNN built in {t_build:.1f} s, not counted; median of {repeats} runs each):")
    print(f"  pipeline {t_pipe:.2f} s ({stages}), oracle {t_orc:.2f} s: {t_orc / t_pipe:.1f}× faster")
    # both encode the same 1,000 images first; without that shared step, the searches alone:
    s_pipe, s_orc = t_pipe - res.timings["encode"], t_orc - orc.timings["encode"]
    print(f"  the searches alone (after encoding): pipeline {s_pipe:.2f} s, oracle {s_orc:.2f} s: ", end="")
    print(f"{s_orc / s_pipe:.1f}×")
    print(f"  found-rate vs oracle {found.sum()}/{ofound.sum()} = {found.sum() / max(1, ofound.sum()):.4f}")

    # recall of ScaNN on the pipeline's own queries (the targets)
    wants = [Want.parse("other-class")] * min(n, 200)
    prob = build_problem(
        model, "image", queries[: len(wants)], None, wants, big_bank, CLASSES, jaxplain.DEFAULT_TEMPLATES
    )
    tg = solve_targets(prob.u0, prob.goal, prob.anchor, prob.classes, prob.scale, SolverConfig())
    q = np.asarray(tg.embedding, np.float32).reshape(-1, emb.shape[1])
    got, _ = index.search(q, k)
    want_ids, _ = ExactIndex(emb).search(q, k)
    recall = np.mean([len(set(a) & set(b)) / k for a, b in zip(got, want_ids)])
    print(f"  ScaNN recall@{k} on {len(q)} pipeline queries: {recall:.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="fashion-clip")
    ap.add_argument("--pairs", type=int, default=1000)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--big", type=int, default=1_000_000)
    ap.add_argument("--quality", action="store_true")
    ap.add_argument("--speed", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of the batched pipeline (and of the oracle)")
    args = ap.parse_args()
    if not (args.quality or args.speed):
        args.quality = args.speed = True
    model, images, _, bank = setup(args.model)
    pairs = np.random.default_rng(args.seed).choice(len(images), size=args.pairs, replace=False)
    if args.quality:
        quality(model, images, bank, pairs, args.k)
    if args.speed:
        speed(model, images, bank, pairs, args.k, args.big, args.repeats)


if __name__ == "__main__":
    main()

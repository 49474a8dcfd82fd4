"""The counterfactual pipeline against the oracle on a shipped model, per outcome kind.

For 150 Fashion-MNIST test images (the 10,000 shipped ones are the bank, ScaNN-indexed) and the shipped
caption bank, each outcome is searched twice — through the index (targets, retrieval, verification) and by
the oracle (every bank item verified) — and the table says how many pairs each answered, how many of the
index's answers hold when re-scored from scratch (``jaxplain.classify`` or the embeddings), and the median
ratio of the index's nearest answer's distance to the oracle's (1.000 is the oracle's own).

    python benchmarks/engine_vs_oracle.py [--model fashion-siglip|fashion-clip] [--n 150]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import jaxplain
from jaxplain.counterfactual import build_bank, counterfactuals
from jaxplain.data import captions, fashion_mnist

CLASSES = list(fashion_mnist.CLASS_NAMES)
PROB_WANTS = ["prob:Sneaker>=0.9", "prob:Bag>=0.5", "prob:Coat>=0.7", "prob:Shirt<=0.01", "prob:Dress>=0.8"]


def _holds(model, images, want, pair_text_emb, bank_emb, rows):
    """Whether each returned bank row reaches ``want``, re-scored from scratch."""
    if want in ("other-class", "runner-up") or want.startswith("prob:"):
        return jaxplain.classify(model, [images[r] for r in rows], CLASSES)
    return bank_emb[rows] @ pair_text_emb


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fashion-siglip")
    parser.add_argument("--n", type=int, default=150)
    args = parser.parse_args(argv)
    model = jaxplain.load(args.model)
    images, labels = fashion_mnist.load_shipped_test()
    bank, _ = build_bank(model, images=images, labels=labels, progress=False)
    text_bank, _ = build_bank(model, texts=captions.read_bank(), progress=False)
    rows = np.random.default_rng(0).choice(len(images), args.n, replace=False)
    queries = [images[i] for i in rows]
    p0 = jaxplain.classify(model, queries, CLASSES)
    u0 = model.encode_images(queries)
    own = [f"a photo of a {CLASSES[labels[i]].lower()}." for i in rows]
    texts = [f"a photo of a {CLASSES[j % len(CLASSES)].lower()}." for j in range(len(rows))]
    levels = [round(float(np.quantile(text_bank.embeddings @ u0[i], 0.2)), 4) for i in range(len(rows))]
    cases = [
        ("other-class", dict(want="other-class", classes=CLASSES, bank=bank)),
        ("runner-up", dict(want="runner-up", classes=CLASSES, bank=bank)),
        ("prob, 5 classes", dict(want=[PROB_WANTS[j % 5] for j in range(len(rows))], classes=CLASSES, bank=bank)),
        ("top:5 (rank)", dict(want="top:5", bank=bank, texts=texts)),
        ("similarity (text)", dict(want=[f"similarity<={x}" for x in levels], bank=text_bank, side="text", texts=own)),
    ]
    print(f"model {model.name} ({model.family.name}, {model.decision} decision), {len(rows)} pairs, bank {len(bank)}")
    head = f"{'outcome':<20} {'index':>6} {'oracle':>7} {'already':>8} {'valid':>7} {'d/d_oracle':>11} {'time':>7}"
    print(head + "\n" + "-" * len(head))
    cls_emb = jaxplain.class_embeddings(model, CLASSES)
    for name, kw in cases:
        t0 = time.perf_counter()
        res = counterfactuals(model, queries, search="index", top=3, **kw)
        seconds = time.perf_counter() - t0
        orc = counterfactuals(model, queries, search="exhaustive", top=3, **kw)
        valid = total = 0
        for i, r in enumerate(res.pairs):
            if not r.counterfactuals:
                continue
            got = [c.bank_row for c in r.counterfactuals]
            total += len(got)
            if kw["want"] == "other-class":
                valid += int(
                    (jaxplain.classify(model, [images[g] for g in got], CLASSES).argmax(1) != p0[i].argmax()).sum()
                )
            elif kw["want"] == "runner-up":
                second = np.argsort(-p0[i])[1]
                valid += int((jaxplain.classify(model, [images[g] for g in got], CLASSES).argmax(1) == second).sum())
            elif name.startswith("prob"):
                w = kw["want"][i]
                cls, tau = w.removeprefix("prob:").replace("<=", ">=").split(">=")
                u = model.encode_images([images[g] for g in got])
                p = jaxplain.zeroshot.probabilities(model, u, cls_emb)[:, CLASSES.index(cls)]
                valid += int(((p >= float(tau)) if ">=" in w else (p <= float(tau))).sum())
            elif name.startswith("top"):
                v = model.encode_texts([texts[i]])[0]
                order = np.argsort(-(bank.embeddings @ v), kind="stable")[:6]
                valid += sum(g in order for g in got)
            else:
                e = model.encode_texts([c.item for c in r.counterfactuals])
                valid += int((e @ u0[i] <= levels[i] + 1e-6).sum())
        both = [(r, o) for r, o in zip(res.pairs, orc.pairs) if r.found and o.found]
        ratio = np.median([r.counterfactuals[0].distance / o.counterfactuals[0].distance for r, o in both])
        found = sum(r.found for r in res.pairs)
        ofound = sum(o.found for o in orc.pairs)
        already = sum(o.status == "already" for o in orc.pairs)
        print(f"{name:<20} {found:>6} {ofound:>7} {already:>8} {f'{valid}/{total}':>7} {ratio:>11.3f} {seconds:>6.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

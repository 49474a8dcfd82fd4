"""The main job out of the box: explain a sample of real decisions of a model, end to end.

:func:`run_demo` classifies a sample of images zero-shot and, for each, finds image-side
counterfactuals (the nearest real images the model would put in another class, and in its second
choice in particular) and text-side ones (the nearest captions that would lower or raise the image's
score against the prompt of its predicted class). It also attributes the decision to pixels and words
with Integrated Gradients: what drove the predicted class's probability, what made it win over the
runner-up (their logit difference), and which words of the prompt drove the image–text similarity.
Everything is verified by the model; the result is plain records that :mod:`jaxplain.viz.report`
renders.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxplain.attribution import attribute
from jaxplain.counterfactual import Bank, build_bank, counterfactuals
from jaxplain.models.bundle import Model
from jaxplain.zeroshot import DEFAULT_TEMPLATES, class_embeddings, probabilities


@dataclasses.dataclass(frozen=True)
class DemoData:
    """Images to explain (and to retrieve from), their class names, and a caption bank.

    Attributes:
      images: the images (paths or arrays); the sample is drawn from them and, unless an image bank
        is given, they are the bank.
      names: a display name per image.
      classes: the class names of the zero-shot task.
      captions: the caption bank's texts.
      labels: optional true class index per image.
    """

    images: Sequence[Any]
    names: Sequence[str]
    classes: Sequence[str]
    captions: Sequence[str]
    labels: np.ndarray | None = None


def shipped_data() -> DemoData:
    """The 10,000 Fashion-MNIST test images and the caption bank shipped with jaxplain."""
    from jaxplain.data import captions, fashion_mnist

    images, labels = fashion_mnist.load_shipped_test()
    return DemoData(
        images=list(images),
        names=[f"fashion-mnist-test:{i}" for i in range(len(images))],
        classes=list(fashion_mnist.CLASS_NAMES),
        captions=captions.read_bank(),
        labels=labels,
    )


def _with_labels(rec: dict, bank: Bank, classes: Sequence[str]) -> dict:
    for c in rec["counterfactuals"]:
        label = c.get("label")
        c["label_name"] = classes[label] if label is not None and 0 <= label < len(classes) else None
    return rec


IG_STEPS = 64


def _pixel_record(a, j: int) -> dict:
    return {
        "target": a.targets[j],
        "score": float(a.score[j]),
        "baseline_score": float(a.baseline_score[j]),
        "delta": float(a.delta[j]),
        "patches": np.round(a.patches[j], 6).tolist(),
        "pixels": np.round(a.pixels[j], 6).tolist(),
    }


def run_demo(
    model: Model,
    data: DemoData,
    n: int = 8,
    seed: int = 0,
    image_bank: Bank | None = None,
    text_bank: Bank | None = None,
    progress: bool = True,
) -> tuple[list[dict], dict, Bank, Bank]:
    """Explain ``n`` randomly drawn images of ``data`` (fixed ``seed``).

    Probabilities are the model's own decision (:func:`jaxplain.zeroshot.probabilities`): CLIP's softmax
    over the classes, or SigLIP's sigmoid of each class on its own; the summary's ``decision`` says which.

    Returns the per-image records, a summary, and the image and caption banks used.
    """
    start = time.perf_counter()
    if image_bank is None:
        image_bank, _ = build_bank(model, images=data.images, labels=data.labels, progress=progress)
    if text_bank is None:
        text_bank, _ = build_bank(model, texts=list(data.captions), progress=progress)
    rows = np.sort(np.random.default_rng(seed).choice(len(data.images), size=min(n, len(data.images)), replace=False))
    sample = [data.images[i] for i in rows]
    classes = list(data.classes)
    u = model.encode_images(sample)
    probs = probabilities(model, u, class_embeddings(model, classes))
    pred = probs.argmax(1)
    common = dict(bank=image_bank, classes=classes, top=3)
    other = counterfactuals(model, sample, want="other-class", **common)
    runner = counterfactuals(model, sample, want="runner-up", **common)

    # Text side: the prompt of the predicted class, and captions that would move its score.
    texts = [DEFAULT_TEMPLATES[0].format(classes[p]) for p in pred]
    s0 = np.sum(u * model.encode_texts(texts), axis=1)
    caption_sims = u @ text_bank.embeddings.T
    lower = np.round(np.quantile(caption_sims, 0.2, axis=1), 4)
    higher = np.round(s0 + 0.01, 4)
    down = counterfactuals(model, sample, texts, want=[f"similarity<={x}" for x in lower], bank=text_bank, side="text")
    up = counterfactuals(model, sample, texts, want=[f"similarity>={x}" for x in higher], bank=text_bank, side="text")

    # Feature importance: which pixels drove the decision, and which words of the prompt.
    pixels = model.preprocess(sample)
    ig = dict(method="ig", steps=IG_STEPS, classes=classes)
    why = attribute(model, pixels, target="prob:predicted", **ig)
    versus = attribute(model, pixels, target="contrast:predicted vs runner-up", **ig)
    words = attribute(model, pixels, texts, side="text", target="similarity", method="ig", steps=IG_STEPS)

    records = []
    for j, i in enumerate(rows):
        second = int(np.argsort(-probs[j])[1])
        records.append(
            {
                "name": data.names[i],
                "image": int(i),
                "label": classes[data.labels[i]] if data.labels is not None else None,
                "predicted": classes[pred[j]],
                "confidence": float(probs[j, pred[j]]),
                "top": [[classes[c], float(probs[j, c])] for c in np.argsort(-probs[j])[:3]],
                "other_class": _with_labels(other.pairs[j].to_record(), image_bank, classes),
                "runner_up": _with_labels(runner.pairs[j].to_record(), image_bank, classes),
                "runner_up_name": classes[second],
                "text": texts[j],
                "text_similarity": float(s0[j]),
                "lower_level": float(lower[j]),
                "raise_level": float(higher[j]),
                "lower": down.pairs[j].to_record(),
                "raise": up.pairs[j].to_record(),
                "attribution": {
                    "method": f"ig ({IG_STEPS} steps, mean-colour baseline)",
                    "predicted": _pixel_record(why, j),
                    "contrast": _pixel_record(versus, j),
                    "words": [[w, float(x)] for w, x in zip(words.words[j], words.word_scores[j])],
                    "words_delta": float(words.delta[j]),
                },
            }
        )
    nearest = [
        r["other_class"]["counterfactuals"][0]["distance"] for r in records if r["other_class"]["counterfactuals"]
    ]
    summary = {
        "model": model.name,
        "fingerprint": model.fingerprint,
        "decision": model.decision,
        "images": len(records),
        "image_bank": len(image_bank),
        "text_bank": len(text_bank),
        "accuracy": float(np.mean(pred == data.labels[rows])) if data.labels is not None else None,
        "found": {
            "other-class": other.found_rate,
            "runner-up": runner.found_rate,
            "lower": down.found_rate,
            "raise": up.found_rate,
        },
        "median_distance": float(np.median(nearest)) if nearest else float("nan"),
        "seconds": time.perf_counter() - start,
    }
    return records, summary, image_bank, text_bank

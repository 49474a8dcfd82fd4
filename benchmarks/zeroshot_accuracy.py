"""Zero-shot accuracy of a shipped Fashion-MNIST model, through jaxplain and through transformers' PyTorch model.

Both paths classify the 10,000 shipped Fashion-MNIST test images against the same prompt ensemble
(the 10 class names × ``jaxplain.DEFAULT_TEMPLATES``), each with its own stack end to end:

* jaxplain: ``jaxplain.load`` → ``model.preprocess`` → ``class_embeddings`` / ``zeroshot.probabilities`` (the
  model's own decision: CLIP's softmax, SigLIP's sigmoid per class);
* PyTorch: for ``fashion-clip`` ``CLIPModel`` + ``CLIPTokenizer`` + ``CLIPImageProcessorPil``, for
  ``fashion-siglip`` ``SiglipModel`` + its ``AutoTokenizer`` (SentencePiece) + ``SiglipImageProcessorPil``,
  loaded from the same directory.

The two accuracies must agree within 0.1 percentage point (exit status 1 otherwise).

    python benchmarks/zeroshot_accuracy.py [--model fashion-clip|fashion-siglip] [--limit N]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import jaxplain
from jaxplain.data.fashion_mnist import CLASS_NAMES, load_shipped_test
from jaxplain.zeroshot import DEFAULT_TEMPLATES, class_embeddings, probabilities, prompts

TOLERANCE = 0.001  # accuracies may differ by at most 0.1 percentage point
BATCH = 500


def jaxplain_predictions(model: jaxplain.Model, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(predicted classes [N], pixels [N, 3, 28, 28])`` through jaxplain's own preprocessing and model."""
    pixels = model.preprocess(list(images))
    cls = class_embeddings(model, CLASS_NAMES, DEFAULT_TEMPLATES)
    probs = probabilities(model, model.encode_pixels(pixels, batch_size=BATCH), cls)
    return np.asarray(probs).argmax(axis=1), pixels


def torch_predictions(directory, images: np.ndarray, context: int, family: str) -> tuple[np.ndarray, np.ndarray]:
    """``(predicted classes [N], pixels [N, 3, 28, 28])`` through transformers' PyTorch CLIP or SigLIP."""
    import torch
    from PIL import Image
    from transformers import (
        AutoTokenizer,
        CLIPImageProcessorPil,
        CLIPModel,
        CLIPTokenizer,
        SiglipImageProcessorPil,
        SiglipModel,
    )

    torch.set_grad_enabled(False)
    if family == "siglip":
        model = SiglipModel.from_pretrained(str(directory)).eval()
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
        processor = SiglipImageProcessorPil.from_pretrained(str(directory))
        bias = model.logit_bias
    else:
        model = CLIPModel.from_pretrained(str(directory)).eval()
        tokenizer = CLIPTokenizer.from_pretrained(str(directory))
        processor = CLIPImageProcessorPil.from_pretrained(str(directory))
        bias = 0.0

    texts = prompts(CLASS_NAMES, DEFAULT_TEMPLATES)
    ids = tokenizer(texts, padding="max_length", max_length=context, truncation=True, return_tensors="pt")
    v = model.get_text_features(input_ids=ids["input_ids"]).pooler_output
    v = torch.nn.functional.normalize(v, dim=-1).reshape(len(CLASS_NAMES), len(DEFAULT_TEMPLATES), -1).mean(1)
    v = torch.nn.functional.normalize(v, dim=-1)

    preds, all_pixels = [], []
    for start in range(0, len(images), BATCH):
        batch = [Image.fromarray(x, mode="L") for x in images[start : start + BATCH]]
        pixels = processor(images=batch, return_tensors="pt")["pixel_values"]
        u = torch.nn.functional.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
        logits = model.logit_scale.exp() * u @ v.T + bias  # softmax or sigmoid: the argmax of the logits
        preds.append(logits.argmax(dim=1).numpy())
        all_pixels.append(pixels.numpy())
    return np.concatenate(preds), np.concatenate(all_pixels)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fashion-clip", help="shipped model name or checkpoint directory")
    parser.add_argument("--limit", type=int, help="use only the first N test images")
    args = parser.parse_args(argv)

    images, labels = load_shipped_test()
    images, labels = images[: args.limit], labels[: args.limit]
    model = jaxplain.load(args.model)
    print(f"model: {model}")
    print(f"{len(images)} Fashion-MNIST test images, {len(CLASS_NAMES)} classes × {len(DEFAULT_TEMPLATES)} templates\n")

    t0 = time.perf_counter()
    pred_jax, pix_jax = jaxplain_predictions(model, images)
    t1 = time.perf_counter()
    pred_torch, pix_torch = torch_predictions(
        model.directory, images, model.config.text.max_positions, model.family.name
    )
    t2 = time.perf_counter()

    acc_jax, acc_torch = np.mean(pred_jax == labels), np.mean(pred_torch == labels)
    diff = acc_jax - acc_torch
    reference = "SiglipModel" if model.family.name == "siglip" else "CLIPModel"
    rows = [("jaxplain (JAX)", acc_jax, t1 - t0), (f"transformers {reference} (PyTorch)", acc_torch, t2 - t1)]
    print(f"{'path':<34} {'accuracy':>9} {'time':>8}")
    print("-" * 53)
    for name, acc, sec in rows:
        print(f"{name:<34} {acc:>9.2%} {sec:>7.1f}s")
    print("-" * 53)
    print(f"{'difference (jaxplain − torch)':<34} {diff * 100:>+8.2f}pp")
    print(f"{'predictions that agree':<34} {np.mean(pred_jax == pred_torch):>9.2%}")
    print(f"{'max |pixel difference|':<34} {np.abs(pix_jax - pix_torch).max():>9.2g}")

    print(f"\n{'class':<14} {'jaxplain':>9} {'torch':>9}")
    for c, name in enumerate(CLASS_NAMES):
        mine = labels == c
        print(f"{name:<14} {np.mean(pred_jax[mine] == c):>9.1%} {np.mean(pred_torch[mine] == c):>9.1%}")

    ok = abs(diff) <= TOLERANCE
    print(f"\n{'OK' if ok else 'FAIL'}: |difference| = {abs(diff) * 100:.2f}pp (tolerance {TOLERANCE * 100:.1f}pp)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

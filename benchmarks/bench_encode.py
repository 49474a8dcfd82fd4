"""Encoding throughput: jaxplain vs transformers' PyTorch ``CLIPModel``, side by side in one run.

Both load the same random-weight checkpoint with ViT-B/32 widths and depths (the published
``openai/clip-vit-base-patch32`` configuration), written once in the Hugging Face format. Both get
the same preprocessed pixels and token ids; timings are interleaved (jaxplain, torch, jaxplain, ...)
and the median of the repeats is reported, after a warm-up that includes jaxplain's compilation.
The ratio is torch time / jaxplain time: above 1.0 means jaxplain is faster.

Texts are given to both as ids padded to the 77-token context. jaxplain skips the padding after the
batch's last end-of-text token (causal attention: it cannot change any embedding; the length is rounded
up by ``jaxplain.models.bundle.text_length_bucket``, exact up to 16 tokens), so for texts a
second column gives torch the same advantage — ids padded only to the longest text of the batch,
which is how transformers' tokenizer is best called — and the honest text figure is that one.

    python benchmarks/bench_encode.py [--repeats 5] [--image-batches 1 8 32] [--text-batches 8 32 128]

Needs torch (``pip install torch==2.13.0`` takes a CPU wheel on the project's machines).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
import torch
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPTokenizer

import jaxplain
from jaxplain.data.tokenize import bundled_bpe_dir


def make_checkpoint(directory: str) -> CLIPModel:
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig()).eval()  # the ViT-B/32 configuration
    model.save_pretrained(directory)
    CLIPTokenizer.from_pretrained(str(bundled_bpe_dir())).save_pretrained(directory)
    CLIPImageProcessorPil().save_pretrained(directory)
    return model


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def compare(jax_fn, torch_fn, repeats: int) -> tuple[float, float]:
    jax_fn(), torch_fn()  # warm-up: compilation, allocator
    tj, tt = [], []
    for _ in range(repeats):
        tj.append(timed(jax_fn))
        tt.append(timed(torch_fn))
    return statistics.median(tj), statistics.median(tt)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--image-batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--text-batches", type=int, nargs="+", default=[8, 32, 128])
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as d:
        ref = make_checkpoint(d)
        model = jaxplain.load(d)
    print(f"machine: {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}")
    print(f"checkpoint: ViT-B/32 widths, {sum(p.numel() for p in ref.parameters()):,} parameters, float32\n")
    print(
        f"{'tower':6} {'batch':>5} {'jaxplain/s':>11} {'torch/s':>9} {'ratio':>6} {'torch/s, longest':>17} {'ratio':>6}"
    )
    rng = np.random.RandomState(0)
    ratios, fair = [], []
    for bs in args.image_batches:
        pixels = rng.randn(bs, 3, 224, 224).astype(np.float32)
        tp = torch.from_numpy(pixels)

        def run_torch(tp=tp):
            with torch.inference_mode():
                return ref.get_image_features(pixel_values=tp).pooler_output.numpy()

        tj, tt = compare(lambda p=pixels, b=bs: model.encode_pixels(p, batch_size=b), run_torch, args.repeats)
        ratios.append(tt / tj)
        fair.append(tt / tj)
        print(f"{'image':6} {bs:5d} {bs / tj:11.1f} {bs / tt:9.1f} {tt / tj:6.2f} {'(same)':>17} {tt / tj:6.2f}")
    texts = [f"a photo of a {w} number {i}" for i, w in enumerate(["cat", "dog", "coat", "bag"] * 64)]
    for bs in args.text_batches:
        ids = model.tokenize(texts[:bs])
        ti = torch.from_numpy(ids.astype(np.int64))

        def run_torch(ti=ti):
            with torch.inference_mode():
                return ref.get_text_features(input_ids=ti).pooler_output.numpy()

        tj, tt = compare(lambda i=ids, b=bs: model.encode_ids(i, batch_size=b), run_torch, args.repeats)
        short = torch.from_numpy(model.tokenizer.hf(texts[:bs], padding="longest", return_tensors="np")["input_ids"])

        def run_torch_short(ti=short):
            with torch.inference_mode():
                return ref.get_text_features(input_ids=ti).pooler_output.numpy()

        _, ts = compare(lambda i=ids, b=bs: model.encode_ids(i, batch_size=b), run_torch_short, args.repeats)
        ratios.append(tt / tj)
        fair.append(ts / tj)
        print(f"{'text':6} {bs:5d} {bs / tj:11.1f} {bs / tt:9.1f} {tt / tj:6.2f} {bs / ts:17.1f} {ts / tj:6.2f}")
    gm = lambda r: float(np.exp(np.mean(np.log(r))))  # noqa: E731
    print(f"\ngeometric-mean ratio, same inputs: {gm(ratios):.2f}; torch padding texts to the longest: {gm(fair):.2f}")


if __name__ == "__main__":
    main()

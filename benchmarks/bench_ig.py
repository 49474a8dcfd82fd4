"""Integrated Gradients speed: jaxplain vs Captum on transformers' PyTorch ``CLIPModel``, side by side.

Both explain the same thing with the same random-weight checkpoint (ViT-B/32 widths, the published
``openai/clip-vit-base-patch32`` configuration with ``--layers`` layers per tower), written once in the
Hugging Face format: the cosine similarity of each of ``--batch`` images to its paired text, attributed
to the pixels by Integrated Gradients with ``--steps`` Gauss-Legendre nodes from a zero baseline.

* jaxplain: the pure :func:`jaxplain.attribution.integrated.image_ig` under ``jax.jit`` (no host-side
  batching or preprocessing; the jitted call is what is timed), ``budget`` images per forward/backward.
* torch: ``captum.attr.IntegratedGradients`` over ``f(pixels) = unit(get_image_features(pixels)) · text``
  with ``internal_batch_size`` images per forward/backward, parameters frozen (``requires_grad=False``).

Both get the same normalised pixels and token ids and return the completeness delta. Timings are
interleaved (jaxplain, torch, jaxplain, ...) and the median of ``--repeats`` is reported. Warm-up:
jaxplain is compiled ahead of time at the timed shapes (``jit(...).lower(...).compile()``, so a full-size
run is not needed for it), and each side then runs one path chunk of the same batch (a separate,
cheap program on the jax side) to warm thread pools and allocators. The ratio is torch time / jaxplain
time: above 1.0 means jaxplain is faster. Each side's share of the machine's CPU time while it was timed
is printed too: on a shared machine, a share well below 100% means other work slowed that side. Beside
the timings, the two attributions are compared (channel-summed pixel maps: maximum difference relative
to the largest attribution, and Pearson correlation).

``--tune B [B ...]`` runs the same trial for both sides instead: each candidate chunk size (images per
forward/backward: ``budget`` for jaxplain, ``internal_batch_size`` for Captum, both rounded down to a
multiple of the batch) is timed at the given settings, so the defaults can be chosen the same way.

    python benchmarks/bench_ig.py [--layers 12] [--batch 64] [--steps 50] [--repeats 1]
    python benchmarks/bench_ig.py --layers 2 --batch 64 --steps 10 --repeats 2 --tune 64 128 320 640

Needs torch and captum (``pip install torch==2.13.0 captum`` takes a CPU wheel on the project's machines).
The default setting does 3,200 forward+backward passes of ViT-B/32 per side and per repeat: on 2 CPU
cores about 6 minutes for each side; ``--layers 4`` takes about a third of that.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
from captum.attr import IntegratedGradients
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPTokenizer

import jaxplain
from jaxplain.attribution import core, integrated, targets
from jaxplain.data.tokenize import bundled_bpe_dir
from jaxplain.models import clip

RULE = "gausslegendre"
# Images per forward/backward. At the default setting (12 layers, 64 images, 50 steps, 2 CPUs) Captum took
# 378.8 s with internal_batch_size=64 and 524.7 s with 320 (jaxplain 333.8 s and 339.5 s at budget 64 in the
# same runs), so both default to 64. With 2-layer towers and 10 steps Captum preferred 320 (38.5 s vs 49 s):
# re-tune (`--tune`) when the setting changes much.
BUDGET = 64
INTERNAL_BATCH = 64


def make_checkpoint(directory: str, layers: int) -> CLIPModel:
    torch.manual_seed(0)
    depth = {"num_hidden_layers": layers}
    model = CLIPModel(CLIPConfig(text_config=depth, vision_config=depth)).eval()  # ViT-B/32 widths
    model.save_pretrained(directory)
    CLIPTokenizer.from_pretrained(str(bundled_bpe_dir())).save_pretrained(directory)
    CLIPImageProcessorPil().save_pretrained(directory)
    return model


def features(out) -> torch.Tensor:
    """``get_*_features`` returns a tensor in transformers 4 and a model output (projection in
    ``pooler_output``) in transformers 5."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def cpu_timed(fn):
    """``(fn(), wall seconds, CPU seconds of this process across its threads)``."""
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


class Sides:
    """Both implementations of the same IG, for one batch of image–text pairs."""

    def __init__(self, model: jaxplain.Model, ref: CLIPModel, pixels: np.ndarray, ids: np.ndarray, steps: int):
        n = len(pixels)
        self.steps = steps
        self.pixels_j = jnp.asarray(pixels)
        anchors = jnp.asarray(model.encode_ids(ids))
        zeros = jnp.zeros(n, jnp.int32)
        self.target = targets.Target(targets.SIMILARITY + zeros, anchors, zeros, zeros, zeros, jnp.zeros(n))
        scale = clip.logit_scale(model.params)
        self.scoring = core.Scoring(model.params, jnp.zeros((1, model.embed_dim), jnp.float32), scale)
        self.config = model.config

        ref.requires_grad_(False)
        self.pixels_t = torch.from_numpy(pixels)
        with torch.inference_mode():
            self.text_t = unit(features(ref.get_text_features(input_ids=torch.from_numpy(ids.astype(np.int64)))))
        self.text_t = self.text_t.clone()  # a normal tensor, usable under autograd
        self.anchor_gap = float(np.abs(np.asarray(anchors) - self.text_t.numpy()).max())

        def similarity(pv: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
            return (unit(features(ref.get_image_features(pixel_values=pv))) * text).sum(-1)

        self.ig = IntegratedGradients(similarity)

    def compile_jax(self, budget: int, steps: int | None = None):
        """The jitted IG compiled ahead of time at this batch's shapes; returns ``(run, seconds)``."""
        fn = functools.partial(integrated.image_ig, self.config, steps=steps or self.steps, rule=RULE, budget=budget)
        t = time.perf_counter()
        compiled = jax.jit(fn).lower(self.scoring, self.pixels_j, self.target).compile()
        seconds = time.perf_counter() - t
        return lambda: jax.block_until_ready(compiled(self.scoring, self.pixels_j, self.target)), seconds

    def run_torch(self, internal_batch: int, steps: int | None = None):
        return self.ig.attribute(
            self.pixels_t,
            baselines=torch.zeros_like(self.pixels_t),
            additional_forward_args=(self.text_t,),
            n_steps=steps or self.steps,
            method=RULE,
            internal_batch_size=internal_batch,
            return_convergence_delta=True,
        )

    def warm_up(self, budget: int, internal_batch: int) -> None:
        n = len(self.pixels_t)
        run, _ = self.compile_jax(budget, steps=min(self.steps, max(1, budget // n)))
        run()
        self.run_torch(internal_batch, steps=min(self.steps, max(1, internal_batch // n)))


def agreement(jax_out: dict, torch_out) -> str:
    a = np.asarray(jax_out["pixels"], np.float64)
    attr, delta = torch_out
    b = attr.detach().sum(1).numpy().astype(np.float64)
    rel = np.abs(a - b).max() / np.abs(b).max()
    r = np.corrcoef(a.ravel(), b.ravel())[0, 1]
    return (
        f"pixel maps [N, H, W]: max |jaxplain − captum| / max |captum| = {rel:.2e}, Pearson r = {r:.6f}\n"
        f"completeness |delta|: jaxplain max {np.abs(np.asarray(jax_out['delta'])).max():.2e}, "
        f"captum max {delta.detach().abs().max().item():.2e} (f(x) − f(0) up to "
        f"{np.abs(np.asarray(jax_out['score'] - jax_out['baseline_score'])).max():.3f})"
    )


def tune(sides: Sides, candidates: list[int], repeats: int) -> None:
    """Time each chunk size on both sides; the candidates are interleaved within each repeat so that a
    change in the machine's load falls on all of them."""
    n = len(sides.pixels_t)
    runs = {}
    for size in candidates:
        sides.warm_up(size, size)
        runs[size] = sides.compile_jax(size)[0]
    times = {size: ([], []) for size in candidates}
    for _ in range(repeats):
        for size in candidates:
            times[size][0].append(timed(runs[size]))
            times[size][1].append(timed(lambda s=size: sides.run_torch(s)))
    print(f"{'images/chunk':>12} {'steps/chunk':>11} {'jaxplain s':>10} {'torch s':>8}")
    medians = {size: (statistics.median(tj), statistics.median(tt)) for size, (tj, tt) in times.items()}
    for size, (tj, tt) in medians.items():
        per = max(1, size // n)
        print(f"{per * n:12d} {per:11d} {tj:10.2f} {tt:8.2f}")
    fastest_jax = min(candidates, key=lambda s: medians[s][0])
    fastest_torch = min(candidates, key=lambda s: medians[s][1])
    print(f"\nfastest: jaxplain budget={fastest_jax}, captum internal_batch_size={fastest_torch}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=12, help="layers per tower (ViT-B/32 has 12)")
    ap.add_argument("--batch", type=int, default=64, help="images explained at once")
    ap.add_argument("--steps", type=int, default=50, help="IG quadrature nodes")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per side, after the warm-up")
    ap.add_argument("--budget", type=int, default=BUDGET, help="jaxplain: images per forward/backward")
    ap.add_argument("--internal-batch-size", type=int, default=INTERNAL_BATCH, help="captum: the same")
    ap.add_argument("--tune", type=int, nargs="+", metavar="B", help="time these chunk sizes on both sides instead")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as d:
        ref = make_checkpoint(d, args.layers)
        model = jaxplain.load(d)
    rng = np.random.RandomState(0)
    pixels = rng.randn(args.batch, 3, 224, 224).astype(np.float32)
    words = ["cat", "dog", "coat", "bag"]
    ids = model.tokenize([f"a photo of a {words[i % 4]} number {i}" for i in range(args.batch)])
    sides = Sides(model, ref, pixels, ids, args.steps)

    print(f"machine: {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, jax {jax.devices()[0]}")
    print(
        f"checkpoint: ViT-B/32 widths, towers of {args.layers} layers, "
        f"{sum(p.numel() for p in ref.vision_model.parameters()):,} vision parameters, float32, "
        f"torch attention {ref.config._attn_implementation}"
    )
    print(
        f"IG: {args.batch} images, {args.steps} {RULE} steps, zero baseline, target = cosine similarity to the "
        f"paired text (text embeddings agree to {sides.anchor_gap:.1e})\n"
    )
    if args.tune:
        tune(sides, args.tune, args.repeats)
        return

    print(f"chunk sizes: jaxplain budget={args.budget}, captum internal_batch_size={args.internal_batch_size}")
    run_jax, compile_s = sides.compile_jax(args.budget)
    sides.warm_up(args.budget, args.internal_batch_size)
    runs = {"jaxplain": run_jax, "torch": lambda: sides.run_torch(args.internal_batch_size)}
    wall, cpu, last = {k: [] for k in runs}, {k: [] for k in runs}, {}
    for _ in range(args.repeats):
        for side, fn in runs.items():
            last[side], w, c = cpu_timed(fn)
            wall[side].append(w)
            cpu[side].append(c)
    for side in runs:  # CPU time / (wall time × cores): well below 100% when other work shares the machine
        use = sum(cpu[side]) / (sum(wall[side]) * os.cpu_count())
        times = " ".join(f"{t:.1f}" for t in wall[side])
        print(f"{side:8} wall s per repeat: {times}; this process used {use:.0%} of the CPUs")
    tj, tt = statistics.median(wall["jaxplain"]), statistics.median(wall["torch"])
    passes = args.batch * args.steps
    print(f"jaxplain (jitted image_ig; compiled ahead in {compile_s:.1f} s): {tj:8.2f} s  {passes / tj:6.1f} passes/s")
    print(f"captum IntegratedGradients:                      {tt:8.2f} s  {passes / tt:6.1f} passes/s")
    print(f"ratio torch / jaxplain: {tt / tj:.2f} (median of {args.repeats}; above 1.0: jaxplain is faster)\n")
    print(agreement(last["jaxplain"], last["torch"]))


if __name__ == "__main__":
    main()

"""One calling convention for every attribution method: :func:`attribute`.

::

    a = jaxplain.attribute(model, images, texts, method="ig", target="similarity")
    a.patches   # [N, g, g] patch scores        a.pixels  # [N, H, W] pixel map
    a = jaxplain.attribute(model, images, method="chefer", target="prob:predicted", classes=names)
    a = jaxplain.attribute(model, images, texts, method="occlusion", side="text")
    a.words[0], a.word_scores[0]               # the first text's words and their scores

The pure methods (``jaxplain.attribution.<module>.image_*`` / ``text_*``) take ``(config, scoring,
inputs, target, **options)`` and can be jitted, vmapped and sharded by research code directly; this
module resolves inputs and targets, batches pairs into size buckets (one compiled function per bucket
and option set) and shows progress.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain.attribution import (
    core,
    gradcam,
    gradient,
    integrated,
    maps,
    occlusion,
    relevance,
    rise,
    rollout,
    targets,
)
from jaxplain.attribution import words as words_mod
from jaxplain.attribution.targets import TargetSpec
from jaxplain.batching import bucket, chunks, pad_rows, progress
from jaxplain.errors import InputError
from jaxplain.models.bundle import Model
from jaxplain.zeroshot import DEFAULT_TEMPLATES, class_embeddings


def _random_image(config, scoring, pixels, target, *, seed: int = 0):
    n, _, h, w = pixels.shape
    pm = jax.random.uniform(jax.random.key(seed), (n, h, w))
    score = core.image_scores(config, scoring, pixels, target)[0]
    return {"score": score, "pixels": pm, "patches": maps.patch_sums(pm, config.vision.patch_size)}


def _random_text(config, scoring, ids, target, *, seed: int = 0):
    tokens = jax.random.uniform(jax.random.key(seed), ids.shape)
    emb = core.embed_tokens(scoring, ids)
    score = core.text_scores(config, scoring, ids, emb, target)[0]
    return {"score": score, "tokens": jnp.where(gradient.word_mask(ids, config, scoring), tokens, 0.0)}


@dataclasses.dataclass(frozen=True)
class Method:
    """An attribution method: its pure image and text functions (None where it has no such side)."""

    name: str
    image: Callable[..., dict] | None
    text: Callable[..., dict] | None
    description: str


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("gradient", gradient.image_gradient, None, "magnitude of the score's gradient per pixel"),
        Method(
            "gradient_x_input",
            gradient.image_gradient_x_input,
            gradient.text_gradient_x_input,
            "gradient × input (pixels; token embeddings)",
        ),
        Method("ig", integrated.image_ig, integrated.text_ig, "Integrated Gradients, with its completeness delta"),
        Method(
            "smoothgrad",
            gradient.image_smoothgrad,
            gradient.text_smoothgrad,
            "SmoothGrad around a gradient method (base=...)",
        ),
        Method("gradcam", gradcam.image_gradcam, None, "Grad-CAM on the ViT tokens of a layer"),
        Method("rollout", rollout.image_rollout, rollout.text_rollout, "attention rollout"),
        Method("chefer", relevance.image_relevance, relevance.text_relevance, "gradient-weighted attention relevance"),
        Method("occlusion", occlusion.image_occlusion, occlusion.text_occlusion, "occlusion / leave one word out"),
        Method("rise", rise.image_rise, None, "RISE: randomised input sampling"),
        Method("random", _random_image, _random_text, "uniform random scores (a baseline for the metrics)"),
    )
}

SMOOTHGRAD_BASES = ("gradient", "gradient_x_input", "ig")


def methods_for(side: str) -> list[str]:
    """The names of the methods that explain the given side."""
    return [n for n, m in METHODS.items() if (m.image if side == "image" else m.text) is not None]


@dataclasses.dataclass
class Attribution:
    """The result of :func:`attribute`, shaped like the inputs, one row per pair.

    Attributes:
      method, side: what was computed.
      targets: per pair, the resolved target (``predicted`` replaced by the class name).
      score: ``[N]`` the target's value at the input.
      delta: ``[N]`` for Integrated Gradients, ``Σ attributions − (f(x) − f(baseline))``; else None.
      baseline_score: ``[N]`` for Integrated Gradients, the target's value at the baseline.
      patches: image side, ``[N, g, g]`` patch scores.
      pixels: image side, ``[N, H, W]`` pixel map.
      tokens: text side, ``[N, T]`` per-token scores (0 outside the words).
      token_strings: text side, per pair its BPE tokens (start to end-of-text).
      words: text side, per pair its words; ``word_scores`` the sums of their tokens' scores.
      word_index: text side, ``[N, T]`` the word of each token (−1 for special tokens).
      inputs: the model inputs that were explained (pixels ``[N, 3, H, W]`` or ids ``[N, T]``).
    """

    method: str
    side: str
    targets: list[str]
    score: np.ndarray
    inputs: np.ndarray
    delta: np.ndarray | None = None
    baseline_score: np.ndarray | None = None
    patches: np.ndarray | None = None
    pixels: np.ndarray | None = None
    tokens: np.ndarray | None = None
    token_strings: list[list[str]] | None = None
    words: list[list[str]] | None = None
    word_scores: list[np.ndarray] | None = None
    word_index: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.score)

    @property
    def features(self) -> np.ndarray:
        """The attribution of each pair as a flat feature vector: patches ``[N, g·g]`` or tokens ``[N, T]``."""
        return self.patches.reshape(len(self), -1) if self.side == "image" else self.tokens

    def overlay(self, i: int, processing=None, **options):
        """Pair ``i``'s pixel map over its image (a PIL image); see :func:`jaxplain.viz.heatmap.overlay`."""
        from jaxplain.viz.heatmap import overlay

        if self.side != "image":
            raise ValueError("overlay is for image attributions; use highlight_html for texts")
        if processing is None:
            raise ValueError("overlay needs the model's processing (model.processing) to show the pixels")
        return overlay(self.inputs[i], self.pixels[i], processing=processing, **options)

    def highlight_html(self, i: int, **options) -> str:
        """Pair ``i``'s words highlighted by score (an HTML fragment)."""
        from jaxplain.viz.text import highlight_html

        if self.side != "text":
            raise ValueError("highlight_html is for text attributions; use overlay for images")
        return highlight_html(self.words[i], self.word_scores[i], **options)


def _pixel_baseline(model: Model, baseline: Any, n: int) -> Any:
    """A baseline option → normalised pixels ``[N, 3, H, W]`` or a number."""
    if baseline is None or (isinstance(baseline, str) and baseline == "mean"):
        return 0.0
    if isinstance(baseline, str):
        level = {"black": 0.0, "white": 255.0}.get(baseline)
        if level is None:
            raise InputError(f"baseline {baseline!r}: use 'mean', 'black', 'white', a number or an array of pixels")
        pr = model.processing
        value = (level * pr.rescale_factor - np.asarray(pr.mean)) / np.asarray(pr.std)
        size = model.config.vision.image_size
        return np.broadcast_to(value[None, :, None, None], (n, 3, size, size)).astype(np.float32)
    if np.ndim(baseline) == 0:
        return float(baseline)
    b = np.asarray(baseline, np.float32)
    if b.ndim == 3:
        b = np.broadcast_to(b[None], (n, *b.shape))
    if b.shape[0] != n or b.shape[1:] != (3, model.config.vision.image_size, model.config.vision.image_size):
        raise InputError(f"baseline of shape {b.shape} does not match the {n} images")
    return b


@functools.lru_cache(maxsize=128)
def _compiled(method: str, side: str, config, static: tuple) -> Callable:
    fn = getattr(METHODS[method], side)
    opts = dict(static)
    if method == "smoothgrad" and side == "image":
        base = opts.pop("base", "gradient")
        if base not in SMOOTHGRAD_BASES:
            raise InputError(f"smoothgrad base {base!r}: use one of {', '.join(SMOOTHGRAD_BASES)}")
        opts["base"] = METHODS[base].image
        base_opts = dict(opts.pop("base_options", ()))
        opts.update(base_opts)

    def run(scoring, x, target, dynamic):
        return fn(config, scoring, x, target, **opts, **dynamic)

    return jax.jit(run)


def _batches(n: int, batch_size: int):
    for s in chunks(n, batch_size):
        yield s, bucket(s.stop - s.start, batch_size)


def _slice_target(t: targets.Target, s: slice, size: int) -> targets.Target:
    return jax.tree.map(lambda a: pad_rows(np.asarray(a)[s], size), t)


def _embed_other(model: Model, items, n: int, what: str) -> np.ndarray | None:
    if items is None:
        return None
    emb = model.encode_texts(items) if what == "texts" else model.encode_images(items)
    if len(emb) == 1 and n > 1:
        emb = np.repeat(emb, n, axis=0)
    if len(emb) != n:
        raise InputError(f"got {n} inputs to explain but {len(emb)} {what} to pair them with")
    return emb


def attribute(
    model: Model,
    images: Sequence | np.ndarray | None = None,
    texts: Sequence[str] | None = None,
    *,
    method: str = "ig",
    target: str | TargetSpec | Sequence[str | TargetSpec] = "similarity",
    side: str = "image",
    classes: Sequence[str] | None = None,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    batch_size: int = 32,
    show_progress: bool = False,
    **options: Any,
) -> Attribution:
    """Attribute a score of the model to the patches and pixels of images or to the words of texts.

    Args:
      model: a loaded model.
      images: the images (paths, PIL images, arrays, or normalised pixels ``[N, 3, H, W]``). On the
        image side they are explained; on the text side they are the pairs' anchors (one per text, or
        one for all).
      texts: the texts. On the text side they are explained; on the image side they are the anchors of a
        ``similarity`` target (one per image, or one for all).
      method: one of :data:`METHODS` (see :func:`methods_for` for each side).
      target: what is explained — one target for all pairs or one per pair, in the text form of
        :class:`~jaxplain.attribution.targets.TargetSpec`: ``similarity``, ``logit:NAME``,
        ``prob:NAME``, ``contrast:A vs B`` or ``margin:WANT`` (NAME may be ``predicted`` or
        ``runner-up``).
      side: ``"image"`` or ``"text"``.
      classes: class names for the class targets (prompt-ensembled with ``templates``).
      batch_size: pairs per compiled call.
      show_progress: show a progress bar over the batches.
      **options: the method's options, e.g. ``steps=`` for ``ig``, ``layer=`` for ``gradcam``,
        ``masks=`` for ``rise``, ``window=`` for ``occlusion``, ``base=``/``samples=``/``sigma=`` for
        ``smoothgrad``, ``baseline=`` (``"mean"``, ``"black"``, ``"white"``, a number or pixels) for
        ``ig``, ``occlusion`` and ``rise``, and ``budget=`` (model inputs per internal chunk, the
        memory bound) for the perturbation and path methods.

    The model's family decides how its towers run and what its targets mean: under a sigmoid decision
    (SigLIP) ``prob:NAME`` is ``σ(s · e·v_c + b)`` and ``logit:NAME`` is ``s · e·v_c + b`` (see
    :mod:`~jaxplain.attribution.targets`). ``chefer`` on images needs a class token and is refused for
    SigLIP's towers, pooled by an attention head; ``rollout`` starts from that head's attention there.

    Returns:
      an :class:`Attribution`.
    """
    if side not in ("image", "text"):
        raise InputError(f"side {side!r}: use 'image' or 'text'")
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; the methods are {', '.join(METHODS)}")
    if getattr(METHODS[method], side) is None:
        raise InputError(f"method {method!r} has no {side} side; for {side}s use {', '.join(methods_for(side))}")
    config = model.config

    if side == "image":
        if images is None:
            raise InputError("side='image' explains images: pass images=")
        is_pixels = isinstance(images, np.ndarray | jax.Array) and np.ndim(images) == 4
        x = np.asarray(images, np.float32) if is_pixels else model.preprocess(list(images))
        n = len(x)
        explained = model.encode_pixels(x)
        anchors = _embed_other(model, texts, n, "texts")
    else:
        if texts is None:
            raise InputError("side='text' explains texts: pass texts=")
        x = model.tokenize(list(texts))
        n = len(x)
        explained = model.encode_ids(x)
        anchors = _embed_other(model, images, n, "images")
    if n == 0:
        raise InputError("nothing to explain: no inputs given")

    specs = [TargetSpec.parse(target)] * n if isinstance(target, str | TargetSpec) else list(target)
    if len(specs) != n:
        raise InputError(f"got {len(specs)} targets for {n} inputs")
    specs = [TargetSpec.parse(s) for s in specs]
    candidates = class_embeddings(model, list(classes), templates) if classes else None
    scale, bias = model.logit_scale, model.logit_bias
    resolved = targets.build(specs, explained, anchors, candidates, classes, scale, bias=bias, decision=model.decision)
    scoring = core.scoring_for(model, candidates)

    dynamic: dict[str, Any] = {}
    per_pair: dict[str, np.ndarray] = {}
    opts = dict(options)
    word_data = None
    if side == "text":
        fam = model.family
        first, stop = (np.asarray(a) for a in fam.text_word_span(x, config, model.tokenizer.eos_id))
        word_data = words_mod.token_words(model.tokenizer, x, stop, first, begins=fam.word_begins, ends=fam.word_ends)
        if method == "occlusion":
            per_pair["words"] = word_data[1]
            opts.update(max_words=max(1, max(len(w) for w in word_data[2])), pad_id=model.tokenizer.pad_id)
    if "baseline" in opts:
        if side != "image":
            raise InputError("baseline= is an image option")
        b = _pixel_baseline(model, opts.pop("baseline"), n)
        if isinstance(b, np.ndarray):
            per_pair["baseline"] = b
        else:
            opts["baseline"] = b
    if method == "smoothgrad" and side == "image":
        base_keys = {"steps", "rule", "budget", "baseline"} & set(opts)
        opts["base_options"] = tuple(sorted((k, opts.pop(k)) for k in base_keys))
    try:
        fn = _compiled(method, side, config, tuple(sorted(opts.items())))
    except TypeError as e:
        raise InputError(f"method {method!r}: bad options {sorted(opts)} ({e})") from None

    outs: list[dict] = []
    with progress(n, f"{method} ({side})", "pair", show_progress) as bar:
        for s, size in _batches(n, batch_size):
            for k, v in per_pair.items():
                dynamic[k] = pad_rows(np.asarray(v)[s], size)
            xb = pad_rows(x[s], size)
            if side == "text":  # padding rows get a valid text: an end-of-text token to pool at
                xb[s.stop - s.start :, 1] = model.tokenizer.eos_id
            try:
                out = fn(scoring, xb, _slice_target(resolved, s, size), dynamic)
            except TypeError as e:
                raise InputError(f"method {method!r}: bad options {sorted(options)} ({e})") from None
            outs.append({k: np.asarray(v)[: s.stop - s.start] for k, v in out.items()})
            bar.update(s.stop - s.start)
    merged = {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}

    result = Attribution(
        method=method,
        side=side,
        targets=[_describe(s, resolved, i, classes) for i, s in enumerate(specs)],
        score=merged["score"],
        inputs=x,
        delta=merged.get("delta"),
        baseline_score=merged.get("baseline_score"),
    )
    if side == "image":
        result.patches, result.pixels = merged["patches"], merged["pixels"]
    else:
        tokens, index, words = word_data
        result.tokens = merged["tokens"]
        result.token_strings, result.word_index, result.words = tokens, index, words
        result.word_scores = [words_mod.word_scores(result.tokens[i], index[i], len(words[i])) for i in range(n)]
    return result


def _describe(spec: TargetSpec, t: targets.Target, i: int, classes: Sequence[str] | None) -> str:
    if spec.kind in ("logit", "prob"):
        return f"{spec.kind}:{classes[int(t.cls[i])]}"
    if spec.kind == "contrast":
        return f"contrast:{classes[int(t.cls[i])]} vs {classes[int(t.other[i])]}"
    return str(spec)

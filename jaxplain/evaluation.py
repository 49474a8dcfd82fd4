"""How good are the explanations? Methods × metrics on a set of pairs, as a table.

This module runs the model for the metrics of :mod:`jaxplain.metrics` (which are pure arithmetic):

* **deletion / insertion AUC** — features (image patches; word tokens) are replaced by the baseline (the
  mean colour in normalised pixels; the zero token embedding) in order of attribution, ``steps`` steps up
  to ``fraction`` of them, and the target's value is read at each step; the curve's area is the metric;
* **max-sensitivity** (image side) — the largest relative change of the patch attribution over
  ``samples`` copies of the image with uniform noise of ``radius`` (normalised pixel units);
* **completeness error** — ``|Σ attributions − (f(x) − f(baseline))|`` (Integrated Gradients);
* **contrastivity** — how much "predicted rather than runner-up" differs from "predicted" alone
  (class targets only);
* **randomisation similarity** — the Spearman correlation of the attribution magnitudes under the
  trained weights and under weights of the explained tower randomised from the top (lower is better).

Every number in the table is a mean over pairs. The protocol's parameters are reported with the table.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain import metrics
from jaxplain.attribution import api, core, maps, targets
from jaxplain.attribution.api import Attribution, attribute
from jaxplain.attribution.gradient import word_mask
from jaxplain.batching import bucket, chunks, pad_rows, progress
from jaxplain.errors import InputError
from jaxplain.models import clip
from jaxplain.models.bundle import Model
from jaxplain.zeroshot import DEFAULT_TEMPLATES, class_embeddings

DEFAULT_METRICS = (
    "deletion_auc",
    "insertion_auc",
    "max_sensitivity",
    "completeness_error",
    "contrastivity",
    "randomisation_similarity",
)


@dataclasses.dataclass(frozen=True)
class Protocol:
    """The parameters of the metrics, reported beside their values.

    Attributes:
      steps: steps of the deletion and insertion curves.
      fraction: share of the features perturbed at the curves' last step.
      samples: noisy copies per image for max-sensitivity.
      radius: the noise's half-width, in normalised pixel units.
      seed: for the noise and the randomised weights.
    """

    steps: int = 16
    fraction: float = 1.0
    samples: int = 8
    radius: float = 0.05
    seed: int = 0

    def describe(self) -> str:
        return (
            f"deletion/insertion: {self.steps} steps up to {self.fraction:.0%} of the features, baseline = mean "
            f"colour (images) or zero token embedding (texts); max-sensitivity: {self.samples} samples, uniform "
            f"noise of radius {self.radius}; randomisation: the explained tower's weights drawn anew"
        )


@dataclasses.dataclass
class Table:
    """Metric means per method: ``rows[method][metric]`` (NaN where a metric does not apply)."""

    methods: list[str]
    metrics: list[str]
    rows: dict[str, dict[str, float]]
    pairs: int
    side: str
    target: str
    protocol: Protocol
    notes: list[str] = dataclasses.field(default_factory=list)

    def markdown(self) -> str:
        """A Markdown table, with each metric's direction in its header and the protocol below."""
        head = [f"{m} ({'↑' if metrics.METRICS[m].higher_is_better else '↓'})" for m in self.metrics]
        lines = ["| method | " + " | ".join(head) + " |", "|---|" + "---:|" * len(head)]
        for meth in self.methods:
            vals = [self.rows[meth].get(m, float("nan")) for m in self.metrics]
            lines.append(f"| {meth} | " + " | ".join("–" if np.isnan(v) else f"{v:.4f}" for v in vals) + " |")
        lines.append("")
        lines.append(f"{self.pairs} pairs, {self.side} side, target `{self.target}`. {self.protocol.describe()}.")
        lines += [f"\n{note}." for note in self.notes]
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        """One row per method, one column per metric (empty where it does not apply)."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["method", *self.metrics])
        for meth in self.methods:
            vals = [self.rows[meth].get(m, float("nan")) for m in self.metrics]
            w.writerow([meth, *("" if np.isnan(v) else f"{v:.6g}" for v in vals)])
        return buf.getvalue()


def _pair_scoring(model: Model, a: Attribution, texts, images, classes, templates):
    """The resolved per-pair targets and scoring arrays of an attribution (its targets are fixed strings)."""
    specs = [targets.TargetSpec.parse(t) for t in a.targets]
    cands = class_embeddings(model, list(classes), templates) if classes else None
    if a.side == "image":
        explained = model.encode_pixels(a.inputs)
        anchors = None if texts is None else api._embed_other(model, texts, len(a), "texts")
    else:
        explained = model.encode_ids(a.inputs)
        anchors = None if images is None else api._embed_other(model, images, len(a), "images")
    t = targets.build(specs, explained, anchors, cands, classes, model.logit_scale)
    scoring = core.Scoring(
        model.params,
        jnp.asarray(cands if cands is not None else np.zeros((1, model.embed_dim), np.float32)),
        clip.logit_scale(model.params),
    )
    return t, scoring


def _image_curve_scores(config, scoring, pixels, target, masks):
    """Scores ``[N, S]`` of images whose patches are kept where ``masks`` ``[N, S, g·g]`` is 1 and set to 0
    (the mean colour) elsewhere."""
    n, _, f = masks.shape
    g = round(f**0.5)
    patch = config.vision.patch_size

    def one(m):  # m [N, F]: one step for every pair
        keep = maps.expand(m.reshape(n, g, g), patch)[:, None]
        return core.image_scores(config, scoring, pixels * keep, target)[0]

    return core.chunked_map(one, jnp.moveaxis(masks, 1, 0), 4).T


def _text_curve_scores(config, scoring, ids, target, masks):
    """Scores ``[N, S]`` of texts whose token embeddings are kept where ``masks`` ``[N, S, T]`` is 1 and set
    to zero elsewhere."""
    emb = clip.embed_tokens(scoring.params, ids)

    def one(m):
        return core.text_scores(config, scoring, ids, emb * m[..., None], target)[0]

    return core.chunked_map(one, jnp.moveaxis(masks, 1, 0), 8).T


_image_curve_jit = jax.jit(_image_curve_scores, static_argnums=0)
_text_curve_jit = jax.jit(_text_curve_scores, static_argnums=0)


def faithfulness_curves(
    model: Model, a: Attribution, target: targets.Target, scoring: core.Scoring, protocol: Protocol, mode: str
) -> np.ndarray:
    """The deletion or insertion curve ``[N, steps + 1]`` of each pair's attribution."""
    valid = None if a.side == "image" else np.asarray(word_mask(a.inputs, model.config))
    masks = np.asarray(metrics.step_masks(a.features, protocol.steps, protocol.fraction, mode, valid=valid))
    out = []
    for s in chunks(len(a), 64):
        size = bucket(s.stop - s.start, 64)
        t = jax.tree.map(lambda x, s=s, size=size: pad_rows(np.asarray(x)[s], size), target)
        m = pad_rows(masks[s], size)
        if a.side == "image":
            r = _image_curve_jit(model.config, scoring, pad_rows(a.inputs[s], size), t, m)
        else:
            ids = pad_rows(a.inputs[s], size)
            ids[s.stop - s.start :, 1] = model.tokenizer.eos_id
            r = _text_curve_jit(model.config, scoring, ids, t, m)
        out.append(np.asarray(r)[: s.stop - s.start])
    return np.concatenate(out)


def evaluate(
    model: Model,
    images: Sequence | np.ndarray | None = None,
    texts: Sequence[str] | None = None,
    *,
    methods: Sequence[str],
    metric_names: Sequence[str] = DEFAULT_METRICS,
    target: str = "similarity",
    side: str = "image",
    classes: Sequence[str] | None = None,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    protocol: Protocol = Protocol(),
    method_options: dict[str, dict[str, Any]] | None = None,
    show_progress: bool = True,
) -> Table:
    """Evaluate attribution methods with explanation-quality metrics; returns a :class:`Table`.

    Args:
      model, images, texts, target, side, classes, templates: as for :func:`jaxplain.attribute`.
      methods: method names (see :data:`jaxplain.attribution.METHODS`; include ``"random"`` for the
        baseline row every method should beat).
      metric_names: a subset of :data:`DEFAULT_METRICS`. Metrics that do not apply (max-sensitivity on
        texts, completeness for methods other than ``ig``, contrastivity without class targets) are NaN.
      protocol: the metrics' parameters.
      method_options: per method, the options passed to :func:`jaxplain.attribute`.
    """
    model.require_softmax("explanation-quality evaluation")  # its scoring and word masks are CLIP's
    unknown = [m for m in metric_names if m not in DEFAULT_METRICS]
    if unknown:
        raise InputError(f"unknown metric {unknown[0]!r}; the metrics are {', '.join(DEFAULT_METRICS)}")
    bad = [m for m in methods if m not in api.methods_for(side)]
    if bad:
        raise InputError(f"method {bad[0]!r} cannot explain {side}s; use {', '.join(api.methods_for(side))}")
    method_options = method_options or {}
    key = jax.random.key(protocol.seed)
    rows: dict[str, dict[str, float]] = {}
    notes: list[str] = []
    common = dict(side=side, classes=classes, templates=templates)
    with progress(len(methods), "evaluating", "method", show_progress) as bar:
        for meth in methods:
            opts = method_options.get(meth, {})
            a = attribute(model, images, texts, method=meth, target=target, **common, **opts)
            t, scoring = _pair_scoring(model, a, texts, images, classes, templates)
            row: dict[str, float] = {}
            for mode in ("deletion", "insertion"):
                if f"{mode}_auc" in metric_names:
                    curve = faithfulness_curves(model, a, t, scoring, protocol, mode)
                    row[f"{mode}_auc"] = float(np.mean(metrics.auc(curve)))
            if "max_sensitivity" in metric_names and side == "image":
                sens = _max_sensitivity(model, a, texts, common, opts, protocol, key)
                finite = np.isfinite(sens)
                row["max_sensitivity"] = float(np.mean(sens[finite])) if finite.any() else float("inf")
                if not finite.all():
                    notes.append(
                        f"{meth}: max-sensitivity left out {int((~finite).sum())} pairs whose explanation is all "
                        "zero while a noisy copy's is not (an infinite relative change)"
                    )
            if "completeness_error" in metric_names and a.delta is not None:
                row["completeness_error"] = float(np.mean(np.abs(a.delta)))
            if "contrastivity" in metric_names and classes and side == "image":
                row["contrastivity"] = _contrastivity(model, a, texts, common, opts)
            if "randomisation_similarity" in metric_names:
                params = metrics.randomise_layers(model.params, key, tower=side if side == "text" else "vision")
                rnd = attribute(
                    model.with_params(params),
                    a.inputs if side == "image" else images,
                    texts,
                    method=meth,
                    target=list(a.targets),
                    **common,
                    **opts,
                )
                row["randomisation_similarity"] = float(
                    np.mean(metrics.randomisation_similarity(a.features, rnd.features))
                )
            rows[meth] = row
            bar.update(1)
    return Table(list(methods), list(metric_names), rows, len(a), side, target, protocol, notes)


def _valid(model: Model, a: Attribution) -> np.ndarray | None:
    """The features a rank comparison may use: all patches; the word tokens of texts."""
    return None if a.side == "image" else np.asarray(word_mask(a.inputs, model.config))


def _contrastivity(model: Model, a: Attribution, texts, common: dict, opts: dict) -> float:
    """Contrastivity of "A rather than B" against "A" (logits), with A the class each pair's target names
    and B the highest-scoring other class; NaN when the target names no class."""
    if not all(t.startswith(("prob:", "logit:")) for t in a.targets):
        return float("nan")
    classes = list(common["classes"])
    names = [t.split(":", 1)[1] for t in a.targets]
    z = model.encode_pixels(a.inputs) @ class_embeddings(model, classes, common["templates"]).T
    z[np.arange(len(a)), [classes.index(c) for c in names]] = -np.inf
    others = [classes[i] for i in z.argmax(1)]
    plain = attribute(model, a.inputs, texts, method=a.method, target=[f"logit:{c}" for c in names], **common, **opts)
    vs = [f"contrast:{c} vs {o}" for c, o in zip(names, others)]
    contrast = attribute(model, a.inputs, texts, method=a.method, target=vs, **common, **opts)
    return float(np.mean(metrics.contrastivity(contrast.features, plain.features)))


def _max_sensitivity(model, a: Attribution, texts, common, opts, protocol: Protocol, key) -> np.ndarray:
    """Max-sensitivity of the patch attribution: the method re-run on noisy copies of every image, with
    each pair's resolved target (so "predicted" stays the class predicted for the clean image)."""
    n, s = len(a), protocol.samples
    noisy = np.asarray(metrics.uniform_perturbations(key, jnp.asarray(a.inputs), s, protocol.radius))
    flat = noisy.reshape(n * s, *a.inputs.shape[1:])
    rep_texts = (
        None if texts is None else [t for t in (texts if len(texts) == n else list(texts) * n) for _ in range(s)]
    )
    rep_targets = [t for t in a.targets for _ in range(s)]
    b = attribute(model, flat, rep_texts, method=a.method, target=rep_targets, **common, **opts)
    return np.asarray(metrics.max_sensitivity_from(a.features, b.features.reshape(n, s, -1)))


def counterfactual_quality(
    result,
    bank,
    original: np.ndarray,
    features: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, float]:
    """Validity, proximity, diversity (and sparsity) of the counterfactuals of a
    :func:`jaxplain.counterfactuals` result, as means over the pairs that have any.

    Args:
      result: a ``CounterfactualResult``.
      bank: the bank it retrieved from (for the counterfactuals' embeddings).
      original: ``[N, E]`` the pairs' original embeddings (of the side that was changed).
      features: optional ``(original [N, F], counterfactual [N, K, F])`` inputs (e.g. pixels) for
        sparsity, the fraction of input features that differ, with ``K = max`` counterfactuals per pair.

    Returns:
      ``{"found_rate", "validity", "proximity", "diversity"}`` (and ``"sparsity"`` with ``features``).
    """
    n = len(result)
    k = max((len(p.counterfactuals) for p in result.pairs), default=0)
    out = {"found_rate": result.found_rate}
    if k == 0:
        return {**out, "validity": float("nan"), "proximity": float("nan"), "diversity": float("nan")}
    present = np.zeros((n, k), bool)
    valid = np.zeros((n, k), bool)
    rows = np.zeros((n, k), np.int64)
    for i, p in enumerate(result.pairs):
        for j, c in enumerate(p.counterfactuals):
            present[i, j], valid[i, j], rows[i, j] = True, c.margin > 0, c.bank_row
    emb = np.asarray(bank.embeddings)[rows]
    some = present.any(1)

    def mean(x) -> float:
        return float(np.mean(np.asarray(x)[some]))

    out["validity"] = mean(metrics.validity(valid, present))
    out["proximity"] = mean(metrics.proximity(original, emb, present))
    out["diversity"] = mean(metrics.diversity(emb, present))
    if features is not None:
        out["sparsity"] = mean(metrics.sparsity(features[0], features[1], present))
    return out

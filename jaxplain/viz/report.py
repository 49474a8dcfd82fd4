"""A self-contained HTML report of explained decisions: every image embedded, no external files.

:func:`render` turns the demo's records (plain dicts, as written to ``results.jsonl``) into one
HTML page: per image, its prediction and confidence, its counterfactual galleries with the scores
that prove each one, the caption counterfactuals, and a summary at the top.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from jaxplain.data.images import load_rgb
from jaxplain.viz.heatmap import overlay
from jaxplain.viz.text import highlight_html

DECISION_TEXT = {
    "softmax": "Probabilities are the model's softmax over the classes: they compete and sum to 100%.",
    "sigmoid": (
        "Probabilities are the model's sigmoid of each class on its own, σ(s·u·v + b): the classes do not "
        "compete, so they need not sum to 100%, and several classes, or none, may pass 50%. The prediction is "
        "the class with the highest probability."
    ),
}

THUMB = 112

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d2330;background:#f6f7f9}
h1{font-size:22px;margin:0 0 4px} h2{font-size:16px;margin:0 0 8px} .muted{color:#5b6475}
.summary{display:flex;gap:12px;flex-wrap:wrap;margin:16px 0 24px}
.stat{background:#fff;border:1px solid #dde1e8;border-radius:8px;padding:10px 14px;min-width:150px}
.stat b{display:block;font-size:20px}
.card{background:#fff;border:1px solid #dde1e8;border-radius:10px;padding:16px;margin:0 0 18px}
.row{display:flex;gap:24px;align-items:flex-start;flex-wrap:wrap}
.orig img,.cf img{image-rendering:pixelated;border-radius:6px;border:1px solid #cfd5df;display:block}
.bars{min-width:220px} .bar{display:flex;align-items:center;gap:6px;margin:2px 0;font-size:12px}
.bar span.l{width:90px;text-align:right} .bar span.b{height:10px;background:#3b6fd8;border-radius:3px}
.gallery{display:flex;gap:10px;flex-wrap:wrap} .cf{width:118px;font-size:12px}
.cf .p{font-weight:600} .section{margin-top:10px} .none{color:#a33;font-style:italic}
table.t{border-collapse:collapse;font-size:13px}
table.t td,table.t th{padding:3px 8px;border-bottom:1px solid #eceff3;text-align:left}
.up{color:#176b2c} .down{color:#a33}
.heat{width:118px;font-size:12px} .heat img{image-rendering:pixelated;border-radius:6px;border:1px solid #cfd5df}
.jx-words span{padding:1px 3px;border-radius:3px}
"""


def data_uri(image: Any, size: int = THUMB) -> str:
    """A PNG data URI of an image (path, array, PIL image), scaled to ``size`` on its longer side."""
    img = load_rgb(image) if not isinstance(image, Image.Image) else image.convert("RGB")
    w, h = img.size
    s = size / max(w, h)
    # Small images (Fashion-MNIST is 28 px) are enlarged without smoothing, so pixels stay visible.
    img = img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.NEAREST if s > 1 else Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _esc(x: Any) -> str:
    return html.escape(str(x))


def _bars(top: list[list]) -> str:
    rows = "".join(
        f'<div class="bar"><span class="l">{_esc(c)}</span><span class="b" style="width:{max(2, round(120 * p))}px">'
        f"</span><span>{p:.1%}</span></div>"
        for c, p in top
    )
    return f'<div class="bars">{rows}</div>'


def _gallery(cfs: list[dict], image_of: Callable[[dict], Any], status: str) -> str:
    if not cfs:
        why = "the outcome already holds" if status == "already" else "no real image in the bank reaches it"
        return f'<div class="none">none: {why}</div>'
    cells = []
    for c in cfs:
        img = image_of(c)
        pic = f'<img src="{data_uri(img)}" width="{THUMB}" alt="{_esc(c["bank_id"])}">' if img is not None else ""
        pic = pic or f'<div class="muted">{_esc(c["item"])}</div>'  # no file to show: name the item
        label = f" · label {_esc(c['label_name'])}" if c.get("label_name") else ""
        cells.append(
            f'<div class="cf" data-bank-id="{_esc(c["bank_id"])}">{pic}<div class="p">{_esc(c["predicted"])} '
            f'{c["confidence"]:.1%}</div><div class="muted">distance {c["distance"]:.3f}{label}</div>'
            f'<div class="muted">bank #{_esc(c["bank_id"])}</div></div>'
        )
    return f'<div class="gallery">{"".join(cells)}</div>'


def _captions(rec: dict, key: str, cls: str) -> str:
    r = rec[key]
    if not r["counterfactuals"]:
        return '<div class="none">none in the caption bank</div>'
    rows = "".join(
        f'<tr><td>“{_esc(c["item"])}”</td><td class="{cls}">{c["score"]:.3f}</td><td>{c["distance"]:.3f}</td></tr>'
        for c in r["counterfactuals"]
    )
    return f'<table class="t"><tr><th>caption</th><th>similarity</th><th>distance</th></tr>{rows}</table>'


def _attribution(rec: dict, image: Any) -> str:
    a = rec.get("attribution")
    if not a:
        return ""
    maps = [
        (f"what drove p({rec['predicted']})", a["predicted"]),
        (f"{rec['predicted']} rather than {rec['runner_up_name']}", a["contrast"]),
    ]
    cells = []
    for title, m in maps:
        pic = overlay(image, np.asarray(m["pixels"]), alpha=0.6, size=THUMB, signed=True)
        cells.append(
            f'<div class="heat"><img src="{data_uri(pic)}" width="{THUMB}" alt="{_esc(title)}">'
            f'<div>{_esc(title)}</div><div class="muted">{_esc(m["target"])} = {m["score"]:.3f}</div></div>'
        )
    words = highlight_html([w for w, _ in a["words"]], [x for _, x in a["words"]], signed=True)
    return f"""<div class="section"><b>Which pixels drove it</b> <span class="muted">({_esc(a["method"])};
<span class="down">red</span> raised the score, <span style="color:#2166ac">blue</span> lowered it)</span>
<div class="gallery">{"".join(cells)}</div>
<div>words of “{_esc(rec["text"])}” that drove its similarity to the image: {words}</div></div>"""


def render(records: list[dict], summary: dict, image_of: Callable[[Any], Any]) -> str:
    """The HTML page for the demo's records.

    Args:
      records: one dict per explained image (see :func:`jaxplain.demo.run_demo`).
      summary: model, bank sizes, found-rates, proximities and timings.
      image_of: maps a record's ``"image"`` reference or a counterfactual's ``"bank_row"`` dict to
        something :func:`data_uri` renders (or None to show no picture).
    """
    s = summary
    stats = [
        ("images explained", s["images"]),
        ("zero-shot accuracy", f"{s['accuracy']:.0%}" if s.get("accuracy") is not None else "—"),
        ("other class found", f"{s['found']['other-class']:.0%}"),
        ("runner-up found", f"{s['found']['runner-up']:.0%}"),
        ("median distance to a counterfactual", f"{s['median_distance']:.3f}"),
        ("time", f"{s['seconds']:.1f} s"),
    ]
    cards = []
    for r in records:
        truth = f" · true label <b>{_esc(r['label'])}</b>" if r.get("label") else ""
        kind = " (sigmoid)" if s.get("decision") == "sigmoid" else ""
        cards.append(
            f"""<div class="card"><h2>{_esc(r["name"])}</h2><div class="row">
<div class="orig"><img src="{data_uri(image_of(r["image"]))}" width="{THUMB}" alt="original"></div>
<div><div>model says <b>{_esc(r["predicted"])}</b> with {r["confidence"]:.1%}{kind}{truth}</div>{_bars(r["top"])}</div>
</div>
{_attribution(r, image_of(r["image"]))}
<div class="section"><b>Nearest real images the model would put in another class</b>
{_gallery(r["other_class"]["counterfactuals"], image_of, r["other_class"]["status"])}</div>
<div class="section"><b>Nearest real images the model would call {_esc(r["runner_up_name"])} (its second choice)</b>
{_gallery(r["runner_up"]["counterfactuals"], image_of, r["runner_up"]["status"])}</div>
<div class="section"><b>Captions near “{_esc(r["text"])}” (similarity {r["text_similarity"]:.3f}) that would
<span class="down">lower</span> the score below {r["lower_level"]:.3f}</b>{_captions(r, "lower", "down")}</div>
<div class="section"><b>…and that would <span class="up">raise</span> it above {r["raise_level"]:.3f}</b>
{_captions(r, "raise", "up")}</div></div>"""
        )
    stat_html = "".join(f'<div class="stat"><b>{_esc(v)}</b>{_esc(k)}</div>' for k, v in stats)
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>jaxplain report — {_esc(s["model"])}</title><style>{CSS}</style></head><body>
<h1>Why did the model decide that?</h1>
<div class="muted">Model <b>{_esc(s["model"])}</b> (fingerprint {_esc(s["fingerprint"])}) · image bank of
{s["image_bank"]:,} real images · caption bank of {s["text_bank"]:,} captions. Every counterfactual below is a real item
from a bank, re-scored by the model: the class and probability under each picture are the model's own output for it;
distance is between unit embeddings. {_esc(DECISION_TEXT[s.get("decision", "softmax")])}</div>
<div class="summary">{stat_html}</div>
{"".join(cards)}
</body></html>
"""

"""Per-word attributions shown as highlighted text: HTML, a terminal, or a PNG.

Every word gets a colour and a strength. Signed scores (any negative one, unless ``signed`` says
otherwise) are red (:data:`~jaxplain.viz.heatmap.POSITIVE`) when positive and blue
(:data:`~jaxplain.viz.heatmap.NEGATIVE`) when negative; unsigned scores are :data:`UNSIGNED` orange.
The strength is ``alpha = min(|score| / vmax, 1)``, with ``vmax`` the largest magnitude by default,
so the strongest word is drawn at full colour. HTML uses ``alpha`` as the background's opacity; the
terminal and the PNG, which have no opacity, blend white toward the colour by ``alpha``.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from jaxplain.viz.heatmap import NEGATIVE, POSITIVE

UNSIGNED = (255, 140, 0)  # orange
WHITE = (255, 255, 255)
FONT_SIZE = 14
MARGIN = 8  # around the picture, in pixels
PAD = 3  # inside each word's box, around the text
GAP = 4  # between boxes, across and down


def _word_colours(
    words: Sequence[str], scores: Any, signed: bool | None = None, vmax: float | None = None
) -> tuple[list[tuple[int, int, int]], np.ndarray]:
    """The full colour of each word and its strength ``alpha`` ``[N]`` in ``[0, 1]``.

    Args:
      words: ``N`` words.
      scores: ``[N]`` attribution scores; NaN gives strength 0.
      signed: red/blue by sign if True, orange by magnitude if False; None picks True iff any score
        is negative.
      vmax: the magnitude shown at full strength (larger ones are clipped); default the largest.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(words) != len(s):
        raise ValueError(f"{len(words)} words but {len(s)} scores: give one score per word")
    s = np.where(np.isnan(s), 0.0, s)
    if signed is None:
        signed = bool((s < 0).any())
    if vmax is None:
        vmax = float(np.abs(s).max()) if s.size else 0.0
    vmax = vmax if vmax > 0 else 1.0  # all-zero scores: every word unhighlighted
    alpha = np.clip(np.abs(s) / vmax, 0.0, 1.0)
    hues = [(NEGATIVE if x < 0 else POSITIVE) if signed else UNSIGNED for x in s]
    return hues, alpha


def _blend(hue: tuple[int, int, int], alpha: float) -> tuple[int, int, int]:
    """White blended toward ``hue`` by ``alpha``, rounded."""
    return tuple(round(w + alpha * (c - w)) for w, c in zip(WHITE, hue))


def highlight_html(words: Sequence[str], scores: Any, signed: bool | None = None, vmax: float | None = None) -> str:
    """One HTML fragment, ``<span class="jx-words">…</span>``, with a highlighted ``<span>`` per word.

    Each word's background is ``rgba(r,g,b,alpha)`` (alpha rounded to 3 decimals) and its ``title``
    (shown on hover) is its score, ``{:+.3g}``. Words are HTML-escaped and separated by spaces.
    """
    hues, alpha = _word_colours(words, scores, signed, vmax)
    raw = np.asarray(scores, dtype=np.float64).reshape(-1)
    spans = [
        f'<span style="background: rgba({r},{g},{b},{round(float(a), 3):g})" title="{html.escape(f"{x:+.3g}")}">'
        f"{html.escape(str(w))}</span>"
        for w, (r, g, b), a, x in zip(words, hues, alpha, raw)
    ]
    return f'<span class="jx-words">{" ".join(spans)}</span>'


def highlight_ansi(words: Sequence[str], scores: Any, signed: bool | None = None, vmax: float | None = None) -> str:
    """The words for a terminal: each on a 24-bit background ``\\x1b[48;2;r;g;bm``, in black, then reset.

    The background is white blended toward the word's colour by its strength.
    """
    hues, alpha = _word_colours(words, scores, signed, vmax)
    out = []
    for w, hue, a in zip(words, hues, alpha):
        r, g, b = _blend(hue, float(a))
        # Black text: the backgrounds are pale, and a dark terminal's default text is white.
        out.append(f"\x1b[48;2;{r};{g};{b}m\x1b[30m{w}\x1b[0m")
    return " ".join(out)


def highlight_image(
    words: Sequence[str],
    scores: Any,
    width: int = 600,
    signed: bool | None = None,
    vmax: float | None = None,
) -> Image.Image:
    """The words drawn in black on coloured boxes, wrapped to ``width`` pixels: an RGB picture.

    Boxes are filled with white blended toward each word's colour by its strength. The first box's
    top-left corner is at ``(MARGIN, MARGIN)``; a box is its text's extent plus ``PAD`` on each side,
    and boxes are ``GAP`` apart. A word wider than a line gets a line of its own and is cut at the edge.
    """
    hues, alpha = _word_colours(words, scores, signed, vmax)
    font = ImageFont.load_default(size=FONT_SIZE)
    ascent, descent = font.getmetrics()
    box_h = ascent + descent + 2 * PAD
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    boxes = []  # (x, y, box width) per word
    x, y = MARGIN, MARGIN
    for w in words:
        bw = round(measure.textlength(str(w), font=font)) + 2 * PAD
        if x > MARGIN and x + bw > width - MARGIN:
            x, y = MARGIN, y + box_h + GAP
        boxes.append((x, y, bw))
        x += bw + GAP
    height = (y + box_h + MARGIN) if words else 2 * MARGIN
    img = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(img)
    for w, hue, a, (bx, by, bw) in zip(words, hues, alpha, boxes):
        draw.rectangle((bx, by, bx + bw - 1, by + box_h - 1), fill=_blend(hue, float(a)))
        draw.text((bx + PAD, by + PAD), str(w), fill=(0, 0, 0), font=font)
    return img

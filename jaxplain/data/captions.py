"""Captions for Fashion-MNIST classes: templates × synonyms × optional adjectives.

A caption is fixed by four indices: its class, a template, a synonym of the class name and an
adjective (``-1`` for none), e.g. ``("a photo of a {}.", "sneaker", "white")`` → ``"a photo of a white
sneaker."``. :meth:`CaptionSpace.draw` samples those indices for a batch of labels with a NumPy
``Generator`` (same seed, same captions); training looks the drawn captions up in a table tokenised
once (:meth:`CaptionSpace.flat_index`), so sampling costs no tokenisation per step.

The first synonym of each class is its official Fashion-MNIST name, and the templates include
:data:`jaxplain.zeroshot.DEFAULT_TEMPLATES`, so zero-shot prompts are in the training distribution.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jaxplain.data.fashion_mnist import CLASS_NAMES
from jaxplain.zeroshot import DEFAULT_TEMPLATES

SYNONYMS: tuple[tuple[str, ...], ...] = (
    (CLASS_NAMES[0], "t-shirt", "top", "tee", "short-sleeved top"),
    (CLASS_NAMES[1], "pair of trousers", "trousers", "pair of pants", "pair of jeans"),
    (CLASS_NAMES[2], "sweater", "jumper", "long-sleeved sweater", "knitted pullover"),
    (CLASS_NAMES[3], "gown", "summer dress", "frock", "long dress"),
    (CLASS_NAMES[4], "jacket", "trench coat", "winter coat", "long coat"),
    (CLASS_NAMES[5], "pair of sandals", "summer sandal", "beach sandal", "strappy sandal"),
    (CLASS_NAMES[6], "button-down shirt", "blouse", "collared shirt", "long-sleeved shirt"),
    (CLASS_NAMES[7], "trainer", "running shoe", "pair of sneakers", "sports shoe"),
    (CLASS_NAMES[8], "handbag", "purse", "tote bag", "shoulder bag"),
    (CLASS_NAMES[9], "boot", "pair of ankle boots", "bootie", "short boot"),
)
TEMPLATES: tuple[str, ...] = (
    *DEFAULT_TEMPLATES,
    "a {}.",
    "{}",
    "a picture of a {}.",
    "an image of a {}.",
    "a product photo of a {}.",
    "a catalogue photo of a {}.",
    "a grayscale photo of a {}.",
    "a thumbnail of a {}.",
    "a small image of a {}.",
    "a {} for sale.",
    "a photo of my {}.",
    "a centered photo of a {}.",
    "a blurry photo of a {}.",
    "a pixelated picture of a {}.",
)
ADJECTIVES: tuple[str, ...] = (
    "dark",
    "light",
    "plain",
    "striped",
    "patterned",
    "printed",
    "casual",
    "classic",
    "simple",
    "black",
    "white",
    "grey",
    "new",
    "worn",
    "stylish",
    "cheap",
)


@dataclasses.dataclass(frozen=True)
class CaptionSpace:
    """Every caption that templates × synonyms × adjectives can make, per class.

    Attributes:
      synonyms: per class, the names it may be called (the first is the official name).
      templates: format strings with one ``{}`` for the (adjective +) name.
      adjectives: words that may go before the name.
      p_adjective: probability that a drawn caption has an adjective.
    """

    synonyms: tuple[tuple[str, ...], ...] = SYNONYMS
    templates: tuple[str, ...] = TEMPLATES
    adjectives: tuple[str, ...] = ADJECTIVES
    p_adjective: float = 0.5

    @property
    def num_classes(self) -> int:
        return len(self.synonyms)

    @property
    def table_shape(self) -> tuple[int, int, int, int]:
        """``(classes, templates, max synonyms, adjectives + 1)``: the layout of :meth:`table_texts`."""
        return (self.num_classes, len(self.templates), max(map(len, self.synonyms)), len(self.adjectives) + 1)

    def text(self, label: int, template: int, synonym: int, adjective: int) -> str:
        """One caption from its indices (``adjective == -1``: no adjective)."""
        name = self.synonyms[label][synonym]
        if adjective >= 0:
            name = f"{self.adjectives[adjective]} {name}"
        return self.templates[template].format(name)

    def draw(self, rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
        """Random caption indices ``[N, 3]`` (template, synonym, adjective or -1) for labels ``[N]``.

        Template, synonym and adjective are independent and uniform; the adjective is present with
        probability :attr:`p_adjective`.
        """
        labels = np.asarray(labels)
        n = len(labels)
        counts = np.asarray([len(s) for s in self.synonyms])[labels]
        u = rng.random((4, n))
        template = (u[0] * len(self.templates)).astype(np.int64)
        synonym = (u[1] * counts).astype(np.int64)
        adjective = np.where(u[2] < self.p_adjective, (u[3] * len(self.adjectives)).astype(np.int64), -1)
        return np.stack([template, synonym, adjective], axis=1)

    def captions(self, rng: np.random.Generator, labels: Sequence[int] | np.ndarray) -> list[str]:
        """Random captions for labels ``[N]`` (deterministic for a given generator state)."""
        labels = np.asarray(labels)
        return [self.text(int(c), *map(int, d)) for c, d in zip(labels, self.draw(rng, labels))]

    def flat_index(self, labels: np.ndarray, draws: np.ndarray) -> np.ndarray:
        """Row ``[N]`` of each drawn caption in :meth:`table_texts`."""
        _, nt, ns, na = self.table_shape
        return ((np.asarray(labels) * nt + draws[:, 0]) * ns + draws[:, 1]) * na + draws[:, 2] + 1

    def table_texts(self) -> list[str]:
        """All captions in :attr:`table_shape` order, flattened (classes with fewer synonyms repeat
        their last one, so every row is a valid caption of its class)."""
        nc, nt, ns, na = self.table_shape
        return [
            self.text(c, t, min(s, len(self.synonyms[c]) - 1), a - 1)
            for c in range(nc)
            for t in range(nt)
            for s in range(ns)
            for a in range(na)
        ]

    def bank(self, size: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
        """``size`` distinct captions, as balanced over the classes as the space allows, and their labels.

        Captions are drawn class by class, skipping repeats, until each class has its share; the bank is
        grouped by class and is the same for the same ``size`` and ``seed``.
        """
        total = int(np.prod(self.table_shape[1:])) * self.num_classes
        if size > total // 2:
            raise ValueError(f"a bank of {size} distinct captions is too large for this space ({total} captions)")
        rng = np.random.default_rng(seed)
        per_class = [size // self.num_classes + (c < size % self.num_classes) for c in range(self.num_classes)]
        texts: list[str] = []
        labels: list[int] = []
        seen: set[str] = set()
        for c, want in enumerate(per_class):
            got = 0
            while got < want:
                for text in self.captions(rng, np.full(2 * (want - got), c)):
                    if text not in seen and got < want:
                        seen.add(text)
                        texts.append(text)
                        labels.append(c)
                        got += 1
        return texts, np.asarray(labels, np.int32)


def write_bank(path: str | Path, texts: Sequence[str]) -> Path:
    """Write captions one per line (UTF-8)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    return path


def read_bank(path: str | Path | None = None) -> list[str]:
    """Captions of a text bank file, one per line; by default the bank shipped with jaxplain."""
    if path is None:
        from jaxplain.data.fashion_mnist import shipped_dir

        path = shipped_dir() / "captions.txt"
    from jaxplain.data.lines import read_lines

    return [line for line in read_lines(path, "captions") if line.strip()]

"""``jaxplain explain``: counterfactuals for every pair of a JSON-lines file, proved by the model.

Each line of the pairs file is one pair::

    {"image": "shoes/01.png", "classes": ["Sandal", "Sneaker", "Ankle boot"], "want": "runner-up"}
    {"image": "fashion-mnist-test:17", "text": "a photo of a bag", "want": "similarity<=0.2"}
    {"image": "cat.jpg", "text": "a photo of a cat", "side": "text", "want": "similarity<=0.1"}

Fields: ``image`` (a path, relative to the pairs file, or ``fashion-mnist-test:N`` for an image of the
shipped test set), ``text`` (similarity and retrieval outcomes; the text that changes on the text
side), ``classes`` and optional ``templates`` (class outcomes), ``side`` (``image``, the default, or
``text``), ``want`` (see :class:`jaxplain.objectives.Want`) and an optional ``id`` echoed back.
The results file has one line per input line, in the same order; a bad line gets
``"status": "error"`` with a message naming the line, and the other pairs are still processed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from jaxplain.commands.common import EXIT_BAD_ITEMS, EXIT_OK, read_lines
from jaxplain.errors import InputError, JaxplainError

SHIPPED_PREFIX = "fashion-mnist-test:"
FIELDS = {"id", "image", "text", "classes", "templates", "side", "want"}


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "explain",
        help="find real counterfactuals for every pair of a JSON-lines file",
        description=(__doc__ or "").split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="checkpoint directory, shipped model name, or hub id")
    p.add_argument("--bank", required=True, help="a bank directory made by `jaxplain bank build` with this model")
    p.add_argument("--text-bank", help="a text bank for the pairs with side 'text' (default: --bank)")
    p.add_argument("--pairs", required=True, help="the pairs, one JSON object per line")
    p.add_argument("--out", required=True, help="results, one JSON object per pair, in input order")
    p.add_argument("--k", type=int, default=64, help="neighbours retrieved per query (default 64)")
    p.add_argument("--top", type=int, default=3, help="counterfactuals kept per pair (default 3)")
    p.add_argument(
        "--search",
        choices=["auto", "index", "exhaustive"],
        default="auto",
        help="index: targets + retrieval; exhaustive: verify every bank item (the oracle); auto (default): "
        "exhaustive while pairs × bank items is small, index beyond, then exhaustive for the pairs that "
        "retrieval left without an answer while they fit a larger budget",
    )
    p.set_defaults(func=run)
    return p


def _resolve_image(ref: Any, base: Path, shipped) -> Any:
    if not isinstance(ref, str) or not ref:
        raise InputError(f"'image' must be a path, got {ref!r}")
    if ref.startswith(SHIPPED_PREFIX):
        images = shipped()
        try:
            i = int(ref[len(SHIPPED_PREFIX) :])
        except ValueError:
            raise InputError(f"{ref!r}: expected {SHIPPED_PREFIX}N") from None
        if not 0 <= i < len(images):
            raise InputError(f"{ref!r}: the shipped test set has images 0 to {len(images) - 1}")
        return images[i]
    path = Path(ref)
    return path if path.is_absolute() else base / path


def _parse_line(text: str, n: int, base: Path, model, shipped) -> dict:
    """One valid pair, decoded and checked; any problem raises InputError naming the line."""
    from jaxplain.objectives import Want
    from jaxplain.zeroshot import DEFAULT_TEMPLATES, prompts

    where = f"line {n}"
    try:
        rec = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(rec, dict):
        raise InputError(f"{where}: expected a JSON object")
    unknown = sorted(set(rec) - FIELDS)
    if unknown:
        raise InputError(f"{where}: unknown field(s) {', '.join(unknown)}; the fields are {', '.join(sorted(FIELDS))}")
    try:
        if "want" not in rec:
            raise InputError("no 'want'")
        want = Want.parse(rec["want"])
        side = rec.get("side", "image")
        if side not in ("image", "text"):
            raise InputError(f"'side' must be 'image' or 'text', got {side!r}")
        if "image" not in rec:
            raise InputError("no 'image'")
        image = _resolve_image(rec["image"], base, shipped)
        pixels = model.processing.pixels(image, str(rec["image"]))
        classes = rec.get("classes")
        templates = rec.get("templates", list(DEFAULT_TEMPLATES))
        if want.needs_classes:
            if not isinstance(classes, list) or not classes:
                raise InputError(f"'{want}' needs 'classes', a list of class names")
            prompts(classes, templates)  # checks names and templates
            if want.name is not None and want.name not in classes:
                raise InputError(f"unknown class {want.name!r}; the classes are {', '.join(classes)}")
            if want.kind == "runner-up" and len(classes) < 2:
                raise InputError("runner-up needs at least two classes")
        text = rec.get("text")
        if (side == "text" or not want.needs_classes) and not (isinstance(text, str) and text.strip()):
            raise InputError(f"'{want}' on the {side} side needs a non-empty 'text'")
        if text is not None:
            model.tokenizer.ids(text, "'text'")
    except InputError as e:
        raise InputError(f"{where}: {e}") from None
    return {
        "line": n,
        "id": rec.get("id"),
        "side": side,
        "want": want,
        "pixels": pixels,
        "text": text,
        "classes": tuple(classes) if want.needs_classes else None,
        "templates": tuple(templates) if want.needs_classes else None,
    }


def run(args: argparse.Namespace) -> int:
    from jaxplain.counterfactual.bank import Bank
    from jaxplain.counterfactual.engine import counterfactuals
    from jaxplain.data import fashion_mnist
    from jaxplain.models import load

    start = time.perf_counter()
    model = load(args.model)
    banks = {"image": Bank.load(args.bank, model=model)}
    banks["text"] = Bank.load(args.text_bank, model=model) if args.text_bank else banks["image"]
    pairs_path = Path(args.pairs)
    lines = read_lines(pairs_path, "pairs")
    cache: dict[str, np.ndarray] = {}

    def shipped():
        if "x" not in cache:
            cache["x"] = fashion_mnist.load_shipped_test()[0]
        return cache["x"]

    results: list[dict | None] = [None] * len(lines)
    good: list[dict] = []
    for n, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            good.append(_parse_line(text, n, pairs_path.parent, model, shipped))
        except InputError as e:
            results[n - 1] = {"line": n, "status": "error", "error": str(e)}
    groups: dict[tuple, list[dict]] = {}
    for p in good:
        groups.setdefault((p["side"], p["classes"], p["templates"]), []).append(p)
    for (side, classes, templates), members in groups.items():
        bank = banks[side]
        try:
            res = counterfactuals(
                model,
                np.stack([p["pixels"] for p in members]),
                [p["text"] for p in members] if all(p["text"] for p in members) else None,
                want=[p["want"] for p in members],
                bank=bank,
                side=side,
                classes=list(classes) if classes else None,
                templates=list(templates) if templates else (),
                k=args.k,
                top=args.top,
                search=args.search,
            )
        except JaxplainError as e:
            for p in members:
                results[p["line"] - 1] = {"line": p["line"], "status": "error", "error": f"line {p['line']}: {e}"}
            continue
        for p, r in zip(members, res.pairs):
            results[p["line"] - 1] = {"line": p["line"], "id": p["id"], **r.to_record(), "pair": p["line"] - 1}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    with tmp.open("w", encoding="utf-8") as f:
        for n, r in enumerate(results, start=1):
            f.write(json.dumps(r or {"line": n, "status": "empty"}, ensure_ascii=False) + "\n")
    tmp.replace(out)
    errors = [r for r in results if r and r["status"] == "error"]
    for r in errors:
        print(f"jaxplain: {r['error']}", file=sys.stderr)
    counts = {s: sum(1 for r in results if r and r["status"] == s) for s in ("found", "not_found", "already", "error")}
    print(
        f"explained {len(good)} pairs in {time.perf_counter() - start:.1f} s: {counts['found']} found, "
        f"{counts['not_found']} not found, {counts['already']} already holding, {counts['error']} bad lines → {out}",
        file=sys.stderr,
    )
    return EXIT_BAD_ITEMS if errors else EXIT_OK

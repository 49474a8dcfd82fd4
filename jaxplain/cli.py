"""The ``jaxplain`` command line.

Each sub-command is a small function over parsed arguments; errors the user can fix
(:class:`~jaxplain.errors.JaxplainError`) print one clear message, without a traceback, and exit 2.
Batch commands report bad items by name, finish the good ones, and exit 1 if any item failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from jaxplain.errors import InputError, JaxplainError

EXIT_OK, EXIT_BAD_ITEMS, EXIT_ERROR = 0, 1, 2


def _progress(total: int, desc: str, unit: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=True)


def _report(errors: list[dict]) -> None:
    for e in errors:
        print(f"jaxplain: skipped {e['item']}: {e['error']}", file=sys.stderr)


def _encode_stream(
    n: int,
    prepare: Callable[[int], np.ndarray],
    name: Callable[[int], str],
    encode: Callable[[np.ndarray], np.ndarray],
    batch_size: int,
    desc: str,
    unit: str,
) -> tuple[np.ndarray, list[int], list[dict]]:
    """Prepare items one by one (catching bad ones), encode the good ones a batch at a time."""
    rows, kept, errors, pending = [], [], [], []
    with _progress(n, desc, unit) as bar:
        for i in range(n):
            try:
                pending.append(prepare(i))
                kept.append(i)
            except InputError as e:
                errors.append({"item": name(i), "error": str(e).removeprefix(f"{name(i)}: ")})
            if len(pending) == batch_size or (i == n - 1 and pending):
                rows.append(encode(np.stack(pending)))
                pending = []
            bar.update(1)
    return (np.concatenate(rows) if rows else None), kept, errors


def cmd_embed(args: argparse.Namespace) -> int:
    """``jaxplain embed``: unit-norm float32 embeddings of images or texts, in input order."""
    from jaxplain.data.images import list_images
    from jaxplain.models import load

    out = Path(args.out)
    if out.suffix != ".npy":
        raise InputError(f"--out {out}: the output file must end in .npy")
    model = load(args.model, dtype=args.dtype)
    if args.images:
        files = list_images(args.images)
        if not files:
            raise InputError(f"no image files found in {' '.join(args.images)}")
        items = [str(f) for f in files]
        emb, kept, errors = _encode_stream(
            len(files),
            lambda i: model.processing.pixels(files[i], str(files[i])),
            lambda i: str(files[i]),
            lambda x: model.encode_pixels(x, args.batch_size),
            args.batch_size,
            "embedding images",
            "img",
        )
    else:
        path = Path(args.texts)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"{path}: cannot read it as UTF-8 text ({e})") from None
        items = lines
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            emb, kept, errors = _encode_stream(
                len(lines),
                lambda i: model.tokenizer.pad(model.tokenizer.ids(lines[i], f"{path}:{i + 1}")),
                lambda i: f"{path}:{i + 1}",
                lambda x: model.encode_ids(x, args.batch_size),
                args.batch_size,
                "embedding texts",
                "text",
            )
        for w in caught:
            print(f"jaxplain: warning: {w.message}", file=sys.stderr)
    _report(errors)
    if emb is None:
        print(f"jaxplain: no item could be embedded ({len(errors)} bad); nothing written", file=sys.stderr)
        return EXIT_BAD_ITEMS
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, emb.astype(np.float32))
    manifest = {
        "model": model.name,
        "fingerprint": model.fingerprint,
        "kind": "image" if args.images else "text",
        "shape": list(emb.shape),
        "items": [items[i] for i in kept],
        "errors": errors,
    }
    manifest_path = out.with_suffix(".json")
    manifest_path.write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    print(
        f"wrote {emb.shape[0]} embeddings of dimension {emb.shape[1]} to {out} "
        f"(row → item in {manifest_path}){f'; {len(errors)} bad items skipped' if errors else ''}",
        file=sys.stderr,
    )
    return EXIT_BAD_ITEMS if errors else EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxplain",
        description="Explain the decisions of CLIP-style vision-language models at scale, in JAX.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "embed",
        help="write unit-norm embeddings of images or texts to a .npy file",
        description=(
            "Encode images (files, or directories whose image files are taken in file-name order) or texts "
            "(one per line) and write unit-norm float32 embeddings [N, E] to OUT, in input order. "
            "OUT with .json instead of .npy lists the item of every row, the model's fingerprint, and the "
            "bad items that were skipped (exit status 1 if there were any)."
        ),
    )
    p.add_argument("--model", required=True, help="checkpoint directory, shipped model name, or hub id")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", nargs="+", metavar="DIR_OR_FILE", help="image files and/or directories")
    src.add_argument("--texts", metavar="FILE", help="a UTF-8 text file, one text per line")
    p.add_argument("--out", required=True, help="output .npy file")
    p.add_argument("--batch-size", type=int, default=64, help="items per forward pass (default 64)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="compute dtype")
    p.set_defaults(func=cmd_embed)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "batch_size", 1) < 1:
        print("jaxplain: error: --batch-size must be at least 1", file=sys.stderr)
        return EXIT_ERROR
    try:
        return args.func(args)
    except JaxplainError as e:
        print(f"jaxplain: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("jaxplain: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

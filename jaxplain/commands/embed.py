"""``jaxplain embed``: unit-norm float32 embeddings of images or texts, in input order."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

from jaxplain.commands.bank import add_inputs, record_shards
from jaxplain.commands.common import (
    EXIT_BAD_ITEMS,
    EXIT_OK,
    bad_items,
    encode_stream,
    output,
    positive_int,
    report,
)
from jaxplain.data.lines import read_items
from jaxplain.errors import InputError


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "embed",
        help="write unit-norm embeddings of images or texts to a .npy file",
        description=(
            "Encode images (files, or directories whose image files are taken in file-name order) or texts "
            "(one per line), or the items of webdataset tar shards or parquet files, and write unit-norm float32 "
            "embeddings [N, E] to OUT, in input order. "
            "OUT with .json instead of .npy lists the item of every row, the model's fingerprint, and the "
            "bad items that were skipped (exit status 1 if there were any)."
        ),
    )
    add_inputs(p)
    p.add_argument("--out", required=True, help="output .npy file")
    p.add_argument("--batch-size", type=positive_int, default=64, help="items per forward pass (default 64)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="compute dtype")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from jaxplain.outputs import remove_stale

    with output(args.out, suffixes=[".npy"]) as out:
        remove_stale(out.with_suffix(".json"))
        return _run(args, out)


def _run(args: argparse.Namespace, out: Path) -> int:
    from jaxplain.commands.common import image_files
    from jaxplain.models import load
    from jaxplain.outputs import save_npy, write_json

    model = load(args.model, dtype=args.dtype)
    shards = record_shards(args.images or [args.texts], "images" if args.images else "texts")
    if shards is not None:
        emb, items, errors = _embed_records(args, model, shards)
        kept = range(len(items))
    elif args.images:
        files = image_files(args.images)
        if not files:
            raise InputError(f"no image files found in {' '.join(args.images)}")
        items = [str(f) for f in files]
        emb, kept, errors = encode_stream(
            len(files),
            lambda i: model.processing.pixels(files[i], items[i]),
            lambda i: items[i],
            lambda x: model.encode_pixels(x, args.batch_size),
            args.batch_size,
            "embedding images",
            "img",
        )
    else:
        path = Path(args.texts)
        items, problems = read_items(path, "texts")
        if not items:
            raise InputError(f"{path}: no texts (the file is empty)")

        def prepare(i: int):
            if i + 1 in problems:
                raise InputError(problems[i + 1])
            return model.tokenizer.pad(model.tokenizer.ids(items[i], f"{path}:{i + 1}"))

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            emb, kept, errors = encode_stream(
                len(items),
                prepare,
                lambda i: f"{path}:{i + 1}",
                lambda x: model.encode_ids(x, args.batch_size),
                args.batch_size,
                "embedding texts",
                "text",
            )
        for w in caught:
            print(f"jaxplain: warning: {w.message}", file=sys.stderr)
    report(errors)
    if emb is None:
        raise InputError(f"no item could be embedded ({bad_items(errors)}); nothing written")
    save_npy(out, emb.astype(np.float32))
    manifest = {
        "model": model.name,
        "fingerprint": model.fingerprint,
        "kind": "image" if args.images else "text",
        "shape": list(emb.shape),
        "items": [items[i] for i in kept],
        "errors": errors,
    }
    manifest_path = out.with_suffix(".json")
    write_json(manifest_path, manifest)
    skipped = f"; {len(errors)} bad items skipped" if errors else ""
    print(
        f"wrote {emb.shape[0]} embeddings of dimension {emb.shape[1]} to {out} "
        f"(row → item in {manifest_path}){skipped}",
        file=sys.stderr,
    )
    return EXIT_BAD_ITEMS if errors else EXIT_OK


def _embed_records(args, model, shards) -> tuple[np.ndarray | None, list[str], list[dict]]:
    """Embeddings of the records of tar/parquet shards, read lazily: ``(emb [K, E] or None, the K good
    items' names, the bad items)``."""
    from jaxplain.batching import encode_batches, progress
    from jaxplain.counterfactual.bank import record_item
    from jaxplain.data.sources import read_records

    kind = "image" if args.images else "text"
    if kind == "image":
        encode, workers = (lambda x: model.encode_pixels(x, args.batch_size)), None

        def prepare(r):
            if r.image is None:
                raise InputError(f"{r.where}: no image")
            return model.processing.pixels(r.image, r.where)
    else:
        encode, workers = (lambda x: model.encode_ids(x, args.batch_size)), 0

        def prepare(r):
            if r.text is None:
                raise InputError(f"{r.where}: no text")
            return model.tokenizer.pad(model.tokenizer.ids(r.text, r.where))

    rows, items, errors = [], [], []
    with warnings.catch_warnings(record=True) as caught, progress(None, f"embedding {kind}s", "item") as bar:
        warnings.simplefilter("always")
        for batch in encode_batches(read_records(shards), prepare, lambda r: r.where, encode, args.batch_size, workers):
            if batch.embeddings is not None:
                rows.append(batch.embeddings)
            items += [record_item(r, kind) for r in batch.items]
            errors += batch.errors
            bar.update(len(batch.items) + len(batch.errors))
    for w in caught:
        print(f"jaxplain: warning: {w.message}", file=sys.stderr)
    return (np.concatenate(rows) if rows else None), items, errors

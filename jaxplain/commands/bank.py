"""``jaxplain bank build``: encode real images or texts with a model and save them as a searchable bank."""

from __future__ import annotations

import argparse
import sys
import time
import warnings

from jaxplain.commands.common import EXIT_BAD_ITEMS, EXIT_OK, add_model_and_items, read_lines, report
from jaxplain.errors import InputError

SHARD_SIZE = 100_000


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "bank",
        help="build banks of real images or texts to retrieve counterfactuals from",
        description="Banks of real items, embedded by one model and indexed for nearest-neighbour search.",
    )
    sub = p.add_subparsers(dest="bank_command", required=True, metavar="ACTION")
    b = sub.add_parser(
        "build",
        help="embed images or texts and save them as a bank",
        description=(
            "Encode images (files, or directories whose image files are taken in file-name order) or texts "
            "(one per line) with MODEL, index the embeddings, and save the bank to the directory BANK "
            "atomically (an existing bank there is replaced only once the new one is complete). Bad items are "
            "reported by name and skipped; the exit status is 1 if there were any."
        ),
    )
    add_model_and_items(b)
    b.add_argument("--out", required=True, metavar="BANK", help="the bank directory to write")
    b.add_argument(
        "--index",
        default="auto",
        choices=["auto", "scann", "exact"],
        help="nearest-neighbour index: exact top-k, ScaNN, or auto (exact for small banks; default)",
    )
    b.add_argument("--batch-size", type=int, default=64, help="items per forward pass (default 64)")
    b.add_argument(
        "--shard-size",
        type=int,
        default=SHARD_SIZE,
        help=f"items per shard (default {SHARD_SIZE:,}): more items than this make a directory of shards, each "
        "saved as soon as it is done, so a killed build run again resumes at the first unfinished shard",
    )
    b.add_argument(
        "--recall",
        type=float,
        help="with ScaNN shards: choose each shard's leaves to search for this recall@64 on counterfactual-like "
        "queries (e.g. 0.95), instead of the size rule",
    )
    b.add_argument(
        "--distributed",
        action="store_true",
        help="join a multi-process job (jax.distributed): each process builds every N-th shard",
    )
    b.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run a ``jaxplain bank`` action; the exit status is 1 if bad items were skipped, 0 otherwise."""
    if args.bank_command != "build":
        raise InputError(f"unknown bank action {args.bank_command!r}")
    return build(args)


def build(args: argparse.Namespace) -> int:
    from jaxplain.counterfactual.bank import build_bank
    from jaxplain.data.images import list_images
    from jaxplain.models import load

    start = time.perf_counter()
    if args.shard_size < 1:
        raise InputError(f"--shard-size must be at least 1, got {args.shard_size}")
    if args.recall is not None and not 0 < args.recall <= 1:
        raise InputError(f"--recall must lie in (0, 1], got {args.recall}")
    if args.distributed:
        from jaxplain import distributed

        distributed.initialize()
    model = load(args.model)
    files = list_images(args.images) if args.images else None
    if files is not None and not files:
        raise InputError(f"no image files found in {' '.join(args.images)}")
    texts = read_lines(args.texts, "texts") if args.texts else None
    if len(files if files is not None else texts) > args.shard_size or args.distributed:
        return build_sharded_bank(args, model, files, texts, start)
    if args.images:
        bank, errors = build_bank(model, images=[str(f) for f in files], backend=args.index, batch_size=args.batch_size)
    else:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            bank, errors = build_bank(
                model, texts=texts, backend=args.index, batch_size=args.batch_size, source=args.texts
            )
        for w in caught:
            print(f"jaxplain: warning: {w.message}", file=sys.stderr)
    report(errors)
    out = bank.save(args.out)
    skipped = f"; {len(errors)} bad items skipped" if errors else ""
    print(
        f"wrote bank {out}: {bank.size} {bank.kind}s of dimension {bank.dim}, {bank.index.backend} index, "
        f"model fingerprint {bank.fingerprint}, {time.perf_counter() - start:.1f} s{skipped}",
        file=sys.stderr,
    )
    return EXIT_BAD_ITEMS if errors else EXIT_OK


def build_sharded_bank(args, model, files, texts, start: float) -> int:
    """``bank build`` of more items than one shard holds: a directory of shards (resumable)."""
    from jaxplain.counterfactual.sharded_bank import build_sharded
    from jaxplain.counterfactual.shards import RecallTarget

    recall = RecallTarget(args.recall, 64) if args.recall is not None else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        manifest, counts, errors = build_sharded(
            model,
            args.out,
            images=[str(f) for f in files] if files is not None else None,
            texts=texts,
            shard_size=args.shard_size,
            backend=args.index,
            recall=recall,
            batch_size=args.batch_size,
            source=args.texts,
        )
    for w in caught:
        print(f"jaxplain: warning: {w.message}", file=sys.stderr)
    report(errors)
    done = f"wrote sharded bank {args.out}" if manifest else f"wrote this process's shards of {args.out}"
    print(
        f"{done}: {counts['items']:,} items encoded by this run, {time.perf_counter() - start:.1f} s"
        f"{f'; {len(errors)} bad items skipped' if errors else ''}",
        file=sys.stderr,
    )
    return EXIT_BAD_ITEMS if errors else EXIT_OK

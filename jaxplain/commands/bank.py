"""``jaxplain bank build``: encode real images or texts with a model and save them as a searchable bank."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import warnings

from jaxplain.commands.common import EXIT_BAD_ITEMS, EXIT_OK, fraction, positive_int, report
from jaxplain.data.lines import read_items
from jaxplain.errors import InputError

SHARD_SIZE = 100_000
RECORD_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".parquet", ".jsonl", ".ndjson")


def add_inputs(p: argparse.ArgumentParser, precomputed: bool = False) -> None:
    """``--model`` and the choice of ``--images`` / ``--texts`` (/ ``--precomputed``): files and folders, or
    shards of records (webdataset tars, parquet files) read through :mod:`jaxplain.data.sources`."""
    p.add_argument("--model", required=True, help="checkpoint directory, shipped model name, or hub id")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--images",
        nargs="+",
        metavar="INPUT",
        help="image files and/or directories; or webdataset tar shards (brace patterns such as "
        "'data/{000000..000009}.tar' and globs are expanded) or parquet files with an image column, whose "
        "items are named by their key (the sample's key, the parquet 'key' or 'id' column)",
    )
    src.add_argument(
        "--texts",
        metavar="FILE",
        help="a UTF-8 text file, one text per line; or a parquet file with a caption column ('caption', 'text')",
    )
    if precomputed:
        src.add_argument(
            "--precomputed",
            metavar="PATH",
            help="embeddings made elsewhere, not encoded again: an .npy file [N, E] (with --metadata), or a "
            "clip-retrieval directory (img_emb/, text_emb/, metadata/). MODEL is still required: the bank "
            "records its fingerprint, and by giving it you vouch that MODEL made these embeddings (only their "
            "dimension can be checked)",
        )


def record_shards(inputs: list[str], what: str, shard_size: int | None = None):
    """The shards of tar/parquet ``inputs`` (:func:`~jaxplain.data.sources.list_shards`), or None when they
    are plain files and folders. ``what``: ``"images"`` or ``"texts"``. With ``shard_size``, a parquet file
    of more rows is cut into shards of whole row groups of about that many rows."""
    from jaxplain.data.sources import Columns, SourceConfig, expand_inputs, list_shards

    if not any(p.lower().endswith(RECORD_SUFFIXES) for p in expand_inputs(inputs)):
        return None
    config = SourceConfig() if what == "images" else SourceConfig(columns=Columns(image=None), need_image=False)
    shards = list_shards(inputs, config=config)
    if shards[0].kind == "jsonl":
        raise InputError(
            f"{shards[0].path}: JSON lines hold no {what}; give image files or folders, tar shards or parquet files"
        )
    if shard_size is not None and shards[0].kind == "parquet" and any((s.size or 0) > shard_size for s in shards):
        import pyarrow.parquet as pq

        biggest = (
            max(
                pq.ParquetFile(s.path).metadata.row_group(g).num_rows
                for s in shards
                for g in range(s.start, s.stop or s.start)
            )
            if shards
            else 1
        )
        config = dataclasses.replace(config, row_groups=max(1, shard_size // max(1, biggest)))
        shards = list_shards(inputs, config=config)
    return shards


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
            "atomically (an existing bank there is replaced only once the new one is complete). Images may also "
            "come from webdataset tar shards or parquet files, and a bank may be made of embeddings computed "
            "elsewhere (--precomputed). Bad items are reported by name (shard and row) and skipped; the exit "
            "status is 1 if there were any."
        ),
    )
    add_inputs(b, precomputed=True)
    b.add_argument(
        "--kind",
        default="image",
        choices=["image", "text"],
        help="with --precomputed: which embeddings of a clip-retrieval directory, and the bank's kind (default image)",
    )
    b.add_argument("--metadata", metavar="FILE", help="with --precomputed .npy: its metadata (.parquet, .jsonl, .json)")
    b.add_argument(
        "--label-field",
        metavar="NAME",
        help="with tar or parquet inputs: the integer label of each item, from this parquet column or key of the "
        "sample's json member",
    )
    b.add_argument("--out", required=True, metavar="BANK", help="the bank directory to write")
    b.add_argument(
        "--index",
        default="auto",
        choices=["auto", "scann", "exact"],
        help="nearest-neighbour index: exact top-k, ScaNN, or auto (exact for small banks; default)",
    )
    b.add_argument("--batch-size", type=positive_int, default=64, help="items per forward pass (default 64)")
    b.add_argument(
        "--shard-size",
        type=positive_int,
        default=SHARD_SIZE,
        help=f"items per shard (default {SHARD_SIZE:,}): more items than this make a directory of shards, each "
        "saved as soon as it is done, so a killed build run again resumes at the first unfinished shard; with "
        "tar inputs each tar is a shard (parquet files are cut into row groups of about this many rows)",
    )
    b.add_argument(
        "--recall",
        type=fraction,
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
    """``bank build``: the output checked before any work and held against other runs for the build."""
    from jaxplain.commands.common import output

    with output(args.out, kind="directory", lock=not args.distributed) as out:
        _check_replaceable(out)
        return _build(args)


def _check_replaceable(out) -> None:
    """Refuse, before any work, an ``--out`` that holds something other than a bank (or a sharded build to
    resume): a bank replaces the directory it is saved to."""
    from jaxplain.jobs import JOB_FILE

    if out.is_dir() and any(out.iterdir()) and not (out / "bank.json").is_file() and not (out / JOB_FILE).is_file():
        raise InputError(f"--out {out}: exists and is not a jaxplain bank; refusing to overwrite it (give a new path)")


def _build(args: argparse.Namespace) -> int:
    from jaxplain.commands.common import image_files
    from jaxplain.counterfactual.bank import build_bank
    from jaxplain.models import load

    start = time.perf_counter()
    if args.metadata is not None and args.precomputed is None:
        raise InputError("--metadata goes with --precomputed")
    if args.distributed:
        from jaxplain import distributed

        distributed.initialize()
    if args.precomputed is not None:
        return build_precomputed(args, load(args.model), start)
    shards = record_shards(args.images or [args.texts], "images" if args.images else "texts", args.shard_size)
    if args.label_field is not None and shards is None:
        raise InputError("--label-field reads labels from tar or parquet inputs")
    model = load(args.model)
    if shards is not None:
        return build_from_shards(args, model, shards, start)
    files = image_files(args.images) if args.images else None
    if files is not None and not files:
        raise InputError(f"no image files found in {' '.join(args.images)}")
    texts, problems = read_items(args.texts, "texts") if args.texts else (None, {})
    if len(files if files is not None else texts) > args.shard_size or args.distributed:
        if problems:
            n = min(problems)
            raise InputError(f"{args.texts}: line {n}: {problems[n]}; the texts of a sharded bank must be UTF-8 text")
        return build_sharded_bank(args, model, files, texts, start)
    if args.images:
        bank, errors = build_bank(model, images=[str(f) for f in files], backend=args.index, batch_size=args.batch_size)
    else:
        # A line that is not UTF-8 is a bad item of its own; the others keep their line numbers as their ids.
        good = [i for i in range(len(texts)) if i + 1 not in problems]
        kw = {"source": args.texts} if not problems else {"ids": [f"text:{i + 1}" for i in good]}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            bank, errors = build_bank(
                model, texts=[texts[i] for i in good], backend=args.index, batch_size=args.batch_size, **kw
            )
        errors = [{"item": f"{args.texts}:{n}", "error": why} for n, why in sorted(problems.items())] + errors
        for w in caught:
            print(f"jaxplain: warning: {w.message}", file=sys.stderr)
    return _saved(args, bank, errors, start)


def _saved(args, bank, errors: list[dict], start: float) -> int:
    report(errors)
    out = bank.save(args.out)
    skipped = f"; {len(errors)} bad items skipped" if errors else ""
    print(
        f"wrote bank {out}: {bank.size} {bank.kind}s of dimension {bank.dim}, {bank.index.backend} index, "
        f"model fingerprint {bank.fingerprint}, {time.perf_counter() - start:.1f} s{skipped}",
        file=sys.stderr,
    )
    return EXIT_BAD_ITEMS if errors else EXIT_OK


def build_from_shards(args, model, shards, start: float) -> int:
    """``bank build`` of tar/parquet inputs: one bank, read lazily, or one bank shard per input shard when
    there are more items than ``--shard-size`` (or the count is not known up front, as for tars)."""
    from jaxplain.counterfactual.bank import build_bank
    from jaxplain.data.sources import read_records

    known = all(s.size is not None for s in shards)
    total = sum(s.size for s in shards) if known else None
    if args.distributed or (len(shards) > 1 and (total is None or total > args.shard_size)):
        return build_sharded_bank(args, model, None, None, start, shards)
    kind = "images" if args.images else "texts"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bank, errors = build_bank(
            model,
            **{kind: read_records(shards)},
            backend=args.index,
            batch_size=args.batch_size,
            label_field=args.label_field,
        )
    for w in caught:
        print(f"jaxplain: warning: {w.message}", file=sys.stderr)
    return _saved(args, bank, errors, start)


def build_precomputed(args, model, start: float) -> int:
    """``bank build --precomputed``: a bank of embeddings made elsewhere, in chunks, sharded like the rest."""
    from jaxplain.counterfactual.sharded_bank import build_from_embeddings
    from jaxplain.counterfactual.shards import RecallTarget
    from jaxplain.data.precomputed import open_embeddings

    if args.label_field is not None:
        raise InputError("--label-field reads labels from tar or parquet inputs, not from --precomputed")
    embeddings = open_embeddings(args.precomputed, args.kind, args.metadata)
    recall = RecallTarget(args.recall, 64) if args.recall is not None else None
    path, counts, errors = build_from_embeddings(
        model,
        args.out,
        embeddings,
        shard_size=args.shard_size,
        backend=args.index,
        recall=recall,
        sharded=True if args.distributed else None,
    )
    report(errors)
    done = f"wrote bank {args.out}" if path else f"wrote this process's shards of {args.out}"
    print(
        f"{done}: {counts['items']:,} precomputed {args.kind} embeddings of dimension {embeddings.dim}, model "
        f"fingerprint {model.fingerprint} (not re-encoded), {time.perf_counter() - start:.1f} s"
        f"{f'; {len(errors)} bad rows skipped' if errors else ''}",
        file=sys.stderr,
    )
    return EXIT_BAD_ITEMS if errors else EXIT_OK


def build_sharded_bank(args, model, files, texts, start: float, shards=None) -> int:
    """``bank build`` of more items than one shard holds: a directory of shards (resumable)."""
    from jaxplain.counterfactual.sharded_bank import build_sharded
    from jaxplain.counterfactual.shards import RecallTarget

    recall = RecallTarget(args.recall, 64) if args.recall is not None else None
    if shards is not None:
        inputs = {"images" if args.images else "texts": shards}
    else:
        inputs = {"images": [str(f) for f in files] if files is not None else None, "texts": texts}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        manifest, counts, errors = build_sharded(
            model,
            args.out,
            **inputs,
            shard_size=args.shard_size,
            backend=args.index,
            recall=recall,
            batch_size=args.batch_size,
            source=args.texts,
            label_field=args.label_field,
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

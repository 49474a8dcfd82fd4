"""``jaxplain explain``: counterfactuals for every pair of a JSON-lines file, proved by the model.

Each line of the pairs file is one pair::

    {"image": "shoes/01.png", "classes": ["Sandal", "Sneaker", "Ankle boot"], "want": "runner-up"}
    {"image": "fashion-mnist-test:17", "text": "a photo of a bag", "want": "similarity<=0.2"}
    {"image": "cat.jpg", "text": "a photo of a cat", "side": "text", "want": "similarity<=0.1"}

Fields: ``image`` (a path, relative to the pairs file, or ``fashion-mnist-test:N`` for an image of the
shipped test set), ``text`` (similarity and retrieval outcomes; the text that changes on the text
side), ``classes`` and optional ``templates`` (class outcomes), ``side`` (``image``, the default, or
``text``), ``want`` (see :class:`jaxplain.objectives.Want`) and an optional ``id`` echoed back.
The pairs may also be webdataset tar shards (``'data/{000000..000099}.tar'``: an image member, a
``txt`` caption and a ``json`` member with the fields above) or parquet files (an image column, a
caption column, and columns named as the fields); fields a pair does not give come from --want and
--classes.

The results have one line per input line (tar sample, parquet row), in the same order; a bad one gets
``"status": "error"`` with a message naming it (``line 7``, ``data/000003.tar: sample 000003017``,
``x.parquet: row 5``), and the other pairs are still processed. Each result says which search answered
it (``"search"``: index, exhaustive, or index+exhaustive). With --out DIR the results are numbered parts,
one per input shard (--chunk lines of a JSON-lines file), each written whole and marked done: the same
command run again after a crash resumes where it stopped, and another configuration is refused.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from jaxplain.commands.common import EXIT_BAD_ITEMS, EXIT_OK, positive_int
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
    p.add_argument(
        "--out",
        required=True,
        help="results: a file ending in .jsonl (one JSON object per pair, in input order), or a directory of "
        "numbered parts (part-00000-of-NNNNN.jsonl, a manifest.json once all are done); a killed job run again "
        "with the same options resumes where it stopped",
    )
    p.add_argument(
        "--chunk",
        type=positive_int,
        default=4096,
        help="pairs read, explained and written at once (one part; default 4096)",
    )
    p.add_argument(
        "--want", type=_want_option, help="the wanted outcome of the lines that give none (e.g. other-class)"
    )
    p.add_argument("--classes", help="comma-separated class names for the lines that give none")
    p.add_argument(
        "--devices",
        choices=["auto", "all", "one"],
        default="auto",
        help="all: split each batch over this process's devices (a 'data' mesh; the bank's rows over them for "
        "the oracle); one: the default device; auto (default): all on a GPU or TPU host with several devices, one "
        "on a CPU",
    )
    p.add_argument(
        "--bank-sharding",
        choices=["replicated", "hosts"],
        default="replicated",
        help="replicated (default): every process loads the whole bank and answers its own pairs alone; hosts: "
        "the shards of a sharded bank are split across the processes, each searches and verifies its rows for "
        "every process's pairs, and the answers are merged exactly",
    )
    p.add_argument(
        "--distributed",
        action="store_true",
        help="join a multi-process job (jax.distributed.initialize: a cluster's settings are detected, or set "
        "JAXPLAIN_COORDINATOR, JAXPLAIN_NUM_PROCESSES and JAXPLAIN_PROCESS_ID); each process explains its own parts",
    )
    p.add_argument("--k", type=positive_int, default=64, help="neighbours retrieved per query (default 64)")
    p.add_argument("--top", type=positive_int, default=3, help="counterfactuals kept per pair (default 3)")
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


def _want_option(text: str) -> str:
    """argparse type of ``--want``: a wanted outcome that parses (checked before any work), kept as text."""
    from jaxplain.objectives import Want

    try:
        Want.parse(text)
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


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


def _parse_pair(
    rec: dict,
    where: str,
    base: Path,
    model,
    shipped,
    defaults: dict,
    strict: bool,
    checked: set | None = None,
    bank_size=None,
) -> dict:
    """One valid pair, decoded and checked; any problem raises InputError naming ``where``.

    Everything that can be checked for one line alone is checked here, before the lines are grouped, so that
    a bad line is an error of its own and never of the group it would join. ``bank_size``: side → the number
    of items of that side's bank (``top:K`` must rank fewer).

    ``strict``: unknown fields are an error (JSON lines); the metadata of tar samples and parquet rows
    carries fields of its own (url, width, ...), which are ignored.
    """
    from jaxplain.objectives import Want
    from jaxplain.zeroshot import DEFAULT_TEMPLATES, prompts

    checked = set() if checked is None else checked
    context_size = bank_size or (lambda side: float("inf"))
    unknown = sorted(set(rec) - FIELDS)
    if unknown and strict:
        raise InputError(f"{where}: unknown field(s) {', '.join(unknown)}; the fields are {', '.join(sorted(FIELDS))}")
    rec = {k: v for k, v in rec.items() if k in FIELDS}
    for key, value in defaults.items():
        if value is not None and key not in rec:
            rec[key] = value
    try:
        if "want" not in rec:
            raise InputError("no 'want' (give it on the line, or --want for every line)")
        want = Want.parse(rec["want"])
        side = rec.get("side", "image")
        if side not in ("image", "text"):
            raise InputError(f"'side' must be 'image' or 'text', got {side!r}")
        if "image" not in rec:
            raise InputError("no 'image'")
        ref = rec["image"]
        if isinstance(ref, (bytes, Path)):
            image, name = ref, where
        else:
            image, name = _resolve_image(ref, base, shipped), str(ref)
        # A shipped test image is a valid uint8 array: it is normalised later with the rest of its chunk, in
        # one table lookup (the same pixels, a tenth of the time of one call per image).
        pixels = None if isinstance(image, np.ndarray) else model.processing.pixels(image, name)
        classes = rec.get("classes")
        templates = rec.get("templates", list(DEFAULT_TEMPLATES))
        if want.needs_classes:
            if not isinstance(classes, list) or not classes:
                raise InputError(f"'{want}' needs 'classes', a list of class names")
            if not isinstance(templates, list):
                raise InputError(f"'templates' must be a list of templates, got {templates!r}")
            key = (tuple(map(str, classes)), tuple(map(str, templates)))
            if key not in checked:
                prompts(classes, templates)  # checks names and templates, once per set
                checked.add(key)
            if want.name is not None and want.name not in classes:
                raise InputError(f"unknown class {want.name!r}; the classes are {', '.join(classes)}")
            if want.kind in ("runner-up", "other-class") and len(classes) < 2:
                raise InputError(f"{want} needs at least two classes; the pair has one ({classes[0]!r})")
        if want.kind in ("top", "not-top"):
            size = context_size(side)
            if want.value >= size:
                raise InputError(f"'{want}' ranks among the {side} bank's {size:,} items: k must be below {size:,}")
        text = rec.get("text")
        if (side == "text" or not want.needs_classes) and not (isinstance(text, str) and text.strip()):
            raise InputError(f"'{want}' on the {side} side needs a non-empty 'text'")
        if text is not None:
            model.tokenizer.ids(text, "'text'")
    except InputError as e:
        raise InputError(f"{where}: {e}") from None
    return {
        "id": rec.get("id"),
        "side": side,
        "want": want,
        "pixels": pixels,
        "raw": image if pixels is None else None,
        "text": text,
        "classes": tuple(classes) if want.needs_classes else None,
        "templates": tuple(templates) if want.needs_classes else None,
    }


def _label(record, shard) -> tuple[dict, str]:
    """The fields that place a result (``line`` and ``pair`` for JSON lines; ``where``, ``key`` and
    ``pair``, the row in its shard, otherwise) and the prefix of its messages."""
    if shard.kind == "jsonl":
        n = shard.first_row + record.row + 1
        return {"line": n, "pair": n - 1}, f"line {n}"
    return {"where": record.where, "key": record.key, "pair": record.row}, record.where


def explain_shard(shard, context: dict) -> list[dict]:
    """Explain one input shard: one result per record, in order.

    A bad record becomes an ``"error"`` result naming it; the good ones are grouped by side, classes and
    templates, and each group is explained by one batched call of the engine.
    """
    return explain_pairs(*read_pairs(shard, context), context)


def read_pairs(shard, context: dict) -> tuple[list[dict], list[tuple[int, dict]]]:
    """The host's part of a shard: its records read, checked and decoded to pixels (no model call, so that it
    can run in a thread while the previous shard is explained). Returns the results so far (bad records
    filled in, a placeholder for each good one) and the good pairs with their slots."""
    from jaxplain.data.sources import read_shard

    results: list[dict] = []
    good: list[tuple[int, dict]] = []
    for record in read_shard(shard):
        label, where = _label(record, shard)
        if record.error is not None:
            results.append({**label, "status": "error", "error": f"{where}: {record.error}"})
        elif record.blank:
            results.append({**label, "status": "empty"})
        else:
            rec = dict(record.fields)
            if shard.kind != "jsonl":
                rec.update({k: v for k, v in (("image", record.image), ("text", record.text)) if v is not None})
            try:
                pair = _parse_pair(rec, where, context["base"], context["model"], context["shipped"],
                                   context["defaults"], shard.kind == "jsonl", context["checked"],
                                   lambda side: context["banks"][side].size)  # fmt: skip
                good.append((len(results), {**pair, "label": label, "where": where}))
                results.append({})
            except InputError as e:
                results.append({**label, "status": "error", "error": str(e)})
    deferred = [p for _, p in good if p["pixels"] is None]
    if deferred:
        for p, px in zip(deferred, context["model"].processing([p["raw"] for p in deferred])):
            p["pixels"] = px
    return results, good


def explain_pairs(results: list[dict], good: list[tuple[int, dict]], context: dict) -> list[dict]:
    """The model's part of a shard (see :func:`read_pairs`): each group of pairs explained by one batched call."""
    from jaxplain.counterfactual.engine import counterfactuals

    groups: dict[tuple, list[tuple[int, dict]]] = {}
    for slot, p in good:
        groups.setdefault((p["side"], p["classes"], p["templates"]), []).append((slot, p))
    args = context["args"]
    for (side, classes, templates), members in groups.items():
        pairs = [p for _, p in members]
        try:
            res = counterfactuals(
                context["model"],
                np.stack([p["pixels"] for p in pairs]),
                [p["text"] for p in pairs] if all(p["text"] for p in pairs) else None,
                want=[p["want"] for p in pairs],
                bank=context["banks"][side],
                side=side,
                classes=list(classes) if classes else None,
                templates=list(templates) if templates else (),
                k=args.k,
                top=args.top,
                search=args.search,
                mesh=context["mesh"],
            )
        except JaxplainError as e:
            for slot, p in members:
                results[slot] = {**p["label"], "status": "error", "error": f"{p['where']}: {e}"}
            continue
        for (slot, p), r in zip(members, res.pairs):
            label = p["label"]
            record = r.to_record()
            bad = _non_finite(record)
            if bad is not None:
                results[slot] = {**label, "status": "error", "error": f"{p['where']}: the model gave a non-finite "
                                 f"{bad} (NaN or infinity) for this pair; nothing was written for it"}  # fmt: skip
                continue
            results[slot] = {**{k: v for k, v in label.items() if k != "pair"}, "id": p["id"], **record}
            results[slot]["pair"] = label["pair"]
    return results


def _non_finite(value, key: str | None = None) -> str | None:
    """The key of the first NaN or infinite number in a result (nested lists and dicts), or None."""
    if isinstance(value, float):
        return None if np.isfinite(value) else key or "value"
    if isinstance(value, dict):
        value = value.items()
    elif isinstance(value, (list, tuple)):
        value = ((key, v) for v in value)
    else:
        return None
    for k, v in value:
        found = _non_finite(v, k)
        if found is not None:
            return found
    return None


def _summary(records: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in records:
        out[r["status"]] = out.get(r["status"], 0) + 1
        if "search" in r:
            key = f"search:{r['search']}"
            out[key] = out.get(key, 0) + 1
    return out


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def run(args: argparse.Namespace) -> int:
    """``explain``: the output checked before any work; a single-file output locked for the run (a directory
    is locked by its job, one lock per process)."""
    from jaxplain.outputs import check_output, lock_output, remove_stale

    _split_names(args.classes)  # checked before any work
    out = Path(args.out)
    single = out.suffix == ".jsonl"
    out = check_output(out, suffixes=[".jsonl"]) if single else check_output(out, kind="directory")
    if not single or getattr(args, "distributed", False):
        return _run(args, out)
    with lock_output(out):
        remove_stale(out)
        return _run(args, out)


def _run(args: argparse.Namespace, out: Path) -> int:
    from jaxplain import distributed
    from jaxplain.commands.common import progress
    from jaxplain.counterfactual.bank import Bank
    from jaxplain.data import fashion_mnist
    from jaxplain.data.sources import SourceConfig, list_shards
    from jaxplain.jobs import JobDir, parts_for_process
    from jaxplain.models import load

    start = time.perf_counter()
    if getattr(args, "distributed", False):
        distributed.initialize()
    model = load(args.model)
    if args.bank_sharding == "hosts":
        from jaxplain.counterfactual.hosts import HostShardedBank

        open_bank = HostShardedBank
    else:
        open_bank = Bank.load
    banks = {"image": open_bank(args.bank, model=model)}
    banks["text"] = open_bank(args.text_bank, model=model) if args.text_bank else banks["image"]
    pairs_path = Path(args.pairs)
    shards = list_shards(args.pairs, config=SourceConfig(chunk=args.chunk))
    if not shards or all(s.size == 0 for s in shards):
        raise InputError(f"{args.pairs}: no pairs (empty)")
    cache: dict[str, np.ndarray] = {}

    def shipped():
        if "x" not in cache:
            cache["x"] = fashion_mnist.load_shipped_test()[0]
        return cache["x"]

    defaults = {"want": args.want, "classes": _split_names(args.classes), "templates": None}
    config = {
        "command": "explain",
        "model": {"name": model.name, "fingerprint": model.fingerprint},
        "bank": {kind: banks[kind].identity() for kind in ("image", "text")},
        "pairs": _input_identity(shards),
        "options": {"k": args.k, "top": args.top, "search": args.search, "chunk": args.chunk, **defaults},
    }
    single = out.suffix == ".jsonl"
    job_path = out.with_name(f".{out.name}.parts") if single else out
    if single and job_path.exists():
        _drop_if_other_job(job_path, config)
    job = JobDir(job_path, config, len(shards))
    mine = parts_for_process(job.total, distributed.process_index(), distributed.process_count())
    todo = job.pending(mine)
    context = {"base": pairs_path.parent, "model": model, "shipped": shipped, "banks": banks, "args": args}
    context["defaults"] = defaults
    context["mesh"] = _local_mesh(args.devices)
    context["checked"] = set()  # class and template sets already checked
    # The model, the bank and the compiled functions are millions of long-lived objects: without this, every
    # full collection walks them all again, which cost a streaming job a tenth of its time building records.
    gc.freeze()
    # A tar's count of samples is known once read: the bar counts its pairs as they come, without a total.
    sizes = {j: shards[j].size for j in mine}
    known = None if any(v is None for v in sizes.values()) else sum(sizes.values())
    done_pairs = 0
    with (
        progress(known, "explaining pairs", "pair") as bar,
        ThreadPoolExecutor(1) as reader,
        ThreadPoolExecutor(1) as writer,
    ):
        bar.update(sum(sizes[j] or 0 for j in mine if j not in todo))

        def write(j: int, records: list[dict]) -> list[dict]:
            job.write(j, records, _summary(records))
            return records

        def written(future) -> None:
            nonlocal done_pairs
            records = future.result()
            for r in records:
                if r["status"] == "error":
                    bar.write(f"jaxplain: {r['error']}", file=sys.stderr)
            bar.update(len(records))
            done_pairs += len(records)

        # Three stages overlap: the next shard is read and decoded, and the last one written, while this one is
        # explained (reading and writing are host work; the model's calls release the interpreter).
        ahead = reader.submit(read_pairs, shards[todo[0]], context) if todo else None
        last = None
        for i, j in enumerate(todo):
            prepared = ahead.result()
            ahead = reader.submit(read_pairs, shards[todo[i + 1]], context) if i + 1 < len(todo) else None
            records = explain_pairs(*prepared, context)
            if last is not None:
                written(last)
            last = writer.submit(write, j, records)
        if last is not None:
            written(last)
    for bank in {id(b): b for b in banks.values()}.values():
        if hasattr(bank, "close"):
            bank.close()  # serve the other processes' searches until they are done too
    distributed.barrier("explain")
    counts = job.summary()  # every part is done once every process has passed the barrier: the whole job
    manifest = job.finish() if distributed.process_index() == 0 else None
    job.close()
    where = job_path
    if single and manifest is not None:
        _concatenate(job, out)
        where = out
    paths = ", ".join(f"{_plural(v, 'pair')} by {k[7:]}" for k, v in sorted(counts.items()) if k.startswith("search:"))
    print(
        f"explained {_plural(done_pairs, 'pair')} ({len(todo)} of {_plural(len(mine), 'part')} this run) in "
        f"{time.perf_counter() - start:.1f} s; the job: {counts.get('found', 0):,} found, "
        f"{counts.get('not_found', 0):,} not found, {counts.get('already', 0):,} already holding, "
        f"{_plural(counts.get('error', 0), 'bad line')}{'; search: ' + paths if paths else ''} → {where}",
        file=sys.stderr,
    )
    return EXIT_BAD_ITEMS if counts.get("error") else EXIT_OK


def _local_mesh(devices: str):
    """The mesh over this process's own devices that ``--devices`` asks for, or None (the default device)."""
    import jax

    from jaxplain import sharding

    local = jax.local_devices()
    if devices == "one" or len(local) == 1 or (devices == "auto" and jax.default_backend() == "cpu"):
        return None
    return sharding.make_mesh(sharding.DATA, devices=local)


def _input_identity(shards) -> dict:
    """What a job records of its input: a checksum of each JSON-lines file (small, and edited by hand), the
    size and modification time of each tar and parquet file (large: read once, by the job itself)."""
    from jaxplain.jobs import file_digest

    files = {}
    for shard in shards:
        if shard.path and shard.path not in files:
            st = os.stat(shard.path)
            ident = {"bytes": st.st_size}
            ident.update(
                {"blake2b": file_digest(shard.path)} if shard.kind == "jsonl" else {"mtime_ns": st.st_mtime_ns}
            )
            files[shard.path] = ident
        elif not shard.path:
            files.setdefault("images", []).extend(shard.items)
    return {
        "shards": len(shards),
        "files": {str(Path(k).resolve()) if k != "images" else k: v for k, v in files.items()},
    }


def _split_names(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [c.strip() for c in text.split(",")]
    if not all(names):
        raise InputError(f"--classes {text!r}: an empty class name")
    twice = sorted({c for c in names if names.count(c) > 1})
    if twice:
        raise InputError(f"--classes {text!r}: {', '.join(map(repr, twice))} given twice; class names must differ")
    return names


def _drop_if_other_job(job_path: Path, config: dict) -> None:
    """A single-file job keeps its parts in a hidden directory beside the file; parts left there by another
    job are its own leftovers, not someone's files, and are removed."""
    import shutil

    from jaxplain.jobs import FORMAT, JOB_FILE, VERSION, canonical

    try:
        old = json.loads((job_path / JOB_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old = None
    want = canonical({"format": FORMAT, "version": VERSION, "parts": (old or {}).get("parts"), **config})
    if old is None or canonical(old) != want:
        shutil.rmtree(job_path, ignore_errors=True)


def _concatenate(job, out: Path) -> None:
    """The parts of a finished single-file job, joined into ``out`` atomically; the parts are then removed."""
    import shutil

    from jaxplain.outputs import atomic_writer

    with atomic_writer(out) as f:
        for j in range(job.total):
            with job.path(j).open("rb") as part:
                shutil.copyfileobj(part, f)
    shutil.rmtree(job.directory, ignore_errors=True)

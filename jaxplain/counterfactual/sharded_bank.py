"""Banks that outgrow one host: a directory of shards, each a complete bank of consecutive rows.

On disk::

    bank.json                       the manifest, written last: kind, model fingerprint, dimension, size,
                                    and per shard its directory, first row (offset), row count and checksum
    job.json                        the build's configuration (a rerun must match it)
    shard-00000-of-00008/           a bank directory of rows [0, n0) (see jaxplain.counterfactual.bank)
    part-00000-of-00008.jsonl(.done)  the shard's build log: its bad items, marked done once the shard is saved
    ...

:func:`build_sharded` encodes and saves one shard at a time (each atomically, see
:func:`~jaxplain.counterfactual.index.atomic_directory`), so memory is bounded by a shard, a killed build
resumes at the first unfinished shard, and the processes of a multi-process job build disjoint shards at
once. Once every shard is done, ``bank.json`` is written and :meth:`Bank.load
<jaxplain.counterfactual.bank.Bank.load>` reads the directory as one bank whose index searches every
shard and merges their answers exactly (:class:`~jaxplain.counterfactual.shards.ShardedIndex`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from jaxplain import distributed
from jaxplain.batching import progress as progress_bar
from jaxplain.counterfactual.bank import (
    BANK_FILE,
    FORMAT,
    Bank,
    BankError,
    _build_from_records,
    _check_ids,
    _check_labels,
    _check_model,
    _default_image_ids,
    build_bank,
)
from jaxplain.counterfactual.shards import RecallTarget, ShardedIndex, calibrate_leaves, with_leaves
from jaxplain.errors import InputError
from jaxplain.jobs import JobDir, parts_for_process, write_atomic

if TYPE_CHECKING:
    from jaxplain.models.bundle import Model

SHARDED_VERSION = 2


def shard_name(index: int, total: int) -> str:
    """``shard-00003-of-00008``."""
    width = max(5, len(str(total)))
    return f"shard-{index:0{width}d}-of-{total:0{width}d}"


def _digest_strings(items: Sequence[str]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for s in items:
        h.update(s.encode("utf-8", "surrogatepass") + b"\0")
    return h.hexdigest()


def build_sharded(
    model: Model,
    out: str | os.PathLike,
    *,
    images: Sequence[Any] | None = None,
    texts: Sequence[Any] | None = None,
    ids: Sequence[str] | None = None,
    labels: Sequence[int] | np.ndarray | None = None,
    shard_size: int,
    backend: str = "auto",
    recall: RecallTarget | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    source: str | None = None,
    label_field: str | None = None,
) -> tuple[Path | None, dict[str, int], list[dict]]:
    """Encode items into a sharded bank at ``out``, a shard of ``shard_size`` items at a time; resumable.

    Args:
      model: the model the bank serves.
      out: the bank directory (new, or a build of the same items and options to resume).
      images: image paths; or the :class:`~jaxplain.data.sources.Shard` s of tar or parquet inputs
        (:func:`~jaxplain.data.sources.list_shards`): then each input shard becomes one shard of the bank,
        read lazily when it is built, so memory is bounded by a shard's embeddings, and ``shard_size`` is
        not used. Or ``texts`` (exactly one of them), likewise texts or shards.
      ids, labels: as for :func:`~jaxplain.counterfactual.bank.build_bank` (default ids are made over all
        items, so that they are unique across shards); with input shards, ids are the records' keys and
        labels come from ``label_field``.
      shard_size: items per shard.
      backend: each shard's index backend.
      recall: with ScaNN shards, each shard's leaves to search are calibrated to this recall target
        (:func:`~jaxplain.counterfactual.shards.calibrate_leaves`) instead of the size rule.
      batch_size, progress, source, label_field: as for ``build_bank``.

    Returns:
      ``(path of bank.json or None, counts, bad items of the shards built by this run)``. ``bank.json`` is
      None in a process whose job is not finished yet (another process still builds shards); ``counts``
      has ``items`` and ``bad`` over this process's shards.

    Each process of a multi-process job (:mod:`jaxplain.distributed`) builds every ``process_count``-th shard.
    """
    from jaxplain.data.sources import Shard

    if (images is None) == (texts is None):
        raise InputError("give exactly one of images= and texts=")
    if shard_size < 1:
        raise InputError(f"the shard size must be at least 1, got {shard_size}")
    kind = "image" if images is not None else "text"
    given = list(images if images is not None else texts)
    if given and isinstance(given[0], Shard):
        return _build_from_shards(
            model, out, kind, given, backend, recall, batch_size, progress, label_field, ids, labels
        )
    items = [str(x) for x in given]
    n = len(items)
    if not n:
        raise InputError("no items to put in the bank")
    if ids is not None:
        all_ids = _check_ids(ids, n)
    elif kind == "image":
        all_ids = _default_image_ids(items)
    else:
        all_ids = [f"text:{i + 1}" for i in range(n)]
    label_array = None if labels is None else _check_labels(labels, n)
    total = -(-n // shard_size)
    config = {
        "command": "bank build",
        "kind": kind,
        "model": {"name": model.name, "fingerprint": model.fingerprint},
        "items": {"count": n, "blake2b": _digest_strings(items), "ids": _digest_strings(all_ids)},
        "labels": None if label_array is None else hashlib.blake2b(label_array.tobytes(), digest_size=16).hexdigest(),
        "shard_size": shard_size,
        "index": backend,
        "recall": _recall_config(recall),
    }

    def produce(todo: list[int]) -> Iterator[tuple[int, Bank | None, list[dict]]]:
        for j in todo:
            rows = slice(j * shard_size, min(n, (j + 1) * shard_size))
            part = items[rows]
            bank, bad = build_bank(
                model,
                images=part if kind == "image" else None,
                texts=part if kind == "text" else None,
                ids=all_ids[rows],
                labels=None if label_array is None else label_array[rows],
                backend=backend,
                batch_size=batch_size,
                progress=False,
                source=source,
            )
            yield j, bank, bad

    sizes = [min(n, (j + 1) * shard_size) - j * shard_size for j in range(total)]
    return _run_shards(model, Path(out), config, kind, sizes, produce, recall, progress)


def _recall_config(recall: RecallTarget | None) -> dict | None:
    return None if recall is None else {"recall": recall.recall, "k": recall.k, "sample": recall.sample}


def _shard_identity(shard: Any) -> dict[str, Any]:
    """What a resumed build must find again about an input shard (its file's size stands in for its
    contents: hashing every input file up front would read the whole input twice)."""
    size = os.path.getsize(shard.path) if shard.path and os.path.isfile(shard.path) else None
    return {"path": shard.path, "kind": shard.kind, "start": shard.start, "stop": shard.stop, "bytes": size}


def _build_from_shards(
    model: Model,
    out: str | os.PathLike,
    kind: str,
    shards: list[Any],
    backend: str,
    recall: RecallTarget | None,
    batch_size: int | None,
    progress: bool,
    label_field: str | None,
    ids: Sequence[str] | None,
    labels: Any,
) -> tuple[Path | None, dict[str, int], list[dict]]:
    """:func:`build_sharded` with one bank shard per input shard, each read lazily when it is built."""
    from jaxplain.data.sources import read_shard

    if ids is not None or labels is not None:
        raise InputError("records bring their own ids (their keys) and labels (label_field=)")
    config = {
        "command": "bank build",
        "kind": kind,
        "model": {"name": model.name, "fingerprint": model.fingerprint},
        "inputs": {"count": len(shards), "blake2b": _digest_strings([json.dumps(_shard_identity(s)) for s in shards])},
        "label_field": label_field,
        "index": backend,
        "recall": _recall_config(recall),
    }

    def produce(todo: list[int]) -> Iterator[tuple[int, Bank | None, list[dict]]]:
        for j in todo:
            bank, bad = _build_from_records(model, read_shard(shards[j]), kind, label_field, backend, batch_size, False)
            yield j, bank, bad

    sizes = [s.size for s in shards]
    return _run_shards(model, Path(out), config, kind, sizes, produce, recall, progress)


def _run_shards(
    model: Model,
    directory: Path,
    config: dict[str, Any],
    kind: str,
    sizes: Sequence[int | None],
    produce: Callable[[list[int]], Iterator[tuple[int, Bank | None, list[dict]]]],
    recall: RecallTarget | None,
    progress: bool,
) -> tuple[Path | None, dict[str, int], list[dict]]:
    """The resumable loop of a sharded build: the shards of this process that are not done, made by
    ``produce`` (in the order asked), each saved whole and then marked done; the manifest once all are done.

    A shard without one good item (a corrupt tar) is marked done with its errors and no directory; the
    manifest leaves it out."""
    if (directory / BANK_FILE).is_file() and not (directory / "job.json").is_file():
        raise InputError(f"{directory}: holds a bank of one directory; build the sharded bank elsewhere")
    total = len(sizes)
    job = JobDir(directory, config, total)
    mine = parts_for_process(total, distributed.process_index(), distributed.process_count())
    counts, errors = {"items": 0, "bad": 0}, []
    todo = job.pending(mine)
    known = all(sizes[j] is not None for j in mine)
    bar = progress_bar(sum(sizes[j] for j in mine) if known else None, f"embedding bank {kind}s", "item", progress)
    if known:
        bar.update(sum(sizes[j] for j in mine if j not in todo))
    for j, bank, bad in produce(todo):
        if bank is not None:
            if recall is not None and getattr(bank.index, "params", None) is not None and bank.index.params.num_leaves:
                seed = recall.seed + j
                cal = calibrate_leaves(bank.index, bank.embeddings, recall.k, recall.recall, recall.sample, seed)
                bank = Bank(**{**_fields(bank), "index": with_leaves(bank.index, cal.leaves)})
            bank.save(directory / shard_name(j, total))
        size = 0 if bank is None else bank.size
        job.write(j, bad, {"items": size, "bad": len(bad)})
        counts["items"] += size
        counts["bad"] += len(bad)
        errors += bad
        bar.update(sizes[j] if sizes[j] is not None else size + len(bad))
    bar.close()
    distributed.barrier("bank build")
    markers = job.markers()
    if distributed.process_index() != 0 or markers is None:
        return None, counts, errors
    return _write_manifest(directory, markers, kind, model, total), counts, errors


def _fields(bank: Bank) -> dict[str, Any]:
    return {
        f: getattr(bank, f) for f in ("kind", "items", "ids", "embeddings", "model_name", "fingerprint", "index")
    } | {"labels": bank.labels}


def _write_manifest(directory: Path, markers: list[dict], kind: str, model: Model, total: int) -> Path:
    shards, offset = [], 0
    for j in range(total):
        if markers[j].get("summary", {}).get("items") == 0 and not (directory / shard_name(j, total)).exists():
            continue  # a shard of bad items only
        meta = json.loads((directory / shard_name(j, total) / BANK_FILE).read_text(encoding="utf-8"))
        shards.append({"name": shard_name(j, total), "offset": offset, "size": meta["size"], "index": meta["index"]})
        offset += meta["size"]
    if not offset:
        raise InputError(f"{directory}: no item of the bank could be encoded")
    manifest = {
        "format": FORMAT,
        "version": SHARDED_VERSION,
        "kind": kind,
        "model_name": model.name,
        "fingerprint": model.fingerprint,
        "size": offset,
        "dim": model.embed_dim,
        "index": "sharded",
        "shards": shards,
    }
    path = directory / BANK_FILE
    write_atomic(path, (json.dumps(manifest, indent=1, ensure_ascii=False) + "\n").encode())
    return path


def load_sharded(d: Path, meta: dict[str, Any], model: Model | None = None) -> Bank:
    """The bank of a sharded directory (``meta`` is its ``bank.json``): every shard's rows and metadata, and
    one :class:`ShardedIndex` over the shards' own indexes."""
    if model is not None:
        _check_model(d, meta["model_name"], meta["fingerprint"], meta["dim"], model)
    listing = meta.get("shards")
    if not isinstance(listing, list) or not listing:
        raise BankError(f"{d / BANK_FILE}: a sharded bank must list its shards")
    parts, offsets = [], []
    for entry in listing:
        part = Bank.load(d / entry["name"], model=model)
        if part.size != entry["size"] or part.kind != meta["kind"] or part.fingerprint != meta["fingerprint"]:
            raise BankError(f"{d / entry['name']}: does not match {d / BANK_FILE} ({part.size} rows, {entry})")
        parts.append(part)
        offsets.append(entry["offset"])
    labelled = [p.labels is not None for p in parts]
    return Bank(
        kind=meta["kind"],
        items=[x for p in parts for x in p.items],
        ids=[x for p in parts for x in p.ids],
        embeddings=np.concatenate([p.embeddings for p in parts]),
        model_name=meta["model_name"],
        fingerprint=meta["fingerprint"],
        index=ShardedIndex([p.index for p in parts], offsets),
        labels=np.concatenate([p.labels for p in parts]) if all(labelled) else None,
    )

"""Banks that outgrow one host: a directory of shards, each a complete bank of consecutive rows.

On disk::

    bank.json                       the manifest, written last: kind, model fingerprint, dimension, size,
                                    and per shard its directory, first row (offset), row count and the
                                    checksum of its bank.json (which holds the checksums of its files)
    job.json                        the build's configuration (a rerun must match it)
    shard-00000-of-00008/           a bank directory of rows [0, n0) (see jaxplain.counterfactual.bank)
    part-00000-of-00008.jsonl(.done)  the shard's build log: its bad items, marked done once the shard is saved
    ...

:func:`build_sharded` encodes and saves one shard at a time (each atomically, see
:func:`~jaxplain.counterfactual.index.atomic_directory`), so memory is bounded by a shard, a killed build
resumes at the first unfinished shard, and the processes of a multi-process job build disjoint shards at
once. Once every shard is done, ``bank.json`` is written and :meth:`Bank.load
<jaxplain.counterfactual.bank.Bank.load>` reads the directory as one bank whose index searches every
shard and merges their answers exactly (:class:`~jaxplain.counterfactual.shards.ShardedIndex`), after
verifying every shard's ``bank.json`` against the manifest and every shard's files against their checksums.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from jaxplain import distributed
from jaxplain.batching import progress as progress_bar
from jaxplain.counterfactual.bank import (
    BANK_FILE,
    EMBEDDINGS_FILE,
    FORMAT,
    VERSION,
    Bank,
    BankError,
    _build_from_records,
    _check_ids,
    _check_labels,
    _check_model,
    _default_image_ids,
    _read_bank_meta,
    bank_files,
    build_bank,
)
from jaxplain.counterfactual.shards import RecallTarget, ShardedIndex, calibrate_leaves, with_leaves
from jaxplain.errors import InputError
from jaxplain.jobs import JobDir, file_digest, numbered, parts_for_process, write_atomic

if TYPE_CHECKING:
    from jaxplain.data.precomputed import PrecomputedEmbeddings
    from jaxplain.models.bundle import Model

SHARDED_VERSION = VERSION  # the manifest's format version: the banks' (3: with checksums)
SHARD_CHECKSUM = "bank.json"  # a manifest entry's key for the blake2b of its shard's bank.json


def shard_name(index: int, total: int) -> str:
    """``shard-00003-of-00008``."""
    return numbered("shard", index, total)


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
    remove_stale: bool = False,
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
      remove_stale: before saving a shard, remove the temporary directories a killed build left for it
        (:func:`~jaxplain.counterfactual.bank.remove_stale_temporaries`); only while no other run builds
        ``out`` (the command line holds its lock). The processes of one job never save the same shard.

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
            model, out, kind, given, backend, recall, batch_size, progress, label_field, ids, labels, remove_stale
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
        "bank_format": VERSION,
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
    return _run_shards(model, Path(out), config, kind, sizes, produce, recall, progress, remove_stale)


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
    remove_stale: bool = False,
) -> tuple[Path | None, dict[str, int], list[dict]]:
    """:func:`build_sharded` with one bank shard per input shard, each read lazily when it is built."""
    from jaxplain.data.sources import read_shard

    if ids is not None or labels is not None:
        raise InputError("records bring their own ids (their keys) and labels (label_field=)")
    config = {
        "command": "bank build",
        "bank_format": VERSION,
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
    return _run_shards(model, Path(out), config, kind, sizes, produce, recall, progress, remove_stale)


def _run_shards(
    model: Model,
    directory: Path,
    config: dict[str, Any],
    kind: str,
    sizes: Sequence[int | None],
    produce: Callable[[list[int]], Iterator[tuple[int, Bank | None, list[dict]]]],
    recall: RecallTarget | None,
    progress: bool,
    remove_stale: bool = False,
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
                if not cal.reached:
                    warnings.warn(
                        f"{shard_name(j, total)}: recall@{recall.k} reaches only {cal.recall:.3f} with every one of "
                        f"its {bank.index.params.num_leaves} leaves (target {recall.recall}); it searches them all",
                        stacklevel=2,
                    )
                bank = dataclasses.replace(bank, index=with_leaves(bank.index, cal.leaves))
            bank.save(directory / shard_name(j, total), remove_stale=remove_stale)
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


PRECOMPUTED_ITEM_COLUMNS = {"image": ("image_path", "url", "caption"), "text": ("caption", "text", "url")}
PRECOMPUTED_ID_COLUMNS = ("key", "id")


def build_from_embeddings(
    model: Model,
    out: str | os.PathLike,
    embeddings: PrecomputedEmbeddings,
    *,
    shard_size: int,
    backend: str = "auto",
    recall: RecallTarget | None = None,
    progress: bool = True,
    sharded: bool | None = None,
    remove_stale: bool = False,
) -> tuple[Path | None, dict[str, int], list[dict]]:
    """A bank of embeddings made elsewhere (:func:`~jaxplain.data.precomputed.open_embeddings`), without
    encoding anything again: read in chunks, one directory up to ``shard_size`` rows, shards beyond.

    The caller vouches that ``model`` made the embeddings: the bank records its name and fingerprint, and
    only their width can be checked (another width raises :class:`InputError` naming both). Each item is
    named by the first metadata column present of ``PRECOMPUTED_ITEM_COLUMNS[kind]`` (else
    ``FILE: row R``), its id is the ``key`` or ``id`` column (else the global row). A row that is not finite
    or not unit-norm is reported by file and row and skipped.

    Args:
      sharded: force (True) or refuse (False) a sharded bank; None: sharded above ``shard_size`` rows, or
        in a multi-process job.
      remove_stale: as for :func:`build_sharded` (for one directory: :meth:`Bank.save
        <jaxplain.counterfactual.bank.Bank.save>`'s).

    Returns:
      As :func:`build_sharded`; for one directory, ``(its bank.json, counts, bad rows)``.
    """
    if shard_size < 1:
        raise InputError(f"the shard size must be at least 1, got {shard_size}")
    if embeddings.dim != model.embed_dim:
        raise InputError(
            f"{embeddings.parts[0].embeddings}: embeddings of dimension {embeddings.dim}, but the model "
            f"{model.name!r} (fingerprint {model.fingerprint}) makes embeddings of dimension {model.embed_dim}; "
            "a bank must hold the embeddings of the model it serves"
        )
    n = embeddings.size
    if not n:
        raise InputError(f"{embeddings.parts[0].embeddings}: no embeddings to put in the bank")
    if sharded is None:
        sharded = n > shard_size or distributed.process_count() > 1
    if not sharded:
        (_, bank, bad), *_ = _precomputed_banks(model, embeddings, n, [0], backend)
        if bank is None:
            raise InputError(f"{embeddings.parts[0].embeddings}: no row could be used ({bad[0]['error']}; …)")
        path = bank.save(out, remove_stale=remove_stale) / BANK_FILE
        return path, {"items": bank.size, "bad": len(bad)}, bad
    config = {
        "command": "bank build",
        "bank_format": VERSION,
        "kind": embeddings.kind,
        "model": {"name": model.name, "fingerprint": model.fingerprint},
        "precomputed": [
            {
                "embeddings": str(p.embeddings),
                "metadata": None if p.metadata is None else str(p.metadata),
                "rows": p.rows,
                "bytes": os.path.getsize(p.embeddings),
            }
            for p in embeddings.parts
        ],
        "shard_size": shard_size,
        "index": backend,
        "recall": _recall_config(recall),
    }
    total = -(-n // shard_size)
    sizes = [min(n, (j + 1) * shard_size) - j * shard_size for j in range(total)]
    return _run_shards(
        model,
        Path(out),
        config,
        embeddings.kind,
        sizes,
        lambda todo: _precomputed_banks(model, embeddings, shard_size, todo, backend),
        recall,
        progress,
        remove_stale,
    )


def _precomputed_banks(
    model: Model, embeddings: PrecomputedEmbeddings, shard_size: int, todo: list[int], backend: str
) -> Iterator[tuple[int, Bank | None, list[dict]]]:
    """The banks of global rows ``[j · shard_size, (j + 1) · shard_size)`` for ``j`` in ``todo`` (ascending),
    from one pass over the chunks up to the last of them (the rows of other shards are read, not kept)."""
    from jaxplain.counterfactual.index import build_index
    from jaxplain.data.precomputed import DEFAULT_CHUNK

    want = set(todo)
    if not want:
        return
    step = min(shard_size, DEFAULT_CHUNK)
    current: dict[str, Any] | None = None

    def finish(buf: dict[str, Any]) -> tuple[int, Bank | None, list[dict]]:
        if not buf["items"]:
            return buf["j"], None, buf["bad"]
        emb = np.ascontiguousarray(np.concatenate(buf["emb"]), np.float32)
        bank = Bank(
            kind=embeddings.kind,
            items=buf["items"],
            ids=buf["ids"],
            embeddings=emb,
            model_name=model.name,
            fingerprint=model.fingerprint,
            family=model.family.name,
            index=build_index(emb, backend),
        )
        return buf["j"], bank, buf["bad"]

    for chunk in embeddings.chunks(step, bad_rows="skip"):
        if chunk.offset >= (max(want) + 1) * shard_size:
            break
        part = next(p for p in embeddings.parts if p.offset <= chunk.offset < p.offset + p.rows)
        stop = min(chunk.offset + step, part.offset + part.rows)
        # The rows skipped, in order, are the ones the chunk's errors name, in the same order.
        skipped = np.setdiff1d(np.arange(chunk.offset, stop), chunk.rows)
        names, keys = _precomputed_names(chunk, embeddings.kind, part.offset)
        for j in range(chunk.offset // shard_size, (stop - 1) // shard_size + 1):
            if current is None or current["j"] != j:
                if current is not None and current["j"] in want:
                    yield finish(current)
                current = {"j": j, "emb": [], "items": [], "ids": [], "bad": []}
            if j not in want:
                continue
            lo, hi = np.searchsorted(chunk.rows, [j * shard_size, (j + 1) * shard_size])
            current["emb"].append(chunk.embeddings[lo:hi])
            current["items"] += names[lo:hi]
            current["ids"] += keys[lo:hi] if keys is not None else [str(r) for r in chunk.rows[lo:hi]]
            elo, ehi = np.searchsorted(skipped, [j * shard_size, (j + 1) * shard_size])
            for r, msg in zip(skipped[elo:ehi], chunk.errors[elo:ehi]):
                item = f"{chunk.where}: row {int(r) - part.offset}"
                current["bad"].append({"item": item, "error": msg.removeprefix(f"{item} ")})
    if current is not None and current["j"] in want:
        yield finish(current)


def _precomputed_names(chunk: Any, kind: str, part_offset: int) -> tuple[list[str], list[str] | None]:
    """Each kept row's item name and id from the chunk's metadata (ids None: use the global row)."""
    column = next((c for c in PRECOMPUTED_ITEM_COLUMNS[kind] if c in chunk.metadata), None)
    if column is None:
        names = [f"{chunk.where}: row {int(r) - part_offset}" for r in chunk.rows]
    else:
        names = ["" if v is None else str(v) for v in chunk.metadata[column]]
    key = next((c for c in PRECOMPUTED_ID_COLUMNS if c in chunk.metadata), None)
    return names, None if key is None else [str(v) for v in chunk.metadata[key]]


def _write_manifest(directory: Path, markers: list[dict], kind: str, model: Model, total: int) -> Path:
    shards, offset = [], 0
    for j in range(total):
        if markers[j].get("summary", {}).get("items") == 0 and not (directory / shard_name(j, total)).exists():
            continue  # a shard of bad items only
        path = directory / shard_name(j, total) / BANK_FILE
        meta = json.loads(path.read_text(encoding="utf-8"))
        shards.append(
            {
                "name": shard_name(j, total),
                "offset": offset,
                "size": meta["size"],
                "index": meta["index"],
                SHARD_CHECKSUM: file_digest(path),
            }
        )
        offset += meta["size"]
    if not offset:
        raise InputError(f"{directory}: no item of the bank could be encoded")
    manifest = {
        "format": FORMAT,
        "version": SHARDED_VERSION,
        "kind": kind,
        "model_name": model.name,
        "fingerprint": model.fingerprint,
        "family": model.family.name,
        "size": offset,
        "dim": model.embed_dim,
        "index": "sharded",
        "shards": shards,
    }
    path = directory / BANK_FILE
    write_atomic(path, (json.dumps(manifest, indent=1, ensure_ascii=False) + "\n").encode())
    return path


def shard_entries(d: Path, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """A sharded bank's manifest entries, checked: each names a shard directory inside ``d`` and gives its
    first row, row count and the checksum of its ``bank.json``; the rows are consecutive from 0 and add up
    to the bank's size."""
    listing = meta.get("shards")
    if not isinstance(listing, list) or not listing:
        raise BankError(f"{d / BANK_FILE}: a sharded bank must list its shards")
    offset = 0
    for i, entry in enumerate(listing):
        if not isinstance(entry, dict):
            raise BankError(f"{d / BANK_FILE}: shard entry {i} is not an object")
        name = entry.get("name")
        if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
            raise BankError(f"{d / BANK_FILE}: shard entry {i} names {name!r}, not a directory of the bank")
        if not isinstance(entry.get(SHARD_CHECKSUM), str):
            raise BankError(f"{d}: {BANK_FILE} lists no checksum of {name}/{BANK_FILE}; rebuild the bank")
        for key in ("offset", "size"):
            value = entry.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < (1 if key == "size" else 0):
                raise BankError(f"{d / BANK_FILE}: shard {name}: {key} {value!r} is not a valid row count")
        if entry["offset"] != offset:
            raise BankError(f"{d / BANK_FILE}: shard {name} starts at row {entry['offset']}, not {offset}")
        offset += entry["size"]
    if offset != meta["size"]:
        raise BankError(f"{d / BANK_FILE}: its shards hold {offset} rows, it says {meta['size']}")
    return listing


def shard_meta(d: Path, entry: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """The ``bank.json`` of the shard ``entry`` of the sharded bank ``d``, verified against the manifest's
    checksum of it and checked to agree with the manifest (kind, model, width, rows)."""
    where, name = d / entry["name"], f"{entry['name']}/{BANK_FILE}"
    try:
        got = file_digest(where / BANK_FILE)
    except FileNotFoundError:
        raise BankError(f"{d}: {name} is missing ({BANK_FILE} lists it); rebuild the bank") from None
    except OSError as e:
        raise BankError(f"{d}: {name} cannot be read ({e.strerror or e})") from None
    if got != entry[SHARD_CHECKSUM]:
        raise BankError(
            f"{d}: {name} does not match its checksum in {BANK_FILE} (the shard was changed "
            "or replaced after the bank was built); rebuild the bank"
        )
    part = _read_bank_meta(where)
    same = ("kind", "model_name", "fingerprint", "dim")
    if "shards" in part or part["size"] != entry["size"] or any(part[k] != meta[k] for k in same):
        raise BankError(f"{where}: does not match {d / BANK_FILE} ({part['size']} rows, {entry})")
    return part


def sharded_digest(d: Path, parts: Sequence[dict[str, Any]]) -> str:
    """The digest of a sharded bank's embeddings: the blake2b of its shards' embeddings checksums, in order
    (``parts``: the shards' verified ``bank.json``)."""
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        h.update(bytes.fromhex(bank_files(d, part)[EMBEDDINGS_FILE]))
    return h.hexdigest()


def load_sharded(d: Path, meta: dict[str, Any], model: Model | None = None) -> Bank:
    """The bank of a sharded directory (``meta`` is its ``bank.json``): every shard's rows and metadata, and
    one :class:`ShardedIndex` over the shards' own indexes.

    Each shard's ``bank.json`` is verified against the manifest, and each shard's files against their
    checksums (:meth:`Bank.load <jaxplain.counterfactual.bank.Bank.load>`): a shard changed or swapped for
    another is a :class:`BankError` naming it."""
    if model is not None:
        _check_model(d, meta["model_name"], meta["fingerprint"], meta["dim"], model)
    listing = shard_entries(d, meta)
    parts, offsets, metas = [], [], []
    for entry in listing:
        metas.append(shard_meta(d, entry, meta))
        parts.append(Bank.load(d / entry["name"], model=model))
        offsets.append(entry["offset"])
    labelled = [p.labels is not None for p in parts]
    bank = Bank(
        kind=meta["kind"],
        items=[x for p in parts for x in p.items],
        ids=[x for p in parts for x in p.ids],
        embeddings=np.concatenate([p.embeddings for p in parts]),
        model_name=meta["model_name"],
        fingerprint=meta["fingerprint"],
        family=meta.get("family"),
        index=ShardedIndex([p.index for p in parts], offsets),
        labels=np.concatenate([p.labels for p in parts]) if all(labelled) else None,
    )
    bank.__dict__["digest"] = sharded_digest(d, metas)  # the shards' verified checksums: nothing hashed again
    return bank

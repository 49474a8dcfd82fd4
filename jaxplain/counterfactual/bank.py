"""Banks of real items (images or texts): their embeddings by one model, and an index to search them.

A counterfactual is retrieved from a bank, so a bank must have been made by the model being explained:
it records that model's fingerprint, and :meth:`Bank.load` with a model refuses a bank made by another.

On disk a bank is a directory, written atomically (see :func:`~jaxplain.counterfactual.index.atomic_directory`)::

    bank.json        kind, model name and fingerprint, size, dimension, index backend, and the
                     checksum of every other file (written last)
    items.json       {"items": [...], "ids": [...]}: image paths as given, or the texts
    embeddings.npy   [M, E] float32 unit-norm, finite
    labels.npy       [M] int64, when the bank has labels
    index/           the serialised ScaNN searcher (an exact index is rebuilt from embeddings.npy)

``bank.json``'s ``files`` maps each file's path in the directory to a 128-bit blake2b: of the array's
C-order bytes for the bank's arrays (``embeddings.npy``, ``labels.npy``; their dtype and shape are checked
against ``bank.json`` too), of the file's bytes for every other file. :meth:`Bank.load` verifies them all
before it uses anything, so a bank whose rows were permuted, replaced or truncated, or whose index or item
list comes from another bank, is refused with a :class:`BankError` naming the file; a bank saved by a
jaxplain older than format version :data:`CHECKSUM_VERSION` (no checksums) is refused, to be rebuilt.
Non-finite rows are refused when a bank is made and again when one is loaded.

Nothing is ever unpickled: arrays are read with ``allow_pickle=False``, metadata is JSON.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain.batching import encode_stream
from jaxplain.counterfactual.index import (
    ExactIndex,
    Index,
    ScannIndex,
    atomic_directory,
    build_index,
    load_index,
    nonfinite_rows,
)
from jaxplain.errors import InputError, JaxplainError, OutputError
from jaxplain.jobs import file_digest

if TYPE_CHECKING:
    from jaxplain.models.bundle import Model

BANK_FILE = "bank.json"
ITEMS_FILE = "items.json"
EMBEDDINGS_FILE = "embeddings.npy"
LABELS_FILE = "labels.npy"
INDEX_DIR = "index"
FORMAT = "jaxplain-bank"
# Format versions: 1, a bank of one directory; 2, a sharded bank (jaxplain.counterfactual.sharded_bank); 3, both,
# with the checksums of their files in bank.json (the manifest of a sharded bank: of its shards' bank.json).
VERSION = 3
READ_VERSION = 3
CHECKSUM_VERSION = 3  # banks of older versions carry no checksums: they are refused, to be rebuilt
KINDS = ("image", "text")
STALE_MARKERS = (".tmp-", ".old-")  # the siblings atomic_directory makes: .{name}.tmp-*, .{name}.old-*


class BankError(JaxplainError):
    """A bank directory is missing or corrupt, or the bank was made by another model."""


@dataclasses.dataclass(frozen=True, eq=False)
class Bank:
    """Real items with their embeddings by one model, and a nearest-neighbour index over them.

    Attributes:
      kind: ``"image"`` or ``"text"``.
      items: ``M`` image paths (as given; for in-memory images, their id) or texts.
      ids: ``M`` stable, unique ids (by default the file name, ``"text:{line}"``, or the position ``str(i)``).
      embeddings: ``[M, E]`` float32 unit-norm, made by the model.
      model_name: the name of the model that made them.
      fingerprint: that model's :attr:`Model.fingerprint`.
      index: searches ``embeddings`` (:class:`ExactIndex` or :class:`ScannIndex`).
      labels: optional ``[M]`` int64 labels (e.g. Fashion-MNIST classes).
      family: the model's family (``"clip"``, ``"siglip"``, …: :attr:`Model.family`), recorded beside the
        fingerprint (None for a bank built without a model).
    """

    kind: str
    items: list[str]
    ids: list[str]
    embeddings: np.ndarray
    model_name: str
    fingerprint: str
    index: Index
    labels: np.ndarray | None = None
    family: str | None = None

    def __post_init__(self):
        m = len(self.items)
        if self.kind not in KINDS:
            raise InputError(f"a bank's kind must be one of {KINDS}, got {self.kind!r}")
        if self.embeddings.ndim != 2 or self.embeddings.shape[0] != m or len(self.ids) != m:
            raise InputError(
                f"a bank needs one embedding and one id per item: {m} items, {len(self.ids)} ids, "
                f"embeddings {self.embeddings.shape}"
            )
        if (self.index.size, self.index.dim) != self.embeddings.shape:
            raise InputError(
                f"the index holds [{self.index.size}, {self.index.dim}], the embeddings {self.embeddings.shape}"
            )
        if self.labels is not None and self.labels.shape != (m,):
            raise InputError(f"a bank needs one label per item: {m} items, labels {self.labels.shape}")
        bad = nonfinite_rows(self.embeddings)
        if bad.size:
            raise InputError(
                f"{describe_rows(bad, self.items)} of the embeddings {'is' if bad.size == 1 else 'are'} not finite "
                "(NaN or infinity); a bank holds finite embeddings only"
            )

    @property
    def size(self) -> int:
        """``M``, the number of items."""
        return len(self.items)

    @property
    def dim(self) -> int:
        """``E``, the embedding width."""
        return self.embeddings.shape[1]

    def __len__(self) -> int:
        return self.size

    @functools.cached_property
    def device_embeddings(self) -> jax.Array:
        """The embeddings as a jax array, copied to the default device once and kept (the verifier's input)."""
        return jnp.asarray(self.embeddings)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """queries ``[Q, E]`` → ``(rows [Q, min(k, M)] int64, scores [Q, min(k, M)] float32)``, best first.

        ``rows`` index ``items``, ``ids``, ``embeddings`` and ``labels``.
        """
        return self.index.search(queries, k)

    def verify(self, candidates, u0, goal, anchor, classes, scale, top: int, mesh=None):
        """:func:`~jaxplain.counterfactual.verify.verify` of candidate rows ``[N, K]`` against this bank; with
        ``mesh`` (a ``"data"`` mesh) the pairs are split over its devices, the bank replicated on them once."""
        from jaxplain.counterfactual.verify import verify

        if mesh is None:
            return verify(candidates, self.device_embeddings, u0, goal, anchor, classes, scale, top)
        bank = self._on(mesh, "replicated")
        return verify(candidates, bank, u0, goal, anchor, classes, scale, top, mesh=mesh)

    def exhaustive(self, u0, goal, anchor, classes, scale, top: int, mesh=None):
        """:func:`~jaxplain.counterfactual.verify.exhaustive`: every item of this bank verified for ``N`` pairs;
        with ``mesh``, the bank's rows are split over its devices (once) and the devices' bests merged."""
        from jaxplain.counterfactual.verify import exhaustive

        if mesh is None:
            return exhaustive(self.device_embeddings, u0, goal, anchor, classes, scale, top)
        return exhaustive(self._on(mesh, "rows"), u0, goal, anchor, classes, scale, top)

    def _on(self, mesh, layout: str):
        """The embeddings on ``mesh``'s devices, replicated or split by rows (for the oracle), made once."""
        from jaxplain import sharding
        from jaxplain.counterfactual.verify import shard_bank

        cache = self.__dict__.setdefault("_placed", {})
        if (mesh, layout) not in cache:
            if layout == "replicated":
                cache[mesh, layout] = sharding.replicate(self.embeddings, mesh)
            else:
                rows = sharding.make_mesh(sharding.BANK, devices=list(mesh.devices.flat))
                cache[mesh, layout] = shard_bank(self.embeddings, rows)
        return cache[mesh, layout]

    def levels(self, queries: np.ndarray, ks) -> np.ndarray:
        """:func:`~jaxplain.objectives.retrieval_levels`: the similarity level of each query's top-k in this bank."""
        from jaxplain.objectives import retrieval_levels

        return retrieval_levels(queries, self.embeddings, ks)

    @functools.cached_property
    def digest(self) -> str:
        """A checksum of the embeddings: banks with equal digests hold the same vectors in the same order.

        For a bank of one directory it is the blake2b of the embeddings' bytes, the checksum ``bank.json``
        records for ``embeddings.npy`` (a loaded bank takes the one it verified, a saved one the one it
        wrote: the embeddings are hashed once); for a sharded bank, the blake2b of its shards' digests.
        """
        return self._embeddings_checksum

    @functools.cached_property
    def _embeddings_checksum(self) -> str:
        """What ``bank.json`` records for ``embeddings.npy``: the blake2b of the rows' bytes."""
        return array_digest(self.embeddings)

    def identity(self) -> dict[str, Any]:
        """What a job records about the bank it ran on (a resumed job must find the same)."""
        return {
            "kind": self.kind,
            "size": self.size,
            "dim": self.dim,
            "fingerprint": self.fingerprint,
            "index": self.index.backend,
            "embeddings": self.digest,
        }

    def check_model(self, model: Model, where: str | os.PathLike = "bank") -> None:
        """Raise :class:`BankError` naming both sides unless ``model`` made this bank."""
        _check_model(where, self.model_name, self.fingerprint, self.dim, model)

    def save(self, directory: str | os.PathLike, remove_stale: bool = False) -> Path:
        """Write the bank to ``directory`` atomically and return its path.

        Everything is written into a fresh temporary sibling directory (``.{name}.tmp-XXXXXXXX``, unique to
        this save, so two saves never share one) that then replaces ``directory``; a crash midway leaves any
        bank already at ``directory`` untouched, and a save that fails removes its temporary directory. An
        existing directory that is not a bank is never overwritten. ``bank.json``, written last, records
        the checksum of every other file.

        Args:
          directory: where the bank goes.
          remove_stale: first remove what killed saves of ``directory`` left beside it
            (:func:`remove_stale_temporaries`). Only safe while no other process saves the same directory:
            pass it when the caller holds a lock on the output (a command that locks its ``--out``).

        Raises:
          OutputError: the bank cannot be written (no permission, a full disk, …), naming ``directory`` and
            the reason; nothing is left behind.
          InputError: ``directory`` exists and is not a bank (or is a file).
        """
        directory = Path(directory)
        if remove_stale:
            remove_stale_temporaries(directory)
        try:
            with atomic_directory(directory) as tmp:
                files = {EMBEDDINGS_FILE: self._embeddings_checksum}
                np.save(tmp / EMBEDDINGS_FILE, np.ascontiguousarray(self.embeddings, np.float32), allow_pickle=False)
                if self.labels is not None:
                    labels = np.ascontiguousarray(self.labels, np.int64)
                    np.save(tmp / LABELS_FILE, labels, allow_pickle=False)
                    files[LABELS_FILE] = array_digest(labels)
                items = {"items": self.items, "ids": self.ids}
                (tmp / ITEMS_FILE).write_text(json.dumps(items, ensure_ascii=False) + "\n", encoding="utf-8")
                files[ITEMS_FILE] = file_digest(tmp / ITEMS_FILE)
                if not isinstance(self.index, ExactIndex):
                    self.index.save(tmp / INDEX_DIR)
                    for path in sorted((tmp / INDEX_DIR).rglob("*")):
                        if path.is_file():
                            files[path.relative_to(tmp).as_posix()] = file_digest(path)
                meta = {
                    "format": FORMAT,
                    "version": VERSION,
                    "kind": self.kind,
                    "model_name": self.model_name,
                    "fingerprint": self.fingerprint,
                    "family": self.family,
                    "size": self.size,
                    "dim": self.dim,
                    "index": self.index.backend,
                    "labels": self.labels is not None,
                    "files": files,
                }
                text = json.dumps(meta, indent=1, ensure_ascii=False) + "\n"
                (tmp / BANK_FILE).write_text(text, encoding="utf-8")
        except OSError as e:
            if isinstance(e, JaxplainError):
                raise
            reason = e.strerror or str(e)
            raise OutputError(
                f"{directory}: cannot write the bank ({reason}); nothing was written, and a bank already there "
                "is unchanged"
            ) from e
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike, model: Model | None = None) -> Bank:
        """Read a bank written by :meth:`save`, verifying every file against its checksum in ``bank.json``.

        With ``model``, a bank made by another model (another fingerprint) or with another embedding
        width is a :class:`BankError` naming both, raised before the arrays are read. A file that does not
        match its checksum (rows permuted or replaced, an index or item list of another bank), a
        non-finite row, or a bank saved without checksums (by an older jaxplain) is a :class:`BankError`
        naming the bank's directory and the file, telling to rebuild the bank.
        """
        d = Path(directory)
        meta = _read_bank_meta(d)
        if "shards" in meta:
            from jaxplain.counterfactual.sharded_bank import load_sharded

            return load_sharded(d, meta, model)
        if model is not None:
            _check_model(d, meta["model_name"], meta["fingerprint"], meta["dim"], model)
        files = bank_files(d, meta)
        emb = _read_array(d, EMBEDDINGS_FILE)
        if emb.dtype != np.float32 or emb.shape != (meta["size"], meta["dim"]):
            raise BankError(
                f"{d}: {EMBEDDINGS_FILE} holds {emb.dtype} {list(emb.shape)}, {BANK_FILE} says float32 "
                f"[{meta['size']}, {meta['dim']}]; rebuild the bank"
            )
        digest = array_digest(emb)
        if digest != files[EMBEDDINGS_FILE]:
            raise BankError(_changed(d, EMBEDDINGS_FILE))
        items, ids, labels = read_listing(d, meta, files)
        bad = nonfinite_rows(emb)
        if bad.size:
            raise BankError(
                f"{d}: {EMBEDDINGS_FILE} {describe_rows(bad, items)} {'is' if bad.size == 1 else 'are'} not "
                "finite; rebuild the bank"
            )
        if meta["index"] == "exact":
            index: Index = ExactIndex(emb)
        else:
            verify_files(d, {k: v for k, v in files.items() if k.startswith(f"{INDEX_DIR}/")})
            try:
                index = load_index(d / INDEX_DIR)
            except JaxplainError as e:
                raise BankError(f"{d}: its index cannot be loaded ({e}); rebuild the bank") from None
            if not isinstance(index, ScannIndex) or (index.size, index.dim) != emb.shape:
                raise BankError(f"{d / INDEX_DIR}: {index} does not match the bank's embeddings {emb.shape}")
        try:
            bank = cls(
                meta["kind"],
                items,
                ids,
                emb,
                meta["model_name"],
                meta["fingerprint"],
                index,
                labels,
                meta.get("family"),
            )
        except InputError as e:
            raise BankError(f"{d}: {e}") from None
        bank.__dict__["_embeddings_checksum"] = digest  # verified above: not hashed again
        return bank

    def __repr__(self) -> str:
        labels = ", labelled" if self.labels is not None else ""
        return (
            f"Bank({self.kind}, {self.size:,} items × {self.dim}, {self.index!r}, model {self.model_name!r} "
            f"{'' if self.family is None else self.family + ' '}fingerprint {self.fingerprint}{labels})"
        )


def _check_model(where: str | os.PathLike, name: str, fingerprint: str, dim: int, model: Model) -> None:
    if fingerprint == model.fingerprint and dim == model.embed_dim:
        return
    raise BankError(
        f"{where}: made by model {name!r} (fingerprint {fingerprint}, embeddings of dimension {dim}), "
        f"but the model given is {model.name!r} (fingerprint {model.fingerprint}, dimension {model.embed_dim}); "
        "a bank only serves the model that made it: rebuild it with `jaxplain bank build`"
    )


def _read_bank_meta(d: Path) -> dict[str, Any]:
    """A bank directory's ``bank.json``, checked: a jaxplain bank, of a version with checksums this jaxplain reads."""
    path = d / BANK_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if (d / "job.json").is_file():
            raise BankError(
                f"{d}: a sharded bank whose build has not finished; run the same `jaxplain bank build` again to "
                "finish it"
            ) from None
        raise BankError(f"{d}: not a bank (no {BANK_FILE}); build one with `jaxplain bank build`") from None
    except (OSError, ValueError) as e:
        raise BankError(f"{path}: unreadable ({e})") from None
    need = ("kind", "model_name", "fingerprint", "size", "dim", "index")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or any(k not in meta for k in need):
        raise BankError(f"{path}: not a jaxplain bank description")
    version = meta.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise BankError(f"{path}: not a jaxplain bank description (version {version!r})")
    if version > READ_VERSION:
        raise BankError(f"{path}: format version {version} is newer than this jaxplain reads ({READ_VERSION})")
    if version < CHECKSUM_VERSION:
        raise BankError(
            f"{d}: saved by an older jaxplain (bank format version {version}), without checksums of its files, "
            "so it cannot be verified; rebuild the bank with `jaxplain bank build`"
        )
    for key in ("size", "dim"):
        if not isinstance(meta[key], int) or isinstance(meta[key], bool) or meta[key] < 1:
            raise BankError(f"{path}: {key} must be a positive integer, got {meta[key]!r}")
    return meta


def array_digest(array: np.ndarray) -> str:
    """The blake2b (128 bits) of an array's C-order bytes: what ``bank.json`` records for the bank's arrays."""
    a = np.ascontiguousarray(array)
    return hashlib.blake2b(a.reshape(-1).view(np.uint8), digest_size=16).hexdigest()


def describe_rows(rows: np.ndarray, items: Sequence[str] | None = None, limit: int = 3) -> str:
    """``row 17 (item 'shoes/3.png')``, or ``rows 3 (item 'a'), 9 (item 'b') and 4 more``: rows of a bank
    named by their items where the items are known."""
    rows = [int(r) for r in np.asarray(rows).reshape(-1)]

    def one(r: int) -> str:
        return f"{r} (item {items[r]!r})" if items is not None and 0 <= r < len(items) else str(r)

    shown = ", ".join(one(r) for r in rows[:limit])
    more = f" and {len(rows) - limit} more" if len(rows) > limit else ""
    return f"{'row' if len(rows) == 1 else 'rows'} {shown}{more}"


def _changed(d: Path, name: str) -> str:
    return (
        f"{d}: {name} does not match its checksum in {BANK_FILE} (the file was changed after the bank was built); "
        "rebuild the bank"
    )


def bank_files(d: Path, meta: dict[str, Any]) -> dict[str, str]:
    """``bank.json``'s checksums (path in the bank → blake2b), checked to list every file the bank needs."""
    files = meta.get("files")
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise BankError(f"{d}: {BANK_FILE} lists no checksums of the bank's files; rebuild the bank")
    missing = [n for n in (EMBEDDINGS_FILE, ITEMS_FILE) if n not in files]
    if meta.get("labels") and LABELS_FILE not in files:
        missing.append(LABELS_FILE)
    if meta["index"] != "exact" and not any(k.startswith(f"{INDEX_DIR}/") for k in files):
        missing.append(f"{INDEX_DIR}/")
    if missing:
        raise BankError(f"{d}: {BANK_FILE} lists no checksum of {missing[0]}; rebuild the bank")
    for name in files:
        parts = Path(name).parts
        if not parts or Path(name).is_absolute() or ".." in parts:
            raise BankError(f"{d}: {BANK_FILE} lists {name!r}, which is not a file inside the bank; rebuild the bank")
    return files


def _read_array(d: Path, name: str) -> np.ndarray:
    """One of the bank's arrays (never unpickled); missing or unreadable: a :class:`BankError` naming it."""
    try:
        return np.load(d / name, allow_pickle=False)
    except FileNotFoundError:
        raise BankError(f"{d}: {name} is missing ({BANK_FILE} lists it); rebuild the bank") from None
    except (OSError, ValueError) as e:
        raise BankError(f"{d}: {name} cannot be read ({e}); rebuild the bank") from None


def verify_files(d: Path, files: dict[str, str]) -> None:
    """Check each file ``d / name`` against its blake2b in ``files``; the first that is missing, unreadable
    or changed is a :class:`BankError` naming the bank and the file."""
    for name, want in sorted(files.items()):
        try:
            got = file_digest(d / name)
        except FileNotFoundError:
            raise BankError(f"{d}: {name} is missing ({BANK_FILE} lists it); rebuild the bank") from None
        except OSError as e:
            raise BankError(f"{d}: {name} cannot be read ({e.strerror or e})") from None
        if got != want:
            raise BankError(_changed(d, name))


def read_listing(
    d: Path, meta: dict[str, Any], files: dict[str, str] | None = None
) -> tuple[list[str], list[str], np.ndarray | None]:
    """A bank directory's items, ids and labels (None without), each file verified against its checksum
    (``files``: :func:`bank_files` of ``meta``) and checked to hold ``meta["size"]`` entries."""
    files = bank_files(d, meta) if files is None else files
    verify_files(d, {ITEMS_FILE: files[ITEMS_FILE]})
    try:
        listing = json.loads((d / ITEMS_FILE).read_text(encoding="utf-8"))
        items, ids = listing["items"], listing["ids"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BankError(f"{d / ITEMS_FILE}: missing or unreadable ({e})") from None
    if not (isinstance(items, list) and isinstance(ids, list) and len(items) == len(ids) == meta["size"]):
        raise BankError(f"{d}: {ITEMS_FILE} does not list {meta['size']} items and ids; rebuild the bank")
    labels = None
    if meta.get("labels"):
        labels = _read_array(d, LABELS_FILE)
        if labels.dtype != np.int64 or labels.shape != (meta["size"],):
            raise BankError(
                f"{d}: {LABELS_FILE} holds {labels.dtype} {list(labels.shape)}, {BANK_FILE} says int64 "
                f"[{meta['size']}]; rebuild the bank"
            )
        if array_digest(labels) != files[LABELS_FILE]:
            raise BankError(_changed(d, LABELS_FILE))
    return items, ids, labels


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Remove what killed saves of the bank ``directory`` left beside it: the siblings ``.{name}.tmp-*``
    (a save that never finished) and ``.{name}.old-*`` (a bank being replaced). Returns what was removed.

    Only safe while no other process saves ``directory``: a save in progress writes into such a sibling.
    So it is opt-in (``Bank.save(..., remove_stale=True)``), for a caller that holds the output's lock, as a
    command that locks its ``--out`` before it writes does.
    """
    directory = Path(directory)
    parent = directory.parent
    if not parent.is_dir():
        return []
    prefixes = tuple(f".{directory.name}{m}" for m in STALE_MARKERS)
    removed = []
    for path in sorted(parent.iterdir()):
        if path.name.startswith(prefixes) and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


# ------------------------------------------------------------------------------------------ building


def _default_image_ids(images: Sequence[Any]) -> list[str]:
    """File names for paths, positions for in-memory images; full paths where file names collide."""
    is_path = [isinstance(x, (str, Path)) for x in images]
    ids = [Path(x).name if p else str(i) for i, (x, p) in enumerate(zip(images, is_path))]
    if len(set(ids)) < len(ids):
        ids = [str(x) if p else str(i) for i, (x, p) in enumerate(zip(images, is_path))]
    return ids


def _check_ids(ids: Sequence[str], n: int) -> list[str]:
    ids = [str(i) for i in ids]
    if len(ids) != n:
        raise InputError(f"got {len(ids)} ids for {n} items")
    seen: set[str] = set()
    for i in ids:
        if i in seen:
            raise InputError(f"the id {i!r} is given to two items; ids must be unique")
        seen.add(i)
    return ids


def _check_labels(labels: Sequence[int] | np.ndarray, n: int) -> np.ndarray:
    a = np.asarray(labels)
    if a.shape != (n,) or not np.issubdtype(a.dtype, np.integer):
        raise InputError(f"labels must be {n} integers (one per item), got {a.dtype} {a.shape}")
    return a.astype(np.int64)


def record_item(record: Any, kind: str) -> str:
    """What a bank lists for an item read from a shard: the image file where the record points to one (an
    image folder, a parquet path column), else the caption for a text, else the record's ``where``
    (``data/000003.tar: sample 000003017``, ``x.parquet: row 5``)."""
    if kind == "text" and record.text is not None:
        return record.text
    if isinstance(record.image, Path):
        return str(record.image)
    return record.where


def _checked_records(records: Iterable[Any], label_field: str | None) -> Iterator[Any]:
    """The records, with a repeated key or a missing or non-integer ``label_field`` turned into an error
    record naming it (so it is reported and skipped like an undecodable image)."""
    seen: dict[str, str] = {}
    for r in records:
        if r.error is None and r.key in seen:
            r = dataclasses.replace(r, error=f"its key {r.key!r} is also the key of {seen[r.key]}; keys must be unique")
        elif r.error is None and label_field is not None:
            value = r.fields.get(label_field)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                got = "no such field" if label_field not in r.fields else f"{type(value).__name__} {value!r}"
                r = dataclasses.replace(r, error=f"its label field {label_field!r} is not an integer ({got})")
        if r.error is None:
            seen[r.key] = r.where
        yield r


def _build_from_records(
    model: Model,
    records: Iterable[Any],
    kind: str,
    label_field: str | None,
    backend: str,
    batch_size: int | None,
    progress: bool,
) -> tuple[Bank | None, list[dict]]:
    """:func:`build_bank` of :class:`~jaxplain.data.sources.Record` s, pulled lazily: only the embeddings,
    names and labels of the good items are kept, never their images. No good item: ``(None, errors)``."""
    from jaxplain.batching import encode_batches
    from jaxplain.batching import progress as progress_bar
    from jaxplain.models.bundle import IMAGE_BATCH, TEXT_BATCH

    if kind == "image":
        bs = batch_size or IMAGE_BATCH

        def prepare(r):
            if r.image is None:
                raise InputError(f"{r.where}: no image")
            return model.processing.pixels(r.image, r.where)

        encode, workers = (lambda x: model.encode_pixels(x, bs)), None
    else:
        bs = batch_size or TEXT_BATCH

        def prepare(r):
            if r.text is None:
                raise InputError(f"{r.where}: no text")
            return model.tokenizer.pad(model.tokenizer.ids(r.text, r.where))

        # The tokenizer is Python holding the GIL (threads would not overlap it), and its truncation warnings
        # are caught by the caller's thread.
        encode, workers = (lambda x: model.encode_ids(x, bs)), 0
    labels: list[int] = []
    rows, items, ids, errors = [], [], [], []
    with progress_bar(None, f"embedding bank {kind}s", "item", progress) as bar:
        stream = _checked_records(records, label_field)
        for batch in encode_batches(stream, prepare, lambda r: r.where, encode, bs, workers):
            if batch.embeddings is not None:
                rows.append(batch.embeddings)
            items += [record_item(r, kind) for r in batch.items]
            ids += [r.key for r in batch.items]
            if label_field is not None:
                labels += [int(r.fields[label_field]) for r in batch.items]
            errors += batch.errors
            bar.update(len(batch.items) + len(batch.errors))
    if not rows:
        return None, errors
    emb = np.ascontiguousarray(np.concatenate(rows), np.float32)
    bank = Bank(
        kind=kind,
        items=items,
        ids=ids,
        embeddings=emb,
        model_name=model.name,
        fingerprint=model.fingerprint,
        family=model.family.name,
        index=build_index(emb, backend),
        labels=None if label_field is None else np.asarray(labels, np.int64),
    )
    return bank, errors


def _is_records(items: Any) -> tuple[bool, Any]:
    """Whether ``items`` are :class:`~jaxplain.data.sources.Record` s, and the items to use (an iterator's
    first item is peeked at and put back)."""
    from jaxplain.data.sources import Record

    if isinstance(items, (str, bytes, np.ndarray)):
        return False, items
    if isinstance(items, Sequence):
        return bool(len(items)) and isinstance(items[0], Record), items
    it = iter(items)
    first = next(it, None)
    if first is None:
        return False, []
    rest = itertools.chain([first], it)
    return isinstance(first, Record), (rest if isinstance(first, Record) else list(rest))


def build_bank(
    model: Model,
    *,
    images: Iterable[Any] | np.ndarray | None = None,
    texts: Iterable[Any] | None = None,
    ids: Sequence[str] | None = None,
    labels: Sequence[int] | np.ndarray | None = None,
    backend: str = "auto",
    batch_size: int | None = None,
    progress: bool = True,
    source: str | None = None,
    label_field: str | None = None,
) -> tuple[Bank, list[dict]]:
    """Encode real items with ``model`` and index them.

    Args:
      model: the model the bank will serve.
      images: image paths, or in-memory images (arrays ``[H, W]``, ``[H, W, C]``, ``[C, H, W]`` uint8 or
        float in ``[0, 1]``, PIL images, bytes); an array ``[N, H, W(, C)]`` counts as ``N`` images. Or
        :class:`~jaxplain.data.sources.Record` s (e.g. ``read_records(list_shards(["data/{000..009}.tar"]))``),
        pulled lazily, so that memory holds a batch of images, not the input: an item's id is its record's
        key (the tar sample's key, the parquet key column), its bank item :func:`record_item`, and an error
        record, an undecodable image or a repeated key is reported by its ``where`` (shard and row) and skipped.
      texts: the texts, or records whose ``text`` is the text (exactly one of ``images`` and ``texts``).
      ids: one unique id per item; default: the file name (the path as given where names collide),
        ``f"text:{line}"`` with 1-based lines, or ``str(i)`` for in-memory images.
      labels: optional int label per item.
      backend: index backend, see :func:`~jaxplain.counterfactual.index.build_index`.
      batch_size: items per forward pass (default: the model's image or text default).
      progress: show a progress bar on standard error.
      source: the file the texts came from, to name bad lines as ``FILE:LINE``.
      label_field: with records, the field (parquet column, key of a tar sample's ``json``) holding each
        item's integer label; a record without one is reported and skipped.

    Returns:
      The bank of the good items, and one ``{"item", "error"}`` record per bad item skipped (an image that
      cannot be decoded, an empty text, an item the model gives a non-finite embedding). Tokenizer warnings
      (a truncated text) are left to propagate.

    Raises:
      InputError: no items, or none could be encoded, or ``ids``/``labels`` do not fit the items.
    """
    from jaxplain.data.images import describe
    from jaxplain.models.bundle import IMAGE_BATCH, TEXT_BATCH

    if (images is None) == (texts is None):
        raise InputError("give exactly one of images= and texts=")
    if isinstance(texts, str):
        raise InputError("texts= must be a list of texts, got a single string (wrap it in a list)")
    records, given = _is_records(images if images is not None else texts)
    if records:
        if ids is not None or labels is not None:
            raise InputError("records bring their own ids (their keys) and labels (label_field=)")
        kind = "image" if images is not None else "text"
        bank, errors = _build_from_records(model, given, kind, label_field, backend, batch_size, progress)
        if bank is None:
            first = "; ".join(f"{e['item']}: {e['error']}" for e in errors[:3])
            more = "; …" if len(errors) > 3 else ""
            raise InputError(f"no item could be encoded ({first or 'there were none'}{more})")
        return bank, errors
    if label_field is not None:
        raise InputError("label_field= reads labels from records; give labels= with paths, images or texts")
    all_items = list(given)
    n = len(all_items)
    if not n:
        raise InputError("no items to put in the bank")
    label_array = None if labels is None else _check_labels(labels, n)
    if images is not None:
        kind = "image"
        item_ids = _check_ids(ids, n) if ids is not None else _default_image_ids(all_items)
        names = [str(x) if isinstance(x, (str, Path)) else describe(x, i) for i, x in enumerate(all_items)]
        strings = [str(x) if isinstance(x, (str, Path)) else item_ids[i] for i, x in enumerate(all_items)]
        bs = batch_size or IMAGE_BATCH
        emb, kept, errors = encode_stream(
            n,
            lambda i: model.processing.pixels(all_items[i], names[i]),
            names.__getitem__,
            lambda x: model.encode_pixels(x, bs),
            bs,
            "embedding bank images",
            show=progress,
        )
    else:
        kind = "text"
        item_ids = _check_ids(ids, n) if ids is not None else [f"text:{i + 1}" for i in range(n)]
        names = [f"{source}:{i + 1}" if source else item_ids[i] for i in range(n)]
        strings = all_items
        bs = batch_size or TEXT_BATCH
        emb, kept, errors = encode_stream(
            n,
            lambda i: model.tokenizer.pad(model.tokenizer.ids(all_items[i], names[i])),
            names.__getitem__,
            lambda x: model.encode_ids(x, bs),
            bs,
            "embedding bank texts",
            show=progress,
        )
    if emb is None:
        first = "; ".join(f"{e['item']}: {e['error']}" for e in errors[:3])
        raise InputError(f"no item of the {n} could be encoded ({first}{'; …' if len(errors) > 3 else ''})")
    bank = Bank(
        kind=kind,
        items=[strings[i] for i in kept],
        ids=[item_ids[i] for i in kept],
        embeddings=np.ascontiguousarray(emb, np.float32),
        model_name=model.name,
        fingerprint=model.fingerprint,
        family=model.family.name,
        index=build_index(emb, backend),
        labels=None if label_array is None else label_array[kept],
    )
    return bank, errors

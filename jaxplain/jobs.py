"""Resumable jobs with exactly-once output: numbered parts, each written whole or not at all.

A job's output directory holds::

    job.json                          the job's configuration (model, bank, options, input), written first
    part-00000-of-00042.jsonl         one part per unit of input, in input order
    part-00000-of-00042.jsonl.done    its marker: records, bytes and checksum of the finished part
    ...
    manifest.json                     written once every part is done: the parts, counts, the configuration

A part is written to a temporary name, flushed and ``fsync``-ed, renamed into place, and only then
marked done (the marker is written the same way). A job killed at any moment leaves finished parts
with their markers, perhaps one renamed part without a marker (it is written again), and perhaps a
temporary file (ignored, and replaced). Running the same command again skips the parts that are done
and writes the rest, so nothing is lost or duplicated; running it with another configuration in the
same directory is refused, naming what differs. Each part belongs to exactly one process of a
multi-process job (:func:`parts_for_process`), so processes never write the same file.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from jaxplain.errors import InputError
from jaxplain.outputs import acquire_lock, json_line, remove_stale_many, write_bytes, write_json
from jaxplain.outputs import fsync_dir as fsync_dir  # re-exported: callers import it from here

JOB_FILE = "job.json"
LOCK_FILE = ".lock"
MANIFEST_FILE = "manifest.json"
DONE_SUFFIX = ".done"
FORMAT = "jaxplain-job"
VERSION = 1


def numbered(stem: str, index: int, total: int) -> str:
    """``{stem}-00003-of-00042`` (0-based index, at least five digits, as wide as ``total``)."""
    width = max(5, len(str(total)))
    return f"{stem}-{index:0{width}d}-of-{total:0{width}d}"


def part_name(index: int, total: int) -> str:
    """``part-00003-of-00042.jsonl`` (0-based index)."""
    return numbered("part", index, total) + ".jsonl"


def parts_for_process(total: int, process_index: int, process_count: int) -> list[int]:
    """The parts process ``process_index`` of ``process_count`` writes: every ``process_count``-th, from its
    own index (round-robin, so the parts of a long job end at about the same time on every process)."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process {process_index} of {process_count}")
    return list(range(process_index, total, process_count))


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all (:func:`jaxplain.outputs.write_bytes`: a temporary
    sibling, fsync, rename, fsync the directory; an ``OSError`` is an ``OutputError`` and nothing is written)."""
    write_bytes(path, data)


def _this_process() -> tuple[int, int]:
    """``(index, count)`` of this process: from ``jax.distributed`` when a program initialized it, else ``(0, 1)``
    (without importing JAX, or starting its backend, for a program that never did)."""
    jax = sys.modules.get("jax")
    if jax is None or not jax.distributed.is_initialized():
        return 0, 1
    return jax.process_index(), jax.process_count()


def canonical(config: dict[str, Any]) -> str:
    """The configuration as canonical JSON (sorted keys): two runs are the same job iff these are equal."""
    return json.dumps(config, sort_keys=True, ensure_ascii=False)


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(
                f"{prefix}{key}: {json.dumps(a, ensure_ascii=False)} then, {json.dumps(b, ensure_ascii=False)} now"
            )
    return out


class JobDir:
    """The output directory of one job of ``total`` parts, with its configuration.

    Opening it writes ``job.json`` (or checks that the one there holds the same configuration: another
    configuration raises :class:`~jaxplain.errors.InputError` listing the differences). A directory that
    holds files but no ``job.json`` is refused, so a mistyped path never mixes a job into other files.

    For the job's life (until :meth:`close`, the end of a ``with`` block, or the object's collection) it
    holds a lock in the directory (:func:`jaxplain.outputs.acquire_lock`), so a second run writing the
    same directory is refused with :class:`~jaxplain.errors.OutputError` naming the first run's pid. In a
    multi-process job each process holds its own lock (``.lock`` for process 0, ``.lock-N`` for process
    N), so the processes of one job work together and a second job is refused by any of them. Once locked,
    it removes the temporaries that a killed run left of its files (of this process's parts only, in a
    multi-process job, since the other processes may be writing theirs); they are listed in ``removed``.

    Args:
      process: ``(index, count)`` of this process in its job; default: from ``jax.distributed`` when it
        was initialized, else ``(0, 1)``.
      lock: whether to lock the directory (True by default).
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        config: dict[str, Any],
        total: int,
        *,
        process: tuple[int, int] | None = None,
        lock: bool = True,
    ):
        self.directory = Path(directory)
        self.total = int(total)
        self.config = {"format": FORMAT, "version": VERSION, "parts": self.total, **config}
        self.process = _this_process() if process is None else (int(process[0]), int(process[1]))
        self.removed: list[Path] = []
        self._lock = None
        d = self.directory
        if d.exists() and not d.is_dir():
            raise InputError(f"{d}: exists and is not a directory")
        d.mkdir(parents=True, exist_ok=True)
        job = d / JOB_FILE
        if not job.is_file():
            self._refuse_foreign()  # before the lock file is made there
        if lock:
            index = self.process[0]
            name = LOCK_FILE if index == 0 else f"{LOCK_FILE}-{index}"
            self._lock = acquire_lock(d / name, str(d), "wait for it to finish or choose another output directory")
        try:
            if job.is_file():
                try:
                    old = json.loads(job.read_text(encoding="utf-8"))
                except (OSError, ValueError) as e:
                    raise InputError(f"{job}: unreadable ({e})") from None
                if canonical(old) != canonical(self.config):
                    diff = "; ".join(_differences(old, self.config)) or "the configuration"
                    raise InputError(
                        f"{d}: holds the output of another job ({diff}); use another output directory, or the "
                        "same options to resume that job"
                    )
            else:
                self._refuse_foreign()
                write_json(job, self.config)
            if lock:
                self.removed = remove_stale_many(d, self._own_names())
        except BaseException:
            self.close()
            raise

    def _refuse_foreign(self) -> None:
        visible = [p.name for p in self.directory.iterdir() if not p.name.startswith(".")]
        if visible and not (self.directory / JOB_FILE).is_file():
            raise InputError(
                f"{self.directory}: not empty and not a jaxplain job ({', '.join(sorted(visible)[:3])}, ...)"
            )

    def _own_names(self) -> list[str]:
        """The files whose temporaries this process may remove: all of the job's alone, else its own parts'."""
        index, count = self.process
        parts = range(self.total) if count == 1 else parts_for_process(self.total, index, count)
        names = [n for i in parts for n in (part_name(i, self.total), part_name(i, self.total) + DONE_SUFFIX)]
        if count == 1:
            names.append(JOB_FILE)
        if index == 0:
            names.append(MANIFEST_FILE)
        return names

    def close(self) -> None:
        """Release the directory's lock (and remove its lock file); the job's files stay."""
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()

    def __enter__(self) -> JobDir:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def path(self, index: int) -> Path:
        """The path of part ``index``."""
        return self.directory / part_name(index, self.total)

    def done(self, index: int) -> bool:
        """Whether part ``index`` is finished: its marker exists and describes the file there."""
        marker = self._marker(index)
        try:
            meta = json.loads(marker.read_text(encoding="utf-8"))
            return self.path(index).stat().st_size == meta["bytes"]
        except (OSError, ValueError, KeyError, TypeError):
            return False

    def pending(self, parts: Iterable[int]) -> list[int]:
        """The parts of ``parts`` that are not finished."""
        return [i for i in parts if not self.done(i)]

    def _marker(self, index: int) -> Path:
        p = self.path(index)
        return p.with_name(p.name + DONE_SUFFIX)

    def write(
        self, index: int, records: Iterable[dict[str, Any]], summary: dict[str, int] | None = None
    ) -> dict[str, Any]:
        """Write part ``index`` (one JSON object per line) and mark it done; returns the marker's contents.

        ``summary`` (counts, e.g. by status) is kept in the marker, so that a resumed job can report the
        whole job without reading the finished parts again. Records are serialised strictly
        (:func:`jaxplain.outputs.json_line`): a NaN or infinity is a :class:`~jaxplain.outputs.NotFiniteError`
        (a ``ValueError``) naming the part, the record and the key ("PART: record 2: score is NaN; ..."), and
        the part is not written: never an invalid line in the output.
        """
        if not 0 <= index < self.total:
            raise ValueError(f"part {index} of {self.total}")
        path = self.path(index)
        lines = [json_line(r, where=f"{path}: record {n}") + "\n" for n, r in enumerate(records, 1)]
        data = "".join(lines).encode("utf-8")
        write_atomic(path, data)
        meta = {"part": index, "records": data.count(b"\n"), "bytes": len(data), "blake2b": _digest(data)}
        if summary is not None:
            meta["summary"] = summary
        write_json(self._marker(index), meta, indent=None)
        return meta

    def records(self, index: int) -> Iterator[dict[str, Any]]:
        """The records of a finished part."""
        with self.path(index).open(encoding="utf-8") as f:
            for line in f:
                yield json.loads(line)

    def markers(self) -> list[dict[str, Any]] | None:
        """Every part's marker, in order, or None while a part is not done."""
        out = []
        for i in range(self.total):
            if not self.done(i):
                return None
            out.append(json.loads(self._marker(i).read_text(encoding="utf-8")))
        return out

    def summary(self, parts: Iterable[int] | None = None) -> dict[str, int]:
        """The sum of the finished parts' summaries (of ``parts``, default all)."""
        out: dict[str, int] = {}
        for i in range(self.total) if parts is None else parts:
            if self.done(i):
                meta = json.loads(self._marker(i).read_text(encoding="utf-8"))
                for key, value in meta.get("summary", {}).items():
                    out[key] = out.get(key, 0) + value
        return out

    def finish(self) -> Path | None:
        """Write ``manifest.json`` if every part is done (any process may: the contents are the same, and
        the write is atomic); returns its path, or None while parts are missing."""
        markers = self.markers()
        if markers is None:
            return None
        manifest = {
            **self.config,
            "complete": True,
            "records": sum(m["records"] for m in markers),
            "summary": self.summary(),
            "files": [{"name": part_name(m["part"], self.total), **m} for m in markers],
        }
        path = self.directory / MANIFEST_FILE
        write_json(path, manifest)
        return path


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def file_digest(path: str | os.PathLike, block: int = 1 << 20) -> str:
    """A checksum of a file's bytes, read in blocks (bounded memory)."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def read_jsonl_parts(directory: str | os.PathLike) -> list[dict[str, Any]]:
    """Every record of a finished job directory, in part order (for tests and small jobs)."""
    d = Path(directory)
    manifest = json.loads((d / MANIFEST_FILE).read_text(encoding="utf-8"))
    out: list[dict[str, Any]] = []
    for f in manifest["files"]:
        with (d / f["name"]).open(encoding="utf-8") as fh:
            out.extend(json.loads(line) for line in fh)
    return out

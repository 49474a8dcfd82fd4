"""Outputs that fail early, are written whole or not at all, and are never written by two runs at once.

Every command writes its results through this module:

* :func:`check_output`, before any work: the output location can be written (a directory where a file
  is wanted, a wrong suffix, a parent that cannot be made or written in, a read-only file are an
  :class:`~jaxplain.errors.OutputError` naming the option and the path, before the compute is spent).
* :func:`atomic_writer` and the helpers on top of it (:func:`write_bytes`, :func:`write_text`,
  :func:`write_json`, :func:`save_npy`): each file is written to a unique temporary sibling
  ``.{name}.tmp-XXXXXXXX``, flushed and ``fsync``-ed, renamed over the target, and the directory synced.
  A failure at any moment (a full disk, an interrupt) removes the temporary and leaves the old file, if
  any, untouched; an ``OSError`` becomes an ``OutputError`` that says nothing was written.
* JSON is strict (:func:`json_line`, :func:`write_json`): a NaN or an infinity is a
  :class:`NotFiniteError` naming the key that holds it, never a bare ``NaN`` in a file.
* :func:`lock_output`: an exclusive lock on ``.{name}.lock`` beside the output for the run's life, so a
  second run writing the same output is refused with the first run's pid and start time, and
  :func:`remove_stale`, under the lock, deletes the temporaries a killed run left behind.

Locks are ``flock(2)`` locks: the kernel releases them when the process ends, however it ends, so a lock
file left by a killed run is not held and is simply taken over. On a file system without ``flock``
(some FUSE and old NFS mounts answer ``ENOLCK`` or ``EOPNOTSUPP``) the run goes on unlocked after a
:class:`UserWarning` that names the output: the outputs are still written atomically, but two runs are
not kept apart there.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import shutil
import socket
import tempfile
import time
import warnings
import weakref
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from jaxplain.errors import JaxplainError, OutputError

try:
    import fcntl
except ImportError:  # not on POSIX: no locks (see the module's docstring)
    fcntl = None

TMP_MARK = ".tmp-"
LOCK_SUFFIX = ".lock"
# mkstemp and mkdtemp end their names with 8 characters of this alphabet.
_TMP_TAIL = re.compile(r"[a-z0-9_]+")
# What flock answers on a file system that does not support it.
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL}


class NotFiniteError(JaxplainError, ValueError):
    """A NaN or an infinity (or a value JSON cannot hold) was about to be written; the message names its key."""


# --- checking before the work -------------------------------------------------------------------------------


def check_output(
    path: str | os.PathLike,
    *,
    suffixes: Iterable[str] | None = None,
    kind: str = "file",
    what: str = "--out",
) -> Path:
    """Check, before any work, that ``path`` can be written as a ``kind`` ("file" or "directory").

    Creates the missing parent directories. Raises :class:`~jaxplain.errors.OutputError` naming ``what``
    (the option) and the path if a file is wanted and the path is a directory (or a directory is wanted
    and it is a file), if a file's name does not end in one of ``suffixes``, if the parent cannot be
    created (a file in the way, no permission), if nothing can be created in the parent (probed by
    creating and removing a temporary file there), or if the path exists and is not writable.

    Returns:
      ``path`` as a :class:`~pathlib.Path`.
    """
    if kind not in ("file", "directory"):
        raise ValueError(f"kind must be 'file' or 'directory', got {kind!r}")
    p = Path(path)
    label = f"{what} {path}" if what else str(path)
    ends = tuple(suffixes or ())
    wanted = f"a file ending in {' or '.join(ends)}" if ends else "a file"
    if kind == "file":
        if p.is_dir():
            raise OutputError(f"{label}: is a directory; give {wanted}")
        if ends and not p.name.endswith(ends):
            raise OutputError(f"{label}: does not end in {' or '.join(ends)}; give {wanted}")
    elif p.exists() and not p.is_dir():
        raise OutputError(f"{label}: is a file; give a directory")
    parent = p.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((a for a in [parent, *parent.parents] if a.exists() and not a.is_dir()), parent)
        raise OutputError(f"{label}: cannot create the directory {parent} ({blocker} is a file)") from None
    except OSError as e:
        raise OutputError(f"{label}: cannot create the directory {parent} ({_reason(e)})") from None
    where = [parent, p] if kind == "directory" and p.is_dir() else [parent]
    for directory in where:
        try:
            fd, probe = tempfile.mkstemp(prefix=f".{p.name}{TMP_MARK}", dir=directory)
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise OutputError(f"{label}: cannot write in {directory} ({_reason(e)})") from None
    if kind == "file" and p.exists() and not os.access(p, os.W_OK):
        raise OutputError(f"{label}: exists and is not writable ({os.strerror(errno.EACCES)})")
    return p


def _reason(e: OSError) -> str:
    return e.strerror or str(e) or type(e).__name__


# --- atomic writes --------------------------------------------------------------------------------------------


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename in ``directory`` durable (where the file system can sync a directory)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _cannot_write(path: str | os.PathLike, e: OSError) -> OutputError:
    err = OutputError(f"cannot write {path}: {_reason(e)}; nothing was written")
    err.__cause__ = e
    return err


class _Output:
    """The temporary file of :func:`atomic_writer`: writes that fail are an ``OutputError`` naming the target."""

    def __init__(self, file: IO, path: str | os.PathLike):
        self._file = file
        self._path = path

    def write(self, data):
        """Write ``data`` (an ``OSError``, such as a full disk, is an ``OutputError`` naming the target)."""
        try:
            return self._file.write(data)
        except OSError as e:
            raise _cannot_write(self._path, e) from e

    def writelines(self, lines):
        """Write each of ``lines``."""
        for line in lines:
            self.write(line)

    def flush(self):
        """Flush the file's buffer."""
        try:
            self._file.flush()
        except OSError as e:
            raise _cannot_write(self._path, e) from e

    def __getattr__(self, name):
        return getattr(self._file, name)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Yield a file to write ``path`` whole or not at all.

    The file is a unique temporary sibling ``.{name}.tmp-XXXXXXXX`` (``mode`` "wb", or "w" for UTF-8
    text); when the block ends it is flushed, ``fsync``-ed, given the permissions of a new file, renamed
    over ``path``, and the directory is synced. On any exception (a full disk mid-write, an interrupt) the
    temporary is removed and ``path`` is untouched; an ``OSError`` of the write is raised as
    :class:`~jaxplain.errors.OutputError` ("cannot write PATH: REASON; nothing was written", the original as
    its ``__cause__``), other exceptions as they are.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TMP_MARK}", dir=path.parent)
    except OSError as e:
        raise _cannot_write(path, e) from e
    try:
        file = os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"}))
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    done = False
    try:
        yield _Output(file, path)
        try:
            file.flush()
            os.fsync(file.fileno())
            file.close()
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, path)
        except OSError as e:
            raise _cannot_write(path, e) from e
        done = True
    finally:
        if not done:
            with contextlib.suppress(OSError, ValueError):
                file.close()  # a full buffer may fail to flush again: the file is removed anyway
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    fsync_dir(path.parent)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_writer`)."""
    with atomic_writer(path, "wb") as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` as UTF-8, atomically (:func:`atomic_writer`)."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 1) -> None:
    """Write ``obj`` as JSON (UTF-8, a final newline) to ``path`` atomically.

    The JSON is strict: a NaN or an infinity anywhere in ``obj`` raises :class:`NotFiniteError`
    ("cannot write PATH: KEY is NaN; only finite numbers can be written, so nothing was written"), and
    nothing is written.
    """
    try:
        text = json.dumps(obj, indent=indent, ensure_ascii=False, allow_nan=False)
    except (ValueError, TypeError) as e:
        raise _json_error(obj, e, f"cannot write {path}", ", so nothing was written") from None
    write_text(path, text + "\n")


def save_npy(path: str | os.PathLike, array: Any) -> None:
    """Save ``array`` to ``path`` in NumPy's ``.npy`` format (no pickles), atomically."""
    array = np.asanyarray(array)
    with atomic_writer(path, "wb") as f:
        np.save(f, array, allow_pickle=False)


def json_line(obj: Any, *, where: str | None = None) -> str:
    """``obj`` as one line of strict JSON (no ASCII escapes, no final newline).

    A NaN or an infinity raises :class:`NotFiniteError` naming its key, after ``where`` when given:
    "line 3: scores[1].probability is NaN; only finite numbers can be written". A value of a type JSON
    has no form for is a ``TypeError`` naming its key.
    """
    try:
        return json.dumps(obj, ensure_ascii=False, allow_nan=False)
    except (ValueError, TypeError) as e:
        raise _json_error(obj, e, where) from None


def _json_error(obj: Any, e: Exception, where: str | None, tail: str = "") -> Exception:
    found = _first_bad(obj, "")
    prefix = f"{where}: " if where else ""
    if found is None:  # e.g. a circular reference
        return type(e)(f"{prefix}{e}")
    key, value = found
    key = key or "the value"
    if isinstance(value, float):
        text = "NaN" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        return NotFiniteError(f"{prefix}{key} is {text}; only finite numbers can be written{tail}")
    return TypeError(f"{prefix}{key} is a {type(value).__name__}, which JSON cannot hold{tail}")


def _first_bad(obj: Any, key: str) -> tuple[str, Any] | None:
    """The first value of ``obj`` that strict JSON cannot hold, with its key (``a.b[2]``), or None."""
    if isinstance(obj, float):
        return None if math.isfinite(obj) else (key, obj)
    if obj is None or isinstance(obj, (str, int)):
        return None
    if isinstance(obj, dict):
        for k, v in obj.items():
            name = str(k)
            sub = (f"{key}.{name}" if key else name) if name.isidentifier() else f"{key}[{json.dumps(name)}]"
            if (found := _first_bad(v, sub)) is not None:
                return found
        return None
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            if (found := _first_bad(v, f"{key}[{i}]")) is not None:
                return found
        return None
    return key, obj


# --- stale temporaries ----------------------------------------------------------------------------------------


def remove_stale(path: str | os.PathLike) -> list[Path]:
    """Delete the temporaries a killed run left beside ``path`` (``.{name}.tmp-*`` files and directories, and
    the ``{name}.partial`` / ``.{name}.partial`` of earlier versions); returns what was removed, sorted.

    Call it while holding :func:`lock_output` on ``path``: another run's temporaries are then not in flight.
    """
    p = Path(path)
    return remove_stale_many(p.parent, [p.name])


def remove_stale_many(directory: str | os.PathLike, names: Iterable[str]) -> list[Path]:
    """:func:`remove_stale` for each of ``names`` in ``directory``, in one pass over the directory."""
    d = Path(directory)
    names = set(names)
    removed = []
    try:
        entries = list(os.scandir(d))
    except (FileNotFoundError, NotADirectoryError):
        return []
    for entry in entries:
        if not _is_stale(entry.name, names):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        except FileNotFoundError:
            continue
        removed.append(d / entry.name)
    return sorted(removed)


def _is_stale(entry: str, names: set[str]) -> bool:
    if entry.endswith(".partial"):
        base = entry[: -len(".partial")]
        return base in names or (base.startswith(".") and base[1:] in names)
    head, mark, tail = entry.rpartition(TMP_MARK)
    return bool(mark) and head.startswith(".") and head[1:] in names and _TMP_TAIL.fullmatch(tail) is not None


# --- locks ----------------------------------------------------------------------------------------------------


class _Lock:
    """An ``flock`` held on a lock file, counted so that one process may take it more than once."""

    def __init__(self, lock_path: Path, fd: int | None):
        self.lock_path = lock_path
        self.fd = fd  # None: the file system has no flock; nothing is held
        self.count = 1

    def release(self) -> None:
        """Give up one hold; the last removes the lock file (while still locked) and releases the lock."""
        self.count -= 1
        if self.count > 0 or self.fd is None:
            return
        fd, self.fd = self.fd, None
        _HELD.pop(str(self.lock_path), None)
        try:
            # Remove the file only while it is still the one locked here: a run that opened it in the
            # meantime finds, once it gets the lock, that the path no longer names its file, and starts again.
            with contextlib.suppress(OSError):
                if _same_file(fd, self.lock_path):
                    os.unlink(self.lock_path)
        finally:
            os.close(fd)

    def __del__(self):
        if getattr(self, "fd", None) is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)  # the kernel releases the lock; the file is taken over by the next run


_HELD: weakref.WeakValueDictionary[str, _Lock] = weakref.WeakValueDictionary()


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def acquire_lock(lock_path: str | os.PathLike, label: str, advice: str) -> _Lock:
    """Take the exclusive lock of ``lock_path`` (created if missing) without waiting, and return it.

    The pid, host and time are written into the file. If another process holds it, raise
    :class:`~jaxplain.errors.OutputError`: "LABEL: another jaxplain run (pid P, started T) is writing it;
    ADVICE". A lock this process already holds is taken again (and must be released as often). A lock file
    left by a killed run is not held, and is taken over. See the module's docstring for file systems
    without ``flock``.
    """
    lock_path = Path(os.path.abspath(lock_path))
    held = _HELD.get(str(lock_path))
    if held is not None and held.fd is not None and _same_file(held.fd, lock_path):
        held.count += 1
        return held
    if fcntl is None:
        return _unlocked(lock_path, label, "this platform has no flock")
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as e:
            raise OutputError(f"{label}: cannot create its lock {lock_path} ({_reason(e)})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise OutputError(f"{label}: another jaxplain run{holder} is writing it; {advice}") from None
        except OSError as e:
            os.close(fd)
            if e.errno in _NO_FLOCK:
                return _unlocked(lock_path, label, _reason(e))
            raise OutputError(f"{label}: cannot lock {lock_path} ({_reason(e)})") from None
        if not _same_file(fd, lock_path):  # removed (or replaced) by its last holder before we got it
            os.close(fd)
            continue
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        lock = _Lock(lock_path, fd)
        _HELD[str(lock_path)] = lock
        return lock


def _unlocked(lock_path: Path, label: str, reason: str) -> _Lock:
    warnings.warn(
        f"{label}: cannot lock it ({reason}); going on unlocked, so make sure no other run writes it",
        stacklevel=3,
    )
    return _Lock(lock_path, None)


def _holder(fd: int) -> str:
    """`` (pid P, started T)`` from a held lock file, with the host when it is another; empty if unreadable."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        pid, started, host = int(info["pid"]), str(info["started"]), str(info.get("host", ""))
    except (OSError, ValueError, KeyError, TypeError):
        return ""  # just taken, not yet written
    where = f" on {host}" if host and host != socket.gethostname() else ""
    return f" (pid {pid}{where}, started {started})"


def lock_path_for(path: str | os.PathLike) -> Path:
    """The lock file of output ``path``: ``.{name}.lock`` beside it."""
    p = Path(path)
    return p.with_name(f".{p.name}{LOCK_SUFFIX}")


@contextlib.contextmanager
def lock_output(path: str | os.PathLike, *, what: str = "--out") -> Iterator[Path]:
    """Hold an exclusive lock on output ``path`` for the block, so that no other run writes it meanwhile.

    The lock is ``.{name}.lock`` beside ``path`` (created; it holds the pid and start time, and is removed
    on exit). If another process holds it, raise :class:`~jaxplain.errors.OutputError`: "--out
    results.jsonl: another jaxplain run (pid 1234, started 2026-12-02 04:10:03) is writing it; wait for it
    to finish or choose another --out". Yields the lock file's path.
    """
    label = f"{what} {path}" if what else str(path)
    advice = f"wait for it to finish or choose another {what or 'output'}"
    lock = acquire_lock(lock_path_for(path), label, advice)
    try:
        yield lock.lock_path
    finally:
        lock.release()

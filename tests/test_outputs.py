"""Outputs: checked before the work, written whole or not at all (a full disk, an interrupt), strict JSON,
one run at a time per output (two real processes), and the leftovers of a killed run removed."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from jaxplain.errors import InputError, OutputError
from jaxplain.jobs import JobDir, part_name
from jaxplain.outputs import (
    NotFiniteError,
    atomic_writer,
    check_output,
    json_line,
    lock_output,
    remove_stale,
    save_npy,
    write_bytes,
    write_json,
    write_text,
)

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --- check_output ------------------------------------------------------------------------------------------


def test_check_output_refuses_before_any_work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("results").mkdir()
    with pytest.raises(OutputError) as e:
        check_output("results", suffixes=[".jsonl"])
    assert str(e.value) == "--out results: is a directory; give a file ending in .jsonl"
    with pytest.raises(OutputError) as e:
        check_output("results.txt", suffixes=[".jsonl", ".json"])
    assert str(e.value) == "--out results.txt: does not end in .jsonl or .json; give a file ending in .jsonl or .json"
    Path("notes").write_text("mine")
    with pytest.raises(OutputError) as e:
        check_output("notes", kind="directory", what="--bank")
    assert str(e.value) == "--bank notes: is a file; give a directory"
    with pytest.raises(OutputError) as e:
        check_output("notes/sub/x.npy")
    assert str(e.value) == "--out notes/sub/x.npy: cannot create the directory notes/sub (notes is a file)"
    # What passes: a new file in new directories (they are made, and nothing else is left there).
    assert check_output("a/b/out.jsonl", suffixes=[".jsonl"]) == Path("a/b/out.jsonl")
    assert _listing(tmp_path / "a" / "b") == []
    assert check_output("results", kind="directory") == Path("results") and _listing(tmp_path / "results") == []


def test_check_output_unwritable_parent_and_file(tmp_path, monkeypatch):
    # Root writes anywhere, so the refusal of the probe is injected here; a real read-only mount is below.
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    (tmp_path / "ro").mkdir()
    with monkeypatch.context() as m:
        m.setattr("tempfile.mkstemp", refuse)
        with pytest.raises(OutputError) as e:
            check_output(tmp_path / "ro" / "x.npy")
    assert str(e.value) == f"--out {tmp_path}/ro/x.npy: cannot write in {tmp_path}/ro (Permission denied)"
    (tmp_path / "ro" / "x.npy").write_bytes(b"old")
    with monkeypatch.context() as m:
        m.setattr("os.access", lambda path, mode: False)
        with pytest.raises(OutputError) as e:
            check_output(tmp_path / "ro" / "x.npy", what="--embeddings")
    assert str(e.value) == f"--embeddings {tmp_path}/ro/x.npy: exists and is not writable (Permission denied)"


@pytest.mark.skipif(os.geteuid() == 0, reason="root bypasses file permissions")
def test_check_output_permission_denied_for_real(tmp_path):
    (tmp_path / "ro").mkdir(mode=0o555)
    with pytest.raises(OutputError) as e:
        check_output(tmp_path / "ro" / "x.npy")
    assert str(e.value) == f"--out {tmp_path}/ro/x.npy: cannot write in {tmp_path}/ro (Permission denied)"


def _in_mount_namespace(tmp_path: Path, options: str, code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a private mount namespace where ``tmp_path/mnt`` is a tmpfs mounted with ``options``."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = f"mount -t tmpfs -o {options} tmpfs {mnt} && exec {sys.executable} -c {_quote(code)}"
    return subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, env=ENV)


def _quote(code: str) -> str:
    return "'" + textwrap.dedent(code).replace("'", "'\"'\"'") + "'"


def _namespaces_work(tmp_path: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = tmp_path / "probe"
    probe.mkdir()
    r = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs tmpfs {probe}"], capture_output=True)
    probe.rmdir()
    return r.returncode == 0


def test_read_only_mount_is_refused_before_the_work(tmp_path):
    if not _namespaces_work(tmp_path):
        pytest.skip("no unprivileged mount namespaces here (unshare -rm) to mount a read-only file system")
    r = _in_mount_namespace(
        tmp_path,
        "ro,size=64k",
        f"""
        from jaxplain.errors import OutputError
        from jaxplain.outputs import check_output
        try:
            check_output("{tmp_path}/mnt/x.npy")
        except OutputError as e:
            print(e)
        """,
    )
    assert r.stdout.strip() == f"--out {tmp_path}/mnt/x.npy: cannot write in {tmp_path}/mnt (Read-only file system)"


# --- atomic writes -----------------------------------------------------------------------------------------


class _FullDisk:
    """A file whose writes fail with ENOSPC once ``room`` bytes are written (the kernel's answer on a full disk)."""

    def __init__(self, file, room):
        self.file, self.room = file, room

    def write(self, data):
        if len(data) > self.room:
            self.file.write(bytes(data[: self.room]))
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)


def test_full_disk_mid_file_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    out = tmp_path / "results.jsonl"
    out.write_text("the old results\n")
    real = os.fdopen
    monkeypatch.setattr("os.fdopen", lambda fd, mode, **kw: _FullDisk(real(fd, mode, **kw), 1000))
    with pytest.raises(OutputError) as e, atomic_writer(out) as f:
        for i in range(100):
            f.write(json_line({"line": i, "text": "x" * 40}).encode() + b"\n")
    assert str(e.value) == f"cannot write {out}: No space left on device; nothing was written"
    assert isinstance(e.value.__cause__, OSError) and e.value.__cause__.errno == errno.ENOSPC
    assert _listing(tmp_path) == ["results.jsonl"] and out.read_text() == "the old results\n"
    with pytest.raises(OutputError) as e:
        save_npy(tmp_path / "embeddings.npy", np.ones((100, 64), np.float32))
    assert str(e.value) == f"cannot write {tmp_path}/embeddings.npy: No space left on device; nothing was written"
    assert _listing(tmp_path) == ["results.jsonl"]


def test_full_tmpfs_for_real(tmp_path):
    if not _namespaces_work(tmp_path):
        pytest.skip("no unprivileged mount namespaces here (unshare -rm) to mount a small tmpfs")
    r = _in_mount_namespace(
        tmp_path,
        "size=64k",
        f"""
        import os
        import numpy as np
        from jaxplain.errors import OutputError
        from jaxplain.outputs import save_npy, write_text
        write_text("{tmp_path}/mnt/embeddings.npy", "old")
        try:
            save_npy("{tmp_path}/mnt/embeddings.npy", np.ones((1000, 64), np.float32))  # 256 KB
        except OutputError as e:
            print(e)
        print(sorted(os.listdir("{tmp_path}/mnt")), open("{tmp_path}/mnt/embeddings.npy").read())
        """,
    )
    assert r.stdout.splitlines() == [
        f"cannot write {tmp_path}/mnt/embeddings.npy: No space left on device; nothing was written",
        "['embeddings.npy'] old",
    ], r.stderr


def test_interrupt_leaves_nothing_and_is_not_turned_into_an_output_error(tmp_path):
    out = tmp_path / "x.json"
    with pytest.raises(KeyboardInterrupt), atomic_writer(out, "w") as f:
        f.write("{")
        raise KeyboardInterrupt
    assert _listing(tmp_path) == []
    with pytest.raises(InputError, match=r"^line 3: bad$"), atomic_writer(out) as f:
        raise InputError("line 3: bad")  # an error of the work, not of the write: as it is
    assert _listing(tmp_path) == []


def test_writers_write_whole_files_with_new_file_permissions(tmp_path):
    write_bytes(tmp_path / "a.bin", b"\x00\x01")
    write_text(tmp_path / "b.txt", "héllo\n")
    write_json(tmp_path / "c.json", {"name": "sac à dos", "p": [0.5, 1]})
    save_npy(tmp_path / "d.npy", np.arange(6, dtype=np.int16).reshape(2, 3))
    with atomic_writer(tmp_path / "e.txt", "w") as f:
        f.write("line 1\n")
        f.writelines(["line 2\n", "line 3\n"])
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "b.txt").read_bytes() == "héllo\n".encode()
    want = '{\n "name": "sac à dos",\n "p": [\n  0.5,\n  1\n ]\n}\n'
    assert (tmp_path / "c.json").read_text(encoding="utf-8") == want
    np.testing.assert_array_equal(np.load(tmp_path / "d.npy"), np.arange(6, dtype=np.int16).reshape(2, 3))
    assert (tmp_path / "e.txt").read_text() == "line 1\nline 2\nline 3\n"
    mask = os.umask(0)
    os.umask(mask)
    assert {oct(p.stat().st_mode & 0o777) for p in tmp_path.iterdir()} == {oct(0o666 & ~mask)}
    with pytest.raises(OutputError) as e:
        write_bytes(tmp_path / "missing" / "x.bin", b"")
    assert str(e.value) == f"cannot write {tmp_path}/missing/x.bin: No such file or directory; nothing was written"
    (tmp_path / "dir").mkdir()
    with pytest.raises(OutputError) as e:
        write_bytes(tmp_path / "dir", b"")
    assert str(e.value) == f"cannot write {tmp_path}/dir: Is a directory; nothing was written"
    assert sorted(_listing(tmp_path)) == ["a.bin", "b.txt", "c.json", "d.npy", "dir", "e.txt"]


# --- strict JSON -------------------------------------------------------------------------------------------


def test_nan_and_inf_are_refused_naming_the_key(tmp_path):
    record = {"id": "p1", "counterfactuals": [{"probability": 0.5}, {"probability": float("nan")}]}
    with pytest.raises(NotFiniteError) as e:
        json_line(record, where="line 3")
    assert str(e.value) == "line 3: counterfactuals[1].probability is NaN; only finite numbers can be written"
    assert isinstance(e.value, ValueError)
    with pytest.raises(NotFiniteError, match=r'^\["top-1"\]\.score is -inf; only finite numbers can be written$'):
        json_line({"top-1": {"score": -float("inf")}})
    with pytest.raises(NotFiniteError, match=r"^the value is inf; only finite numbers can be written$"):
        json_line(float("inf"))
    with pytest.raises(TypeError, match=r"^scores\[0\] is a float32, which JSON cannot hold$"):
        json_line({"scores": [np.float32(0.5)]})
    assert json_line({"text": "sac à dos", "p": np.float64(0.25)}) == '{"text": "sac à dos", "p": 0.25}'
    out = tmp_path / "report.json"
    out.write_text("old")
    with pytest.raises(NotFiniteError) as e:
        write_json(out, {"metrics": {"auc": float("nan")}})
    tail = "only finite numbers can be written, so nothing was written"
    assert str(e.value) == f"cannot write {out}: metrics.auc is NaN; {tail}"
    assert out.read_text() == "old" and _listing(tmp_path) == ["report.json"]


# --- stale temporaries -------------------------------------------------------------------------------------


def test_remove_stale_removes_only_the_leftovers_of_that_output(tmp_path):
    out = tmp_path / "results.jsonl"
    for name in (".results.jsonl.tmp-ab12_xyz", "results.jsonl.partial", ".results.jsonl.partial"):
        (tmp_path / name).write_text("torn")
    (tmp_path / ".results.jsonl.tmp-0n3dir9q").mkdir()
    (tmp_path / ".results.jsonl.tmp-0n3dir9q" / "part").write_text("torn")
    keep = ["results.jsonl", ".results.jsonl.lock", ".other.jsonl.tmp-ab12xyz9", ".results.jsonl.tmp-NOT.OURS", "x"]
    for name in keep:
        (tmp_path / name).write_text("keep")
    removed = remove_stale(out)
    assert removed == [
        tmp_path / ".results.jsonl.partial",
        tmp_path / ".results.jsonl.tmp-0n3dir9q",
        tmp_path / ".results.jsonl.tmp-ab12_xyz",
        tmp_path / "results.jsonl.partial",
    ]
    assert _listing(tmp_path) == sorted(keep)
    assert remove_stale(out) == [] and remove_stale(tmp_path / "missing" / "x") == []


# --- locks: two real processes -----------------------------------------------------------------------------


def _hold(imports: str, lock: str) -> subprocess.Popen:
    """A process that enters ``with LOCK:``, prints "held", and holds it until its stdin closes."""
    script = f"import sys\n{imports}\nwith {lock}:\n    print('held', flush=True)\n    sys.stdin.read()\n"
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    assert proc.stdout.readline() == "held\n"
    return proc


def _started(lock_file: Path) -> str:
    return json.loads(lock_file.read_text())["started"]


def test_second_writer_is_refused_until_the_first_ends(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = _hold("from jaxplain.outputs import lock_output", 'lock_output("results.jsonl")')
    try:
        started = _started(tmp_path / ".results.jsonl.lock")
        with pytest.raises(OutputError) as e, lock_output("results.jsonl"):
            pass
        assert str(e.value) == (
            f"--out results.jsonl: another jaxplain run (pid {first.pid}, started {started}) is writing it; "
            "wait for it to finish or choose another --out"
        )
    finally:
        first.stdin.close()
        assert first.wait(30) == 0
    assert _listing(tmp_path) == []  # the first run removed its lock file on exit
    with lock_output("results.jsonl") as lock_file:
        assert lock_file == tmp_path / ".results.jsonl.lock"
        assert json.loads(lock_file.read_text())["pid"] == os.getpid()
        with lock_output("results.jsonl"):  # this process may take its own lock again
            pass
        assert lock_file.exists()
    assert _listing(tmp_path) == []


def test_lock_of_a_killed_run_is_taken_over(tmp_path):
    out = tmp_path / "emb.npy"
    first = _hold("from jaxplain.outputs import lock_output", f'lock_output("{out}")')
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    assert _listing(tmp_path) == [".emb.npy.lock"]  # left behind, but no longer held
    with lock_output(out, what="--embeddings"):
        assert json.loads((tmp_path / ".emb.npy.lock").read_text())["pid"] == os.getpid()
    assert _listing(tmp_path) == []


def test_locks_exclude_each_other_under_contention(tmp_path):
    # Four processes, started together, take and release the same lock 40 times each, and under it increment
    # a counter by reading it, pausing and writing it back: one lost update would show that two held it at
    # once (the lock file removed on release while another opens it is the race the inode check closes).
    counter = tmp_path / "counter"
    counter.write_text("0")
    code = f"""
        import sys, time
        from jaxplain.errors import OutputError
        from jaxplain.outputs import lock_output
        print("ready", flush=True)
        sys.stdin.readline()
        done = refused = 0
        while done < 40:
            try:
                with lock_output("{tmp_path}/out.jsonl"):
                    n = int(open("{counter}").read())
                    time.sleep(0.0005)
                    open("{counter}", "w").write(str(n + 1))
                    done += 1
            except OutputError:
                refused += 1
                time.sleep(0.0002)
        print(refused)
        """
    run = [sys.executable, "-c", textwrap.dedent(code)]
    procs = [subprocess.Popen(run, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=ENV) for _ in range(4)]
    assert [p.stdout.readline() for p in procs] == ["ready\n"] * 4
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    refused = [int(p.communicate(timeout=120)[0]) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0]
    assert counter.read_text() == "160"
    assert sum(refused) > 0  # they did contend
    assert _listing(tmp_path) == ["counter"]


# --- JobDir: locked for the job's life, leftovers removed --------------------------------------------------


def test_job_dir_is_locked_and_cleans_its_leftovers(tmp_path):
    d = tmp_path / "job"
    config = {"command": "test"}
    first = _hold("from jaxplain.jobs import JobDir", f'JobDir("{d}", {config!r}, 4)')
    try:
        started = _started(d / ".lock")
        with pytest.raises(OutputError) as e:
            JobDir(d, config, 4)
        assert str(e.value) == (
            f"{d}: another jaxplain run (pid {first.pid}, started {started}) is writing it; wait for it to "
            "finish or choose another output directory"
        )
    finally:
        first.stdin.close()
        assert first.wait(30) == 0
    # A killed run's temporaries: of a part, of a marker, of the manifest; another file's is kept.
    leftovers = [f".{part_name(1, 4)}.tmp-k1ll3d00", f".{part_name(2, 4)}.done.tmp-k1ll3d01", ".manifest.json.tmp-x"]
    for name in [*leftovers, ".notes.tmp-abcdefgh"]:
        (d / name).write_text("torn")
    with JobDir(d, config, 4) as job:
        assert job.removed == sorted(d / n for n in leftovers)
        assert (d / ".lock").exists()
        job.write(0, [{"a": 1}])
    assert _listing(d) == [".notes.tmp-abcdefgh", "job.json", part_name(0, 4), part_name(0, 4) + ".done"]


def test_job_dir_processes_of_one_job_share_it(tmp_path):
    d = tmp_path / "job"
    config = {"command": "test"}
    for i in range(4):
        (d / f".{part_name(i, 4)}.tmp-abcdefgh").parent.mkdir(exist_ok=True)
        (d / f".{part_name(i, 4)}.tmp-abcdefgh").write_text("torn")
    (d / "job.json").write_text(json.dumps({"format": "jaxplain-job", "version": 1, "parts": 4, **config}))
    zero = JobDir(d, config, 4, process=(0, 2))
    one = JobDir(d, config, 4, process=(1, 2))  # its own lock file: the two work together
    # Each removed only its own parts' temporaries (the other process may be writing its own).
    assert zero.removed == [d / f".{part_name(0, 4)}.tmp-abcdefgh", d / f".{part_name(2, 4)}.tmp-abcdefgh"]
    assert one.removed == [d / f".{part_name(1, 4)}.tmp-abcdefgh", d / f".{part_name(3, 4)}.tmp-abcdefgh"]
    assert _listing(d) == [".lock", ".lock-1", "job.json"]
    zero.close()
    one.close()
    assert _listing(d) == ["job.json"]


def test_file_system_without_flock_goes_on_unlocked_with_a_warning(tmp_path, monkeypatch):
    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr("fcntl.flock", no_flock)
    out = tmp_path / "results.jsonl"
    with pytest.warns(UserWarning) as w, lock_output(out):
        write_text(out, "done\n")
    assert [str(x.message) for x in w] == [
        f"--out {out}: cannot lock it (No locks available); going on unlocked, so make sure no other run writes it"
    ]
    assert out.read_text() == "done\n"

"""Every command against the same hostile inputs: a decompression bomb, a strip whose resize would take
gigabytes, a symbolic-link loop and a stray file beside good images. Each bad item is named with its
reason, the good ones are finished and written (exit 1); outputs that cannot be written fail before any
work (exit 2); a full disk and a second writer lose nothing."""

import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest

from jaxplain.cli import main
from jaxplain.commands.common import EXIT_BAD_ITEMS, EXIT_ERROR, EXIT_OK
from tests.conftest import FIXTURES, TINY

ROOT = Path(__file__).resolve().parents[1]
GOOD = ["01_rgb.png", "06_gray.png"]
SOURCES = {"01_rgb.png": "01_rgb.png", "06_gray.png": "04_gray.png"}


def png(width: int, height: int, rows: int) -> bytes:
    """A grey PNG whose header declares ``width``×``height`` with ``rows`` rows of data: a few hundred bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    raw = (b"\0" + bytes(width)) * rows
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    for name in GOOD:
        shutil.copy(FIXTURES / "images" / SOURCES[name], d / name)
    (d / "03_bomb.png").write_bytes(png(30000, 30000, 1))
    (d / "04_strip.png").write_bytes(png(1, 20000, 20000))
    os.symlink("05_loop.png", d / "05_loop.png")
    (d / "notes.txt").write_text("not an image\n")
    return d


def messages(d: Path) -> dict[str, str]:
    return {
        "03_bomb.png": "30000×30000 pixels (900,000,000) is more than jaxplain decodes (89,478,485; set "
        "JAXPLAIN_MAX_IMAGE_PIXELS to raise it)",
        "04_strip.png": "1×20000 pixels (aspect ratio 20,000:1) would be resized to 32×640000 (20,480,000 pixels), "
        "more than jaxplain resizes to (16,777,216)",
        "05_loop.png": "a symbolic link loop",
    }


def check_skipped(err: str, d: Path) -> None:
    for name, why in messages(d).items():
        assert f"jaxplain: skipped {d / name}: {why}\n" in err
    assert f"jaxplain: not read: {d / 'notes.txt'}: not an image file by its suffix (.txt)\n" in err
    assert "Traceback" not in err


def test_embed_finishes_the_good_images(tiny_model, folder, tmp_path, capsys):
    out = tmp_path / "e.npy"
    assert main(["embed", "--model", str(TINY), "--images", str(folder), "--out", str(out)]) == EXIT_BAD_ITEMS
    check_skipped(capsys.readouterr().err, folder)
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["items"] == [str(folder / n) for n in GOOD]
    assert manifest["errors"] == [{"item": str(folder / n), "error": m} for n, m in messages(folder).items()]
    want = np.asarray(tiny_model.encode_images([folder / n for n in GOOD]))
    np.testing.assert_allclose(np.load(out), want, atol=1e-6)


def test_classify_and_bank_build_finish_the_good_images(tiny_model, folder, tmp_path, capsys):
    out = tmp_path / "p.jsonl"
    argv = ["classify", "--model", str(TINY), "--images", str(folder), "--classes", "shirt,bag", "--out", str(out)]
    assert main(argv) == EXIT_BAD_ITEMS
    check_skipped(capsys.readouterr().err, folder)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["item"] for r in rows] == [str(folder / n) for n in GOOD]
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    assert summary["bad_items"] == [{"item": str(folder / n), "error": m} for n, m in messages(folder).items()]

    from jaxplain.counterfactual.bank import Bank

    bank = tmp_path / "bank"
    assert main(["bank", "build", "--model", str(TINY), "--images", str(folder), "--out", str(bank)]) == 1
    check_skipped(capsys.readouterr().err, folder)
    loaded = Bank.load(bank, model=tiny_model)
    assert loaded.items == [str(folder / n) for n in GOOD]
    np.testing.assert_allclose(loaded.embeddings, tiny_model.encode_images([folder / n for n in GOOD]), atol=1e-6)


def test_explain_finishes_the_good_pairs(tiny_model, folder, tmp_path, capsys):
    from jaxplain.counterfactual.bank import build_bank
    from jaxplain.data import fashion_mnist

    images, _ = fashion_mnist.load_shipped_test()
    bank, _ = build_bank(tiny_model, images=list(images[:30]), backend="exact", progress=False)
    bank_dir = bank.save(tmp_path / "bank")
    names = [*GOOD[:1], "03_bomb.png", "04_strip.png", "05_loop.png", *GOOD[1:]]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"image": f"imgs/{n}", "want": "other-class"}) + "\n" for n in names))
    out = tmp_path / "r.jsonl"
    argv = ["explain", "--model", str(TINY), "--bank", str(bank_dir), "--pairs", str(pairs), "--out", str(out),
            "--classes", "shirt,bag,shoe"]  # fmt: skip
    assert main(argv) == EXIT_BAD_ITEMS
    res = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["status"] == "error" for r in res] == [False, True, True, True, False]
    for r, n in zip(res[1:4], names[1:4]):
        assert r["error"] == f"line {r['line']}: imgs/{n}: {messages(folder)[n]}"
    assert "Traceback" not in capsys.readouterr().err


def test_evaluate_finishes_the_good_images(folder, tmp_path, capsys):
    out = tmp_path / "ev"
    argv = ["evaluate", "--model", str(TINY), "--images", str(folder), "--classes", "shirt,bag", "--methods",
            "gradient", "--metrics", "deletion_auc", "--steps", "2", "--out", str(out)]  # fmt: skip
    assert main(argv) == EXIT_BAD_ITEMS
    check_skipped(capsys.readouterr().err, folder)
    summary = json.loads((out / "evaluation.json").read_text())
    assert summary["pairs"] == 2
    assert summary["bad_items"] == [{"item": str(folder / n), "error": m} for n, m in messages(folder).items()]


@pytest.mark.parametrize("command", ["embed", "classify", "bank", "explain", "evaluate", "demo"])
def test_an_output_that_cannot_be_written_fails_before_the_model_is_loaded(command, tmp_path, capsys, monkeypatch):
    import jaxplain.models

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr(jaxplain.models, "load", no_load)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    base = {
        "embed": ["embed", "--model", str(TINY), "--texts", "t.txt", "--out"],
        "classify": ["classify", "--out"],
        "bank": ["bank", "build", "--model", str(TINY), "--texts", "t.txt", "--out"],
        "explain": ["explain", "--model", str(TINY), "--bank", "b", "--pairs", "p.jsonl", "--out"],
        "evaluate": ["evaluate", "--out"],
        "demo": ["demo", "--out"],
    }[command]
    suffix = {"embed": ".npy", "classify": ".jsonl", "explain": ".jsonl"}.get(command, "")
    inside = blocker / f"x{suffix}"
    assert main([*base, str(inside)]) == EXIT_ERROR
    assert capsys.readouterr().err.strip() == (
        f"jaxplain: error: --out {inside}: cannot create the directory {blocker} ({blocker} is a file)"
    )
    if suffix:  # a directory where a file is wanted
        d = tmp_path / f"d{suffix}"
        d.mkdir()
        assert main([*base, str(d)]) == EXIT_ERROR
        assert capsys.readouterr().err.strip() == (
            f"jaxplain: error: --out {d}: is a directory; give a file ending in {suffix}"
        )
    else:  # a file where a directory is wanted
        assert main([*base, str(blocker)]) == EXIT_ERROR
        assert capsys.readouterr().err.strip() == f"jaxplain: error: --out {blocker}: is a file; give a directory"


def test_a_second_run_on_the_same_output_is_refused_and_the_first_is_untouched(tmp_path, capsys):
    texts = tmp_path / "t.txt"
    texts.write_text("a shirt\na bag\n")
    out = tmp_path / "e.npy"
    holder = textwrap.dedent(
        f"""
        import sys, time
        from jaxplain.outputs import lock_output
        with lock_output({str(out)!r}):
            print("held", flush=True)
            sys.stdin.readline()
        """
    )
    p = subprocess.Popen([sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                         cwd=ROOT)  # fmt: skip
    try:
        assert p.stdout.readline().strip() == "held"
        assert main(["embed", "--model", str(TINY), "--texts", str(texts), "--out", str(out)]) == EXIT_ERROR
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"jaxplain: error: --out {out}: another jaxplain run (pid {p.pid}, started ")
        assert err.endswith(") is writing it; wait for it to finish or choose another --out")
        assert not out.exists()
    finally:
        p.communicate("\n", timeout=60)
    assert main(["embed", "--model", str(TINY), "--texts", str(texts), "--out", str(out)]) == EXIT_OK
    assert np.load(out).shape == (2, 24)


def test_a_full_disk_leaves_nothing_half_written(tmp_path):
    """A real 64 KiB tmpfs (in a user and mount namespace): embeddings of 1,000 texts do not fit."""
    probe = tmp_path / "probe"
    probe.mkdir()
    if (
        shutil.which("unshare") is None
        or subprocess.run(
            ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs tmpfs {probe}"], capture_output=True
        ).returncode
    ):
        pytest.skip("no unprivileged mount namespaces here (unshare -rm) to mount a small tmpfs")
    texts = tmp_path / "t.txt"
    texts.write_text("".join(f"text number {i}\n" for i in range(1000)))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    run = (f"mount -t tmpfs -o size=64k tmpfs {mnt} && {sys.executable} -m jaxplain embed --model {TINY} "
           f"--texts {texts} --out {mnt}/e.npy; echo status=$?; ls -A {mnt}")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        ["unshare", "-rm", "sh", "-c", run], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
    )
    assert f"jaxplain: error: cannot write {mnt}/e.npy: No space left on device; nothing was written" in r.stderr
    assert "Traceback" not in r.stderr
    assert r.stdout.split() == ["status=2"]  # and nothing is left on the disk: no .npy, no temporary, no lock


def test_demo_explains_the_good_images(folder, tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--model", str(TINY), "--images", str(folder), "--classes", "shirt,bag", "--n", "2",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == EXIT_BAD_ITEMS
    check_skipped(capsys.readouterr().err, folder)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["name"] for r in rows) == GOOD
    assert (out / "report.html").read_text().startswith("<!doctype html>")


def test_two_explain_runs_on_one_results_file_cannot_mix(tiny_model, tmp_path, capsys):
    """The second run is refused while the first holds the file; the first's results are whole and its own."""
    from jaxplain.counterfactual.bank import build_bank
    from jaxplain.data import fashion_mnist

    images, _ = fashion_mnist.load_shipped_test()
    bank, _ = build_bank(tiny_model, images=list(images[:30]), backend="exact", progress=False)
    bank_dir = bank.save(tmp_path / "bank")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"image": f"fashion-mnist-test:{i}"}) + "\n" for i in range(40, 46)))
    out = tmp_path / "r.jsonl"
    argv = ["explain", "--model", str(TINY), "--bank", str(bank_dir), "--pairs", str(pairs), "--out", str(out),
            "--classes", "shirt,bag,shoe", "--want", "other-class"]  # fmt: skip
    holder = textwrap.dedent(
        f"""
        import sys
        from jaxplain.outputs import lock_output
        with lock_output({str(out)!r}):
            print("held", flush=True)
            sys.stdin.readline()
        """
    )
    p = subprocess.Popen([sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                         cwd=ROOT)  # fmt: skip
    try:
        assert p.stdout.readline().strip() == "held"
        assert main(argv) == EXIT_ERROR
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"jaxplain: error: --out {out}: another jaxplain run (pid {p.pid}, started ")
        assert not out.exists() and not (tmp_path / ".r.jsonl.parts").exists()
    finally:
        p.communicate("\n", timeout=60)
    (tmp_path / ".r.jsonl.tmp-abcd1234").write_text('{"torn": ')  # what a killed run could leave
    assert main(argv) == EXIT_OK
    res = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["line"] for r in res] == list(range(1, 7)) and {r["status"] for r in res} <= {"found", "not_found"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank", "pairs.jsonl", "r.jsonl"]


def test_bank_build_refuses_a_folder_that_is_not_a_bank_before_any_work(tmp_path, capsys, monkeypatch):
    import jaxplain.models

    monkeypatch.setattr(jaxplain.models, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(b"mine")
    argv = ["bank", "build", "--model", str(TINY), "--texts", "t.txt", "--out", str(photos)]
    assert main(argv) == EXIT_ERROR
    assert capsys.readouterr().err.strip() == (
        f"jaxplain: error: --out {photos}: exists and is not a jaxplain bank; refusing to overwrite it "
        "(give a new path)"
    )
    assert [p.name for p in photos.iterdir()] == ["a.jpg"] and (photos / "a.jpg").read_bytes() == b"mine"

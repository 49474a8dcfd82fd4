"""Resumable jobs: parts written whole, marked done, skipped on a rerun; another configuration refused;
and a streaming ``explain`` killed with SIGKILL and run again writes what an uninterrupted run writes."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from jaxplain.cli import main
from jaxplain.counterfactual.bank import build_bank
from jaxplain.data import fashion_mnist
from jaxplain.errors import InputError
from jaxplain.jobs import JobDir, part_name, parts_for_process, read_jsonl_parts
from tests.conftest import TINY

CLASSES = ["shirt", "trousers", "bag", "sandal"]


def test_part_names_and_round_robin():
    assert part_name(3, 42) == "part-00003-of-00042.jsonl"
    assert part_name(7, 123456) == "part-000007-of-123456.jsonl"
    split = [parts_for_process(10, i, 3) for i in range(3)]
    assert split == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert sorted(i for part in split for i in part) == list(range(10))


def test_job_dir_writes_skips_and_refuses(tmp_path):
    config = {"command": "test", "options": {"k": 3}}
    job = JobDir(tmp_path / "out", config, 3)
    assert job.pending(range(3)) == [0, 1, 2]
    job.write(1, [{"a": 1}, {"a": 2}], {"found": 2})
    assert job.pending(range(3)) == [0, 2] and job.finish() is None
    # A part renamed into place but never marked (a crash between the two) is not done.
    job.path(2).write_text('{"a": 3}\n')
    assert not job.done(2)
    # A marker that does not describe the file there (a part truncated by hand) is not done either.
    job.write(0, [{"a": 0}], {"found": 1, "error": 1})
    job.path(0).write_text("")
    assert not job.done(0)
    again = JobDir(tmp_path / "out", config, 3)
    assert again.pending(range(3)) == [0, 2]
    again.write(0, [{"a": 0}], {"found": 1, "error": 1})
    again.write(2, [{"a": 3}], {"found": 1})
    manifest = json.loads(again.finish().read_text())
    assert manifest["records"] == 4 and manifest["summary"] == {"found": 4, "error": 1}
    assert [r["a"] for r in read_jsonl_parts(tmp_path / "out")] == [0, 1, 2, 3]
    with pytest.raises(InputError, match=r"options\.k: 3 then, 4 now"):
        JobDir(tmp_path / "out", {"command": "test", "options": {"k": 4}}, 3)
    with pytest.raises(InputError, match="parts: 3 then, 5 now"):
        JobDir(tmp_path / "out", config, 5)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty and not a jaxplain job"):
        JobDir(tmp_path / "other", config, 3)
    part = again.path(1)
    before = part.read_bytes()
    with pytest.raises(ValueError) as e:
        again.write(1, [{"x": 1.0}, {"x": float("nan")}])
    assert str(e.value) == f"{part}: record 2: x is NaN; only finite numbers can be written"
    assert part.read_bytes() == before and again.done(1)  # the finished part is untouched


def _pairs(path, n):
    with path.open("w") as f:
        for i in range(n):
            want = ("other-class", "runner-up", "similarity<=0.1")[i % 3]
            rec = {"id": f"p{i}", "image": f"fashion-mnist-test:{i % 10000}", "want": want}
            rec.update({"text": "a photo of a bag"} if want.startswith("similarity") else {"classes": CLASSES})
            f.write(("{not json" if i == 777 else json.dumps(rec)) + "\n")


@pytest.fixture(scope="module")
def job_bank(tiny_model, tmp_path_factory):
    images, _ = fashion_mnist.load_shipped_test()
    bank, _ = build_bank(tiny_model, images=list(images[100:400]), backend="exact", progress=False)
    return bank.save(tmp_path_factory.mktemp("bank") / "fm")


def _explain(bank, pairs, out, *extra):
    return [
        *(sys.executable, "-m", "jaxplain", "explain", "--model", str(TINY), "--bank", str(bank)),
        *("--pairs", str(pairs), "--out", str(out), "--chunk", "1000", *extra),
    ]


def test_killed_explain_resumes_exactly_once(job_bank, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    _pairs(pairs, 20_000)
    env = {**os.environ, "XLA_FLAGS": ""}
    whole = subprocess.run(_explain(job_bank, pairs, tmp_path / "whole"), env=env, capture_output=True, text=True)
    assert whole.returncode == 1, whole.stderr  # the one bad line
    out = tmp_path / "killed"
    proc = subprocess.Popen(_explain(job_bank, pairs, out), env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(out.glob("*.done"))) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list(out.glob("*.done")))
    assert 3 <= done_before < 20 and not (out / "manifest.json").exists()
    again = subprocess.run(_explain(job_bank, pairs, out), env=env, capture_output=True, text=True)
    assert again.returncode == 1, again.stderr
    assert f"({20 - done_before} of 20 parts this run)" in again.stderr
    assert "line 778: not valid JSON" in again.stderr or done_before > 0
    got, want = read_jsonl_parts(out), read_jsonl_parts(tmp_path / "whole")
    assert len(got) == 20_000 and [r["line"] for r in got] == list(range(1, 20_001))
    assert got == want
    assert got[777]["status"] == "error" and got[0]["id"] == "p0" and got[-1]["id"] == "p19999"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["summary"]["error"] == 1 and manifest["records"] == 20_000
    # The same directory with other options is refused before any work.
    code = main(["explain", "--model", str(TINY), "--bank", str(job_bank), "--pairs", str(pairs), "--out", str(out)])
    assert code == 2


def test_single_file_out_still_works(job_bank, tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    _pairs(pairs, 30)
    out = tmp_path / "results.jsonl"
    args = ["explain", "--model", str(TINY), "--bank", str(job_bank), "--pairs", str(pairs), "--out", str(out)]
    assert main([*args, "--chunk", "7"]) == 0
    res = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["line"] for r in res] == list(range(1, 31)) and [r["id"] for r in res] == [f"p{i}" for i in range(30)]
    assert not list(tmp_path.glob(".results.jsonl*"))  # the parts are gone once joined
    assert all(r["search"] == "exhaustive" for r in res if r["status"] != "error")
    err = capsys.readouterr().err
    assert "search: 30 pairs by exhaustive" in err
    # The whole file as one chunk: the same answers (scores may move in the last float bits with the batch shape).
    assert main([*args, "--chunk", "100"]) == 0
    again = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["status"], [c["bank_row"] for c in r.get("counterfactuals", [])]) for r in again] == [
        (r["status"], [c["bank_row"] for c in r.get("counterfactuals", [])]) for r in res
    ]

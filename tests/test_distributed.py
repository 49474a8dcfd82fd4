"""Two ``jax.distributed`` processes on loopback: they build one sharded bank together, ``explain`` over a
bank whose shards are split across them writes what one process writes, and an uneven split of the pairs
loses and duplicates nothing."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from jaxplain.cli import main
from jaxplain.counterfactual.bank import Bank
from jaxplain.counterfactual.hosts import owned_shards
from jaxplain.data import fashion_mnist
from jaxplain.jobs import read_jsonl_parts
from tests.conftest import TINY

CLASSES = ["shirt", "trousers", "bag", "sandal"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(args: list[str], processes: int = 2, timeout: float = 90) -> list[subprocess.CompletedProcess]:
    """Run ``jaxplain ARGS --distributed`` as ``processes`` processes of one job on 127.0.0.1."""
    port = _free_port()
    procs = []
    for i in range(processes):
        env = {**os.environ, "XLA_FLAGS": "", "JAXPLAIN_COORDINATOR": f"127.0.0.1:{port}"}
        env.update({"JAXPLAIN_NUM_PROCESSES": str(processes), "JAXPLAIN_PROCESS_ID": str(i)})
        cmd = [sys.executable, "-m", "jaxplain", *args, "--distributed"]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    out = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=timeout)
            out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    finally:
        for p in procs:
            p.kill()
    return out


def test_owned_shards_are_contiguous_and_cover_all():
    for shards, procs in [(7, 2), (8, 4), (5, 5), (9, 4)]:
        ranges = [owned_shards(shards, i, procs) for i in range(procs)]
        assert [j for r in ranges for j in r] == list(range(shards)) and all(len(r) for r in ranges)


@pytest.fixture(scope="module")
def sharded_bank(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("dist")
    images, _ = fashion_mnist.load_shipped_test()
    folder = root / "images"
    folder.mkdir()
    for i in range(200, 500):
        Image.fromarray(images[i]).save(folder / f"{i:05d}.png")
    cmd = ["bank", "build", "--model", str(TINY), "--images", str(folder), "--index", "exact", "--shard-size", "70"]
    assert main([*cmd, "--out", str(root / "bank")]) == 0
    # Two processes build the same bank at once, each its own shards; process 0 writes the manifest.
    runs = _launch([*cmd, "--out", str(root / "bank2")])
    assert [r.returncode for r in runs] == [0, 0], [r.stderr[-2000:] for r in runs]
    one, two = Bank.load(root / "bank"), Bank.load(root / "bank2")
    assert two.ids == one.ids and two.index.num_shards == 5
    np.testing.assert_array_equal(two.embeddings, one.embeddings)
    return root / "bank2"


def test_two_processes_over_a_bank_split_across_them(sharded_bank, tmp_path):
    rows = []
    for i in range(45):
        want = ("other-class", "runner-up", "similarity<=0.1", "top:5")[i % 4]
        rec = {"id": f"p{i}", "image": f"fashion-mnist-test:{i}", "want": want}
        rec.update({"classes": CLASSES} if "class" in want or "runner" in want else {"text": "a photo of a bag"})
        rows.append(json.dumps(rec) if i != 11 else '{"image": 3')
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(rows) + "\n")
    # 45 pairs in parts of 10: 5 parts, 3 for process 0 and 2 for process 1.
    args = ["explain", "--model", str(TINY), "--bank", str(sharded_bank), "--pairs", str(pairs), "--chunk", "10"]
    # The oracle's path through the hosts' protocol, in one process (merging across hosts is
    # test_sharding's test_oracles_over_two_halves_of_a_bank_merge_into_the_whole_oracle).
    one = tmp_path / "one-exhaustive"
    assert main([*args, "--out", str(one), "--search", "exhaustive"]) == 1
    hosts = tmp_path / "hosts-exhaustive"
    assert main([*args, "--out", str(hosts), "--search", "exhaustive", "--bank-sharding", "hosts"]) == 1
    assert read_jsonl_parts(hosts) == read_jsonl_parts(one)
    for search in ("index",):
        one = tmp_path / f"one-{search}"
        assert main([*args, "--out", str(one), "--search", search]) == 1  # the bad line
        two = tmp_path / f"two-{search}"
        runs = _launch([*args, "--out", str(two), "--search", search, "--bank-sharding", "hosts"])
        assert [r.returncode for r in runs] == [1, 1], [r.stderr[-2000:] for r in runs]
        assert "(3 of 3 parts this run)" in runs[0].stderr and "(2 of 2 parts this run)" in runs[1].stderr
        got, want = read_jsonl_parts(two), read_jsonl_parts(one)
        assert [r["line"] for r in got] == list(range(1, 46))  # nothing lost, nothing twice
        assert got == want
        assert [r["line"] for r in got if r["status"] == "error"] == [12]  # top:5 answered across hosts too
        assert {r["want"] for r in got if r["status"] == "found"} >= {"top:5", "other-class"}
        found = [r for r in got if r["status"] == "found"]
        assert len(found) > 15
        # Answers come from rows held by both processes (shards 0-1 on process 0, rows 0-139; 2-4 on process 1).
        rows_used = np.asarray([c["bank_row"] for r in found for c in r["counterfactuals"]])
        assert (rows_used < 140).any() and (rows_used >= 140).any()


def test_distributed_outside_a_cluster_says_what_to_set(monkeypatch):
    from jaxplain import distributed
    from jaxplain.errors import InputError

    for name in (distributed.ENV_COORDINATOR, distributed.ENV_NUM_PROCESSES, distributed.ENV_PROCESS_ID):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(InputError, match=r"set \$JAXPLAIN_COORDINATOR"):
        distributed.initialize()
    monkeypatch.setenv(distributed.ENV_NUM_PROCESSES, "two")
    with pytest.raises(InputError, match=r"\$JAXPLAIN_NUM_PROCESSES='two': expected an integer"):
        distributed.initialize()

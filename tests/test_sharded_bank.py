"""Sharded banks: a directory of shards that loads as one bank, built resumably (a killed build run again
gives the bank an uninterrupted build gives), and explained exactly as the same bank in one directory."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxplain.cli import main
from jaxplain.counterfactual.bank import Bank, BankError, build_bank
from jaxplain.counterfactual.shards import ShardedIndex
from jaxplain.data import fashion_mnist
from tests.conftest import TINY

ADJECTIVES = ["red", "blue", "old", "new", "small", "large", "striped", "plain"]
NOUNS = ["shirt", "bag", "sandal", "trousers", "coat", "dress"]


def _texts(path, n):
    rng = np.random.default_rng(0)
    lines = [f"a photo of a {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} number {i}" for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return lines


def _build(texts, out, *extra):
    cmd = [sys.executable, "-m", "jaxplain", "bank", "build", "--model", str(TINY), "--texts", str(texts)]
    return [*cmd, "--out", str(out), "--shard-size", "500", *extra]


def test_killed_bank_build_resumes_to_the_same_bank(tiny_model, tmp_path):
    texts = tmp_path / "texts.txt"
    lines = _texts(texts, 10_500)
    env = {**os.environ, "XLA_FLAGS": ""}
    whole = subprocess.run(_build(texts, tmp_path / "whole"), env=env, capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr
    out = tmp_path / "killed"
    proc = subprocess.Popen(_build(texts, out), env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(out.glob("*.done"))) < 3:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(out.glob("*.done")))
    assert 3 <= done < 21 and not (out / "bank.json").exists()
    with pytest.raises(BankError, match="has not finished; run the same"):
        Bank.load(out)
    again = subprocess.run(_build(texts, out), env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    a, b = Bank.load(tmp_path / "whole", model=tiny_model), Bank.load(out, model=tiny_model)
    assert isinstance(b.index, ShardedIndex) and b.index.num_shards == 21
    assert b.items == lines and b.ids == [f"text:{i + 1}" for i in range(10_500)] and a.ids == b.ids
    np.testing.assert_array_equal(a.embeddings, b.embeddings)
    # The same rows as one unsharded build of all the texts, and the same search answers.
    one, _ = build_bank(tiny_model, texts=lines, backend="exact", progress=False)
    np.testing.assert_allclose(b.embeddings, one.embeddings, atol=2e-6)
    q = one.embeddings[::700]
    np.testing.assert_array_equal(b.search(q, 5)[0], Bank.load(tmp_path / "whole").search(q, 5)[0])
    meta = json.loads((out / "bank.json").read_text())
    assert [s["offset"] for s in meta["shards"]] == list(range(0, 10_500, 500))
    # Another configuration in the same directory is refused.
    refused = subprocess.run(_build(texts, out, "--index", "scann"), env=env, capture_output=True, text=True)
    assert refused.returncode == 2 and 'index: "auto" then, "scann" now' in refused.stderr


def test_explain_on_a_sharded_bank_equals_one_directory(tiny_model, tmp_path):
    images, _ = fashion_mnist.load_shipped_test()
    folder = tmp_path / "images"
    folder.mkdir()
    from PIL import Image

    for i in range(100, 400):
        Image.fromarray(images[i]).save(folder / f"{i:05d}.png")
    args = ["bank", "build", "--model", str(TINY), "--images", str(folder), "--index", "exact"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    assert main([*args, "--out", str(tmp_path / "sharded"), "--shard-size", "64"]) == 0
    pairs = tmp_path / "pairs.jsonl"
    rows = [
        {"image": f"fashion-mnist-test:{i}", "classes": ["shirt", "trousers", "bag", "sandal"], "want": "other-class"}
        for i in range(40)
    ]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for bank, search in [("one", "index"), ("sharded", "index"), ("one", "exhaustive"), ("sharded", "exhaustive")]:
        out = tmp_path / f"{bank}-{search}.jsonl"
        run = ["explain", "--model", str(TINY), "--bank", str(tmp_path / bank), "--pairs", str(pairs)]
        assert main([*run, "--out", str(out), "--search", search]) == 0
    for search in ("index", "exhaustive"):
        one = (tmp_path / f"one-{search}.jsonl").read_text()
        assert one == (tmp_path / f"sharded-{search}.jsonl").read_text()
        assert sum(json.loads(line)["status"] == "found" for line in one.splitlines()) > 20


def test_recall_target_sets_each_scann_shards_leaves(tiny_model, tmp_path, capsys):
    from jaxplain.counterfactual.shards import calibrate_leaves

    texts = tmp_path / "texts.txt"
    _texts(texts, 8400)
    args = ["bank", "build", "--model", str(TINY), "--texts", str(texts), "--index", "scann", "--shard-size", "4200"]
    # The fixture model's 24-d text embeddings crowd together: recall@64 tops out near 0.6 on them.
    assert main([*args, "--out", str(tmp_path / "bank"), "--recall", "0.5"]) == 0
    bank = Bank.load(tmp_path / "bank", model=tiny_model)
    assert bank.index.num_shards == 2
    for j, (shard, lo) in enumerate(zip(bank.index.indexes, bank.index.offsets)):
        assert shard.params.num_leaves > 1
        rows = bank.embeddings[lo : lo + shard.size]
        cal = calibrate_leaves(shard, rows, 64, 0.5, seed=j)  # the build's calibration, again on the saved index
        assert cal.reached and cal.recall >= 0.5 and shard.params.num_leaves_to_search == cal.leaves
        assert cal.leaves < shard.params.num_leaves
    # A target no number of leaves reaches is said, and the shards search every leaf.
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "high"), "--recall", "0.99"]) == 0
    assert "recall@64 reaches only" in capsys.readouterr().err
    high = Bank.load(tmp_path / "high")
    assert all(s.params.num_leaves_to_search == s.params.num_leaves for s in high.index.indexes)

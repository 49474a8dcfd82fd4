"""Sharded stages on 8 fake CPU devices (and on two processes) against their single-device results, bit for bit."""

import importlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxplain import sharding
from jaxplain.counterfactual import index as index_mod
from jaxplain.counterfactual.index import ExactIndex
from jaxplain.counterfactual.solver import SolverConfig, solve_targets
from jaxplain.counterfactual.verify import Verified, exhaustive, merge_verified, shard_bank, verify
from jaxplain.models import bundle
from jaxplain.objectives import CLASS_LOSES, CLASS_WINS, PROB_ABOVE, PROB_BELOW, SIM_ABOVE, SIM_BELOW, Goal

verify_mod = importlib.import_module("jaxplain.counterfactual.verify")  # the package exports a verify()
ROOT = Path(__file__).resolve().parents[1]


def unit(x):
    x = np.asarray(x, np.float64)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def assert_same(got, want):
    for name, g, w in zip(want._fields, got, want):
        np.testing.assert_array_equal(g, w, err_msg=name)


@pytest.fixture(scope="module")
def meshes():
    assert jax.device_count() == 8
    return sharding.make_mesh(sharding.DATA), sharding.make_mesh(sharding.BANK)


def clustered_bank(seed: int, m: int, dim: int = 16, spread: float = 0.3) -> np.ndarray:
    """Unit vectors around 12 centres, with exact copies of a few rows far apart (ties across devices)."""
    rng = np.random.RandomState(seed)
    centres = unit(rng.randn(12, dim))
    bank = unit(centres[rng.randint(12, size=m)] + spread * rng.randn(m, dim))
    for src, dst in [(10, m // 2), (10, m - 1), (11, m // 3), (11, m // 3 + 1), (40, m - 2)]:
        bank[dst] = bank[src]
    return bank


def test_meshes_and_rows_on_them(meshes):
    data, _ = meshes
    assert data.axis_names == ("data",) and data.shape["data"] == 8
    assert data.axis_types == (jax.sharding.AxisType.Auto,)
    x = np.arange(13 * 2, dtype=np.float32).reshape(13, 2)
    rows = sharding.shard_rows({"x": x, "i": np.arange(13)}, data)
    assert rows.count == 13 and rows.arrays["x"].shape == (16, 2)
    assert rows.arrays["x"].sharding.spec == jax.sharding.PartitionSpec("data")
    got = sharding.local_rows(rows.arrays["x"])
    np.testing.assert_array_equal(got[:13], x)
    np.testing.assert_array_equal(got[13:], np.repeat(x[-1:], 3, axis=0))  # edge padding: valid inputs
    np.testing.assert_array_equal(sharding.local_rows(rows.valid), np.arange(16) < 13)
    assert sharding.shard_rows(x, data, rows=24).arrays.shape == (24, 2)
    with pytest.raises(ValueError, match="multiple of 8"):
        sharding.shard_rows(x, data, rows=20)
    with pytest.raises(ValueError, match="same number"):
        sharding.shard_rows((x, x[:3]), data)
    whole = sharding.shard_global(x, data, "data", 16)
    np.testing.assert_array_equal(np.asarray(whole), np.concatenate([x, np.zeros((3, 2), np.float32)]))
    rep = sharding.replicate({"w": x}, data)["w"]
    assert rep.sharding.is_fully_replicated and len(rep.addressable_shards) == 8
    assert sharding.process_index() == 0 and sharding.process_count() == 1
    assert sharding.max_over_processes(5) == 5
    # the spread of a bank: per-device share bucketed, never below 128 rows nor above the chunk
    assert [sharding.spread_chunk(n, 8, 8192) for n in (10, 3001, 10_000, 70_000)] == [128, 512, 2048, 8192]


def test_training_uses_the_mesh_helper():
    from jaxplain.train.loop import data_mesh

    assert data_mesh() == sharding.make_mesh("data")


# a bank of 1003 rows in chunks of 64 (16 chunks, 2 per device), of 300 in chunks of 128 (3 chunks: five
# devices hold only padding)
@pytest.mark.parametrize(("m", "chunk_rows"), [(1003, 64), (300, 128)])
def test_exact_index_split_over_the_bank_axis_equals_one_device(meshes, m, chunk_rows):
    _, bank_mesh = meshes
    bank = clustered_bank(m, m)
    rng = np.random.RandomState(m)
    queries = np.concatenate([bank[[10, 11, 40, 3]], unit(bank[:9] + 0.05 * rng.randn(9, 16))])  # 13 queries
    one, split = ExactIndex(bank, chunk_rows=chunk_rows), ExactIndex(bank, chunk_rows=chunk_rows, mesh=bank_mesh)
    for k in (4, 150):  # fewer, more than a device's rows
        want, got = one.search(queries, k), split.search(queries, k)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
        assert got[0][0, :3].tolist() == [10, m // 2, m - 1]  # equal rows on three devices: the lowest first
    np.testing.assert_array_equal(split.embeddings, bank)


def test_sharded_search_does_not_recompile_within_a_bucket(meshes):
    _, bank_mesh = meshes
    bank = clustered_bank(1, 700)
    index = ExactIndex(bank, chunk_rows=64, mesh=bank_mesh)
    index.search(bank[:5], 3)
    compiled = index_mod.sharded_exact_top_k._cache_size()
    index.search(bank[5:12], 3)  # 5 and 7 queries both pad to 8
    assert index_mod.sharded_exact_top_k._cache_size() == compiled


@pytest.fixture(scope="module")
def problem():
    """13 pairs of every kind over a 3,001-item clustered bank with repeated rows."""
    bank = clustered_bank(2, 3001)
    rng = np.random.RandomState(3)
    classes = unit(rng.randn(4, 16))
    n = 13
    u0, anchor = bank[:n], unit(rng.randn(n, 16))
    pred = np.argmax(u0 @ classes.T, 1)
    kinds = [CLASS_LOSES, CLASS_WINS, SIM_ABOVE, SIM_BELOW, PROB_ABOVE, PROB_BELOW] * 3
    level = {SIM_ABOVE: 0.3, SIM_BELOW: -0.2, PROB_ABOVE: float(np.log(0.6)), PROB_BELOW: float(np.log(0.3))}
    goal = Goal.stack([(k, int(pred[i] + (k == CLASS_WINS)) % 4, level.get(k, 0.0)) for i, k in enumerate(kinds[:n])])
    return bank, u0, goal, anchor, classes


# chunks of 512 (the last overlapping the one before: 6 chunks on 8 devices) for the 13 pairs at once; one
# zero-padded chunk of the bank's bucket for blocks of 4 pairs
@pytest.mark.parametrize(("chunk", "pairs"), [(512, 4096), (4096, 4)])
def test_oracle_split_over_the_bank_axis_equals_one_device(meshes, problem, chunk, pairs):
    _, bank_mesh = meshes
    bank, u0, goal, anchor, classes = problem
    args = (u0, goal, anchor, classes, 10.0)
    kw = dict(top=5, exclude=np.arange(13), chunk=chunk, pairs=pairs)
    want = exhaustive(bank, *args, **kw)
    got = exhaustive(bank, *args, **kw, mesh=bank_mesh)
    assert_same(got, want)
    assert want.valid[:, 0].sum() >= 10
    # the pair at row 10 finds its exact copies (ties) excluded as the same item, its neighbours in row order
    assert not np.isin(want.ids[10], [10, 1500, 3000]).any()


def test_a_sharded_bank_serves_many_calls_without_recompiling(meshes, problem):
    _, bank_mesh = meshes
    bank, u0, goal, anchor, classes = problem
    shards = shard_bank(bank, bank_mesh, chunk=512)
    assert shards.rows.shape == (8, 512, 16) and shards.size == 3001
    # each device holds one of the single-device windows: the last one ends at the bank's end
    np.testing.assert_array_equal(np.asarray(shards.rows[5]), bank[3001 - 512 :])
    assert np.asarray(shards.ids[5])[:71].tolist() == [-1] * 71 and (np.asarray(shards.ids[6:]) == -1).all()
    first = exhaustive(shards, u0, goal, anchor, classes, 10.0, top=3)
    compiled = verify_mod._exhaustive_sharded._cache_size()
    sub = Goal(*(g[:11] for g in goal))
    again = exhaustive(shards, u0[:11], sub, anchor[:11], classes, 10.0, top=3)  # 13 and 11 share a bucket
    assert verify_mod._exhaustive_sharded._cache_size() == compiled
    assert_same(again, Verified(*(x[:11] for x in first)))


def test_merge_verified_by_distance_ties_to_the_earlier_part():
    def part(ids, dist):
        ids, dist = np.asarray(ids, np.int32), np.asarray(dist, np.float32)
        valid = ids >= 0
        f = np.where(valid, dist, 0).astype(np.float32)
        return Verified(ids, np.where(valid, dist, np.inf).astype(np.float32), f, f, ids, f, valid)

    a = part([[3, 7, -1], [1, -1, -1]], [[0.1, 0.5, 0], [0.2, 0, 0]])
    b = part([[12, 15, 20], [-1, -1, -1]], [[0.1, 0.3, 0.5], [0, 0, 0]])
    got = merge_verified([a, b], 4)
    assert isinstance(got.ids, np.ndarray)
    assert got.ids.tolist() == [[3, 12, 15, 7], [1, -1, -1, -1]]
    assert got.valid.tolist() == [[True] * 4, [True, False, False, False]]
    np.testing.assert_array_equal(got.distance[0], np.float32([0.1, 0.1, 0.3, 0.5]))


def test_oracles_over_two_halves_of_a_bank_merge_into_the_whole_oracle(problem):
    """What hosts that each hold one shard of a bank do: search their rows, number them globally, merge."""
    bank, u0, goal, anchor, classes = problem
    kw = dict(top=5, exclude=np.arange(13), chunk=512)
    cut = 1536  # three whole chunks
    low = exhaustive(bank[:cut], u0, goal, anchor, classes, 10.0, **kw)
    high = exhaustive(bank[cut:], u0, goal, anchor, classes, 10.0, **{**kw, "exclude": np.arange(13) - cut})
    high = high._replace(ids=np.where(high.valid, high.ids + cut, -1))
    assert_same(merge_verified([low, high], 5), exhaustive(bank, u0, goal, anchor, classes, 10.0, **kw))


@pytest.mark.parametrize("block_rows", [verify_mod.BLOCK_ROWS, 400])  # 16 pairs a block (on one device), 2
def test_verifier_split_over_the_data_axis_equals_one_device(meshes, problem, block_rows):
    data, _ = meshes
    bank, u0, goal, anchor, classes = problem
    rng = np.random.RandomState(4)
    cand = rng.randint(0, len(bank), size=(13, 200)).astype(np.int32)
    cand[:, :3] = [10, 1500, 3000]  # equal items
    cand[:, 20:40] = cand[:, 40:60]  # repeats
    cand[:, -5:] = -1
    kw = dict(top=5, block_rows=block_rows)
    want = verify(cand, bank, u0, goal, anchor, classes, 10.0, exclude=np.arange(13), **kw)
    got = verify(cand, bank, u0, goal, anchor, classes, 10.0, exclude=np.arange(13), **kw, mesh=data)
    assert_same(got, want)
    assert want.valid.sum() > 30
    compiled = verify_mod._verify_sharded._cache_size()
    sub = Goal(*(g[:11] for g in goal))
    again = verify(cand[:11], bank, u0[:11], sub, anchor[:11], classes, 10.0, exclude=np.arange(11), **kw, mesh=data)
    assert verify_mod._verify_sharded._cache_size() == compiled
    assert_same(again, Verified(*(x[:11] for x in want)))


def test_solver_split_over_the_data_axis_finds_the_same_counterfactuals(meshes, problem):
    data, bank_mesh = meshes
    bank, u0, goal, anchor, classes = problem
    cfg = SolverConfig()
    want = solve_targets(u0, goal, anchor, classes, 10.0, cfg)
    got = solve_targets(u0, goal, anchor, classes, 10.0, cfg, mesh=data)
    # per-device batches of 2 pairs, not 16: float rounding differs and the steps amplify it (measured
    # here: up to 3.1e-4 with 50 steps, 1.7e-3 with 100)
    np.testing.assert_allclose(got.embedding, want.embedding, atol=3e-3)
    np.testing.assert_allclose(got.margin, want.margin, atol=3e-3)
    np.testing.assert_array_equal(got.converged, want.converged)

    def answers(targets):
        index = ExactIndex(bank, chunk_rows=512, mesh=bank_mesh)
        ids, _ = index.search(targets.embedding.reshape(-1, 16), 8)
        cand = ids.reshape(13, -1)
        return verify(cand, bank, u0, goal, anchor, classes, 10.0, top=3, exclude=np.arange(13), mesh=data)

    assert_same(answers(got), answers(want))


def test_encoders_split_over_the_data_axis_equal_one_device(meshes, tiny_model):
    data, _ = meshes
    rng = np.random.default_rng(0)
    size = tiny_model.config.vision.image_size
    pixels = rng.standard_normal((47, 3, size, size)).astype(np.float32)
    # batches of 8: five full ones on five devices, then the last 7 (bucket 8) alone
    np.testing.assert_array_equal(tiny_model.encode_pixels(pixels, 8, mesh=data), tiny_model.encode_pixels(pixels, 8))
    compiled = bundle.encode_image_sharded._cache_size()
    tiny_model.encode_pixels(pixels[:46], 8, mesh=data)  # the same shapes
    assert bundle.encode_image_sharded._cache_size() == compiled
    # texts of two lengths, batched in order of length (batches of 4: two, then three of another length)
    texts = ["a bag", "a red shirt on a white background with laces and a stripe"] * 10
    ids = tiny_model.tokenize(texts[:19])
    np.testing.assert_array_equal(tiny_model.encode_ids(ids, 4, mesh=data), tiny_model.encode_ids(ids, 4))


# ----------------------------------------------------------------------------------------------- processes


def _worker(process_id: int, port: int) -> None:
    """One of two ``jax.distributed`` processes with two CPU devices each: every sharded stage on the 4-device
    mesh against this process's single-device results."""
    jax.config.update("jax_num_cpu_devices", 2)
    jax.distributed.initialize(f"127.0.0.1:{port}", 2, process_id, initialization_timeout=60)
    import jaxplain

    assert jax.device_count() == 4 and sharding.process_count() == 2 and sharding.process_index() == process_id
    data, bank_mesh = sharding.make_mesh("data"), sharding.make_mesh("bank")
    assert sharding.local_blocks(data) == 2

    # each process feeds its own rows; the global array is process 0's rows, then process 1's
    mine = np.arange(3, dtype=np.float32) + 10 * process_id
    rows = sharding.shard_rows(mine, data)
    assert rows.arrays.shape == (8,) and rows.count == 3
    np.testing.assert_array_equal(sharding.local_rows(rows.arrays), np.append(mine, mine[-1]))
    from jax.experimental import multihost_utils

    whole = multihost_utils.process_allgather(rows.arrays, tiled=True)
    np.testing.assert_array_equal(whole, [0, 1, 2, 2, 10, 11, 12, 12])
    assert sharding.max_over_processes(3 + process_id) == 4

    # the bank, the same on both processes, split over the four devices
    bank = clustered_bank(5, 1003)
    rng = np.random.RandomState(6)
    classes = unit(rng.randn(4, 16))
    want = ExactIndex(bank, chunk_rows=64).search(bank[[10, 11, 3]], 9)
    got = ExactIndex(bank, chunk_rows=64, mesh=bank_mesh).search(bank[[10, 11, 3]], 9)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])

    # pairs: each process its own, the same number on both
    n = 5
    goal = Goal.stack(
        [(SIM_ABOVE, 0, 0.3), (SIM_BELOW, 0, -0.2), (CLASS_WINS, 1, 0.0), (CLASS_LOSES, 0, 0.0), (PROB_ABOVE, 2, -0.5)]
    )
    u0, anchor = bank[process_id * n : process_id * n + n], unit(rng.randn(n, 16))
    cand = np.random.RandomState(process_id).randint(0, len(bank), size=(n, 40)).astype(np.int32)
    want = verify(cand, bank, u0, goal, anchor, classes, 10.0, top=3, block_rows=80)
    assert_same(verify(cand, bank, u0, goal, anchor, classes, 10.0, top=3, block_rows=80, mesh=data), want)

    # texts: each process its own; the processes' batches are cut to the longest of them
    model = jaxplain.load(ROOT / "tests" / "fixtures" / "tiny-clip")
    texts = [["a bag", "shirt"], ["a red sneaker on a white background with laces", "bag"]][process_id]
    ids = model.tokenize(texts * 2)
    np.testing.assert_allclose(model.encode_ids(ids, 2, mesh=data), model.encode_ids(ids, 2), atol=1e-6)
    jax.distributed.shutdown()


def test_two_processes_feed_their_own_rows_and_match_one_device():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = str(ROOT)
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, str(i), str(port)],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=180)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]


if __name__ == "__main__":
    _worker(int(sys.argv[1]), int(sys.argv[2]))

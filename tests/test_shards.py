"""Sharded indexes: the exact merge against the exact whole-bank search, ScaNN shards against exact search,
and leaves calibrated to a recall target."""

import dataclasses
import itertools
import json
import math

import numpy as np
import pytest

from jaxplain.counterfactual import Bank
from jaxplain.counterfactual.index import ExactIndex, IndexFileError, ScannIndex
from jaxplain.counterfactual.shards import (
    Calibration,
    RecallTarget,
    ShardedIndex,
    build_calibrated,
    build_sharded_index,
    calibrate_leaves,
    calibration_queries,
    load_shard,
    merge_top_k,
    recall_at_k,
    shard_bounds,
    shard_top,
    with_leaves,
)
from jaxplain.errors import InputError


def dyadic(rng, n: int, dim: int = 8) -> np.ndarray:
    """Multiples of 2⁻⁴ in [-1, 1]: every dot product is exact in float32 whatever the summation order, and
    coarse enough that many scores tie."""
    return (rng.integers(-16, 17, (n, dim)) / 16).astype(np.float32)


def clustered(rng, n: int, centres: np.ndarray, spread: float = 0.75) -> np.ndarray:
    dim = centres.shape[1]
    x = centres[rng.integers(0, len(centres), n)] + spread * rng.standard_normal((n, dim)) / math.sqrt(dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def tied_bank(rng, n: int) -> np.ndarray:
    """A dyadic bank where rows repeat within and across shards, so that equal best scores are common."""
    db = dyadic(rng, n)
    copies = rng.integers(0, n, n // 3)
    db[rng.integers(0, n, n // 3)] = db[copies]
    return db


@pytest.mark.parametrize(
    ("bounds", "k"),
    [
        ([0, 300], 10),  # one shard
        ([0, 1, 300], 5),  # a one-row shard
        ([0, 100, 200, 300], 30),
        ([0, 7, 150, 151, 300], 64),  # uneven shards, k above two of them
        ([0, 50, 300], 300),  # the whole bank, ranked
    ],
)
def test_merging_exact_shards_equals_the_exact_whole_bank_search_bit_for_bit(bounds, k):
    rng = np.random.default_rng(len(bounds) + k)
    db = tied_bank(rng, bounds[-1])
    q = np.concatenate([db[:5], dyadic(rng, 12)])  # queries on bank rows tie with every copy of them
    parts = []
    for lo, hi in itertools.pairwise(bounds):
        ids, scores = ExactIndex(db[lo:hi]).search(q, k)
        parts.append((ids + lo, scores))
    ids, scores = merge_top_k(parts, k)
    want_ids, want_scores = ExactIndex(db).search(q, k)
    assert ids.dtype == np.int64 and scores.dtype == np.float32
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(scores, want_scores)
    # the ties are really there, and resolved to the lower row
    tied = scores[:, :-1] == scores[:, 1:]
    assert tied.sum() >= len(q)
    assert (ids[:, 1:][tied] > ids[:, :-1][tied]).all()


def test_merge_orders_by_score_then_row_whatever_the_shard_order():
    a = (np.array([[9, 4]]), np.array([[1.0, 0.5]], np.float32))
    b = (np.array([[2, 7]]), np.array([[1.0, 0.5]], np.float32))
    c = (np.array([[5]]), np.array([[0.75]], np.float32))
    for parts in ([a, b, c], [c, b, a]):
        ids, scores = merge_top_k(parts, 4)
        assert ids.tolist() == [[2, 9, 5, 4]]
        assert scores.tolist() == [[1.0, 1.0, 0.75, 0.5]]
    assert merge_top_k([a, c], 10)[0].tolist() == [[9, 5, 4]]  # k clamped to the columns given


@pytest.mark.parametrize("num_shards", [1, 2, 3, 8])
@pytest.mark.parametrize("k", [1, 10, 3001])
def test_sharded_exact_index_equals_the_exact_index_on_unit_vectors(num_shards, k):
    rng = np.random.default_rng(num_shards)
    centres = clustered(rng, 20, np.eye(64, dtype=np.float32))
    db, q = clustered(rng, 3001, centres), clustered(rng, 40, centres)
    sharded = build_sharded_index(db, num_shards, "exact")
    assert (sharded.size, sharded.dim, sharded.num_shards) == (3001, 64, num_shards)
    assert sharded.bounds.tolist() == shard_bounds(3001, num_shards).tolist()
    ids, scores = sharded.search(q, k)
    want_ids, want_scores = ExactIndex(db).search(q, k)
    assert ids.shape == (40, min(k, 3001)) and ids.dtype == np.int64 and scores.dtype == np.float32
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(scores, want_scores)


def test_search_shard_gives_global_rows_and_merging_the_hosts_answers_equals_search():
    rng = np.random.default_rng(1)
    db = tied_bank(rng, 500)
    sharded = build_sharded_index(db, 4, "exact")
    q = db[[0, 130, 260, 499]]
    per_host = [sharded.search_shard(s, q, 20) for s in range(4)]
    for s, (ids, _) in enumerate(per_host):
        assert (sharded.shard_of(ids) == s).all()
    for got, want in zip(merge_top_k(per_host, 20), sharded.search(q, 20)):
        np.testing.assert_array_equal(got, want)
    # a query on a bank row scores that row exactly (the rows are not unit vectors: others may score higher)
    assert (sharded.search(q, 500)[1] == (q * q).sum(1, keepdims=True)).any(axis=1).all()
    assert sharded.search(q[:0], 5)[0].shape == (0, 5)


def test_a_bank_serves_a_sharded_index():
    rng = np.random.default_rng(2)
    db = clustered(rng, 600, np.eye(16, dtype=np.float32))
    items = [str(i) for i in range(600)]
    bank = Bank("image", items, items, db, "m", "f", build_sharded_index(db, 3, "exact"))
    np.testing.assert_array_equal(bank.search(db[:7], 4)[0], ExactIndex(db).search(db[:7], 4)[0])


@pytest.fixture(scope="module")
def clustered_shards():
    """20k clustered 32-d rows (100 centres), queries near them, the exact truth, and 4 ScaNN shards."""
    rng = np.random.default_rng(0)
    centres = clustered(rng, 100, np.eye(32, dtype=np.float32), spread=3.0)
    db = clustered(rng, 20_000, centres)
    q = calibration_queries(db, 300, seed=7)
    return db, q, ExactIndex(db).search(q, 10)[0], build_sharded_index(db, 4, "scann")


def test_sharded_scann_recall_against_exact_search(clustered_shards):
    db, q, truth, sharded = clustered_shards
    assert all(isinstance(ix, ScannIndex) and ix.params.num_leaves == 71 for ix in sharded.indexes)
    ids, scores = sharded.search(q, 10)
    r = recall_at_k(ids, truth)
    print(f"4 ScaNN shards of 5k: recall@10 {r:.4f}")
    assert r >= 0.95  # measured 0.966–0.974 over builds (each shard searching 9 of its 71 leaves)
    np.testing.assert_allclose(scores, (q @ db.T)[np.arange(len(q))[:, None], ids], atol=1e-5)


@pytest.mark.parametrize("top", [None, 3])
@pytest.mark.parametrize("target", [0.8, 0.9, 0.95])
def test_calibrated_leaves_are_the_fewest_that_reach_the_target(clustered_shards, target, top):
    db, _, _, sharded = clustered_shards
    shard, rows = sharded.indexes[1], db[sharded.bounds[1] : sharded.bounds[2]]
    cal = calibrate_leaves(shard, rows, 10, target, sample=300, seed=3, top=top)
    assert isinstance(cal, Calibration) and cal.reached and 1 <= cal.leaves <= shard.params.num_leaves
    # measured afresh, with the searcher set to those leaves, on the same sample: the share of each query's
    # exact `top` nearest rows among the 10 found
    q = calibration_queries(rows, 300, seed=3)
    truth = ExactIndex(rows).search(q, top or 10)[0]

    def measured(leaves):
        return recall_at_k(with_leaves(shard, leaves).search(q, 10)[0], truth)

    assert measured(cal.leaves) == cal.recall >= target
    if cal.leaves > 1:
        assert measured(cal.leaves - 1) < target
    assert dict(cal.curve)[cal.leaves] == cal.recall
    assert [r for _, r in cal.curve] == sorted(r for _, r in cal.curve)  # measured points rise with leaves
    if top:  # a query's nearest few are found with fewer leaves than its whole top-10
        assert cal.leaves <= calibrate_leaves(shard, rows, 10, target, sample=300, seed=3).leaves
    with pytest.raises(InputError, match=r"top must be an integer in \[1, k = 10\], got 11"):
        calibrate_leaves(shard, rows, 10, target, top=11)


def test_with_leaves_changes_the_search_and_not_the_searcher(clustered_shards):
    db, q, _, sharded = clustered_shards
    shard = sharded.indexes[0]
    one, all_leaves = with_leaves(shard, 1), with_leaves(shard, shard.params.num_leaves)
    assert one.searcher is shard.searcher and one.params.num_leaves_to_search == 1
    assert shard.params.num_leaves_to_search == 9  # the original is left as it was
    truth = ExactIndex(db[: shard.size]).search(q, 10)[0]
    assert recall_at_k(one.search(q, 10)[0], truth) < recall_at_k(all_leaves.search(q, 10)[0], truth)
    with pytest.raises(InputError, match=r"leaves to search must be in \[1, 71\]"):
        with_leaves(shard, 72)


def test_an_unreachable_target_takes_every_leaf_and_says_so():
    rng = np.random.default_rng(4)
    db = rng.standard_normal((5000, 32)).astype(np.float32)  # uniform directions: recall is poor by nature
    index = ScannIndex.build(db)
    cal = calibrate_leaves(index, db, 10, 1.0, sample=100)
    assert cal.leaves == index.params.num_leaves and not cal.reached and cal.recall < 1.0


def test_sharded_build_calibrates_every_scann_shard(clustered_shards):
    db = clustered_shards[0][:12_000]
    target = RecallTarget(recall=0.9, k=10, sample=200)
    sharded = build_sharded_index(db, 2, "scann", target)
    for s, ix in enumerate(sharded.indexes):
        rows = db[sharded.bounds[s] : sharded.bounds[s + 1]]
        cal = calibrate_leaves(ix, rows, 10, 0.9, sample=200, seed=s)
        assert ix.params.num_leaves_to_search == cal.leaves
    shared = build_sharded_index(db, 2, "scann", dataclasses.replace(target, share=True))
    for s, ix in enumerate(shared.indexes):
        rows = db[shared.bounds[s] : shared.bounds[s + 1]]
        assert shard_top(10, len(rows), len(db)) == 5
        cal = calibrate_leaves(ix, rows, 10, 0.9, sample=200, seed=s, top=5)
        assert ix.params.num_leaves_to_search == cal.leaves
    index, cal = build_calibrated(db[:6000], target)
    assert index.params.num_leaves_to_search == cal.leaves and cal.recall >= 0.9
    # a shard too small for a tree scores every item: nothing to calibrate
    small, cal = build_calibrated(db[:1000], target)
    assert small.params.num_leaves == 0 and cal.leaves == 0 and cal.recall == 1.0


def test_bad_shards_are_named():
    rng = np.random.default_rng(5)
    a, b = ExactIndex(dyadic(rng, 10)), ExactIndex(dyadic(rng, 20))
    with pytest.raises(InputError, match="at least one shard"):
        ShardedIndex([])
    with pytest.raises(InputError, match=r"shard 1 \(ExactIndex\(size=20, dim=8\)\) is said to start at row 11"):
        ShardedIndex([a, b], [0, 11])
    with pytest.raises(InputError, match=r"shard 0 .* start at row 3, but the first shard starts at 0"):
        ShardedIndex([a, b], [3, 13])
    with pytest.raises(InputError, match="1 offsets given for 2 shards"):
        ShardedIndex([a, b], [0])
    with pytest.raises(InputError, match=r"shard 1 \(ExactIndex\(size=5, dim=4\)\) has dimension 4, shard 0 has 8"):
        ShardedIndex([a, ExactIndex(dyadic(rng, 5, dim=4))])
    sharded = ShardedIndex([a, b], [0, 10])
    assert sharded.size == 30 and sharded.offsets.tolist() == [0, 10]
    with pytest.raises(InputError, match=r"shard must be in \[0, 2\), got 2"):
        sharded.search_shard(2, dyadic(rng, 1), 3)
    with pytest.raises(InputError, match=r"queries must have shape \[Q, 8\]"):
        sharded.search(dyadic(rng, 1, dim=4), 3)
    with pytest.raises(InputError, match="cannot cut 30 rows into 31"):
        shard_bounds(30, 31)
    with pytest.raises(InputError, match=r"shard 1: ids \(1, 2\) and scores \(1, 3\)"):
        merge_top_k([(np.zeros((1, 2)), np.zeros((1, 2))), (np.zeros((1, 2)), np.zeros((1, 3)))], 2)


def test_save_then_load_gives_identical_results_and_keeps_calibrated_leaves(clustered_shards, tmp_path):
    db, q, _, sharded = clustered_shards
    mixed = ShardedIndex(
        [with_leaves(sharded.indexes[0], 3), ExactIndex(db[5000:10_000]), *sharded.indexes[2:]], sharded.offsets
    )
    mixed.save(tmp_path / "ix")
    mixed.save(tmp_path / "ix")  # a saved index is replaced whole
    back = ShardedIndex.load(tmp_path / "ix")
    assert back.bounds.tolist() == mixed.bounds.tolist()
    assert [ix.backend for ix in back.indexes] == ["scann", "exact", "scann", "scann"]
    assert back.indexes[0].params.num_leaves_to_search == 3
    for got, want in zip(back.search(q, 10), mixed.search(q, 10)):
        np.testing.assert_array_equal(got, want)
    one, first_row = load_shard(tmp_path / "ix", 2)
    assert first_row == 10_000 and one.size == 5000
    np.testing.assert_array_equal(one.search(q, 10)[0] + first_row, mixed.search_shard(2, q, 10)[0])


def test_sharded_index_files_are_checked(tmp_path):
    rng = np.random.default_rng(6)
    db = dyadic(rng, 40)
    build_sharded_index(db, 2, "exact").save(tmp_path / "ix")
    with pytest.raises(IndexFileError, match=r"no index\.json"):
        ShardedIndex.load(tmp_path)
    ExactIndex(db).save(tmp_path / "plain")
    with pytest.raises(IndexFileError, match="not a jaxplain sharded index"):
        ShardedIndex.load(tmp_path / "plain")
    with pytest.raises(InputError, match=r"shard must be in \[0, 2\), got 5"):
        load_shard(tmp_path / "ix", 5)
    meta_path = tmp_path / "ix" / "index.json"
    meta = json.loads(meta_path.read_text())
    meta["shards"][1]["size"] = 21
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(IndexFileError, match=r"shard 1 holds \[20, 8\], index.json says \[21, 8\]"):
        ShardedIndex.load(tmp_path / "ix")
    meta["shards"][1].update(size=20, offset=19)
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(IndexFileError, match=r"shard 1 .* said to start at row 19"):
        ShardedIndex.load(tmp_path / "ix")

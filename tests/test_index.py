"""Nearest-neighbour indexes: the exact index against NumPy brute force, ScaNN against the exact index."""

import json
import math

import numpy as np
import pytest

from jaxplain.counterfactual import index as index_module
from jaxplain.counterfactual.index import (
    AUTO_SCANN_MIN_SIZE,
    ExactIndex,
    IndexFileError,
    ScannIndex,
    ScannParams,
    atomic_directory,
    build_index,
    exact_top_k,
    load_index,
)
from jaxplain.errors import InputError, JaxplainError


def dyadic(rng, n: int, dim: int = 8) -> np.ndarray:
    """Multiples of 2⁻¹⁰ in [-1, 1] with E=8: every dot product is exact in float32, whatever the summation
    order, so the exact index must reproduce NumPy's ranking bit for bit (ties included: lower row first)."""
    return (rng.integers(-1024, 1025, (n, dim)) / 1024).astype(np.float32)


def numpy_top_k(db: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = q.astype(np.float64) @ db.T.astype(np.float64)
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return ids, np.take_along_axis(scores, ids, axis=1)


def clustered(rng, n: int, centres: np.ndarray, spread: float = 0.75) -> np.ndarray:
    """Unit vectors around random centres (noise of norm ≈ ``spread``)."""
    dim = centres.shape[1]
    x = centres[rng.integers(0, len(centres), n)] + spread * rng.standard_normal((n, dim)) / math.sqrt(dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float((found[:, :, None] == truth[:, None, :]).any(axis=2).mean())


@pytest.mark.parametrize(
    ("n", "chunk_rows", "k"),
    [
        (1, 64, 1),  # a one-item bank
        (7, 64, 3),  # smaller than a chunk: one chunk of its power-of-two bucket
        (1000, 64, 1),  # 16 chunks, the last one partial
        (1000, 64, 100),  # k larger than a chunk
        (1000, 64, 1000),  # the whole bank, ranked
        (1024, 256, 10),  # an exact multiple of the chunk size
    ],
)
@pytest.mark.parametrize("num_queries", [1, 3, 17])
def test_exact_index_equals_numpy_bit_for_bit(n, chunk_rows, k, num_queries):
    rng = np.random.default_rng(n + k)
    db, q = dyadic(rng, n), dyadic(rng, num_queries)
    ids, scores = ExactIndex(db, chunk_rows=chunk_rows).search(q, k)
    want_ids, want_scores = numpy_top_k(db, q, k)
    assert ids.dtype == np.int64 and scores.dtype == np.float32 and ids.shape == (num_queries, k)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(scores, want_scores.astype(np.float32))


def test_ties_go_to_the_lower_row_across_chunks():
    db = np.zeros((300, 4), np.float32)
    db[[5, 70, 140, 299], 0] = 1.0  # four equal best items in three chunks of 128
    ids, scores = ExactIndex(db, chunk_rows=128).search(np.array([[1, 0, 0, 0]], np.float32), 6)
    assert ids.tolist() == [[5, 70, 140, 299, 0, 1]]
    assert scores.tolist() == [[1, 1, 1, 1, 0, 0]]


def test_exact_index_on_unit_vectors_matches_float64_scores():
    rng = np.random.default_rng(0)
    centres = clustered(rng, 20, np.eye(64, dtype=np.float32))
    db, q = clustered(rng, 3001, centres), clustered(rng, 40, centres)
    ids, scores = ExactIndex(db, chunk_rows=512).search(q, 10)
    _, want_scores = numpy_top_k(db, q, 10)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    # each returned id really has its score (float rounding may only swap items within 1e-5 of each other)
    np.testing.assert_allclose(np.take_along_axis(q @ db.T, ids, axis=1), scores, atol=1e-5)
    assert all(len(set(row)) == 10 for row in ids.tolist())


def test_query_counts_in_one_bucket_share_one_compilation():
    rng = np.random.default_rng(1)
    index = ExactIndex(dyadic(rng, 500), chunk_rows=128)
    index.search(dyadic(rng, 5), 4)
    compiled = exact_top_k._cache_size()
    index.search(dyadic(rng, 7), 4)  # 5 and 7 both pad to 8
    index.search(dyadic(rng, 6), 4)
    assert exact_top_k._cache_size() == compiled
    index.search(dyadic(rng, 9), 4)  # the next bucket, 16
    assert exact_top_k._cache_size() == compiled + 1


def test_many_queries_are_searched_in_blocks(monkeypatch):
    monkeypatch.setattr(index_module, "QUERY_BLOCK", 8)
    rng = np.random.default_rng(2)
    db, q = dyadic(rng, 300), dyadic(rng, 37)  # blocks of 8, 8, 8, 8 and 5 (padded to 8)
    ids, scores = ExactIndex(db, chunk_rows=64).search(q, 5)
    want_ids, want_scores = numpy_top_k(db, q, 5)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(scores, want_scores.astype(np.float32))


def test_k_above_the_bank_size_is_clamped_and_bad_input_is_named():
    rng = np.random.default_rng(3)
    db = dyadic(rng, 7)
    index = ExactIndex(db)
    ids, scores = index.search(dyadic(rng, 2), 50)
    assert ids.shape == scores.shape == (2, 7)
    assert sorted(ids[0].tolist()) == list(range(7))
    empty_ids, empty_scores = index.search(np.zeros((0, 8), np.float32), 3)
    assert empty_ids.shape == empty_scores.shape == (0, 3)
    with pytest.raises(InputError, match="k must be a positive integer"):
        index.search(dyadic(rng, 2), 0)
    with pytest.raises(InputError, match=r"queries must have shape \[Q, 8\].*\(2, 5\)"):
        index.search(np.zeros((2, 5), np.float32), 3)
    bad = dyadic(rng, 4)
    bad[2, 1] = np.nan
    with pytest.raises(InputError, match=r"query rows \[2\] hold NaN"):
        index.search(bad, 3)
    with pytest.raises(InputError, match=r"embeddings \[N, E\]"):
        ExactIndex(np.zeros((0, 8), np.float32))


@pytest.fixture(scope="module")
def clustered_bank():
    """20,000 unit vectors around 100 centres (E=64), 300 fresh queries, and the exact top 10."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((100, 64))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    db, q = clustered(rng, 20_000, centres), clustered(rng, 300, centres)
    exact = ExactIndex(db)
    return db, q, exact, exact.search(q, 10)


@pytest.fixture(scope="module")
def scann_index(clustered_bank):
    return ScannIndex.build(clustered_bank[0])


def test_scann_recall_against_the_exact_index(clustered_bank, scann_index):
    db, q, exact, (truth, _) = clustered_bank
    assert scann_index.params == ScannParams(141, 12, 20_000, 100)
    ids, scores = scann_index.search(q, 10)
    assert ids.dtype == np.int64 and scores.dtype == np.float32 and ids.shape == (300, 10)
    r = recall(ids, truth)
    print(f"ScaNN recall@10 on 20k clustered vectors: {r:.4f}")
    assert r >= 0.9
    # re-ordered scores are exact dot products, best first
    np.testing.assert_allclose(scores, np.take_along_axis(q @ db.T, ids, axis=1), atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-6).all()
    r100 = recall(scann_index.search(q, 100)[0], exact.search(q, 100)[0])
    print(f"ScaNN recall@100: {r100:.4f}")
    assert r100 >= 0.9
    # counterfactual targets lie between clusters: midpoints of two random bank items
    rng = np.random.default_rng(1)
    mid = db[rng.integers(0, len(db), 300)] + db[rng.integers(0, len(db), 300)]
    mid /= np.linalg.norm(mid, axis=1, keepdims=True)
    r_mid = recall(scann_index.search(mid, 10)[0], exact.search(mid, 10)[0])
    print(f"ScaNN recall@10 between clusters: {r_mid:.4f}")
    assert r_mid >= 0.9


def test_scann_serialise_then_load_gives_identical_results(clustered_bank, scann_index, tmp_path):
    q = clustered_bank[1]
    scann_index.save(tmp_path / "idx")
    # written with relative paths: the directory can move
    (tmp_path / "idx").rename(tmp_path / "moved")
    loaded = load_index(tmp_path / "moved")
    assert isinstance(loaded, ScannIndex) and loaded.params == scann_index.params
    assert (loaded.size, loaded.dim) == (20_000, 64)
    for k in (1, 10):
        a, b = scann_index.search(q, k), loaded.search(q, k)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def test_scann_rows_short_of_k_are_searched_again_over_all_leaves():
    rng = np.random.default_rng(4)
    centres = rng.standard_normal((20, 16))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    db, q = clustered(rng, 5000, centres), clustered(rng, 20, centres)
    index = ScannIndex.build(db, ScannParams(100, num_leaves_to_search=1, training_sample_size=5000, reorder=50))
    ids, scores = index.search(q, 400)  # one leaf of ~50 items cannot give 400
    assert not np.isnan(scores).any()
    assert all(len(set(row)) == 400 for row in ids.tolist())
    np.testing.assert_allclose(scores, np.take_along_axis(q @ db.T, ids, axis=1), atol=1e-5)


def test_small_scann_index_scores_every_item():
    rng = np.random.default_rng(5)
    db, q = dyadic(rng, 300, 16), dyadic(rng, 10, 16)
    index = build_index(db, "scann")
    assert isinstance(index, ScannIndex) and index.params.num_leaves == 0
    ids, scores = index.search(q, 20)
    want_ids, want_scores = numpy_top_k(db, q, 20)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    np.testing.assert_array_equal(np.sort(ids, axis=1), np.sort(want_ids, axis=1))
    assert index.search(q, 1000)[0].shape == (10, 300)


def test_auto_takes_exact_below_the_crossover_and_scann_from_it():
    rng = np.random.default_rng(6)
    db = clustered(rng, AUTO_SCANN_MIN_SIZE, np.eye(16, dtype=np.float32))
    assert isinstance(build_index(db[:-1]), ExactIndex)
    big = build_index(db)
    assert isinstance(big, ScannIndex) and big.params.num_leaves == 64
    assert isinstance(build_index(db, "exact"), ExactIndex)
    with pytest.raises(InputError, match="one of auto, exact, scann"):
        build_index(db, "faiss")


def test_scann_params_rule():
    assert ScannParams.for_size(1000) == ScannParams(0, 0, 1000, 100)
    assert ScannParams.for_size(1_000_000) == ScannParams(1000, 32, 100_000, 100)
    assert ScannParams.for_size(10_000_000) == ScannParams(3162, 57, 202_368, 100)


def test_exact_index_save_load(tmp_path):
    rng = np.random.default_rng(7)
    db, q = dyadic(rng, 50), dyadic(rng, 3)
    index = ExactIndex(db)
    index.save(tmp_path / "ex")
    assert json.loads((tmp_path / "ex" / "index.json").read_text())["backend"] == "exact"
    loaded = load_index(tmp_path / "ex")
    assert isinstance(loaded, ExactIndex)
    np.testing.assert_array_equal(loaded.embeddings, db)
    np.testing.assert_array_equal(loaded.search(q, 5)[0], index.search(q, 5)[0])


def test_index_files_are_checked_and_never_unpickled(tmp_path, scann_index):
    with pytest.raises(IndexFileError, match="not an index directory"):
        load_index(tmp_path)
    scann_index.save(tmp_path / "s")
    (tmp_path / "s" / "scann_docids.pkl").write_bytes(b"not really a pickle")
    with pytest.raises(IndexFileError, match="jaxplain does not load pickles"):
        load_index(tmp_path / "s")


def test_atomic_directory_keeps_the_old_one_on_failure_and_refuses_foreign_directories(tmp_path):
    target = tmp_path / "idx"
    ExactIndex(np.eye(3, dtype=np.float32)).save(target)
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "index.json").write_text("half")
        raise RuntimeError("crash")
    assert load_index(target).size == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]
    precious = tmp_path / "photos"
    precious.mkdir()
    (precious / "cat.jpg").write_bytes(b"meow")
    with pytest.raises(JaxplainError, match="not a jaxplain bank or index; refusing"):
        ExactIndex(np.eye(3, dtype=np.float32)).save(precious)
    assert (precious / "cat.jpg").read_bytes() == b"meow"

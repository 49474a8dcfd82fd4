"""Target solver against analytic solutions; verifier and oracle against NumPy brute force."""

import numpy as np
import pytest

from jaxplain.counterfactual import solver as solver_mod
from jaxplain.counterfactual.solver import SolverConfig, solve_targets
from jaxplain.counterfactual.verify import BLOCK_ROWS, exhaustive, verify
from jaxplain.objectives import CLASS_LOSES, CLASS_WINS, PROB_ABOVE, PROB_BELOW, SIM_ABOVE, SIM_BELOW, Goal
from tests.conftest import dot_precisions


def unit(x):
    x = np.asarray(x, np.float64)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def test_similarity_target_is_the_nearest_point_of_the_region():
    # u0 = e1, anchor v = e2: the nearest unit e with e·v ≥ L is (cos asin L, L, 0).
    u0 = np.array([[1.0, 0.0, 0.0]], np.float32)
    v = np.array([[0.0, 1.0, 0.0]], np.float32)
    cfg = SolverConfig(depths=(0.0, 0.0), similarity_depths=(0.0, 0.05), probability_depths=(0.0, 0.0), steps=400)
    t = solve_targets(u0, Goal.stack([(SIM_ABOVE, 0, 0.5)]), v, np.eye(3, dtype=np.float32)[:1], 1.0, cfg)
    for d, depth in enumerate(cfg.similarity_depths):
        level = 0.5 + depth
        want = np.array([np.sqrt(1 - level**2), level, 0.0])
        # the quadratic penalty stops short of the boundary by about tan(θ)/λ
        np.testing.assert_allclose(t.embedding[0, d], want, atol=0.01)
        assert t.margin[0, d] == pytest.approx(depth, abs=0.01)
        assert t.distance[0, d] == pytest.approx(np.linalg.norm(want - u0[0]), abs=0.01)
    assert t.converged.all()


def test_class_target_lands_on_the_boundary_cone():
    # V = identity: class 2 wins where e₂ > e₀, e₁. From u0 ∝ (1, .2, .1) the nearest such point
    # lies on the plane e₀ = e₂: normalise((a, .2, a)) with a = (1 + .1)/2.
    u0 = unit([[1.0, 0.2, 0.1]])
    cfg = SolverConfig(depths=(0.0,), similarity_depths=(0.0,), probability_depths=(0.0,), steps=400)
    t = solve_targets(u0, Goal.stack([(CLASS_WINS, 2, 0.0)]), u0, np.eye(3, dtype=np.float32), 100.0, cfg)
    np.testing.assert_allclose(t.embedding[0, 0], unit([0.55, 0.2, 0.55]), atol=0.01)


def test_each_kind_takes_its_schedule_of_depths():
    # a similarity pair, a class pair and a probability pair in a batch: u0 = e1, raise u·e2 above 0;
    # make class 2 (V = identity) win; bring p_0 (0.97 at u0) down to 0.5. Each target's margin settles
    # just short of its own schedule's depth.
    u0 = unit([[1.0, 0.0, 0.0], [1.0, 0.2, 0.1], [1.0, 0.95, 0.1]])
    anchor = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]], np.float32)
    goals = Goal.stack([(SIM_ABOVE, 0, 0.0), (CLASS_WINS, 2, 0.0), (PROB_BELOW, 0, np.log(0.5))])
    cfg = SolverConfig(
        depths=(0.0, 0.02, 0.04), similarity_depths=(0.0, 0.3, 0.6), probability_depths=(0.0, 0.05, 0.1), steps=400
    )
    t = solve_targets(u0, goals, anchor, np.eye(3, dtype=np.float32), 100.0, cfg)
    np.testing.assert_allclose(t.margin[0], cfg.similarity_depths, atol=0.01)
    np.testing.assert_allclose(t.margin[1], cfg.depths, atol=0.01)
    np.testing.assert_allclose(t.margin[2], cfg.probability_depths, atol=0.01)
    # the similarity target at depth δ is (cos asin δ, δ, 0)
    np.testing.assert_allclose(t.embedding[0, 2], [np.sqrt(1 - 0.36), 0.6, 0.0], atol=0.01)
    # the probability target at depth δ: log 0.5 − log p_0 = 100 δ at the target
    z = 100 * t.embedding[2]
    log_p0 = z[:, 0] - np.log(np.exp(z).sum(-1))
    np.testing.assert_allclose((np.log(0.5) - log_p0) / 100, t.margin[2], atol=1e-4)
    with pytest.raises(ValueError, match="as many entries"):
        SolverConfig(depths=(0.0, 0.1), similarity_depths=(0.0,))
    with pytest.raises(ValueError, match="as many entries"):
        SolverConfig(probability_depths=(0.0,))


def test_many_pairs_and_kinds_at_once_and_no_recompile(monkeypatch):
    rng = np.random.RandomState(0)
    classes = unit(rng.randn(5, 16))
    u0 = unit(rng.randn(7, 16))
    anchor = unit(rng.randn(7, 16))
    goals = Goal.stack(
        [
            (SIM_ABOVE, 0, 0.4),
            (SIM_BELOW, 0, -0.4),
            (CLASS_WINS, 3, 0.0),
            (CLASS_LOSES, int(np.argmax(u0[3] @ classes.T)), 0.0),
            (PROB_ABOVE, 1, np.log(0.8)),
            (CLASS_WINS, 0, 0.0),
            (SIM_ABOVE, 0, 0.0),
        ]
    )
    cfg = SolverConfig()
    t = solve_targets(u0, goals, anchor, classes, 20.0, cfg)
    # every deeper target reaches its outcome
    assert (t.margin[:, 1:] > 0).all(), t.margin
    np.testing.assert_allclose(np.linalg.norm(t.embedding, axis=-1), 1.0, atol=1e-5)
    size = solver_mod._solve._cache_size()
    solve_targets(u0[:5], Goal(*(g[:5] for g in goals)), anchor[:5], classes, 20.0, cfg)  # 5 and 7 share a bucket
    assert solver_mod._solve._cache_size() == size
    # in blocks of 2 pairs (a CPU solves big batches in blocks): the same targets
    monkeypatch.setattr(solver_mod, "CPU_SOLVE_BLOCK", 2)
    blocks = solve_targets(u0, goals, anchor, classes, 20.0, cfg)
    for got, want in zip(blocks, t):
        np.testing.assert_allclose(got, want, atol=1e-6)


def brute_force(bank, u0, goal_rows, anchor, classes, scale, top, exclude=None, cand=None):
    """NumPy reference: validity and distances of every (candidate) item, nearest valid first."""
    out = []
    for i, (kind, c, level) in enumerate(goal_rows):
        ids = np.arange(len(bank)) if cand is None else np.unique(cand[i][cand[i] >= 0])
        x = bank[ids].astype(np.float64)
        sim = x @ anchor[i]
        z = scale * x @ classes.T
        zc = z[:, c]
        other = np.delete(z, c, axis=1).max(1)
        logp = zc - np.log(np.exp(z).sum(1))
        m = [sim - level, level - sim, (zc - other) / scale, (other - zc) / scale, (logp - level) / scale][kind]
        ok = (m > 0) & (ids != (-1 if exclude is None else exclude[i]))
        d = np.linalg.norm(x - u0[i], axis=1)
        order = np.argsort(np.where(ok, d, np.inf), kind="stable")[:top]
        out.append([ids[j] if ok[j] else -1 for j in order])
    return np.array(out)


@pytest.fixture(scope="module")
def problem():
    rng = np.random.RandomState(1)
    centres = unit(rng.randn(12, 16))
    bank = unit(centres[rng.randint(12, size=3000)] + 0.3 * rng.randn(3000, 16))
    classes = unit(rng.randn(4, 16))
    u0 = bank[:6]
    anchor = unit(rng.randn(6, 16))
    pred = np.argmax(u0 @ classes.T, 1)
    rows = [
        (CLASS_LOSES, int(pred[0]), 0.0),
        (CLASS_WINS, int((pred[1] + 1) % 4), 0.0),
        (SIM_ABOVE, 0, 0.3),
        (SIM_BELOW, 0, -0.2),
        (PROB_ABOVE, 2, float(np.log(0.6))),
        (SIM_ABOVE, 0, 0.99),  # nothing in the bank reaches it
    ]
    return bank, u0, rows, anchor, classes


@pytest.mark.parametrize("block_rows", [BLOCK_ROWS, 200, 400])  # pairs in one block, one by one, two by two
def test_verify_equals_brute_force(problem, block_rows):
    bank, u0, rows, anchor, classes = problem
    rng = np.random.RandomState(2)
    cand = rng.randint(0, len(bank), size=(6, 200)).astype(np.int32)
    cand[:, :20] = cand[:, 20:40]  # repeats are counted once
    cand[:, -5:] = -1
    got = verify(
        cand, bank, u0, Goal.stack(rows), anchor, classes, 10.0, top=5, exclude=np.arange(6), block_rows=block_rows
    )
    want = brute_force(bank, u0, rows, anchor, classes, 10.0, 5, exclude=np.arange(6), cand=cand)
    np.testing.assert_array_equal(got.ids, want)
    assert (got.valid == (want >= 0)).all()
    assert not got.valid[5].any() and (got.ids[5] == -1).all()
    assert (got.margin[got.valid] > 0).all()
    d = np.linalg.norm(bank[np.maximum(got.ids, 0)] - u0[:, None], axis=-1)
    np.testing.assert_allclose(got.distance[got.valid], d[got.valid], atol=1e-6)
    # within a pair, distances are ascending and items unique
    for i in range(6):
        v = got.ids[i][got.valid[i]]
        assert len(set(v)) == len(v) and np.all(np.diff(got.distance[i][got.valid[i]]) >= 0)


# 3,000 items: chunks of 512 (the last overlapping the one before), of 500 (whole chunks), one padded chunk;
# the 6 pairs at once, or 4 then 2
@pytest.mark.parametrize("chunk, pairs", [(512, 4096), (500, 4096), (4096, 4096), (512, 4)])
def test_oracle_equals_brute_force_across_chunks(problem, chunk, pairs):
    bank, u0, rows, anchor, classes = problem
    goal = Goal.stack(rows)
    got = exhaustive(bank, u0, goal, anchor, classes, 10.0, top=4, exclude=np.arange(6), chunk=chunk, pairs=pairs)
    want = brute_force(bank, u0, rows, anchor, classes, 10.0, 4, exclude=np.arange(6))
    np.testing.assert_array_equal(got.ids, want)
    assert got.valid[:5, 0].all() and not got.valid[5].any()


def test_every_score_product_runs_at_full_precision(problem):
    """A GPU may round float32 products to TF32 at default precision (off by 1e-4 on an H100): every product
    that decides validity, distance or a target asks for HIGHEST. On a CPU nothing would show the difference,
    so the test reads the traced programs."""
    import importlib

    import jax
    import jax.numpy as jnp

    engine = importlib.import_module("jaxplain.counterfactual.engine")
    verify_mod = importlib.import_module("jaxplain.counterfactual.verify")  # the package exports a verify()

    bank, u0, rows, anchor, classes = problem
    goal = Goal(*(jnp.asarray(g) for g in Goal.stack(rows)))
    u0, anchor, bank, classes = (jnp.asarray(a, jnp.float32) for a in (u0, anchor, bank, classes))
    excl = jnp.full(6, -1, jnp.int32)
    cand = jnp.zeros((6, 8), jnp.int32)
    programs = {
        "verify": jax.make_jaxpr(verify_mod._verify, static_argnums=(8, 9))(
            cand, bank, u0, goal, anchor, classes, 10.0, excl, 2, 4096
        ),
        "oracle": jax.make_jaxpr(verify_mod._exhaustive, static_argnums=(7, 8))(
            bank, u0, goal, anchor, classes, 10.0, excl, 2, 512
        ),
        "solver": jax.make_jaxpr(solver_mod._solve, static_argnums=5)(u0, goal, anchor, classes, 10.0, SolverConfig()),
        "original": jax.make_jaxpr(engine._original_scores)(u0, anchor, classes, 10.0, goal),
        "top classes": jax.make_jaxpr(engine._top_k_classes, static_argnums=2)(u0, classes, 2),
    }
    for name, program in programs.items():
        found = dot_precisions(program.jaxpr)
        assert found, name
        highest = (jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGHEST)
        assert all(p == highest for p in found), (name, found)

"""Fixed rows (``--extend``) in the selectors, against brute force and scipy's NNLS: gtp keeps
them as members its swaps never remove, and its other members are a 1-exchange optimum
given them; round-robin and LESS take the best rows given them."""

import itertools

import numpy as np
from scipy.optimize import nnls

from gradstore.selectors.gtp import gtp
from gradstore.selectors.less import less_topk
from gradstore.selectors.query import Query
from gradstore.selectors.random_subset import random_subset
from gradstore.selectors.round_robin import PartsQuery, round_robin
from gradstore.selectors.source import TensorSource
from gradstore.selectors.stacked import StackedPool
from tests.conftest import clustered_rows
from tests.selectors.test_gtp import dense, objective


def test_gtp_keeps_fixed_rows_and_swaps_the_others_to_a_local_optimum():
    """The fixed rows (chosen far from the target, so a free pursuit would swap them out)
    stay; no exchange of a free member for an outsider improves the objective."""
    for seed in range(6):
        rng = np.random.default_rng(seed)
        X = clustered_rows(rng, 90, 2, 12, clusters=5)
        pool = StackedPool(TensorSource(X.astype(np.float32), 2))
        A = dense(pool)
        y = A[rng.choice(90, 8, replace=False)].mean(0)
        far = np.argsort(A @ y)[:3]  # the three rows least aligned with the target
        (res,) = gtp(pool, [Query(y, 7, fixed=far)], min_gain=0.0, max_iter=100)
        rows = res.rows.tolist()
        assert rows[:3] == far.tolist() and len(set(rows)) == 7
        best = objective(A, rows, y)
        assert res.residual == np.float64(best) or abs(res.residual - best) < 1e-9
        free = set(rows) - set(far.tolist())
        for j in free:
            for i in set(range(90)) - set(rows):
                assert objective(A, (set(rows) - {j}) | {i}, y) >= best - 1e-9
        (alone,) = gtp(pool, [Query(y, 7)], min_gain=0.0, max_iter=100)
        assert not set(far.tolist()) & set(alone.rows.tolist())  # they are kept, not chosen


def test_gtp_with_fixed_rows_is_near_the_exhaustive_optimum():
    """Over every 3-subset of the 9 free rows added to 2 fixed ones (C(9, 3) = 84 sets)."""
    exact, total = 0, 20
    for seed in range(total):
        rng = np.random.default_rng(200 + seed)
        pool = StackedPool(TensorSource(clustered_rows(rng, 11, 1, 6, clusters=4), 1))
        A = dense(pool)
        y = A[rng.choice(11, 4, replace=False)].mean(0) + 0.1 * rng.standard_normal(6)
        fixed = [0, 1]
        opt = min(objective(A, fixed + list(s), y)
                  for s in itertools.combinations(range(2, 11), 3))
        (res,) = gtp(pool, [Query(y, 5, fixed=np.array(fixed))])
        assert res.rows[:2].tolist() == fixed
        assert res.residual >= opt - 1e-9
        exact += res.residual <= opt + 1e-9
    assert exact / total >= 0.75


def test_less_and_round_robin_take_the_best_rows_given_the_kept_ones(rng):
    X = clustered_rows(rng, 200, 2, 16)
    pool = StackedPool(TensorSource(X.astype(np.float32), 2), normalize=True)
    A = dense(pool)
    y = A[:10].mean(0)
    kept = np.array([5, 150, 3])
    ((rows, _),) = less_topk(pool, [y[:, None]], [6], exclude=kept)
    score = A @ y
    score[kept] = -np.inf
    assert rows.tolist() == np.argsort(-score, kind="stable")[:6].tolist()
    (rr,) = round_robin(pool, [PartsQuery([y[:, None], A[100:103].T], 9, fixed=kept)])
    assert rr.rows[:3].tolist() == kept.tolist() and len(set(rr.rows.tolist())) == 9
    assert sum(rr.per_part) == 6  # the parts took the six new rows
    sample = random_subset(200, 50, seed=3, exclude=kept)
    assert len(set(sample.tolist())) == 50 and not set(sample.tolist()) & set(kept.tolist())
    assert random_subset(200, 50, seed=3).tolist() == \
        random_subset(200, 50, seed=3, exclude=np.zeros(0, np.int64)).tolist()


def test_kept_member_weights_are_scipys_nnls(rng):
    """What the operations layer records for a non-gtp extension: the NNLS fit of kept and
    new rows together (``fit_support``), checked against scipy on the same rows."""
    from gradstore.selectors.omp import fit_support

    pool = StackedPool(TensorSource(clustered_rows(rng, 120, 2, 10).astype(np.float32), 2))
    A = dense(pool)
    y = A[:7].mean(0)
    rows = np.array([4, 90, 17, 60])
    W, res = fit_support(pool, rows, y[:, None])
    want, rnorm = nnls(A[rows].T, y)
    np.testing.assert_allclose(W[:, 0], want, atol=1e-5)
    assert abs(res - rnorm / np.linalg.norm(y)) < 1e-5

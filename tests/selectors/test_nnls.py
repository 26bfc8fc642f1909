"""Tests for gradstore.selectors.nnls.

Every objective is checked against ``scipy.optimize.nnls`` run on the original
``A``, ``y`` (an independent Lawson-Hanson implementation working on ``A`` itself,
not on the Gram matrix).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import nnls as scipy_nnls

from gradstore.selectors import nnls as nnls_mod
from gradstore.selectors.nnls import nnls_gram
from tests.selectors import nnls_reference as ref_mod
from tests.selectors.nnls_reference import nnls, nnls_auto, nnls_pg, nnls_residual

RTOL = 1e-6


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #
def _reference(A: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    x, _ = scipy_nnls(A, y, maxiter=50 * A.shape[1] + 100)
    return x, _objective(A, y, x)


def _objective(A: np.ndarray, y: np.ndarray, x: np.ndarray) -> float:
    r = A @ x - y
    return float(r @ r)


def _assert_objective(A, y, x, f_ref, rtol=RTOL):
    """Objective within ``rtol`` of the reference, relative to the reference value
    (with a floor of ``rtol * ||y||^2`` for problems that fit exactly)."""
    f = _objective(A, y, x)
    scale = max(f_ref, 1e-6 * float(y @ y))
    assert abs(f - f_ref) <= rtol * scale, (f, f_ref)


def _assert_valid(x: np.ndarray, n: int) -> None:
    assert x.shape == (n,)
    assert x.dtype == np.float64
    assert np.isfinite(x).all()
    assert (x >= 0.0).all()


def _assert_kkt(G: np.ndarray, b: np.ndarray, x: np.ndarray, tol: float) -> None:
    """KKT of min 0.5 x'Gx - b'x, x >= 0, on the column-normalised scale: the
    gradient is >= -tol on zero entries and ~0 on the support."""
    s = np.sqrt(np.diagonal(G))
    g = (G @ x - b) / s
    scale = np.max(np.abs(b / s))
    zero = x == 0.0
    if zero.any():
        assert g[zero].min() >= -tol * scale
    if (~zero).any():
        assert np.abs(g[~zero]).max() <= tol * scale


def _problem(seed: int, D: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((D, n))
    y = rng.standard_normal(D)
    return A, y


def _solve(name: str, A: np.ndarray, y: np.ndarray) -> np.ndarray:
    if name == "nnls":
        return nnls(A, y)
    G, b = A.T @ A, A.T @ y
    if name == "gram":
        return nnls_gram(G, b)
    if name == "pg":
        return nnls_pg(G, b)
    if name == "auto":
        return nnls_auto(G, b)
    raise AssertionError(name)


SOLVERS = ["nnls", "gram", "pg", "auto"]
SHAPES = [(30, 1), (50, 20), (20, 50), (200, 100), (100, 300), (600, 450)]


# --------------------------------------------------------------------------- #
# random dense problems
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"D{s[0]}n{s[1]}")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_dense_matches_scipy(solver, shape, seed):
    D, n = shape
    A, y = _problem(seed, D, n)
    _, f_ref = _reference(A, y)
    x = _solve(solver, A, y)
    _assert_valid(x, n)
    _assert_objective(A, y, x, f_ref)
    if D >= n:  # unique minimiser: the KKT conditions pin it down
        _assert_kkt(A.T @ A, A.T @ y, x, 1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_kkt_active_set_is_tight(seed):
    A, y = _problem(seed, 300, 200)
    G, b = A.T @ A, A.T @ y
    x = nnls_gram(G, b)
    _assert_kkt(G, b, x, 1e-9)
    # zero pattern agrees with scipy's (unique solution)
    x_ref, _ = _reference(A, y)
    np.testing.assert_allclose(x, x_ref, rtol=1e-7, atol=1e-9 * np.abs(x_ref).max())


def test_empty_problem():
    A = np.zeros((5, 0))
    y = np.ones(5)
    G = np.zeros((0, 0))
    b = np.zeros(0)
    for x in (nnls(A, y), nnls_gram(G, b), nnls_pg(G, b), nnls_auto(G, b)):
        assert x.shape == (0,)
        assert x.dtype == np.float64
    assert nnls_residual(G, b, 3.0, np.zeros(0)) == 3.0


def test_one_column():
    A = np.array([[1.0], [2.0]])
    for y, expected in ((np.array([1.0, 2.0]), 1.0), (np.array([-1.0, -2.0]), 0.0)):
        for solver in SOLVERS:
            x = _solve(solver, A, y)
            _assert_valid(x, 1)
            assert x[0] == pytest.approx(expected, abs=1e-8)


def test_all_negative_correlations_give_zero():
    rng = np.random.default_rng(3)
    A = np.abs(rng.standard_normal((40, 30)))
    y = -np.abs(rng.standard_normal(40))
    G, b = A.T @ A, A.T @ y
    for x in (nnls(A, y), nnls_gram(G, b), nnls_pg(G, b), nnls_auto(G, b)):
        np.testing.assert_array_equal(x, np.zeros(30))


def test_zero_column_gets_zero_weight():
    A, y = _problem(4, 60, 12)
    A[:, 5] = 0.0
    _, f_ref = _reference(A, y)
    G, b = A.T @ A, A.T @ y
    for x in (nnls_gram(G, b), nnls_pg(G, b), nnls_auto(G, b)):
        _assert_valid(x, 12)
        assert x[5] == 0.0
        _assert_objective(A, y, x, f_ref)


# --------------------------------------------------------------------------- #
# duplicated columns (singular G)
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("shape", [(80, 40), (300, 150), (40, 60)], ids=str)
def test_duplicated_columns(solver, shape):
    D, m = shape
    A0, y = _problem(5, D, m)
    A = np.repeat(A0, 3, axis=1)  # each column three times (n = 450 > 400 for nnls)
    _, f_ref = _reference(A, y)
    x = _solve(solver, A, y)
    _assert_valid(x, 3 * m)
    _assert_objective(A, y, x, f_ref)
    # any split of a weight among copies is optimal: compare the merged weights
    merged = x.reshape(m, 3).sum(axis=1)
    _assert_objective(A0, y, merged, f_ref)


def test_duplicated_columns_warm_start_on_all_copies():
    A0, y = _problem(6, 120, 50)
    A = np.repeat(A0, 3, axis=1)
    _, f_ref = _reference(A, y)
    G, b = A.T @ A, A.T @ y
    for x0 in (np.ones(150), np.random.default_rng(0).random(150)):
        x = nnls_gram(G, b, x0=x0)
        _assert_valid(x, 150)
        _assert_objective(A, y, x, f_ref)
        x = nnls_auto(G, b, x0=x0)
        _assert_valid(x, 150)
        _assert_objective(A, y, x, f_ref)


# --------------------------------------------------------------------------- #
# warm start
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_warm_start_same_as_cold(seed):
    A, y = _problem(seed, 150, 100)
    G, b = A.T @ A, A.T @ y
    x_cold = nnls_gram(G, b)
    x_ref, f_ref = _reference(A, y)
    tol = 1e-8 * np.abs(x_ref).max()
    # from the solution itself
    np.testing.assert_allclose(nnls_gram(G, b, x0=x_cold), x_cold, rtol=1e-8, atol=tol)
    # from an arbitrary positive point and from a partly wrong support
    rng = np.random.default_rng(seed)
    for x0 in (rng.random(100), np.where(rng.random(100) < 0.5, rng.random(100), x_cold)):
        x = nnls_gram(G, b, x0=x0)
        np.testing.assert_allclose(x, x_ref, rtol=1e-7, atol=tol)
        _assert_objective(A, y, x, f_ref)
        _assert_objective(A, y, nnls_auto(G, b, x0=x0), f_ref)
        _assert_objective(A, y, nnls_pg(G, b, x0=x0), f_ref)


def test_warm_start_adding_one_column_at_a_time():
    """The pursuit pattern: solve on columns [0, m), pad with 0, re-solve on [0, m+1)."""
    A, y = _problem(7, 200, 60)
    x_prev = np.zeros(0)
    inner_solves = []
    for m in range(1, 61):
        Am = A[:, :m]
        G, b = Am.T @ Am, Am.T @ y
        x0 = np.append(x_prev, 0.0)
        x = nnls_gram(G, b, x0=x0)
        x_ref, f_ref = _reference(Am, y)
        _assert_objective(Am, y, x, f_ref)
        np.testing.assert_allclose(x, nnls_gram(G, b), rtol=1e-8, atol=1e-10)
        # count the inner solves of the warm-started active set (internal API)
        s, valid, _, bscale = nnls_mod._scaling(G, b)
        lh = nnls_mod._LawsonHanson(G, b, s, valid, 1e-10 * bscale, 3 * m + 10)
        lh.solve(x0)
        inner_solves.append(lh.inner_solves)
        x_prev = x
    assert np.median(inner_solves) <= 2
    assert np.mean(inner_solves) <= 3


# --------------------------------------------------------------------------- #
# scale invariance
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("factor", [1e-6, 1e6])
@pytest.mark.parametrize("solver", SOLVERS)
def test_scaled_problems(factor, solver):
    A, y = _problem(8, 120, 80)
    x_ref, f_ref = _reference(A, y)
    # A scaled: same objective, weights scaled by 1 / factor
    x = _solve(solver, A * factor, y)
    _assert_valid(x, 80)
    _assert_objective(A * factor, y, x, f_ref)
    # A and y scaled: same weights, objective scaled by factor^2
    x = _solve(solver, A * factor, y * factor)
    _assert_valid(x, 80)
    _assert_objective(A, y, x, f_ref)


def test_mixed_column_scales():
    A, y = _problem(9, 150, 90)
    A = A * np.logspace(-4, 4, 90)
    _, f_ref = _reference(A, y)
    G, b = A.T @ A, A.T @ y
    for x in (nnls_gram(G, b), nnls_auto(G, b), nnls(A, y)):
        _assert_valid(x, 90)
        _assert_objective(A, y, x, f_ref)


# --------------------------------------------------------------------------- #
# harder problems: many removals from the passive set
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("shape", [(300, 200), (200, 300), (800, 600)], ids=str)
def test_correlated_columns(shape):
    D, n = shape
    rng = np.random.default_rng(10)
    A = rng.standard_normal((D, 20)) @ rng.standard_normal((20, n))
    A += 0.05 * rng.standard_normal((D, n))
    y = rng.standard_normal(D) + A[:, :5].sum(axis=1)
    _, f_ref = _reference(A, y)
    G, b = A.T @ A, A.T @ y
    x = nnls_gram(G, b)
    _assert_valid(x, n)
    _assert_objective(A, y, x, f_ref)
    _assert_objective(A, y, nnls_auto(G, b), f_ref)
    _assert_objective(A, y, nnls(A, y), f_ref)


# --------------------------------------------------------------------------- #
# nnls_auto, large-n path (forced on moderate sizes)
# --------------------------------------------------------------------------- #
@pytest.fixture
def large_path(monkeypatch):
    """Force nnls_auto's large-n path with a short probe; record PG outcomes."""
    monkeypatch.setattr(ref_mod, "AUTO_ACTIVE_SET_MAX_N", 0)
    monkeypatch.setattr(ref_mod, "_AUTO_PROBE_ITERS", 5)
    outcomes = []
    real = ref_mod._pg_scaled

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        outcomes.append(out[2])
        return out

    monkeypatch.setattr(ref_mod, "_pg_scaled", spy)
    return outcomes


def test_auto_large_path_well_conditioned(large_path):
    A, y = _problem(11, 900, 500)
    _, f_ref = _reference(A, y)
    G, b = A.T @ A, A.T @ y
    x = nnls_auto(G, b)
    _assert_valid(x, 500)
    _assert_objective(A, y, x, f_ref)
    _assert_kkt(G, b, x, 1e-8)
    assert large_path == [True]  # projected gradient converged, polish from it


def test_auto_large_path_ill_conditioned(large_path):
    rng = np.random.default_rng(12)
    A = rng.standard_normal((1000, 30)) @ rng.standard_normal((30, 600))
    A += 0.3 * rng.standard_normal((1000, 600))
    y = 30.0 * rng.standard_normal(1000) + A[:, :10].sum(axis=1)
    _, f_ref = _reference(A, y)
    G, b = A.T @ A, A.T @ y
    x = nnls_auto(G, b)
    _assert_valid(x, 600)
    _assert_objective(A, y, x, f_ref)
    assert large_path == [False]  # projected gradient stalled, active set finished


@pytest.mark.parametrize("seed", [0, 1])
def test_auto_large_path_rank_deficient(large_path, seed):
    A, y = _problem(seed, 150, 450)  # D < n: exact fit, dense minimisers
    _, f_ref = _reference(A, y)
    G, b = A.T @ A, A.T @ y
    x = nnls_auto(G, b)
    _assert_valid(x, 450)
    _assert_objective(A, y, x, f_ref)
    # whatever the path, the result is a basic solution: support within rank
    assert (x > 0).sum() <= 150


def test_auto_large_path_sparse_solution_needs_no_pg(monkeypatch):
    monkeypatch.setattr(ref_mod, "AUTO_ACTIVE_SET_MAX_N", 0)
    rng = np.random.default_rng(13)
    A = rng.standard_normal((300, 400)) + 0.5 * rng.standard_normal((300, 1))
    y = A[:, :10] @ rng.random(10) + 0.01 * rng.standard_normal(300)
    _, f_ref = _reference(A, y)

    def fail(*args, **kwargs):
        raise AssertionError("the active-set probe should have finished")

    monkeypatch.setattr(ref_mod, "_pg_scaled", fail)
    x = nnls_auto(A.T @ A, A.T @ y)
    _assert_objective(A, y, x, f_ref)


def test_auto_large_problem_matches_scipy():
    """n = 3000 columns, D = 1000, columns in a half-space (non-zero residual)."""
    rng = np.random.default_rng(14)
    A = rng.standard_normal((1000, 3000)) + 0.1
    y = rng.standard_normal(1000) - 0.05
    _, f_ref = _reference(A, y)
    G, b = A.T @ A, A.T @ y
    x = nnls_auto(G, b)
    _assert_valid(x, 3000)
    _assert_objective(A, y, x, f_ref)
    _assert_kkt(G, b, x, 1e-8)


# --------------------------------------------------------------------------- #
# numerical safeguards
# --------------------------------------------------------------------------- #
def test_many_entries_leave_the_passive_set_at_once():
    # Orthonormal columns: from x0 = 1 every weight with a negative correlation
    # reaches zero at the same step, so the passive set shrinks by a lot at once.
    rng = np.random.default_rng(17)
    A, _ = np.linalg.qr(rng.standard_normal((80, 40)))
    y = A @ np.where(np.arange(40) % 3 == 0, 1.0, -1.0)
    _, f_ref = _reference(A, y)
    G, b = A.T @ A, A.T @ y
    for x0 in (np.ones(40), None):
        x = nnls_gram(G, b, x0=x0)
        _assert_valid(x, 40)
        _assert_objective(A, y, x, f_ref)
    np.testing.assert_array_equal(nnls_gram(np.eye(40), -np.ones(40), x0=np.ones(40)), 0.0)


def test_dependent_or_non_improving_column_is_not_added():
    A, y = _problem(18, 50, 6)
    A[:, 5] = A[:, 0]
    G, b = A.T @ A, A.T @ y
    s, valid, _, bscale = nnls_mod._scaling(G, b)
    lh = nnls_mod._LawsonHanson(G, b, s, valid, 1e-10 * bscale, 100)
    assert lh.append(0)
    assert lh.inner(0)[0] == "ok"
    assert not lh.append(5)  # exact copy of a passive column: refused, state kept
    assert lh.k == 1
    # a column whose weight would come out non-positive is rejected again
    G2 = np.array([[1.0, 0.5], [0.5, 1.0]])
    b2 = np.array([1.0, 0.0])  # optimum on {0} is x0 = 1; column 1 then has w = -0.5
    lh2 = nnls_mod._LawsonHanson(G2, b2, np.ones(2), np.ones(2, bool), 1e-12, 10)
    assert lh2.append(0) and lh2.inner(0)[0] == "ok"
    assert lh2.append(1)
    assert lh2.inner(1) == ("rejected", False)
    assert lh2.k == 1 and lh2.x[1] == 0.0 and lh2.x[0] == pytest.approx(1.0)


def test_corrupted_factor_is_detected_and_rebuilt():
    rng = np.random.default_rng(19)
    A = rng.standard_normal((200, 20)) @ rng.standard_normal((20, 120))
    A += 0.05 * rng.standard_normal((200, 120))
    y = rng.standard_normal(200) + A[:, :5].sum(axis=1)
    _, f_ref = _reference(A, y)
    G, b = A.T @ A, A.T @ y
    s, valid, _, bscale = nnls_mod._scaling(G, b)
    lh = nnls_mod._LawsonHanson(G, b, s, valid, 1e-10 * bscale, 1000)
    lh.start(np.where(np.arange(120) < 30, 1.0, 0.0))
    k = lh.k
    lh._square(0, 0, k, k)[...] *= 1.0 + 1e-3  # as if updates had drifted
    lh.stale = True
    lh._refresh_u()
    lh.inner(None)
    assert lh.run()
    x = lh.result()
    _assert_valid(x, 120)
    _assert_objective(A, y, x, f_ref)


def test_pg_step_length_backtracking():
    # Scaled G = [[1, -c], [-c, 1]]: the power iteration from the all-ones vector
    # sees only the small eigenvalue 1 - c, so L starts far too small.
    c = 0.99
    A = np.array([[1.0, -c], [0.0, np.sqrt(1 - c * c)], [0.0, 0.0]])
    y = np.array([1.0, -0.3, 0.5])
    _, f_ref = _reference(A, y)
    x = nnls_pg(A.T @ A, A.T @ y)
    _assert_valid(x, 2)
    _assert_objective(A, y, x, f_ref)
    _assert_valid(nnls_pg(A.T @ A, A.T @ y, max_iter=1), 2)  # budget exhausted
    # a column and its negative: G v = 0 for the power-iteration start vector
    A2, y2 = _problem(20, 30, 4)
    A2 = np.concatenate([A2, -A2[:, :1]], axis=1)
    _, f_ref2 = _reference(A2, y2)
    for solver in SOLVERS:
        _assert_objective(A2, y2, _solve(solver, A2, y2), f_ref2)


def test_zero_rhs_and_fortran_order(monkeypatch):
    A, y = _problem(21, 40, 15)
    G = A.T @ A
    for f in (nnls_gram, nnls_pg, nnls_auto):
        np.testing.assert_array_equal(f(G, np.zeros(15)), 0.0)
    monkeypatch.setattr(ref_mod, "AUTO_ACTIVE_SET_MAX_N", 0)
    np.testing.assert_array_equal(nnls_auto(G, np.zeros(15)), 0.0)
    b = A.T @ y
    np.testing.assert_allclose(nnls_gram(np.asfortranarray(G), b), nnls_gram(G, b))


def test_nnls_falls_back_when_scipy_gives_up(monkeypatch):
    def give_up(*args, **kwargs):
        raise RuntimeError("Maximum number of iterations reached.")

    monkeypatch.setattr(ref_mod, "scipy_nnls", give_up)
    A, y = _problem(22, 60, 30)
    _, f_ref = _reference(A, y)
    _assert_objective(A, y, nnls(A, y), f_ref)


# --------------------------------------------------------------------------- #
# nnls_residual, validation
# --------------------------------------------------------------------------- #
def test_nnls_residual_matches_direct():
    A, y = _problem(15, 70, 40)
    G, b = A.T @ A, A.T @ y
    x = nnls_gram(G, b)
    direct = _objective(A, y, x)
    assert nnls_residual(G, b, float(y @ y), x) == pytest.approx(direct, rel=1e-9)
    # exact fit: clipped at zero, never negative
    A2, y2 = _problem(16, 10, 40)
    G2, b2 = A2.T @ A2, A2.T @ y2
    r = nnls_residual(G2, b2, float(y2 @ y2), nnls_gram(G2, b2))
    assert 0.0 <= r <= 1e-8 * float(y2 @ y2)


def test_input_validation():
    with pytest.raises(ValueError):
        nnls_gram(np.eye(3), np.ones(2))
    with pytest.raises(ValueError):
        nnls_gram(np.eye(3), np.ones(3), x0=np.ones(2))
    with pytest.raises(ValueError):
        nnls_pg(np.full((2, 2), np.nan), np.ones(2))
    with pytest.raises(ValueError):
        nnls(np.ones((3, 2)), np.ones(4))
    with pytest.raises(ValueError):
        nnls_auto(np.eye(2), np.ones((2, 1)))

"""The NNLS solvers the selectors call, against ``scipy.optimize.nnls``.

* ``nnls_gram`` (``gradstore.selectors.nnls``): Lawson-Hanson in Gram form, used by the
  exact refits (``polish``, gtp-paper's merged-set fits);
* ``IncrementalNNLS`` (``gradstore.selectors.greedy``): the support that grows and shrinks
  one column at a time, used by OMP, gtp-paper's greedy support update and the swaps. Here
  it is driven to the full NNLS optimum the way the greedy drives it (add the column with
  the largest scaled dual ``b - G x``, drop columns whose weight falls to zero), and checked
  after every add and removal against scipy on the columns it keeps.

Every objective is checked against ``scipy.optimize.nnls`` run on the original ``A``, ``y``
(an independent Lawson-Hanson implementation working on ``A`` itself, not on the Gram
matrix).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import nnls as scipy_nnls

from gradstore.selectors import nnls as nnls_mod
from gradstore.selectors.greedy import IncrementalNNLS
from gradstore.selectors.nnls import nnls_gram

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


class Incremental:
    """An :class:`IncrementalNNLS` and the columns of G its support positions stand for."""

    def __init__(self, G: np.ndarray, b: np.ndarray, capacity: int = 4) -> None:
        self.G, self.b = G, b
        self.solver = IncrementalNNLS(capacity)
        self.support: list[int] = []

    def add(self, j: int) -> bool:
        added, removed = self.solver.add(self.G[self.support, j], self.G[j, j], self.b[j])
        if added:
            self.support.append(j)
        self._drop(removed)
        return added

    def remove(self, j: int) -> None:
        pos = self.support.index(j)
        self.support.pop(pos)
        self._drop(self.solver.remove(pos))

    def _drop(self, positions: list[int]) -> None:
        for pos in sorted(positions, reverse=True):
            self.support.pop(pos)

    def x(self) -> np.ndarray:
        out = np.zeros(len(self.b))
        out[self.support] = self.solver.weights
        return out


def incremental_nnls(G: np.ndarray, b: np.ndarray, start=()) -> np.ndarray:
    """The full NNLS optimum through IncrementalNNLS, as the greedy drives it: add the
    column with the largest scaled dual while one is positive (a column the solver refuses
    as dependent is not offered again until the support changes)."""
    inc = Incremental(G, b)
    for j in start:
        inc.add(j)
    d = np.diagonal(G)
    s = np.sqrt(np.where(d > 0, d, 1.0))
    tol = 1e-10 * max(float(np.max(np.abs(b / s))) if len(b) else 0.0, 1e-300)
    refused: set[int] = set()
    for _ in range(10 * len(b) + 10):
        dual = (b - G @ inc.x()) / s
        dual[inc.support] = -np.inf
        dual[list(refused)] = -np.inf
        dual[d <= 0] = -np.inf
        if not len(b) or dual.max() <= tol:
            break
        j = int(np.argmax(dual))
        if inc.add(j):
            refused.clear()
        else:
            refused.add(j)
    return inc.x()


def _solve(name: str, A: np.ndarray, y: np.ndarray) -> np.ndarray:
    G, b = A.T @ A, A.T @ y
    if name == "gram":
        return nnls_gram(G, b)
    if name == "incremental":
        return incremental_nnls(G, b)
    raise AssertionError(name)


SOLVERS = ["gram", "incremental"]
SHAPES = [(30, 1), (50, 20), (20, 50), (200, 100), (100, 300), (600, 450)]


# --------------------------------------------------------------------------- #
# random dense problems
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"D{s[0]}n{s[1]}")
@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_random_dense_matches_scipy(solver, shape, seed):
    D, n = shape
    A, y = _problem(seed, D, n)
    _, f_ref = _reference(A, y)
    x = _solve(solver, A, y)
    _assert_valid(x, n)
    _assert_objective(A, y, x, f_ref)
    if D >= n:  # unique minimiser: the KKT conditions pin it down
        _assert_kkt(A.T @ A, A.T @ y, x, 1e-6)


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("seed", [0, 1])
def test_kkt_active_set_is_tight(solver, seed):
    A, y = _problem(seed, 300, 200)
    G, b = A.T @ A, A.T @ y
    x = _solve(solver, A, y)
    _assert_kkt(G, b, x, 1e-9)
    # zero pattern agrees with scipy's (unique solution)
    x_ref, _ = _reference(A, y)
    np.testing.assert_allclose(x, x_ref, rtol=1e-7, atol=1e-9 * np.abs(x_ref).max())


def test_empty_problem():
    assert nnls_gram(np.zeros((0, 0)), np.zeros(0)).shape == (0,)
    assert nnls_gram(np.zeros((0, 0)), np.zeros(0)).dtype == np.float64
    assert incremental_nnls(np.zeros((0, 0)), np.zeros(0)).shape == (0,)
    assert IncrementalNNLS(0).weights.shape == (0,) and IncrementalNNLS(0).fit == 0.0


@pytest.mark.parametrize("solver", SOLVERS)
def test_one_column(solver):
    A = np.array([[1.0], [2.0]])
    for y, expected in ((np.array([1.0, 2.0]), 1.0), (np.array([-1.0, -2.0]), 0.0)):
        x = _solve(solver, A, y)
        _assert_valid(x, 1)
        assert x[0] == pytest.approx(expected, abs=1e-8)


@pytest.mark.parametrize("solver", SOLVERS)
def test_all_negative_correlations_give_zero(solver):
    rng = np.random.default_rng(3)
    A = np.abs(rng.standard_normal((40, 30)))
    y = -np.abs(rng.standard_normal(40))
    np.testing.assert_array_equal(_solve(solver, A, y), np.zeros(30))


@pytest.mark.parametrize("solver", SOLVERS)
def test_zero_column_gets_zero_weight(solver):
    A, y = _problem(4, 60, 12)
    A[:, 5] = 0.0
    _, f_ref = _reference(A, y)
    x = _solve(solver, A, y)
    _assert_valid(x, 12)
    assert x[5] == 0.0
    _assert_objective(A, y, x, f_ref)


def test_incremental_refuses_a_zero_or_copied_column():
    A, noise = _problem(4, 60, 6)
    y = A[:, :4].sum(axis=1) + 0.1 * noise
    A[:, 5] = 0.0
    A[:, 4] = A[:, 1]
    G, b = A.T @ A, A.T @ y
    inc = Incremental(G, b)
    assert inc.add(1) and inc.add(0)
    assert not inc.add(5), "a zero column cannot enter"
    assert not inc.add(4), "a copy of a support column cannot enter"
    assert inc.support == [1, 0]
    ref, _ = scipy_nnls(A[:, [1, 0]], y)
    np.testing.assert_allclose(inc.x()[[1, 0]], ref, rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------- #
# duplicated and collinear columns (singular G)
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("shape", [(80, 40), (300, 150), (40, 60)], ids=str)
def test_duplicated_columns(solver, shape):
    D, m = shape
    A0, y = _problem(5, D, m)
    A = np.repeat(A0, 3, axis=1)  # each column three times
    _, f_ref = _reference(A, y)
    x = _solve(solver, A, y)
    _assert_valid(x, 3 * m)
    _assert_objective(A, y, x, f_ref)
    # any split of a weight among copies is optimal: compare the merged weights
    merged = x.reshape(m, 3).sum(axis=1)
    _assert_objective(A0, y, merged, f_ref)


@pytest.mark.parametrize("solver", SOLVERS)
def test_nearly_collinear_columns(solver):
    rng = np.random.default_rng(23)
    A = rng.standard_normal((60, 25))
    A[:, 10:20] = A[:, :10] * 0.999 + 1e-3 * rng.standard_normal((60, 10))
    y = A[:, :8] @ rng.uniform(0.5, 1.5, 8) + 0.1 * rng.standard_normal(60)
    _, f_ref = _reference(A, y)
    x = _solve(solver, A, y)
    _assert_valid(x, 25)
    _assert_objective(A, y, x, f_ref, rtol=1e-5)


def test_duplicated_columns_warm_start_on_all_copies():
    A0, y = _problem(6, 120, 50)
    A = np.repeat(A0, 3, axis=1)
    _, f_ref = _reference(A, y)
    G, b = A.T @ A, A.T @ y
    for x0 in (np.ones(150), np.random.default_rng(0).random(150)):
        x = nnls_gram(G, b, x0=x0)
        _assert_valid(x, 150)
        _assert_objective(A, y, x, f_ref)
    # the incremental solver started from every copy of the first 20 columns
    x = incremental_nnls(G, b, start=range(60))
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
    # the incremental solver from a partly wrong support
    start = rng.choice(100, 40, replace=False)
    x = incremental_nnls(G, b, start=start)
    np.testing.assert_allclose(x, x_ref, rtol=1e-7, atol=tol)


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


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_incremental_after_random_adds_and_removals(seed):
    """Random adds and removals (the swaps' pattern): after each, every kept weight is > 0
    and equals scipy's NNLS over the kept columns, and ``fit`` is ||A_S x||^2."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((50, 40))
    A[:, 30:35] = A[:, :5] * 1.001  # nearly collinear with earlier columns
    A[:, 39] = 0.0
    y = A[:, :12] @ rng.uniform(0.2, 1.0, 12) + 0.2 * rng.standard_normal(50)
    G, b = A.T @ A, A.T @ y
    inc = Incremental(G, b)
    for step in range(120):
        outside = [j for j in range(40) if j not in inc.support]
        if inc.support and (rng.random() < 0.35 or not outside):
            inc.remove(int(rng.choice(inc.support)))
        else:
            inc.add(int(rng.choice(outside)))
        assert len(set(inc.support)) == len(inc.support)
        if not inc.support:
            continue
        w = inc.solver.weights
        assert (w > 0).all(), step
        ref, _ = scipy_nnls(A[:, inc.support], y)
        np.testing.assert_allclose(w, ref, rtol=1e-6, atol=1e-9, err_msg=str(step))
        fitted = A[:, inc.support] @ w
        assert inc.solver.fit == pytest.approx(float(fitted @ fitted), rel=1e-8)


def test_incremental_removal_costs_and_clone():
    A, y = _problem(24, 40, 10)
    y = A @ np.linspace(0.5, 1.5, 10) + 0.1 * y
    G, b = A.T @ A, A.T @ y
    inc = Incremental(G, b)
    for j in range(10):
        assert inc.add(j)
    base = _objective(A, y, inc.x())
    for pos, cost in enumerate(inc.solver.removal_costs()):
        keep = [j for i, j in enumerate(inc.support) if i != pos]
        coef, *_ = np.linalg.lstsq(A[:, keep], y, rcond=None)  # the LS refit without it
        assert cost == pytest.approx(_objective(A[:, keep], y, coef) - base, rel=1e-7)
    twin = inc.solver.clone()
    inc.remove(0)
    assert len(twin.weights) == 10 and len(inc.solver.weights) == 9, "clones are independent"


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


@pytest.mark.parametrize("solver", SOLVERS)
def test_mixed_column_scales(solver):
    A, y = _problem(9, 150, 90)
    A = A * np.logspace(-4, 4, 90)
    _, f_ref = _reference(A, y)
    x = _solve(solver, A, y)
    _assert_valid(x, 90)
    _assert_objective(A, y, x, f_ref)


# --------------------------------------------------------------------------- #
# harder problems: many removals from the passive set
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("shape", [(300, 200), (200, 300), (800, 600)], ids=str)
def test_correlated_columns(solver, shape):
    D, n = shape
    rng = np.random.default_rng(10)
    A = rng.standard_normal((D, 20)) @ rng.standard_normal((20, n))
    A += 0.05 * rng.standard_normal((D, n))
    y = rng.standard_normal(D) + A[:, :5].sum(axis=1)
    _, f_ref = _reference(A, y)
    x = _solve(solver, A, y)
    _assert_valid(x, n)
    _assert_objective(A, y, x, f_ref)


@pytest.mark.parametrize("solver", SOLVERS)
def test_large_problem_matches_scipy(solver):
    """n = 1500 columns, D = 600, columns in a half-space (non-zero residual)."""
    rng = np.random.default_rng(14)
    A = rng.standard_normal((600, 1500)) + 0.1
    y = rng.standard_normal(600) - 0.05
    _, f_ref = _reference(A, y)
    x = _solve(solver, A, y)
    _assert_valid(x, 1500)
    _assert_objective(A, y, x, f_ref)
    _assert_kkt(A.T @ A, A.T @ y, x, 1e-8)


@pytest.mark.parametrize("seed", [0, 1])
def test_rank_deficient_exact_fit(seed):
    A, y = _problem(seed, 150, 450)  # D < n: exact fit, dense minimisers
    _, f_ref = _reference(A, y)
    for solver in SOLVERS:
        x = _solve(solver, A, y)
        _assert_valid(x, 450)
        _assert_objective(A, y, x, f_ref)
        assert (x > 0).sum() <= 150, "a basic solution: support within the rank"


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
    _assert_objective(A, y, incremental_nnls(G, b, start=range(40)), f_ref)
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
    # the incremental solver: the same column enters, then leaves with weight zero
    inc = Incremental(G2, b2)
    inc.add(0)
    inc.add(1)
    assert inc.support == [0]
    assert inc.x().tolist() == pytest.approx([1.0, 0.0])


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
    lh.factor.view(0, 0, k, k)[...] *= 1.0 + 1e-3  # as if updates had drifted
    lh.factor.stale = True
    lh._refresh_u()
    lh.inner(None)
    assert lh.run()
    x = lh.result()
    _assert_valid(x, 120)
    _assert_objective(A, y, x, f_ref)


def test_zero_rhs_and_fortran_order():
    A, y = _problem(21, 40, 15)
    G = A.T @ A
    np.testing.assert_array_equal(nnls_gram(G, np.zeros(15)), 0.0)
    np.testing.assert_array_equal(incremental_nnls(G, np.zeros(15)), 0.0)
    b = A.T @ y
    np.testing.assert_allclose(nnls_gram(np.asfortranarray(G), b), nnls_gram(G, b))


def test_input_validation():
    with pytest.raises(ValueError):
        nnls_gram(np.eye(3), np.ones(2))
    with pytest.raises(ValueError):
        nnls_gram(np.eye(3), np.ones(3), x0=np.ones(2))
    with pytest.raises(ValueError):
        nnls_gram(np.full((2, 2), np.nan), np.ones(2))
    with pytest.raises(ValueError):
        nnls_gram(np.eye(2), np.ones((2, 1)))


@pytest.mark.parametrize("shape,seed", [((40, 300), 0), ((300, 120), 1), ((64, 900), 2)])
def test_float32_gram_gives_the_float64_answer(shape, seed):
    """A float32 Gram matrix (what the pursuits' refits may hold: half the memory) is read
    exactly: the solution equals, bit for bit, the one from the same values in float64,
    including wide problems whose passive set outgrows half the columns (the dual then
    comes from G itself, read in blocks) and dependent columns (copies).

    How far its fit may be from the rows' optimum follows from the rounding of G alone, on
    any CPU and BLAS kernel. Let E = G32 - A^T A (exact in float64: G32's entries are
    float32 numbers). With f(x) = ||Ax - y||^2 and f32(x) = f(x) + x^T E x, x32 minimises
    f32 and ref (scipy on the rows) minimises f over x >= 0, so

        f(x32) = f32(x32) - x32^T E x32 <= f32(ref) - x32^T E x32
               = f(ref) + ref^T E ref - x32^T E x32.

    E depends on the kernel's summation order (Haswell's kernel put the 40 x 300 fit at
    1.7e-3 of ||y||, Sandybridge's at 2.8e-5: an exact fit whose weights cancel), the bound
    computed from the same E does not. Slack: the float64 solve's own rounding, 1e-9
    ||y||^2 (its optimality conditions hold to ~1e-12 of ||y||^2 here)."""
    rng = np.random.default_rng(seed)
    m, n = shape
    A = rng.standard_normal((m, n)).astype(np.float32)
    A[:, 5] = A[:, 3]  # an exact copy: the pivoted rebuild's path
    y = rng.standard_normal(m)
    G32 = A.T @ A
    b = A.T.astype(np.float64) @ y
    x32 = nnls_gram(G32, b)
    x64 = nnls_gram(G32.astype(np.float64), b)
    assert G32.dtype == np.float32
    np.testing.assert_array_equal(x32, x64)
    A64 = A.astype(np.float64)
    ref = scipy_nnls(A64, y)[0]  # independent: scipy on the rows
    E = G32.astype(np.float64) - A64.T @ A64
    f32, f_ref = np.sum((A64 @ x32 - y) ** 2), np.sum((A64 @ ref - y) ** 2)
    assert f32 <= f_ref + ref @ E @ ref - x32 @ E @ x32 + 1e-9 * (y @ y)


@pytest.mark.parametrize("k,d", [(300, 512), (1500, 256)])
def test_fit_rows_matches_scipy_nnls_on_the_rows(k, d):
    """The fit every LESS, random and OMP selection reports (float32 rows, float64
    products): its residual is scipy's NNLS residual on the same rows; with more rows than
    dimensions the target lies in their cone and both fit it exactly (seen: 6e-15 here;
    a fit from a float32 Gram matrix stopped near 1e-6)."""
    import torch

    from gradstore.selectors.omp import fit_rows

    rng = np.random.default_rng(7)
    A = rng.standard_normal((k, d)).astype(np.float32)
    y = rng.standard_normal(d)
    W, res = fit_rows(torch.from_numpy(A), y)
    A64 = A.astype(np.float64)
    ref = scipy_nnls(A64.T, y)[0]
    expected = np.linalg.norm(A64.T @ ref - y) / np.linalg.norm(y)
    assert W.shape == (k, 1) and (W >= 0).all()
    if k < d:
        assert expected > 0.1
        assert res == pytest.approx(expected, rel=1e-6)
    else:
        assert expected < 1e-12 and res < 1e-10
    assert res == pytest.approx(np.linalg.norm(A64.T @ W[:, 0] - y) / np.linalg.norm(y),
                                rel=1e-9)


@pytest.mark.parametrize("n,d,working,nonneg", [(300, 400, 64, False), (600, 60, 32, True),
                                                (3000, 200, 256, True)])
def test_fit_rows_on_working_sets_is_scipy_nnls(n, d, working, nonneg):
    """More rows than ``working``: the fit on working sets (never an n x n Gram matrix) is
    the direct fit's and scipy's NNLS on the rows, weights to 1e-6 (the unique solution:
    fewer rows than dimensions, or non-negative rows and a target outside their cone)."""
    import torch

    from gradstore.selectors.omp import fit_rows

    rng = np.random.default_rng(n)
    A = rng.standard_normal((n, d)).astype(np.float32)
    A = np.abs(A) if nonneg else A
    y = rng.standard_normal(d)
    W, res = fit_rows(torch.from_numpy(A), y, working=working)
    direct, res_direct = fit_rows(torch.from_numpy(A), y)
    ref, rnorm = scipy_nnls(A.astype(np.float64).T, y)
    assert (W >= 0).all() and 0 < (W > 0).sum() < n
    # seen here: <= 4e-16 apart (float64 products); a missed violating row moves
    # weights by ~1e-1, so 1e-5 leaves room for another CPU's summation order
    np.testing.assert_allclose(W[:, 0], ref, atol=1e-5)
    np.testing.assert_allclose(W, direct, atol=1e-5)
    assert res == pytest.approx(rnorm / np.linalg.norm(y), rel=1e-8)
    assert res == pytest.approx(res_direct, rel=1e-8)


@pytest.mark.parametrize("seed", range(5))
def test_fit_rows_with_more_rows_than_dimensions_reaches_the_exact_fit(seed):
    """300 float32 rows in 40 dimensions and a target in their cone: scipy fits it exactly
    (~1e-15), and so does the fit (seen: 6e-16 to 1.3e-15). A fit from float32 products
    stopped at their rounding (3e-7 to 1.1e-6), and before its tolerance matched that
    precision it added columns on rounding noise and ended at 0.046."""
    import torch

    from gradstore.selectors.omp import fit_rows

    rng = np.random.default_rng(seed)
    A = rng.standard_normal((300, 40)).astype(np.float32)
    y = rng.standard_normal(40) + 0.5 * A[:7].astype(np.float64).sum(0)
    W, res = fit_rows(torch.from_numpy(A), y)
    assert scipy_nnls(A.astype(np.float64).T, y)[1] < 1e-10 * np.linalg.norm(y)
    assert (W >= 0).all() and res < 1e-10, res


@pytest.mark.parametrize("n,d", [(40, 120), (300, 40), (500, 64)])
def test_nnls_rows_is_the_nnls_of_the_rows_float64_gram(n, d):
    """``nnls_rows`` (the fits' solver: G's entries computed from float32 rows when
    needed) solves the problem of the rows' float64 Gram matrix: scipy's NNLS objective
    on the rows and ``nnls_gram`` of ``A A^T`` formed in float64; with duplicated and zero
    rows and a target in the rows' cone (n > d: scipy fits it exactly)."""
    from gradstore.selectors.nnls import nnls_rows

    rng = np.random.default_rng(n + d)
    A = rng.standard_normal((n, d)).astype(np.float32)
    A[5] = A[3]
    A[7] = 0.0
    A64 = A.astype(np.float64)
    y = rng.standard_normal(d) + (0.5 * A64[:9].sum(0) if n > d else 0.0)
    b = A64 @ y
    x = nnls_rows(A, b)
    _assert_valid(x, n)
    assert x[7] == 0.0
    ref, f_ref = _reference(A64.T, y)
    _assert_objective(A64.T, y, x, f_ref)
    live = np.arange(n) != 7  # the zero row has no scaled dual
    _assert_kkt(A64[live] @ A64[live].T, b[live], x[live], 1e-8)
    np.testing.assert_allclose(A64.T @ x, A64.T @ nnls_gram(A64 @ A64.T, b), atol=1e-6)


def test_nnls_rows_holds_no_square_matrix_of_the_rows():
    """3000 rows of 64 dims: the solver's arrays stay under 4 MB (traced numpy
    allocations; the rows' Gram matrix alone is 36 MB in float32), and the fit every LESS
    and random selection reports (``fit_rows``) holds no more: the factor of at most 64
    passive rows, blocks of 256 rows in float64, one batch of G's rows."""
    import tracemalloc

    import torch

    from gradstore.selectors.nnls import nnls_rows
    from gradstore.selectors.omp import fit_rows

    rng = np.random.default_rng(3)
    A = rng.standard_normal((3000, 64)).astype(np.float32)
    y = rng.standard_normal(64) + A[:20].astype(np.float64).sum(0)
    b = A.astype(np.float64) @ y
    tracemalloc.start()
    try:
        x = nnls_rows(A, b, tol=1e-6)
        solver_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        W, res = fit_rows(torch.from_numpy(A), y)
        fit_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert solver_peak < 4 * 2**20 and fit_peak < 4 * 2**20, (solver_peak, fit_peak)
    assert 0 < (x > 0).sum() <= 64 and res < 1e-5
    assert np.linalg.norm(A.astype(np.float64).T @ x - y) < 1e-5 * np.linalg.norm(y)

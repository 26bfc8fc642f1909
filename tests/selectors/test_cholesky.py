"""The band-stored Cholesky factor of the NNLS active set (``gradstore.selectors.cholesky``)
against ``scipy.linalg.cholesky`` of the same columns, after random sequences of appends
and deletions, in float64.

Tolerances come from the problem, on the diagonally scaled matrix
``G_s = D^{-1/2} G D^{-1/2}`` (``D = diag G``; the factor of ``G_s`` is ``R D^{-1/2}``):

* backward error: one Cholesky factorisation of an ``m x m`` matrix gives
  ``|R^T R - G| <= gamma_{m+1} |R^T| |R|`` entrywise (Higham, Accuracy and Stability of
  Numerical Algorithms, 2nd ed., Thm 10.3), with ``gamma_j = j eps / (1 - j eps)``; the
  columns of ``R`` have norms ``sqrt(G_jj)``, so every entry of the scaled error is at
  most ``gamma_{m+1}``. Each deletion's update is a refactorisation of the trailing part
  with the same kind of rounding, so after ``d`` deletions the allowance is
  ``(1 + d) gamma_{m+1}``.
* forward error against scipy's factor: first-order perturbation theory for Cholesky
  (Higham Thm 10.8) bounds ``||dR||_F / ||R||_2`` by ``kappa_2(G_s) ||dG||_F / ||G_s||_2``;
  both factors' backward errors count (``m`` entries a row, each within its allowance).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from gradstore.selectors.cholesky import (
    DELETE_BLOCK,
    MIN_CAPACITY,
    BandCholesky,
    factor_independent,
)

EPS = float(np.finfo(np.float64).eps)
DEP_TOL = 1e-12  # the tolerance the NNLS solver refuses dependent columns with


def _gamma(j: int) -> float:
    return j * EPS / (1.0 - j * EPS)


def _assert_factor_of(factor: BandCholesky, G: np.ndarray, cols: list[int], deletions: int,
                      against_scipy: bool = True) -> None:
    """``factor`` is the Cholesky factor of ``G[cols, cols]``: backward error within the
    allowance, and (``against_scipy``) the same factor as scipy's within the perturbation
    bound."""
    m = len(cols)
    assert factor.k == m
    assert m <= factor.cap <= factor.limit
    R = factor.upper()
    Gp = G[np.ix_(cols, cols)]
    d = np.sqrt(np.diagonal(Gp))
    Gs = Gp / np.outer(d, d)
    Rs = R / d[None, :]
    back_tol = (1 + deletions) * _gamma(m + 1)
    back = np.abs(Rs.T @ Rs - Gs).max()
    assert back <= back_tol, (back, back_tol)
    assert (np.diagonal(R) > 0).all()
    if not against_scipy:
        return
    ref = scipy.linalg.cholesky(Gp, lower=False) / d[None, :]
    eig = np.linalg.eigvalsh(Gs)
    norm_g, kappa = eig[-1], eig[-1] / eig[0]
    fwd_tol = kappa * m * (back_tol + _gamma(m + 1)) * np.sqrt(norm_g) / norm_g
    fwd = np.linalg.norm(Rs - ref)
    assert fwd <= fwd_tol, (fwd, fwd_tol)


def _assert_solves(factor: BandCholesky, rng: np.random.Generator) -> None:
    """Both triangular solves against scipy's ``solve_triangular`` on the same ``R``: the
    residual of each is within ``gamma_m`` of ``|R| |x|`` (backward stability of
    substitution, Higham Thm 8.5)."""
    R = factor.upper()
    m = len(R)
    rhs = rng.standard_normal(m)
    for solve, trans in ((factor.solve, 0), (factor.solve_transposed, 1)):
        x = solve(rhs.copy())
        M = R if trans == 0 else R.T
        resid = np.abs(M @ x - rhs)
        assert (resid <= 2 * _gamma(m) * (np.abs(M) @ np.abs(x)) + EPS * np.abs(rhs)).all()
        ref = scipy.linalg.solve_triangular(R, rhs, trans=trans, lower=False)
        kappa = np.linalg.cond(R)
        assert np.linalg.norm(x - ref) <= 2 * kappa * _gamma(m) * np.linalg.norm(ref)


def _gram(rng: np.random.Generator, n: int, collinear: bool) -> np.ndarray:
    """``A^T A`` of a full-rank ``A`` with columns of very different norms; with
    ``collinear``, some columns are near copies of others (scaled condition ~1e6)."""
    A = rng.standard_normal((n + 60, n)) * np.logspace(0, 3, n)[rng.permutation(n)]
    if collinear:
        for i in range(0, n // 4, 5):
            A[:, n - 1 - i] = A[:, i] * 2.0 + 1e-3 * np.linalg.norm(A[:, i]) / np.sqrt(
                len(A)) * rng.standard_normal(len(A))
    return A.T @ A


def _add(factor: BandCholesky, G: np.ndarray, cols: list[int], j: int) -> None:
    added = factor.add_column(G[cols, j], float(G[j, j]), DEP_TOL)
    assert added is not None
    cols.append(j)


@pytest.mark.parametrize("seed,rank_bound,collinear", [
    (0, None, False), (1, 40, False), (2, None, True), (3, 150, True),
])
def test_random_appends_and_deletions_match_scipy(seed, rank_bound, collinear):
    """Grow past ``DELETE_BLOCK`` columns (deletions near the front then update the trailing
    part in several blocks), then append and delete at random positions; after every
    step the factor's backward error is within its allowance, and every few steps it is
    scipy's factor of the columns held, in their order."""
    rng = np.random.default_rng(seed)
    n = DELETE_BLOCK + 60
    G = _gram(rng, n, collinear)
    factor = BandCholesky(n, rank_bound)
    cols: list[int] = []
    deletions = 0
    order = rng.permutation(n)
    for j in order[: DELETE_BLOCK + 20]:
        _add(factor, G, cols, int(j))
    _assert_factor_of(factor, G, cols, deletions)
    for step in range(160):
        outside = np.setdiff1d(np.arange(n), cols)
        if cols and (rng.random() < 0.5 or not outside.size):
            # the front, the end or anywhere
            pos = [0, len(cols) - 1, int(rng.integers(len(cols)))][step % 3]
            was_stale = factor.stale
            factor.delete(pos)
            interior = pos < len(cols) - 1
            assert factor.stale == (was_stale or interior)
            deletions += interior
            cols.pop(pos)
        else:
            _add(factor, G, cols, int(rng.choice(outside)))
        if cols:
            _assert_factor_of(factor, G, cols, deletions, against_scipy=step % 8 == 0)
    _assert_factor_of(factor, G, cols, deletions)
    _assert_solves(factor, rng)


def test_delete_to_empty_and_grow_again():
    rng = np.random.default_rng(5)
    G = _gram(rng, 50, False)
    factor = BandCholesky(50)
    cols: list[int] = []
    for j in range(50):
        _add(factor, G, cols, j)
    assert factor.cap == 50  # doubling stops at the limit
    deletions = 0
    while cols:
        pos = int(rng.integers(len(cols)))
        deletions += pos < len(cols) - 1
        factor.delete(pos)
        cols.pop(pos)
        if cols:
            _assert_factor_of(factor, G, cols, deletions, against_scipy=len(cols) % 5 == 0)
    assert factor.k == 0
    assert len(factor.solve(np.zeros(0))) == 0 and len(factor.solve_transposed(np.zeros(0))) == 0
    for j in rng.permutation(50)[:20]:
        _add(factor, G, cols, int(j))
    _assert_factor_of(factor, G, cols, deletions)


def test_dependent_column_is_refused_without_change():
    rng = np.random.default_rng(6)
    B = rng.standard_normal((30, 8))
    A = np.column_stack([B, B[:, :3] @ np.array([1.0, -2.0, 0.5])])  # column 8 = mix of 0..2
    G = A.T @ A
    factor = BandCholesky(9)
    cols: list[int] = []
    for j in range(8):
        _add(factor, G, cols, j)
    before = factor.upper().copy()
    assert factor.add_column(G[cols, 8], float(G[8, 8]), DEP_TOL) is None
    assert factor.k == 8
    np.testing.assert_array_equal(factor.upper(), before)
    # a column independent of the current ones is accepted: the Schur complement of
    # column 8 against columns 3..7 only is far from zero
    for pos in (2, 1, 0):
        factor.delete(pos)
        cols.pop(pos)
    r = factor.add_column(G[cols, 8], float(G[8, 8]), DEP_TOL)
    assert r is not None
    cols.append(8)
    _assert_factor_of(factor, G, cols, 3)
    # the returned column is the last column of R
    np.testing.assert_array_equal(factor.upper()[:, -1], np.append(r[0], r[1]))


@pytest.mark.parametrize("m,limit", [(10, 10), (20, 64), (MIN_CAPACITY + 5, 200)])
def test_load_reads_only_the_upper_triangle(m, limit):
    """A loaded factor (also when it fills the whole storage: below-diagonal entries then
    share places with entries of later columns) is held exactly, solves like scipy, and
    is no longer stale; garbage below the diagonal is ignored."""
    rng = np.random.default_rng(m)
    G = _gram(rng, m, False)
    R = scipy.linalg.cholesky(G, lower=False)
    factor = BandCholesky(limit)
    for j in range(3):
        factor.add_column(G[list(range(j)), j], float(G[j, j]), DEP_TOL)
    factor.delete(0)
    assert factor.stale
    noisy = R + np.tril(rng.standard_normal((m, m)), -1)
    factor.load(noisy)
    assert not factor.stale
    assert factor.k == m
    np.testing.assert_array_equal(factor.upper(), R)
    _assert_solves(factor, rng)
    # appends and deletions carry on from a loaded factor
    cols = list(range(m))
    factor.delete(m // 2)
    cols.pop(m // 2)
    _assert_factor_of(factor, G, cols, 1)


def _independent_columns_of(S: np.ndarray) -> int:
    return int(np.linalg.matrix_rank(S, tol=np.sqrt(DEP_TOL)))


def test_factor_independent_full_rank_is_plain_cholesky():
    rng = np.random.default_rng(7)
    G = _gram(rng, 40, True)
    d = np.sqrt(np.diagonal(G))
    S = G / np.outer(d, d)
    calls = []

    def make():
        calls.append(1)
        return np.asfortranarray(S)

    order, R = factor_independent(make, DEP_TOL)
    assert len(calls) == 1
    np.testing.assert_array_equal(order, np.arange(40))
    ref = scipy.linalg.cholesky(S, lower=False)
    m = 40
    kappa = np.linalg.cond(S)
    assert np.linalg.norm(np.triu(R) - ref) <= kappa * m * 2 * _gamma(m + 1) / np.sqrt(
        np.linalg.norm(S, 2))


@pytest.mark.parametrize("seed", [8, 9])
def test_factor_independent_drops_dependent_columns(seed):
    """On a rank-deficient matrix plain Cholesky fails; the pivoted one keeps as many
    columns as the rank (numpy's SVD rank), their factor has a small backward error, and
    every dropped column is in the span of the kept ones (least squares residual)."""
    rng = np.random.default_rng(seed)
    B = rng.standard_normal((60, 12))
    A = np.column_stack([B, B @ rng.standard_normal((12, 8))])[:, rng.permutation(20)]
    A /= np.linalg.norm(A, axis=0)
    S = A.T @ A
    rank = _independent_columns_of(S)
    assert rank == 12
    assert factor_independent(lambda: np.asfortranarray(S), DEP_TOL, pivot=False) is None
    order, R = factor_independent(lambda: np.asfortranarray(S), DEP_TOL)
    assert len(order) == rank and len(set(order.tolist())) == rank
    back = np.abs(R.T @ R - S[np.ix_(order, order)]).max()
    # pivoted Cholesky is backward stable on the kept block like the plain one
    assert back <= 2 * _gamma(20 + 1)
    dropped = np.setdiff1d(np.arange(20), order)
    kept = A[:, order]
    for j in dropped:
        coef, *_ = np.linalg.lstsq(kept, A[:, j], rcond=None)
        resid = np.linalg.norm(kept @ coef - A[:, j])
        assert resid <= np.sqrt(DEP_TOL)  # dependent to the factor's tolerance

"""The NNLS solver's access to a Gram matrix (``gradstore.selectors.gram_access``) against
the same quantities computed directly in numpy float64.

Tolerances: a float64 dot product of length ``m`` is within ``gamma_m |u|^T |v|`` of the
exact one (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., eq. 3.5),
``gamma_m = m eps / (1 - m eps)``; the reference carries the same error, hence ``2 gamma``.
Entries read without arithmetic are compared exactly.
"""

from __future__ import annotations

import numpy as np
import pytest

from gradstore.selectors.gram_access import (
    GRAM_BLOCK,
    ROWS_BLOCK,
    DenseGram,
    PassiveRows,
    RowGram,
    gram_times,
    scaled_block,
)

EPS = float(np.finfo(np.float64).eps)


def _gamma(m: int) -> float:
    return m * EPS / (1.0 - m * EPS)


def _assert_products(got: np.ndarray, want: np.ndarray, bound: np.ndarray, m: int) -> None:
    """``got`` and ``want`` are two float64 evaluations of products of length ``m`` whose
    absolute terms sum to ``bound``."""
    assert got.shape == want.shape
    assert got.dtype == np.float64
    assert (np.abs(got - want) <= 2 * _gamma(m) * bound).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dense_gram_matches_numpy(dtype):
    rng = np.random.default_rng(0)
    n = GRAM_BLOCK + 70  # times() reads a float32 G in two blocks of rows
    A = rng.standard_normal((40, n)) * np.logspace(-2, 2, n)
    G = (A.T @ A).astype(dtype)
    G64 = G.astype(np.float64)  # the values held, in float64
    gram = DenseGram(G)
    assert gram.rank_bound == n
    np.testing.assert_array_equal(gram.diag, np.diagonal(G64))
    idx = rng.permutation(n)[:50]
    np.testing.assert_array_equal(gram.entries(7, idx), G64[7, idx])
    assert gram.entries(7, idx).dtype == np.float64
    np.testing.assert_array_equal(gram.row(3), G[3])
    np.testing.assert_array_equal(gram.rows(idx), G[idx])
    np.testing.assert_array_equal(gram.block(idx), G64[np.ix_(idx, idx)])
    x = np.where(rng.random(n) < 0.3, rng.random(n), 0.0)
    _assert_products(gram.times(x), G64 @ x, np.abs(G64) @ np.abs(x), n)
    _assert_products(gram_times(G, x), G64 @ x, np.abs(G64) @ np.abs(x), n)
    scale = rng.uniform(0.5, 2.0, len(idx))
    want = G64[np.ix_(idx, idx)] / np.outer(scale, scale)
    # two divisions, each correctly rounded: within 2 eps relative
    np.testing.assert_allclose(scaled_block(gram, idx, scale), want, rtol=2 * EPS, atol=0)


@pytest.mark.parametrize("keep_float64", [False, True])
def test_row_gram_matches_numpy(keep_float64):
    """``G = A A^T`` from float32 rows: every entry the float64 product of two rows, over
    several ``ROWS_BLOCK`` blocks of rows."""
    rng = np.random.default_rng(1)
    n, D = 2 * ROWS_BLOCK + 30, 48
    A = (rng.standard_normal((n, D)) * np.logspace(-1, 1, n)[:, None]).astype(np.float32)
    A64 = A.astype(np.float64)
    G = A64 @ A64.T
    bound = np.abs(A64) @ np.abs(A64).T
    gram = RowGram(A, keep_float64)
    assert gram.rank_bound == D
    assert not gram.holds_rows
    _assert_products(gram.diag, np.diagonal(G), np.diagonal(bound), D)
    idx = rng.permutation(n)[: ROWS_BLOCK + 9]
    _assert_products(gram.entries(5, idx), G[5, idx], bound[5, idx], D)
    blk = gram.block(idx)
    assert blk.flags.f_contiguous
    _assert_products(blk, G[np.ix_(idx, idx)], bound[np.ix_(idx, idx)], D)
    # prefetched rows answer the same entries
    gram.prefetch(idx[:5])
    for j in idx[:5]:
        _assert_products(gram.entries(int(j), idx), G[j, idx], bound[j, idx], D)
    # G x as A (A^T x): the bound of the two products in turn
    x = np.where(rng.random(n) < 0.4, rng.random(n), 0.0)
    got = gram.times(x)
    v_bound = np.abs(A64).T @ np.abs(x)
    _assert_products(got, G @ x, np.abs(A64) @ v_bound + bound @ np.abs(x), n + D)


def _dense_problem(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n + 10, n))
    return A.T @ A, A.T @ rng.standard_normal(n + 10)


def _assert_rows_of(cache: PassiveRows, G: np.ndarray, cols: list[int]) -> None:
    """Slots ``0..k-1`` hold exactly the rows of ``cols`` (in some order), and each
    column knows its slot."""
    k = len(cols)
    assert sorted(cache.idx[:k].tolist()) == sorted(cols)
    for s in range(k):
        j = cache.idx[s]
        assert cache.slot[j] == s
        np.testing.assert_array_equal(cache.rows[s], G[j])


def test_passive_rows_follow_adds_removals_and_loads():
    """Random adds and removals (removal moves the last slot's row into the freed one) and
    a reload, against a list of the passive columns; the dual is ``b - G[:, P] x_P``."""
    n = 80
    G, b = _dense_problem(n, 2)
    rng = np.random.default_rng(3)
    cache = PassiveRows(DenseGram(G))
    assert cache.held
    cols: list[int] = []
    for _ in range(150):
        outside = np.setdiff1d(np.arange(n), cols)
        if cols and (rng.random() < 0.45 or len(cols) >= n // 2):
            j = int(rng.choice(cols))
            cache.remove(j, len(cols) - 1)
            assert cache.slot[j] == -1
            cols.remove(j)
        else:
            j = int(rng.choice(outside))
            cache.fit(len(cols) + 1, len(cols))
            cache.add(j, len(cols))
            cols.append(j)
        _assert_rows_of(cache, G, cols)
        x = np.zeros(n)
        x[cols] = rng.random(len(cols))
        want = b - G[:, cols] @ x[cols]
        bound = np.abs(b) + np.abs(G[:, cols]) @ np.abs(x[cols])
        _assert_products(cache.dual(b, x, len(cols)), want, bound, len(cols) + 1)
    cache.forget(np.array(cols, dtype=np.intp))
    new = rng.permutation(n)[:30]
    cache.fit(30, 0)
    cache.load(new)
    _assert_rows_of(cache, G, new.tolist())
    assert cache.held


def test_passive_rows_are_dropped_past_half_and_never_held_for_row_grams():
    n = 60
    G, b = _dense_problem(n, 4)
    x = np.zeros(n)
    x[:5] = 1.0
    cache = PassiveRows(DenseGram(G))
    cache.fit(n // 2, 0)
    assert cache.held and len(cache.rows) == n // 2
    for j in range(5):
        cache.add(j, j)
    cache.fit(n // 2 + 1, 5)
    assert not cache.held
    # the dual now comes from G x, the same value to rounding
    bound = np.abs(b) + np.abs(G) @ np.abs(x)
    _assert_products(cache.dual(b, x, 5), b - G @ x, bound, n + 1)
    np.testing.assert_array_equal(cache.dual(b, x, 0), b)
    A = np.random.default_rng(5).standard_normal((n, 20)).astype(np.float32)
    rows_cache = PassiveRows(RowGram(A))
    assert not rows_cache.held
    rows_cache.fit(4, 0)
    rows_cache.add(1, 0)  # nothing to hold
    assert not rows_cache.held

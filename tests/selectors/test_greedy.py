"""The incremental NNLS and the greedy/swap support updates, against scipy and brute force."""

import numpy as np
import scipy.optimize

from gradstore.selectors.greedy import IncrementalNNLS, greedy_nnls_gram, swap_refine


def test_incremental_nnls_equals_scipy_at_every_step():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((40, 30))
    A[:, 5] = A[:, 2] * 0.999 + 0.001 * A[:, 7]  # nearly dependent column
    y = A[:, :6] @ rng.uniform(0.5, 1.5, 6) + 0.3 * rng.standard_normal(40)
    G, b = A.T @ A, A.T @ y
    s = IncrementalNNLS(4)  # forces growth of the buffers
    support: list[int] = []
    for j in range(30):
        added, removed = s.add(G[support, j] if support else np.zeros(0), G[j, j], b[j])
        if added:
            support.append(j)
        for pos in sorted(removed, reverse=True):
            support.pop(pos)
        if not support:
            continue
        ref, _ = scipy.optimize.nnls(A[:, support], y)
        # every weight kept is > 0 and equals scipy's NNLS over the kept columns
        assert np.all(s.weights > 0)
        np.testing.assert_allclose(s.weights, ref, rtol=1e-6, atol=1e-9)
        assert abs(s.fit - b[support] @ ref) < 1e-6 * max(1, abs(s.fit))


def test_remove_and_removal_costs():
    rng = np.random.default_rng(1)
    A = rng.standard_normal((50, 8))
    y = A @ rng.uniform(1, 2, 8)
    G, b = A.T @ A, A.T @ y
    s = IncrementalNNLS(8)
    for j in range(8):
        s.add(G[:j, j], G[j, j], b[j])
    costs = s.removal_costs()
    base = np.sum((A @ s.weights - y) ** 2)
    for i in range(8):
        keep = [c for c in range(8) if c != i]
        w = np.linalg.lstsq(A[:, keep], y, rcond=None)[0]
        np.testing.assert_allclose(np.sum((A[:, keep] @ w - y) ** 2) - base, costs[i], rtol=1e-6)
    i = int(np.argmin(costs))
    s.remove(i)
    keep = [c for c in range(8) if c != i]
    ref, _ = scipy.optimize.nnls(A[:, keep], y)
    np.testing.assert_allclose(s.weights, ref[ref > 0], rtol=1e-6)


def test_greedy_warm_start_matches_cold_continuation():
    rng = np.random.default_rng(2)
    A = rng.standard_normal((60, 25))
    y = np.abs(rng.standard_normal(60))
    G, B = A.T @ A, (A.T @ y)[:, None]
    cold = greedy_nnls_gram(G, B, float(y @ y), 10)
    first = greedy_nnls_gram(G, B, float(y @ y), 4)
    # put the first pass's support first, then continue from it
    order = np.concatenate([first.support, np.setdiff1d(np.arange(25), first.support)])
    warm = greedy_nnls_gram(G[np.ix_(order, order)], B[order], float(y @ y), 10,
                            init=len(first.support), solver=first.solver)
    assert order[warm.support].tolist() == cold.support.tolist()
    np.testing.assert_allclose(warm.weights, cold.weights, rtol=1e-8)


def swap_by_hand(A, y, support, k, swaps):
    """swap_refine's documented rule with scipy: add the column most correlated with the
    residual (NNLS refit, zero weights dropped, a column tried once) until k + swaps are in,
    then drop the column whose removal raises the least-squares residual least until k."""
    S, tried = list(support), set(support)
    while len(S) < k + swaps:
        w, _ = scipy.optimize.nnls(A[:, S], y)
        c = A.T @ (y - A[:, S] @ w)
        c[list(tried)] = -np.inf
        j = int(np.argmax(c))
        tried.add(j)
        S.append(j)
        w, _ = scipy.optimize.nnls(A[:, S], y)
        S = [s for s, v in zip(S, w, strict=True) if v > 0]

    def rise(i):
        rest = S[:i] + S[i + 1:]
        coef, *_ = np.linalg.lstsq(A[:, rest], y, rcond=None)
        return float(np.sum((A[:, rest] @ coef - y) ** 2))

    while len(S) > k:
        S.pop(int(np.argmin([rise(i) for i in range(len(S))])))
    return S


def test_swap_refine_follows_its_rule_and_keeps_k():
    rng = np.random.default_rng(3)
    A = rng.standard_normal((30, 60))
    y = A[:, :12] @ rng.uniform(0.5, 1.0, 12)
    G, B = A.T @ A, (A.T @ y)[:, None]
    yy = float(y @ y)
    # a deliberately poor start: the greedy over the last 40 columns only
    start = greedy_nnls_gram(G[20:, 20:], B[20:], yy, 8)
    assert len(start.support) == 8
    order = np.concatenate([20 + start.support, np.setdiff1d(np.arange(60), 20 + start.support)])
    res = swap_refine(G[np.ix_(order, order)], B[order], yy, 8, start.solver, swaps=4)
    assert len(res.support) == 8
    assert sorted(order[res.support].tolist()) == sorted(
        int(j) for j in swap_by_hand(A, y, (20 + start.support).tolist(), 8, 4))
    assert res.residual_sq < 0.5 * start.residual_sq  # measured: 171.2 -> 29.9
    ref, rnorm = scipy.optimize.nnls(A[:, order[res.support]], y)
    np.testing.assert_allclose(res.residual_sq, rnorm**2, rtol=1e-6, atol=1e-9)

"""LESS scores against the formula written out in numpy; scans against brute force."""

import numpy as np
import torch

from gradstore.selectors.less import less_topk
from gradstore.selectors.random_subset import random_subset
from gradstore.selectors.scan import MAXIMUM, ScanQuery, correlation_scan
from gradstore.selectors.source import TensorSource
from gradstore.selectors.stacked import StackedPool


def less_formula(G, Tg, labels, lrs):
    """score_i = max_s mean_{j in s} sum_t eta_t cos(g_i^t, g_j^t), by plain loops."""
    eta = np.asarray(lrs) / np.sum(lrs)
    N, T, _ = G.shape
    scores = np.full(N, -np.inf)
    for s in sorted(set(labels)):
        members = [j for j, lab in enumerate(labels) if lab == s]
        for i in range(N):
            total = 0.0
            for j in members:
                for t in range(T):
                    a, b = G[i, t], Tg[j, t]
                    total += eta[t] * a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
            scores[i] = max(scores[i], total / len(members))
    return scores


def test_less_scores_equal_formula():
    rng = np.random.default_rng(0)
    N, T, d = 120, 3, 16
    G = rng.standard_normal((N, T, d)) * rng.uniform(0.1, 10, (N, T, 1))
    Tg = rng.standard_normal((9, T, d))
    labels = ["a", "b", "c"] * 3
    lrs = [2e-5, 1e-5, 5e-6]
    expected = less_formula(G, Tg, labels, lrs)
    pool = StackedPool(TensorSource(G.reshape(N, -1).astype(np.float32), T), eta=lrs)
    tgt = StackedPool(TensorSource(Tg.reshape(9, -1).astype(np.float32), T), eta=lrs)
    rows = tgt.rows(np.arange(9)).double().numpy()
    lab = np.array(labels)
    Y = np.stack([rows[lab == s].mean(0) for s in "abc"], 1)
    ((idx, scores),) = less_topk(pool, [Y], [N])
    got = np.empty(N)
    got[idx] = scores
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    ((top, _),) = less_topk(pool, [Y], [10])
    assert set(top.tolist()) == set(np.argsort(-expected)[:10].tolist())


def test_scan_matches_brute_force_with_exclusion_and_many_queries():
    rng = np.random.default_rng(1)
    N, T, d = 3000, 2, 32
    X = rng.standard_normal((N, T * d)).astype(np.float16)
    pool = StackedPool(TensorSource(torch.from_numpy(X), T), eta=[1.0, 3.0])
    A = pool.rows(np.arange(N)).double().numpy()
    R = rng.standard_normal((T * d, 4))
    excl = rng.choice(N, 100, replace=False)
    queries = [ScanQuery(slice(0, 1), 50, exclude=excl), ScanQuery(slice(1, 3), 70),
               ScanQuery(slice(3, 4), 30, reduce=MAXIMUM)]
    found = correlation_scan(pool, R, queries)
    C = A @ R
    s0 = C[:, 0].copy()
    s0[excl] = -np.inf
    s1 = np.clip(C[:, 1:3], 0, None).sum(1)
    s2 = C[:, 3]
    for (rows, vals), s, m in zip(found, [s0, s1, s2], [50, 70, 30], strict=True):
        expect = np.argsort(-s, kind="stable")[:m]
        assert rows.tolist() == expect.tolist()
        np.testing.assert_allclose(vals, s[expect], rtol=1e-4, atol=1e-4)
    assert not set(found[0][0].tolist()) & set(excl.tolist())


def test_positive_only_scan_returns_fewer_when_few_positive():
    X = np.eye(4, dtype=np.float32)
    pool = StackedPool(TensorSource(X, 1), normalize=False)
    ((rows, vals),) = correlation_scan(pool, np.array([1.0, -1, 0, 2]), [ScanQuery(slice(0, 1), 4)])
    assert rows.tolist() == [3, 0] and np.all(vals > 0)


def test_random_subset_seeded():
    a = random_subset(1000, 50, seed=3)
    assert a.tolist() == random_subset(1000, 50, seed=3).tolist()
    assert a.tolist() != random_subset(1000, 50, seed=4).tolist()
    assert len(set(a.tolist())) == 50


def test_block_scores_of_a_streamed_block_equal_the_block_in_ram():
    """A block's correlations, given as one (b, T*d) tensor (a pool in RAM) or as its T
    checkpoints' arrays (streamed), are ((block * mult) @ R) in float64 to float32
    precision, and the two agree to 1e-6 (seen here: equal), for one column of R (one
    checkpoint at a time) and for more than ``PER_CHECKPOINT_COLUMNS`` (one product)."""
    from gradstore.selectors.scan import PER_CHECKPOINT_COLUMNS, _block_scores

    rng = np.random.default_rng(5)
    b, T, d = 37, 3, 40
    block = torch.from_numpy(rng.standard_normal((b, T * d)).astype(np.float16))
    parts = [block[:, t * d : (t + 1) * d].contiguous() for t in range(T)]
    mult = torch.from_numpy(rng.uniform(0.2, 3.0, (b, T)).astype(np.float32))
    for C in (1, PER_CHECKPOINT_COLUMNS + 2):
        R = torch.from_numpy(rng.standard_normal((T * d, C)).astype(np.float32))
        expected = ((block.double().view(b, T, d) * mult.double()[:, :, None]).view(b, -1)
                    @ R.double()).numpy()
        in_ram = _block_scores(block, mult, R, torch.empty(64, T * d)).numpy()
        streamed = _block_scores(parts, mult, R, torch.empty(64, T * d)).numpy()
        np.testing.assert_allclose(in_ram, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
        np.testing.assert_allclose(streamed, in_ram, rtol=1e-6, atol=1e-6 * np.abs(in_ram).max())

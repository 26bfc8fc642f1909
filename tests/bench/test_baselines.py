"""The benchmark's baselines (``benchmarks/e2e/baselines.py``) against gradstore's own LESS,
brute force on tiny instances, and direct formulas."""

from __future__ import annotations

import itertools

import baselines
import numpy as np
import pytest

import gradstore
from gradstore.selectors import clusters


def unit(X):
    return X / np.linalg.norm(X, axis=1, keepdims=True)


@pytest.fixture
def store(tmp_path):
    rng = np.random.default_rng(0)
    st = gradstore.open(tmp_path / "store")
    n, d = 60, 16
    pool = rng.normal(size=(2, n, d)).astype(np.float32)
    target = rng.normal(size=(2, 5, d)).astype(np.float32)
    for t, lr in ((0, 3e-4), (1, 1e-4)):
        st.import_vectors("pool", pool[t], checkpoint=f"c{t}", ids=[f"p{i}" for i in range(n)],
                          lr=lr, vector_dtype="float32")
        st.import_vectors("target", target[t], checkpoint=f"c{t}",
                          ids=[f"t{i}" for i in range(5)], lr=lr, kind="target",
                          vector_dtype="float32")
    return st, pool, target


def test_less_space_is_the_formula(store):
    st, pool, _ = store
    ids, A = baselines.less_space(st, "pool")
    assert ids[:2] == ["p0", "p1"] and A.shape == (60, 32)
    eta = np.array([3e-4, 1e-4]) / 4e-4
    want = np.concatenate([unit(pool[t].astype(np.float64)) * np.sqrt(eta[t])
                           for t in range(2)], axis=1)
    np.testing.assert_allclose(A, want, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(A, axis=1), 1.0, rtol=1e-9)


def test_round_robin_over_one_cluster_is_gradstores_less(store):
    st, _, _ = store
    ids, P = baselines.less_space(st, "pool")
    _, T = baselines.less_space(st, "target", like="pool")
    picks = baselines.round_robin(P, T, np.zeros(len(T), dtype=int), 12)
    sel = st.select("pool", target="target", budget=12, method="less", save=False)
    assert [ids[i] for i in picks] == sel.ids


def test_round_robin_alternates_between_clusters():
    P = np.eye(6)
    T = np.array([[3, 2, 1, 0, 0, 0], [0, 0, 0, 1, 2, 3.0]])
    picks = baselines.round_robin(P, T, np.array([0, 1]), 5)
    assert picks == [0, 5, 1, 4, 2]


def test_a_row_two_clusters_rank_first_is_taken_once():
    P = np.eye(4)
    T = np.array([[3, 2, 0, 1.0], [3, 0, 2, 1.0]])
    assert baselines.round_robin(P, T, np.array([0, 1]), 4) == [0, 2, 1, 3]


def test_kmeans_finds_the_best_partition_by_brute_force():
    rng = np.random.default_rng(1)
    U = unit(rng.normal(size=(7, 3)))

    def fit(labels):
        total = 0.0
        for c in set(labels):
            m = U[np.asarray(labels) == c].sum(0)
            total += float(np.linalg.norm(m))  # sum of cosines to the normalised mean
        return total

    best = max(fit(p) for p in itertools.product([0, 1], repeat=7) if len(set(p)) == 2)
    labels, got = clusters.kmeans(U, 2)
    assert got == pytest.approx(best) and fit(labels.tolist()) == pytest.approx(best)


def test_silhouette_against_the_definition():
    U = unit(np.array([[1, 0.1], [1, 0.2], [0.1, 1], [0.2, 1], [0.15, 1]]))
    labels = np.array([0, 0, 1, 1, 1])
    D = 1 - U @ U.T
    s = []
    for i in range(5):
        own = [j for j in range(5) if labels[j] == labels[i] and j != i]
        other = [j for j in range(5) if labels[j] != labels[i]]
        a, b = np.mean(D[i, own]), np.mean(D[i, other])
        s.append((b - a) / max(a, b))
    assert clusters.silhouette(U, labels) == pytest.approx(np.mean(s))


def test_target_clusters_recover_planted_groups_and_keep_noise_whole():
    rng = np.random.default_rng(2)
    centres = unit(rng.normal(size=(3, 64)))
    sizes = [10, 6, 4]
    T = np.concatenate([c + 0.2 * rng.normal(size=(n, 64)) / 8 for c, n in zip(
        centres, sizes, strict=True)])
    labels = clusters.target_clusters(T)
    assert np.bincount(labels).tolist() == sizes  # the largest first
    assert len(set(labels[:10])) == len(set(labels[10:16])) == len(set(labels[16:])) == 1
    noise = rng.normal(size=(20, 512))
    assert clusters.target_clusters(noise).tolist() == [0] * 20


def test_dedup_skips_near_copies_of_kept_rows():
    rng = np.random.default_rng(3)
    base = unit(rng.normal(size=(5, 32)))
    P = unit(np.concatenate([base, base[[0, 0, 2]] + 1e-3 * rng.normal(size=(3, 32))]))
    y = P[[0, 2, 4]].sum(0)
    order = baselines.ranking(P, y).tolist()
    kept = baselines.dedup_top(P, y, 4, 0.95)
    want = []  # brute force: walk the ranking, keep what is not a near-copy of a kept row
    for i in order:
        if all(P[i] @ P[j] < 0.95 for j in want):
            want.append(i)
    assert kept == want[:4]
    family = {0: 0, 5: 0, 6: 0, 2: 2, 7: 2, 1: 1, 3: 3, 4: 4}
    assert len({family[i] for i in kept}) == 4  # one row per family of copies
    assert len(baselines.dedup_top(P, y, 8, 0.95)) == 5  # the pool runs out of originals


def test_oracle_takes_originals_in_shares():
    rows = [{"id": f"{s}{i}", "skill": s, "dup_of": None} for s in "abc" for i in range(5)]
    rows.insert(0, {"id": "a-copy", "skill": "a", "dup_of": "a0"})
    got = baselines.oracle(rows, {"a": 0.6, "b": 0.3, "c": 0.1}, 6)
    assert got == ["a0", "a1", "a2", "b0", "b1", "c0"]  # 3.6/1.8/0.6: largest remainders

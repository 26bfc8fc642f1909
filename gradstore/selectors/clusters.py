"""Clusters of a target's rows, for targets that mix kinds of example without saying so
(``--target-mode clusters``): spherical k-means on the stacked rows, the number of
clusters by silhouette. Each cluster then counts as a subtask (``joint``): its mean is one
target column, and every column weighs the same."""

from __future__ import annotations

import numpy as np

MAX_CLUSTERS = 4
MIN_SILHOUETTE = 0.1
"""Below this mean silhouette the rows count as one cluster."""


def kmeans(U: np.ndarray, c: int, seed: int = 0, restarts: int = 10,
           iters: int = 100) -> tuple[np.ndarray, float]:
    """Spherical k-means of unit rows ``U`` into ``c`` clusters: labels and the best
    restart's total cosine to the centres (k-means++ starts, seeded)."""
    rng = np.random.default_rng(seed)
    best, best_fit = np.zeros(len(U), dtype=int), -np.inf
    for _ in range(restarts):
        centres = [U[rng.integers(len(U))]]
        for _ in range(1, c):
            d = np.clip(1.0 - np.max(U @ np.asarray(centres).T, axis=1), 0, None)
            p = d / d.sum() if d.sum() > 0 else np.full(len(U), 1 / len(U))
            centres.append(U[rng.choice(len(U), p=p)])
        C = np.asarray(centres)
        labels = np.full(len(U), -1)
        for _ in range(iters):
            new = np.argmax(U @ C.T, axis=1)
            if np.array_equal(new, labels):
                break
            labels = new
            for j in range(c):
                members = U[labels == j]
                if len(members):
                    m = members.sum(0)
                    C[j] = m / np.linalg.norm(m)
        fit = float(np.sum(np.max(U @ C.T, axis=1)))
        if fit > best_fit:
            best, best_fit = labels.copy(), fit
    return best, best_fit


def silhouette(U: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette of unit rows under cosine distance (0 for a single cluster)."""
    if len(set(labels.tolist())) < 2:
        return 0.0
    D = 1.0 - U @ U.T
    scores = []
    for i in range(len(U)):
        own = labels == labels[i]
        if own.sum() == 1:
            scores.append(0.0)
            continue
        a = D[i, own].sum() / (own.sum() - 1)
        b = min(D[i, labels == c].mean() for c in set(labels.tolist()) if c != labels[i])
        scores.append((b - a) / max(a, b) if max(a, b) > 0 else 0.0)
    return float(np.mean(scores))


def target_clusters(T: np.ndarray) -> np.ndarray:
    """Cluster labels of the target's rows, 0..c-1 with cluster 0 the largest: the c in
    2..MAX_CLUSTERS with the best silhouette, or one cluster if none reaches
    MIN_SILHOUETTE."""
    U = T / np.maximum(np.linalg.norm(T, axis=1, keepdims=True), 1e-30)
    best, best_score = np.zeros(len(T), dtype=int), MIN_SILHOUETTE
    for c in range(2, min(MAX_CLUSTERS, len(T) - 1) + 1):
        labels, _ = kmeans(U, c)
        score = silhouette(U, labels)
        if score > best_score:
            best, best_score = labels, score
    sizes = np.bincount(best)
    order = sorted(range(len(sizes)), key=lambda j: (-sizes[j], j))
    return np.asarray([order.index(x) for x in best])

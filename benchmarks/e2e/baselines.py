"""The selections a careful user would try instead of GTP, where gradstore has no method
for them: computed on the store's own vectors, in LESS's space.

* ``less-rr``, **LESS round-robin over clusters of the target's rows** (no labels): the
  target's rows are clustered (``gradstore.selectors.clusters``: spherical k-means, the
  number of clusters by silhouette),
  each cluster ranks the pool by LESS's score against its own mean, and the clusters take
  turns picking their best row not yet taken.
* ``less-dedup``, **LESS with near-duplicate filtering**: LESS's ranking, skipping every
  row whose cosine to a row already kept is at least a threshold (SemDeDup-style, on the
  same gradient features).
* ``oracle``: the pool's own rows of the target's skills, in the target's shares (the
  labels the selectors never see; originals only, in pool order).

LESS's space: each checkpoint's block of a row scaled to unit length and by
``sqrt(eta_t / sum(eta))``, so that ``<a_i, a_j> = sum_t eta_t cos(g_i^t, g_j^t) /
sum(eta)`` and every row has length 1; LESS's score of a pool row is its inner product
with the mean of the target's (SGD) rows (``gradstore select --method less`` ranks by the
same score; the tiny benchmark checks that round-robin over one cluster equals it).
"""

from __future__ import annotations

import make_pool
import numpy as np


def less_space(store, table: str, grad_type: str | None = None,
               like: str | None = None) -> tuple[list[str], np.ndarray]:
    """``(ids, A)``: the table's rows in LESS's space, with the checkpoint weights of
    ``like`` (the pool) or the table's own."""
    ids, X = store.vectors(table, None, grad_type)
    lrs = store.meta(like or table).lrs
    t = len(lrs)
    eta = np.asarray([1.0 if lr is None else lr for lr in lrs], dtype=np.float64)
    blocks = X.astype(np.float64).reshape(len(ids), t, -1)
    norms = np.linalg.norm(blocks, axis=2, keepdims=True)
    blocks = blocks / np.where(norms > 0, norms, 1.0)
    blocks *= np.sqrt(eta / eta.sum())[None, :, None]
    return ids, blocks.reshape(len(ids), -1)


def ranking(P: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pool rows by LESS score against ``y``, best first (ties by position)."""
    return np.argsort(-(P @ y), kind="stable")


def round_robin(P: np.ndarray, T: np.ndarray, labels: np.ndarray, k: int) -> list[int]:
    """``k`` pool rows: the clusters (largest first) take turns picking their best row by
    LESS score against the cluster's mean that is not taken yet."""
    ranks = [ranking(P, T[labels == c].mean(0)) for c in range(int(labels.max()) + 1)]
    at = [0] * len(ranks)
    taken: set[int] = set()
    out: list[int] = []
    while len(out) < min(k, len(P)):
        for c, order in enumerate(ranks):
            if len(out) == k:
                break
            while order[at[c]] in taken:
                at[c] += 1
            i = int(order[at[c]])
            taken.add(i)
            out.append(i)
    return out


def dedup_top(P: np.ndarray, y: np.ndarray, k: int, cosine: float) -> list[int]:
    """LESS's top ``k``, skipping rows at cosine >= ``cosine`` to a row already kept (rows
    of LESS's space have unit length); fewer than k if the pool runs out."""
    kept: list[int] = []
    for i in ranking(P, y):
        if kept and float(np.max(P[kept] @ P[i])) >= cosine:
            continue
        kept.append(int(i))
        if len(kept) == k:
            break
    return kept


def oracle(rows: list[dict], shares: dict[str, float], k: int) -> list[str]:
    """Ids of the first original rows (``dup_of`` empty) of each skill, in pool order, in
    ``shares`` of ``k``."""
    out = []
    for skill, n in make_pool.shares(k, shares).items():
        mine = [r["id"] for r in rows if r["skill"] == skill and r.get("dup_of") is None]
        out += mine[:n]
    return out

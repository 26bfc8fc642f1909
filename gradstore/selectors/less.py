"""LESS top-k (Xia et al. 2024): score each pool example alone, keep the k best.

score_i = max over subtasks s of mean_{j in s} sum_t eta_t cos(g_i^t, g_j^t),
with eta_t the checkpoint learning rates normalised to sum 1. In the stacked
space (unit rows, s_t = sqrt(eta_t)) this is max_s <a_i, y_s> where y_s is the
mean stacked row of subtask s, so one scan over the pool answers it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from gradstore.selectors.quotas import Quota, QuotaCounts
from gradstore.selectors.scan import MAXIMUM, ScanQuery
from gradstore.selectors.stacked import StackedPool


def less_topk(
    pool: StackedPool,
    Ys: list[np.ndarray],
    ks: list[int],
    *,
    scan_progress: Callable[[int], None] | None = None,
    exclude: np.ndarray | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Top-k rows and their LESS scores for each (Y (D, S), k), in one scan, never a row
    of ``exclude``.

    ``pool`` must be normalised (LESS scores are cosines).
    """
    if not pool.normalize:
        raise ValueError("LESS scores are cosines: build the StackedPool with normalize=True")
    cols = [np.asarray(Y, dtype=np.float64).reshape(pool.width, -1) for Y in Ys]
    R = np.concatenate(cols, 1)
    queries, start = [], 0
    for Y, k in zip(cols, ks, strict=True):
        queries.append(ScanQuery(slice(start, start + Y.shape[1]), k, reduce=MAXIMUM,
                                 exclude=exclude))
        start += Y.shape[1]
    return pool.scan(R, queries, progress=scan_progress)



def less_within_quotas(
    pool: StackedPool,
    Y: np.ndarray,
    k: int,
    quotas: list[Quota],
    *,
    fixed: np.ndarray | None = None,
    scan_progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """LESS's k - len(fixed) best rows that the quotas allow (``--max-share``), counting the
    ``fixed`` rows first: rows in score order, each taken unless one of its groups is full.
    The scan looks 2k deep, then twice as deep until the caps are met or the pool is
    exhausted (a quota that cannot fill k gives fewer rows)."""
    fixed = np.zeros(0, dtype=np.int64) if fixed is None else fixed
    depth = min(pool.num_rows, 2 * k)
    while True:
        ((order, _),) = less_topk(pool, [Y], [depth], scan_progress=scan_progress,
                                  exclude=fixed if len(fixed) else None)
        taken = QuotaCounts(quotas, fixed).take(order, k - len(fixed))
        if len(taken) + len(fixed) >= k or depth >= pool.num_rows - len(fixed):
            return np.asarray(taken, dtype=np.int64)
        depth = min(pool.num_rows, 2 * depth)

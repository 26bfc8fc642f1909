"""Neighbours: for each target row, the pool rows most aligned with it, or the reverse.

The space is LESS's: each checkpoint's row scaled to unit length, the checkpoints weighted
by their learning rates (``score = sum_t eta_t cos(g_pool^t, g_target^t)`` with ``eta``
summing to 1, the score LESS ranks by for a single target row). Every target row's
neighbours come from one pass over the pool (one scan column per target row), in RAM or
streamed, so a large pool is read once whatever the number of target rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gradstore.errors import GradstoreError
from gradstore.ops.export import pool_records, row_text
from gradstore.ops.query import checkpoint_weights
from gradstore.ops.select import SourceCache, check_complete, pool_source, target_vectors
from gradstore.selectors.scan import MAXIMUM, ScanQuery
from gradstore.selectors.stacked import StackedPool
from gradstore.store.database import Database


@dataclass
class Neighbor:
    """One (target row, pool row) pair and its score; ``rank`` 1 is the closest."""

    target_id: str
    pool_id: str
    score: float
    rank: int
    text: str | None = None
    """The pool row as a person reads it (from its data file), when the file is known."""


def neighbors(db: Database, pool: str, target: str, k: int = 5, *, row: str | None = None,
              of: str | None = None, mode: str = "auto", memory_budget: int | None = None,
              cache: SourceCache | None = None, data: str | None = None) -> list[Neighbor]:
    """The ``k`` pool rows closest to each target row (``row``: that target row only), in
    target-row order then rank; ``of``: the reverse, the ``k`` target rows closest to that
    pool row. Each pool row's text comes from ``data`` (default: the file the pool was
    ingested from; none for a pool of imported vectors)."""
    found = _neighbors(db, pool, target, k, row, of, mode, memory_budget, cache)
    if of is None:
        try:
            records = pool_records(db, pool, list(dict.fromkeys(n.pool_id for n in found)),
                                   data)
        except GradstoreError:
            if data is not None:
                raise
            records = {}
        for n in found:
            if n.pool_id in records:
                n.text = row_text(records[n.pool_id].fields)
    return found


def _neighbors(db: Database, pool: str, target: str, k: int, row: str | None,
               of: str | None, mode: str, memory_budget: int | None,
               cache: SourceCache | None) -> list[Neighbor]:
    if k < 1:
        raise GradstoreError(f"--k {k} must be at least 1")
    if row is not None and of is not None:
        raise GradstoreError("give --row (a target row) or --of (a pool row), not both")
    pmeta = db.meta(pool)
    check_complete(pool, pmeta)
    spool = StackedPool(pool_source(db, pool, mode, memory_budget, cache or SourceCache()),
                        checkpoint_weights(pmeta, None), normalize=True)
    X, _ = target_vectors(db, pool, pmeta, target, "less")
    tids = db.ids(target)
    if of is not None:
        return _reverse(db, pool, spool, spool.target_rows(X), tids, of, k)
    if row is not None:
        if row not in tids:
            raise GradstoreError(f"row {row!r} is not in target {target!r} "
                                 f"(its first ids: {tids[:3]})")
        X, tids = X[[tids.index(row)]], [row]
    R = spool.target_rows(X).T  # (D, n): a scan column per target row
    found = spool.scan(R, [ScanQuery(slice(j, j + 1), min(k, spool.num_rows), reduce=MAXIMUM)
                           for j in range(R.shape[1])])
    out = []
    for tid, (rows, scores) in zip(tids, found, strict=True):
        ids = db.ids_at(pool, rows)
        out += [Neighbor(tid, pid, float(s), r + 1)
                for r, (pid, s) in enumerate(zip(ids, scores, strict=True))]
    return out


def _reverse(db: Database, pool: str, spool: StackedPool, T: np.ndarray, tids: list[str],
             of: str, k: int) -> list[Neighbor]:
    """The target rows ``T`` (n, D) closest to pool row ``of``."""
    pos = db.positions_of(pool, [of])
    if len(pos) == 0:
        raise GradstoreError(f"row {of!r} is not in pool {pool!r}")
    a = spool.rows(pos).double().numpy()[0]
    scores = T @ a
    order = np.argsort(-scores, kind="stable")[:k]
    return [Neighbor(tids[j], of, float(scores[j]), r + 1) for r, j in enumerate(order)]

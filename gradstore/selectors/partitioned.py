"""Partitioned GTP, the paper's distributed form: the pursuit with budget k on each of
P parts of the pool, then once more on the union of the parts' selections (at most P*k
candidates).

Each part is an independent pursuit over its own rows, so the parts can run anywhere
a part of the pool can be read (``StackedPool.map_parts``: in turn here, as parallel
Ray tasks for a distributed pool). The final pursuit reads only the union's rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np

from gradstore.selectors.gtp_paper import gtp_paper
from gradstore.selectors.query import PursuitResult, Query
from gradstore.selectors.stacked import StackedPool


def part_bounds(num_rows: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous (start, stop) row ranges of near-equal size (none empty)."""
    if parts < 1:
        raise ValueError(f"partitions must be at least 1, got {parts}")
    parts = max(1, min(parts, num_rows))
    edges = np.linspace(0, num_rows, parts + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


Pursuit = Callable[..., list[PursuitResult]]


def within(q: Query, rows: np.ndarray, k: int) -> Query:
    """``q`` over the pool rows ``rows`` (sorted) only, with budget ``k``: its fixed and
    excluded rows among them, at their places there; its caps over their codes, holding
    its fixed rows that are not among them."""
    def local(which: np.ndarray) -> np.ndarray:
        at = np.searchsorted(rows, which)
        inside = (at < len(rows)) & (rows[np.minimum(at, len(rows) - 1)] == which)
        return at[inside].astype(np.int64)

    outside = np.setdiff1d(q.fixed, rows)
    quotas = tuple(c.holding(outside).restricted(rows) for c in q.quotas)
    return Query(q.Y, k, q.m, q.tolerance, exclude=local(q.exclude), fixed=local(q.fixed),
                 quotas=quotas)


def part_candidates(
    part: StackedPool, queries: Sequence[Query], pursuit: Pursuit, options: dict[str, Any]
) -> list[np.ndarray]:
    """Each query's selection (row positions within ``part``) with its full budget k (at
    most the part's size); ``queries`` are already over the part's rows (:func:`within`)."""
    return [r.rows for r in pursuit(part, list(queries), **options)]


def partitioned_gtp(
    pool: StackedPool,
    queries: Sequence[Query],
    partitions: int,
    *,
    pursuit: Pursuit = gtp_paper,
    part_progress: Callable[[int], None] | None = None,
    **options: Any,
) -> list[PursuitResult]:
    """A pursuit (GTP) on each of ``partitions`` parts, then on the union of their
    selections.

    Parameters
    ----------
    pool : StackedPool
        The N candidate rows a_i (width D).
    queries : sequence of Query
        Targets Y (D, C) with budgets k; every part keeps up to k per query.
    partitions : int
        P, the number of contiguous parts (at most N).
    part_progress : callable, optional
        Called with a part's row count as each part finishes.
    pursuit : callable
        ``gtp_paper`` (the paper's distributed form) or ``gtp``.
    **options
        Passed to the pursuit for the parts and the final run.

    Returns
    -------
    list of PursuitResult
        Per query, rows are positions in ``pool``; ``candidates`` is the union's size.
    """
    bounds = part_bounds(pool.num_rows, partitions)
    asked = [[within(q, np.arange(a, b), min(q.k, b - a)) for q in queries] for a, b in bounds]
    per_part = pool.map_parts(partial(part_candidates, pursuit=pursuit, options=options),
                              bounds, on_done=part_progress, per_part=asked)
    results = []
    for j, q in enumerate(queries):
        chosen = [rows[j] + start for rows, (start, _) in zip(per_part, bounds, strict=True)]
        union = np.unique(np.concatenate([q.fixed, *chosen])).astype(np.int64)
        if len(union) == 0:
            C = q.Y.shape[1]
            res = 0.0 if q.yy == 0 else 1.0
            results.append(PursuitResult(union, np.zeros((0, C)), res, [res], candidates=0))
            continue
        final = pursuit(pool.subset(union), [within(q, union, min(q.k, len(union)))],
                        **options)[0]
        results.append(
            PursuitResult(
                rows=union[final.rows], weights=final.weights, residual=final.residual,
                history=final.history, scans=final.scans, seconds_fit=final.seconds_fit,
                seconds_scan=final.seconds_scan, candidates=len(union), details=final.details,
            )
        )
    return results

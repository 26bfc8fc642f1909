"""Orthogonal matching pursuit with non-negative refits (GradMatch's OMP).

One correlation scan of the whole pool per selected example (shared by all
queries that are still growing), an O(p^2) warm-started NNLS update per step
(``IncrementalNNLS``), and the residual kept explicitly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from gradstore.selectors.greedy import (
    IncrementalNNLS,
    combine64,
    dot64,
    one_thread,
    polish,
    squares64,
)
from gradstore.selectors.nnls import nnls_rows
from gradstore.selectors.pursuit import Found, PursuitState, Wanted, run_pursuit
from gradstore.selectors.query import PursuitResult, Query, relative_residual
from gradstore.selectors.quotas import QuotaCounts
from gradstore.selectors.scan import ScanQuery
from gradstore.selectors.stacked import StackedPool


class _OmpState(PursuitState):
    """One query's pursuit: its support in order, the support's rows and products with
    the target, the NNLS weights (incremental for one target column) and the residual."""

    def __init__(self, q: Query, pool: StackedPool, rel_tol: float) -> None:
        if len(q.fixed):
            raise ValueError("fixed rows (--extend) are a gtp pursuit's; give the others "
                             "the kept rows' residual as their target")
        super().__init__(q, 1, done=q.yy == 0 or q.k == 0)
        self.pool = pool
        self.rel_tol = rel_tol
        C = q.Y.shape[1]
        self.order: list[int] = []
        self.banned: list[int] = []
        self.AS = np.zeros((max(q.k, 1), pool.width), dtype=np.float32)
        self.B = np.zeros((max(q.k, 1), C))
        self.W = np.zeros((0, C))
        self.solver = IncrementalNNLS(min(q.k, 256) + 1) if C == 1 else None
        self.R = q.Y.copy()

    def wanted(self) -> Wanted:
        """The row most correlated with the residual, among rows never tried."""
        excl = np.asarray(self.banned, dtype=np.int64)
        if self.query.quotas:  # rows of a group the support has filled cannot join
            excl = np.union1d(excl, QuotaCounts(self.query.quotas, self.order).blocked())
        return Wanted(self.R, [ScanQuery(slice(0, self.R.shape[1]), 1, exclude=excl)])

    def step(self, found: Found) -> None:
        ((cand, _),) = found
        if not len(cand):
            self.done = True
            return
        a = self.pool.rows(cand[:1]).numpy()[0]
        with one_thread():
            self.add(int(cand[0]), a)

    def add(self, row: int, a: np.ndarray) -> None:
        p = len(self.order)
        Y = self.query.Y
        b = a.astype(np.float64) @ Y  # (C,)
        with self.timed("seconds_nnls"):
            if self.solver is not None:
                g = self.AS[:p].astype(np.float64) @ a.astype(np.float64)
                gamma = float(a.astype(np.float64) @ a.astype(np.float64))
                added, removed = self.solver.add(g, gamma, float(b[0]))
                self.banned.append(row)
                if not added:
                    return
                self.order.append(row)
                self.AS[p] = a
                self.B[p] = b
                if removed:
                    keep = np.setdiff1d(np.arange(p + 1), removed)
                    self.order = [self.order[i] for i in keep]
                    self.AS[: len(keep)] = self.AS[keep]
                    self.B[: len(keep)] = self.B[keep]
                self.W = self.solver.weights.reshape(-1, 1)
            else:
                self.banned.append(row)
                self.order.append(row)
                self.AS[p] = a
                self.B[p] = b
                AS = self.AS[: p + 1].astype(np.float64)
                W0 = np.vstack([self.W, np.zeros((1, Y.shape[1]))])
                W = polish(AS @ AS.T, self.B[: p + 1], np.arange(p + 1), W0)
                alive = np.flatnonzero(W.sum(1) > 0)
                self.order = [self.order[i] for i in alive]
                self.AS[: len(alive)] = self.AS[alive]
                self.B[: len(alive)] = self.B[alive]
                self.W = W[alive]
        n = len(self.order)
        self.R = Y - self.AS[:n].T.astype(np.float64) @ self.W
        res = float(np.linalg.norm(self.R)) / np.sqrt(self.query.yy)
        if n >= self.query.k or res <= self.rel_tol:
            self.done = True

    def answer(self) -> tuple[np.ndarray, np.ndarray, float]:
        n = len(self.order)
        q = self.query
        residual = relative_residual(self.AS[:n], self.W, q.Y) if q.yy > 0 else 0.0
        return np.asarray(self.order, dtype=np.int64), self.W, residual


def omp(
    pool: StackedPool,
    queries: Sequence[Query],
    *,
    rel_tol: float = 1e-6,
    progress: Callable[[int], None] | None = None,
    scan_progress: Callable[[int], None] | None = None,
) -> list[PursuitResult]:
    """Greedy selection, one example per scan, with NNLS weights (all queries in lockstep)."""
    states = [_OmpState(q, pool, rel_tol) for q in queries]
    return run_pursuit(pool, states, scan_progress=scan_progress,
                       after=None if progress is None else lambda _, live: progress(len(live)))


def fit_support(pool: StackedPool, rows: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, float]:
    """Best non-negative weights (n, C) on a fixed support and the relative residual."""
    if len(rows) == 0:
        Y = np.asarray(Y)
        return np.zeros((0, 1 if Y.ndim == 1 else Y.shape[1])), 1.0
    return fit_rows(pool.rows(rows), Y)


FIT_WORKING_SET = 4096
"""Most rows a fit solves on at once. The solver (:func:`nnls_rows`) holds the rows and
the factor of its passive set, never their n x n Gram matrix, but each batch of entering
rows costs a pass over all of them; a larger support is fitted on a working set of its
rows, grown by the rows that violate the optimality conditions until none does (the same
solution)."""
FIT_TOL = 1e-10
"""Relative dual tolerance of a fit (and the bar of its working sets: a row outside whose
scaled dual exceeds this share of the largest scaled correlation joins the set). A fit
from a float32 Gram matrix needed 1e-6, its products' rounding: on a rank-deficient fit
(more rows than dimensions, a target inside their cone) a tighter bar kept adding columns
on rounding noise (residual 0.046 with 44 passive columns of rank 40). From float64
products of the rows (:func:`nnls_rows`) 1e-10 is reached: 2,000 rows in 1,024 dims, a
target in their cone, 4.8e-14 instead of 2.1e-6 at 1e-6, in the same time."""
WORKING_SET_ROUNDS = 50
"""Most working sets tried; each adds every violating row it has room for."""


def fit_rows(A: torch.Tensor, Y: np.ndarray, working: int = FIT_WORKING_SET
             ) -> tuple[np.ndarray, float]:
    """:func:`fit_support` on rows already read: ``A`` (n, D) in the stacked space; more
    than ``working`` rows are fitted on working sets (:func:`working_set_nnls`)."""
    Y = np.asarray(Y, dtype=np.float64)
    Y = Y[:, None] if Y.ndim == 1 else Y
    if A.shape[0] <= working:
        W = np.stack([nnls_rows(A.numpy(), dot64(A, y), tol=FIT_TOL) for y in Y.T], 1)
    else:
        W = np.stack([working_set_nnls(A, y, working) for y in Y.T], 1)
    return W, relative_residual(A.numpy(), W, Y)


def working_set_nnls(A: torch.Tensor, y: np.ndarray, working: int) -> np.ndarray:
    """``argmin ||A^T x - y||, x >= 0`` over many rows, holding the Gram matrix of at most
    about ``working`` of them: solve on a working set (the rows most correlated with ``y``
    first), compute the dual ``A (y - A_W^T x_W)`` of every row, keep the set's support
    and add the most violating rows; stop when no row outside violates. Each round lowers
    the objective (a violating row is a descent direction), so it ends at the solution."""
    b = dot64(A, y)
    length = np.sqrt(squares64(A))
    length = np.where(length > 0, length, np.inf)
    bar = FIT_TOL * float(np.max(np.abs(b) / length))
    if bar == 0.0:
        return np.zeros(len(A))
    ws = np.sort(np.argsort(-b / length, kind="stable")[: max(1, working // 2)])
    x = np.zeros(len(A))
    for _ in range(WORKING_SET_ROUNDS):
        Aw = A.index_select(0, torch.from_numpy(ws))
        xw = nnls_rows(Aw.numpy(), b[ws], x0=x[ws], tol=FIT_TOL,
                       keep_float64=True)  # W D 8 bytes: what a float32 Gram of W held
        x[:] = 0.0
        x[ws] = xw
        kept = ws[xw > 0]
        dual = (b - dot64(A, combine64(Aw, xw))) / length
        dual[ws] = -np.inf
        violators = np.flatnonzero(dual > bar)
        if len(violators) == 0:
            return x
        room = max(working - len(kept), working // 4)
        add = violators[np.argsort(-dual[violators], kind="stable")[:room]]
        ws = np.union1d(kept, add)
    return x

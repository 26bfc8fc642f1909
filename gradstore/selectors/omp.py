"""Orthogonal matching pursuit with non-negative refits (GradMatch's OMP).

One correlation scan of the whole pool per selected example (shared by all
queries that are still growing), an O(p^2) warm-started NNLS update per step
(``IncrementalNNLS``), and the residual kept explicitly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from gradstore.selectors.greedy import IncrementalNNLS, dot64, one_thread, polish
from gradstore.selectors.query import PursuitResult, Query, relative_residual
from gradstore.selectors.scan import ScanQuery
from gradstore.selectors.stacked import StackedPool


class _OmpState:
    def __init__(self, q: Query, width: int) -> None:
        self.q = q
        C = q.Y.shape[1]
        self.order: list[int] = []
        self.banned: list[int] = []
        self.AS = np.zeros((max(q.k, 1), width), dtype=np.float32)
        self.B = np.zeros((max(q.k, 1), C))
        self.W = np.zeros((0, C))
        self.solver = IncrementalNNLS(min(q.k, 256) + 1) if C == 1 else None
        self.R = q.Y.copy()
        self.done = q.yy == 0 or q.k == 0
        self.seconds_nnls = 0.0

    def add(self, row: int, a: np.ndarray, rel_tol: float) -> None:
        p = len(self.order)
        Y = self.q.Y
        b = a.astype(np.float64) @ Y  # (C,)
        t0 = time.perf_counter()
        if self.solver is not None:
            g = self.AS[:p].astype(np.float64) @ a.astype(np.float64)
            gamma = float(a.astype(np.float64) @ a.astype(np.float64))
            added, removed = self.solver.add(g, gamma, float(b[0]))
            self.banned.append(row)
            if not added:
                self.seconds_nnls += time.perf_counter() - t0
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
        self.seconds_nnls += time.perf_counter() - t0
        n = len(self.order)
        self.R = Y - self.AS[:n].T.astype(np.float64) @ self.W
        res = float(np.linalg.norm(self.R)) / np.sqrt(self.q.yy)
        if n >= self.q.k or res <= rel_tol:
            self.done = True


def omp(
    pool: StackedPool,
    queries: Sequence[Query],
    *,
    rel_tol: float = 1e-6,
    progress: Callable[[int], None] | None = None,
    scan_progress: Callable[[int], None] | None = None,
) -> list[PursuitResult]:
    """Greedy selection, one example per scan, with NNLS weights (all queries in lockstep)."""
    states = [_OmpState(q, pool.width) for q in queries]
    scans = 0
    scan_seconds = 0.0
    while True:
        active = [st for st in states if not st.done]
        if not active:
            break
        R = np.concatenate([st.R for st in active], 1)
        scan_q, col = [], 0
        for st in active:
            C = st.R.shape[1]
            excl = np.asarray(st.banned, dtype=np.int64)
            scan_q.append(ScanQuery(slice(col, col + C), 1, exclude=excl))
            col += C
        t0 = time.perf_counter()
        found = pool.scan(R, scan_q, progress=scan_progress)
        scan_seconds += time.perf_counter() - t0
        scans += 1
        picked = [(st, int(c[0])) for st, (c, _) in zip(active, found, strict=True) if len(c)]
        for st, (c, _) in zip(active, found, strict=True):
            if not len(c):
                st.done = True
        if picked:
            rows = np.array([r for _, r in picked], dtype=np.int64)
            A = pool.rows(rows).numpy()
            with one_thread():
                for (st, r), a in zip(picked, A, strict=True):
                    st.add(r, a, rel_tol)
        if progress is not None:
            progress(len(active))
    out = []
    for st in states:
        n = len(st.order)
        AS = st.AS[:n]
        out.append(
            PursuitResult(
                rows=np.asarray(st.order, dtype=np.int64),
                weights=st.W,
                residual=relative_residual(AS, st.W, st.q.Y) if st.q.yy > 0 else 0.0,
                scans=scans,
                seconds_nnls=st.seconds_nnls,
                seconds_scan=scan_seconds,
            )
        )
    return out


FIT_BLOCK = 256
"""Rows of a fit's Gram matrix computed at a time."""


def fit_support(pool: StackedPool, rows: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, float]:
    """Best non-negative weights (n, C) on a fixed support and the relative residual."""
    if len(rows) == 0:
        Y = np.asarray(Y)
        return np.zeros((0, 1 if Y.ndim == 1 else Y.shape[1])), 1.0
    return fit_rows(pool.rows(rows), Y)


def fit_rows(A: torch.Tensor, Y: np.ndarray) -> tuple[np.ndarray, float]:
    """:func:`fit_support` on rows already read: ``A`` (n, D) in the stacked space."""
    Y = np.asarray(Y, dtype=np.float64)
    Y = Y[:, None] if Y.ndim == 1 else Y
    # float32: the products are float32 already, and nnls_gram reads them exactly
    G = np.empty((A.shape[0], A.shape[0]), dtype=np.float32)
    for s in range(0, A.shape[0], FIT_BLOCK):
        G[s : s + FIT_BLOCK] = (A[s : s + FIT_BLOCK] @ A.T).numpy()
    B = np.stack([dot64(A, y) for y in Y.T], 1)
    W = polish(G, B, np.arange(A.shape[0]))
    return W, relative_residual(A.numpy(), W, Y)

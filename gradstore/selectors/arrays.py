"""The selectors on plain arrays, in the style of ``sklearn.linear_model.orthogonal_mp``:

    rows, weights, residual = gtp(X, T, k)

``X`` (N, T*d) holds the pool's stored rows (every checkpoint's projected gradient side
by side), ``T`` (n, T*d) the target's; no target (``None``) is in-domain selection. The
rows are mapped into the stacked space exactly as ``gradstore select`` maps a store's
tables (per-checkpoint unit norm, checkpoint weights ``eta``, the pool-centred space for
gtp), so the answers are the store's for the same vectors.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gradstore.selectors.gtp import gtp as gtp_pursuit
from gradstore.selectors.gtp_paper import gtp_paper as gtp_paper_pursuit
from gradstore.selectors.less import less_topk
from gradstore.selectors.omp import omp as omp_pursuit
from gradstore.selectors.query import PursuitResult, Query
from gradstore.selectors.source import TensorSource
from gradstore.selectors.stacked import StackedPool

ArrayAnswer = tuple[np.ndarray, np.ndarray, float]
"""Row positions in selection order, their weights, the relative residual."""


def _pool(X, num_checkpoints: int, eta, normalize: bool, center: bool) -> StackedPool:
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"X must be (N, T*d), got shape {X.shape}")
    pool = StackedPool(TensorSource(np.ascontiguousarray(X, dtype=np.float32),
                                    num_checkpoints), eta, normalize)
    return pool.centered() if center else pool


def _target(pool: StackedPool, T, labels) -> tuple[np.ndarray, float]:
    if T is None:
        return pool.mean()[:, None], 0.0
    T = np.atleast_2d(np.asarray(T, dtype=np.float32))
    return pool.target(T, None if labels is None else np.asarray(labels))


def _answer(r: PursuitResult) -> ArrayAnswer:
    return r.rows, r.total_weights, r.residual


def gtp(X, T, k: int, *, num_checkpoints: int = 1, eta: Sequence[float] | None = None,
        labels: Sequence[str] | None = None, tolerance: float | str = "auto",
        normalize: bool = True) -> ArrayAnswer:
    """gradstore's default GTP: k rows whose mean stacked row matches the target's (to
    within ``tolerance``: ``auto``, the target mean's standard error; 0: as close as
    possible). Weights are all 1."""
    pool = _pool(X, num_checkpoints, eta, normalize, center=True)
    Y, error = _target(pool, T, labels)
    tol = error if tolerance == "auto" else float(tolerance)
    return _answer(gtp_pursuit(pool, [Query(Y, k, tolerance=tol)])[0])


def gtp_paper(X, T, k: int, *, num_checkpoints: int = 1, eta: Sequence[float] | None = None,
              labels: Sequence[str] | None = None, normalize: bool = True) -> ArrayAnswer:
    """GTP as published: at most k rows with non-negative weights fitting the target."""
    pool = _pool(X, num_checkpoints, eta, normalize, center=False)
    return _answer(gtp_paper_pursuit(pool, [Query(_target(pool, T, labels)[0], k)])[0])


def omp(X, T, k: int, *, num_checkpoints: int = 1, eta: Sequence[float] | None = None,
        labels: Sequence[str] | None = None, normalize: bool = True) -> ArrayAnswer:
    """GradMatch's OMP with non-negative refits (one pass per chosen row)."""
    pool = _pool(X, num_checkpoints, eta, normalize, center=False)
    return _answer(omp_pursuit(pool, [Query(_target(pool, T, labels)[0], k)])[0])


def less(X, T, k: int, *, num_checkpoints: int = 1, eta: Sequence[float] | None = None,
         labels: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """LESS's top-k: the k rows of highest (max over subtasks) mean cosine with the target;
    returns the rows and their scores."""
    pool = _pool(X, num_checkpoints, eta, normalize=True, center=False)
    return less_topk(pool, [_target(pool, T, labels)[0]], [k])[0]

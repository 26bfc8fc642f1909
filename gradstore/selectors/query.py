"""What a selector is asked (a query) and what it answers (a pursuit result)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gradstore.selectors.quotas import QuotaCounts

MAX_CANDIDATES = 4096
"""Most candidate rows a pursuit's round takes from one scan (its rows, Gram matrix or
products grow with it: 2k candidates at k = 50,000 would be a 100,000-row Gram matrix)."""


@dataclass
class Query:
    """Match ``Y`` (D, C) with at most ``k`` pool rows; C > 1 for subtask-joint targets.

    ``tolerance`` (gtp only): how far the selection's mean may stay from the target's
    mean, the target mean's own sampling error (``target_tolerance``); 0: match it as
    closely as possible.

    ``exclude``: pool rows the query may not choose (no scan returns them to it).
    ``fixed`` (gtp only; ``--extend``): rows the selection starts with and keeps; they
    count toward ``k``, and no scan returns them either, so no swap removes them.
    ``quotas`` (gtp, gtp-paper and omp): the caps the pursuit keeps to as it adds and
    swaps rows.
    """

    Y: np.ndarray
    k: int
    m: int | None = None
    tolerance: float = 0.0
    exclude: np.ndarray | None = None
    fixed: np.ndarray | None = None
    quotas: tuple = ()
    """``Quota``s (``--max-share``): caps on the rows one value of a field may take."""
    counts: QuotaCounts | None = None
    """gtp: the counts of ``quotas`` this query shares with others whose selections make
    one answer together (``--target-mode parts``: each part's pursuit sees the rows the
    other parts hold); None: its own, from its fixed rows."""

    def __post_init__(self) -> None:
        Y = np.asarray(self.Y, dtype=np.float64)
        self.Y = Y[:, None] if Y.ndim == 1 else Y
        if self.m is None:
            self.m = 2 * self.k
        self.fixed = np.zeros(0, dtype=np.int64) if self.fixed is None \
            else np.asarray(self.fixed, dtype=np.int64)
        self.exclude = np.zeros(0, dtype=np.int64) if self.exclude is None \
            else np.asarray(self.exclude, dtype=np.int64)
        if len(self.fixed) > self.k:
            raise ValueError(f"{len(self.fixed)} fixed rows exceed the budget k={self.k}")

    @property
    def barred(self) -> np.ndarray:
        """Rows no scan returns to this query: its exclusions and its fixed rows."""
        return np.union1d(self.exclude, self.fixed).astype(np.int64)

    @property
    def yy(self) -> float:
        return float(np.sum(self.Y * self.Y))


@dataclass
class PursuitResult:
    """Selected pool rows in selection order, weights (n, C) >= 0, relative residual."""

    rows: np.ndarray
    weights: np.ndarray
    residual: float
    history: list[float] = field(default_factory=list)
    scans: int = 0
    seconds_fit: float = 0.0
    """Seconds of the method's own work between scans: gtp's steps, gtp-paper's and OMP's
    NNLS solves."""
    seconds_scan: float = 0.0
    candidates: int | None = None
    """Partitioned pursuit: size of the union of the parts' selections it chose from."""
    details: dict = field(default_factory=dict)
    """Method-specific facts worth recording (gtp: ``alpha``, ``tolerance``)."""

    @property
    def total_weights(self) -> np.ndarray:
        """One weight per selected row: the sum over target columns."""
        return self.weights.sum(1) if self.weights.ndim == 2 else self.weights


def target_tolerance(rows: np.ndarray, labels: np.ndarray | None = None) -> float:
    """The standard error of a target's mean row: ``sqrt(sum ||y_j - y||^2 / (n (n-1)))``.

    With subtask ``labels``, the target is the average of the subtask means and its error
    ``sqrt(sum_c se_c^2) / C``; a subtask of one example adds none.
    """
    rows = np.asarray(rows, dtype=np.float64)
    groups = [rows] if labels is None else [rows[labels == c] for c in np.unique(labels)]
    var = 0.0
    for g in groups:
        n = len(g)
        if n >= 2:
            var += float(((g - g.mean(0)) ** 2).sum()) / (n * (n - 1))
    return float(np.sqrt(var)) / len(groups)


RESIDUAL_BLOCK = 1024
"""Rows of A_S :func:`relative_residual` converts to float64 at a time."""


def relative_residual(AS: np.ndarray, W: np.ndarray, Y: np.ndarray) -> float:
    """``||A_S^T W - Y||_F / ||Y||_F`` with AS (n, D), W (n, C), Y (D, C)."""
    yn = float(np.linalg.norm(Y))
    if yn == 0:
        return 0.0
    if len(AS) == 0:
        return 1.0
    fit = np.zeros((AS.shape[1], W.shape[1]))
    for s in range(0, len(AS), RESIDUAL_BLOCK):  # no float64 copy of AS
        fit += AS[s : s + RESIDUAL_BLOCK].T.astype(np.float64) @ W[s : s + RESIDUAL_BLOCK]
    return float(np.linalg.norm(fit - Y)) / yn

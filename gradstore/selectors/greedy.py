"""Greedy pursuit with non-negative least-squares refits, in Gram form.

``IncrementalNNLS`` keeps the inverse Gram matrix of the passive set and updates
it in O(p^2) per added or removed column, so a pursuit that grows its support one
example at a time (OMP / GradMatch, and GTP's support update inside the merged
candidate set) pays O(p^2) per step instead of a fresh solve.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gradstore.selectors.nnls import nnls_gram

# A column whose Schur complement falls below this share of its own norm is
# (numerically) a combination of the support: it cannot improve the fit.
DEPENDENT = 1e-9


class IncrementalNNLS:
    """NNLS over a support that grows one column at a time (one right-hand side).

    The support is kept equal to the passive set: a column whose weight falls to
    zero is removed (and reported), so every weight is > 0 and the solution is
    the least-squares fit on the support, i.e. the NNLS optimum over it.
    """

    def __init__(self, capacity: int) -> None:
        cap = max(1, capacity)
        self.H = np.zeros((cap, cap))  # inverse Gram of the support
        self.G = np.zeros((cap, cap))  # Gram of the support
        self.b = np.zeros(cap)
        self.x = np.zeros(cap)
        self.p = 0

    def _grow(self) -> None:
        cap = self.H.shape[0] * 2
        for name in ("H", "G"):
            old = getattr(self, name)
            new = np.zeros((cap, cap))
            new[: self.p, : self.p] = old[: self.p, : self.p]
            setattr(self, name, new)
        for name in ("b", "x"):
            old = getattr(self, name)
            new = np.zeros(cap)
            new[: self.p] = old[: self.p]
            setattr(self, name, new)

    @property
    def weights(self) -> np.ndarray:
        return self.x[: self.p]

    def add(self, g: np.ndarray, gamma: float, b_new: float) -> tuple[bool, list[int]]:
        """Add a column with Gram entries ``g`` (against the support), ``gamma`` (with itself).

        Returns ``(added, removed)``: whether the column entered (False when it is
        numerically dependent on the support) and the support positions, in the
        order before this call, that dropped out with zero weight.
        """
        p = self.p
        H = self.H[:p, :p]
        v = H @ g if p else np.zeros(0)
        s = gamma - float(g @ v) if p else gamma
        if not s > DEPENDENT * max(gamma, 1e-300):
            return False, []
        if p + 1 > self.H.shape[0]:
            self._grow()
            H = self.H[:p, :p]
        delta = (b_new - float(g @ self.x[:p])) / s
        z = np.empty(p + 1)
        z[:p] = self.x[:p] - delta * v
        z[p] = delta
        # inverse Gram of the grown support (block inverse)
        H += np.outer(v, v) / s
        self.H[:p, p] = -v / s
        self.H[p, :p] = -v / s
        self.H[p, p] = 1.0 / s
        self.G[:p, p] = g
        self.G[p, :p] = g
        self.G[p, p] = gamma
        self.b[p] = b_new
        old_x = np.zeros(p + 1)
        old_x[:p] = self.x[:p]
        self.p = p + 1
        removed = self._settle(old_x, z)
        return True, removed

    def _settle(self, x: np.ndarray, z: np.ndarray) -> list[int]:
        """Lawson-Hanson inner loop: step from feasible ``x`` toward ``z`` until z > 0."""
        alive = np.arange(self.p)  # original positions of the current support
        removed: list[int] = []
        while np.any(z <= 0):
            neg = z <= 0
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(neg, x / (x - z), np.inf)
            alpha = float(np.clip(np.min(ratio), 0.0, 1.0))
            x = x + alpha * (z - x)
            drop = np.flatnonzero(
                (x <= 1e-14 * max(1.0, float(np.abs(x).max()))) | (neg & (ratio <= alpha))
            )
            for pos in sorted(drop.tolist(), reverse=True):
                self._remove_at(pos)
                removed.append(int(alive[pos]))
                alive = np.delete(alive, pos)
                x = np.delete(x, pos)
            if self.p == 0:
                z = np.zeros(0)
                break
            z = self.H[: self.p, : self.p] @ self.b[: self.p]
        self.x[: self.p] = z
        return removed

    def _remove_at(self, i: int) -> None:
        p = self.p
        H = self.H
        hi = H[:p, i].copy()
        hii = hi[i]
        H[:p, :p] -= np.outer(hi, hi) / hii
        for M in (self.H, self.G):
            M[i : p - 1, :p] = M[i + 1 : p, :p]
            M[:p, i : p - 1] = M[:p, i + 1 : p]
        self.b[i : p - 1] = self.b[i + 1 : p]
        self.x[i : p - 1] = self.x[i + 1 : p]
        self.p = p - 1

    def refresh(self) -> None:
        """Re-derive the inverse and the weights from the Gram (bounds rounding drift)."""
        p = self.p
        if p == 0:
            return
        G = self.G[:p, :p]
        self.H[:p, :p] = np.linalg.inv(G)
        self.x[:p] = self.H[:p, :p] @ self.b[:p]


@dataclass
class GreedyResult:
    """Positions into the candidate set, in selection order, and their weights (n, C)."""

    support: np.ndarray
    weights: np.ndarray
    residual_sq: float


def _scores(c: np.ndarray) -> np.ndarray:
    if c.shape[1] == 1:
        return c[:, 0].copy()
    return np.clip(c, 0, None).sum(1)


def polish(
    G: np.ndarray, B: np.ndarray, support: np.ndarray, W: np.ndarray | None = None
) -> np.ndarray:
    """Exact NNLS per column of B on the given support (warm-started)."""
    Gs = np.asarray(G[np.ix_(support, support)], dtype=np.float64)
    out = np.zeros((len(support), B.shape[1]))
    for c in range(B.shape[1]):
        x0 = None if W is None else W[:, c]
        out[:, c] = nnls_gram(Gs, np.asarray(B[support, c], dtype=np.float64), x0=x0)
    return out


def greedy_nnls_gram(
    G: np.ndarray,
    B: np.ndarray,
    yy: float,
    k: int,
    *,
    rel_tol: float = 1e-6,
) -> GreedyResult:
    """OMP with NNLS refits restricted to n candidates, from their Gram matrix.

    Parameters
    ----------
    G : (n, n) array
        Gram matrix of the candidate rows.
    B : (n, C) array
        Candidate rows against the C target columns (A_U^T Y).
    yy : float
        ``||Y||_F^2``.
    k : int
        Largest support size.
    rel_tol : float
        Stop once the relative residual ``||A_S W - Y|| / ||Y||`` is below this.
    """
    n, C = B.shape
    k = min(k, n)
    G32 = np.asarray(G, dtype=np.float32)
    B64 = np.asarray(B, dtype=np.float64)
    diag = np.diag(G).astype(np.float64)
    banned = np.zeros(n, dtype=bool)
    banned |= diag <= 0
    order: list[int] = []  # candidate positions on the support, selection order
    GT = np.zeros((max(k, 1), n), dtype=np.float32)  # rows G[j] of the support, same order
    solvers = [IncrementalNNLS(min(k, 256) + 1) for _ in range(C)] if C == 1 else []
    W = np.zeros((0, C))
    stop_sq = (rel_tol**2) * yy
    res_sq = yy
    while len(order) < k:
        p = len(order)
        c = B64 - (GT[:p].T.astype(np.float64) @ W if p else 0.0)
        score = _scores(np.atleast_2d(c.reshape(n, C)))
        score[banned] = -np.inf
        j = int(np.argmax(score))
        if not score[j] > 1e-12 * max(np.sqrt(yy), 1e-300):
            break
        banned[j] = True
        if C == 1:
            solver = solvers[0]
            idx = np.asarray(order, dtype=np.int64)
            added, removed = solver.add(
                G[j, idx].astype(np.float64) if p else np.zeros(0), diag[j], B64[j, 0]
            )
            if not added:
                continue
            order.append(j)
            GT[p] = G32[j]
            if removed:
                keep = np.setdiff1d(np.arange(p + 1), removed)
                order = [order[i] for i in keep]
                GT[: len(keep)] = GT[keep]
            W = solver.weights.reshape(-1, 1)
            res_sq = max(yy - float(solver.b[: solver.p] @ solver.weights), 0.0)
        else:
            order.append(j)
            GT[p] = G32[j]
            idx = np.asarray(order, dtype=np.int64)
            W0 = np.vstack([W, np.zeros((1, C))])
            W = polish(G, B64, idx, W0)
            alive = np.flatnonzero(W.sum(1) > 0)
            if len(alive) < len(order):
                order = [order[i] for i in alive]
                GT[: len(alive)] = GT[alive]
                W = W[alive]
            idx = np.asarray(order, dtype=np.int64)
            Gs = G[np.ix_(idx, idx)].astype(np.float64)
            res_sq = max(yy - 2 * float(np.sum(B64[idx] * W)) + float(np.sum(W * (Gs @ W))), 0.0)
        if res_sq <= stop_sq:
            break
    support = np.asarray(order, dtype=np.int64)
    if len(support):
        W = polish(G, B64, support, W)
        alive = W.sum(1) > 0
        support, W = support[alive], W[alive]
        Gs = np.asarray(G[np.ix_(support, support)], dtype=np.float64)
        res_sq = max(yy - 2 * float(np.sum(B64[support] * W)) + float(np.sum(W * (Gs @ W))), 0.0)
    return GreedyResult(support=support, weights=W.reshape(len(support), C), residual_sq=res_sq)

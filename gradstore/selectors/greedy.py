"""Greedy pursuit with non-negative least-squares refits, in Gram form.

``IncrementalNNLS`` keeps the inverse Gram matrix of the passive set and updates
it in O(p^2) per added or removed column, so a pursuit that grows its support one
example at a time (OMP / GradMatch, and GTP's support update inside the merged
candidate set) pays O(p^2) per step instead of a fresh solve.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from gradstore.selectors.nnls import GRAM_DTYPES, nnls_gram


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch single-threaded: the O(p^2) steps are too small to share, and a second
    OpenMP thread spins while it waits for a core that another busy process holds."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


DOT_BLOCK = 1024
"""Rows of a float32 matrix :func:`dot64` converts to float64 at a time."""


def dot64(A: torch.Tensor, v: np.ndarray) -> np.ndarray:
    """``A @ v`` in float64 for a float32 ``A``, a block of rows at a time (no float64 copy
    of ``A``)."""
    vt = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64))
    out = np.empty(A.shape[0])
    for s in range(0, A.shape[0], DOT_BLOCK):
        out[s : s + DOT_BLOCK] = (A[s : s + DOT_BLOCK].double() @ vt).numpy()
    return out


def combine64(A: torch.Tensor, x: np.ndarray) -> np.ndarray:
    """``A^T x`` in float64 for a float32 ``A``, a block of rows at a time (no float64 or
    transposed copy of ``A``)."""
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
    out = torch.zeros(A.shape[1], dtype=torch.float64)
    for s in range(0, A.shape[0], DOT_BLOCK):
        out += xt[s : s + DOT_BLOCK] @ A[s : s + DOT_BLOCK].double()
    return out.numpy()


def squares64(A: torch.Tensor) -> np.ndarray:
    """Each row's squared norm in float64 for a float32 ``A``, a block of rows at a time
    (no float64 copy of ``A``)."""
    out = np.empty(A.shape[0])
    for s in range(0, A.shape[0], DOT_BLOCK):
        out[s : s + DOT_BLOCK] = (A[s : s + DOT_BLOCK].double() ** 2).sum(1).numpy()
    return out


# A column whose Schur complement falls below this share of its own norm is
# (numerically) a combination of the support: it cannot improve the fit.
DEPENDENT = 1e-9


class IncrementalNNLS:
    """NNLS over a support that grows one column at a time (one right-hand side).

    The support is kept equal to the passive set: a column whose weight falls to
    zero is removed (and reported), so every weight is > 0 and the solution is
    the least-squares fit on the support, i.e. the NNLS optimum over it.
    Buffers are torch float64 so that rank-one updates run in place on views (numpy's
    outer products allocate p^2 fresh memory per step).
    """

    def __init__(self, capacity: int) -> None:
        cap = max(1, capacity)
        self.H = torch.zeros((cap, cap), dtype=torch.float64)  # inverse Gram of the support
        self.b = torch.zeros(cap, dtype=torch.float64)
        self.x = torch.zeros(cap, dtype=torch.float64)
        self.p = 0

    def _grow(self) -> None:
        cap = self.H.shape[0] * 2
        p = self.p
        new = torch.zeros((cap, cap), dtype=torch.float64)
        new[:p, :p] = self.H[:p, :p]
        self.H = new
        for name in ("b", "x"):
            new = torch.zeros(cap, dtype=torch.float64)
            new[:p] = getattr(self, name)[:p]
            setattr(self, name, new)

    @property
    def weights(self) -> np.ndarray:
        return self.x[: self.p].numpy().copy()

    @property
    def fit(self) -> float:
        """``b_S . x_S`` = ||A_S x||^2 at the least-squares optimum."""
        return float(self.b[: self.p] @ self.x[: self.p])

    def add(self, g: np.ndarray, gamma: float, b_new: float) -> tuple[bool, list[int]]:
        """Add a column with Gram entries ``g`` (against the support), ``gamma`` (with itself).

        Returns ``(added, removed)``: whether the column entered (False when it is
        numerically dependent on the support) and the support positions, in the
        order before this call, that dropped out with zero weight.
        """
        p = self.p
        gt = torch.from_numpy(np.ascontiguousarray(g, dtype=np.float64))
        if p:
            v = torch.mv(self.H[:p, :p], gt)
            s = gamma - float(gt @ v)
        else:
            v = torch.zeros(0, dtype=torch.float64)
            s = gamma
        if not s > DEPENDENT * max(gamma, 1e-300):
            return False, []
        if p + 1 > self.H.shape[0]:
            self._grow()
        delta = (b_new - float(gt @ self.x[:p])) / s
        z = torch.empty(p + 1, dtype=torch.float64)
        z[:p] = self.x[:p] - delta * v
        z[p] = delta
        self.H[:p, :p].addr_(v, v, alpha=1.0 / s)
        self.H[:p, p] = -v / s
        self.H[p, :p] = -v / s
        self.H[p, p] = 1.0 / s
        self.b[p] = b_new
        old_x = torch.zeros(p + 1, dtype=torch.float64)
        old_x[:p] = self.x[:p]
        self.p = p + 1
        return True, self._settle(old_x, z)

    def _settle(self, x: torch.Tensor, z: torch.Tensor) -> list[int]:
        """Lawson-Hanson inner loop: step from feasible ``x`` toward ``z`` until z > 0."""
        alive = list(range(self.p))  # original positions of the current support
        removed: list[int] = []
        while self.p and bool((z <= 0).any()):
            neg = z <= 0
            ratio = torch.where(neg, x / (x - z), torch.full_like(x, float("inf")))
            alpha = float(ratio.min().clamp(0.0, 1.0))
            x = x + alpha * (z - x)
            tiny = 1e-14 * max(1.0, float(x.abs().max()))
            drop = torch.nonzero((x <= tiny) | (neg & (ratio <= alpha))).flatten().tolist()
            keep = [i for i in range(self.p) if i not in set(drop)]
            for pos in sorted(drop, reverse=True):
                self._remove_at(pos)
                removed.append(alive.pop(pos))
            x = x[keep]
            z = torch.mv(self.H[: self.p, : self.p], self.b[: self.p])
        self.x[: self.p] = z
        return removed

    def _remove_at(self, i: int) -> None:
        p = self.p
        hi = self.H[:p, i].clone()
        self.H[:p, :p].addr_(hi, hi, alpha=-1.0 / float(hi[i]))
        H = self.H
        H[i : p - 1, :p] = H[i + 1 : p, :p].clone()
        H[:p, i : p - 1] = H[:p, i + 1 : p].clone()
        for v in (self.b, self.x):
            v[i : p - 1] = v[i + 1 : p].clone()
        self.p = p - 1

    def removal_costs(self) -> np.ndarray:
        """Rise of ||A_S x - y||^2 if each support column alone were dropped: x_i^2 / H_ii."""
        p = self.p
        return (self.x[:p] ** 2 / torch.diagonal(self.H[:p, :p])).numpy()

    def remove(self, i: int) -> list[int]:
        """Drop support position ``i``; returns positions (after that) that fell to zero."""
        x_old = torch.cat([self.x[:i], self.x[i + 1 : self.p]])
        self._remove_at(i)
        z = torch.mv(self.H[: self.p, : self.p], self.b[: self.p])
        return self._settle(x_old, z)

    def clone(self) -> IncrementalNNLS:
        p = self.p
        other = IncrementalNNLS(max(p + 1, 2))
        other.H[:p, :p] = self.H[:p, :p]
        other.b[:p] = self.b[:p]
        other.x[:p] = self.x[:p]
        other.p = p
        return other


@dataclass
class GreedyResult:
    """Positions into the candidate set, in selection order, and their weights (n, C)."""

    support: np.ndarray
    weights: np.ndarray
    residual_sq: float
    solver: IncrementalNNLS | None = None


def _scores(c: np.ndarray) -> np.ndarray:
    if c.shape[1] == 1:
        return c[:, 0].copy()
    return np.clip(c, 0, None).sum(1)


def support_gram(G: np.ndarray, support: np.ndarray) -> np.ndarray:
    """``G[support, support]`` (float32 stays float32: :func:`nnls_gram` reads it exactly),
    without a copy when the support is all of G in order (a fit on every candidate: a k x k
    copy saved)."""
    whole = len(support) == len(G) and np.array_equal(support, np.arange(len(G)))
    Gs = G if whole else G[np.ix_(support, support)]
    return Gs if Gs.dtype in GRAM_DTYPES else Gs.astype(np.float64)


def polish(
    G: np.ndarray, B: np.ndarray, support: np.ndarray, W: np.ndarray | None = None
) -> np.ndarray:
    """Exact NNLS per column of B on the given support (warm-started)."""
    Gs = support_gram(G, support)
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
    init: int = 0,
    solver: IncrementalNNLS | None = None,
    init_weights: np.ndarray | None = None,
    floor: float | None = None,
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
    init : int
        The first ``init`` candidates are the current support, kept and grown
        (warm start); 0 chooses the support from scratch.
    solver : IncrementalNNLS, optional
        With ``init`` (one target column): the solver already holding those
        ``init`` columns in order; it is updated in place.
    init_weights : (init, C) array, optional
        Their current weights (several target columns).
    floor : float, optional
        Stop early once the best candidate's score falls below
        ``floor * ||r|| / ||r_0||`` (r_0 the residual at the start): rows outside
        the candidate set are then likely better, and a new scan should look.
    rel_tol : float
        Stop once the relative residual ``||A_S W - Y|| / ||Y||`` is below this.
    """
    with one_thread():
        g = _Greedy(G, B, yy, k, init)
        if B.shape[1] == 1:
            if solver is None:
                if init:
                    raise ValueError("a warm start with one target column needs its solver")
                solver = IncrementalNNLS(min(g.k, 256) + 1)
            return g.run_one(solver, floor, rel_tol)
        return g.run_many(init_weights, floor, rel_tol)


class _Greedy:
    """The greedy pass: the support in candidate positions, its Gram rows and the current
    weights; one target column grows an IncrementalNNLS, several re-solve each column."""

    def __init__(self, G: np.ndarray, B: np.ndarray, yy: float, k: int, init: int) -> None:
        n, C = B.shape
        self.G, self.yy, self.n, self.C = G, yy, n, C
        self.k = min(k, n)
        self.G32 = np.asarray(G, dtype=np.float32)
        self.B64 = np.asarray(B, dtype=np.float64)
        self.diag = np.diag(G).astype(np.float64)
        self.banned = self.diag <= 0
        self.order: list[int] = list(range(init))  # candidate positions on the support
        self.banned[:init] = True
        self.GT = np.zeros((max(self.k, init, 1), n), dtype=np.float32)  # G rows of the support
        self.GT[:init] = self.G32[:init]

    def pick(self, W: np.ndarray, res_sq: float, res0_sq: float, floor: float | None):
        """The best candidate for the current weights, or None to stop."""
        p = len(self.order)
        c = self.B64 - (self.GT[:p].T @ W.astype(np.float32) if p else 0.0)
        score = _scores(np.atleast_2d(c.reshape(self.n, self.C)))
        score[self.banned] = -np.inf
        j = int(np.argmax(score))
        if not score[j] > 1e-12 * max(np.sqrt(self.yy), 1e-300):
            return None
        if floor is not None and score[j] < floor * np.sqrt(res_sq / max(res0_sq, 1e-300)):
            return None
        self.banned[j] = True
        return j

    def keep(self, positions) -> None:
        """Only these support positions stay (in order)."""
        self.order = [self.order[i] for i in positions]
        self.GT[: len(positions)] = self.GT[positions]

    def run_one(self, solver: IncrementalNNLS, floor, rel_tol) -> GreedyResult:
        assert solver.p == len(self.order)
        W = solver.weights.reshape(-1, 1).copy()
        res_sq = res0_sq = max(self.yy - solver.fit, 0.0)
        while len(self.order) < self.k and res_sq > (rel_tol**2) * self.yy:
            j = self.pick(W, res_sq, res0_sq, floor)
            if j is None:
                break
            p = len(self.order)
            idx = np.asarray(self.order, dtype=np.int64)
            added, removed = solver.add(
                self.G[j, idx].astype(np.float64) if p else np.zeros(0), self.diag[j],
                self.B64[j, 0])
            if not added:
                continue
            self.order.append(j)
            self.GT[p] = self.G32[j]
            if removed:
                self.keep(np.setdiff1d(np.arange(p + 1), removed))
            W = solver.weights.reshape(-1, 1)
            res_sq = max(self.yy - solver.fit, 0.0)
        support = np.asarray(self.order, dtype=np.int64)
        return GreedyResult(support=support, weights=np.asarray(W).reshape(len(support), 1),
                            residual_sq=res_sq, solver=solver)

    def run_many(self, init_weights, floor, rel_tol) -> GreedyResult:
        init, C, G, B64 = len(self.order), self.C, self.G, self.B64
        W = np.zeros((init, C)) if init_weights is None else np.asarray(init_weights, float)
        res_sq = res0_sq = _residual_sq(G, B64, np.arange(init), W, self.yy)
        while len(self.order) < self.k and res_sq > (rel_tol**2) * self.yy:
            j = self.pick(W, res_sq, res0_sq, floor)
            if j is None:
                break
            self.order.append(j)
            self.GT[len(self.order) - 1] = self.G32[j]
            idx = np.asarray(self.order, dtype=np.int64)
            W = polish(G, B64, idx, np.vstack([W, np.zeros((1, C))]))
            alive = np.flatnonzero(W.sum(1) > 0)
            if len(alive) < len(self.order):
                self.keep(alive)
                W = W[alive]
            res_sq = _residual_sq(G, B64, np.asarray(self.order, dtype=np.int64), W, self.yy)
        support = np.asarray(self.order, dtype=np.int64)
        if len(support):
            W = polish(G, B64, support, W)
            alive = W.sum(1) > 0
            support, W = support[alive], W[alive]
            res_sq = _residual_sq(G, B64, support, W, self.yy)
        return GreedyResult(support=support, weights=np.asarray(W).reshape(len(support), C),
                            residual_sq=res_sq, solver=None)


def _residual_sq(G, B, support, W, yy) -> float:
    """||A_S W - Y||_F^2 from Gram quantities."""
    if len(support) == 0:
        return yy
    Gs = support_gram(G, support)
    return max(yy - 2 * float(np.sum(B[support] * W)) + float(np.sum(W * (Gs @ W))), 0.0)


def swap_refine(
    G: np.ndarray, B: np.ndarray, yy: float, k: int, solver: IncrementalNNLS, swaps: int
) -> GreedyResult:
    """Exchange up to ``swaps`` support columns for better candidates (one target column).

    The first ``solver.p`` candidates are the current support. A forward greedy
    pass adds up to ``swaps`` of the other candidates, then a backward pass drops
    the columns whose removal raises the residual least (x_i^2 / H_ii), until k
    are left. The solver is not modified; the result carries a new one.
    """
    with one_thread():
        return _swap(G, B, yy, k, solver, swaps)


def _swap(G, B, yy, k, solver, swaps) -> GreedyResult:
    init = solver.p
    trial = solver.clone()
    fwd = _Greedy(G, B, yy, k + swaps, init).run_one(trial, None, 1e-6)
    order = fwd.support.tolist()
    while trial.p > k:
        i = int(np.argmin(trial.removal_costs()))
        removed = trial.remove(i)
        order.pop(i)
        for pos in sorted(removed, reverse=True):
            order.pop(pos)
    support = np.asarray(order, dtype=np.int64)
    return GreedyResult(support=support, weights=trial.weights.reshape(-1, 1),
                        residual_sq=max(yy - trial.fit, 0.0), solver=trial)

"""Non-negative least squares (NNLS) solvers, mostly in Gram form.

The problems solved here are

.. math:: \\min_{x \\ge 0} \\tfrac12 x^T G x - b^T x,

with ``G = A.T @ A`` (symmetric positive semi-definite, possibly singular) and
``b = A.T @ y``; this is the same as ``min ||A x - y||_2`` subject to ``x >= 0``.

* :func:`nnls_gram` -- Lawson-Hanson active set, exact to tolerance, warm-startable.
  The Cholesky factor of ``G[P, P]`` is updated in place (append: one triangular
  solve; removal: a vectorised rank-one update), so one outer iteration costs
  ``O(n |P|)``.
* :func:`nnls_pg` -- accelerated projected gradient (FISTA with restart) for large n.
* :func:`nnls_auto` -- picks one of the two; for large n it runs projected gradient
  first and polishes the result with the active-set method.
* :func:`nnls` -- convenience front end taking ``A`` and ``y``.

All decisions (which column enters, dependence tests, stopping rules) are made on
the diagonally scaled problem ``D^{-1/2} G D^{-1/2}``, ``D = diag(G)``, so the
solvers are invariant to the scale of ``A`` and of ``y`` and to column norms.
Columns with ``G_jj == 0`` (zero columns of ``A``) always get weight 0.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.linalg import LinAlgError, solve_triangular
from scipy.linalg.blas import dtpsv
from scipy.linalg.lapack import dpstrf
from scipy.optimize import nnls as _scipy_nnls
from scipy.sparse.linalg import ArpackError, LinearOperator, eigsh

__all__ = ["nnls", "nnls_auto", "nnls_gram", "nnls_pg", "nnls_residual"]

_EPS = float(np.finfo(np.float64).eps)
#: A candidate column j is linearly dependent on the passive set when its Schur
#: complement ``G_jj - G_jP G_PP^{-1} G_Pj`` is at most this times ``G_jj``.
_DEP_TOL = 1e-12
#: ``nnls`` hands problems with at most this many columns to scipy directly.
SCIPY_MAX_COLS = 400
#: ``nnls_auto`` uses the active-set method alone up to this many columns.
AUTO_ACTIVE_SET_MAX_N = 3000


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #
def _check_gram(G: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    b = np.asarray(b, dtype=np.float64)
    G = np.asarray(G, dtype=np.float64)
    if b.ndim != 1:
        raise ValueError(f"b must be 1-D, got shape {b.shape}")
    n = b.shape[0]
    if G.shape != (n, n):
        raise ValueError(f"G must have shape ({n}, {n}), got {G.shape}")
    if not G.flags.c_contiguous:
        # G is symmetric: a Fortran-ordered G is its own (C-ordered) transpose.
        G = G.T if G.flags.f_contiguous else np.ascontiguousarray(G)
    if not (np.isfinite(b).all() and np.isfinite(G).all()):
        raise ValueError("G and b must be finite")
    return G, b


def _scaling(G: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Return ``s = sqrt(diag G)`` (1 where the diagonal is <= 0), the mask of usable
    columns, the scaled ``b / s`` (0 on unusable columns) and ``max |b / s|``."""
    d = np.diagonal(G).copy()
    valid = d > 0.0
    s = np.ones_like(d)
    s[valid] = np.sqrt(d[valid])
    bs = np.where(valid, b / s, 0.0)
    bscale = float(np.max(np.abs(bs))) if bs.size else 0.0
    return s, valid, bs, bscale


def _warm(x0: np.ndarray | None, n: int) -> np.ndarray | None:
    if x0 is None:
        return None
    x0 = np.asarray(x0, dtype=np.float64)
    if x0.shape != (n,):
        raise ValueError(f"x0 must have shape ({n},), got {x0.shape}")
    return np.where(np.isfinite(x0) & (x0 > 0.0), x0, 0.0)


def nnls_residual(G: np.ndarray, b: np.ndarray, yy: float, x: np.ndarray) -> float:
    """Squared residual ``||A x - y||^2`` from Gram quantities.

    Parameters
    ----------
    G : ndarray, shape (n, n)
        ``A.T @ A``.
    b : ndarray, shape (n,)
        ``A.T @ y``.
    yy : float
        ``y @ y``.
    x : ndarray, shape (n,)
        Weights.

    Returns
    -------
    float
        ``x^T G x - 2 b^T x + yy``, clipped at 0.
    """
    x = np.asarray(x, dtype=np.float64)
    val = float(x @ (np.asarray(G, dtype=np.float64) @ x)) - 2.0 * float(np.dot(b, x)) + float(yy)
    return max(val, 0.0)


# --------------------------------------------------------------------------- #
# Lawson-Hanson active set in Gram form
# --------------------------------------------------------------------------- #
class _LawsonHanson:
    """State of one Lawson-Hanson solve.

    The passive set is ``pidx[:k]`` (in factor order).  The lower Cholesky factor
    ``L`` of ``G[P, P]`` is stored row-packed in ``ap``: row ``i`` of ``L`` occupies
    ``ap[i(i+1)/2 : i(i+1)/2 + i + 1]``, which is the column-major packed upper
    storage of ``L.T`` that BLAS ``dtpsv`` reads, so a leading block of the buffer is
    always a valid factor and appending a row is a plain write.  ``u = L^{-1} b_P``
    is kept so that ``z = G_PP^{-1} b_P = L^{-T} u`` costs one triangular solve.
    ``gp[:k]`` holds the rows ``G[j]`` of the passive columns (in slot order
    ``gp_idx``) for the dual ``w = b - G[:, P] x_P``.
    """

    def __init__(self, G, b, s, valid, tol_abs, max_iter):
        self.G, self.b, self.s, self.valid = G, b, s, valid
        self.tol_abs = tol_abs
        self.max_iter = max_iter
        n = b.shape[0]
        self.n = n
        self.k = 0
        self.pidx = np.zeros(n, dtype=np.intp)
        self.in_p = np.zeros(n, dtype=bool)
        self.u = np.zeros(n)
        self.x = np.zeros(n)
        self.cap = 0
        self.ap = np.zeros(0)
        self.gp = np.zeros((0, n))
        self.gp_idx = np.zeros(n, dtype=np.intp)
        self.slot = np.full(n, -1, dtype=np.intp)
        self.stale = False  # factor modified by updates since the last rebuild
        self.iterations = 0
        self.inner_solves = 0

    # ----- storage ---------------------------------------------------------- #
    def _reserve(self, k: int) -> None:
        if k <= self.cap:
            return
        cap = min(self.n, max(k, 2 * self.cap, 32))
        ap = np.zeros(cap * (cap + 1) // 2)
        m = self.k * (self.k + 1) // 2
        ap[:m] = self.ap[:m]
        gp = np.empty((cap, self.n))
        gp[: self.k] = self.gp[: self.k]
        self.ap, self.gp, self.cap = ap, gp, cap

    def _fwd(self, rhs: np.ndarray) -> np.ndarray:
        """``L^{-1} rhs`` for the current factor (rhs has length k)."""
        if self.k == 0:
            return np.zeros(0)
        return dtpsv(self.k, self.ap, rhs, lower=0, trans=1)

    def _bwd(self, rhs: np.ndarray) -> np.ndarray:
        """``L^{-T} rhs`` for the current factor (rhs has length k)."""
        if self.k == 0:
            return np.zeros(0)
        return dtpsv(self.k, self.ap, rhs, lower=0, trans=0)

    def _gp_add(self, j: int) -> None:
        sl = self.k  # slots are compact: 0..k-1 are used
        self.gp[sl] = self.G[j]
        self.gp_idx[sl] = j
        self.slot[j] = sl

    def _gp_remove(self, j: int, last: int) -> None:
        """Free j's slot; ``last`` is the highest used slot before removal."""
        sl = self.slot[j]
        if sl != last:
            jj = self.gp_idx[last]
            self.gp[sl] = self.gp[last]
            self.gp_idx[sl] = jj
            self.slot[jj] = sl
        self.slot[j] = -1

    def _refresh_u(self) -> None:
        k = self.k
        if k:
            self.u[:k] = self._fwd(self.b[self.pidx[:k]])

    # ----- factor updates --------------------------------------------------- #
    def append(self, j: int) -> bool:
        """Add column j to P; False (and no change) if it is dependent on P."""
        k = self.k
        g_jj = self.G[j, j]
        if k:
            r = self._fwd(self.G[j, self.pidx[:k]])
            schur = g_jj - float(r @ r)
        else:
            r = np.zeros(0)
            schur = g_jj
        if not schur > _DEP_TOL * g_jj:
            return False
        self._reserve(k + 1)
        o = k * (k + 1) // 2
        ljj = math.sqrt(schur)
        self.ap[o : o + k] = r
        self.ap[o + k] = ljj
        self.u[k] = (self.b[j] - float(r @ self.u[:k])) / ljj
        self._gp_add(j)
        self.pidx[k] = j
        self.in_p[j] = True
        self.k = k + 1
        return True

    def _delete_pos(self, pos: int) -> None:
        """Remove position ``pos`` of P and update the factor (``u`` is not updated)."""
        k = self.k
        j = int(self.pidx[pos])
        if pos < k - 1:
            m = k - pos  # rows pos..k-1 change
            o0 = pos * (pos + 1) // 2
            o1 = k * (k + 1) // 2
            rows = pos + np.arange(m)
            block = np.zeros((m, k))
            block[np.arange(k)[None, :] <= rows[:, None]] = self.ap[o0:o1]
            v = block[1:, pos].copy()
            l31 = block[1:, :pos]
            l33 = block[1:, pos + 1 :]
            # L33' L33'^T = L33 L33^T + v v^T.  With p = L33^{-1} v, the Cholesky
            # factor of I + p p^T is M = diag(d) + tril(p gamma^T, -1) with
            # t_i = 1 + sum_{l<=i} p_l^2, d_i = sqrt(t_i / t_{i-1}),
            # gamma_i = p_i / sqrt(t_i t_{i-1}); then L33' = L33 M.
            pv = solve_triangular(l33, v, lower=True, check_finite=False)
            t = 1.0 + np.cumsum(pv * pv)
            tprev = np.concatenate(([1.0], t[:-1]))
            dd = np.sqrt(t / tprev)
            gam = pv / np.sqrt(t * tprev)
            q = l33 * pv
            tail = np.cumsum(q[:, ::-1], axis=1)[:, ::-1] - q
            l33n = l33 * dd + tail * gam
            newblock = np.concatenate((l31, l33n), axis=1)
            mask = np.arange(k - 1)[None, :] <= rows[:-1, None]
            self.ap[o0 : o1 - k] = newblock[mask]
            self.pidx[pos : k - 1] = self.pidx[pos + 1 : k]
            self.stale = True
        self._gp_remove(j, k - 1)
        self.in_p[j] = False
        self.k = k - 1

    def rebuild(self, cols: np.ndarray) -> None:
        """Factor ``G[cols, cols]`` from scratch (pivoted Cholesky on the scaled
        matrix); columns found dependent are left out of P and get x = 0."""
        cols = np.asarray(cols, dtype=np.intp)
        for j in self.pidx[: self.k]:
            self.in_p[j] = False
            self.slot[j] = -1
        self.k = 0
        self.stale = False
        if cols.size == 0:
            return
        sc = self.s[cols]
        gs = self.G[np.ix_(cols, cols)] / np.outer(sc, sc)
        c, piv, rank, info = dpstrf(gs, tol=_DEP_TOL, lower=1)
        if info < 0:  # pragma: no cover - invalid argument, should not happen
            raise LinAlgError(f"dpstrf failed with info={info}")
        order = piv[:rank] - 1
        kept = cols[order]
        low = np.tril(c[:rank, :rank]) * sc[order][:, None]
        dropped = np.setdiff1d(cols, kept)
        self.x[dropped] = 0.0
        self._reserve(rank)
        self.ap[: rank * (rank + 1) // 2] = low[np.tri(rank, dtype=bool)]
        self.pidx[:rank] = kept
        self.in_p[kept] = True
        self.gp[:rank] = self.G[kept]
        self.gp_idx[:rank] = kept
        self.slot[kept] = np.arange(rank)
        self.k = int(rank)
        self._refresh_u()

    # ----- Lawson-Hanson --------------------------------------------------- #
    def dual(self) -> np.ndarray:
        k = self.k
        if k == 0:
            return self.b.copy()
        return self.b - self.x[self.gp_idx[:k]] @ self.gp[:k]

    def inner(self, new: int | None) -> tuple[str, bool]:
        """LH inner loop.  Returns (status, removed_any) with status ``"ok"`` or
        ``"rejected"`` (the new column would get a non-positive weight)."""
        removed = False
        first = new is not None
        x = self.x
        while True:
            k = self.k
            if k == 0:
                return "ok", removed
            self.inner_solves += 1
            z = self._bwd(self.u[:k])
            if (z > 0.0).all():
                x[self.pidx[:k]] = z
                return "ok", removed
            if first and not z[k - 1] > 0.0:
                self._delete_pos(k - 1)  # the new column is last: O(1) removal
                return "rejected", False
            first = False
            pset = self.pidx[:k].copy()
            xp = x[pset]
            neg = np.flatnonzero(~(z > 0.0))
            den = xp[neg] - z[neg]
            ratio = np.divide(xp[neg], den, out=np.zeros_like(den), where=den > 0)
            imin = int(np.argmin(ratio))
            alpha = float(ratio[imin])
            xp += alpha * (z - xp)
            xp[neg[imin]] = 0.0
            drop = np.flatnonzero(~(xp > 0.0))
            x[pset] = np.maximum(xp, 0.0)
            if drop.size > max(8, k // 8):
                self.rebuild(np.delete(pset, drop))
            else:
                for pos in drop[::-1]:
                    self._delete_pos(int(pos))
                self._refresh_u()
            removed = True

    def refine(self) -> None:
        """One step of iterative refinement of x_P on the final passive set."""
        k = self.k
        if k == 0:
            return
        pset = self.pidx[:k]
        r = self.dual()[pset]
        xn = self.x[pset] + self._bwd(self._fwd(r))
        if (xn > 0.0).all() and np.isfinite(xn).all():
            self.x[pset] = xn

    def solve(self, x0: np.ndarray | None) -> np.ndarray:
        n, s, valid = self.n, self.s, self.valid
        if x0 is not None:
            start = np.flatnonzero((x0 > 0.0) & valid)
            if start.size:
                self.x[start] = x0[start]
                self.rebuild(start)
                self.inner(None)
        dep_blocked = np.zeros(n, dtype=bool)
        neg_blocked = np.zeros(n, dtype=bool)
        excluded = ~valid
        bscale_noise = float(np.max(np.abs(self.b) / s, initial=0.0))
        refactored = False
        while True:
            w = self.dual()
            ws = w / s
            k = self.k
            pset = self.pidx[:k]
            xs_l1 = float(np.dot(self.x[pset], s[pset]))
            tol_eff = max(self.tol_abs, 64.0 * _EPS * (bscale_noise + xs_l1))
            if k and self.stale and not refactored:
                # Safety net: the updated factor must still solve G_PP x_P = b_P.
                if float(np.max(np.abs(ws[pset]))) > tol_eff:
                    refactored = True
                    self.rebuild(pset)
                    self.inner(None)
                    continue
            cand = np.where(self.in_p | dep_blocked | neg_blocked | excluded, -np.inf, ws)
            j = int(np.argmax(cand))
            if not cand[j] > tol_eff or self.iterations >= self.max_iter:
                break
            self.iterations += 1
            if not self.append(j):
                dep_blocked[j] = True
                continue
            status, removed = self.inner(j)
            if status == "rejected":
                neg_blocked[j] = True
            else:
                refactored = False
                neg_blocked[:] = False
                if removed:
                    dep_blocked[:] = False
        self.refine()
        out = np.where(self.in_p, np.maximum(self.x, 0.0), 0.0)
        return out


def nnls_gram(
    G: np.ndarray,
    b: np.ndarray,
    *,
    x0: np.ndarray | None = None,
    tol: float = 1e-10,
    max_iter: int | None = None,
) -> np.ndarray:
    """Lawson-Hanson active-set NNLS in Gram form.

    Solves ``min 0.5 x^T G x - b^T x`` subject to ``x >= 0``.

    Parameters
    ----------
    G : ndarray, shape (n, n)
        Symmetric positive semi-definite matrix ``A.T @ A`` (may be singular).
    b : ndarray, shape (n,)
        ``A.T @ y``.
    x0 : ndarray, shape (n,), optional
        Warm start; its positive entries form the initial passive set.
    tol : float
        Relative dual tolerance: stop when ``max_j (b - G x)_j / sqrt(G_jj)`` over
        the zero entries is at most ``tol * max_j |b_j| / sqrt(G_jj)``.
    max_iter : int, optional
        Maximum number of outer (column-adding) iterations; default ``3 n + 10``.

    Returns
    -------
    ndarray, shape (n,)
        Non-negative float64 solution.
    """
    G, b = _check_gram(G, b)
    n = b.shape[0]
    x0 = _warm(x0, n)
    if n == 0:
        return np.zeros(0)
    bscale = _scaling(G, b)[3]
    return _active_set(G, b, x0, tol * bscale, max_iter)


def _active_set(G, b, x0, tol_abs, max_iter=None):
    """Lawson-Hanson on checked inputs with an absolute (scaled-dual) tolerance."""
    n = b.shape[0]
    s, valid, bs, bscale = _scaling(G, b)
    if bscale == 0.0:
        return np.zeros(n)
    if max_iter is None:
        max_iter = 3 * n + 10
    lh = _LawsonHanson(G, b, s, valid, tol_abs, int(max_iter))
    return lh.solve(x0)


# --------------------------------------------------------------------------- #
# accelerated projected gradient
# --------------------------------------------------------------------------- #
def _lambda_max(G: np.ndarray, inv_s: np.ndarray) -> float:
    """Largest eigenvalue of ``diag(inv_s) G diag(inv_s)`` (slightly over-estimated)."""
    n = G.shape[0]
    if n <= 400:
        gs = G * np.outer(inv_s, inv_s)
        return float(np.linalg.eigvalsh(gs)[-1]) * (1.0 + 1e-6) + 1e-300

    def mv(v):
        v = np.ravel(v)
        return inv_s * (G @ (inv_s * v))

    op = LinearOperator((n, n), matvec=mv, dtype=np.float64)
    v0 = np.full(n, 1.0 / math.sqrt(n))
    try:
        lam = float(eigsh(op, k=1, which="LA", tol=1e-4, v0=v0, return_eigenvectors=False)[0])
        return lam * 1.01 + 1e-300
    except ArpackError:  # pragma: no cover - fall back to a Gershgorin-type bound
        return float(np.max(np.abs(G) @ inv_s * inv_s)) + 1e-300


def _pg_scaled(G, inv_s, bs, bscale, xs, tol, max_iter):
    """FISTA with function-value restart on the scaled problem; returns scaled x."""
    def mv(v):
        return inv_s * (G @ (inv_s * v))

    lip = _lambda_max(G, inv_s)
    usable = inv_s > 0
    x = np.where(usable, np.maximum(xs, 0.0), 0.0)
    gx = mv(x) if x.any() else np.zeros_like(x)
    fx = 0.5 * float(x @ gx) - float(bs @ x)
    y, gy, t = x, gx, 1.0
    just_restarted = True
    for _ in range(max_iter):
        xn = np.maximum(y - (gy - bs) / lip, 0.0)
        xn[~usable] = 0.0
        gxn = mv(xn)
        grad = gxn - bs
        pos = xn > 0.0
        kkt = max(
            float(np.max(np.abs(grad[pos]), initial=0.0)),
            float(np.max(-grad[~pos & usable], initial=0.0)),
        )
        fxn = 0.5 * float(xn @ gxn) - float(bs @ xn)
        if kkt <= tol * bscale:
            return xn
        if fxn > fx + 1e-15 * abs(fx):
            if just_restarted:
                lip *= 2.0  # a plain projected-gradient step went uphill: step too long
            # restart momentum from the better point
            y, gy, t = x, gx, 1.0
            just_restarted = True
            continue
        tn = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t * t))
        beta = (t - 1.0) / tn
        y = xn + beta * (xn - x)
        gy = gxn + beta * (gxn - gx)
        x, gx, fx, t = xn, gxn, fxn, tn
        just_restarted = False
    return x


def nnls_pg(
    G: np.ndarray,
    b: np.ndarray,
    *,
    x0: np.ndarray | None = None,
    tol: float = 1e-8,
    max_iter: int = 5000,
) -> np.ndarray:
    """Accelerated projected gradient NNLS in Gram form.

    FISTA with adaptive (function-value) restart and step ``1 / L``, ``L`` the
    largest eigenvalue of the Jacobi-scaled ``G`` (Lanczos via ``eigsh``).

    Parameters
    ----------
    G : ndarray, shape (n, n)
        Symmetric positive semi-definite ``A.T @ A``.
    b : ndarray, shape (n,)
        ``A.T @ y``.
    x0 : ndarray, shape (n,), optional
        Starting point (negative entries are set to 0).
    tol : float
        Stop when the KKT residual (infinity norm of the projected gradient of the
        scaled problem) is at most ``tol`` times ``max_j |b_j| / sqrt(G_jj)``.
    max_iter : int
        Maximum number of iterations (one product with ``G`` each).

    Returns
    -------
    ndarray, shape (n,)
        Non-negative float64 approximate solution.
    """
    G, b = _check_gram(G, b)
    n = b.shape[0]
    x0 = _warm(x0, n)
    if n == 0:
        return np.zeros(0)
    s, valid, bs, bscale = _scaling(G, b)
    if bscale == 0.0:
        return np.zeros(n)
    inv_s = np.where(valid, 1.0 / s, 0.0)
    xs = np.zeros(n) if x0 is None else x0 * s
    x = _pg_scaled(G, inv_s, bs, bscale, xs, tol, max_iter)
    return np.maximum(x * inv_s, 0.0)


# --------------------------------------------------------------------------- #
# dispatch and front end
# --------------------------------------------------------------------------- #
def _polish(G, b, x, tol, rounds=8):
    """Active-set polish of an approximate solution ``x`` of the full problem."""
    n = b.shape[0]
    s, valid, bs, bscale = _scaling(G, b)
    tol_abs = tol * bscale
    work = np.flatnonzero(x > 0.0)
    for _ in range(rounds):
        if work.size == 0:
            break
        xw = _active_set(G[np.ix_(work, work)], b[work], x[work], tol_abs)
        x = np.zeros(n)
        x[work] = xw
        w = b - G[:, work] @ xw if work.size < n // 2 else b - G @ x
        ws = np.where(valid & (x <= 0.0), w / s, -np.inf)
        viol = np.flatnonzero(ws > tol_abs)
        if viol.size == 0:
            return x
        work = np.union1d(np.flatnonzero(x > 0.0), viol)
    # Final, exact Lawson-Hanson pass on the full problem, warm-started.
    return nnls_gram(G, b, x0=x, tol=tol)


def nnls_auto(
    G: np.ndarray,
    b: np.ndarray,
    *,
    x0: np.ndarray | None = None,
    tol: float = 1e-10,
) -> np.ndarray:
    """NNLS in Gram form with an automatic choice of method.

    Parameters
    ----------
    G : ndarray, shape (n, n)
        Symmetric positive semi-definite ``A.T @ A``.
    b : ndarray, shape (n,)
        ``A.T @ y``.
    x0 : ndarray, shape (n,), optional
        Warm start.
    tol : float
        Relative dual tolerance (as in :func:`nnls_gram`).

    Returns
    -------
    ndarray, shape (n,)
        Non-negative float64 solution.

    Notes
    -----
    ``n <= AUTO_ACTIVE_SET_MAX_N``: :func:`nnls_gram`.  Larger n: a loosely
    converged :func:`nnls_pg` run identifies the support, the active-set method
    solves the problem restricted to it (adding any KKT violators), and the result
    satisfies the same tolerance as :func:`nnls_gram`.
    """
    G, b = _check_gram(G, b)
    n = b.shape[0]
    x0 = _warm(x0, n)
    if n <= AUTO_ACTIVE_SET_MAX_N:
        return nnls_gram(G, b, x0=x0, tol=tol)
    x = nnls_pg(G, b, x0=x0, tol=1e-4, max_iter=300)
    return _polish(G, b, x, tol)


def nnls(A: np.ndarray, y: np.ndarray, *, tol: float = 1e-10) -> np.ndarray:
    """Solve ``min ||A x - y||_2`` subject to ``x >= 0``.

    Parameters
    ----------
    A : ndarray, shape (D, n)
        Design matrix.
    y : ndarray, shape (D,)
        Target.
    tol : float
        Relative dual tolerance for the Gram-form path (see :func:`nnls_gram`).

    Returns
    -------
    ndarray, shape (n,)
        Non-negative float64 solution.

    Notes
    -----
    Up to ``SCIPY_MAX_COLS`` columns this calls ``scipy.optimize.nnls`` on ``A``;
    otherwise it forms ``G = A.T @ A``, ``b = A.T @ y`` and calls :func:`nnls_auto`.
    """
    A = np.asarray(A, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if A.ndim != 2 or y.ndim != 1 or A.shape[0] != y.shape[0]:
        raise ValueError(f"need A (D, n) and y (D,), got {A.shape} and {y.shape}")
    n = A.shape[1]
    if n == 0:
        return np.zeros(0)
    if n <= SCIPY_MAX_COLS and A.shape[0] > 0:
        try:
            x, _ = _scipy_nnls(A, y, maxiter=50 * n + 100)
            if np.isfinite(x).all():
                return np.maximum(x, 0.0)
        except RuntimeError:
            pass
    return nnls_auto(A.T @ A, A.T @ y, tol=tol)

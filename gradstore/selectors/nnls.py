"""Non-negative least squares (NNLS) solvers, mostly in Gram form.

The problems solved here are

.. math:: \\min_{x \\ge 0} \\tfrac12 x^T G x - b^T x,

with ``G = A.T @ A`` (symmetric positive semi-definite, possibly singular) and
``b = A.T @ y``; this is the same as ``min ||A x - y||_2`` subject to ``x >= 0``.

* :func:`nnls_gram` -- Lawson-Hanson active set, exact to tolerance, warm-startable.
  The Cholesky factor of ``G[P, P]`` (:class:`.cholesky.BandCholesky`) is updated in
  place (adding a column: one triangular solve; removing one: a blocked, vectorised
  rank-one update of the trailing part), columns that are linearly dependent on ``P``
  are never added, and the ``O(n |P|)`` dual ``b - G x`` (from the passive rows of
  :class:`.gram_access.PassiveRows`) is shared by up to ``gram_access.MAX_BATCH``
  additions (``WIDE_BATCH`` for rows held in float64).  Adding one column to a solved
  problem and warm-starting from the old solution typically costs one factorisation and
  two inner solves.
* :func:`nnls_rows` -- the same solve for ``G = A A^T`` given the rows ``A``
  (:class:`.gram_access.RowGram`), never forming ``G``.

``tests/selectors/test_nnls.py`` checks both against ``scipy.optimize.nnls`` run on
``A`` and ``y`` themselves (an independent Lawson-Hanson implementation that never forms
``G``).

All decisions (which column enters, dependence tests, stopping rules) are made on
the diagonally scaled problem ``D^{-1/2} G D^{-1/2}``, ``D = diag(G)``, so the
solvers are invariant to the scale of ``A`` and of ``y`` and to column norms.
Columns with ``G_jj == 0`` (zero columns of ``A``) always get weight 0.
"""

from __future__ import annotations

import numpy as np

from gradstore.selectors.cholesky import BandCholesky, factor_independent
from gradstore.selectors.gram_access import (  # greedy reads GRAM_DTYPES from here
    GRAM_BLOCK,
    GRAM_DTYPES,
    DenseGram,
    PassiveRows,
    RowGram,
    scaled_block,
)

__all__ = ["nnls_gram", "nnls_rows"]

_EPS = float(np.finfo(np.float64).eps)
#: A candidate column j is linearly dependent on the passive set when its Schur
#: complement ``G_jj - G_jP G_PP^{-1} G_Pj`` is at most this times ``G_jj``.
_DEP_TOL = 1e-12


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #
def _check_gram(G: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    b = np.asarray(b, dtype=np.float64)
    G = np.asarray(G)
    if G.dtype not in GRAM_DTYPES:
        G = G.astype(np.float64)
    if b.ndim != 1:
        raise ValueError(f"b must be 1-D, got shape {b.shape}")
    n = b.shape[0]
    if G.shape != (n, n):
        raise ValueError(f"G must have shape ({n}, {n}), got {G.shape}")
    if not G.flags.c_contiguous:
        # G is symmetric: a Fortran-ordered G is its own (C-ordered) transpose.
        G = G.T if G.flags.f_contiguous else np.ascontiguousarray(G)
    if not (np.isfinite(b).all() and all(np.isfinite(G[r : r + GRAM_BLOCK]).all()
                                          for r in range(0, n, GRAM_BLOCK))):
        raise ValueError("G and b must be finite")
    return G, b


def _scaling(G: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Return ``s = sqrt(diag G)`` (1 where the diagonal is <= 0), the mask of usable
    columns, the scaled ``b / s`` (0 on unusable columns) and ``max |b / s|``."""
    return _diagonal_scaling(np.diagonal(G).astype(np.float64), b)


def _diagonal_scaling(d: np.ndarray, b: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """:func:`_scaling` from the diagonal ``d`` of ``G``."""
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


# --------------------------------------------------------------------------- #
# Lawson-Hanson active set in Gram form
# --------------------------------------------------------------------------- #
class _LawsonHanson:
    """State of one Lawson-Hanson solve.

    The passive set is ``pidx[:k]`` (in factor order); ``factor`` is the upper Cholesky
    factor ``R`` of ``G[P, P]`` in the same order (:class:`.cholesky.BandCholesky`).
    ``u = R^{-T} b_P`` is kept so that ``z = G_PP^{-1} b_P = R^{-1} u`` costs one
    triangular solve. ``rows`` (:class:`.gram_access.PassiveRows`) holds the rows ``G[j]``
    of the passive columns for the dual ``w = b - G[:, P] x_P``; once the factor's storage
    grows past n / 2 columns that copy is dropped and the dual is ``b - G x``.
    """

    def __init__(self, G, b, s, valid, tol_abs, max_iter):
        # G: a Gram matrix, or the access to its entries (DenseGram, RowGram)
        self.gram = G if isinstance(G, (DenseGram, RowGram)) else DenseGram(G)
        self.b, self.s, self.valid = b, s, valid
        self.tol_abs = tol_abs
        self.max_iter = max_iter
        n = b.shape[0]
        self.n = n
        self.pidx = np.zeros(n, dtype=np.intp)
        self.in_p = np.zeros(n, dtype=bool)
        self.u = np.zeros(n)
        self.x = np.zeros(n)
        self.factor = BandCholesky(n, self.gram.rank_bound)
        self.rows = PassiveRows(self.gram)
        # Columns that may not enter for now: dependent on P (cleared when P loses
        # a column) or rejected with a non-positive weight (cleared when x moves).
        self.dep_blocked = np.zeros(n, dtype=bool)
        self.neg_blocked = np.zeros(n, dtype=bool)
        self.iterations = 0
        self.inner_solves = 0

    @property
    def k(self) -> int:
        """Size of the passive set."""
        return self.factor.k

    def _refresh_u(self) -> None:
        k = self.k
        if k:
            self.u[:k] = self.factor.solve_transposed(self.b[self.pidx[:k]])

    # ----- changes of the passive set --------------------------------------- #
    def append(self, j: int) -> bool:
        """Add column j to P; False (and no change) if it is dependent on P."""
        k = self.k
        g = self.gram.entries(j, self.pidx[:k]) if k else np.zeros(0)
        added = self.factor.add_column(g, float(self.gram.diag[j]), _DEP_TOL)
        if added is None:
            return False
        r, rjj = added
        self.rows.fit(self.factor.cap, k)
        self.u[k] = (self.b[j] - float(r @ self.u[:k])) / rjj
        self.rows.add(j, k)
        self.pidx[k] = j
        self.in_p[j] = True
        return True

    def _delete_pos(self, pos: int) -> None:
        """Remove position ``pos`` of P and update the factor (``u`` is not updated)."""
        k = self.k
        j = int(self.pidx[pos])
        self.factor.delete(pos)
        if pos < k - 1:
            self.pidx[pos : k - 1] = self.pidx[pos + 1 : k]
        self.rows.remove(j, k - 1)
        self.in_p[j] = False

    def rebuild(self, cols: np.ndarray, strict: bool = False) -> bool:
        """Factor ``G[cols, cols]`` from scratch; columns found dependent are left
        out of P and get x = 0.

        Columns are ordered by decreasing current weight, so that the ones most
        likely to be removed later (small weights) sit at the end of the factor,
        where removing them is cheap.  Plain Cholesky is tried first; if it fails
        or a pivot is tiny (``R_jj^2 <= _DEP_TOL G_jj``), pivoted Cholesky on the
        scaled matrix decides which columns to keep -- unless ``strict``, in which
        case P is left empty and False is returned."""
        cols = np.asarray(cols, dtype=np.intp)
        self.in_p[self.pidx[: self.k]] = False
        self.rows.forget(self.pidx[: self.k])
        self.factor.clear()
        if cols.size == 0:
            return True
        cols = cols[np.argsort(-self.x[cols], kind="stable")]
        scale = self.s[cols]
        found = factor_independent(lambda: scaled_block(self.gram, cols, scale), _DEP_TOL,
                                   pivot=not strict)
        if found is None:
            self.x[cols] = 0.0
            return False
        order, rfac = found
        rank = len(order)
        kept = cols[order]
        sc = scale[order]
        if rank < cols.size:
            self.x[np.setdiff1d(cols, kept)] = 0.0
        if rank == 0:
            return True
        rfac *= sc[None, :]
        self.factor.load(rfac)
        self.rows.fit(self.factor.cap, 0)
        self.pidx[:rank] = kept
        self.in_p[kept] = True
        self.rows.load(kept)
        self._refresh_u()
        return True

    # ----- Lawson-Hanson --------------------------------------------------- #
    def dual(self) -> np.ndarray:
        """``b - G x`` (x is zero outside P)."""
        return self.rows.dual(self.b, self.x, self.k)

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
            z = self.factor.solve(self.u[:k])
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
        xn = self.x[pset] + self.factor.solve(self.factor.solve_transposed(r))
        if (xn > 0.0).all() and np.isfinite(xn).all():
            self.x[pset] = xn

    def start(self, x0: np.ndarray | None, strict: bool = False) -> bool:
        """Warm start: the positive entries of ``x0`` form the initial passive set.

        With ``strict``, gives up (returns False, state left empty) if those columns
        are linearly dependent."""
        if x0 is None:
            return True
        first = np.flatnonzero((x0 > 0.0) & self.valid)
        if first.size:
            self.x[first] = x0[first]
            if not self.rebuild(first, strict=strict):
                return False
            self.inner(None)
        return True

    def run(self) -> bool:  # one loop of the active-set method; split, its state would scatter
        """Outer Lawson-Hanson loop until the dual tolerance is met (returns True) or
        ``self.iterations`` reaches ``self.max_iter`` (returns False)."""
        n, s, x, b = self.n, self.s, self.x, self.b
        dep_blocked, neg_blocked = self.dep_blocked, self.neg_blocked
        excluded = ~self.valid
        bscale_noise = float(np.max(np.abs(b) / s, initial=0.0))
        refactored = False
        while True:
            w = self.dual()
            ws = w / s
            k = self.k
            pset = self.pidx[:k]
            xs_l1 = float(np.dot(x[pset], s[pset]))
            # The computed dual carries rounding noise ~ eps (|b| + |G| |x|); never
            # ask for more than a generous multiple of it.
            tol_eff = max(self.tol_abs, 64.0 * _EPS * (bscale_noise + xs_l1))
            if k and self.factor.stale and not refactored:
                # Safety net: the updated factor must still solve G_PP x_P = b_P.
                if float(np.max(np.abs(ws[pset]))) > tol_eff:
                    refactored = True
                    self.rebuild(pset)
                    self.inner(None)
                    continue
            cand = np.where(self.in_p | dep_blocked | neg_blocked | excluded, -np.inf, ws)
            # Candidates for this round, best first.  Classic Lawson-Hanson takes
            # only the best one; taking a few more (each re-checked against the
            # current dual, O(k)) amortises the O(n k) full dual over several
            # additions without losing the descent / termination guarantees.
            nb = min(self.gram.batch, max(1, n // 64))
            if nb == 1:
                batch = np.array([int(np.argmax(cand))])
            else:
                top = np.argpartition(cand, n - nb)[n - nb :]
                batch = top[np.argsort(cand[top])[::-1]]
            batch = batch[cand[batch] > tol_eff]
            if batch.size == 0:
                return True
            if self.iterations >= self.max_iter:
                return False
            self.gram.prefetch(batch)
            for pos, j in enumerate(batch):
                j = int(j)
                if self.iterations >= self.max_iter:
                    break
                if pos:
                    if self.in_p[j] or neg_blocked[j] or dep_blocked[j]:
                        continue
                    kk = self.k
                    wj = b[j] - float(self.gram.entries(j, self.pidx[:kk]) @ x[self.pidx[:kk]])
                    if not wj / s[j] > tol_eff:
                        continue
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

    def result(self) -> np.ndarray:
        """Refined, non-negative solution (n,)."""
        self.refine()
        out = np.where(self.in_p, np.maximum(self.x, 0.0), 0.0)
        if not np.isfinite(out).all():  # defensive, never seen: a bug to report, not bad input
            raise FloatingPointError("NNLS produced non-finite weights")
        return out

    def solve(self, x0: np.ndarray | None) -> np.ndarray:
        self.start(x0)
        self.run()
        return self.result()


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
    return _active_set(DenseGram(G), b, x0, tol, max_iter)


def _active_set(gram: DenseGram | RowGram, b: np.ndarray, x0: np.ndarray | None,
                tol: float, max_iter: int | None) -> np.ndarray:
    """Lawson-Hanson on checked inputs (n >= 1), ``tol`` relative to the largest scaled
    ``|b|``; the solve both public functions run."""
    n = b.shape[0]
    s, valid, _, bscale = _diagonal_scaling(gram.diag, b)
    if bscale == 0.0:
        return np.zeros(n)
    lh = _LawsonHanson(gram, b, s, valid, tol * bscale,
                       3 * n + 10 if max_iter is None else int(max_iter))
    return lh.solve(x0)


def nnls_rows(
    A: np.ndarray,
    b: np.ndarray,
    *,
    x0: np.ndarray | None = None,
    tol: float = 1e-10,
    max_iter: int | None = None,
    keep_float64: bool = False,
) -> np.ndarray:
    """:func:`nnls_gram` for ``G = A A^T`` given the float32 rows ``A`` (n, D) instead of
    G: ``min ||A^T x - y||, x >= 0`` with ``b = A y``. Memory ``O(n D + |P|^2)`` instead of
    ``O(n^2)``: the factor of the passive set is the only square matrix held, and with
    more rows than dimensions ``|P| <= D``. Every entry of G is the float64 product of
    two rows (``nnls_gram`` of the float64 Gram matrix of these rows, not of a float32 one).
    ``keep_float64`` holds a float64 copy of the rows (n D 8 bytes) instead of converting
    ``ROWS_BLOCK`` of them on every pass: faster, where that memory is affordable."""
    A = np.asarray(A)
    b = np.asarray(b, dtype=np.float64)
    if A.ndim != 2 or b.shape != (A.shape[0],):
        raise ValueError(f"A must be (n, D) and b (n,), got {A.shape} and {b.shape}")
    if not (np.isfinite(b).all() and np.isfinite(A).all()):
        raise ValueError("A and b must be finite")
    n = b.shape[0]
    x0 = _warm(x0, n)
    if n == 0:
        return np.zeros(0)
    return _active_set(RowGram(A, keep_float64), b, x0, tol, max_iter)

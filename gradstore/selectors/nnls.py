"""Non-negative least squares (NNLS) solvers, mostly in Gram form.

The problems solved here are

.. math:: \\min_{x \\ge 0} \\tfrac12 x^T G x - b^T x,

with ``G = A.T @ A`` (symmetric positive semi-definite, possibly singular) and
``b = A.T @ y``; this is the same as ``min ||A x - y||_2`` subject to ``x >= 0``.

* :func:`nnls_gram` -- Lawson-Hanson active set, exact to tolerance, warm-startable.
  The Cholesky factor of ``G[P, P]`` is updated in place (adding a column: one
  triangular solve; removing one: a blocked, vectorised rank-one update of the
  trailing part), columns that are linearly dependent on ``P`` are never added,
  and the ``O(n |P|)`` dual ``b - G x`` is shared by up to ``_MAX_BATCH``
  additions.  Adding one column to a solved problem and warm-starting from the
  old solution typically costs one factorisation and two inner solves.
(An accelerated projected-gradient solver and an automatic front end, which nothing
in the package uses, live in the tests as ``tests/selectors/nnls_reference.py``.)

All decisions (which column enters, dependence tests, stopping rules) are made on
the diagonally scaled problem ``D^{-1/2} G D^{-1/2}``, ``D = diag(G)``, so the
solvers are invariant to the scale of ``A`` and of ``y`` and to column norms.
Columns with ``G_jj == 0`` (zero columns of ``A``) always get weight 0.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import as_strided
from scipy.linalg import LinAlgError
from scipy.linalg.blas import dtbsv
from scipy.linalg.lapack import dpotrf, dpstrf

__all__ = ["nnls_gram", "nnls_rows"]

_EPS = float(np.finfo(np.float64).eps)
#: A candidate column j is linearly dependent on the passive set when its Schur
#: complement ``G_jj - G_jP G_PP^{-1} G_Pj`` is at most this times ``G_jj``.
_DEP_TOL = 1e-12
#: At most this many columns are added per full dual evaluation.
_MAX_BATCH = 32
#: Column block size of the factor update after a removal.
_DEL_BLOCK = 128


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #
GRAM_DTYPES = (np.float32, np.float64)
"""Dtypes a Gram matrix is used in as given; every value is read into float64 arithmetic,
so a float32 Gram (products computed in float32 anyway) gives the float64 answer on the
same values, in half the memory."""
GRAM_BLOCK = 256
"""Rows of G read at a time where a whole-G temporary would be made (the finiteness check's
booleans, :func:`gram_times`'s float64 rows)."""


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
def gram_times(G: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``G @ x`` in float64; a float32 ``G`` is read ``GRAM_BLOCK`` rows at a time (no
    float64 copy of it)."""
    if G.dtype == np.float64:
        return G @ x
    out = np.empty(G.shape[0])
    for r in range(0, G.shape[0], GRAM_BLOCK):
        out[r : r + GRAM_BLOCK] = G[r : r + GRAM_BLOCK].astype(np.float64) @ x
    return out


class _DenseGram:
    """Entries of a Gram matrix held in memory (float32 or float64)."""

    holds_rows = True  # copying rows of G is cheap: the solver caches the passive ones
    batch = _MAX_BATCH

    def __init__(self, G: np.ndarray) -> None:
        self.G = G
        self.rank_bound = len(G)
        self.diag = np.diagonal(G).astype(np.float64)

    def prefetch(self, cols: np.ndarray) -> None:
        """Nothing to do: every entry is at hand."""

    def entries(self, j: int, idx: np.ndarray) -> np.ndarray:
        return np.asarray(self.G[j, idx], dtype=np.float64)

    def row(self, j: int) -> np.ndarray:
        return self.G[j]

    def rows(self, idx: np.ndarray) -> np.ndarray:
        return self.G[idx]

    def block(self, cols: np.ndarray) -> np.ndarray:
        """``G[cols, cols]`` as a new float64 array."""
        return self.G[np.ix_(cols, cols)].astype(np.float64, copy=False)

    def times(self, x: np.ndarray) -> np.ndarray:
        return gram_times(self.G, x)


ROWS_BLOCK = 64
"""Rows of ``A`` a :class:`_RowGram` converts to float64 at a time."""
WIDE_BATCH = 128
"""Columns added per dual evaluation when a :class:`_RowGram` holds its rows in float64."""


class _RowGram:
    """The entries of ``G = A A^T`` computed from float32 rows ``A`` (n, D) when needed,
    never the n x n matrix. Every entry is a float64 product of two float32 rows (exact to
    float64 rounding, with no float32 rounding of the products). Memory: the rows,
    ``ROWS_BLOCK`` of them in float64 at a time (all of them, held in float64, with
    ``keep_float64``), and the rows of G of one batch of entering columns; the solver
    holds no rows of G (``holds_rows``) and takes its dual as ``A (A^T x)``."""

    holds_rows = False

    def __init__(self, A: np.ndarray, keep_float64: bool = False) -> None:
        self.A = A.astype(np.float64) if keep_float64 else A
        # held in float64, the rows need no conversion: one block, and more entering
        # columns share each pass over them
        self.rows_per_block = max(1, len(A)) if keep_float64 else ROWS_BLOCK
        self.batch = WIDE_BATCH if keep_float64 else _MAX_BATCH
        n = len(A)
        self.rank_bound = min(A.shape)  # no more passive columns than G's rank
        self.diag = np.zeros(n)
        for s, blk in self._all_blocks():
            self.diag[s : s + len(blk)] = np.einsum("ij,ij->i", blk, blk)
        self.cached: dict[int, np.ndarray] = {}

    def _blocks(self, idx: np.ndarray):
        for s in range(0, len(idx), self.rows_per_block):
            yield self.A[idx[s : s + self.rows_per_block]].astype(np.float64, copy=False)

    def _all_blocks(self):
        """(first row, float64 block) over every row."""
        for s in range(0, len(self.A), self.rows_per_block):
            yield s, self.A[s : s + self.rows_per_block].astype(np.float64, copy=False)

    def _products(self, left: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """``A[left] A[cols]^T`` in float64 (``left``: a block's length at most)."""
        out = np.empty((len(left), len(cols)))
        rows = self.A[left].astype(np.float64, copy=False)
        step = self.rows_per_block
        for s, blk in zip(range(0, len(cols), step), self._blocks(cols), strict=True):
            out[:, s : s + len(blk)] = rows @ blk.T
        return out

    def prefetch(self, cols: np.ndarray) -> None:
        """The rows of G of ``cols`` (the columns about to enter), in one pass over A."""
        cols = np.asarray(cols, dtype=np.intp)
        rows = np.empty((len(cols), len(self.A)))
        left = self.A[cols].astype(np.float64, copy=False)
        for s, blk in self._all_blocks():
            rows[:, s : s + len(blk)] = left @ blk.T
        self.cached = {int(j): rows[i] for i, j in enumerate(cols)}

    def entries(self, j: int, idx: np.ndarray) -> np.ndarray:
        if j in self.cached:
            return self.cached[j][idx]
        return self._products(np.array([j]), np.asarray(idx, dtype=np.intp))[0]

    def block(self, cols: np.ndarray) -> np.ndarray:
        """``G[cols, cols]`` as a new float64 array, a block of rows at a time; in Fortran
        order, so that LAPACK factors it in place."""
        cols = np.asarray(cols, dtype=np.intp)
        out = np.empty((len(cols), len(cols)), order="F")
        step = self.rows_per_block
        for s in range(0, len(cols), step):
            out[s : s + step] = self._products(cols[s : s + step], cols)
        return out

    def times(self, x: np.ndarray) -> np.ndarray:
        """``A (A^T x)`` in float64, ``A^T x`` over the rows where ``x`` is non-zero."""
        nz = np.flatnonzero(x)
        v = np.zeros(self.A.shape[1])
        for s, blk in zip(range(0, len(nz), self.rows_per_block), self._blocks(nz), strict=True):
            v += x[nz[s : s + self.rows_per_block]] @ blk
        out = np.empty(len(self.A))
        for s, blk in self._all_blocks():
            out[s : s + len(blk)] = blk @ v
        return out


class _LawsonHanson:
    """State of one Lawson-Hanson solve.

    The passive set is ``pidx[:k]`` (in factor order).  The upper Cholesky factor
    ``R`` (``R^T R = G[P, P]``) lives in ``ab``, a Fortran-ordered ``(cap, cap)``
    array in LAPACK upper band storage with ``kd = cap - 1``: column ``j`` of ``R``
    (rows ``0..j``) sits in the last ``j + 1`` rows of column ``j`` of ``ab``.  So
    ``ab[:, :k]`` is contiguous and is passed to BLAS ``dtbsv`` without a copy,
    appending a column is a contiguous write, and a removal is a few strided block
    moves.  ``u = R^{-T} b_P`` is kept so that ``z = G_PP^{-1} b_P = R^{-1} u``
    costs one triangular solve.  ``gp[:k]`` holds the rows ``G[j]`` of the passive
    columns (in slot order ``gp_idx``) for the dual ``w = b - G[:, P] x_P``; once
    P grows past n / 2 that copy is dropped and the dual is ``b - G x``.
    """

    def __init__(self, G, b, s, valid, tol_abs, max_iter):
        # G: a Gram matrix, or the access to its entries (_DenseGram, _RowGram)
        self.gram = G if isinstance(G, (_DenseGram, _RowGram)) else _DenseGram(G)
        self.b, self.s, self.valid = b, s, valid
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
        self.ab = np.zeros((0, 0), order="F")
        self.flat = self.ab.ravel(order="F")
        self.gp = np.zeros((0, n)) if self.gram.holds_rows else None
        self.gp_idx = np.zeros(n, dtype=np.intp)
        self.slot = np.full(n, -1, dtype=np.intp)
        self.stale = False  # factor modified by updates since the last rebuild
        # Columns that may not enter for now: dependent on P (cleared when P loses
        # a column) or rejected with a non-positive weight (cleared when x moves).
        self.dep_blocked = np.zeros(n, dtype=bool)
        self.neg_blocked = np.zeros(n, dtype=bool)
        self.iterations = 0
        self.inner_solves = 0

    # ----- storage ---------------------------------------------------------- #
    def _reserve(self, k: int) -> None:
        if k <= self.cap:
            return
        # double, but not past the rank the rows allow (a factor's growth holds old and new)
        cap = min(self.n, max(k, min(self.gram.rank_bound, 2 * self.cap), 32))
        ab = np.zeros((cap, cap), order="F")
        if self.k:
            ab[cap - self.cap :, : self.k] = self.ab[:, : self.k]
        if self.gp is not None:
            if cap <= self.n // 2:
                gp = np.empty((cap, self.n))
                gp[: self.k] = self.gp[: self.k]
                self.gp = gp
            else:
                self.gp = None  # k n > n^2 / 2: the full product is as cheap
        self.ab, self.cap = ab, cap
        self.flat = ab.ravel(order="F")  # a view: ab is Fortran-contiguous

    def _square(self, i0: int, j0: int, rows: int, cols: int) -> np.ndarray:
        """Strided view ``V`` with ``V[r, c]`` at the storage place of ``R[i0+r, j0+c]``.

        Entries with ``i0 + r > j0 + c`` alias unused padding of later columns; this
        is harmless for ``rows <= k - j0`` (see ``_delete_pos``)."""
        cap = self.cap
        start = cap - 1 + i0 + j0 * (cap - 1)
        return as_strided(
            self.flat[start:], shape=(rows, cols), strides=(8, 8 * (cap - 1)), writeable=True
        )

    def _fwd(self, rhs: np.ndarray) -> np.ndarray:
        """``R^{-T} rhs`` for the current factor (rhs has length k)."""
        if self.k == 0:
            return np.zeros(0)
        return dtbsv(self.cap - 1, self.ab[:, : self.k], rhs, lower=0, trans=1)

    def _bwd(self, rhs: np.ndarray) -> np.ndarray:
        """``R^{-1} rhs`` for the current factor (rhs has length k)."""
        if self.k == 0:
            return np.zeros(0)
        return dtbsv(self.cap - 1, self.ab[:, : self.k], rhs, lower=0, trans=0)

    def _gp_add(self, j: int) -> None:
        if self.gp is None:
            return
        sl = self.k  # slots are compact: 0..k-1 are used
        self.gp[sl] = self.gram.row(j)
        self.gp_idx[sl] = j
        self.slot[j] = sl

    def _gp_remove(self, j: int, last: int) -> None:
        """Free j's slot; ``last`` is the highest used slot before removal."""
        if self.gp is None:
            return
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
        g_jj = float(self.gram.diag[j])
        if k:
            r = self._fwd(self.gram.entries(j, self.pidx[:k]))
            schur = g_jj - float(r @ r)
        else:
            r = np.zeros(0)
            schur = g_jj
        if not schur > _DEP_TOL * g_jj:
            return False
        self._reserve(k + 1)
        rjj = math.sqrt(schur)
        col = self.ab[self.cap - 1 - k :, k]
        col[:k] = r
        col[k] = rjj
        self.u[k] = (self.b[j] - float(r @ self.u[:k])) / rjj
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
            mm = k - pos - 1
            # R = [[R11, r12, R13], [0, r22, v^T], [0, 0, R33]]; without column pos
            # the Gram matrix of the trailing block is R33^T R33 + v v^T.
            v = self._square(pos, pos + 1, 1, mm)[0].copy()
            # With p = R33^{-T} v the Cholesky factor of I + p p^T is
            # M = diag(d) + tril(p gamma^T, -1), t_i = 1 + sum_{l<=i} p_l^2,
            # d_i = sqrt(t_i / t_{i-1}), gamma_i = p_i / sqrt(t_i t_{i-1}), and the
            # new trailing factor is M^T R33:
            #   R33'[j, :] = d_j R33[j, :] + gamma_j sum_{l > j} p_l R33[l, :].
            # Band storage is invariant along diagonals, so ab[:, pos+1:k] is R33.
            cap = self.cap
            pv = dtbsv(cap - 1, self.ab[:, pos + 1 : k], v, lower=0, trans=1)
            t = 1.0 + np.cumsum(pv * pv)
            tprev = np.concatenate(([1.0], t[:-1]))
            dd = np.sqrt(t / tprev)
            gam = pv / np.sqrt(t * tprev)
            if pos:
                # R13 moves one column left: R[i, j] is stored at flat index
                # cap - 1 + i + j (cap - 1), so the whole block shifts by cap - 1.
                src_start = cap - 1 + (pos + 1) * (cap - 1)
                shape, strides = (mm, pos), (8 * (cap - 1), 8)
                src = as_strided(self.flat[src_start:], shape=shape, strides=strides).copy()
                dst = as_strided(
                    self.flat[src_start - (cap - 1) :], shape=shape, strides=strides, writeable=True
                )
                dst[...] = src
            # Update R33 in blocks of columns (only rows 0..c1-1 are non-zero) and
            # write R33' one row up and one column left.  Reading a block before
            # writing it is enough: a block only overwrites columns already read,
            # and the sub-diagonal part of a block write lands in padding rows that
            # hold no factor data (pos + r < cap - 1 for every row r written).
            for c0 in range(0, mm, _DEL_BLOCK):
                c1 = min(mm, c0 + _DEL_BLOCK)
                blk = np.triu(self._square(pos + 1, pos + 1 + c0, c1, c1 - c0), -c0)
                q = blk * pv[:c1, None]
                tail = np.cumsum(q[::-1], axis=0)[::-1]
                tail -= q
                tail *= gam[:c1, None]
                blk *= dd[:c1, None]
                blk += tail
                self._square(pos, pos + c0, c1, c1 - c0)[...] = blk
            self.pidx[pos : k - 1] = self.pidx[pos + 1 : k]
            self.stale = True
        self._gp_remove(j, k - 1)
        self.in_p[j] = False
        self.k = k - 1

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
        self.slot[self.pidx[: self.k]] = -1
        self.k = 0
        self.stale = False
        if cols.size == 0:
            return True
        cols = cols[np.argsort(-self.x[cols], kind="stable")]
        sc = self.s[cols]
        gs = self._scaled_block(cols, sc)
        c, info = dpotrf(gs, lower=0, clean=1, overwrite_a=1)  # in place if Fortran-ordered
        if info == 0 and float(np.min(np.diagonal(c))) ** 2 > _DEP_TOL:
            kept = cols
            rank = cols.size
            rfac = c
        elif strict:
            self.x[cols] = 0.0
            return False
        else:
            gs = self._scaled_block(cols, sc)  # dpotrf may have overwritten it
            c, piv, rank, info = dpstrf(gs, tol=_DEP_TOL, lower=0)
            if info < 0:  # pragma: no cover - invalid argument, should not happen
                raise LinAlgError(f"dpstrf failed with info={info}")
            rank = int(rank)
            order = piv[:rank] - 1
            kept = cols[order]
            sc = sc[order]
            rfac = np.triu(c[:rank, :rank])
            self.x[np.setdiff1d(cols, kept)] = 0.0
        if rank == 0:
            return True
        self._reserve(rank)
        rfac *= sc[None, :]
        self._square(0, 0, rank, rank)[...] = rfac
        self.pidx[:rank] = kept
        self.in_p[kept] = True
        if self.gp is not None:
            self.gp[:rank] = self.gram.rows(kept)
            self.gp_idx[:rank] = kept
            self.slot[kept] = np.arange(rank)
        self.k = rank
        self._refresh_u()
        return True

    def _scaled_block(self, cols: np.ndarray, sc: np.ndarray) -> np.ndarray:
        gs = self.gram.block(cols)
        gs /= sc[:, None]
        gs /= sc[None, :]
        return gs

    # ----- Lawson-Hanson --------------------------------------------------- #
    def dual(self) -> np.ndarray:
        k = self.k
        if k == 0:
            return self.b.copy()
        if self.gp is None:
            return self.b - self.gram.times(self.x)
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
            if k and self.stale and not refactored:
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
    return _active_set(_DenseGram(G), b, x0, tol, max_iter)


def _active_set(gram: _DenseGram | _RowGram, b: np.ndarray, x0: np.ndarray | None,
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
    return _active_set(_RowGram(A, keep_float64), b, x0, tol, max_iter)

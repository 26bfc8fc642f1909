"""An upper Cholesky factor that grows and shrinks one column at a time, in band storage.

:class:`BandCholesky` holds ``R`` with ``R^T R = G[P, P]`` for an ordered set of columns
``P`` of a symmetric positive definite matrix ``G`` (it never sees ``G`` itself; the caller
passes the new column's part of the factor). The operations the NNLS active set needs:

* append a last column of ``G`` (one triangular solve), refusing one that depends on
  the current columns,
* delete the column at any position: a blocked, vectorised rank-one update of the trailing
  part of the factor,
* load a whole factor computed elsewhere (after a refactorisation),
* the two triangular solves with ``R`` and ``R^T``.

:func:`factor_independent` computes a whole factor, leaving out columns that depend on
earlier ones (pivoted Cholesky), for :meth:`BandCholesky.load`.

Storage is LAPACK upper band storage with ``kd = cap - 1`` in a Fortran-ordered
``(cap, cap)`` array ``ab``: column ``j`` of ``R`` (rows ``0..j``) sits in the last
``j + 1`` rows of column ``j`` of ``ab``. So ``ab[:, :k]`` is contiguous and is passed to
BLAS ``dtbsv`` without a copy, appending a column is one contiguous write, and a deletion is
a few strided block moves. Entry ``R[i, j]`` is at flat (column-major) index
``cap - 1 + i + j (cap - 1)``: the storage is invariant along diagonals.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from numpy.lib.stride_tricks import as_strided
from scipy.linalg import LinAlgError
from scipy.linalg.blas import dtbsv
from scipy.linalg.lapack import dpotrf, dpstrf

__all__ = ["BandCholesky", "factor_independent"]

DELETE_BLOCK = 128
"""Columns of the trailing factor updated together after a deletion."""
MIN_CAPACITY = 32
"""Columns the storage holds at least, once it holds any."""


def factor_independent(make: Callable[[], np.ndarray], tol: float, pivot: bool = True
                       ) -> tuple[np.ndarray, np.ndarray] | None:
    """Upper Cholesky factor of a symmetric positive semi-definite matrix ``S`` with unit
    diagonal, over columns of it that are linearly independent.

    ``make()`` returns a new copy of ``S`` (in Fortran order it is factored in place; it is
    called a second time if the first try fails). Plain Cholesky is tried first; if it
    fails or a pivot is tiny (``R_jj^2 <= tol``), pivoted Cholesky with tolerance ``tol``
    picks the columns to keep -- unless ``pivot`` is False, and then None is returned.
    Returns ``(order, R)``: the kept columns' positions in ``S`` (all of them, in order,
    when plain Cholesky succeeds) and the upper factor ``R`` with
    ``R^T R = S[order, order]``."""
    c, info = dpotrf(make(), lower=0, clean=1, overwrite_a=1)
    if info == 0 and float(np.min(np.diagonal(c))) ** 2 > tol:
        return np.arange(len(c)), c
    if not pivot:
        return None
    c, piv, rank, info = dpstrf(make(), tol=tol, lower=0)
    if info < 0:  # pragma: no cover - invalid argument, should not happen
        raise LinAlgError(f"dpstrf failed with info={info}")
    rank = int(rank)
    return piv[:rank] - 1, np.triu(c[:rank, :rank])


class BandCholesky:
    """The upper Cholesky factor ``R`` (``k x k``) of an ordered set of at most ``limit``
    columns.

    ``limit`` bounds the size (the number of columns of ``G``); ``rank_bound`` (at most
    ``limit``) is the largest size expected, so the storage, which doubles when it runs out,
    never doubles past it unless asked to. ``stale`` tells whether the factor was changed by
    deletions since it was last loaded whole: the caller may want to check it against ``G``.
    """

    def __init__(self, limit: int, rank_bound: int | None = None) -> None:
        self.limit = limit
        self.rank_bound = limit if rank_bound is None else rank_bound
        self.k = 0
        self.cap = 0
        self.ab = np.zeros((0, 0), order="F")
        self.flat = self.ab.ravel(order="F")
        self.stale = False

    # ----- storage ---------------------------------------------------------- #
    def reserve(self, k: int) -> bool:
        """Make room for ``k`` columns (keeping the current ones); True if the storage grew."""
        if k <= self.cap:
            return False
        # double, but not past the rank bound (a factor's growth holds old and new)
        cap = min(self.limit, max(k, min(self.rank_bound, 2 * self.cap), MIN_CAPACITY))
        ab = np.zeros((cap, cap), order="F")
        if self.k:
            ab[cap - self.cap :, : self.k] = self.ab[:, : self.k]
        self.ab, self.cap = ab, cap
        self.flat = ab.ravel(order="F")  # a view: ab is Fortran-contiguous
        return True

    def view(self, i0: int, j0: int, rows: int, cols: int) -> np.ndarray:
        """Writable strided view ``V`` with ``V[r, c]`` at the storage place of
        ``R[i0 + r, j0 + c]``.

        Entries with ``i0 + r > j0 + c`` (below the diagonal) alias unused padding at the
        top of later columns; writing them is harmless for ``rows <= k - j0`` (see
        :meth:`delete`), and reading them gives whatever the padding holds."""
        cap = self.cap
        start = cap - 1 + i0 + j0 * (cap - 1)
        return as_strided(
            self.flat[start:], shape=(rows, cols), strides=(8, 8 * (cap - 1)), writeable=True
        )

    def upper(self) -> np.ndarray:
        """``R`` as a new dense ``(k, k)`` upper triangular array."""
        return np.triu(self.view(0, 0, self.k, self.k))

    # ----- solves ----------------------------------------------------------- #
    def solve_transposed(self, rhs: np.ndarray) -> np.ndarray:
        """``R^{-T} rhs`` (``rhs`` has length k)."""
        if self.k == 0:
            return np.zeros(0)
        return dtbsv(self.cap - 1, self.ab[:, : self.k], rhs, lower=0, trans=1)

    def solve(self, rhs: np.ndarray) -> np.ndarray:
        """``R^{-1} rhs`` (``rhs`` has length k)."""
        if self.k == 0:
            return np.zeros(0)
        return dtbsv(self.cap - 1, self.ab[:, : self.k], rhs, lower=0, trans=0)

    # ----- updates ---------------------------------------------------------- #
    def clear(self) -> None:
        """Hold no columns (the storage is kept); the factor is no longer stale."""
        self.k = 0
        self.stale = False

    def load(self, R: np.ndarray) -> None:
        """Replace the factor by the upper triangular ``R`` (``m x m``, only its upper
        triangle is read); the factor is no longer stale."""
        m = len(R)
        self.clear()
        if m == 0:
            return
        self.reserve(m)
        self.view(0, 0, m, m)[...] = R
        self.k = m

    def add_column(self, g: np.ndarray, g_jj: float, tol: float
                   ) -> tuple[np.ndarray, float] | None:
        """Append a column ``j`` of ``G`` from its entries ``g = G[P, j]`` in the current
        columns and its diagonal entry ``g_jj``; returns the new column of ``R`` as
        ``(r, R_jj)``. A column whose Schur complement ``g_jj - r^T r`` is at most
        ``tol g_jj`` (dependent on the current columns, to that tolerance) is refused:
        None, and the factor is unchanged."""
        r = self.solve_transposed(g)
        schur = g_jj - float(r @ r)
        if not schur > tol * g_jj:
            return None
        diagonal = math.sqrt(schur)
        self.append(r, diagonal)
        return r, diagonal

    def append(self, r: np.ndarray, diagonal: float) -> None:
        """Add a last column ``[r; diagonal]`` to ``R``.

        For a new column ``g`` of ``G`` (its entries in the current columns) and its
        diagonal entry ``g_jj``, ``r = R^{-T} g`` (:meth:`solve_transposed`) and
        ``diagonal = sqrt(g_jj - r^T r)``, which must be positive."""
        k = self.k
        self.reserve(k + 1)
        col = self.ab[self.cap - 1 - k :, k]
        col[:k] = r
        col[k] = diagonal
        self.k = k + 1

    def delete(self, pos: int) -> None:
        """Remove the column at position ``pos``: afterwards ``R^T R`` is ``G[P', P']`` with
        ``P'`` the columns in the same order without that one. Deleting the last column
        costs nothing; any other marks the factor stale."""
        k = self.k
        if pos < k - 1:
            self._downdate_trailing(pos)
            self.stale = True
        self.k = k - 1

    def _downdate_trailing(self, pos: int) -> None:
        """Move ``R13`` one column left and replace ``R33`` by the factor of
        ``R33^T R33 + v v^T`` one row up and one column left (see :meth:`delete`)."""
        k, cap = self.k, self.cap
        mm = k - pos - 1
        # R = [[R11, r12, R13], [0, r22, v^T], [0, 0, R33]]; without column pos
        # the Gram matrix of the trailing block is R33^T R33 + v v^T.
        v = self.view(pos, pos + 1, 1, mm)[0].copy()
        # With p = R33^{-T} v the Cholesky factor of I + p p^T is
        # M = diag(d) + tril(p gamma^T, -1), t_i = 1 + sum_{l<=i} p_l^2,
        # d_i = sqrt(t_i / t_{i-1}), gamma_i = p_i / sqrt(t_i t_{i-1}), and the
        # new trailing factor is M^T R33:
        #   R33'[j, :] = d_j R33[j, :] + gamma_j sum_{l > j} p_l R33[l, :].
        # Band storage is invariant along diagonals, so ab[:, pos+1:k] is R33.
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
        for c0 in range(0, mm, DELETE_BLOCK):
            c1 = min(mm, c0 + DELETE_BLOCK)
            blk = np.triu(self.view(pos + 1, pos + 1 + c0, c1, c1 - c0), -c0)
            q = blk * pv[:c1, None]
            tail = np.cumsum(q[::-1], axis=0)[::-1]
            tail -= q
            tail *= gam[:c1, None]
            blk *= dd[:c1, None]
            blk += tail
            self.view(pos, pos + c0, c1, c1 - c0)[...] = blk

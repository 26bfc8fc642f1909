"""Access to the entries of a Gram matrix ``G`` for the NNLS active set (:mod:`.nnls`).

* :class:`DenseGram` -- ``G`` held in memory (float32 or float64);
* :class:`RowGram` -- ``G = A A^T`` computed from the rows ``A`` when needed, never the
  ``n x n`` matrix;
* :class:`PassiveRows` -- the rows ``G[j]`` of the passive columns, kept while they are
  cheap to hold, so that the dual ``b - G x`` costs ``O(n |P|)`` instead of ``O(n^2)``.

Both accesses answer the same questions: the diagonal, entries ``G[j, idx]``, a square
block ``G[cols, cols]`` and the product ``G x``, each in float64. (:mod:`.gram_cache` is a
different thing: the Gram matrix of a pursuit's candidate set kept between scans.)
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

__all__ = ["DenseGram", "PassiveRows", "RowGram", "gram_times", "scaled_block"]

GRAM_DTYPES = (np.float32, np.float64)
"""Dtypes a Gram matrix is used in as given; every value is read into float64 arithmetic,
so a float32 Gram (products computed in float32 anyway) gives the float64 answer on the
same values, in half the memory."""
GRAM_BLOCK = 256
"""Rows of G read at a time where a whole-G temporary would be made (the finiteness check's
booleans, :func:`gram_times`'s float64 rows)."""
MAX_BATCH = 32
"""Columns the active set adds at most per full dual evaluation (its default)."""
ROWS_BLOCK = 64
"""Rows of ``A`` a :class:`RowGram` converts to float64 at a time."""
WIDE_BATCH = 128
"""Columns added per dual evaluation when a :class:`RowGram` holds its rows in float64."""


def gram_times(G: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``G @ x`` in float64; a float32 ``G`` is read ``GRAM_BLOCK`` rows at a time (no
    float64 copy of it)."""
    if G.dtype == np.float64:
        return G @ x
    out = np.empty(G.shape[0])
    for r in range(0, G.shape[0], GRAM_BLOCK):
        out[r : r + GRAM_BLOCK] = G[r : r + GRAM_BLOCK].astype(np.float64) @ x
    return out


def scaled_block(gram: DenseGram | RowGram, cols: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``G[cols, cols] / (scale scale^T)`` as a new float64 array (in Fortran order from a
    :class:`RowGram`)."""
    gs = gram.block(cols)
    gs /= scale[:, None]
    gs /= scale[None, :]
    return gs


class DenseGram:
    """Entries of a Gram matrix held in memory (float32 or float64)."""

    holds_rows = True  # copying rows of G is cheap: the solver caches the passive ones
    batch = MAX_BATCH

    def __init__(self, G: np.ndarray) -> None:
        self.G = G
        self.rank_bound = len(G)
        self.diag = np.diagonal(G).astype(np.float64)

    def prefetch(self, cols: np.ndarray) -> None:
        """Nothing to do: every entry is at hand."""

    def entries(self, j: int, idx: np.ndarray) -> np.ndarray:
        """``G[j, idx]`` in float64."""
        return np.asarray(self.G[j, idx], dtype=np.float64)

    def row(self, j: int) -> np.ndarray:
        """Row ``G[j]`` (a view, in G's dtype)."""
        return self.G[j]

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """Rows ``G[idx]`` (a copy, in G's dtype)."""
        return self.G[idx]

    def block(self, cols: np.ndarray) -> np.ndarray:
        """``G[cols, cols]`` as a new float64 array."""
        return self.G[np.ix_(cols, cols)].astype(np.float64, copy=False)

    def times(self, x: np.ndarray) -> np.ndarray:
        """``G x`` in float64."""
        return gram_times(self.G, x)


class RowGram:
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
        self.batch = WIDE_BATCH if keep_float64 else MAX_BATCH
        n = len(A)
        self.rank_bound = min(A.shape)  # no more passive columns than G's rank
        self.diag = np.zeros(n)
        for s, blk in self._all_blocks():
            self.diag[s : s + len(blk)] = np.einsum("ij,ij->i", blk, blk)
        self.cached: dict[int, np.ndarray] = {}

    def _blocks(self, idx: np.ndarray) -> Iterator[np.ndarray]:
        for s in range(0, len(idx), self.rows_per_block):
            yield self.A[idx[s : s + self.rows_per_block]].astype(np.float64, copy=False)

    def _all_blocks(self) -> Iterator[tuple[int, np.ndarray]]:
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
        """``G[j, idx]`` in float64, from the prefetched rows where ``j`` is one of them."""
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


class PassiveRows:
    """The rows ``G[j]`` of the passive columns, one slot each, slots ``0..k-1`` in use.

    Held only for a :class:`DenseGram` (``holds_rows``) and only while there are at most
    ``n / 2`` slots: past that, ``k n`` entries cost as much as the full product ``G x``,
    and the rows are dropped for good (``held`` turns False; every method then does
    nothing). The caller keeps the slot count in step with its passive set (``k`` below).
    """

    def __init__(self, gram: DenseGram | RowGram) -> None:
        self.gram = gram
        n = len(gram.diag)
        self.n = n
        self.rows: np.ndarray | None = np.zeros((0, n)) if gram.holds_rows else None
        self.idx = np.zeros(n, dtype=np.intp)  # column held in each slot
        self.slot = np.full(n, -1, dtype=np.intp)  # slot of each column, -1 for none

    @property
    def held(self) -> bool:
        return self.rows is not None

    def fit(self, cap: int, k: int) -> None:
        """Room for ``cap`` slots, keeping the first ``k``; drops the rows for good if
        ``cap`` is over ``n / 2``."""
        if self.rows is None or cap <= len(self.rows):
            return
        if cap <= self.n // 2:
            rows = np.empty((cap, self.n))
            rows[:k] = self.rows[:k]
            self.rows = rows
        else:
            self.rows = None  # k n > n^2 / 2: the full product is as cheap

    def add(self, j: int, k: int) -> None:
        """Hold ``G[j]`` in slot ``k`` (the first free one; room must have been made)."""
        if self.rows is None:
            return
        self.rows[k] = self.gram.row(j)
        self.idx[k] = j
        self.slot[j] = k

    def remove(self, j: int, last: int) -> None:
        """Free j's slot; ``last`` is the highest slot in use before the removal (its row
        moves into the freed slot)."""
        if self.rows is None:
            return
        sl = self.slot[j]
        if sl != last:
            jj = self.idx[last]
            self.rows[sl] = self.rows[last]
            self.idx[sl] = jj
            self.slot[jj] = sl
        self.slot[j] = -1

    def forget(self, cols: np.ndarray) -> None:
        """Free the slots of ``cols`` without moving any row (before a :meth:`load`)."""
        self.slot[cols] = -1

    def load(self, cols: np.ndarray) -> None:
        """Hold the rows of ``cols`` in slots ``0..len(cols)-1`` (room must have been
        made)."""
        if self.rows is None:
            return
        m = len(cols)
        self.rows[:m] = self.gram.rows(cols)
        self.idx[:m] = cols
        self.slot[cols] = np.arange(m)

    def dual(self, b: np.ndarray, x: np.ndarray, k: int) -> np.ndarray:
        """``b - G x`` for an ``x`` that is zero outside the ``k`` passive columns: from
        the held rows, or (once they are dropped) from the Gram access's ``G x``."""
        if k == 0:
            return b.copy()
        if self.rows is None:
            return b - self.gram.times(x)
        return b - x[self.idx[:k]] @ self.rows[:k]

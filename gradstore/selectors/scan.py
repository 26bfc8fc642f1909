"""Correlation scans ``A^T R`` over a gradient source, for many queries at once.

One pass over the pool serves every column of ``R``; each query keeps its own
running top-m. The same code runs on an in-RAM tensor and on record batches
streamed from Lance, so the two modes give the same candidates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from gradstore.errors import GradstoreError
from gradstore.selectors.source import GradientSource

POSITIVE = "positive"  # score = sum over the query's columns of max(c, 0); only score > 0 kept
MAXIMUM = "max"  # score = max over the query's columns (LESS's max over subtasks), any sign


class ScannedPool(Protocol):
    """What a scan reads of a pool (``StackedPool`` is one): its rows, and how each stored
    row maps into the stacked space."""

    source: GradientSource

    @property
    def num_rows(self) -> int: ...

    @property
    def multipliers_t(self) -> torch.Tensor:
        """(N, T) scale per row and checkpoint (checkpoint weight / row norm)."""
        ...

    def center_terms(self, R: torch.Tensor) -> torch.Tensor | None:
        """(T, C) what centring subtracts, or None."""
        ...


@dataclass
class ScanQuery:
    """One query of a scan: which columns of R are its, how many candidates to keep.

    Each row's score is the ``reduce`` of ``sign * (a_i . R[:, columns])`` over the
    columns, minus ``penalty[i]`` when given.
    """

    columns: slice
    m: int
    exclude: np.ndarray | None = None
    reduce: str = POSITIVE
    penalty: np.ndarray | None = None
    sign: float = 1.0


def _block_scores(
    block: torch.Tensor, mult: torch.Tensor, R: torch.Tensor, buf: torch.Tensor,
    center: torch.Tensor | None = None,
) -> torch.Tensor:
    """Correlations of one raw block (b, T*d) with R (T*d, C): (block * mult) @ R, (b, C).

    The per-row, per-checkpoint multipliers are applied while converting into the
    float32 buffer, so the product is one contiguous matmul (a strided per-checkpoint
    product ran ~5x slower here). A centred pool subtracts ``mult @ center`` (the
    centre's share of each correlation, ``center`` from ``StackedPool.center_terms``).
    """
    b, T = mult.shape
    x = buf[:b]
    x.copy_(block)  # float16 -> float32 into a reused buffer: faster than a fused mul
    x.view(b, T, -1).mul_(mult[:, :, None])
    out = x @ R
    if center is not None:
        out -= mult @ center
    return out


def _reduce(
    corr: torch.Tensor, queries: Sequence[ScanQuery], penalties: list[torch.Tensor | None],
    start: int,
) -> torch.Tensor:
    cols = []
    for q, pen in zip(queries, penalties, strict=True):
        c = corr[:, q.columns]
        if q.sign != 1.0:
            c = c * q.sign
        if q.reduce == POSITIVE:
            score = c.clamp(min=0).sum(1)
        else:
            score = c.max(1).values
        if pen is not None:
            score = score - pen[start : start + score.shape[0]]
        cols.append(score)
    return torch.stack(cols, 1)


def _not_finite(corr: torch.Tensor, start: int) -> GradstoreError:
    rows = (start + torch.nonzero(~torch.isfinite(corr).all(1)).flatten()).tolist()
    return GradstoreError(
        f"pool rows {rows[:5]} hold values that are not finite (NaN or inf): the table is "
        "damaged; run `gradstore verify STORE TABLE` and re-ingest or restore it"
    )


class _TopM:
    """The running top-m rows per query column, merging blocks' scores in large chunks
    (one ``topk`` per chunk of rows, not per block)."""

    def __init__(self, queries: int, m: int) -> None:
        self.m = m
        self.chunk_rows = max(65536, 4 * m)
        self.best_v = torch.full((0, queries), -torch.inf)
        self.best_i = torch.zeros((0, queries), dtype=torch.int64)
        self.buf_v: list[torch.Tensor] = []
        self.buf_start: list[int] = []
        self.buffered = 0

    def add(self, start: int, scores: torch.Tensor) -> None:
        self.buf_v.append(scores)
        self.buf_start.append(start)
        self.buffered += scores.shape[0]
        if self.buffered >= self.chunk_rows:
            self.merge()

    def merge(self) -> None:
        if not self.buf_v:
            return
        Q = self.best_v.shape[1]
        vals = torch.cat(self.buf_v, 0)
        idx = torch.cat([torch.arange(s, s + v.shape[0])
                         for s, v in zip(self.buf_start, self.buf_v, strict=True)])
        all_v = torch.cat([self.best_v, vals], 0)
        all_i = torch.cat([self.best_i, idx[:, None].expand(-1, Q)], 0)
        top_v, pos = torch.topk(all_v, min(self.m, all_v.shape[0]), dim=0)
        self.best_v, self.best_i = top_v, torch.gather(all_i, 0, pos)
        self.buf_v, self.buf_start, self.buffered = [], [], 0

    def result(self, j: int, q: ScanQuery) -> tuple[np.ndarray, np.ndarray]:
        """Query ``j``'s rows and scores, best first; equal scores by row, whatever the
        blocking (so parallel scans merge to the same answer)."""
        m = min(q.m, self.best_v.shape[0])
        v = self.best_v[:m, j].numpy()
        i = self.best_i[:m, j].numpy()
        ok = np.isfinite(v)
        if q.reduce == POSITIVE:
            ok &= v > 0
        i, v = i[ok].astype(np.int64), v[ok].astype(np.float32)
        order = np.lexsort((i, -v))
        return i[order], v[order]


def _exclusion_mask(num_rows: int, queries: Sequence[ScanQuery]) -> torch.Tensor | None:
    """(N, Q) True where a query excludes a row; None when none excludes any."""
    if not any(q.exclude is not None and len(q.exclude) for q in queries):
        return None
    mask = np.zeros((num_rows, len(queries)), dtype=bool)
    for j, q in enumerate(queries):
        if q.exclude is not None and len(q.exclude):
            mask[np.asarray(q.exclude, dtype=np.int64), j] = True
    return torch.from_numpy(mask)


def correlation_scan(
    pool: ScannedPool,
    R: np.ndarray,
    queries: Sequence[ScanQuery],
    *,
    progress: Callable[[int], None] | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Top-m rows of ``A^T R`` per query, in one pass over the pool.

    Parameters
    ----------
    pool : ScannedPool
        N stacked rows a_i of width D = T*d (a ``StackedPool``).
    R : (D, C) array
        Residual (or target) columns of all queries side by side.
    queries : sequence of ScanQuery
        Column groups of R; rows in ``exclude`` are never returned.

    Returns
    -------
    list of (rows, scores)
        Per query, int64 row positions and float32 scores, best first.
    """
    source = pool.source
    width = source.num_checkpoints * source.dim
    R = np.asarray(R, dtype=np.float32)
    if R.ndim == 1:
        R = R[:, None]
    if R.shape[0] != width:
        raise ValueError(f"R has {R.shape[0]} rows, the pool has width {width}")
    Rt = torch.from_numpy(np.ascontiguousarray(R))
    excl = _exclusion_mask(pool.num_rows, queries)
    penalties = [None if q.penalty is None else torch.from_numpy(np.asarray(q.penalty,
                 dtype=np.float32)) for q in queries]
    mult, center = pool.multipliers_t, pool.center_terms(Rt)
    top = _TopM(len(queries), max(1, max(min(q.m, pool.num_rows) for q in queries)))
    fbuf = torch.empty((source.block_rows, width))
    old_threads = torch.get_num_threads()
    try:
        if source.scan_threads:
            torch.set_num_threads(source.scan_threads)
        with torch.inference_mode():
            for start, block in source.iter_blocks(source.block_rows):
                b = block.shape[0]
                if fbuf.shape[0] < b:
                    fbuf = torch.empty((b, width))
                corr = _block_scores(block, mult[start : start + b], Rt, fbuf, center)
                if not bool(torch.isfinite(corr).all()):
                    raise _not_finite(corr, start)
                scores = _reduce(corr, queries, penalties, start)
                if excl is not None:
                    scores.masked_fill_(excl[start : start + b], -torch.inf)
                top.add(start, scores)
                if progress is not None:
                    progress(b)
            top.merge()
    finally:
        torch.set_num_threads(old_threads)
    return [top.result(j, q) for j, q in enumerate(queries)]

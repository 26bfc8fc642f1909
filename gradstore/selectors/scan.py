"""Correlation scans ``A^T R`` over a gradient source, for many queries at once.

One pass over the pool serves every column of ``R``; each query keeps its own
running top-m. The same code runs on an in-RAM tensor and on record batches
streamed from Lance, so the two modes give the same candidates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
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


PER_CHECKPOINT_COLUMNS = 4
"""Products with at most this many columns of R are taken one checkpoint at a time; wider
ones in one product over the whole block (see :func:`_block_scores`)."""


def _block_scores(
    block: torch.Tensor | list[torch.Tensor], mult: torch.Tensor, R: torch.Tensor,
    buf: torch.Tensor, center: torch.Tensor | None = None,
) -> torch.Tensor:
    """Correlations of one raw block (b, T*d) with R (T*d, C): (block * mult) @ R, (b, C).
    ``buf`` is a reused float32 buffer of at least b*T*d elements; a block comes as one
    (b, T*d) tensor (held in RAM) or as its T checkpoints' (b, d) arrays (streamed).

    Up to ``PER_CHECKPOINT_COLUMNS`` columns (one or a few targets), each checkpoint's rows
    are multiplied by its rows of R and the (b, C) products summed with the per-row,
    per-checkpoint multipliers: a streamed checkpoint is converted and multiplied while it
    is in cache, and the rows are never scaled. A block in RAM is converted whole (slicing
    its checkpoints before converting is slower) and each product reads its columns in
    place. With more columns the one product over the whole block is the faster, so wider
    R takes it, streamed or not (``benchmarks/selection_speed.py`` times both). Either way
    a streamed block and the same block in RAM take the same products in the same order
    (equal value for value), so an answer does not depend on whether the pool was
    streamed. A centred pool subtracts
    ``mult @ center`` (the centre's share of each correlation, ``center`` from
    ``StackedPool.center_terms``).
    """
    b, T = mult.shape
    d = R.shape[0] // T
    whole = buf.view(-1)[: b * T * d].view(b, T * d)
    if R.shape[1] > PER_CHECKPOINT_COLUMNS:
        if isinstance(block, list):
            for t, part in enumerate(block):
                whole[:, t * d : (t + 1) * d].copy_(part)
        else:
            whole.copy_(block)  # float16 -> float32 into a reused buffer
        whole.view(b, T, -1).mul_(mult[:, :, None])
        out = whole @ R
    else:
        out = torch.zeros((b, R.shape[1]), device=R.device)
        for t, x in enumerate(_checkpoints_float32(block, buf, whole, T, d)):
            out.addcmul_(x @ R[t * d : (t + 1) * d], mult[:, t : t + 1])
    if center is not None:
        out -= mult @ center
    return out


def _checkpoints_float32(block: torch.Tensor | list[torch.Tensor], buf: torch.Tensor,
                         whole: torch.Tensor, T: int, d: int):
    """Each checkpoint's (b, d) rows of ``block`` in float32: a streamed checkpoint
    converted into ``buf`` when its turn comes, a block in RAM converted into ``whole`` at
    once and read in place (see :func:`_block_scores`)."""
    if isinstance(block, list):
        x = buf.view(-1)[: block[0].shape[0] * d].view(-1, d)
        for part in block:
            x.copy_(part)
            yield x
    else:
        whole.copy_(block)
        for t in range(T):
            yield whole[:, t * d : (t + 1) * d]


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
    (one ``topk`` per chunk of rows, not per block), on the scan's device."""

    def __init__(self, queries: int, m: int, device: torch.device) -> None:
        self.m = m
        self.device = device
        self.chunk_rows = max(65536, 4 * m)
        self.best_v = torch.full((0, queries), -torch.inf, device=device)
        self.best_i = torch.zeros((0, queries), dtype=torch.int64, device=device)
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
        idx = torch.cat([torch.arange(s, s + v.shape[0], device=self.device)
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
        v = self.best_v[:m, j].cpu().numpy()
        i = self.best_i[:m, j].cpu().numpy()
        ok = np.isfinite(v)
        if q.reduce == POSITIVE:
            ok &= v > 0
        i, v = i[ok].astype(np.int64), v[ok].astype(np.float32)
        order = np.lexsort((i, -v))
        return i[order], v[order]


class ScanDevice:
    """Where scans run. On the CPU the pool's blocks are read as they come; on a GPU the
    pool's stored rows are copied there once and kept between scans when they take at most
    ``RESIDENT_SHARE`` of the device's free memory (a pursuit scans the same pool up to
    ``max_iter`` times), and are otherwise copied block by block as they are read. One pool
    is resident at a time. ``keep`` overrides that choice (True: always keep the pool on the
    device, also on the CPU; False: never)."""

    RESIDENT_SHARE = 0.5

    def __init__(self, device: torch.device | str = "cpu", keep: bool | None = None) -> None:
        self.device = torch.device(device)
        self.keep = keep
        self.resident: tuple[GradientSource, torch.Tensor] | None = None

    def _keeps(self, source: GradientSource) -> bool:
        if self.keep is not None:
            return self.keep
        if self.device.type != "cuda":
            return False
        need = source.num_rows * source.num_checkpoints * source.dim * source.dtype.itemsize
        free, _ = torch.cuda.mem_get_info(self.device)
        return need <= self.RESIDENT_SHARE * free

    def _hold(self, source: GradientSource, block_rows: int) -> torch.Tensor:
        width = source.num_checkpoints * source.dim
        held = torch.empty((source.num_rows, width), dtype=source.dtype, device=self.device)
        for start, block in source.iter_blocks(block_rows):
            held[start : start + block.shape[0]].copy_(block)
        return held

    def blocks(self, source: GradientSource, block_rows: int
               ) -> Iterator[tuple[int, torch.Tensor]]:
        """``(first_row, block)`` of ``source`` on this device, in row order."""
        if self.device.type == "cpu" and not self.keep:
            parts = getattr(source, "iter_parts", None)  # a streamed source's own arrays
            yield from (parts or source.iter_blocks)(block_rows)
            return
        if self.resident is None or self.resident[0] is not source:
            self.resident = None  # at most one pool held at a time
            if self._keeps(source):
                self.resident = (source, self._hold(source, block_rows))
        if self.resident is not None:
            held = self.resident[1]
            for start in range(0, held.shape[0], block_rows):
                yield start, held[start : start + block_rows]
            return
        for start, block in source.iter_blocks(block_rows):
            yield start, block.to(self.device, non_blocking=True)


CPU = ScanDevice("cpu")


def _exclusion_mask(num_rows: int, queries: Sequence[ScanQuery], device: torch.device
                    ) -> torch.Tensor | None:
    """(N, Q) True where a query excludes a row; None when none excludes any."""
    if not any(q.exclude is not None and len(q.exclude) for q in queries):
        return None
    mask = np.zeros((num_rows, len(queries)), dtype=bool)
    for j, q in enumerate(queries):
        if q.exclude is not None and len(q.exclude):
            mask[np.asarray(q.exclude, dtype=np.int64), j] = True
    return torch.from_numpy(mask).to(device)


def _scan_inputs(pool: ScannedPool, R: np.ndarray, queries: Sequence[ScanQuery],
                 device: torch.device) -> tuple:
    """What every block's product reads, on the scan's device: R (D, C), the rows'
    multipliers (N, T), the centre's terms (T, C) or None, each query's penalty (N,) or
    None, and the exclusion mask (N, Q) or None."""
    Rt = torch.from_numpy(np.ascontiguousarray(R))
    center = pool.center_terms(Rt)
    penalties = [None if q.penalty is None else torch.from_numpy(np.asarray(
        q.penalty, dtype=np.float32)).to(device) for q in queries]
    return (Rt.to(device), pool.multipliers_t.to(device),
            None if center is None else center.to(device), penalties,
            _exclusion_mask(pool.num_rows, queries, device))


def correlation_scan(
    pool: ScannedPool,
    R: np.ndarray,
    queries: Sequence[ScanQuery],
    *,
    progress: Callable[[int], None] | None = None,
    device: ScanDevice | None = None,
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
    device : ScanDevice, optional
        Where the products and the running top-m are computed (default: the CPU).

    Returns
    -------
    list of (rows, scores)
        Per query, int64 row positions and float32 scores, best first.
    """
    source = pool.source
    dev = CPU if device is None else device
    width = source.num_checkpoints * source.dim
    R = np.asarray(R, dtype=np.float32)
    if R.ndim == 1:
        R = R[:, None]
    if R.shape[0] != width:
        raise ValueError(f"R has {R.shape[0]} rows, the pool has width {width}")
    Rt, mult, center, penalties, excl = _scan_inputs(pool, R, queries, dev.device)
    top = _TopM(len(queries), max(1, max(min(q.m, pool.num_rows) for q in queries)), dev.device)
    fbuf = torch.empty((source.block_rows, width), device=dev.device)
    old_threads = torch.get_num_threads()
    try:
        if source.scan_threads:
            torch.set_num_threads(source.scan_threads)
        with torch.inference_mode():
            for start, block in dev.blocks(source, source.block_rows):
                b = (block[0] if isinstance(block, list) else block).shape[0]
                if fbuf.shape[0] < b:
                    fbuf = torch.empty((b, width), device=dev.device)
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

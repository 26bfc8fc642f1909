"""The stacked trajectory space: per-checkpoint normalisation and checkpoint weights.

Example i's stored row is ``[g_i^1; ...; g_i^T]``. Selectors work with
``a_i = [s_1 u(g_i^1 - c^1); ...; s_T u(g_i^T - c^T)]`` where ``u`` is unit
normalisation (on by default, as LESS), ``s_t = sqrt(eta_t)`` with ``eta`` the
checkpoint weights (learning rates) normalised to sum 1, so that
``<a_i, a_j> = sum_t eta_t cos(g_i^t - c^t, g_j^t - c^t)``, and ``c`` an optional
centre (default none). Centring on the pool's mean row removes the direction every
example shares: Adam-preconditioned rows are mostly the checkpoint's momentum
(``m / sqrt(v)``, the same for every example), which hides what sets them apart
(docs/selection.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
import torch

from gradstore.errors import GradstoreError
from gradstore.selectors.query import target_tolerance
from gradstore.selectors.scan import CPU, ScanDevice, ScanQuery, correlation_scan
from gradstore.selectors.source import GradientSource, TensorSource, stacked_norms


def checkpoint_scales(eta: np.ndarray | list[float] | None, num_checkpoints: int) -> np.ndarray:
    """``s_t = sqrt(eta_t / sum(eta))``; uniform when ``eta`` is None."""
    if eta is None:
        eta_arr = np.ones(num_checkpoints, dtype=np.float64)
    else:
        eta_arr = np.asarray(eta, dtype=np.float64).reshape(-1)
    if eta_arr.shape[0] != num_checkpoints:
        raise GradstoreError(
            f"{eta_arr.shape[0]} checkpoint weights given for {num_checkpoints} checkpoints; "
            "give one weight per checkpoint"
        )
    if not np.all(np.isfinite(eta_arr)) or np.any(eta_arr < 0) or eta_arr.sum() <= 0:
        raise GradstoreError(
            f"checkpoint weights {eta_arr.tolist()} must be finite, >= 0 and not all zero"
        )
    return np.sqrt(eta_arr / eta_arr.sum())


def row_scales(norms: np.ndarray, scales: np.ndarray, normalize: bool) -> np.ndarray:
    """Per-row, per-checkpoint multipliers (N, T) float32: s_t / ||g_i^t|| or s_t."""
    norms = np.asarray(norms, dtype=np.float32)
    if not normalize:
        return np.broadcast_to(scales.astype(np.float32), norms.shape).copy()
    with np.errstate(divide="ignore"):
        inv = np.where(norms > 0, 1.0 / norms, 0.0).astype(np.float32)
    return inv * scales.astype(np.float32)[None, :]


def stack_rows(
    rows: np.ndarray | torch.Tensor, scales: np.ndarray, normalize: bool, num_checkpoints: int
) -> np.ndarray:
    """Map raw stored rows (n, T*d) into the stacked space, float64 (n, T*d)."""
    x = torch.as_tensor(rows).float()
    norms = stacked_norms(x, num_checkpoints).numpy()
    mult = row_scales(norms, scales, normalize)
    n = x.shape[0]
    out = x.reshape(n, num_checkpoints, -1).double() * torch.from_numpy(mult).double()[:, :, None]
    return out.reshape(n, -1).numpy()


def raw_sum(pool: StackedPool) -> np.ndarray:
    """Sum of a pool's stored rows (no centre, no scaling), float64 (T*d,)."""
    total = torch.zeros(pool.width, dtype=torch.float64)
    for _, block in pool.source.iter_blocks(pool.source.block_rows):
        total += block.double().sum(0)
    return total.numpy()


def centered_norms(pool: StackedPool, center: np.ndarray) -> np.ndarray:
    """Per-checkpoint norms of ``g_i^t - c^t`` for a pool's stored rows, float32 (n, T)."""
    T = pool.source.num_checkpoints
    c = torch.from_numpy(np.asarray(center, dtype=np.float32))
    c2 = (c.reshape(T, -1).double() ** 2).sum(1)
    sq = torch.from_numpy(pool.source.row_norms().astype(np.float64)) ** 2
    out = np.empty((pool.num_rows, T), dtype=np.float32)
    for start, block in pool.source.iter_blocks(pool.source.block_rows):
        b = block.shape[0]
        dots = (block.float().reshape(b, T, -1) * c.reshape(1, T, -1)).sum(2).double()
        val = sq[start : start + b] - 2 * dots + c2[None, :]
        out[start : start + b] = val.clamp(min=0).sqrt().numpy()
    return out


class StackedPool:
    """A gradient source seen in the stacked, weighted, normalised (optionally centred) space.

    ``center`` (T*d,) is subtracted from every stored row before normalisation;
    ``norms`` (N, T) are the per-checkpoint norms of the (centred) rows when known.
    ``device`` is where its scans run (the other passes, and the fits, stay on the CPU).
    """

    def __init__(
        self,
        source: GradientSource,
        eta: np.ndarray | list[float] | None = None,
        normalize: bool = True,
        center: np.ndarray | None = None,
        norms: np.ndarray | None = None,
        *,
        device: ScanDevice | None = None,
    ) -> None:
        self.source = source
        self.device = CPU if device is None else device
        self.normalize = normalize
        self.eta = None if eta is None else [float(e) for e in np.asarray(eta).reshape(-1)]
        self.scales = checkpoint_scales(eta, source.num_checkpoints)
        self.center = None if center is None else np.asarray(center, dtype=np.float32)
        if norms is None:
            norms = source.row_norms() if center is None else centered_norms(self, center)
        self.norms = np.asarray(norms, dtype=np.float32)
        self.multipliers = row_scales(self.norms, self.scales, normalize)
        self._mult_t = torch.from_numpy(self.multipliers)
        self._center_t = None if center is None else torch.from_numpy(self.center)

    def centered(self) -> StackedPool:
        """This pool centred on its own mean stored row (two passes over it)."""
        bounds = self.pass_bounds()
        center = np.sum(self.map_parts(raw_sum, bounds), 0) / max(self.num_rows, 1)
        norms = np.concatenate(self.map_parts(partial(centered_norms, center=center), bounds))
        return self.with_center(center, norms)

    def pass_bounds(self) -> list[tuple[int, int]]:
        """The parts a full pass over the pool is split into (one here; one per task for a
        distributed pool)."""
        return [(0, self.num_rows)]

    def with_center(self, center: np.ndarray, norms: np.ndarray) -> StackedPool:
        return StackedPool(self.source, self.eta, self.normalize, center, norms,
                           device=self.device)

    @property
    def multipliers_t(self) -> torch.Tensor:
        """Per-row, per-checkpoint multipliers (N, T) float32: scale / norm."""
        return self._mult_t

    def center_terms(self, R: torch.Tensor) -> torch.Tensor | None:
        """``M[t, c] = <c^t, R^t_c>`` (T, C): what centring subtracts from a row's
        per-checkpoint correlations, or None for an uncentred pool."""
        if self._center_t is None:
            return None
        T = self.source.num_checkpoints
        return (self._center_t.reshape(T, -1, 1) * R.reshape(T, -1, R.shape[1])).sum(1)

    @property
    def num_rows(self) -> int:
        return self.source.num_rows

    @property
    def width(self) -> int:
        """Stacked dimension T*d."""
        return self.source.num_checkpoints * self.source.dim

    def scan(self, R: np.ndarray, queries: Sequence[ScanQuery], *,
             progress: Callable[[int], None] | None = None):
        """``correlation_scan`` over this pool (a distributed pool runs it as parallel tasks)."""
        return correlation_scan(self, R, queries, progress=progress, device=self.device)

    def part(self, start: int, stop: int) -> StackedPool:
        """Rows ``start:stop`` as a pool of their own, in the same stacked space."""
        return StackedPool(self.source.part(start, stop), self.eta, self.normalize,
                           self.center, self.norms[start:stop], device=self.device)

    def subset(self, positions: np.ndarray) -> StackedPool:
        """The rows at ``positions`` (in that order), held in RAM, in the same stacked space."""
        positions = np.asarray(positions, dtype=np.int64)
        raw = self.source.take(positions)
        if self.source.dtype == torch.float16:  # exact: the values were stored in float16
            raw = raw.half()
        stored_norms = self.source.row_norms()[positions]
        return StackedPool(
            TensorSource(raw, self.source.num_checkpoints, stored_norms), self.eta,
            self.normalize, self.center, self.norms[positions], device=self.device,
        )

    def map_parts(self, fn, bounds: list[tuple[int, int]], on_done=None,
                  per_part: list | None = None) -> list:
        """``fn(part)`` for each (start, stop) part, results in order (a distributed pool
        runs them as parallel tasks); ``on_done(rows)`` after each part. ``per_part``: one
        item for each part, passed as ``fn(part, item)``."""
        out = []
        for i, (a, b) in enumerate(bounds):
            # the whole pool is itself (its source's state, e.g. a spilled file, carries over)
            part = self if (a, b) == (0, self.num_rows) else self.part(a, b)
            out.append(fn(part) if per_part is None else fn(part, per_part[i]))
            if on_done is not None:
                on_done(b - a)
        return out

    def norm_key(self, row: int) -> bytes:
        """A row's per-checkpoint norms as bytes: equal for rows whose stored vectors are
        (the screen for exact copies)."""
        return self.norms[row].tobytes()

    def stored_copies(self, rows: np.ndarray, keys: dict[bytes, int]) -> np.ndarray:
        """Which of ``rows`` store exactly the vector of the row ``keys`` names for their
        :meth:`norm_key` (screened by the norms, then compared value by value: only rows
        with a named row's norms are read)."""
        twin = [keys.get(self.norm_key(int(r))) for r in rows]
        hits = np.array([t is not None for t in twin], dtype=bool)
        if not hits.any():
            return hits
        mine = self.source.take(np.asarray(rows)[hits])
        theirs = self.source.take(np.array([t for t in twin if t is not None], dtype=np.int64))
        hits[hits] = (mine == theirs).all(1).numpy()
        return hits

    def rows(self, positions: np.ndarray) -> torch.Tensor:
        """Stacked rows a_i for the given positions, float32 (n, T*d)."""
        positions = np.asarray(positions, dtype=np.int64)
        if len(positions) == 0:
            return torch.zeros((0, self.width))
        x = self.source.take(positions)  # a new float32 tensor: changed in place
        if x.dtype != torch.float32:
            x = x.float()
        if self._center_t is not None:
            x.sub_(self._center_t)
        n = x.shape[0]
        t = self.source.num_checkpoints
        mult = self._mult_t.index_select(0, torch.from_numpy(positions))
        x.view(n, t, -1).mul_(mult[:, :, None])
        return x

    def mean(self) -> np.ndarray:
        """The pool's mean stacked row (T*d,) float64: the in-domain target."""
        t = self.source.num_checkpoints
        total = torch.zeros(self.width, dtype=torch.float64)
        for start, block in self.source.iter_blocks(self.source.block_rows):
            b = block.shape[0]
            mult = self._mult_t[start : start + b]
            x = block.float()
            if self._center_t is not None:
                x = x - self._center_t
            x = x.reshape(b, t, -1) * mult[:, :, None]
            total += x.sum(0).reshape(-1).double()
        return (total / max(self.num_rows, 1)).numpy()

    def target_rows(self, rows: np.ndarray) -> np.ndarray:
        """A target's stored rows (n, T*d) in this pool's stacked space, float64."""
        raw = np.asarray(rows, dtype=np.float32)
        if self.center is not None:
            raw = raw - self.center
        return stack_rows(raw, self.scales, self.normalize, self.source.num_checkpoints)

    def target(self, rows: np.ndarray, labels: np.ndarray | None = None
               ) -> tuple[np.ndarray, float]:
        """Target columns ``Y`` (D, C) from a target's stored rows (n, T*d), in this pool's
        stacked space (its centre, scales and normalisation): their mean, or with subtask
        ``labels`` one column per subtask; and the standard error of that mean (the
        tolerance of gtp, ``target_tolerance``)."""
        stacked = self.target_rows(rows)
        if labels is None:
            Y = stacked.mean(0)[:, None]
        else:
            Y = np.stack([stacked[labels == key].mean(0) for key in np.unique(labels)], 1)
        return Y, target_tolerance(stacked, labels)

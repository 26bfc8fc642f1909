"""The stacked trajectory space: per-checkpoint normalisation and checkpoint weights.

Example i's stored row is ``[g_i^1; ...; g_i^T]``. Selectors work with
``a_i = [s_1 u(g_i^1); ...; s_T u(g_i^T)]`` where ``u`` is unit normalisation
(on by default, as LESS) and ``s_t = sqrt(eta_t)`` with ``eta`` the checkpoint
weights (learning rates) normalised to sum 1, so that
``<a_i, a_j> = sum_t eta_t cos(g_i^t, g_j^t)``.
"""

from __future__ import annotations

import numpy as np
import torch

from gradstore.errors import GradstoreError
from gradstore.selectors.source import DEFAULT_BLOCK_ROWS, GradientSource, stacked_norms


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


class StackedPool:
    """A gradient source seen in the stacked, weighted, normalised space."""

    def __init__(
        self,
        source: GradientSource,
        eta: np.ndarray | list[float] | None = None,
        normalize: bool = True,
    ) -> None:
        self.source = source
        self.normalize = normalize
        self.eta = None if eta is None else [float(e) for e in np.asarray(eta).reshape(-1)]
        self.scales = checkpoint_scales(eta, source.num_checkpoints)
        self.multipliers = row_scales(source.row_norms(), self.scales, normalize)
        self._mult_t = torch.from_numpy(self.multipliers)

    @property
    def num_rows(self) -> int:
        return self.source.num_rows

    @property
    def width(self) -> int:
        """Stacked dimension T*d."""
        return self.source.num_checkpoints * self.source.dim

    def scan(self, R: np.ndarray, queries, *, progress=None):
        """``correlation_scan`` over this pool (a distributed pool runs it as parallel tasks)."""
        from gradstore.selectors.scan import correlation_scan

        return correlation_scan(self, R, queries, progress=progress)

    def part(self, start: int, stop: int) -> StackedPool:
        """Rows ``start:stop`` as a pool of their own, in the same stacked space."""
        return StackedPool(self.source.part(start, stop), self.eta, self.normalize)

    def subset(self, positions: np.ndarray) -> StackedPool:
        """The rows at ``positions`` (in that order), held in RAM, in the same stacked space."""
        from gradstore.selectors.source import TensorSource

        positions = np.asarray(positions, dtype=np.int64)
        raw = self.source.take(positions)
        stored = getattr(self.source, "dtype", None) or getattr(self.source, "matrix", raw).dtype
        if stored == torch.float16:  # exact: the values were stored in float16
            raw = raw.half()
        norms = self.source.row_norms()[positions]
        return StackedPool(
            TensorSource(raw, self.source.num_checkpoints, norms), self.eta, self.normalize
        )

    def map_parts(self, fn, bounds: list[tuple[int, int]], on_done=None) -> list:
        """``fn(part)`` for each (start, stop) part, results in order (a distributed pool
        runs them as parallel tasks); ``on_done(rows)`` after each part."""
        out = []
        for a, b in bounds:
            out.append(fn(self.part(a, b)))
            if on_done is not None:
                on_done(b - a)
        return out

    def rows(self, positions: np.ndarray) -> torch.Tensor:
        """Stacked rows a_i for the given positions, float32 (n, T*d)."""
        positions = np.asarray(positions, dtype=np.int64)
        if len(positions) == 0:
            return torch.zeros((0, self.width))
        x = self.source.take(positions)
        n = x.shape[0]
        t = self.source.num_checkpoints
        mult = self._mult_t.index_select(0, torch.from_numpy(positions))
        return (x.reshape(n, t, -1) * mult[:, :, None]).reshape(n, -1)

    def mean(self) -> np.ndarray:
        """The pool's mean stacked row (T*d,) float64: the in-domain target."""
        t = self.source.num_checkpoints
        total = torch.zeros(self.width, dtype=torch.float64)
        block_rows = getattr(self.source, "block_rows", DEFAULT_BLOCK_ROWS)
        for start, block in self.source.iter_blocks(block_rows):
            b = block.shape[0]
            mult = self._mult_t[start : start + b]
            x = block.float().reshape(b, t, -1) * mult[:, :, None]
            total += x.sum(0).reshape(-1).double()
        return (total / max(self.num_rows, 1)).numpy()

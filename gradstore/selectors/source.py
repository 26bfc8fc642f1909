"""The gradient-source interface that selectors read, and its in-RAM implementation.

Selectors never import Lance: they read rows through this small interface, so the
same code runs on a numpy array in tests, a Lance table on disk, or one fragment
inside a Ray task.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import numpy as np
import torch

# Rows per block when a source does not say (``block_rows``): blocks that stay in cache
# keep the convert-scale-matmul loop at matmul speed.
DEFAULT_BLOCK_ROWS = 1024


@runtime_checkable
class GradientSource(Protocol):
    """Rows of stacked per-checkpoint gradients, shape (num_rows, num_checkpoints * dim).

    Row i holds ``[g_i^1; ...; g_i^T]`` exactly as stored (no normalisation, no
    checkpoint weights): the caller applies those.
    """

    @property
    def num_rows(self) -> int: ...

    @property
    def num_checkpoints(self) -> int: ...

    @property
    def dim(self) -> int:
        """Dimension of one checkpoint's (projected) gradient."""
        ...

    @property
    def dtype(self) -> torch.dtype:
        """How the values are stored: float16 or float32 (blocks come in this dtype)."""
        ...

    @property
    def block_rows(self) -> int:
        """Rows per block that a pass over this source reads fastest."""
        ...

    @property
    def scan_threads(self) -> int | None:
        """Torch threads during a pass (None: leave them); a streamed source leaves cores
        to its decoder."""
        ...

    def row_norms(self) -> np.ndarray:
        """Per-checkpoint L2 norms, float32 of shape (num_rows, num_checkpoints)."""
        ...

    def iter_blocks(self, block_rows: int) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield ``(first_row, block)``: a (b, T*d) float16/float32 tensor, in row order.
        A source may also offer ``iter_parts(block_rows)``, the same blocks as lists of
        the T checkpoints' (b, d) tensors without the side-by-side copy; a CPU scan reads
        those when it can (``LanceSource`` does)."""
        ...

    def take(self, rows: np.ndarray) -> torch.Tensor:
        """Rows at the given positions, float32 tensor of shape (len(rows), T*d), in that order."""
        ...

    def part(self, start: int, stop: int) -> GradientSource:
        """Rows ``start:stop`` as a source of their own."""
        ...


def stacked_norms(block: torch.Tensor, num_checkpoints: int) -> torch.Tensor:
    """Per-checkpoint L2 norms of a (b, T*d) block, float32 (b, T)."""
    b = block.shape[0]
    x = block.reshape(b, num_checkpoints, -1).float()
    return torch.linalg.vector_norm(x, dim=2)


class TensorSource:
    """A pool held in memory as one (N, T*d) float16 or float32 torch tensor.

    Loaded once and reused across queries: the in-RAM scan mode.
    """

    def __init__(
        self,
        matrix: torch.Tensor | np.ndarray,
        num_checkpoints: int = 1,
        norms: np.ndarray | None = None,
    ) -> None:
        if isinstance(matrix, np.ndarray):
            matrix = torch.from_numpy(np.ascontiguousarray(matrix))
        if matrix.ndim != 2:
            raise ValueError(f"expected a 2-D matrix, got shape {tuple(matrix.shape)}")
        if matrix.dtype not in (torch.float16, torch.float32):
            matrix = matrix.float()
        if matrix.shape[1] % num_checkpoints:
            raise ValueError(
                f"row width {matrix.shape[1]} is not a multiple of {num_checkpoints} checkpoints"
            )
        self.matrix = matrix.contiguous()
        self._T = num_checkpoints
        self._norms: np.ndarray | None = norms  # known norms (e.g. stored with the table)

    @property
    def num_rows(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def num_checkpoints(self) -> int:
        return self._T

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1]) // self._T

    @property
    def dtype(self) -> torch.dtype:
        return self.matrix.dtype

    block_rows = DEFAULT_BLOCK_ROWS
    scan_threads = None  # in RAM: no decoder to leave a core to

    def row_norms(self) -> np.ndarray:
        if self._norms is None:
            out = np.empty((self.num_rows, self._T), dtype=np.float32)
            for start, block in self.iter_blocks(8192):
                out[start : start + block.shape[0]] = stacked_norms(block, self._T).numpy()
            self._norms = out
        return self._norms

    def iter_blocks(self, block_rows: int) -> Iterator[tuple[int, torch.Tensor]]:
        for start in range(0, self.num_rows, block_rows):
            yield start, self.matrix[start : start + block_rows]

    def take(self, rows: np.ndarray) -> torch.Tensor:
        index = torch.as_tensor(np.asarray(rows, dtype=np.int64))
        return self.matrix.index_select(0, index).float()

    def part(self, start: int, stop: int) -> TensorSource:
        """Rows ``start:stop`` as a source of their own (a view, no copy)."""
        norms = None if self._norms is None else self._norms[start:stop]
        return TensorSource(self.matrix[start:stop], self._T, norms)

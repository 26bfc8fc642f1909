"""Factored (two-sided, Kronecker) projection of per-example gradients, module by module.

A linear module's weight gradient for one example is ``G = sum_t g_t x_t^T`` (out, in),
with ``x_t`` the module's input at token t and ``g_t`` the gradient of the loss with respect
to its output. The factored projection stores, per module, the first ``k`` entries
(row-major) of ``L G R^T = sum_t (L g_t)(R x_t)^T``, a (d_L, d_R) block: computed from the
tokens (``project_tokens``), the (out, in) gradient is never formed and the cost is
``T (out d_L + in d_R + d_L d_R)`` per example instead of ``out in (T + d)``. The blocks of
all modules, in the order of the flat gradient (``named_parameters``), make the vector.
Applied to formed gradients (``project``), it is the same linear map; gradient types that
transform ``G`` entry by entry (adam, sign) are projected that way.

Layout, a pure function of the modules' shapes and ``dim`` (``factored_layout``):

* A parameter of shape (a, b) is an (a, b) matrix; (n,) is (n, 1); (a, b, c, ...) is
  (a, b c ...).
* Shares: ``dim`` is split as evenly as the modules' sizes allow (water-filling). Take
  the modules in order of size ``out * in`` (ties: by position); while the smallest left
  fits within ``floor(dims left / modules left)``, it gets its full size; the remaining
  modules then get that floor, and the first ``dims left % modules left`` of them, by
  position, one more. The shares add up to ``dim`` exactly, which must lie in
  ``[modules, P]``.
* Block of a share ``k``: ``d_L = min(out, isqrt(k))`` and ``d_R = ceil(k / d_L)``; where
  ``d_R`` would exceed ``in``, ``d_R = in`` and ``d_L = ceil(k / in)``. So
  ``d_L d_R >= k``, with fewer than ``d_L`` entries computed and not kept.

Matrices, a pure function of (seed, module position, shapes, block): module ``m``'s left
matrix (d_L, out) and right matrix (d_R, in) are sign matrices drawn from the streams
``SeedSequence([seed, m, FACTORED_LEFT_TAG])`` and ``[seed, m, FACTORED_RIGHT_TAG]``.
Bit convention: a (D, n) sign matrix takes ``w = ceil(n / 64)`` words per row; entry
``(i, c)`` is ``-1`` if bit ``c % 64`` (bit 0 = least significant) of word
``i * w + c // 64`` is set, else ``+1``. An entry depends on (seed, m, side, n, i, c) only,
so a larger block extends a smaller one by rows. The left matrix carries the scale
``1 / sqrt(k)``, the right none: each kept entry is ``(l_i^T G r_j) / sqrt(k)`` with ±1
vectors, so ``E |projected block|^2 = |G|_F^2`` for every module, as for the other kinds.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from gradstore.errors import GradstoreError
from gradstore.grads.projection_common import (
    FACTORED_LEFT_TAG,
    FACTORED_RIGHT_TAG,
    check_count,
    check_grads,
    check_rows,
    raw_words,
)
from gradstore.store.meta import ProjectionSpec


@dataclass(frozen=True)
class ModuleBlock:
    """One module's place in the flat gradient and in the projected vector."""

    rows: int
    """The gradient matrix's rows (a linear module's output size)."""
    cols: int
    """Its columns (the input size)."""
    left: int
    """d_L: rows of the projected block."""
    right: int
    """d_R: columns of the projected block."""
    dim: int
    """k: entries of the block kept (the first k, row-major)."""
    input_offset: int
    """Where the module's gradient starts in the flat gradient."""
    offset: int
    """Where its k entries start in the projected vector."""


def matrix_shape(shape: Sequence[int]) -> tuple[int, int]:
    """A parameter's shape as the (rows, cols) of its gradient matrix."""
    dims = [check_count("module shape entry", int(n)) for n in shape]
    if not dims:
        return 1, 1
    return dims[0], math.prod(dims[1:])


def module_shares(sizes: Sequence[int], dim: int) -> list[int]:
    """``dim`` split over modules of ``sizes`` entries: even, capped by each size."""
    if not len(sizes) <= dim <= sum(sizes):
        raise GradstoreError(
            f"a factored projection to {dim} dims over {len(sizes)} modules of "
            f"{sum(sizes)} gradient entries needs {len(sizes)} <= dim <= {sum(sizes)}; "
            "choose --proj-dim in that range"
        )
    shares = [0] * len(sizes)
    left, order = dim, sorted(range(len(sizes)), key=lambda m: (sizes[m], m))
    while order and sizes[order[0]] <= left // len(order):
        m = order.pop(0)
        shares[m] = sizes[m]
        left -= sizes[m]
    if order:
        even, extra = divmod(left, len(order))
        for rank, m in enumerate(sorted(order)):
            shares[m] = even + (1 if rank < extra else 0)
    return shares


def block_shape(share: int, rows: int, cols: int) -> tuple[int, int]:
    """(d_L, d_R) of a block that holds ``share`` entries (see the module docstring)."""
    left = min(rows, math.isqrt(share))
    right = -(-share // left)
    if right > cols:
        right, left = cols, -(-share // cols)
    return left, right


def factored_layout(module_shapes: Sequence[Sequence[int]], dim: int) -> list[ModuleBlock]:
    """Each module's block, in the order given (the flat gradient's order)."""
    if not module_shapes:
        raise GradstoreError("a factored projection needs at least one module")
    shapes = [matrix_shape(s) for s in module_shapes]
    shares = module_shares([r * c for r, c in shapes], dim)
    blocks, input_offset, offset = [], 0, 0
    for (rows, cols), share in zip(shapes, shares, strict=True):
        left, right = block_shape(share, rows, cols)
        blocks.append(ModuleBlock(rows, cols, left, right, share, input_offset, offset))
        input_offset += rows * cols
        offset += share
    return blocks


def layout_fingerprint(blocks: Sequence[ModuleBlock]) -> str:
    """``"<M> modules sha256:<16 hex>"`` over every module's shape and block."""
    text = ";".join(f"{b.rows}x{b.cols}>{b.left}x{b.right}:{b.dim}" for b in blocks)
    return f"{len(blocks)} modules sha256:{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def sign_matrix(seed: int, module: int, tag: int, rows: int, cols: int) -> torch.Tensor:
    """The (rows, cols) ±1 float32 matrix of one stream (bit convention: module docstring)."""
    words_per_row = -(-cols // 64)
    words = raw_words(seed, module, tag, rows * words_per_row)
    bits = np.unpackbits(words.view(np.uint8), bitorder="little")
    bits = bits.reshape(rows, words_per_row * 64)[:, :cols]
    return torch.from_numpy(1.0 - 2.0 * bits.astype(np.float32))


class FactoredProjector:
    """Per-module ``L G R^T`` blocks of (B, P) per-example gradients, concatenated."""

    def __init__(self, module_shapes: Sequence[Sequence[int]], dim: int, seed: int) -> None:
        dim = check_count("dim", dim)
        seed = check_count("seed", seed, minimum=0)
        self.blocks = factored_layout(module_shapes, dim)
        input_dim = sum(b.rows * b.cols for b in self.blocks)
        self.spec = ProjectionSpec("factored", seed, dim, input_dim, None,
                                   layout_fingerprint(self.blocks))
        self._matrices: dict[torch.device, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def module_matrices(self, module: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Module ``module``'s left (d_L, out) and right (d_R, in) matrices, float32 CPU."""
        b = self.blocks[module]
        left = sign_matrix(self.spec.seed, module, FACTORED_LEFT_TAG, b.left, b.rows)
        right = sign_matrix(self.spec.seed, module, FACTORED_RIGHT_TAG, b.right, b.cols)
        return left / math.sqrt(b.dim), right

    def _on(self, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if device not in self._matrices:
            cpu = self._matrices.get(torch.device("cpu")) or [
                self.module_matrices(m) for m in range(len(self.blocks))
            ]
            self._matrices[torch.device("cpu")] = cpu
            self._matrices[device] = [(left.to(device), right.to(device)) for left, right in cpu]
        return self._matrices[device]

    def matrix_rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of the whole (input_dim, dim) matrix, float32 on the CPU (the
        projections of unit gradients: meant for checks on small models)."""
        check_rows(start, stop, self.spec.input_dim)
        units = torch.zeros(stop - start, self.spec.input_dim, dtype=torch.float32)
        units[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
        return self.project(units)

    def project(self, grads: torch.Tensor) -> torch.Tensor:
        """Project formed (B, input_dim) gradients to (B, dim) float32 on the same device."""
        grads = check_grads(grads, self.spec.input_dim)
        out = torch.empty(grads.shape[0], self.spec.dim, dtype=torch.float32, device=grads.device)
        for b, (left, right) in zip(self.blocks, self._on(grads.device), strict=True):
            g = grads[:, b.input_offset : b.input_offset + b.rows * b.cols]
            g = g.reshape(-1, b.rows, b.cols)
            # the cheaper association of L G R^T
            if b.left * b.cols * (b.rows + b.right) <= b.rows * b.right * (b.cols + b.left):
                block = torch.matmul(torch.matmul(left, g), right.T)
            else:
                block = torch.matmul(left, torch.matmul(g, right.T))
            out[:, b.offset : b.offset + b.dim] = block.flatten(1)[:, : b.dim]
        return out

    def project_tokens(
        self, module: int, grad_out: torch.Tensor, inputs: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One module's (B, k) block from its per-token output gradients (B, T, out) and
        inputs (B, T, in), without forming G; tokens where ``mask`` (B, T) is 0 add nothing."""
        b = self.blocks[module]
        if grad_out.shape[-1] != b.rows or inputs.shape[-1] != b.cols:
            raise GradstoreError(
                f"module {module} of the factored projection is {b.rows}x{b.cols}, but its "
                f"hooks saw outputs of width {grad_out.shape[-1]} and inputs of width "
                f"{inputs.shape[-1]}; build the projector from this model's parameters"
            )
        left, right = self._on(inputs.device)[module]
        lg = torch.matmul(grad_out.float(), left.T)  # (B, T, d_L)
        rx = torch.matmul(inputs.float(), right.T)  # (B, T, d_R)
        if mask is not None:
            rx = rx * mask.to(rx.dtype).unsqueeze(-1)
        return torch.bmm(lg.transpose(1, 2), rx).flatten(1)[:, : b.dim]

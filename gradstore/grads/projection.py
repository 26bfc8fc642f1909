"""Random projections of per-example gradients, (B, P) -> (B, d).

A projection is a pure function of its ``ProjectionSpec`` (kind, seed, input_dim, dim, nnz,
and for ``factored`` the modules' layout): pool and target gradients projected in
different runs, batch sizes or machines agree. Randomness comes from ``PCG64.random_raw``
seeded by ``SeedSequence([seed, block_index, kind_tag])`` (``projection_common.raw_words``)
for fixed blocks of ``BLOCK_ROWS`` input coordinates; both are stable across numpy
versions and platforms. The factored kind, per module and computable from the tokens
without forming the gradient, is defined in ``factored_projection``.

Rademacher bit convention: for input coordinate ``i`` (block ``b = i // BLOCK_ROWS``, row
``r = i % BLOCK_ROWS``) and output column ``j``, let ``w`` be word
``(j // 64) * BLOCK_ROWS + r`` of block ``b``'s raw stream. Then
``M[i, j] = (-1) ** ((w >> (j % 64)) & 1) / sqrt(d)`` (bit 0 = least significant bit).
The sign of an entry depends on (seed, i, j) only, never on d or P.

CountSketch convention: coordinate ``i`` uses words ``r * nnz + s`` (s < nnz) of block ``b``'s
stream. Output columns are split into nnz segments ``[s*d//nnz, (s+1)*d//nnz)``; nonzero ``s``
lands in segment ``s`` at offset ``((w >> 32) * width_s) >> 32`` (so the nnz buckets are
distinct), with value ``(-1) ** (w & 1) / sqrt(nnz)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol

import numpy as np
import torch

from gradstore.choices import PROJECTION_KINDS
from gradstore.errors import GradstoreError
from gradstore.grads.factored_projection import FactoredProjector
from gradstore.grads.projection_common import (
    COUNTSKETCH_TAG,
    RADEMACHER_TAG,
    check_count,
    check_grads,
    check_rows,
    raw_words,
)
from gradstore.store.meta import ProjectionSpec

BLOCK_ROWS = 1024  # input coordinates per generator block; part of the projection's definition
_EXPAND_ROWS = 256  # rows expanded to floats per matmul (cache-sized; affects only rounding)
_SCATTER_COLUMNS = 16384  # input coordinates per index_add_ (bounds the temporary)
LAYOUT_SEPARATOR = "; "  # between a factored layout and the parameter set in a spec's layout


class Projector(Protocol):
    """Maps per-example gradients (B, input_dim) to (B, dim) float32 on the input's device."""

    spec: ProjectionSpec

    def project(self, grads: torch.Tensor) -> torch.Tensor: ...


class RademacherProjector:
    """Dense ±1/sqrt(dim) matrix (input_dim, dim), generated block by block, never stored."""

    def __init__(self, input_dim: int, dim: int, seed: int) -> None:
        input_dim = check_count("input_dim", input_dim)
        dim = check_count("dim", dim)
        seed = check_count("seed", seed, minimum=0)
        self.spec = ProjectionSpec("rademacher", seed, dim, input_dim, None)
        self.words_per_row = -(-dim // 64)
        bits = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1, bitorder="little")
        # byte value -> its 8 entries, bit k of the byte -> entry k
        self._byte_table = torch.from_numpy((1.0 - 2.0 * bits).astype(np.float32) / math.sqrt(dim))

    def _block_bytes(self, block_index: int) -> torch.Tensor:
        """Sign bytes of one block, (BLOCK_ROWS, words_per_row * 8) uint8 on the CPU."""
        words = raw_words(
            self.spec.seed, block_index, RADEMACHER_TAG, self.words_per_row * BLOCK_ROWS
        )
        by_word_column = words.view(np.uint8).reshape(self.words_per_row, BLOCK_ROWS, 8)
        return torch.from_numpy(np.ascontiguousarray(by_word_column.transpose(1, 0, 2))).view(
            BLOCK_ROWS, -1
        )

    def matrix_rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of the projection matrix, (stop - start, dim) float32 on the CPU."""
        check_rows(start, stop, self.spec.input_dim)
        parts = []
        for block_index in range(start // BLOCK_ROWS, -(-stop // BLOCK_ROWS)):
            first = block_index * BLOCK_ROWS
            sign_bytes = self._block_bytes(block_index)[max(start - first, 0) : stop - first]
            expanded = torch.index_select(self._byte_table, 0, sign_bytes.reshape(-1).int())
            parts.append(expanded.view(sign_bytes.shape[0], -1)[:, : self.spec.dim])
        return torch.cat(parts) if parts else torch.zeros(0, self.spec.dim, dtype=torch.float32)

    def project(self, grads: torch.Tensor) -> torch.Tensor:
        """Project (B, input_dim) gradients to (B, dim) float32 on the same device."""
        grads = check_grads(grads, self.spec.input_dim)
        device, dim = grads.device, self.spec.dim
        out = torch.zeros(grads.shape[0], dim, dtype=torch.float32, device=device)
        table = self._byte_table.to(device)
        chunk = torch.empty(
            _EXPAND_ROWS, self.words_per_row * 64, dtype=torch.float32, device=device
        )
        for block_index in range(-(-self.spec.input_dim // BLOCK_ROWS)):
            first = block_index * BLOCK_ROWS
            rows = min(BLOCK_ROWS, self.spec.input_dim - first)
            sign_bytes = self._block_bytes(block_index)[:rows].to(device)
            for lo in range(0, rows, _EXPAND_ROWS):
                hi = min(lo + _EXPAND_ROWS, rows)
                block = chunk[: hi - lo]
                index = sign_bytes[lo:hi].reshape(-1).int()
                torch.index_select(table, 0, index, out=block.view(-1, 8))
                out.addmm_(grads[:, first + lo : first + hi], block[:, :dim])
        return out


class CountSketchProjector:
    """Sparse sign sketch: each input coordinate adds ±g/sqrt(nnz) to nnz distinct buckets."""

    def __init__(self, input_dim: int, dim: int, seed: int, nnz: int = 1) -> None:
        input_dim = check_count("input_dim", input_dim)
        dim = check_count("dim", dim)
        seed = check_count("seed", seed, minimum=0)
        nnz = check_count("nnz", nnz)
        if nnz > dim:
            raise GradstoreError(f"nnz={nnz} exceeds dim={dim}; use 1 <= nnz <= dim")
        if dim >= 2**32:
            raise GradstoreError(f"countsketch dim must be < 2**32, got {dim}")
        self.spec = ProjectionSpec("countsketch", seed, dim, input_dim, nnz)
        self._tables: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _cpu_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Buckets (nnz, input_dim) int64 and values (nnz, input_dim) float32."""
        spec = self.spec
        edges = np.array([s * spec.dim // spec.nnz for s in range(spec.nnz + 1)], dtype=np.uint64)
        starts, widths = edges[:-1], np.diff(edges)
        buckets = np.empty((spec.input_dim, spec.nnz), dtype=np.int64)
        negative = np.empty((spec.input_dim, spec.nnz), dtype=bool)
        for first in range(0, spec.input_dim, BLOCK_ROWS):
            rows = min(BLOCK_ROWS, spec.input_dim - first)
            words = raw_words(spec.seed, first // BLOCK_ROWS, COUNTSKETCH_TAG, rows * spec.nnz)
            words = words.reshape(rows, spec.nnz)
            offsets = ((words >> np.uint64(32)) * widths) >> np.uint64(32)
            buckets[first : first + rows] = starts + offsets
            negative[first : first + rows] = (words & np.uint64(1)).astype(bool)
        values = np.where(negative, -1.0, 1.0).astype(np.float32) / np.float32(math.sqrt(spec.nnz))
        return torch.from_numpy(buckets.T.copy()), torch.from_numpy(values.T.copy())

    def _device_tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._tables:
            cpu = self._tables.get(torch.device("cpu")) or self._cpu_tables()
            self._tables[torch.device("cpu")] = cpu
            self._tables[device] = (cpu[0].to(device), cpu[1].to(device))
        return self._tables[device]

    def matrix_rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of the sketch as a dense (stop - start, dim) float32 CPU tensor."""
        check_rows(start, stop, self.spec.input_dim)
        buckets, values = self._device_tables(torch.device("cpu"))
        rows = torch.zeros(stop - start, self.spec.dim, dtype=torch.float32)
        rows.scatter_(1, buckets[:, start:stop].T, values[:, start:stop].T)
        return rows

    def project(self, grads: torch.Tensor) -> torch.Tensor:
        """Project (B, input_dim) gradients to (B, dim) float32 on the same device."""
        grads = check_grads(grads, self.spec.input_dim)
        buckets, values = self._device_tables(grads.device)
        out = torch.zeros(grads.shape[0], self.spec.dim, dtype=torch.float32, device=grads.device)
        for lo in range(0, self.spec.input_dim, _SCATTER_COLUMNS):
            hi = min(lo + _SCATTER_COLUMNS, self.spec.input_dim)
            for s in range(self.spec.nnz):
                out.index_add_(1, buckets[s, lo:hi], grads[:, lo:hi] * values[s, lo:hi])
        return out


class IdentityProjector:
    """Kind "none": no projection, dim == input_dim."""

    def __init__(self, input_dim: int) -> None:
        input_dim = check_count("input_dim", input_dim)
        self.spec = ProjectionSpec("none", None, input_dim, input_dim, None)

    def matrix_rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of the identity, (stop - start, input_dim) float32."""
        check_rows(start, stop, self.spec.input_dim)
        return torch.eye(self.spec.input_dim, dtype=torch.float32)[start:stop]

    def project(self, grads: torch.Tensor) -> torch.Tensor:
        """Return the (B, input_dim) gradients as float32 (the input itself if already so)."""
        return check_grads(grads, self.spec.input_dim)


def make_projector(
    kind: str, input_dim: int, dim: int | None = 8192, seed: int = 0, nnz: int | None = None,
    module_shapes: Sequence[Sequence[int]] | None = None, parameter_set: str | None = None,
) -> Projector:
    """Build a projector; ``none`` ignores dim, seed and nnz; countsketch's nnz defaults to 1.

    ``module_shapes``: the trainable parameters' shapes in the flat gradient's order, which
    ``factored`` needs (their sizes must add up to ``input_dim``); the other kinds ignore it.
    ``parameter_set``: which base-model parameters the gradient's coordinates are
    (``param_selection.parameter_set_fingerprint``, for ``--params``), recorded in the spec's
    layout (after a factored layout's own, ``"; "`` between) so that tables over other
    parameters differ in their spec; the matrix does not depend on it.
    """
    projector = _projector(kind, input_dim, dim, seed, nnz, module_shapes)
    if parameter_set is not None:
        own = projector.spec.layout
        layout = parameter_set if own is None else f"{own}{LAYOUT_SEPARATOR}{parameter_set}"
        projector.spec = replace(projector.spec, layout=layout)
    return projector


def _projector(
    kind: str, input_dim: int, dim: int | None, seed: int, nnz: int | None,
    module_shapes: Sequence[Sequence[int]] | None,
) -> Projector:
    if kind not in PROJECTION_KINDS:
        raise GradstoreError(
            f"unknown projection kind {kind!r}; use one of {', '.join(PROJECTION_KINDS)}"
        )
    if kind == "none":
        return IdentityProjector(input_dim)
    if dim is None:
        raise GradstoreError(f"projection kind {kind!r} needs an output dim, got None")
    if kind == "countsketch":
        return CountSketchProjector(input_dim, dim, seed, 1 if nnz is None else nnz)
    if nnz is not None:
        raise GradstoreError(f"nnz={nnz!r} applies only to countsketch; leave it None for {kind}")
    if kind == "factored":
        return _factored(input_dim, dim, seed, module_shapes)
    return RademacherProjector(input_dim, dim, seed)


def _factored(
    input_dim: int, dim: int, seed: int, module_shapes: Sequence[Sequence[int]] | None
) -> FactoredProjector:
    input_dim = check_count("input_dim", input_dim)
    if module_shapes is None:
        raise GradstoreError(
            "a factored projection needs the shapes of the model's trainable parameters "
            "(module_shapes); without them use rademacher or countsketch"
        )
    projector = FactoredProjector(module_shapes, dim, seed)
    if projector.spec.input_dim != input_dim:
        raise GradstoreError(
            f"module shapes add up to {projector.spec.input_dim} gradient entries, not "
            f"input_dim={input_dim}; pass the shapes of every trainable parameter"
        )
    return projector


def projector_from_spec(
    spec: ProjectionSpec, module_shapes: Sequence[Sequence[int]] | None = None
) -> Projector:
    """Rebuild the projector a table's ``ProjectionSpec`` describes (``factored`` also
    needs the model's ``module_shapes``, checked against the spec's layout)."""
    if spec.input_dim is None:
        raise GradstoreError(
            f"projection spec {spec} has no input_dim; it cannot be reproduced, re-ingest "
            "with a known projection"
        )
    if spec.kind in ("rademacher", "countsketch", "factored") and spec.seed is None:
        raise GradstoreError(f"projection spec {spec} has no seed; it cannot be reproduced")
    seed = 0 if spec.seed is None else spec.seed
    layout = spec.layout or ""
    if spec.kind == "factored":
        layout = layout.partition(LAYOUT_SEPARATOR)[2]
    projector = make_projector(spec.kind, spec.input_dim, spec.dim, seed, spec.nnz,
                               module_shapes, layout or None)
    if spec.kind == "factored" and projector.spec != spec:
        raise GradstoreError(
            f"projection spec {spec} is not reproduced by these modules, which give "
            f"{projector.spec}; pass the shapes of the model the table was ingested with"
        )
    return projector

"""A pool on a Lance table whose scans and parts run as Ray tasks.

Each task opens the table at the driver's version (a fixed snapshot), reads one
contiguous row range across the table's fragments, checks it against its checksums
(damage is gradstore's one-line error on the driver, as without Ray), and runs the
unchanged selector code on it (``correlation_scan``, ``gtp``); the driver merges the
results. Only the residual columns go out and only the top-m rows per query come back,
so the traffic is independent of the pool size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gradstore.distributed.cluster import require_ray, task_env
from gradstore.errors import GradstoreError
from gradstore.selectors.partitioned import part_bounds
from gradstore.selectors.scan import ScanQuery, correlation_scan
from gradstore.selectors.stacked import StackedPool
from gradstore.store.integrity import reading
from gradstore.store.lance_source import LanceSource


@dataclass(frozen=True)
class TableSnapshot:
    """Where a task finds the pool: one version of one Lance table."""

    uri: str
    version: int
    columns: tuple[str, ...]
    dim: int
    eta: tuple[float, ...] | None
    normalize: bool
    positions: np.ndarray | None = None
    """Only these storage positions (a query's allowed rows); a part's ``start:stop`` then
    indexes them."""

    @property
    def table(self) -> str:
        return self.uri.rstrip("/").rsplit("/", 1)[-1].removesuffix(".lance")

    def open_part(self, start: int, stop: int, norms: np.ndarray,
                  center: tuple[np.ndarray, np.ndarray] | None) -> StackedPool:
        """Rows ``start:stop``; ``norms`` those of the stored rows, ``center`` the pool's
        centre and the part's centred norms (None: uncentred)."""
        import lance

        ds = lance.dataset(self.uri, version=self.version)  # (callers read inside `reading`)
        # every task checks what it reads against the checksums (the files may have changed
        # since the driver read them, or differ on another node)
        if self.positions is None:
            src = LanceSource(ds, list(self.columns), self.dim, (start, stop), norms,
                              name=self.table, verify=True)
        else:
            src = LanceSource(ds, list(self.columns), self.dim, None, norms, name=self.table,
                              verify=True, subset=self.positions[start:stop])
        eta = None if self.eta is None else list(self.eta)
        if center is None:
            return StackedPool(src, eta, self.normalize)
        return StackedPool(src, eta, self.normalize, center[0], center[1])


def _scan_part(snap: TableSnapshot, start: int, stop: int, norms: np.ndarray, center,
               R: np.ndarray, queries: list[ScanQuery]) -> list[tuple[np.ndarray, np.ndarray]]:
    with reading(snap.table):  # a Lance failure on the files is the user's one-line error
        return correlation_scan(snap.open_part(start, stop, norms, center), R, queries)


def _map_part(snap: TableSnapshot, start: int, stop: int, norms: np.ndarray, center,
              fn: Callable, args: tuple = ()) -> Any:
    with reading(snap.table):
        return fn(snap.open_part(start, stop, norms, center), *args)


def task_failure(exc: BaseException) -> BaseException:
    """What a failed task raised, when it is gradstore's own error (damage, bad input): the
    user then sees the same one line as without Ray, not Ray's traceback."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, GradstoreError) else exc


def _part_sum(part: StackedPool) -> np.ndarray:
    return part.mean() * part.num_rows


def _local_exclude(exclude: np.ndarray | None, start: int, stop: int) -> np.ndarray | None:
    if exclude is None or len(exclude) == 0:
        return None
    ex = np.asarray(exclude, dtype=np.int64)
    return ex[(ex >= start) & (ex < stop)] - start


class DistributedPool(StackedPool):
    """A :class:`StackedPool` whose full passes run as ``tasks`` parallel Ray tasks.

    Row access (``rows``, ``subset``) stays on the driver; ``scan``, ``mean`` and
    ``map_parts`` fan out over contiguous row ranges of the table.
    """

    def __init__(
        self,
        source: LanceSource,
        eta: np.ndarray | list[float] | None = None,
        normalize: bool = True,
        tasks: int = 2,
        center: np.ndarray | None = None,
        norms: np.ndarray | None = None,
    ) -> None:
        super().__init__(source, eta, normalize, center, norms)
        self._ray = require_ray()
        ds = source.dataset
        self.snapshot = TableSnapshot(
            uri=ds.uri, version=ds.version, columns=tuple(source.columns), dim=source.dim,
            eta=None if self.eta is None else tuple(self.eta), normalize=normalize,
            positions=source.positions,
        )
        self.tasks = max(1, int(tasks))
        self.bounds = part_bounds(self.num_rows, self.tasks)
        self._snap_ref = self._ray.put(self.snapshot)
        self._norm_refs = [self._ray.put(self._norms_of(a, b)) for a, b in self.bounds]
        self._center_refs = [None if center is None else
                             self._ray.put((self.center, self.norms[a:b])) for a, b in self.bounds]
        opts = {"num_cpus": 1, "runtime_env": task_env(), "max_retries": 2}
        self._scan_task = self._ray.remote(_scan_part).options(**opts)
        self._map_task = self._ray.remote(_map_part).options(**opts)

    def pass_bounds(self) -> list[tuple[int, int]]:
        return self.bounds

    def with_center(self, center: np.ndarray, norms: np.ndarray) -> DistributedPool:
        return DistributedPool(self.source, self.eta, self.normalize, self.tasks, center, norms)

    def _norms_of(self, start: int, stop: int) -> np.ndarray:
        return np.ascontiguousarray(self.source.row_norms()[start:stop])

    def _gather(self, futures: list, sizes: list[int], on_done: Callable[[int], None] | None):
        """Results in submission order, reporting each part's rows as it finishes."""
        ray = self._ray
        index = {f: i for i, f in enumerate(futures)}
        out: list[Any] = [None] * len(futures)
        pending = list(futures)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for f in done:
                try:
                    out[index[f]] = ray.get(f)
                except Exception as exc:  # noqa: BLE001 - a task's error, unwrapped
                    for other in pending:
                        ray.cancel(other)
                    failure = task_failure(exc)
                    if failure is exc:
                        raise
                    raise failure from None
                if on_done is not None:
                    on_done(sizes[index[f]])
        return out

    def scan(self, R: np.ndarray, queries: Sequence[ScanQuery], *, progress=None):
        R = np.ascontiguousarray(np.asarray(R, dtype=np.float32))
        if R.ndim == 1:
            R = R[:, None]
        if R.shape[0] != self.width:
            raise ValueError(f"R has {R.shape[0]} rows, the pool has width {self.width}")
        r_ref = self._ray.put(R)
        futures, sizes = [], []
        for (a, b), norms, center in zip(self.bounds, self._norm_refs, self._center_refs,
                                         strict=True):
            local = [ScanQuery(q.columns, q.m, _local_exclude(q.exclude, a, b), q.reduce,
                               None if q.penalty is None else q.penalty[a:b], q.sign)
                     for q in queries]
            futures.append(self._scan_task.remote(self._snap_ref, a, b, norms, center, r_ref,
                                                  local))
            sizes.append(b - a)
        parts = self._gather(futures, sizes, progress)
        merged = []
        for j, q in enumerate(queries):
            rows = np.concatenate([p[j][0] + a for p, (a, _) in zip(parts, self.bounds,
                                                                      strict=True)])
            scores = np.concatenate([p[j][1] for p in parts])
            order = np.lexsort((rows, -scores))[: min(q.m, self.num_rows)]  # best first
            merged.append((rows[order].astype(np.int64), scores[order].astype(np.float32)))
        return merged

    def mean(self) -> np.ndarray:
        sums = self.map_parts(_part_sum, self.bounds)
        return np.sum(sums, axis=0) / max(self.num_rows, 1)

    def map_parts(self, fn, bounds: list[tuple[int, int]], on_done=None,
                  per_part: list | None = None) -> list:
        center = None if self.center is None else self.center
        futures = [
            self._map_task.remote(self._snap_ref, a, b, self._norms_of(a, b),
                                  None if center is None else (center, self.norms[a:b]), fn,
                                  () if per_part is None else (per_part[i],))
            for i, (a, b) in enumerate(bounds)
        ]
        return self._gather(futures, [b - a for a, b in bounds], on_done)

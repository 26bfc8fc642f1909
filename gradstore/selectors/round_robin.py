"""Round-robin over the target's parts (the selection rule of RDS+, Ivison et al. 2025, and
of the greedy round-robin of Nayak et al. 2026).

Every pool row is scored against each part of the target (a subtask, or a cluster of the
target's rows), in a normalised space where inner products are cosines:

* ``mean``: the row's mean cosine with the part's rows, ``<a_i, mean_j y_j>`` (LESS's
  score against one subtask);
* ``max``: its largest cosine with any one of the part's rows.

Then the parts take turns, largest part first: each takes its best row that is neither
chosen already nor a copy of a chosen row (the same stored vector, or a cosine of at
least ``DUPLICATE_COSINE`` with one, the rule ``gtp`` follows). Every part so gets an equal
share of the budget, whatever its score scale, which is what keeps a small part of a
mixture from being crowded out by a large one.

The scores come from one correlation scan for every query (target and budget) at once,
the same scan as LESS's; a part whose list of candidates runs out before the budget is
filled is scanned again deeper, so the answer does not depend on how deep the first scan
looked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from gradstore.selectors.gtp import DUPLICATE_COSINE
from gradstore.selectors.quotas import QuotaCounts
from gradstore.selectors.scan import MAXIMUM, ScanQuery
from gradstore.selectors.stacked import StackedPool

EXTRA_DEPTH = 64
"""Candidates per part beyond 2k on the first scan (room for rows other parts took)."""


@dataclass
class PartsQuery:
    """Choose ``k`` rows by turns over ``parts``: each a (D, c) matrix of the part's target
    rows (``max``) or its mean row (``mean``, c = 1), in the pool's normalised space, in the
    order the parts take their turns."""

    parts: list[np.ndarray]
    k: int
    fixed: np.ndarray | None = None
    """Rows already chosen (``--extend``): they count toward k, no part takes them again
    and no copy of one is taken."""
    quotas: tuple = ()
    """``Quota``s (``--max-share``): a part passes over a row whose group is full."""

    def __post_init__(self) -> None:
        self.parts = [np.asarray(P, dtype=np.float64).reshape(P.shape[0], -1)
                      for P in self.parts]
        self.fixed = np.zeros(0, dtype=np.int64) if self.fixed is None \
            else np.asarray(self.fixed, dtype=np.int64)


@dataclass
class PartsResult:
    """Chosen rows in the order they were taken, the part that took each, and how many
    rows were passed over as copies of chosen ones."""

    rows: np.ndarray
    part_of: np.ndarray
    copies_set_aside: int = 0
    scans: int = 0
    per_part: list[int] = field(default_factory=list)


def part_columns(parts: Sequence[np.ndarray], score: str) -> list[np.ndarray]:
    """Each part's stacked target rows (n_j, D) as the columns it is scored against: the
    rows themselves (``max``) or their mean (``mean``)."""
    return [np.asarray(P, dtype=np.float64).mean(0)[:, None] if score == "mean"
            else np.asarray(P, dtype=np.float64).T.copy() for P in parts]


def round_robin(
    pool: StackedPool,
    queries: Sequence[PartsQuery],
    *,
    scan_progress: Callable[[int], None] | None = None,
) -> list[PartsResult]:
    """Each query's k rows, taken by its parts in turn (see the module's docstring).

    ``pool`` must be normalised: the scores are cosines and the copy test compares them.
    """
    if not pool.normalize:
        raise ValueError("round-robin scores are cosines: build the StackedPool with "
                         "normalize=True")
    n = pool.num_rows
    depth = min(n, max(2 * q.k for q in queries) + EXTRA_DEPTH) if queries else 0
    results: list[PartsResult | None] = [None] * len(queries)
    scans = 0
    while True:
        open_ = [i for i, r in enumerate(results) if r is None]
        if not open_:
            return results  # type: ignore[return-value]
        lists = _scan_parts(pool, [queries[i] for i in open_], depth, scan_progress)
        scans += 1
        for i, ranked in zip(open_, lists, strict=True):
            res = _take_turns(pool, ranked, queries[i], complete=depth >= n)
            if res is not None:
                res.scans = scans
                results[i] = res
        depth = min(n, 2 * depth)


def _scan_parts(pool: StackedPool, queries: Sequence[PartsQuery], depth: int,
                progress) -> list[list[np.ndarray]]:
    """Every part's best ``depth`` rows, best first, for every query, in one pass."""
    cols, scan_q, start = [], [], 0
    for q in queries:
        for P in q.parts:
            cols.append(P)
            scan_q.append(ScanQuery(slice(start, start + P.shape[1]), depth, reduce=MAXIMUM,
                                    exclude=q.fixed if len(q.fixed) else None))
            start += P.shape[1]
    found = pool.scan(np.concatenate(cols, 1), scan_q, progress=progress)
    out, at = [], 0
    for q in queries:
        out.append([rows for rows, _ in found[at : at + len(q.parts)]])
        at += len(q.parts)
    return out


SKETCH_DIM = 256
"""Dimension of the random sketch that screens candidates for near copies: the sketched
cosine of two unit rows has a standard deviation of at most sqrt(2 / SKETCH_DIM) = 0.09."""
SKETCH_SCREEN = 0.5
"""Sketched cosine from which a taken row is compared with a candidate in full: a copy
(cosine >= 0.99) sketches below it with probability < 1e-7 (5.4 standard deviations)."""
READ_ROWS = 32
"""Rows of a part's list read from the pool at a time."""


class _Chosen:
    """The rows taken so far: a random sketch of their unit rows (the near-copy screen,
    ``SKETCH_DIM`` floats a row) and their stored norms (the key of an exact copy)."""

    def __init__(self, pool: StackedPool, k: int, quota: QuotaCounts) -> None:
        self.pool = pool
        self.quota = quota
        self.rows: list[int] = []
        self.taken: set[int] = set()
        gen = torch.Generator().manual_seed(0)
        self.sketch = torch.randn((pool.width, SKETCH_DIM), generator=gen) / SKETCH_DIM ** 0.5
        self.sk = torch.zeros((max(k, 1), SKETCH_DIM))
        self.keys: dict[bytes, int] = {}  # norm key -> a taken row (StackedPool.norm_key)
        self.vecs: dict[int, torch.Tensor] = {}  # unit rows read ahead, by pool row

    def unit_rows(self, rows: np.ndarray) -> torch.Tensor:
        """``rows`` as unit stacked rows, float32 (n, D)."""
        x = self.pool.rows(np.asarray(rows, dtype=np.int64))
        return x / x.norm(dim=1, keepdim=True).clamp_min(1e-30)

    def read_ahead(self, rows: np.ndarray) -> None:
        """Keep the unit rows of ``rows`` (those not kept yet) until they are judged."""
        new = np.array([r for r in rows if int(r) not in self.vecs], dtype=np.int64)
        if len(new):
            self.vecs.update((int(r), v) for r, v in
                             zip(new, self.unit_rows(new), strict=True))

    def is_copy(self, row: int) -> bool:
        if not self.rows:
            return False
        if self.pool.stored_copies(np.array([row]), self.keys)[0]:
            return True
        vec = self.vecs[row]
        near = np.flatnonzero((self.sk[: len(self.rows)] @ (vec @ self.sketch)).numpy()
                              >= SKETCH_SCREEN)
        if len(near) == 0:
            return False
        full = self.unit_rows(np.asarray(self.rows, dtype=np.int64)[near]) @ vec
        return bool((full >= DUPLICATE_COSINE).any())

    def add(self, row: int) -> None:
        self.quota.add(row)
        self.sk[len(self.rows)] = self.vecs[row] @ self.sketch
        self.rows.append(row)
        self.taken.add(row)
        self.keys[self.pool.norm_key(row)] = row


def _take_turns(pool: StackedPool, ranked: list[np.ndarray], q: PartsQuery, complete: bool
                ) -> PartsResult | None:
    """Parts take turns over their ranked lists, after the query's fixed rows; None when a
    list ran out before k rows were taken and a deeper scan could still find more
    (``complete`` is False)."""
    k = q.k
    chosen = _Chosen(pool, k, QuotaCounts(q.quotas))
    chosen.read_ahead(q.fixed)
    for row in q.fixed:
        chosen.add(int(row))
        chosen.vecs.pop(int(row))
    part_of: list[int] = []
    at = [0] * len(ranked)
    copies: set[int] = set()
    live = [True] * len(ranked)
    while len(chosen.rows) < k and any(live):
        for p, order in enumerate(ranked):
            if len(chosen.rows) >= k:
                break
            if not live[p]:
                continue
            if _next_row(order, at, p, copies, chosen) is None:
                if not complete:
                    return None  # this part's list ran out: scan deeper
                live[p] = False
                continue
            part_of.append(p)
    per_part = np.bincount(np.asarray(part_of, dtype=np.int64), minlength=len(ranked))
    return PartsResult(np.asarray(chosen.rows, dtype=np.int64),
                       np.asarray(part_of, dtype=np.int64), len(copies),
                       per_part=[int(c) for c in per_part])


def _next_row(order: np.ndarray, at: list[int], p: int, copies: set[int],
              chosen: _Chosen) -> int | None:
    """Part ``p``'s best row neither taken nor a copy of a taken one (now taken), or
    None when its list has run out."""
    while at[p] < len(order):
        row = int(order[at[p]])
        at[p] += 1
        if row in chosen.taken or row in copies:
            continue
        if not chosen.quota.admits(row):
            continue  # its group is full (and stays so): never taken
        if row not in chosen.vecs:
            ahead = order[at[p] - 1 : at[p] - 1 + READ_ROWS]
            chosen.read_ahead(ahead[[int(r) not in chosen.taken for r in ahead]])
        copy = chosen.is_copy(row)
        if copy:
            copies.add(row)
        else:
            chosen.add(row)
        chosen.vecs.pop(row)
        if not copy:
            return row
    return None

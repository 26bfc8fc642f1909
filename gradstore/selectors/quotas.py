"""Quotas (``--max-share FIELD=SHARE``): no value of a field takes more than its cap of a
selection's rows.

The selectors see a quota as arrays only: a group code per pool row (one per value of the
field) and a cap, the most rows of one group a selection may hold. :class:`QuotaCounts`
follows a selection's rows as a method adds and removes them, and answers the three
questions the methods ask of it: may this row join (its groups are below their caps), which
rows may no scan return now (their group is full), and may member j leave for outsider i
(same group, or the outsider's group below its cap).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class Quota:
    """``codes`` (N,) int: each pool row's group; ``cap``: most rows of one group;
    ``held``: rows per group the selection holds that the method does not see as its own
    (``--extend``'s rows where a method fits only what they leave, or those outside one
    part of a partitioned pool), counted from the start."""

    codes: np.ndarray
    cap: int
    held: np.ndarray | None = None

    def restricted(self, rows: np.ndarray) -> Quota:
        """This quota over the pool rows ``rows`` only (their codes, in that order)."""
        return replace(self, codes=self.codes[rows])

    def holding(self, rows: np.ndarray) -> Quota:
        """This quota with the pool rows ``rows`` held as well."""
        held = _held(self)
        np.add.at(held, self.codes[np.asarray(rows, dtype=np.int64)], 1)
        return replace(self, held=held)


class QuotaCounts:
    """How many chosen rows each quota's groups hold (``chosen``: the rows held already)."""

    def __init__(self, quotas: Sequence[Quota], chosen: Sequence[int] = ()) -> None:
        self.quotas = list(quotas)
        self.counts = [_held(q) for q in self.quotas]
        for row in chosen:
            self.add(int(row))

    def __bool__(self) -> bool:
        return bool(self.quotas)

    def add(self, row: int) -> None:
        for q, c in zip(self.quotas, self.counts, strict=True):
            c[q.codes[row]] += 1

    def remove(self, row: int) -> None:
        for q, c in zip(self.quotas, self.counts, strict=True):
            c[q.codes[row]] -= 1

    def admits(self, row: int) -> bool:
        """Whether ``row`` may join: each of its groups is below its cap."""
        return all(c[q.codes[row]] < q.cap for q, c in zip(self.quotas, self.counts,
                                                           strict=True))

    def allowed(self, rows: np.ndarray) -> np.ndarray:
        """True where a row may join: each of its groups is below its cap."""
        ok = np.ones(len(rows), dtype=bool)
        for q, c in zip(self.quotas, self.counts, strict=True):
            ok &= c[q.codes[rows]] < q.cap
        return ok

    def blocked(self) -> np.ndarray:
        """Pool rows no scan should return now: a group of theirs is full."""
        if not self.quotas:
            return np.zeros(0, dtype=np.int64)
        full = np.zeros(len(self.quotas[0].codes), dtype=bool)
        for q, c in zip(self.quotas, self.counts, strict=True):
            full |= (c >= q.cap)[q.codes]
        return np.flatnonzero(full).astype(np.int64)

    def exchanges(self, members: np.ndarray, outsiders: np.ndarray) -> np.ndarray | None:
        """(members, outsiders) True where member j may leave for outsider i: for each
        quota, the same group, or the outsider's group below its cap; None: no quota."""
        if not self.quotas:
            return None
        ok = np.ones((len(members), len(outsiders)), dtype=bool)
        for q, c in zip(self.quotas, self.counts, strict=True):
            gm, go = q.codes[members], q.codes[outsiders]
            ok &= (gm[:, None] == go[None, :]) | (c[go] < q.cap)[None, :]
        return ok

    def take(self, order: np.ndarray, limit: int) -> list[int]:
        """Rows of ``order`` in turn, each that the caps allow (and now counted), at most
        ``limit`` of them."""
        taken: list[int] = []
        for r in order:
            if len(taken) >= limit:
                break
            if self.admits(int(r)):
                taken.append(int(r))
                self.add(int(r))
        return taken


def _held(q: Quota) -> np.ndarray:
    """Rows per group at the start: ``held``, over every group the codes name."""
    out = np.zeros(max(int(q.codes.max(initial=-1)) + 1,
                       0 if q.held is None else len(q.held)), dtype=np.int64)
    if q.held is not None:
        out[: len(q.held)] = q.held
    return out

"""The pursuit core: one state per query, all advancing together over shared scans.

A pursuit (``gtp``, ``gtp_paper``, ``omp``) is a :class:`PursuitState` per query and one
call of :func:`run_pursuit`. Each round, every live state says which columns it wants
scanned and what it asks of them (:meth:`PursuitState.wanted`: its candidates per scan,
the rows it excludes, how scores are reduced); the core lays every state's columns side
by side, moves each ask's column slice to where its state's columns landed, makes one
pass over the pool for all of them, and hands each state the answers to its own asks
(:meth:`PursuitState.step`). A state says it is finished by setting ``done``. The methods
differ in their states only: what they ask of a scan, what a step does with the answer,
and what they report (:meth:`PursuitState.result`).

What every selection must respect whatever its method belongs here, beside the offsetting
of the asks, not in each method: no ask returns a row the query excludes or keeps fixed
(``Query.barred``), so a kept row is never offered as a new one nor as one to swap out.
"""

from __future__ import annotations

import dataclasses
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from gradstore.selectors.greedy import one_thread
from gradstore.selectors.query import PursuitResult, Query
from gradstore.selectors.scan import ScanQuery
from gradstore.selectors.source import TensorSource
from gradstore.selectors.stacked import StackedPool

Found = list[tuple[np.ndarray, np.ndarray]]
"""A state's share of a scan: (rows, scores) per ask, in the order it asked, best first."""


@dataclass
class Rounds:
    """What a run did: passes over the pool and the seconds they took."""

    scans: int = 0
    scan_seconds: float = 0.0


@dataclass
class Wanted:
    """What a state asks of the next scan: its columns (D, C) and its asks on them, each
    ask's ``columns`` a slice of these C columns (the core moves it to the scan's)."""

    columns: np.ndarray
    asks: list[ScanQuery] = field(default_factory=list)
    barred: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    """Rows none of the asks may return (the query's ``barred`` rows: set by the core)."""


class PursuitState(ABC):
    """One query's pursuit. A method subclasses it with :meth:`wanted`, :meth:`step` and
    :meth:`answer`; the core reads ``done`` and the rest is the state's own.

    ``m`` is the candidates the state asks per scan, ``history`` its residual after each
    step, ``timings`` the seconds of its own work by what it is (``seconds_nnls``: NNLS
    solves; ``seconds_steps``: whole steps), summed over the run (:meth:`timed`)."""

    def __init__(self, query: Query, m: int, *, done: bool = False) -> None:
        self.query = query
        self.m = m
        self.done = done
        self.history: list[float] = []
        self.timings: dict[str, float] = {}

    @abstractmethod
    def wanted(self) -> Wanted:
        """The columns and asks of this round's scan (called only while not ``done``)."""

    @abstractmethod
    def step(self, found: Found) -> None:
        """Advance on the scan's answers to :meth:`wanted`'s asks (one per ask)."""

    @abstractmethod
    def answer(self) -> tuple[np.ndarray, np.ndarray, float]:
        """The selection: rows in selection order, weights (n, C), relative residual."""

    def details(self) -> dict:
        """Method-specific facts for :attr:`PursuitResult.details` (a selection stores
        them with its parameters: no timings)."""
        return {}

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Add the seconds of the block to ``timings[name]``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0

    def result(self, rounds: Rounds) -> PursuitResult:
        """The answer with the run's scans, their seconds, and the seconds of the state's own
        work between scans (every timing it kept: NNLS solves, or whole steps)."""
        rows, weights, residual = self.answer()
        return PursuitResult(rows=rows, weights=weights, residual=residual,
                             history=self.history, scans=rounds.scans,
                             seconds_fit=sum(self.timings.values()),
                             seconds_scan=rounds.scan_seconds, details=self.details())


def run_pursuit(
    pool: StackedPool,
    states: Sequence[PursuitState],
    *,
    max_scans: int | None = None,
    threads: bool = False,
    after: Callable[[int, list], None] | None = None,
    scan_progress: Callable[[int], None] | None = None,
) -> list[PursuitResult]:
    """Run rounds until every state is done (or ``max_scans`` passes): one scan for every
    live state, then each state's step; ``after(scans, live)`` reports each round.

    ``threads``: steps of different states may run at once. Over a pool held in RAM they
    then run in parallel threads, one BLAS thread each (as many as torch's threads); a
    streamed or distributed pool runs them one after another (its memory budget counts
    one state's round at a time)."""
    rounds = Rounds()
    while max_scans is None or rounds.scans < max_scans:
        live = [st for st in states if not st.done]
        if not live:
            break
        t0 = time.perf_counter()
        found = scan_for(pool, [dataclasses.replace(st.wanted(), barred=st.query.barred)
                                for st in live], scan_progress)
        rounds.scan_seconds += time.perf_counter() - t0
        rounds.scans += 1
        _steps(pool, live, found, threads)
        if after is not None:
            after(rounds.scans, live)
    return [st.result(rounds) for st in states]


def scan_for(pool: StackedPool, wanted: Sequence[Wanted],
             progress: Callable[[int], None] | None = None) -> list[Found]:
    """One pass over the pool for every state's asks: the columns side by side, each ask's
    slice moved by the columns before its state's; per state, its asks' answers."""
    asks, counts, offset = [], [], 0
    for w in wanted:
        for q in w.asks:
            start, stop, _ = q.columns.indices(w.columns.shape[1])
            exclude = q.exclude
            if len(w.barred):
                exclude = w.barred if exclude is None else np.union1d(exclude, w.barred)
            asks.append(dataclasses.replace(q, columns=slice(start + offset, stop + offset),
                                            exclude=exclude))
        counts.append(len(w.asks))
        offset += w.columns.shape[1]
    found = pool.scan(np.concatenate([w.columns for w in wanted], 1), asks, progress=progress)
    bounds = np.cumsum([0, *counts])
    return [found[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _steps(pool: StackedPool, live: list[PursuitState], found: list[Found],
           threads: bool) -> None:
    workers = min(len(live), torch.get_num_threads()) if threads else 1
    if workers <= 1 or not isinstance(pool.source, TensorSource):
        for st, f in zip(live, found, strict=True):
            st.step(f)
        return
    with one_thread(), ThreadPoolExecutor(workers) as ex:
        done = [ex.submit(st.step, f) for st, f in zip(live, found, strict=True)]
        for d in done:
            d.result()  # an error in a step is raised here

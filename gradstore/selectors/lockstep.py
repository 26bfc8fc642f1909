"""The loop every pursuit shares: queries advance together over shared scans.

Each round, one pass over the pool answers the scan queries of every query still active
(``scan``); then each query takes its step on what the pass found (``step``). A query
says it is finished by setting ``done``. ``gtp``, ``gtp_paper`` and ``omp`` differ in
what they ask of a scan and what a step does, not in this loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


class Pursuing(Protocol):
    done: bool


@dataclass
class Rounds:
    """What the loop ran: passes over the pool and the seconds they took."""

    scans: int = 0
    scan_seconds: float = 0.0


def lockstep(
    states: Sequence[Pursuing],
    scan: Callable[[list[Any]], list[Any]],
    step: Callable[[list[Any], list[Any]], None],
    *,
    max_scans: int | None = None,
    after: Callable[[int, list[Any]], None] | None = None,
) -> Rounds:
    """Run rounds until every state is done (or ``max_scans`` passes): ``scan(active)``
    returns one result per active state, ``step(active, found)`` advances them, and
    ``after(scans, active)`` reports the round."""
    rounds = Rounds()
    while max_scans is None or rounds.scans < max_scans:
        active = [st for st in states if not st.done]
        if not active:
            break
        t0 = time.perf_counter()
        found = scan(active)
        rounds.scan_seconds += time.perf_counter() - t0
        rounds.scans += 1
        step(active, found)
        if after is not None:
            after(rounds.scans, active)
    return rounds

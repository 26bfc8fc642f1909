"""Drive gradstore's pause points (``gradstore.pause``) from tests: start processes held at a
named point, wait until all of them are there, then let them go together."""

from __future__ import annotations

import os
import time
from pathlib import Path

from gradstore.pause import PAUSE_ENV


def paused_env(point: str, folder: Path) -> dict[str, str]:
    """The environment for a child process that stops at ``point``."""
    folder.mkdir(parents=True, exist_ok=True)
    return dict(os.environ, **{PAUSE_ENV: f"{point}={folder}"})


def wait_until_waiting(point: str, folder: Path, count: int, procs=(), timeout=180.0) -> list:
    """Block until ``count`` processes wait at ``point``; their pids. Fails when one of
    ``procs`` ends first (it would never arrive)."""
    deadline = time.monotonic() + timeout
    while True:
        pids = sorted(int(p.name.split(".")[-2]) for p in folder.glob(f"{point}.*.waiting"))
        if len(pids) >= count:
            return pids
        ended = [p for p in procs if p.poll() is not None]
        assert not ended, [(p.returncode, p.communicate()) for p in ended]
        assert time.monotonic() < deadline, f"{len(pids)} of {count} reached {point}"
        time.sleep(0.01)


def release(point: str, folder: Path) -> None:
    (folder / f"{point}.go").touch()

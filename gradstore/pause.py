"""Pause points: named places where a process can be held, so that tests of concurrency and
interruption decide the interleaving instead of guessing it with sleeps.

Off unless ``GRADSTORE_PAUSE`` is set to ``NAME=DIR``. Then a process reaching
``pause_point(NAME)`` creates ``DIR/NAME.<pid>.waiting`` and waits until ``DIR/NAME.go``
exists (at most ``PAUSE_SECONDS``). A test starts its processes, waits for their
``.waiting`` files, then creates ``.go`` (or kills one of them at exactly that place)."""

from __future__ import annotations

import os
import time
from pathlib import Path

PAUSE_ENV = "GRADSTORE_PAUSE"
PAUSE_SECONDS = 300.0


def pause_point(name: str) -> None:
    """Wait here when ``GRADSTORE_PAUSE`` names this point (see the module's docstring)."""
    setting = os.environ.get(PAUSE_ENV, "")
    point, _, folder = setting.partition("=")
    if point != name or not folder:
        return
    where = Path(folder)
    (where / f"{name}.{os.getpid()}.waiting").touch()
    deadline = time.monotonic() + PAUSE_SECONDS
    while not (where / f"{name}.go").exists() and time.monotonic() < deadline:
        time.sleep(0.01)

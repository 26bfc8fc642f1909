"""Pause points: a process (here a thread) held at a named point until it is let go."""

import threading

from gradstore.pause import PAUSE_ENV, pause_point
from tests.pausing import release, wait_until_waiting


def test_held_at_the_named_point_until_released(tmp_path, monkeypatch):
    monkeypatch.setenv(PAUSE_ENV, f"here={tmp_path}")
    pause_point("elsewhere")  # another point: passes straight through
    done = threading.Event()
    worker = threading.Thread(target=lambda: (pause_point("here"), done.set()))
    worker.start()
    wait_until_waiting("here", tmp_path, 1)
    assert not done.is_set(), "it waits at the point"
    release("here", tmp_path)
    worker.join(timeout=60)
    assert done.is_set()


def test_off_without_the_setting(tmp_path, monkeypatch):
    monkeypatch.delenv(PAUSE_ENV, raising=False)
    pause_point("here")  # returns at once
    assert list(tmp_path.iterdir()) == []

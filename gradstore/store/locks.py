"""One writer per table: a lock file per table while an ingestion, import or repair writes it.

``STORE/.locks/<table>.lock`` is created atomically (O_EXCL) and holds the writer's pid,
host, start time and command. A second writer is refused at once, naming the first. A
lock whose process is gone (same host, pid not alive) is stale and taken over. On another
host the pid cannot be checked: ``--force`` takes such a lock over once you know its writer
is gone (e.g. a crashed node on a shared file system). Stores on object storage (s3://...)
have no lock files: keep one writer per table there yourself.

Readers never take the lock: ``select`` and ``info`` read the last committed version.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gradstore.errors import GradstoreError

LOCK_DIR = ".locks"
_held: set[Path] = set()  # locks this process holds (re-entered without a second file)


class TableLocked(GradstoreError):
    """Another process is writing the table."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _owner() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "since": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)[:300]}


def _describe(info: dict) -> str:
    return (f"pid {info.get('pid')} on host {info.get('host')} since {info.get('since')} "
            f"({info.get('command') or 'unknown command'})")


@contextmanager
def table_lock(store_uri: str, table: str, force: bool = False) -> Iterator[None]:
    """Hold the write lock of ``table`` for the block (no-op for object-store URIs)."""
    if "://" in store_uri:
        yield
        return
    path = (Path(store_uri) / LOCK_DIR / f"{table}.lock").resolve()
    if path in _held:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    _acquire(path, table, force)
    _held.add(path)
    try:
        yield
    finally:
        _held.discard(path)
        try:
            info = json.loads(path.read_text())
            if info.get("pid") == os.getpid() and info.get("host") == socket.gethostname():
                path.unlink()
        except (OSError, ValueError):
            pass


def _acquire(path: Path, table: str, force: bool) -> None:
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read(path)
            if holder is not None and not _stale(holder) and not force:
                raise TableLocked(
                    f"table {table!r} is being written by {_describe(holder)}; wait for it to "
                    "finish (or stop it), or pass --force if that process is gone"
                ) from None
            path.unlink(missing_ok=True)  # stale, unreadable, or forced: take it over
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(_owner(), f)
        return
    raise TableLocked(f"table {table!r}: could not take its lock {path}; try again")


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # half-written by a writer that died: stale


def _stale(info: dict) -> bool:
    """The holder is gone: same host and its pid is not alive."""
    if info.get("host") != socket.gethostname():
        return False
    pid = info.get("pid")
    return not isinstance(pid, int) or not _alive(pid)

"""One writer per table: an operating-system lock per table while an ingestion, import or
repair writes it.

``STORE/.locks/<table>.lock`` is locked with ``flock`` (exclusive). The kernel holds that
lock for the writer and drops it when the writer's process ends, however it ends (kill -9
included), so a lock is never stale and never needs taking over on this host. The file's
text (pid, host, start time, command) is information for the refusal message only, written
after the lock is held; a second writer is refused at once, naming the first.

A lock file that names another host is refused even when its ``flock`` is free: network
file systems do not all carry ``flock`` between hosts. ``--force`` takes such a lock over
once you know its writer is gone (e.g. a crashed node on a shared file system). A lock held
on this host cannot be forced: its holder is alive, or the kernel would have dropped it.
Stores on object storage (s3://...) have no lock files: keep one writer per table there
yourself.

Readers never take the lock: ``select`` and ``info`` read the last committed version. The
selection log is appended under its own lock, waited for (``wait=True``) instead of refused.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gradstore.errors import GradstoreError
from gradstore.pause import pause_point

LOCK_DIR = ".locks"
WAIT_SECONDS = 120.0
"""How long a waiting lock (the selection log's) waits before it gives up."""
_held: set[Path] = set()  # locks this process holds (re-entered without a second lock)


class TableLocked(GradstoreError):
    """Another process is writing the table."""


def _owner() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "since": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)[:300]}


def _describe(info: dict | None) -> str:
    if not info:
        return "another process (starting up)"
    return (f"pid {info.get('pid')} on host {info.get('host')} since {info.get('since')} "
            f"({info.get('command') or 'unknown command'})")


@contextmanager
def table_lock(store_uri: str, table: str, force: bool = False,
               wait: bool = False) -> Iterator[None]:
    """Hold the write lock of ``table`` for the block (no-op for object-store URIs).

    ``wait``: wait up to :data:`WAIT_SECONDS` for another holder instead of refusing."""
    if "://" in store_uri:
        yield
        return
    path = (Path(store_uri) / LOCK_DIR / f"{table}.lock").resolve()
    if path in _held:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    pause_point("take-lock")  # tests: writers let go together
    fd = _acquire(path, table, force, wait)
    _held.add(path)
    try:
        yield
    finally:
        _held.discard(path)
        # unlink while still holding the lock: a writer that opened this file meanwhile
        # finds it gone from the path after locking it, and starts over (see _acquire)
        path.unlink(missing_ok=True)
        os.close(fd)


def _acquire(path: Path, table: str, force: bool, wait: bool) -> int:
    """Lock ``path`` (creating it) and write this process's details into it; the fd."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            if wait and time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            elsewhere = bool(holder) and holder.get("host") != socket.gethostname()
            if force and elsewhere:  # take over with a fresh file at the path
                path.unlink(missing_ok=True)
                continue
            raise TableLocked(
                f"table {table!r} is being written by {_describe(holder)}; wait for it to "
                "finish (or stop it)" + (", or pass --force if that process is gone"
                                         if elsewhere else "")
            ) from None
        if not _same_file(fd, path):  # unlinked by its last holder meanwhile: start over
            os.close(fd)
            continue
        pause_point("lock-taken")  # tests: a writer stopped or killed before it writes
        holder = _read(fd)
        if holder and holder.get("host") != socket.gethostname() and not force:
            os.close(fd)
            raise TableLocked(
                f"table {table!r} is locked by {_describe(holder)} on another host, whose "
                "lock this host cannot see; pass --force once you know that writer is gone"
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_owner()).encode(), 0)
        return fd


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == path.stat().st_ino
    except FileNotFoundError:
        return False


def _read(fd: int) -> dict | None:
    try:
        raw = os.pread(fd, 4096, 0)
        info = json.loads(raw.decode()) if raw else None
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None

"""One writer per table, with real processes: a second writer is refused, a dead writer's lock
is taken over, readers see only whole commits while a writer appends."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

import gradstore
from gradstore.store.locks import LOCK_DIR
from tests.cli.test_cli import run

HOLD = textwrap.dedent("""
    import sys, time
    from gradstore.store.locks import table_lock
    with table_lock(sys.argv[1], sys.argv[2]):
        print("held", flush=True)
        time.sleep(120)
""")


def hold_lock(store: Path, table: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(store), table],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_is_refused_until_the_first_is_gone(tmp_path):
    store = tmp_path / "s"
    np.save(tmp_path / "v.npy", np.ones((4, 8), dtype=np.float32))
    run("import", store, "pool", "--vectors", tmp_path / "v.npy")
    holder = hold_lock(store, "pool")
    try:
        res = run("import", store, "pool", "--vectors", tmp_path / "v.npy", "--checkpoint", "1",
                  ok=False)
        assert res.returncode == 2 and f"pid {holder.pid}" in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
        assert gradstore.open(store).meta("pool").checkpoints[-1].name == "0"
        run("import", store, "other", "--vectors", tmp_path / "v.npy")  # other tables: free
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    # the holder died without releasing: its lock is stale and taken over
    run("import", store, "pool", "--vectors", tmp_path / "v.npy", "--checkpoint", "1")
    assert not (store / LOCK_DIR / "pool.lock").exists(), "released after the write"
    assert [c.name for c in gradstore.open(store).meta("pool").checkpoints] == ["0", "1"]


def test_a_lock_from_another_host_needs_force(tmp_path):
    store = tmp_path / "s"
    np.save(tmp_path / "v.npy", np.ones((4, 8), dtype=np.float32))
    (store / LOCK_DIR).mkdir(parents=True)
    (store / LOCK_DIR / "pool.lock").write_text(json.dumps(
        {"pid": 1, "host": socket.gethostname() + "-elsewhere", "since": "x", "command": "c"}))
    res = run("import", store, "pool", "--vectors", tmp_path / "v.npy", ok=False)
    assert res.returncode == 2 and "--force" in res.stderr
    run("import", store, "pool", "--vectors", tmp_path / "v.npy", "--force")
    assert gradstore.open(store).num_rows("pool") == 4


def test_two_importers_at_once_store_each_row_once(tmp_path):
    store = tmp_path / "s"
    X = np.random.default_rng(0).standard_normal((3000, 64)).astype(np.float32)
    np.save(tmp_path / "v.npy", X)
    cmd = [sys.executable, "-m", "gradstore", "import", str(store), "pool", "--vectors",
           str(tmp_path / "v.npy")]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes[0] == 0 and codes[1] in (0, 2), outs
    for p, (_, err) in zip(procs, outs, strict=True):
        if p.returncode == 2:
            assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    ids, got = gradstore.open(store).vectors("pool")
    assert ids == [str(i) for i in range(3000)], "each row once, in order"
    np.testing.assert_array_equal(got, X.astype(np.float16).astype(np.float32))


WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    import gradstore
    from gradstore.store.database import RowBlock
    store = gradstore.open(sys.argv[1])
    for b in range(1, 16):
        ids = [f"r{b * 50 + i}" for i in range(50)]
        x = np.full((50, 16), b, dtype=np.float32)
        store.database.append_rows("pool", RowBlock(ids=ids, rows=list(range(b * 50,
                                   b * 50 + 50)), vectors=[x]))
""")


def test_readers_see_whole_commits_while_a_writer_appends(tmp_path):
    store_path = tmp_path / "s"
    store = gradstore.open(store_path)
    store.import_vectors("pool", np.zeros((50, 16), dtype=np.float32),
                         ids=[f"r{i}" for i in range(50)])
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(store_path)])
    seen = set()
    deadline = time.time() + 120
    while time.time() < deadline:
        done = writer.poll() is not None
        ids, X = gradstore.open(store_path).vectors("pool")
        assert len(ids) % 50 == 0 and len(ids) == len(set(ids))
        blocks = X[:, 0].reshape(-1, 50)
        assert (blocks == blocks[:, :1]).all(), "a block is read whole or not at all"
        np.testing.assert_array_equal(np.sort(blocks[:, 0]), np.arange(len(blocks)))
        seen.add(len(ids))
        if done:
            break
    assert writer.returncode == 0
    assert max(seen) == 800 and len(seen) > 1, seen


RACER = textwrap.dedent("""
    import os, sys
    from gradstore.store.locks import TableLocked, table_lock
    store, marker, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
    held = overlaps = 0
    while held < rounds:
        try:
            with table_lock(store, "t"):
                try:  # nobody else may be inside: the marker must not exist
                    fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    overlaps += 1
                    continue
                os.close(fd)
                os.sched_yield()
                os.unlink(marker)
                held += 1
        except TableLocked:
            pass
    print(overlaps, flush=True)
""")


def test_two_racing_writers_never_hold_the_lock_at_once(tmp_path):
    """200 rounds each of two processes taking and releasing one table's lock as fast as
    they can: never both inside at once, and the lock is never left stuck."""
    store = tmp_path / "s"
    store.mkdir()
    marker = tmp_path / "inside"
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(store), str(marker), "200"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert [int(out.strip()) for out, _ in outs] == [0, 0], "two writers held the lock at once"
    assert not (store / LOCK_DIR / "t.lock").exists()


def test_a_writer_killed_before_it_wrote_its_lock_file(tmp_path):
    """A writer holds the lock but has not written its details yet (held at that pause
    point): a second writer is refused, not let in by an empty lock file; once the first is
    killed (-9, at that very point) the lock is free again."""
    from tests.pausing import paused_env, wait_until_waiting

    store = tmp_path / "s"
    np.save(tmp_path / "v.npy", np.ones((4, 8), dtype=np.float32))
    pause = tmp_path / "pause"
    first = subprocess.Popen([sys.executable, "-m", "gradstore", "import", str(store), "pool",
                              "--vectors", str(tmp_path / "v.npy")],
                             env=paused_env("lock-taken", pause), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        wait_until_waiting("lock-taken", pause, 1, [first])
        assert (store / LOCK_DIR / "pool.lock").read_text() == ""  # taken, not yet written
        res = run("import", store, "pool", "--vectors", tmp_path / "v.npy", ok=False)
        assert res.returncode == 2 and "being written by another process" in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
    finally:
        first.kill()
        first.wait()
    run("import", store, "pool", "--vectors", tmp_path / "v.npy")
    assert gradstore.open(store).num_rows("pool") == 4


HOLD_UNTIL_RELEASED = textwrap.dedent("""
    import sys
    from gradstore.pause import pause_point
    from gradstore.store.locks import table_lock
    with table_lock(sys.argv[1], sys.argv[2]):
        pause_point("holding")
""")


def test_a_waiting_writer_gets_the_lock_once_it_is_released(tmp_path):
    """The selection log's lock is waited for: while another process holds it (held at a
    pause point) the waiter cannot be inside; once released, it gets in."""
    import threading

    from gradstore.store.locks import table_lock
    from tests.pausing import paused_env, release, wait_until_waiting

    store, pause = tmp_path / "s", tmp_path / "pause"
    store.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_UNTIL_RELEASED, str(store), "t"],
                              env=paused_env("holding", pause))
    wait_until_waiting("holding", pause, 1, [holder])
    inside = threading.Event()

    def waiter():
        with table_lock(str(store), "t", wait=True):
            inside.set()
            with table_lock(str(store), "t"):  # re-entered by its holder: no second lock
                pass

    thread = threading.Thread(target=waiter)
    thread.start()
    assert not inside.is_set(), "never inside while the other process holds the lock"
    release("holding", pause)
    thread.join(timeout=120)
    assert holder.wait(timeout=60) == 0 and inside.is_set()
    assert not (store / LOCK_DIR / "t.lock").exists()


def test_an_unreadable_lock_file_with_no_holder_is_taken(tmp_path):
    """A lock file whose text is garbage and whose OS lock nobody holds (its writer died
    while writing it) is no obstacle; object stores have no lock files at all."""
    from gradstore.store.locks import table_lock

    store = tmp_path / "s"
    (store / LOCK_DIR).mkdir(parents=True)
    (store / LOCK_DIR / "t.lock").write_bytes(b"\x00{garbage")
    with table_lock(str(store), "t"):
        info = json.loads((store / LOCK_DIR / "t.lock").read_text())
        assert info["pid"] == os.getpid()
    with table_lock("s3://bucket/store", "t"):
        pass

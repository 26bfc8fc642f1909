"""kill -9 at several points of import, select and export, and two selects at once: what was
committed is whole, nothing half-written is ever read, and the rerun finishes the work."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gradstore
from gradstore.store.database import Database
from tests.pausing import paused_env, release, wait_until_waiting

N, D = 20000, 128


def cli(*args: object, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "gradstore", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def kill_after(proc: subprocess.Popen, seconds: float) -> bool:
    """SIGKILL ``proc`` after ``seconds`` unless it ended first; True when it was killed."""
    try:
        proc.wait(timeout=seconds)
        return False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True


@pytest.fixture(scope="module")
def pool_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("vec")
    X = np.random.default_rng(1).standard_normal((N, D)).astype(np.float32)
    np.save(d / "pool.npy", X)
    np.save(d / "tgt.npy", X[:3] + 0.1)
    data = d / "data.jsonl"
    data.write_text("".join(json.dumps({"id": str(i), "text": f"t{i}"}) + "\n"
                            for i in range(N)))
    return d, X.astype(np.float16).astype(np.float32)


@pytest.fixture(scope="module")
def base_store(pool_file, tmp_path_factory):
    d, _ = pool_file
    path = tmp_path_factory.mktemp("base") / "s"
    store = gradstore.open(path)
    store.import_vectors("pool", np.load(d / "pool.npy"), kind="pool")
    store.import_vectors("tgt", np.load(d / "tgt.npy"), kind="target")
    return path


@pytest.mark.parametrize("delay", [2.5, 3.5, 4.5])
def test_kill_9_during_import(tmp_path, pool_file, delay):
    d, X = pool_file
    store = tmp_path / "s"
    killed = kill_after(cli("import", store, "pool", "--vectors", d / "pool.npy"), delay)
    if Path(store).exists() and "pool" in Database(store).tables():
        ids, got = gradstore.open(store).vectors("pool")  # committed: whole and exact
        assert len(ids) == N
        np.testing.assert_array_equal(got, X)
        return
    assert killed
    res = cli("import", store, "pool", "--vectors", d / "pool.npy")
    _, err = res.communicate(timeout=120)
    assert res.returncode == 0, err
    ids, got = gradstore.open(store).vectors("pool")
    assert ids == [str(i) for i in range(N)]
    np.testing.assert_array_equal(got, X)


def _copy(base: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(base, to)
    return to


@pytest.mark.parametrize("delay", [3.0, 4.0])
def test_kill_9_during_select_and_export(tmp_path, base_store, pool_file, delay):
    d, _ = pool_file
    store = _copy(base_store, tmp_path / "s")
    killed = kill_after(cli("select", store, "--pool", "pool", "--target", "tgt",
                            "--budget", "50", "--quiet"), delay)
    sels = gradstore.open(store).selections()
    assert len(sels) in (0, 1) and (len(sels) == 1 or killed)
    for s in sels:
        assert len(s.ids) == 50 and np.all(np.asarray(s.weights) > 0)
    ref = gradstore.open(store).select("pool", "tgt", budget=50)
    assert all(s.ids == ref.ids for s in sels), "a committed selection is the right one"
    out = tmp_path / "o.jsonl"
    killed = kill_after(cli("export", store, "--selection", ref.selection_id, "--data",
                            d / "data.jsonl", "--out", out), delay - 1.0)
    if out.exists():  # written whole or not at all
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert [r["id"] for r in rows] == ref.ids
    else:
        assert killed


def test_two_selects_at_once(tmp_path, base_store):
    """Two selects save at the same moment (both held at the pause point before saving, then
    let go together) into a store with no selection log yet: both are logged, whole."""
    store = _copy(base_store, tmp_path / "s")
    pause = tmp_path / "pause"
    env = paused_env("save-selection", pause)
    procs = [cli("select", store, "--pool", "pool", "--target", "tgt", "--budget", str(b),
                 "--quiet", "--format", "json", env=env) for b in (20, 40)]
    wait_until_waiting("save-selection", pause, 2, procs)
    release("save-selection", pause)
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    logged = {s.selection_id: s for s in gradstore.open(store).selections()}
    for out, _ in outs:
        printed = json.loads(out)
        printed = printed[0] if isinstance(printed, list) else printed
        assert logged[printed["selection_id"]].ids == printed["ids"]
    assert sorted(len(s.ids) for s in logged.values()) == [20, 40]


def test_readers_keep_working_while_another_table_is_written(tmp_path, base_store, pool_file):
    d, _ = pool_file
    store = _copy(base_store, tmp_path / "s")
    writer = cli("import", store, "other", "--vectors", d / "pool.npy")
    ref = None
    while writer.poll() is None:
        sel = gradstore.open(store).select("pool", "tgt", budget=10, save=False)
        assert ref is None or sel.ids == ref
        ref = sel.ids
    assert writer.returncode == 0 and ref is not None


def test_first_write_killed_before_its_commit_leaves_no_table(tmp_path, pool_file):
    """kill -9 while an import writes a new table's data files, before its first commit,
    leaves a folder with data and no manifest (seen in make test): that is no table: `info`
    lists none, the rerun creates it whole. A table whose manifests were deleted after a
    commit is still damage (the version ledger saw it)."""
    d, X = pool_file
    store = tmp_path / "s"
    gradstore.open(store)
    left = store / "pool.lance" / "data"
    left.mkdir(parents=True)
    (left / "0c1f-interrupted.lance").write_bytes(np.arange(5000, dtype=np.float32).tobytes())
    assert Database(store).tables() == []
    res = cli("import", store, "pool", "--vectors", d / "pool.npy")
    _, err = res.communicate(timeout=120)
    assert res.returncode == 0, err
    ids, got = gradstore.open(store).vectors("pool")
    assert len(ids) == N
    np.testing.assert_array_equal(got, X)
    assert not (left / "0c1f-interrupted.lance").exists()
    import shutil

    shutil.rmtree(store / "pool.lance" / "_versions")
    assert Database(store).tables() == ["pool"]
    with pytest.raises(gradstore.GradstoreError, match="cannot be read"):
        gradstore.open(store).vectors("pool")

"""A selection reads one version of its tables from start to end: rows dropped by another
process while it runs (held at a pause point, not timed) cannot make its ids name other
rows."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

import gradstore
from tests.pausing import paused_env, release, wait_until_waiting

N, D = 200, 16


def build(path):
    rng = np.random.default_rng(3)
    st = gradstore.open(path)
    ids = [f"p{i:03d}" for i in range(N)]
    for t in range(2):
        st.import_vectors("pool", rng.normal(size=(N, D)).astype(np.float32),
                          checkpoint=f"c{t}", ids=ids, lr=1e-4)
        st.import_vectors("target", rng.normal(size=(4, D)).astype(np.float32) + 0.5,
                          checkpoint=f"c{t}", ids=[f"t{i}" for i in range(4)], lr=1e-4,
                          kind="target")
    return st


def test_rows_dropped_during_a_selection_do_not_change_its_answer(tmp_path):
    path = tmp_path / "store"
    st = build(path)
    version = st.database.dataset("pool").version
    want = {m: st.select("pool", target="target", budget=10, method=m, save=False).ids
            for m in ("gtp", "less")}
    pause = tmp_path / "pause"
    procs = [subprocess.Popen(
        [sys.executable, "-m", "gradstore", "select", str(path), "--pool", "pool", "--target",
         "target", "--budget", "10", "--method", m, "--format", "json", "--quiet"],
        env=paused_env("select-computed", pause), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True) for m in ("gtp", "less")]
    try:
        wait_until_waiting("select-computed", pause, 2, procs)
        # another process drops rows (as `verify --drop-damaged` would): positions shift
        db = gradstore.open(path).database
        chosen = want["gtp"] + want["less"]
        doomed = sorted({"p000", "p001", chosen[0], chosen[-1]})
        db.dataset("pool").delete("id IN (" + ", ".join(f"'{i}'" for i in doomed) + ")")
        db.committed("pool")
        assert gradstore.open(path).num_rows("pool") == N - len(doomed)
        release("select-computed", pause)
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for (out, err), p, m in zip(outs, procs, ("gtp", "less"), strict=True):
        assert p.returncode == 0, err
        (sel,) = json.loads(out)
        assert sel["ids"] == want[m]  # the rows of the version it read, by their own ids
    stored = gradstore.open(path).selections()
    assert [s.params["versions"] for s in stored] == [{"pool": version, "target":
                                                       stored[0].params["versions"]["target"]}] * 2

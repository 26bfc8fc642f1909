"""Ingestion on a real local Ray cluster against the single-process ingestion of the same data."""

import os
import signal
from pathlib import Path

import numpy as np
import pytest

import gradstore
from gradstore.config import with_options
from gradstore.distributed.ingest import ingest_on_ray
from gradstore.errors import GradstoreError
from gradstore.grads.ingestion import IngestConfig, stage_table
from tests.grads.test_ingest import train_checkpoints, write_chat_data

N = 48


@pytest.fixture(scope="module")
def setup(llama_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("ray_ingest")
    ckpts = train_checkpoints(llama_dir, root / "warmup")
    data = write_chat_data(root / "pool.jsonl", N, seed=4)
    return llama_dir, ckpts, data, root


def _cfg(setup, **kw) -> IngestConfig:
    model, ckpts, data, _ = setup
    base = dict(table="pool", model=str(model), data=str(data),
                checkpoints=tuple(str(c) for c in ckpts), proj_dim=64, batch_size=4,
                write_rows=6, progress=False, vector_dtype="float32")
    return IngestConfig.from_options(**(base | kw))


def ray(cfg: IngestConfig, **cluster) -> IngestConfig:
    """``cfg`` run on the local Ray cluster with these worker settings."""
    return with_options(cfg, ray="local", **cluster)


@pytest.fixture(scope="module")
def reference(setup):
    """The single-process table: what every distributed run must reproduce."""
    store = gradstore.open(setup[3] / "reference")
    store.ingest(_cfg(setup))
    return _table(store)


def _table(store, table="pool") -> dict:
    ds = store.database.dataset(table)
    cols = [c for c in ds.schema.names]
    tbl = ds.to_table(columns=cols).to_pydict()
    return {"cols": cols, "data": tbl, "meta": store.meta(table)}


def _assert_no_orphan_files(store, table="pool") -> None:
    """Every data file in the table's folder belongs to a version kept on disk (the current
    one, or the last before compaction, kept for restore): a killed worker's files do not."""
    ds = store.database.dataset(table)
    versions = [v["version"] for v in ds.versions()]
    used = {f.path for v in versions for frag in ds.checkout_version(v).get_fragments()
            for f in frag.metadata.files}
    on_disk = {p.name for p in (Path(ds.uri) / "data").iterdir()}
    assert on_disk == used


def _assert_same_table(got: dict, want: dict) -> None:
    assert got["cols"] == want["cols"]
    g, w = got["data"], want["data"]
    assert g["id"] == w["id"]  # row for row, in data order
    assert len(set(g["id"])) == len(g["id"]) == N
    for col in want["cols"]:
        if col.startswith("vec"):
            np.testing.assert_allclose(np.array(g[col]), np.array(w[col]), rtol=1e-4, atol=1e-6)
        elif isinstance(w[col][0], float):
            np.testing.assert_allclose(g[col], w[col], rtol=1e-4)
        else:
            assert g[col] == w[col], col
    gm, wm = got["meta"], want["meta"]
    assert gm.projection == wm.projection and gm.grad_type == wm.grad_type
    assert gm.checkpoint_names == wm.checkpoint_names
    assert gm.ingest["status"] == "complete"
    assert gm.ingest["settings"] == wm.ingest["settings"]
    assert gm.ingest["data_fingerprint"] == wm.ingest["data_fingerprint"]


def test_hidden_features_on_ray_equal_single_process(ray_cluster, setup, tmp_path):
    """``--features hidden`` shares the runner's interface: the workers compute the same
    rows (checkpoints' adapters loaded on each worker) as one process does."""
    cfg = _cfg(setup, features="hidden", proj_dim=8192)
    single = gradstore.open(tmp_path / "single")
    single.ingest(cfg)
    store = gradstore.open(tmp_path / "s")
    summary = ingest_on_ray(store.database, ray(cfg, workers=1))  # (sharding: tested below)
    assert summary.rows_written == N and store.meta("pool").grad_type == "hidden"
    _assert_same_table(_table(store), _table(single))


def _kill_one_worker(rec: dict, killed: list) -> None:
    """SIGKILL the other worker (busy with its shard) when the first shard is recorded."""
    if not killed:
        others = [p for p in rec["workers"] if p != rec["pid"]]
        os.kill(others[0], signal.SIGKILL)
        killed.append(others[0])


def test_two_workers_equal_one_process_with_a_worker_killed_and_restarted(
        ray_cluster, setup, reference, tmp_path):
    """Two workers share the shards; one is killed mid-shard and restarted, its shard
    retried: the same table as one process's, row for row, nothing staged or orphaned.
    (One Ray run for both points: each run starts workers that load the model.)"""
    store = gradstore.open(tmp_path / "s")
    killed: list[int] = []
    shards = []

    def record_and_kill(rec):
        shards.append(rec)
        _kill_one_worker(rec, killed)

    summary = ingest_on_ray(store.database, ray(_cfg(setup), workers=2, worker_retries=2),
                            on_shard=record_and_kill)
    assert killed and summary.rows_written == N and summary.rows_present == 0
    assert len(shards) >= 4 and len({s["pid"] for s in shards}) >= 2  # both workers worked
    assert sorted(r for s in shards for r in s["rows"]) == list(range(N))  # each row once
    _assert_same_table(_table(store), reference)
    _assert_no_orphan_files(store)
    assert stage_table("pool") not in store.database.all_tables()
    again = store.ingest(_cfg(setup), ray="local", workers=2)  # the Store API's way in
    assert again.rows_written == 0 and "nothing to do" in again.status
    with pytest.raises(GradstoreError, match="add --ray ADDRESS"):
        store.ingest(_cfg(setup), workers=2)


def test_a_failed_ray_run_resumes_on_ray_then_finishes_in_one_process(ray_cluster, setup,
                                                                      reference, tmp_path):
    """One table through three runs (each Ray run starts workers that load the model, so
    the three points share two of them):

    1. on Ray, a worker killed with no retries left: the run fails with the one-line error,
       nothing half-written is visible, its recorded shard stays staged;
    2. rerun on Ray with another worker count, the driver interrupted after one shard: it
       computed only rows that no shard of the first run had recorded;
    3. finished in one process without Ray (which drops the staged shards and recomputes
       their rows): the same table as one process's, no staging or orphan files left."""
    store = gradstore.open(tmp_path / "s")
    killed: list[int] = []
    first: list[dict] = []

    def record_and_kill(rec):
        first.append(rec)
        _kill_one_worker(rec, killed)

    with pytest.raises(GradstoreError, match="rerun the same command") as failed:
        ingest_on_ray(store.database, ray(_cfg(setup), workers=2, worker_retries=0),
                      on_shard=record_and_kill)
    assert killed and first
    assert "after 0 were done" not in str(failed.value)  # the recorded shard is counted
    # nothing half-written is visible: the table exists, empty and marked incomplete
    assert store.num_rows("pool") == 0
    assert store.meta("pool").incomplete
    with pytest.raises(GradstoreError, match="incomplete"):
        store.select("pool", budget=3)
    assert store.database.dataset(stage_table("pool")).count_rows() >= 1
    recorded = {r for rec in first for r in rec["rows"]}

    second: list[dict] = []

    def stop_after_one(rec):
        second.append(rec)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ingest_on_ray(store.database, ray(_cfg(setup), workers=1), on_shard=stop_after_one)
    assert len(second) == 1 and not recorded & set(second[0]["rows"])  # resumed, not redone
    assert store.num_rows("pool") == 0

    summary = store.ingest(_cfg(setup))
    assert summary.rows_written + summary.rows_present == N
    _assert_same_table(_table(store), reference)
    _assert_no_orphan_files(store)
    assert stage_table("pool") not in store.database.all_tables()


def test_bad_model_fails_cleanly_and_keeps_the_old_table(ray_cluster, setup, tmp_path):
    store = gradstore.open(tmp_path / "s")
    store.ingest(_cfg(setup, proj_dim=32))  # the old table (made here: Ray's part is below)
    before = store.num_rows("pool")
    bad = _cfg(setup, model=str(setup[0].parent), overwrite=True)
    with pytest.raises(GradstoreError):
        ingest_on_ray(store.database, ray(bad, workers=1))
    assert store.num_rows("pool") == before and not store.meta("pool").incomplete


def test_more_workers_than_the_cluster_has_is_refused(ray_cluster, setup, tmp_path):
    store = gradstore.open(tmp_path / "s")
    with pytest.raises(GradstoreError, match="need 3 CPUs but the cluster has 2"):
        ingest_on_ray(store.database, ray(_cfg(setup), workers=3))
    with pytest.raises(GradstoreError, match="at least 1"):
        ingest_on_ray(store.database, ray(_cfg(setup), workers=0))
    assert "pool" not in store.tables()


def test_staged_shards_of_a_replaced_table_are_dropped(tmp_path):
    from gradstore.distributed.ingest import ShardLog

    store = gradstore.open(tmp_path / "s")
    rec = {"first": 0, "rows": [0, 1], "ids": ["a", "b"], "nonfinite": [], "skipped": "{}",
           "fragments": "[]"}
    ShardLog(store.database, "pool", "token-a").add(rec)
    assert len(ShardLog(store.database, "pool", "token-a").records(set())) == 1
    assert ShardLog(store.database, "pool", "token-a").records({"b"}) == []  # already committed
    assert ShardLog(store.database, "pool", "token-b").records(set()) == []  # another attempt's


def test_worker_refuses_checkpoint_files_other_than_the_drivers(setup, tmp_path):
    from dataclasses import replace

    from gradstore.distributed.ingest import _with_adapters
    from gradstore.grads.ingestion import plan_ingest
    from gradstore.grads.model import load_tokenizer

    cfg = _cfg(setup)
    plan, _ = plan_ingest(cfg, load_tokenizer(cfg.lm.model, None))
    light = replace(plan, examples=[], adapter_weights=None)
    loaded = _with_adapters(light)
    for a, b in zip(loaded.adapter_weights, plan.adapter_weights, strict=True):
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    name = plan.checkpoint_names[0]
    other = replace(light, settings=dict(plan.settings,
                                         adapters=dict(plan.settings["adapters"], **{name: "x"})))
    with pytest.raises(GradstoreError, match="differs from the driver's"):
        _with_adapters(other)

"""`gradstore ingest/select --ray` as a user runs them, on the local Ray cluster."""

import json
import shutil

import numpy as np

import gradstore
from tests.cli.test_cli import run
from tests.grads.test_ingest import write_chat_data


def test_ingest_and_select_on_ray(ray_address, llama_dir, tmp_path):
    pool = write_chat_data(tmp_path / "pool.jsonl", 30, seed=1)
    target = write_chat_data(tmp_path / "target.jsonl", 4, seed=2)
    store = tmp_path / "store"
    common = ["--model", llama_dir, "--proj-dim", "32", "--batch-size", "4", "--quiet"]
    res = run("ingest", store, "pool", "--data", pool, *common, "--ray", "local",
              "--workers", "1", "--format", "json")  # (two workers' shards: test_ingest.py)
    summary = json.loads(res.stdout)
    assert summary["rows_written"] == 30 and summary["status"] == "complete (1 Ray worker)"
    run("ingest", store, "pool_local", "--data", pool, *common)
    run("ingest", store, "tgt", "--data", target, "--kind", "target", *common)
    st = gradstore.open(store)
    a, b = st.vectors("pool")[1], st.vectors("pool_local")[1]
    assert st.ids("pool") == st.ids("pool_local")
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3)  # float16 storage
    # a running cluster joined by its address (`--ray local` above started one of its own)
    res = run("select", store, "--pool", "pool", "--target", "tgt", "--budget", "5",
              "--budget", "20%", "--ray", ray_address, "--partitions", "2",
              "--format", "json", "--quiet")
    sels = json.loads(res.stdout)
    assert len(sels) == 2 and sels[0]["budget"] == "5"
    local = run("select", store, "--pool", "pool", "--target", "tgt", "--budget", "5",
                "--budget", "20%", "--partitions", "2", "--format", "json", "--quiet")
    for s, t in zip(sels, json.loads(local.stdout), strict=True):
        assert s["ids"] == t["ids"]
        assert abs(s["residual"] - t["residual"]) < 1e-5


def test_run_on_ray_equals_run_in_one_process(ray_address, llama_dir, tmp_path):
    """`gradstore run --ray`: warm-up here, ingestion and selection on Ray, same answers."""
    pool = write_chat_data(tmp_path / "pool.jsonl", 24, seed=3)
    target = write_chat_data(tmp_path / "target.jsonl", 4, seed=5)
    common = ["--model", llama_dir, "--data", pool, "--target", target, "--fraction", "0.25",
              "--epochs", "2", "--lr", "1e-2", "--batch-size", "4", "--proj-dim", "32",
              "--vector-dtype", "float32", "--budget", "5", "--device", "cpu", "--quiet",
              "--format", "json"]
    on_ray = json.loads(run("run", *common, "--out", tmp_path / "a", "--ray",
                            ray_address, "--workers", "1").stdout)
    # (two workers' shards: test_ingest; the tests' cluster, joined by its address)
    # the warm-up runs in this process either way (deterministic): the local run resumes it
    shutil.copytree(tmp_path / "a" / "warmup", tmp_path / "b" / "warmup")
    local = json.loads(run("run", *common, "--out", tmp_path / "b").stdout)
    a, b = gradstore.open(tmp_path / "a" / "store"), gradstore.open(tmp_path / "b" / "store")
    assert a.ids("pool") == b.ids("pool")
    # Adam-preconditioned rows reach ~60; batches of other composition differ in rounding
    np.testing.assert_allclose(a.vectors("pool")[1], b.vectors("pool")[1], rtol=1e-3,
                               atol=1e-3)
    for x, y in zip(on_ray["selections"], local["selections"], strict=True):
        assert a.selection(x["selection_id"]).ids == b.selection(y["selection_id"]).ids
        assert a.selection(x["selection_id"]).params["ray"] == ray_address
    res = run("run", *common, "--out", tmp_path / "c", "--workers", "2", ok=False)
    assert res.returncode == 2 and "--ray" in res.stderr

"""`gradstore ingest/select --ray` as a user runs them, on the local Ray cluster."""

import json

import numpy as np

import gradstore
from tests.cli.test_cli import run
from tests.grads.test_ingest import write_chat_data


def test_ingest_and_select_on_ray(ray_cluster, llama_dir, tmp_path):
    pool = write_chat_data(tmp_path / "pool.jsonl", 30, seed=1)
    target = write_chat_data(tmp_path / "target.jsonl", 4, seed=2)
    store = tmp_path / "store"
    common = ["--model", llama_dir, "--proj-dim", "32", "--batch-size", "4", "--quiet"]
    res = run("ingest", store, "pool", "--data", pool, *common, "--ray", "local",
              "--workers", "2", "--format", "json")
    summary = json.loads(res.stdout)
    assert summary["rows_written"] == 30 and "2 Ray workers" in summary["status"]
    run("ingest", store, "pool_local", "--data", pool, *common)
    run("ingest", store, "tgt", "--data", target, "--kind", "target", *common)
    st = gradstore.open(store)
    a, b = st.vectors("pool")[1], st.vectors("pool_local")[1]
    assert st.ids("pool") == st.ids("pool_local")
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3)  # float16 storage
    res = run("select", store, "--pool", "pool", "--target", "tgt", "--budget", "5",
              "--budget", "20%", "--ray", "local", "--partitions", "2", "--format", "json",
              "--quiet")
    sels = json.loads(res.stdout)
    assert len(sels) == 2 and sels[0]["budget"] == "5"
    local = run("select", store, "--pool", "pool", "--target", "tgt", "--budget", "5",
                "--budget", "20%", "--partitions", "2", "--format", "json", "--quiet")
    for s, t in zip(sels, json.loads(local.stdout), strict=True):
        assert s["ids"] == t["ids"]
        assert abs(s["residual"] - t["residual"]) < 1e-5

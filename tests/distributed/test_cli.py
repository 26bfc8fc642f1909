"""`gradstore run/select --ray` as a user runs them, on the local Ray cluster."""

import json
import shutil

import numpy as np

import gradstore
from tests.cli.test_cli import run
from tests.grads.test_ingest import write_chat_data


def test_run_and_select_on_ray_equal_one_process(ray_address, llama_dir, tmp_path):
    """`gradstore run --ray local` (the warm-up here, ingestion and selection on Ray) gives
    the answers of the same run without Ray; on its store, `select --ray ADDRESS
    --partitions 2` at two budgets equals the same select without Ray; `ingest --ray
    ADDRESS --workers 3` is refused by a 2-CPU cluster before any model loads. (The CLI
    runs in this process, which holds the tests' cluster: `--ray local` uses it as it would
    a notebook's Ray; `--ray ADDRESS` checks that the address answers, then joins it.)"""
    pool = write_chat_data(tmp_path / "pool.jsonl", 24, seed=3)
    target = write_chat_data(tmp_path / "target.jsonl", 4, seed=5)
    common = ["--model", llama_dir, "--data", pool, "--target", target, "--fraction", "0.25",
              "--epochs", "2", "--lr", "1e-2", "--batch-size", "4", "--proj-dim", "32",
              "--vector-dtype", "float32", "--budget", "5", "--device", "cpu", "--quiet",
              "--format", "json"]
    on_ray = json.loads(run("run", *common, "--out", tmp_path / "a", "--ray", "local",
                            "--workers", "1").stdout)  # (two workers' shards: test_ingest)
    assert on_ray["steps"]["ingest pool"] == "24 rows (complete (1 Ray worker))"
    # the warm-up runs in this process either way (deterministic): the local run resumes it
    shutil.copytree(tmp_path / "a" / "warmup", tmp_path / "b" / "warmup")
    local = json.loads(run("run", *common, "--out", tmp_path / "b").stdout)
    assert local["steps"]["ingest pool"] == "24 rows (complete)"
    a, b = gradstore.open(tmp_path / "a" / "store"), gradstore.open(tmp_path / "b" / "store")
    assert a.ids("pool") == b.ids("pool")
    # Adam-preconditioned rows reach ~60; batches of other composition differ in rounding
    np.testing.assert_allclose(a.vectors("pool")[1], b.vectors("pool")[1], rtol=1e-3,
                               atol=1e-3)
    for x, y in zip(on_ray["selections"], local["selections"], strict=True):
        assert a.selection(x["selection_id"]).ids == b.selection(y["selection_id"]).ids
        assert a.selection(x["selection_id"]).params["ray"] == "local"

    store = tmp_path / "a" / "store"
    sel = ["select", store, "--pool", "pool", "--target", "target", "--budget", "5",
           "--budget", "20%", "--partitions", "2", "--format", "json", "--quiet"]
    on_ray = json.loads(run(*sel, "--ray", ray_address).stdout)
    assert [s["budget"] for s in on_ray] == ["5", "0.2"]  # (a share is stored as a fraction)
    for s, t in zip(on_ray, json.loads(run(*sel).stdout), strict=True):
        assert s["ids"] == t["ids"] and len(s["ids"]) in (5, 4)  # 20% of 24 rows: 4
        assert abs(s["residual"] - t["residual"]) < 1e-5
    res = run("run", *common, "--out", tmp_path / "c", "--workers", "2", ok=False)
    assert res.returncode == 2 and "--ray" in res.stderr
    res = run("ingest", tmp_path / "d", "pool", "--data", pool, "--model", llama_dir,
              "--ray", ray_address, "--workers", "3", ok=False)
    assert res.returncode == 2 and "need 3 CPUs but the cluster has 2" in res.stderr

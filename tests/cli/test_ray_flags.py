"""`--ray` without the extra, with an unreachable or malformed address: one line, exit 2."""

import socket
import sys
import time

import numpy as np
import pytest

from tests.cli.test_cli import run


@pytest.fixture
def store(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "p.npy", rng.standard_normal((50, 8)).astype(np.float32))
    run("import", tmp_path / "st", "pool", "--vectors", tmp_path / "p.npy")
    return tmp_path / "st"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_extra_missing(store, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets without the extra
    res = run("select", store, "--pool", "pool", "--budget", "5", "--ray", "local", ok=False)
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0
    assert "pip install gradstore[ray]" in res.stderr
    res = run("ingest", store, "t", "--model", tmp_path, "--data", tmp_path / "x.jsonl",
              "--ray", "local", ok=False)
    assert res.returncode == 2 and "pip install gradstore[ray]" in res.stderr


def test_unreachable_address_is_named(store):
    pytest.importorskip("ray")
    address = f"127.0.0.1:{_free_port()}"
    t0 = time.perf_counter()
    res = run("select", store, "--pool", "pool", "--budget", "5", "--ray", address, ok=False)
    assert res.returncode == 2
    assert address in res.stderr and "not reachable" in res.stderr
    assert res.stderr.strip().count("\n") == 0
    assert time.perf_counter() - t0 < 30  # Ray's own retries would take minutes


def test_malformed_address(store):
    pytest.importorskip("ray")
    res = run("select", store, "--pool", "pool", "--budget", "5", "--ray", "nowhere", ok=False)
    assert res.returncode == 2 and "'nowhere'" in res.stderr and "HOST:PORT" in res.stderr


def test_partitions_out_of_range(store):
    res = run("select", store, "--pool", "pool", "--budget", "5", "--partitions", "0", ok=False)
    assert res.returncode == 2 and "--partitions" in res.stderr
    res = run("select", store, "--pool", "pool", "--budget", "5", "--method", "omp",
              "--partitions", "2", ok=False)
    assert res.returncode == 2 and "gtp and gtp-paper only" in res.stderr


def test_ray_options_without_ray(store, tmp_path):
    res = run("select", store, "--pool", "pool", "--budget", "5", "--ray-tasks", "2", ok=False)
    assert res.returncode == 2 and "--ray ADDRESS" in res.stderr
    res = run("ingest", store, "t", "--model", tmp_path, "--data", tmp_path / "x.jsonl",
              "--workers", "2", ok=False)
    assert res.returncode == 2 and "--ray ADDRESS" in res.stderr

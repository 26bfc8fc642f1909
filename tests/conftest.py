import os
import tempfile

import numpy as np
import pytest
import torch

# One torch thread per pytest-xdist worker (two workers on two cores: more threads only
# fight over the cores; small ops slowed down many times), two in a plain run.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


RAY_TESTS = "tests/distributed/"
"""Where the tests that run on a local Ray cluster live (``tests/distributed/conftest.py``)."""
FIRST_WORKERS_RAY_TESTS = ("test_bench_tiny.py", "test_select.py")
"""The Ray test modules put at the front of the collection (about half of the Ray tests'
time); the others (the CLI and ingestion on Ray) start at its middle."""


def pytest_collection_modifyitems(items):
    """Half of the Ray tests first, the other half from the middle of the collection on.

    pytest-xdist's work stealing (``make test``: two workers) hands one worker the front
    half of the collection and the other the back half, and steals from the back of a
    queue. So each worker starts on its share of the Ray tests, one after another on one
    cluster, which stops after the last of them (``tests/distributed/conftest.py``). Spread
    at random, each worker's cluster idled on for the whole session; all in one worker, they
    were a chain of 222 s in a suite of 256 s; split so, 230 s (``docs/measurements.md``).
    Without xdist the order changes nothing."""
    ray = [i for i in items if RAY_TESTS in i.nodeid]
    rest = [i for i in items if RAY_TESTS not in i.nodeid]
    front = [i.nodeid.split("::")[0].endswith(FIRST_WORKERS_RAY_TESTS) for i in ray]
    first = [i for i, f in zip(ray, front, strict=True) if f]
    second = [i for i, f in zip(ray, front, strict=True) if not f]
    fill = max(0, len(items) // 2 - len(first))
    items[:] = first + rest[:fill] + second + rest[fill:]


def unit_rows(rng: np.random.Generator, n: int, T: int, d: int) -> np.ndarray:
    """n rows of T unit-norm checkpoint blocks, shape (n, T*d) float32."""
    x = rng.standard_normal((n, T, d))
    x /= np.linalg.norm(x, axis=2, keepdims=True)
    return x.reshape(n, T * d).astype(np.float32)


def clustered_rows(rng, n, T, d, clusters=20, spread=0.5):
    centers = rng.standard_normal((clusters, T, d))
    lab = rng.integers(0, clusters, n)
    x = centers[lab] + spread * rng.standard_normal((n, T, d))
    x /= np.linalg.norm(x, axis=2, keepdims=True)
    return x.reshape(n, T * d).astype(np.float32)


@pytest.fixture
def tmp_tempdir(tmp_path, monkeypatch):
    """``tempfile``'s folders under the test's ``tmp_path`` (pytest keeps the last three
    runs'), in this process (not TMPDIR: a Ray driver looks its cluster's files up there):
    a benchmark's tiny mode run here that leaves its temporary folder behind does not leave
    one more in /tmp each run."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


@pytest.fixture
def rng():
    return np.random.default_rng(0)

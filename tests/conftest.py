import os
import tempfile

import numpy as np
import pytest
import torch

# One torch thread per pytest-xdist worker (two workers on two cores: more threads only
# fight over the cores; small ops slowed down many times), two in a plain run.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


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

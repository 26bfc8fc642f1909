import numpy as np
import pytest
import torch

torch.set_num_threads(2)


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
def rng():
    return np.random.default_rng(0)

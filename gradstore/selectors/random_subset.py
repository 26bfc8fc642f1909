"""The random baseline: a seeded uniform sample."""

from __future__ import annotations

import numpy as np


def random_subset(num_rows: int, k: int, seed: int = 0) -> np.ndarray:
    """A seeded uniform sample of k distinct rows (the random baseline)."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(num_rows, size=k, replace=False)).astype(np.int64)

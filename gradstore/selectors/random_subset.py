"""The random baseline: a seeded uniform sample."""

from __future__ import annotations

import numpy as np


def random_subset(num_rows: int, k: int, seed: int = 0,
                  exclude: np.ndarray | None = None) -> np.ndarray:
    """A seeded uniform sample of k distinct rows (the random baseline), none of
    ``exclude`` (without it, the same sample as ever for a seed)."""
    rng = np.random.default_rng(seed)
    if exclude is None or len(exclude) == 0:
        return np.sort(rng.choice(num_rows, size=k, replace=False)).astype(np.int64)
    rest = np.setdiff1d(np.arange(num_rows), exclude)
    return np.sort(rng.choice(rest, size=k, replace=False)).astype(np.int64)

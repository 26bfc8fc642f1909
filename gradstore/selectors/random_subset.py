"""The random baseline: a seeded uniform sample."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gradstore.selectors.quotas import Quota, QuotaCounts


def random_subset(num_rows: int, k: int, seed: int = 0,
                  exclude: np.ndarray | None = None,
                  quotas: Sequence[Quota] = ()) -> np.ndarray:
    """A seeded uniform sample of k distinct rows (the random baseline), none of
    ``exclude`` (without it, the same sample as ever for a seed). With ``quotas``
    (``--max-share``, the ``exclude`` rows counted as chosen): the rows of a random order
    that the caps allow, in turn (fewer than k when they cannot fill it)."""
    rng = np.random.default_rng(seed)
    if not quotas and (exclude is None or len(exclude) == 0):
        return np.sort(rng.choice(num_rows, size=k, replace=False)).astype(np.int64)
    rest = np.arange(num_rows) if exclude is None else np.setdiff1d(np.arange(num_rows), exclude)
    if not quotas:
        return np.sort(rng.choice(rest, size=k, replace=False)).astype(np.int64)
    counts = QuotaCounts(quotas, () if exclude is None else exclude)
    return np.sort(np.asarray(counts.take(rng.permutation(rest), k), dtype=np.int64))

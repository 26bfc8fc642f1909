"""The Gram cache gtp-paper keeps between scans: products of the rows asked for, in the
order asked for, whatever the cache held before (its answers are pinned by the golden
selections and the pursuit tests)."""

import numpy as np
import torch

from gradstore.selectors.gram_cache import GramCache
from gradstore.selectors.source import TensorSource
from gradstore.selectors.stacked import StackedPool
from tests.conftest import clustered_rows


def test_products_of_the_rows_asked_for_in_their_order(rng):
    pool = StackedPool(TensorSource(clustered_rows(rng, 300, 2, 16), 2), eta=[2.0, 1.0])
    dense = pool.rows(np.arange(300)).double().numpy()  # independent: every row, float64
    cache = GramCache(pool.width)
    sets = [rng.choice(300, 40, replace=False),
            np.concatenate([rng.choice(300, 25, replace=False), [7, 3]]),  # some known
            np.array([5, 1, 299, 0]), np.array([], dtype=np.int64)]
    sets[1] = np.unique(sets[1])[::-1].copy()
    sets.insert(2, np.concatenate([sets[1][:10], sets[0][:10]]))  # known rows reordered
    for rows in sets:
        A, G = cache.gram(pool, rows)
        assert A.dtype == G.dtype == torch.float32
        np.testing.assert_array_equal(A.numpy(), pool.rows(rows).numpy())
        # float32 products over 32 dims: within 32 * 2^-24 of the norms' product
        np.testing.assert_allclose(G.numpy(), dense[rows] @ dense[rows].T, atol=1e-5)
        assert cache.rows.tolist() == rows.tolist()

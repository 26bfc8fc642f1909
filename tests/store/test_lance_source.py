"""LanceSource over a multi-fragment table, and over parts of it, against the plain matrix."""

import numpy as np
import pytest

import gradstore
from gradstore.selectors.partitioned import part_bounds, partitioned_gtp
from gradstore.selectors.query import Query
from gradstore.selectors.source import TensorSource
from gradstore.selectors.stacked import StackedPool
from gradstore.store.database import RowBlock
from gradstore.store.lance_source import LanceSource
from tests.conftest import clustered_rows


@pytest.fixture
def fragmented(tmp_path, rng):
    """A 2-checkpoint float32 table written in 5 appends (5 fragments), and its matrix."""
    T, d, n = 2, 24, 230
    X = clustered_rows(rng, n, T, d) * rng.uniform(0.5, 2.0, (n, 1)).astype(np.float32)
    store = gradstore.open(tmp_path / "s")
    store.import_vectors("pool", X[:40, :d], checkpoint="a", ids=[f"r{i}" for i in range(40)],
                         vector_dtype="float32")
    store.import_vectors("pool", X[:40, d:], checkpoint="b", ids=[f"r{i}" for i in range(40)])
    for s, e in [(40, 90), (90, 91), (91, 200), (200, 230)]:
        store.database.append_rows("pool", RowBlock(ids=[f"r{i}" for i in range(s, e)],
                                           rows=list(range(s, e)),
                                           vectors=[X[s:e, :d], X[s:e, d:]]))
    ds = store.database.dataset("pool")
    assert len(ds.get_fragments()) == 5
    meta = store.meta("pool")
    return LanceSource(ds, [c.column for c in meta.checkpoints], d), X


def test_parts_read_their_rows(fragmented):
    src, X = fragmented
    for a, b in [(0, 230), (0, 40), (35, 95), (90, 91), (150, 230), (10, 10)]:
        part = src.part(a, b)
        assert part.num_rows == b - a
        blocks = [blk.float().numpy().copy() for _, blk in part.iter_blocks(16)]
        got = np.concatenate(blocks) if blocks else np.zeros((0, X.shape[1]))
        np.testing.assert_array_equal(got, X[a:b])
        norms = np.linalg.norm(X[a:b].reshape(b - a, 2, 24), axis=2)
        np.testing.assert_allclose(part.row_norms(), norms, rtol=1e-6)
        if b > a:
            rows = np.array([b - a - 1, 0, (b - a) // 2])
            np.testing.assert_array_equal(part.take(rows).numpy(), X[a:b][rows])


def test_partitioned_gtp_on_lance_equals_in_ram(fragmented, rng):
    src, X = fragmented
    y = StackedPool(TensorSource(X, 2)).rows(rng.choice(230, 6, replace=False)).double().numpy()
    y = y.sum(0)
    on_disk = partitioned_gtp(StackedPool(src), [Query(y, 6)], 3)[0]
    in_ram = partitioned_gtp(StackedPool(TensorSource(X, 2)), [Query(y, 6)], 3)[0]
    np.testing.assert_array_equal(on_disk.rows, in_ram.rows)
    assert on_disk.residual == pytest.approx(in_ram.residual, abs=1e-6)
    assert len(part_bounds(230, 3)) == 3


def test_ranged_reads_equal_the_scanner(fragmented):
    """Reading blocks as takes of row ranges (small memory budgets) gives the same rows,
    norms and parts as Lance's scanner."""
    src, X = fragmented
    src.ranged_reads = True
    for a, b in [(0, 230), (35, 95), (90, 91), (150, 230)]:
        part = src.part(a, b)
        assert part.ranged_reads
        got = np.concatenate([blk.float().numpy().copy() for _, blk in part.iter_blocks(16)])
        np.testing.assert_array_equal(got, X[a:b])
        norms = np.linalg.norm(X[a:b].reshape(b - a, 2, 24), axis=2)
        np.testing.assert_allclose(part.row_norms(), norms, rtol=1e-6)


def test_take_reads_in_chunks_into_place(fragmented, rng, monkeypatch):
    """A take larger than a chunk, in any order and with repeats, is each row in its place."""
    import gradstore.store.lance_source as lance_source

    src, X = fragmented
    monkeypatch.setattr(lance_source, "TAKE_ROWS", 7)
    rows = np.concatenate([rng.permutation(230)[:60], [5, 5, 229, 0]])
    np.testing.assert_array_equal(src.take(rows).numpy(), X[rows])
    assert src.take(np.array([], dtype=np.int64)).shape == (0, X.shape[1])

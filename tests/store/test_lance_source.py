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


def test_parts_of_blocks_are_the_checkpoints_side_by_side(fragmented):
    """``iter_parts`` (what a CPU scan reads: each checkpoint's rows, zero-copy) holds the
    rows ``iter_blocks`` copies side by side, block for block, over fragments and parts."""
    src, X = fragmented
    for a, b in [(0, 230), (35, 95), (150, 230)]:
        part = src.part(a, b)
        starts, got = [], []
        for start, pieces in part.iter_parts(16):
            assert [p.shape for p in pieces] == [pieces[0].shape] * 2
            starts.append(start)
            got.append(np.concatenate([p.float().numpy() for p in pieces], 1))
        np.testing.assert_array_equal(np.concatenate(got), X[a:b])
        assert starts == [s for s, _ in part.iter_blocks(16)]


def test_streamed_scan_scores_equal_in_ram_scores(fragmented, rng):
    """A scan over the streamed parts gives the in-RAM scan's rows, and its scores to 1e-6
    (the same float32 conversion, scaling and product; the row norms behind the scaling are
    the store's, kept at import, against the ones computed from the matrix: a last-bit
    difference), centred or not."""
    import torch

    from gradstore.selectors.scan import ScanQuery, correlation_scan

    src, X = fragmented
    R = rng.standard_normal((X.shape[1], 3)).astype(np.float32)
    queries = [ScanQuery(slice(0, 2), 25), ScanQuery(slice(2, 3), 7, exclude=np.arange(5))]
    for centred in (False, True):
        lance_pool, ram_pool = (StackedPool(s_, eta=[2.0, 1.0]) for s_ in (
            src, TensorSource(torch.from_numpy(X), 2)))
        if centred:
            lance_pool, ram_pool = lance_pool.centered(), ram_pool.centered()
        for (r1, v1), (r2, v2) in zip(correlation_scan(lance_pool, R, queries),
                                      correlation_scan(ram_pool, R, queries), strict=True):
            np.testing.assert_array_equal(r1, r2)
            np.testing.assert_allclose(v1, v2, rtol=1e-6)


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
    monkeypatch.setattr(lance_source, "SMALL_TAKE_ROWS", 3)  # under a small budget
    rows = np.concatenate([rng.permutation(230)[:60], [5, 5, 229, 0]])
    for ranged in (False, True):
        src.ranged_reads = ranged
        np.testing.assert_array_equal(src.take(rows).numpy(), X[rows])
        assert src.take(np.array([], dtype=np.int64)).shape == (0, X.shape[1])


def test_a_restricted_source_reads_only_its_rows(fragmented, rng):
    """``restricted`` (a query's allowed rows, streamed): blocks, parts, takes and norms
    are the plain matrix's rows at those positions, across fragments (damage read this
    way: tests/store/test_integrity.py)."""
    src, X = fragmented
    rows = np.sort(rng.choice(230, 57, replace=False))
    sub = src.restricted(rows)
    assert sub.num_rows == 57
    got = np.concatenate([blk.float().numpy().copy() for _, blk in sub.iter_blocks(16)])
    np.testing.assert_array_equal(got, X[rows])
    np.testing.assert_array_equal(sub.load().float().numpy(), X[rows])
    np.testing.assert_allclose(sub.row_norms(),
                               np.linalg.norm(X[rows].reshape(57, 2, 24), axis=2), rtol=1e-6)
    pick = np.array([56, 0, 20])
    np.testing.assert_array_equal(sub.take(pick).numpy(), X[rows[pick]])
    np.testing.assert_array_equal(sub.part(10, 30).load().float().numpy(), X[rows[10:30]])
    np.testing.assert_array_equal(src.part(40, 200).restricted(np.array([0, 5])).load()
                                  .float().numpy(), X[[40, 45]])


def _pass(src, parts: bool = False) -> np.ndarray:
    if parts:
        return np.concatenate([np.concatenate([p.float().numpy() for p in ps], 1)
                               for _, ps in src.iter_parts(16)])
    return np.concatenate([blk.float().numpy().copy() for _, blk in src.iter_blocks(16)])


def test_a_spilled_source_reads_its_later_passes_back_from_the_file(fragmented, rng, tmp_path):
    """``spill_path``: the first complete pass writes the rows side by side (n * T * d
    stored values) and the later passes read that file, not Lance: a file changed on
    purpose is what they return. A pass stopped early spills nothing."""
    src, X = fragmented
    rows = np.sort(rng.choice(230, 57, replace=False))
    sub = src.restricted(rows)
    sub.spill_path = tmp_path / "rows.bin"
    for _, _blk in sub.iter_blocks(16):
        break  # an abandoned pass: the next one reads Lance again
    np.testing.assert_array_equal(_pass(sub), X[rows])
    assert sub.spill_path.stat().st_size == 57 * 2 * 24 * 4  # float32 table
    np.testing.assert_array_equal(_pass(sub), X[rows])  # read back
    np.testing.assert_array_equal(_pass(sub, parts=True), X[rows])
    planted = np.zeros((57, 48), np.float32)
    planted[3, 5] = 7.0
    sub.spill_path.write_bytes(planted.tobytes())
    np.testing.assert_array_equal(_pass(sub), planted)
    np.testing.assert_array_equal(_pass(sub, parts=True), planted)


def test_a_spill_that_cannot_be_written_leaves_the_passes_on_lance(fragmented, rng, tmp_path):
    src, X = fragmented
    rows = np.sort(rng.choice(230, 40, replace=False))
    sub = src.restricted(rows)
    sub.spill_path = tmp_path / "no such folder" / "rows.bin"
    for _ in range(2):
        np.testing.assert_array_equal(_pass(sub), X[rows])
    assert not sub.spill_path.exists()

"""Selection on Ray against the single-process selectors over the same store."""

import numpy as np
import pytest

import gradstore
from gradstore.distributed.pool import DistributedPool
from gradstore.selectors.gtp import gtp
from gradstore.selectors.gtp_paper import gtp_paper
from gradstore.selectors.query import Query
from gradstore.selectors.scan import MAXIMUM, ScanQuery, correlation_scan
from gradstore.selectors.stacked import StackedPool
from gradstore.store.database import RowBlock
from tests.conftest import clustered_rows, unit_rows

T, D = 2, 48


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A float16 pool of 3,000 rows written in 7 appends (7 fragments), and a target table."""
    rng = np.random.default_rng(5)
    X = clustered_rows(rng, 3000, T, D) * rng.uniform(0.5, 2, (3000, 1)).astype(np.float32)
    st = gradstore.open(tmp_path_factory.mktemp("s") / "store")
    ids = [f"p{i}" for i in range(3000)]
    st.import_vectors("pool", X[:500, :D], checkpoint="c1", ids=ids[:500], lr=2.0)
    st.import_vectors("pool", X[:500, D:], checkpoint="c2", ids=ids[:500], lr=1.0)
    for s in range(500, 3000, 417):
        e = min(3000, s + 417)
        st.database.append_rows("pool", RowBlock(ids=ids[s:e], rows=list(range(s, e)),
                                        vectors=[X[s:e, :D], X[s:e, D:]]))
    tgt = unit_rows(rng, 12, T, D) + X[rng.choice(3000, 12)]
    st.import_vectors("tgt", tgt[:, :D], checkpoint="c1", kind="target",
                      subtasks=["a", "b"] * 6)
    st.import_vectors("tgt", tgt[:, D:], checkpoint="c2")
    assert len(st.database.dataset("pool").get_fragments()) == 7
    return st


def _pools(store, tasks):
    local = StackedPool(store.source("pool", "ram"), [2.0, 1.0])
    dist = DistributedPool(store.source("pool", "stream"), [2.0, 1.0], tasks=tasks)
    return local, dist


@pytest.mark.parametrize("tasks", [1, 3, 8])
def test_distributed_scan_equals_local_scan(ray_cluster, store, tasks):
    local, dist = _pools(store, tasks)
    rng = np.random.default_rng(tasks)
    R = rng.standard_normal((T * D, 5)).astype(np.float32)
    excl = rng.choice(3000, 40, replace=False)
    queries = [ScanQuery(slice(0, 2), 50), ScanQuery(slice(2, 3), 7, exclude=excl),
               ScanQuery(slice(3, 5), 30, reduce=MAXIMUM)]
    want = correlation_scan(local, R, queries)
    got = dist.scan(R, queries)
    for (wr, ws), (gr, gs), q in zip(want, got, queries, strict=True):
        assert len(wr) == len(gr) <= q.m
        np.testing.assert_array_equal(gr, wr)
        np.testing.assert_allclose(gs, ws, rtol=1e-5, atol=1e-6)
    assert not set(got[1][0].tolist()) & set(excl.tolist())
    # an independent check of the scores: the stacked rows times R, by numpy
    A = local.rows(np.arange(3000)).double().numpy()
    C = A @ R.astype(np.float64)
    np.testing.assert_allclose(got[2][1], C[got[2][0], 3:5].max(1), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dist.mean(), local.mean(), rtol=1e-6, atol=1e-9)


def test_centred_pool_on_ray_equals_local(ray_cluster, store):
    local, dist = _pools(store, 3)
    lc, dc = local.centered(), dist.centered()
    assert isinstance(dc, DistributedPool)
    np.testing.assert_allclose(dc.center, lc.center, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dc.norms, lc.norms, rtol=1e-5)
    R = np.random.default_rng(1).standard_normal((T * D, 2)).astype(np.float32)
    q = [ScanQuery(slice(0, 1), 20, reduce=MAXIMUM), ScanQuery(slice(1, 2), 9, sign=-1.0,
                                                                 reduce=MAXIMUM)]
    for (wr, ws), (gr, gs) in zip(correlation_scan(lc, R, q), dc.scan(R, q), strict=True):
        np.testing.assert_array_equal(gr, wr)
        np.testing.assert_allclose(gs, ws, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dc.mean(), lc.mean(), rtol=1e-5, atol=1e-8)


def test_store_select_on_ray_equals_local(ray_cluster, store):
    for method in ("gtp", "gtp-paper", "omp", "less"):
        local = store.select("pool", ["tgt", None], [0.01, 40], method=method, save=False)
        dist = store.select("pool", ["tgt", None], [0.01, 40], method=method, save=False,
                            ray="local", ray_tasks=3)
        for a, b in zip(local, dist, strict=True):
            assert b.ids == a.ids, method
            np.testing.assert_allclose(b.weights, a.weights, rtol=1e-4, atol=1e-7)
            assert b.residual == pytest.approx(a.residual, abs=1e-5)
            assert b.params["ray"] == "local" and b.params["ray_tasks"] == 3


@pytest.mark.parametrize("method", ["gtp", "gtp-paper", "omp", "less", "round-robin",
                                    "random"])
def test_a_query_on_ray_equals_the_query_local(ray_cluster, store, method):
    """--where, --exclude, --extend and --max-share with every pass as Ray tasks (each
    reading its share of the allowed rows by position) against the same query in RAM."""
    first = store.select("pool", "tgt", 12, method="less")
    query = dict(where="id LIKE '%3' OR id LIKE '%5'", exclude=[first.selection_id],
                 extend=first.selection_id, max_share="subtask=0.5")
    local = store.select("pool", "tgt", [0.05, 30], method=method, save=False, **query)
    dist = store.select("pool", "tgt", [0.05, 30], method=method, save=False,
                        ray="local", ray_tasks=3, **query)
    for a, b in zip(local, dist, strict=True):
        assert b.ids == a.ids, method
        np.testing.assert_allclose(b.weights, a.weights, rtol=1e-4, atol=1e-7)
        assert b.params["rows_allowed"] == a.params["rows_allowed"]
        new = b.ids[12:]
        assert b.ids[:12] == first.ids
        assert new and all(i[-1] in "35" and i not in first.ids for i in new)


@pytest.mark.parametrize("method", ["gtp", "gtp-paper"])
def test_partitioned_select_on_ray_equals_partitioned_local(ray_cluster, store, method):
    local = store.select("pool", "tgt", 30, partitions=4, save=False, method=method)
    dist = store.select("pool", "tgt", 30, partitions=4, save=False, ray="local",
                        method=method)
    assert dist.ids == local.ids
    assert dist.residual == pytest.approx(local.residual, abs=1e-6)
    assert 30 <= dist.params["candidates"] <= 4 * 30
    whole = store.select("pool", "tgt", 30, save=False, method=method)
    assert dist.residual <= whole.residual * 1.2  # clustered pool: close to one pursuit
    # a query: each part task gets its share of the kept rows and the caps
    first = store.select("pool", "tgt", 8, method="less")
    query = dict(partitions=4, method=method, extend=first.selection_id,
                 max_share="subtask=0.5", save=False)
    local = store.select("pool", "tgt", 30, **query)
    dist = store.select("pool", "tgt", 30, ray="local", **query)
    assert dist.ids == local.ids and dist.ids[:8] == first.ids


@pytest.mark.parametrize("pursuit", [gtp, gtp_paper], ids=["gtp", "gtp-paper"])
def test_gtp_with_distributed_scans_equals_in_ram_gtp(ray_cluster, store, pursuit):
    local, dist = _pools(store, 2)
    if pursuit is gtp:  # the default gtp works in the pool-centred space
        local, dist = local.centered(), dist.centered()
    rows = local.rows(np.arange(0, 3000, 97)).double().numpy()
    y = rows.mean(0) if pursuit is gtp else rows.sum(0)
    (a,) = pursuit(local, [Query(y, 25)])
    (b,) = pursuit(dist, [Query(y, 25)])
    np.testing.assert_array_equal(a.rows, b.rows)
    assert len(set(a.rows.tolist())) == 25
    assert b.residual == pytest.approx(a.residual, abs=1e-6)
    assert b.scans == a.scans
    # the residual reported is the fit of what was chosen, by numpy
    A = local.rows(a.rows).double().numpy()
    fit = A.mean(0) if pursuit is gtp else A.T @ a.weights[:, 0]
    assert a.residual == pytest.approx(np.linalg.norm(fit - y) / np.linalg.norm(y), rel=1e-4)


def test_bad_partition_options(store):
    with pytest.raises(gradstore.GradstoreError, match="gtp and gtp-paper only"):
        store.select("pool", "tgt", 10, method="less", partitions=2, save=False)
    with pytest.raises(gradstore.GradstoreError, match="whole number"):
        store.select("pool", "tgt", 10, partitions=0, save=False)


def test_damage_read_by_a_task_is_the_one_line_error(ray_cluster, tmp_path):
    """Tasks check what they read: bytes flipped after the driver opened the table (as on
    another node, or an object store that changed) fail the scan with gradstore's damage
    error, and `select --ray` prints it as one line, exit 2 (not Ray's task traceback)."""
    from gradstore.store.integrity import DamagedTable
    from tests.cli.test_cli import run

    rng = np.random.default_rng(9)
    path = tmp_path / "store"
    st = gradstore.open(path)
    X = rng.normal(size=(2000, T * D)).astype(np.float32)
    st.import_vectors("pool", X[:, :D], checkpoint="c1", ids=[f"p{i}" for i in range(2000)])
    st.import_vectors("pool", X[:, D:], checkpoint="c2")
    st.import_vectors("tgt", X[:4, :D] + 1, checkpoint="c1", kind="target")
    st.import_vectors("tgt", X[:4, D:] + 1, checkpoint="c2")
    dist = DistributedPool(st.source("pool", "stream"), [1.0, 1.0], tasks=2)
    (f,) = [p for p in (path / "pool.lance" / "data").iterdir()
            if p.stat().st_size == max(q.stat().st_size
                                       for q in (path / "pool.lance" / "data").iterdir())]
    raw = bytearray(f.read_bytes())
    mid = len(raw) // 3
    raw[mid:mid + 4096] = bytes(b ^ 0x5A for b in raw[mid:mid + 4096])
    f.write_bytes(bytes(raw))
    with pytest.raises(DamagedTable, match="table 'pool'"):
        dist.scan(np.ones((T * D, 1), dtype=np.float32), [ScanQuery(slice(0, 1), 5)])
    res = run("select", path, "--pool", "pool", "--target", "tgt", "--budget", "10",
              "--ray", "auto", "--quiet", ok=False)
    assert res.returncode == 2 and "damaged" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "ray::" not in res.stderr

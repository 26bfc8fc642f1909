"""The LanceDB store: import, provenance, validation, reading back, selections."""

import json

import numpy as np
import pytest
import torch

import gradstore
from gradstore.errors import GradstoreError
from gradstore.selectors.gtp import gtp
from gradstore.selectors.gtp_paper import gtp_paper
from gradstore.selectors.query import Query
from gradstore.selectors.source import TensorSource
from gradstore.selectors.stacked import StackedPool
from tests.conftest import clustered_rows


@pytest.fixture
def store(tmp_path):
    return gradstore.open(tmp_path / "store")


def _snapshot(store, table):
    ids, X = store.vectors(table)
    return ids, X.copy(), store.info(table)


def test_import_roundtrip_two_checkpoints_by_id(store, rng):
    X0 = rng.standard_normal((50, 16)).astype(np.float32)
    X1 = rng.standard_normal((50, 16)).astype(np.float32)
    ids = [f"ex{i}" for i in range(50)]
    store.import_vectors("pool", X0, checkpoint="c1", ids=ids, lr=2e-5)
    perm = rng.permutation(50)
    store.import_vectors("pool", X1[perm], checkpoint="c2", ids=[ids[i] for i in perm], lr=1e-5)
    got_ids, got0 = store.vectors("pool", "c1")
    _, got1 = store.vectors("pool", "c2")
    assert got_ids == ids
    np.testing.assert_allclose(got0, X0.astype(np.float16).astype(np.float32))
    np.testing.assert_allclose(got1, X1.astype(np.float16).astype(np.float32))
    _, both = store.vectors("pool")
    assert both.shape == (50, 32)
    info = store.info("pool")
    assert [c["name"] for c in info["checkpoints"]] == ["c1", "c2"]
    assert [c["lr"] for c in info["checkpoints"]] == [2e-5, 1e-5]
    assert info["rows"] == 50 and info["dim"] == 16 and info["vector_dtype"] == "float16"


def test_float32_storage_is_exact(store, rng):
    X = rng.standard_normal((10, 8)).astype(np.float32)
    store.import_vectors("p", X, vector_dtype="float32")
    np.testing.assert_array_equal(store.vectors("p")[1], X)


def test_less_pt_file_imports_as_is(tmp_path, store, rng):
    X = torch.randn(30, 24)
    path = tmp_path / "all_orig.pt"
    torch.save(X, path)
    from gradstore.store.importing import read_vector_file

    store.import_vectors("less", read_vector_file(path))
    np.testing.assert_allclose(store.vectors("less")[1], X.half().float().numpy())


@pytest.mark.parametrize(
    "bad,match",
    [
        (lambda X: np.where(np.arange(X.shape[0])[:, None] == 3, np.nan, X), "NaN or inf"),
        (lambda X: np.where(np.arange(X.shape[0])[:, None] == 1, np.inf, X), "NaN or inf"),
        (lambda X: X[:, :5], "dims"),
        (lambda X: X[:7], "rows"),
        (lambda X: X[0], "2-D"),
        (lambda X: X[:0], "empty"),
        (lambda X: X * 1e6, "float16"),
    ],
)
def test_bad_vectors_rejected_and_store_intact(store, rng, bad, match):
    X = rng.standard_normal((10, 8)).astype(np.float32)
    store.import_vectors("pool", X, checkpoint="a")
    before = _snapshot(store, "pool")
    with pytest.raises(GradstoreError, match=match):
        store.import_vectors("pool", bad(X), checkpoint="b")
    after = _snapshot(store, "pool")
    assert before[0] == after[0]
    np.testing.assert_array_equal(before[1], after[1])
    assert before[2]["checkpoints"] == after[2]["checkpoints"]


def test_duplicate_and_mismatched_ids(store, rng):
    X = rng.standard_normal((4, 8)).astype(np.float32)
    with pytest.raises(GradstoreError, match="not unique"):
        store.import_vectors("p", X, ids=["a", "b", "a", "c"])
    assert store.tables() == []
    store.import_vectors("p", X, ids=["a", "b", "c", "d"])
    with pytest.raises(GradstoreError, match="ids do not match"):
        store.import_vectors("p", X, checkpoint="1", ids=["a", "b", "c", "e"])
    with pytest.raises(GradstoreError, match="already in table"):
        store.import_vectors("p", X, checkpoint="0")
    with pytest.raises(GradstoreError, match="ids given"):
        store.import_vectors("q", X, ids=["a"])


def test_missing_store_and_table(tmp_path, store):
    with pytest.raises(GradstoreError, match="does not exist"):
        gradstore.open(tmp_path / "nowhere", create=False)
    with pytest.raises(GradstoreError, match="not in store"):
        store.vectors("ghost")
    with pytest.raises(GradstoreError, match="not in store"):
        store.select("ghost", budget=3)
    with pytest.raises(GradstoreError, match="not in store"):
        store.selection("nope")


def _pool_and_target(store, rng, n=600, T=2, d=32):
    X = clustered_rows(rng, n, T, d)
    for t in range(T):
        store.import_vectors(
            "pool",
            X[:, t * d : (t + 1) * d],
            checkpoint=str(t),
            lr=[2e-5, 1e-5][t],
            ids=[f"p{i}" for i in range(n)],
        )
    tgt = X[rng.choice(n, 12, replace=False)] + 0.1 * rng.standard_normal((12, T * d))
    sub = ["x", "y", "z"] * 4
    for t in range(T):
        store.import_vectors(
            "tgt",
            tgt[:, t * d : (t + 1) * d].astype(np.float32),
            checkpoint=str(t),
            lr=[2e-5, 1e-5][t],
            subtasks=sub,
            kind="target",
        )
    return X, tgt


def test_default_gtp_equals_selector_on_the_centred_matrix(store, rng):
    X, tgt = _pool_and_target(store, rng)
    sel = store.select("pool", target="tgt", budget=20)
    X16 = X.astype(np.float16).astype(np.float32)
    center = X16.astype(np.float64).mean(0)
    pool = StackedPool(TensorSource(X16 - center.astype(np.float32), 2), eta=[2e-5, 1e-5])
    tpool = StackedPool(TensorSource(tgt.astype(np.float16).astype(np.float32)
                                     - center.astype(np.float32), 2), eta=[2e-5, 1e-5])
    rows = tpool.rows(np.arange(12)).double().numpy()
    se = np.sqrt(rows.var(0, ddof=1).sum() / 12)  # the target mean's standard error
    (ref,) = gtp(pool, [Query(rows.mean(0), 20, tolerance=se)])
    assert sel.ids == [f"p{i}" for i in ref.rows] and len(sel.ids) == 20
    assert sel.params["tolerance"] == pytest.approx(se) and sel.params["alpha"] >= 1
    np.testing.assert_allclose(sel.weights, 1.0)
    assert abs(sel.residual - ref.residual) < 1e-5
    assert sel.params["centered"] and not store.selection(sel.selection_id).history == []


def test_select_equals_selector_on_same_matrix(store, rng):
    X, tgt = _pool_and_target(store, rng)
    sel = store.select("pool", target="tgt", budget=20, method="gtp-paper")
    X16 = X.astype(np.float16).astype(np.float32)
    pool = StackedPool(TensorSource(X16, 2), eta=[2e-5, 1e-5])
    tpool = StackedPool(
        TensorSource(tgt.astype(np.float16).astype(np.float32), 2), eta=[2e-5, 1e-5]
    )
    y = tpool.rows(np.arange(12)).double().numpy().mean(0)
    (ref,) = gtp_paper(pool, [Query(y, 20)])
    assert sel.ids == [f"p{i}" for i in ref.rows]
    np.testing.assert_allclose(sel.weights, ref.total_weights, rtol=1e-5)
    assert abs(sel.residual - ref.residual) < 1e-6
    again = store.selection(sel.selection_id)
    assert again.ids == sel.ids and again.method == "gtp-paper" and again.budget == "20"
    np.testing.assert_allclose(again.weights, sel.weights)
    assert again.params["target_mode"] == "mean"
    assert json.dumps(sel.to_dict())
    df = sel.to_polars()
    assert df["id"].to_list() == sel.ids and df["rank"].to_list()[0] == 1


def test_streaming_equals_in_ram(store, rng):
    _pool_and_target(store, rng, n=1500)
    for method in ("gtp", "gtp-paper", "omp", "less"):
        ram = store.select("pool", target="tgt", budget=[10, 30], method=method, mode="ram")
        stream = store.select("pool", target="tgt", budget=[10, 30], method=method, mode="stream")
        for a, b in zip(ram, stream, strict=True):
            assert a.ids == b.ids, method
            np.testing.assert_allclose(a.weights, b.weights, rtol=1e-5)
            assert abs(a.residual - b.residual) < 1e-6
        assert stream[0].params["scan_mode"] == "LanceSource"
        assert ram[0].params["scan_mode"] == "TensorSource"


def test_many_targets_and_budgets_one_run(store, rng):
    _pool_and_target(store, rng)
    sels = store.select("pool", target=["tgt", None], budget=["2%", 25], method="gtp")
    assert [(s.target, s.budget, s.k) for s in sels] == [
        ("tgt", "0.02", 12),
        ("tgt", "25", 25),
        (None, "0.02", 12),
        (None, "25", 25),
    ]
    for s in sels:
        single = store.select("pool", target=s.target, budget=s.k, method="gtp")
        assert single.ids == s.ids
        assert 0 < len(s.ids) <= s.k and np.all(s.weights > 0)
    joint = store.select("pool", target="tgt", budget=20, target_mode="joint")
    assert len(joint.ids) <= 20


def test_random_and_less_selections(store, rng):
    _pool_and_target(store, rng)
    r1 = store.select("pool", budget=0.05, method="random", seed=1)
    r2 = store.select("pool", budget=0.05, method="random", seed=1)
    assert r1.ids == r2.ids and len(r1.ids) == 30 and np.all(r1.weights == 1)
    le = store.select("pool", target="tgt", budget=30, method="less")
    paper = store.select("pool", target="tgt", budget=30, method="gtp-paper")
    assert len(le.ids) == 30
    assert paper.residual <= le.residual + 1e-9  # both: the NNLS fit in the same space
    gt = store.select("pool", target="tgt", budget=30, method="gtp")
    assert len(gt.ids) == 30 and np.all(gt.weights == 1)


def test_incompatible_target_refused(store, rng):
    _pool_and_target(store, rng)
    store.import_vectors("other", rng.standard_normal((5, 32)).astype(np.float32), checkpoint="0")
    with pytest.raises(GradstoreError, match="differ in checkpoints"):
        store.select("pool", target="other", budget=5)
    store.import_vectors("wrongdim", rng.standard_normal((5, 16)).astype(np.float32))
    with pytest.raises(GradstoreError, match="differ in dimension"):
        store.select("pool", target="wrongdim", budget=5)
    store.import_vectors(
        "proj",
        rng.standard_normal((5, 32)).astype(np.float32),
        projection={"kind": "rademacher", "seed": 1, "dim": 32},
    )
    store.import_vectors(
        "proj",
        rng.standard_normal((5, 32)).astype(np.float32),
        checkpoint="1",
        projection={"kind": "rademacher", "seed": 1, "dim": 32},
    )
    with pytest.raises(GradstoreError, match="'pool' and target 'proj' differ in projection"):
        store.select("pool", target="proj", budget=5)


def test_budget_out_of_range_and_bad_options(store, rng):
    _pool_and_target(store, rng)
    with pytest.raises(GradstoreError, match="pool has 600"):
        store.select("pool", budget=601)
    with pytest.raises(GradstoreError, match="method"):
        store.select("pool", budget=5, method="magic")
    with pytest.raises(GradstoreError, match="^--target-mode 'sideways' is not one of "
                       "mean, joint, clusters, parts$"):
        store.select("pool", budget=5, target_mode="sideways")
    assert store.selections() == []


def test_memory_budget_decides_ram_or_streamed_and_the_answer_stays(store, rng):
    """A pool is held in RAM only when it takes at most half the budget (the other half is
    the selection's); under a small budget it is streamed by row ranges, the same answer."""
    _pool_and_target(store, rng, n=1500)
    need = 1500 * 2 * 32 * 2  # rows x checkpoints x dims x float16
    for method in ("gtp", "less"):
        ram = store.select("pool", target="tgt", budget=20, method=method,
                           memory_budget=2 * need)
        half = store.select("pool", target="tgt", budget=20, method=method,
                            memory_budget=2 * need - 1)
        tiny = store.select("pool", target="tgt", budget=20, method=method, mode="stream",
                            memory_budget=1 << 20)  # below SCANNER_MIN_BUDGET: row ranges
        assert ram.params["scan_mode"] == "TensorSource"
        assert half.params["scan_mode"] == tiny.params["scan_mode"] == "LanceSource"
        assert ram.ids == half.ids == tiny.ids, method
        np.testing.assert_allclose(tiny.weights, ram.weights, rtol=1e-5)


def test_a_small_budget_leaves_the_library_code_its_share(store, rng):
    """A streamed default gtp's round gets half the budget less the ~48 MB of library code
    a first scan maps (``LIBRARY_CODE``): at 50 MB, the fewest candidates a round takes
    (256); at 1 GB, the default 2k; in RAM, 2k whatever the budget."""
    from gradstore.ops.select import LIBRARY_CODE, ROUND_SHARE
    from gradstore.selectors.gtp import MIN_CANDIDATES, candidates_within

    _pool_and_target(store, rng, n=3000)
    k = 300
    small = store.select("pool", target="tgt", budget=k, mode="stream", memory_budget=50 << 20)
    large = store.select("pool", target="tgt", budget=k, mode="stream", memory_budget=1 << 30)
    ram = store.select("pool", target="tgt", budget=k, mode="ram", memory_budget=50 << 20)
    assert small.params["candidates_per_scan"] == MIN_CANDIDATES
    assert candidates_within(int((50 << 20) * ROUND_SHARE), k, 64) == 2 * k  # share alone
    assert int((50 << 20) * ROUND_SHARE) < LIBRARY_CODE
    assert large.params["candidates_per_scan"] == ram.params["candidates_per_scan"] == 2 * k

"""Scans on a device (``ScanDevice``): the pool kept on the device between scans, or copied
block by block, gives the candidates of the plain CPU scan; the CUDA cases run only where
torch sees a GPU (``benchmarks/gpu_check.py`` runs them at scale)."""

import json

import numpy as np
import pytest
import torch

from gradstore import Store
from gradstore.selectors.gtp import gtp
from gradstore.selectors.less import less_topk
from gradstore.selectors.query import Query
from gradstore.selectors.scan import MAXIMUM, ScanDevice, ScanQuery, correlation_scan
from gradstore.selectors.source import TensorSource
from gradstore.selectors.stacked import StackedPool
from tests.cli.test_cli import run
from tests.cli.test_user_errors import one_line_exit_2

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA device")


def pool_of(X: np.ndarray, T: int, device: ScanDevice | None = None) -> StackedPool:
    return StackedPool(TensorSource(torch.from_numpy(X), T), eta=[1.0, 3.0], device=device)


def stacked_by_hand(X: np.ndarray, T: int, eta: list[float]) -> np.ndarray:
    """The stacked rows from their definition, in float64: each checkpoint block of a row
    scaled to unit norm, times sqrt(eta_t / sum eta)."""
    blocks = X.astype(np.float64).reshape(len(X), T, -1)
    blocks /= np.linalg.norm(blocks, axis=2, keepdims=True)
    w = np.sqrt(np.asarray(eta) / np.sum(eta))
    return (blocks * w[None, :, None]).reshape(len(X), -1)


def brute_scores(A: np.ndarray, R: np.ndarray, q: ScanQuery) -> np.ndarray:
    """Query q's score of every row from the dense product, from ScanQuery's definition."""
    c = q.sign * (A @ R[:, q.columns].astype(np.float64))
    score = np.clip(c, 0, None).sum(1) if q.reduce != MAXIMUM else c.max(1)
    if q.penalty is not None:
        score = score - q.penalty
    if q.exclude is not None:
        score[q.exclude] = -np.inf
    return score


def brute_force(A: np.ndarray, R: np.ndarray, q: ScanQuery) -> np.ndarray:
    """Query q's top rows from the dense product, straight from ScanQuery's definition."""
    score = brute_scores(A, R, q)
    order = np.lexsort((np.arange(len(score)), -score))
    keep = order[: q.m]
    return keep[np.isfinite(score[keep]) & ((score[keep] > 0) | (q.reduce == MAXIMUM))]


def queries(rng, N: int) -> list[ScanQuery]:
    return [ScanQuery(slice(0, 1), 40, exclude=rng.choice(N, 50, replace=False)),
            ScanQuery(slice(1, 3), 60, penalty=rng.uniform(0, 0.05, N).astype(np.float32)),
            ScanQuery(slice(3, 4), 25, reduce=MAXIMUM, sign=-1.0)]


@pytest.mark.parametrize("keep", [True, False])
def test_kept_or_copied_blocks_give_the_cpu_scan(rng, keep):
    N, T, d = 2500, 2, 24
    X = rng.standard_normal((N, T * d)).astype(np.float16)
    R = rng.standard_normal((T * d, 4)).astype(np.float32)
    qs = queries(rng, N)
    plain = correlation_scan(pool_of(X, T), R, qs)
    dev = ScanDevice("cpu", keep=keep)
    pool = pool_of(X, T, dev)
    on_dev = correlation_scan(pool, R, qs, device=dev)
    A = stacked_by_hand(X, T, [1.0, 3.0])
    for (rows, scores), (rows0, scores0), q in zip(on_dev, plain, qs, strict=True):
        np.testing.assert_array_equal(rows, rows0)
        np.testing.assert_array_equal(scores, scores0)
        assert set(rows.tolist()) == set(brute_force(A, R, q).tolist())
        np.testing.assert_allclose(scores, brute_scores(A, R, q)[rows], rtol=1e-4, atol=1e-5)
    assert (dev.resident is not None) == keep


def test_the_kept_pool_is_reused_and_replaced_by_another(rng):
    X = rng.standard_normal((600, 32)).astype(np.float32)
    dev = ScanDevice("cpu", keep=True)
    pool = pool_of(X, 2, dev)
    R = rng.standard_normal((32, 1)).astype(np.float32)
    q = [ScanQuery(slice(0, 1), 10)]
    pool.scan(R, q)
    held = dev.resident[1]
    centred = pool.centered()  # same source: still the same copy
    centred.scan(R, q)
    assert dev.resident[1] is held
    sub = pool.subset(np.arange(100, 300))  # another source: it replaces the copy
    (rows, _), = sub.scan(R, q)
    assert dev.resident[0] is sub.source and dev.resident[1].shape == (200, 32)
    (rows0, _), = StackedPool(TensorSource(X[100:300], 2), eta=[1.0, 3.0]).scan(R, q)
    np.testing.assert_array_equal(rows, rows0)


def test_pursuits_on_a_kept_pool_choose_what_they_choose_on_the_cpu(rng):
    X = rng.standard_normal((800, 2 * 16)).astype(np.float32)
    y = X[:20].mean(0)
    plain, kept = pool_of(X, 2).centered(), pool_of(X, 2, ScanDevice("cpu", True)).centered()
    Y = plain.target(X[:20])[0]
    # centred on the mean stored row, then each checkpoint block scaled (the default gtp's)
    A = stacked_by_hand(X - X.astype(np.float64).mean(0), 2, [1.0, 3.0])
    for k in (5, 40):
        (a,), (b,) = gtp(plain, [Query(Y, k)]), gtp(kept, [Query(Y, k)])
        np.testing.assert_array_equal(a.rows, b.rows)
        # the residual is the chosen rows' mean against the target, by numpy
        y0 = Y.mean(1)
        want = np.linalg.norm(A[b.rows].mean(0) - y0) / np.linalg.norm(y0)
        assert b.residual == pytest.approx(want, rel=1e-4)
    (r1, _), = less_topk(pool_of(X, 2), [y[:, None]], [30])
    (r2, s2), = less_topk(pool_of(X, 2, ScanDevice("cpu", True)), [y[:, None]], [30])
    np.testing.assert_array_equal(r1, r2)
    # LESS on the kept pool: the 30 best cosines of the stacked rows, by numpy
    cos = stacked_by_hand(X, 2, [1.0, 3.0]) @ y.astype(np.float64)
    assert set(r2.tolist()) == set(np.argsort(-cos)[:30].tolist())
    np.testing.assert_allclose(s2, cos[r2], rtol=1e-4, atol=1e-6)


def test_select_device_on_a_machine_without_cuda(tmp_path, rng):
    X = rng.standard_normal((200, 16)).astype(np.float32)
    np.save(tmp_path / "pool.npy", X)
    np.save(tmp_path / "target.npy", X[:5])
    s = tmp_path / "s"
    run("import", s, "pool", "--vectors", tmp_path / "pool.npy")
    run("import", s, "target", "--vectors", tmp_path / "target.npy", "--kind", "target")
    base = ["select", s, "--pool", "pool", "--target", "target", "--budget", "10",
            "--format", "json"]
    on_cpu, auto = (json.loads(run(*base, *more).stdout)[0]
                    for more in (["--device", "cpu"], []))
    for key in ("ids", "weights", "residual"):
        assert on_cpu[key] == auto[key]
    assert Store(s).selection(on_cpu["selection_id"]).params["device"] == "cpu"
    if not torch.cuda.is_available():
        before = len(Store(s).selections())
        one_line_exit_2(run(*base, "--device", "cuda", ok=False), "CUDA is not available")
        assert len(Store(s).selections()) == before
    one_line_exit_2(run(*base, "--device", "tpu9", ok=False), "not valid")


@cuda
def test_cuda_scan_gives_the_cpu_candidates(rng):
    N, T, d = 20000, 2, 64
    X = rng.standard_normal((N, T * d)).astype(np.float16)
    R = rng.standard_normal((T * d, 4)).astype(np.float32)
    qs = queries(rng, N)
    plain = correlation_scan(pool_of(X, T), R, qs)
    for keep in (None, False):
        dev = ScanDevice("cuda", keep=keep)
        got = correlation_scan(pool_of(X, T, dev), R, qs, device=dev)
        for (rows, scores), (rows0, scores0) in zip(got, plain, strict=True):
            # float32 products summed in another order: the same rows up to near-ties
            assert len(set(rows.tolist()) ^ set(rows0.tolist())) <= 2
            np.testing.assert_allclose(np.sort(scores), np.sort(scores0), rtol=1e-4, atol=1e-5)


@cuda
def test_cuda_selection_equals_the_cpu_one(rng):
    X = rng.standard_normal((3000, 2 * 32)).astype(np.float32)
    pool = pool_of(X, 2).centered()
    gpu = pool_of(X, 2, ScanDevice("cuda")).centered()
    Y = pool.target(X[:30])[0]
    (a,), (b,) = gtp(pool, [Query(Y, 50)]), gtp(gpu, [Query(Y, 50)])
    assert len(set(a.rows.tolist()) & set(b.rows.tolist())) >= 48
    assert b.residual == pytest.approx(a.residual, rel=1e-3)

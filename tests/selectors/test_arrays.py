"""The array entry points answer as the store does for the same vectors."""

import numpy as np
import pytest

import gradstore
from gradstore.selectors import arrays
from tests.conftest import clustered_rows


@pytest.fixture
def case(tmp_path):
    rng = np.random.default_rng(3)
    X = clustered_rows(rng, 500, 2, 16) + 0.3
    T = X[rng.choice(500, 9, replace=False)] + 0.1 * rng.standard_normal((9, 32))
    store = gradstore.open(tmp_path / "s")
    for t, lr in enumerate([2.0, 1.0]):
        store.import_vectors("pool", X[:, t * 16:(t + 1) * 16], checkpoint=str(t), lr=lr,
                             vector_dtype="float32")
        store.import_vectors("tgt", T[:, t * 16:(t + 1) * 16].astype(np.float32),
                             checkpoint=str(t), vector_dtype="float32", kind="target")
    return store, X, T


@pytest.mark.parametrize("method", ["gtp", "gtp-paper", "omp", "less"])
def test_arrays_answer_as_the_store(case, method):
    store, X, T = case
    fn = {"gtp": arrays.gtp, "gtp-paper": arrays.gtp_paper, "omp": arrays.omp,
          "less": arrays.less}[method]
    for target, t_rows in (("tgt", T), (None, None)):
        sel = store.select("pool", target=target, budget=12, method=method, save=False)
        got = fn(X, t_rows, 12, num_checkpoints=2, eta=[2.0, 1.0])
        assert [f"{i}" for i in got[0]] == sel.ids, (method, target)
        if method != "less":
            np.testing.assert_allclose(got[1], sel.weights, rtol=1e-5)
            assert got[2] == pytest.approx(sel.residual, rel=1e-5, abs=1e-7)


def test_arrays_check_shapes():
    with pytest.raises(ValueError, match=r"\(N, T\*d\)"):
        arrays.gtp(np.zeros(5), None, 2)

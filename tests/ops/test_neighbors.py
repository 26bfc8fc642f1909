"""``neighbors`` against brute force: every (pool row, target row) score computed directly
from the stored vectors as LESS defines it, sum_t eta_t cos(g_i^t, g_j^t)."""

import json

import numpy as np
import pytest

import gradstore
from tests.cli.test_cli import run

N, D, LRS = 120, 12, (2.0, 1.0)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    rng = np.random.default_rng(3)
    st = gradstore.open(tmp_path_factory.mktemp("nb") / "s")
    X = rng.standard_normal((N, 2, D)).astype(np.float32)
    T = X[[5, 50, 90, 17]] + 0.3 * rng.standard_normal((4, 2, D)).astype(np.float32)
    for c, lr in enumerate(LRS):
        st.import_vectors("pool", X[:, c], str(c), ids=[f"p{i}" for i in range(N)], lr=lr)
        st.import_vectors("tgt", T[:, c], str(c), ids=[f"t{j}" for j in range(4)], lr=lr,
                          kind="target")
    return st


def brute_scores(st) -> np.ndarray:
    """(pool rows, target rows) LESS scores from the stored vectors."""
    eta = np.array(LRS) / sum(LRS)
    total = 0
    for c in range(2):
        p, t = st.vectors("pool", str(c))[1], st.vectors("tgt", str(c))[1]
        p = p / np.linalg.norm(p, axis=1, keepdims=True)
        t = t / np.linalg.norm(t, axis=1, keepdims=True)
        total = total + eta[c] * (p.astype(np.float64) @ t.T.astype(np.float64))
    return total


@pytest.mark.parametrize("mode", ["ram", "stream"])
def test_each_target_rows_neighbours_are_the_brute_force_top_k(store, mode):
    S = brute_scores(store)
    got = store.neighbors("pool", "tgt", k=4, mode=mode)
    assert [(n.target_id, n.rank) for n in got] == [(f"t{j}", r) for j in range(4)
                                                    for r in range(1, 5)]
    for j in range(4):
        want = np.argsort(-S[:, j], kind="stable")[:4]
        mine = [n for n in got if n.target_id == f"t{j}"]
        assert [n.pool_id for n in mine] == [f"p{i}" for i in want]
        np.testing.assert_allclose([n.score for n in mine], S[want, j], rtol=0, atol=1e-5)
    assert got[0].pool_id == "p5" and got[4].pool_id == "p50"  # each target row's source


def test_one_row_and_the_reverse(store):
    S = brute_scores(store)
    one = store.neighbors("pool", "tgt", k=3, row="t2")
    assert [n.pool_id for n in one] == [f"p{i}" for i in np.argsort(-S[:, 2])[:3]]
    rev = store.neighbors("pool", "tgt", k=2, of="p50")
    order = np.argsort(-S[50])[:2]
    assert [n.target_id for n in rev] == [f"t{j}" for j in order] and rev[0].target_id == "t1"
    np.testing.assert_allclose([n.score for n in rev], S[50, order], rtol=0, atol=1e-5)


def test_neighbors_on_the_command_line(store):
    out = json.loads(run("neighbors", store.uri, "--pool", "pool", "--target", "tgt", "--k",
                         "2", "--format", "json").stdout)
    assert len(out) == 8 and out[0] == {**out[0], "target_id": "t0", "pool_id": "p5",
                                         "rank": 1}
    text = run("neighbors", store.uri, "--pool", "pool", "--target", "tgt", "--of", "p5",
               "--k", "1").stdout
    assert text.split()[:3] == ["t0", "1", "p5"]


@pytest.mark.parametrize("args, message", [
    (["--row", "nope"], "row 'nope' is not in target 'tgt'"),
    (["--of", "nope"], "row 'nope' is not in pool 'pool'"),
    (["--row", "t1", "--of", "p1"], "not both"),
    (["--k", "0"], "must be at least 1"),
])
def test_bad_neighbour_queries_are_one_line(store, args, message):
    res = run("neighbors", store.uri, "--pool", "pool", "--target", "tgt", *args, ok=False)
    assert res.returncode == 2 and message in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_neighbours_carry_the_pool_rows_text(store, tmp_path):
    assert all(n.text is None for n in store.neighbors("pool", "tgt", k=1))  # no data file
    data = tmp_path / "pool.jsonl"
    data.write_text("".join(json.dumps({"id": f"p{i}", "text": f"row {i}"}) + "\n"
                            for i in range(N)))
    got = store.neighbors("pool", "tgt", k=2, data=data)
    assert [n.text for n in got[:2]] == [f"row {n.pool_id[1:]}" for n in got[:2]]
    assert got[0].text == "row 5"
    out = run("neighbors", store.uri, "--pool", "pool", "--target", "tgt", "--k", "1",
              "--data", data).stdout
    assert out.splitlines()[0].split()[-2:] == ["row", "5"]
    short = tmp_path / "short.jsonl"
    short.write_text(json.dumps({"id": "p0", "text": "x"}) + "\n")
    res = run("neighbors", store.uri, "--pool", "pool", "--target", "tgt", "--data", short,
              ok=False)
    assert res.returncode == 2 and "are not in" in res.stderr

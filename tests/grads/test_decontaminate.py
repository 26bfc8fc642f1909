"""``--exclude-near TABLE[:COSINE]`` on ingested tables (real content hashes, real
gradients) against its independent computation: the copies found by comparing the data
files' messages, the close rows found by brute-force cosines from the stored vectors, and
the selection that excludes exactly those ids by a file."""

import json

import numpy as np
import pytest

import gradstore
from tests.cli.test_cli import run
from tests.grads.test_ingest import train_checkpoints, write_chat_data

COPIES = {3: 0, 11: 2, 17: 4}  # pool row -> the test row it copies


@pytest.fixture(scope="module")
def store(llama_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("decontam")
    ckpts = train_checkpoints(llama_dir, root / "warmup")
    test = write_chat_data(root / "test.jsonl", 6, seed=9)
    pool = write_chat_data(root / "pool.jsonl", 30, seed=8)
    test_rows = [json.loads(x) for x in test.read_text().splitlines()]
    rows = [json.loads(x) for x in pool.read_text().splitlines()]
    for p, t in COPIES.items():  # the same conversation under the pool's own id
        rows[p]["messages"] = test_rows[t]["messages"]
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    st = gradstore.open(root / "store")
    common = dict(model=str(llama_dir), checkpoints=[str(c) for c in ckpts], proj_dim=32,
                  batch_size=4, vector_dtype="float32", progress=False)
    st.ingest("pool", data=str(pool), **common)
    st.ingest("test", data=str(test), kind="target", **common)
    return st, root


def brute_cosines(st) -> np.ndarray:
    """(pool rows, test rows): sum_t eta_t cos over the stored vectors (eta: the lrs)."""
    meta = st.meta("pool")
    eta = np.array(meta.lrs) / sum(meta.lrs)
    total = 0
    for t, name in enumerate(meta.checkpoint_names):
        p, q = (st.vectors(tab, name)[1].astype(np.float64) for tab in ("pool", "test"))
        p /= np.linalg.norm(p, axis=1, keepdims=True)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        total = total + eta[t] * (p @ q.T)
    return total


def test_copies_of_the_test_rows_are_never_chosen(store):
    st, root = store
    ids = st.ids("pool")
    copies = sorted(f"ex{p}" for p in COPIES)
    sel = st.select("pool", None, budget=27, method="less", exclude_near="test", save=False)
    assert sorted(set(ids) - set(sel.ids)) == copies  # every row but the 3 copies
    assert sel.params["exclude_near"] == {"test": {"same_content": 3, "cosine": None,
                                                   "dropped": 3,
                                                   "ids": ["ex3", "ex11", "ex17"]}}


def test_a_cosine_drops_the_rows_that_close_and_selects_as_excluding_them(store):
    st, root = store
    S = brute_cosines(st).max(1)
    top = np.sort(S)[::-1]
    assert top[7] - top[8] > 1e-4  # (a cut between them holds on any float kernel)
    cut = float((top[7] + top[8]) / 2)  # the 8 pool rows closest to some test row
    near = {f"ex{i}" for i in np.flatnonzero(S >= cut)} | {f"ex{p}" for p in COPIES}
    got = st.select("pool", "test", budget=6, exclude_near=[f"test:{cut!r}"], save=False)
    ids_file = root / "near.txt"
    ids_file.write_text("\n".join(sorted(near)))
    want = st.select("pool", "test", budget=6, exclude=[str(ids_file)], save=False)
    assert got.ids == want.ids and not set(got.ids) & near
    np.testing.assert_array_equal(got.weights, want.weights)
    rec = got.params["exclude_near"][f"test:{cut!r}"]
    assert rec["cosine"] == 8 and rec["dropped"] == len(near)
    assert got.params["rows_allowed"] == 30 - len(near)


@pytest.mark.parametrize("entry, message", [
    ("nope", "nope"),
    ("test:1.5", "the cosine 1.5 is not in [-1, 1]"),
    ("test:high", "'high' is not a cosine; give TABLE or TABLE:COSINE"),
])
def test_bad_decontamination_is_one_line(store, entry, message):
    st, _ = store
    res = run("select", st.uri, "--pool", "pool", "--budget", "3", "--exclude-near", entry,
              "--quiet", ok=False)
    assert res.returncode == 2 and message in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_the_report_shows_what_a_query_dropped(store, tmp_path):
    st, root = store
    sel = st.select("pool", "test", budget=5, exclude_near="test", where="row >= 2")
    rep = st.report([sel.selection_id], tmp_path / "report.html")
    (facts,) = rep.selections
    assert facts.query == ("where row >= 2; near test: 3 dropped (3 same content); "
                           "25 rows allowed")  # rows 0 and 1 fail the predicate
    page = (tmp_path / "report.html").read_text()
    assert "near test: 3 dropped" in page
    assert facts.dropped == {"test": ["ex3", "ex11", "ex17"]}  # each dropped row, listed
    assert 'id="decontamination"' in page and "<code>ex17</code>" in page
    # each test row's 3 closest pool rows, as `neighbors` gives them (LESS's space: the
    # pool's Adam gradients against the target's SGD ones, so a copy need not come first)
    rows = rep.neighbors["test"]
    assert [[(n.target_id, n.pool_id) for n in r] for r in rows] == [
        [(n.target_id, n.pool_id) for n in st.neighbors("pool", "test", 3, row=f"ex{j}")]
        for j in range(6)]
    assert 'id="neighbors"' in (tmp_path / "report.html").read_text()

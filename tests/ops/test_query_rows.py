"""Queries that restrict the pool (``--where``, ``--exclude``) against their independent
computation: the same selection on a store whose pool holds only the allowed rows."""

import json

import numpy as np
import pytest

import gradstore
from gradstore.choices import METHODS
from tests.cli.test_cli import run

N, T, D = 300, 2, 16
SUBTASKS = [f"s{i % 3}" for i in range(N)]
IDS = [f"p{i}" for i in range(N)]


def query_store(path, keep=None):
    """A pool of clustered rows (two checkpoints, subtask labels) and a 6-row target;
    ``keep``: only those pool rows, imported as a pool of their own."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((N, T, D)).astype(np.float32)
    X[:, :, 0] += 3 * np.array([int(s[1]) for s in SUBTASKS])[:, None]  # subtasks differ
    rows = list(range(N)) if keep is None else list(keep)
    st = gradstore.open(path)
    for c in range(T):
        st.import_vectors("pool", X[rows, c], str(c), ids=[IDS[i] for i in rows], lr=1.0,
                          subtasks=[SUBTASKS[i] for i in rows])
        st.import_vectors("tgt", X[[1, 4, 7, 10, 2, 5], c] + 0.1, str(c), lr=1.0,
                          kind="target")
    return st


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    return query_store(tmp_path_factory.mktemp("q") / "whole")


@pytest.fixture(scope="module")
def only_s1(tmp_path_factory):
    return query_store(tmp_path_factory.mktemp("q") / "s1",
                       [i for i in range(N) if SUBTASKS[i] == "s1"])


@pytest.mark.parametrize("mode", ["ram", "stream"])
@pytest.mark.parametrize("method", METHODS)
def test_where_selects_as_a_pool_of_only_the_rows_it_keeps(whole, only_s1, method, mode):
    """Every method, in RAM and streamed: the same ids and weights as on a pool imported
    with only the rows the predicate keeps (the budget in % counts them; gtp's centring
    uses them)."""
    got = whole.select("pool", "tgt", budget=["5%", 7], method=method, mode=mode,
                       where="subtask = 's1'", save=False)
    want = only_s1.select("pool", "tgt", budget=["5%", 7], method=method, mode=mode,
                          save=False)
    assert got[0].params["scan_mode"] == ("LanceSource" if mode == "stream"
                                          else "TensorSource")
    for g, w in zip(got, want, strict=True):
        assert g.ids == w.ids and g.k == w.k
        np.testing.assert_array_equal(g.weights, w.weights)
        assert g.residual == w.residual
    assert got[0].k == 5  # 5% of the 100 rows kept, not of the 300 stored
    assert got[0].params["where"] == "subtask = 's1'" and got[0].params["rows_allowed"] == 100
    assert all(i in {IDS[r] for r in range(1, N, 3)} for s in got for i in s.ids)


def test_exclude_selections_and_files_of_ids(whole, tmp_path):
    first = whole.select("pool", "tgt", budget=10)
    again = whole.select("pool", "tgt", budget=10, exclude=[first.selection_id], save=False)
    assert not set(again.ids) & set(first.ids) and len(again.ids) == 10
    rest = [i for i in range(N) if IDS[i] not in set(first.ids)]
    want = query_store(tmp_path / "rest", rest).select("pool", "tgt", budget=10, save=False)
    assert again.ids == want.ids
    np.testing.assert_array_equal(again.weights, want.weights)
    ids_file = tmp_path / "trained.txt"
    ids_file.write_text("\n".join(first.ids) + "\nnot-in-the-pool\n\n")
    by_file = whole.select("pool", "tgt", budget=10, exclude=str(ids_file), save=False)
    latest = whole.select("pool", "tgt", budget=10, exclude=["latest"], save=False)
    assert by_file.ids == latest.ids == again.ids
    assert by_file.params["exclude"] == [str(ids_file)]


def one_selection(out: str) -> dict:
    got = json.loads(out)
    return got[0] if isinstance(got, list) else got


def test_where_and_exclude_on_the_command_line(whole):
    store = whole.uri
    first = one_selection(run("select", store, "--pool", "pool", "--target", "tgt", "--budget",
                           "6", "--where", "subtask = 's2'", "--format", "json",
                           "--quiet").stdout)
    assert all(SUBTASKS[IDS.index(i)] == "s2" for i in first["ids"])
    second = one_selection(run("select", store, "--pool", "pool", "--target", "tgt", "--budget",
                            "6", "--where", "subtask = 's2'", "--exclude",
                            first["selection_id"], "--exclude", "latest", "--format", "json",
                            "--quiet").stdout)
    assert not set(second["ids"]) & set(first["ids"])
    stored = whole.selection(second["selection_id"]).params
    assert stored["where"] == "subtask = 's2'" and stored["rows_allowed"] == 100 - 6
    assert stored["exclude"] == [first["selection_id"]] * 2  # latest: the one it meant


@pytest.mark.parametrize("args, message", [
    (["--where", "subtask = "], "is not a predicate over table 'pool' (Invalid user input"),
    (["--where", "licence = 'mit'"], "No field named licence); its columns: id, row, subtask"),
    (["--where", "subtask = 'nope'"], "keeps no row of pool 'pool' (300 rows)"),
    (["--where", "1=1; DROP TABLE pool"], "is more than one SQL expression (a ';' outside"),
    (["--where", "vec_0 IS NOT NULL"], "names vec_0 of table 'pool': a query reads the stored"),
    (["--where", '"crc_0" > 0'], "names crc_0 of table 'pool'"),
    (["--where", "  "], "--where is empty"),
    (["--exclude", "0123456789ab"], "--exclude '0123456789ab' is neither a file of ids"),
    (["--where", "subtask = 's1'", "--exclude", "EVERY_S1"],
     "--where, --exclude and --exclude-near leave no row of pool 'pool' (300 rows)"),
    (["--max-share", "subtask=0"], "give FIELD=SHARE with SHARE in (0, 1]"),
    (["--max-share", "subtask=1.5"], "give FIELD=SHARE with SHARE in (0, 1]"),
    (["--max-share", "subtask"], "give FIELD=SHARE"),
    (["--max-share", "licence=0.3"], "has no column 'licence'; its columns: id, row, subtask"),
    (["--max-share", "subtask=0.1"], "allows no row of a value at budget 5"),
    (["--max-share", "subtask=0.5", "--target-mode", "parts", "--partitions", "2"],
     "does not run with --partitions"),
])
def test_bad_queries_are_one_line_and_change_nothing(whole, args, message, tmp_path):
    every_s1 = tmp_path / "s1.txt"
    every_s1.write_text("\n".join(IDS[i] for i in range(N) if SUBTASKS[i] == "s1"))
    args = [str(every_s1) if a == "EVERY_S1" else a for a in args]
    before = len(whole.selections())
    res = run("select", whole.uri, "--pool", "pool", "--target", "tgt", "--budget", "5",
              "--quiet", *args, ok=False)
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert len(whole.selections()) == before


def test_again_reruns_a_recorded_query(whole, tmp_path):
    """--again: the same pool, target, budget, method, options and query (``latest``
    recorded as the selection it meant) give the same answer; on a changed pool it answers
    from the current version."""
    base = whole.select("pool", "tgt", budget=8, method="gtp-paper")
    sel = whole.select("pool", "tgt", budget="4%", method="gtp", where="subtask != 's0'",
                       exclude=["latest"], max_iter=7, seed=3)
    assert sel.params["exclude"] == [base.selection_id]
    again = whole.select_again(sel.selection_id, save=False)
    assert (again.ids, again.method, again.k) == (sel.ids, "gtp", 8)
    np.testing.assert_array_equal(again.weights, sel.weights)
    assert again.params["max_iter"] == 7 and again.params["where"] == "subtask != 's0'"
    cli = one_selection(run("select", whole.uri, "--again", sel.selection_id, "--format", "json",
                   "--quiet").stdout)
    assert cli["ids"] == sel.ids
    shown = json.loads(run("info", whole.uri, "--format", "json").stdout)
    mine = [s for s in shown["selections"] if s["selection_id"] == sel.selection_id]
    kept = {IDS[i] for i in range(N) if SUBTASKS[i] != "s0"} - set(base.ids)
    assert mine[0]["query"] == {"where": "subtask != 's0'", "exclude": [base.selection_id],
                                "rows_allowed": len(kept)}
    assert "where=\"subtask != 's0'\"" in run("info", whole.uri).stdout
    data = tmp_path / "pool.jsonl"
    data.write_text("".join(json.dumps({"id": i, "text": i}) + "\n" for i in IDS))
    exported = json.loads(run("export", whole.uri, "--selection", sel.selection_id, "--data",
                              data, "--out", tmp_path / "sel.jsonl", "--format",
                              "json").stdout)
    assert exported["query"] == mine[0]["query"]
    res = run("select", whole.uri, "--again", sel.selection_id, "--pool", "pool", ok=False)
    assert res.returncode == 2 and "drop --pool" in res.stderr
    res = run("select", whole.uri, "--pool", "pool", ok=False)
    assert res.returncode == 2 and "give --pool and --budget, or --again" in res.stderr


def test_where_after_deleted_rows_counts_positions_among_the_live_rows(tmp_path):
    """Rows dropped from a fragment (``verify --drop-damaged`` deletes them) shift the
    storage positions after them: the predicate's rows are still the right ones."""
    st = query_store(tmp_path / "s")
    st.database.dataset("pool").delete("id = 'p2' OR id = 'p40'")
    sel = st.select("pool", None, budget="100%", method="random", where="subtask = 's2'",
                    save=False)
    want = {IDS[i] for i in range(N) if SUBTASKS[i] == "s2"} - {"p2"}
    assert set(sel.ids) == want and sel.k == len(want) == 99


@pytest.mark.parametrize("method", ["gtp", "gtp-paper"])
def test_where_with_partitions_selects_as_the_subset_pool_partitioned(whole, only_s1, method):
    got = whole.select("pool", "tgt", budget=8, method=method, partitions=3,
                       where="subtask = 's1'", save=False)
    want = only_s1.select("pool", "tgt", budget=8, method=method, partitions=3, save=False)
    assert got.ids == want.ids and got.params["partitions"] == 3
    np.testing.assert_array_equal(got.weights, want.weights)


def test_a_streamed_query_spills_its_rows_for_gtp_and_removes_the_file(whole, only_s1,
                                                                       tmp_path, monkeypatch):
    """gtp passes over a streamed --where pool many times: its rows are spilled to a
    temporary file (in TMPDIR) for the later passes, the answer is the same, and the file
    is gone when the selection ends."""
    import tempfile

    seen = []
    real = tempfile.TemporaryDirectory

    def spy(*args, **kwargs):
        made = real(*args, **kwargs)
        seen.append(made.name)
        return made

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(tempfile, "TemporaryDirectory", spy)
    got = whole.select("pool", "tgt", budget=7, mode="stream", where="subtask = 's1'",
                       save=False)
    want = only_s1.select("pool", "tgt", budget=7, mode="stream", save=False)
    assert got.ids == want.ids and got.residual == want.residual
    assert [n for n in seen if "gradstore-spill-" in n]
    assert not list(tmp_path.glob("gradstore-spill-*"))


def test_where_names_norms_and_keeps_semicolons_inside_strings(whole, tmp_path):
    """A predicate over a per-checkpoint norm keeps the rows its stored norms say (read
    back from the table here, compared in numpy), and a ';' inside a string literal is
    part of the value, not the end of the predicate."""
    norms = whole.database.lance_source("pool").row_norms()[:, 0]
    cut = float(np.median(norms))
    got = whole.select("pool", "tgt", budget=5, method="less", where=f"norm_0 > {cut!r}",
                       save=False)
    assert got.params["rows_allowed"] == int((norms > cut).sum())
    assert {IDS.index(i) for i in got.ids} <= set(np.flatnonzero(norms > cut))
    with pytest.raises(gradstore.GradstoreError, match="keeps no row"):
        whole.select("pool", "tgt", budget=5, where="subtask = 's1; s2'", save=False)

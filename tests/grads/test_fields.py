"""The data rows' scalar fields kept as columns at ingest (``--fields``), against the data
file itself: the ids a ``--where`` over them keeps, the caps of ``--max-share``, the counts
``report --by`` shows without the data file, and a table ingested without them getting
them from the same ingest command, its gradients untouched."""

import json

import numpy as np
import pytest

import gradstore
from tests.cli.test_cli import run
from tests.grads.test_ingest import train_checkpoints, write_chat_data

SOURCES = ["web", "books", "code"]


def _rows(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def store(llama_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("fields")
    ckpts = train_checkpoints(llama_dir, root / "warmup")
    pool = write_chat_data(root / "pool.jsonl", 24, seed=3)
    rows = _rows(pool)
    for i, r in enumerate(rows):
        r |= {"source": SOURCES[i % 3], "n": i, "score": i / 4, "ok": i % 2 == 0,
              "meta": {"a": i},  # an object: not a field
              "meta.b": i}  # a name Lance cannot hold: not kept
        if i % 5 == 0:
            r["licence"] = "mit"  # in some rows only: null in the others
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    st = gradstore.open(root / "store")
    common = dict(model=str(llama_dir), checkpoints=[str(c) for c in ckpts], proj_dim=32,
                  batch_size=4, vector_dtype="float32", progress=False, data=str(pool))
    bare = st.ingest("pool", fields="none", **common)  # as before gradstore kept them
    assert bare.fields == [] and st.fields("pool") == []
    before = st.vectors("pool")[1].copy()
    again = st.ingest("pool", **common)  # the same command: adds them, computes nothing
    assert again.rows_written == 0
    np.testing.assert_array_equal(st.vectors("pool")[1], before)
    return st, root, rows, again


def test_every_scalar_field_becomes_a_column(store):
    st, root, rows, again = store
    assert again.fields == ["licence", "n", "ok", "score", "source"]
    assert st.fields("pool") == again.fields
    shown = json.loads(run("info", st.uri, "pool", "--format", "json").stdout)
    assert shown["fields"] == again.fields
    assert "fields: licence, n, ok, score, source" in run("info", st.uri).stdout


def test_where_over_kept_fields_keeps_the_rows_the_data_says(store):
    st, root, rows, _ = store
    sel = st.select("pool", None, budget="100%", method="random",
                    where="source = 'web' AND n > 4 AND ok AND licence IS NULL", save=False)
    want = {r["id"] for r in rows
            if r["source"] == "web" and r["n"] > 4 and r["ok"] and "licence" not in r}
    assert set(sel.ids) == want == {"ex6", "ex12", "ex18"} and sel.k == 3


def test_max_share_and_report_by_read_the_store(store, tmp_path):
    st, root, rows, _ = store
    sel = st.select("pool", None, budget=9, max_share="source=0.34")
    source = {r["id"]: r["source"] for r in rows}
    counts = {s: sum(source[i] == s for i in sel.ids) for s in SOURCES}
    assert max(counts.values()) <= 3 and len(sel.ids) == 9
    (root / "pool.jsonl").rename(root / "moved.jsonl")  # --by needs no data file now
    try:
        rep = st.report([sel.selection_id], tmp_path / "r.html", by="source")
        gone = run("export", st.uri, "--selection", sel.selection_id, "--out",
                   tmp_path / "x.jsonl", ok=False)
        run("export", st.uri, "--selection", sel.selection_id, "--out", tmp_path / "x.jsonl",
            "--from-store")
    finally:
        (root / "moved.jsonl").rename(root / "pool.jsonl")
    assert gone.returncode == 2 and "or --from-store" in gone.stderr
    # each exported row: its id and kept fields as the data file has them, rank, weight
    kept = ("licence", "n", "ok", "score", "source")
    by_id = {r["id"]: r for r in rows}
    assert _rows(tmp_path / "x.jsonl") == [
        {"id": i, **{k: by_id[i][k] for k in kept if k in by_id[i]}, "rank": n + 1,
         "weight": float(w)}
        for n, (i, w) in enumerate(zip(sel.ids, sel.weights, strict=True))]
    assert rep.pool_composition == {"books": 8, "code": 8, "web": 8}
    assert rep.selections[0].composition == {k: v for k, v in sorted(
        counts.items(), key=lambda kv: (-kv[1], kv[0]))}


def test_export_from_the_store_needs_kept_fields(store, tmp_path):
    st, root, rows, _ = store
    st.import_vectors("bare", np.ones((4, 8), np.float32), "c", ids=list("abcd"))
    sel = st.select("bare", None, budget=2, method="random")
    for extra, message in [([], "keeps none of its rows' fields"),
                           (["--data", root / "pool.jsonl"], "--from-store reads no data")]:
        res = run("export", st.uri, "--selection", sel.selection_id, "--out",
                  tmp_path / "y.jsonl", "--from-store", *extra, ok=False)
        assert res.returncode == 2 and message in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "y.jsonl").exists()


def test_bad_fields_are_one_line(store, llama_dir):
    st, root, rows, _ = store
    for value, message in [("nope", "the data rows have no field 'nope'"),
                           ("meta", "holds lists or objects"),
                           ("messages", "is the example's text"),
                           ("meta.b", "a column name cannot hold '.'")]:
        res = run("ingest", st.uri, "pool", "--model", llama_dir, "--data",
                  root / "pool.jsonl", "--checkpoint", root / "warmup" / "checkpoint-1",
                  "--checkpoint", root / "warmup" / "checkpoint-2", "--proj-dim", "32",
                  "--vector-dtype", "float32", "--fields", value, "--quiet", ok=False)
        assert res.returncode == 2 and message in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1

"""The query as a value (``pool.where(...).exclude(...).max_share(...).select(...)``): each
step is one ``select`` flag, and the selection equals the one the flags give."""

import json

import numpy as np
import pytest

import gradstore
from tests.cli.test_cli import run
from tests.ops.test_query_rows import one_selection, query_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return query_store(tmp_path_factory.mktemp("builder") / "s")


def test_a_built_query_selects_as_its_flags(store):
    pool = store.table("pool")
    first = pool.select("tgt", budget=5)
    q = pool.where("subtask != 's0'").exclude(first).max_share("subtask", 0.6)
    assert isinstance(q, gradstore.PoolQuery)
    assert q.flags() == ["--where", "subtask != 's0'", "--exclude", first.selection_id,
                         "--max-share", "subtask=0.6"]
    got = q.select("tgt", budget=10, save=False)
    cli = one_selection(run("select", store.uri, "--pool", "pool", "--target", "tgt", "--budget",
                   "10", *q.flags(), "--format", "json", "--quiet").stdout)
    assert got.ids == cli["ids"] and not set(got.ids) & set(first.ids)
    np.testing.assert_array_equal(got.weights, cli["weights"])
    assert got.params["where"] == "subtask != 's0'" and got.params["max_share"] == \
        {"subtask": 0.6}


def test_steps_leave_the_query_before_unchanged_and_wheres_combine(store):
    pool = store.table("pool")
    base = pool.where("subtask != 's0'")
    both = base.where("subtask != 's1'")
    assert base.options == {"where": "subtask != 's0'"}
    sel = both.select("tgt", budget=4, save=False)
    assert sel.params["where"] == "(subtask != 's0') AND (subtask != 's1')"
    assert all(store.subtasks("pool")[store.ids("pool").index(i)] == "s2" for i in sel.ids)
    first = pool.select("tgt", budget=3)
    grown = pool.extend(first).select("tgt", budget=6, save=False)
    assert grown.ids[:3] == first.ids
    assert "--extend" in repr(pool.extend(first))
    with pytest.raises(gradstore.GradstoreError, match="where given twice"):
        base.select("tgt", budget=4, where="subtask = 's1'")
    assert json.loads(json.dumps(base.options)) == base.options  # plain values

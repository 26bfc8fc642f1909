"""``select --extend SELECTION``: the kept rows stay, the new ones are the best given them
(LESS: the same as excluding the kept rows and taking the rest of the budget); every method,
Python and the command line, and the refusals."""

import json

import numpy as np
import pytest

from gradstore.choices import METHODS
from tests.cli.test_cli import run
from tests.ops.test_query_rows import IDS, SUBTASKS, one_selection, query_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return query_store(tmp_path_factory.mktemp("ext") / "s")


@pytest.mark.parametrize("method", METHODS)
def test_extend_keeps_the_rows_and_fills_the_budget(store, method):
    first = store.select("pool", "tgt", budget=6, method="less")
    more = store.select("pool", "tgt", budget=["5%", 20], method=method,
                        extend=first.selection_id, save=False)
    for sel, k in zip(more, (15, 20), strict=True):
        assert sel.ids[:6] == first.ids, method  # kept, in their order, first
        assert len(sel.ids) == len(set(sel.ids)) <= k and sel.k == k
        assert np.all(sel.weights >= 0) and len(sel.weights) == len(sel.ids)
        assert sel.params["extend"] == first.selection_id and sel.params["rows_kept"] == 6
    assert len(more[1].ids) == 20 or method in ("gtp-paper", "omp")


@pytest.mark.parametrize("method", ["gtp", "gtp-paper"])
def test_extend_over_a_partitioned_pool(store, method):
    """--partitions: each part's pursuit keeps the kept rows that fall in it, the final
    pursuit keeps them all (its candidates include them), and the budget is filled."""
    first = store.select("pool", "tgt", budget=6, method="less")
    sel = store.select("pool", "tgt", budget=15, method=method, partitions=3,
                       extend=first.selection_id, save=False)
    assert sel.ids[:6] == first.ids and len(sel.ids) == len(set(sel.ids))
    assert len(sel.ids) == 15 or method == "gtp-paper"
    assert sel.params["partitions"] == 3 and sel.params["rows_kept"] == 6
    assert np.all(sel.weights >= 0) and len(sel.weights) == len(sel.ids)


def test_extend_by_the_targets_parts(store):
    """--target-mode parts: every part's gtp pursuit starts from the kept rows and keeps
    them; the answer is the kept rows, then the parts' new rows in turn, no row twice."""
    first = store.select("pool", "tgt", budget=5, method="less")
    sel = store.select("pool", "tgt", budget=14, target_mode="parts", extend=first.selection_id,
                       save=False)
    assert sel.ids[:5] == first.ids and len(set(sel.ids)) == len(sel.ids)
    per_part = sel.params["per_part"]
    assert len(per_part) == len(sel.params["parts"]) >= 2
    assert sum(per_part) == len(sel.ids) - 5
    assert len(sel.ids) + sel.params["parts_overlap"] == 14
    assert sel.params["rows_kept"] == 5


def test_extended_less_is_less_over_the_rows_not_kept(store):
    first = store.select("pool", "tgt", budget=5, method="less")
    grown = store.select("pool", "tgt", budget=12, method="less", extend="latest", save=False)
    rest = store.select("pool", "tgt", budget=7, method="less", exclude=first.selection_id,
                        save=False)
    assert grown.ids == first.ids + rest.ids


def test_extend_with_a_where_keeps_rows_the_predicate_drops(store):
    """Kept rows stay whatever --where says; the new ones satisfy it; a % budget counts
    the rows the pool then holds (the 100 kept by the predicate plus the kept s0 rows)."""
    s0 = store.select("pool", "tgt", budget=4, where="subtask = 's0'")
    sel = store.select("pool", "tgt", budget="10%", where="subtask = 's1'",
                       extend=s0.selection_id, save=False)
    assert sel.ids[:4] == s0.ids and sel.k == 10  # 10% of 104
    assert all(SUBTASKS[IDS.index(i)] == "s1" for i in sel.ids[4:])


def test_extend_on_the_command_line_and_again(store):
    first = one_selection(run("select", store.uri, "--pool", "pool", "--target", "tgt", "--budget",
                     "5", "--format", "json", "--quiet").stdout)
    out = one_selection(run("select", store.uri, "--pool", "pool", "--target", "tgt", "--budget",
                   "9", "--extend", first["selection_id"], "--format", "json",
                   "--quiet").stdout)
    assert out["ids"][:5] == first["ids"] and len(out["ids"]) == 9
    again = one_selection(run("select", store.uri, "--again", out["selection_id"], "--format",
                     "json", "--quiet").stdout)
    assert again["ids"] == out["ids"]
    assert store.selection(again["selection_id"]).params["extend"] == first["selection_id"]
    shown = json.loads(run("info", store.uri, "--format", "json").stdout)
    mine = [s for s in shown["selections"] if s["selection_id"] == out["selection_id"]]
    assert mine[0]["query"] == {"extend": first["selection_id"], "rows_kept": 5}
    assert f"extend='{first['selection_id']}' rows_kept=5" in run("info", store.uri).stdout


@pytest.mark.parametrize("args, message", [
    (["--extend", "0123456789ab"], "--extend '0123456789ab' is not a stored selection"),
    (["--extend", "latest", "--budget", "3"], "nothing to add; give a budget above"),
])
def test_bad_extensions_are_one_line_and_change_nothing(store, args, message):
    store.select("pool", "tgt", budget=4)
    before = len(store.selections())
    res = run("select", store.uri, "--pool", "pool", "--target", "tgt", "--quiet",
              *(["--budget", "5"] if "--budget" not in args else []), *args, ok=False)
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert len(store.selections()) == before


def test_extend_refuses_a_selection_of_another_pool(store):
    import gradstore

    st = gradstore.open(store.uri)
    X = np.random.default_rng(1).standard_normal((30, 16)).astype(np.float32)
    for c in ("0", "1"):
        st.import_vectors("other", X, c, ids=[f"o{i}" for i in range(30)], lr=1.0)
    other = st.select("other", "tgt", budget=3)
    res = run("select", store.uri, "--pool", "pool", "--target", "tgt", "--budget", "8",
              "--extend", other.selection_id, "--quiet", ok=False)
    assert res.returncode == 2 and "chose from pool 'other', not 'pool'" in res.stderr

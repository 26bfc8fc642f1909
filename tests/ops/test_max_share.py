"""``select --max-share FIELD=SHARE`` through Python and the command line: every method keeps
each value within ``floor(SHARE * k)`` rows, LESS's answer is its order over the pool with
full values passed over, and a quota that cannot fill k gives fewer rows and says why."""

import numpy as np
import pytest

from gradstore.choices import METHODS
from tests.cli.test_cli import run
from tests.ops.test_query_rows import IDS, SUBTASKS, one_selection, query_store

SUB = dict(zip(IDS, SUBTASKS, strict=True))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return query_store(tmp_path_factory.mktemp("share") / "s")


def _per_value(ids):
    return {s: sum(SUB[i] == s for i in ids) for s in ("s0", "s1", "s2")}


@pytest.mark.parametrize("method", METHODS)
def test_no_value_takes_more_than_its_share(store, method):
    free = store.select("pool", "tgt", budget=20, method=method, save=False)
    capped = store.select("pool", "tgt", budget=[20, "4%"], method=method,
                          max_share="subtask=0.4", save=False)
    for sel, cap in zip(capped, (8, 4), strict=True):
        assert max(_per_value(sel.ids).values()) <= cap, (method, _per_value(sel.ids))
        assert len(sel.ids) == sel.k or method in ("omp", "gtp-paper")
        assert sel.params["max_share"] == {"subtask": 0.4}
        assert sel.params["shares_taken"] == {"subtask": {
            s: n for s, n in _per_value(sel.ids).items() if n}}
    if method in ("gtp", "less"):  # the unconstrained answer breaks the cap: it binds
        assert max(_per_value(free.ids).values()) > 8


def test_less_within_a_share_is_its_order_with_full_values_passed_over(store):
    order = store.select("pool", "tgt", budget=300, method="less", save=False).ids
    want, seen = [], dict.fromkeys(("s0", "s1", "s2"), 0)
    for i in order:
        if len(want) < 15 and seen[SUB[i]] < 6:
            want.append(i)
            seen[SUB[i]] += 1
    got = store.select("pool", "tgt", budget=15, method="less", max_share="subtask=0.4",
                       save=False)
    assert sorted(got.ids) == sorted(want)


def test_a_share_that_cannot_fill_the_budget_gives_fewer_rows_and_a_note(store):
    res = run("select", store.uri, "--pool", "pool", "--target", "tgt", "--budget", "10",
              "--max-share", "subtask=0.2", "--format", "json", "--quiet")
    sel = one_selection(res.stdout)
    assert len(sel["ids"]) == 6 and max(_per_value(sel["ids"]).values()) == 2
    assert "chose 6 of the k=10 allowed: --max-share {'subtask': 0.2}" in res.stderr


def test_share_with_where_and_extend(store):
    """The caps count the kept rows; the new rows come from the predicate's rows."""
    first = store.select("pool", "tgt", budget=4, where="subtask = 's0'")
    sel = store.select("pool", "tgt", budget=12, extend=first.selection_id,
                       where="subtask != 's0'", max_share="subtask=0.5", save=False)
    assert sel.ids[:4] == first.ids and len(sel.ids) == 12
    assert _per_value(sel.ids)["s0"] == 4 and max(_per_value(sel.ids).values()) <= 6
    np.testing.assert_array_equal(sel.weights, np.ones(12))


@pytest.mark.parametrize("method", ["gtp", "less", "round-robin", "random"])
def test_a_whole_query_streamed_answers_as_in_ram(store, method):
    """--where, --extend and --max-share together: the pool streamed from Lance (only the
    allowed rows read, by position) gives the selection the pool in RAM gives."""
    first = store.select("pool", "tgt", budget=3, where="subtask = 's0'")
    got = {mode: store.select("pool", "tgt", budget=[9, "6%"], method=method, mode=mode,
                              where="subtask != 's0'", extend=first.selection_id,
                              max_share="subtask=0.5", save=False)
           for mode in ("ram", "stream")}
    for a, b in zip(got["ram"], got["stream"], strict=True):
        assert a.ids == b.ids and a.ids[:3] == first.ids
        np.testing.assert_array_equal(a.weights, b.weights)
    assert got["stream"][0].params["scan_mode"] == "LanceSource"


@pytest.mark.parametrize("method", ["gtp", "gtp-paper"])
def test_share_over_a_partitioned_pool(store, method):
    """--partitions: each part's pursuit keeps the caps over its rows, holding the kept
    rows of the other parts, and the final one over the union of their picks: kept rows of
    s0 that fill its cap leave every new row to s1 and s2."""
    free = store.select("pool", "tgt", budget=20, method=method, partitions=3, save=False)
    assert max(_per_value(free.ids).values()) > 8  # the cap binds
    sel = store.select("pool", "tgt", budget=20, method=method, partitions=3,
                       max_share="subtask=0.4", save=False)
    assert max(_per_value(sel.ids).values()) <= 8 and len(sel.ids) > 8
    first = store.select("pool", "tgt", budget=4, where="subtask = 's0'")
    grown = store.select("pool", "tgt", budget=10, method=method, partitions=3,
                         extend=first.selection_id, max_share="subtask=0.4", save=False)
    assert grown.ids[:4] == first.ids and len(grown.ids) > 4
    assert _per_value(grown.ids)["s0"] == 4 and max(_per_value(grown.ids).values()) <= 4


@pytest.mark.parametrize("method", ["omp", "gtp-paper"])
def test_share_counts_the_kept_rows_where_a_method_fits_what_they_leave(store, method):
    """omp and gtp-paper extend by fitting what the kept rows leave of the target, so the
    kept rows are not their own members: the caps still count them. Four kept rows of s0
    fill its cap of 4 (0.4 of 10), so every new row comes from s1 or s2."""
    first = store.select("pool", "tgt", budget=4, where="subtask = 's0'")
    free = store.select("pool", "tgt", budget=10, method=method, extend=first.selection_id,
                        save=False)
    assert _per_value(free.ids)["s0"] > 4  # uncapped, the new rows take s0 too
    sel = store.select("pool", "tgt", budget=10, method=method, extend=first.selection_id,
                       max_share="subtask=0.4", save=False)
    assert sel.ids[:4] == first.ids and len(sel.ids) > 4
    assert _per_value(sel.ids)["s0"] == 4 and max(_per_value(sel.ids).values()) <= 4


def test_share_by_the_targets_parts(store):
    """--target-mode parts: the parts' pursuits share one count of the caps (the kept rows
    counted once), so their answer together keeps them; with kept rows of s0 filling its
    cap, no part adds an s0 row."""
    free = store.select("pool", "tgt", budget=20, target_mode="parts", save=False)
    assert max(_per_value(free.ids).values()) > 8  # the cap binds
    sel = store.select("pool", "tgt", budget=20, target_mode="parts",
                       max_share="subtask=0.4", save=False)
    assert max(_per_value(sel.ids).values()) <= 8
    assert len(sel.ids) + sel.params["parts_overlap"] == 20
    first = store.select("pool", "tgt", budget=4, where="subtask = 's0'")
    grown = store.select("pool", "tgt", budget=10, target_mode="parts",
                         extend=first.selection_id, max_share="subtask=0.4", save=False)
    assert grown.ids[:4] == first.ids and len(grown.ids) > 4
    assert _per_value(grown.ids)["s0"] == 4 and max(_per_value(grown.ids).values()) <= 4

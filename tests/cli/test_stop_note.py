"""A selection that stops short of k, or reads a target of another gradient type than it
needs, says why and what to do about it; the default GTP fills the budget."""

import numpy as np
import pytest

import gradstore
from tests.cli.test_cli import run


@pytest.fixture
def store_path(tmp_path):
    # pool: 20 copies of e1 (close to the target) and 20 of e3 (unrelated); the targets
    # are e1 + e2: one e1 row fits all that any pool combination can, e2 stays unexplained
    d = 8
    eye = np.eye(d, dtype=np.float32)
    pool = np.stack([eye[0] if i < 20 else eye[2] for i in range(40)])
    pool[:20] += 0.01 * np.arange(20, dtype=np.float32)[:, None] * eye[3]  # no exact ties
    target = np.tile(eye[0] + eye[1], (3, 1))
    path = tmp_path / "s"
    store = gradstore.open(path)
    store.import_vectors("pool", pool, kind="pool", grad_type="adam")
    store.import_vectors("t_sgd", target, kind="target", grad_type="sgd")
    store.import_vectors("t_adam", target, kind="target", grad_type="adam")
    return path


def test_paper_gtp_stopping_short_names_the_gradient_type_mismatch(store_path):
    res = run("select", store_path, "--pool", "pool", "--target", "t_sgd", "--budget", "10",
              "--method", "gtp-paper")
    assert "chosen=1 " in res.stdout
    assert res.stderr.count("note:") == 1
    assert "target 't_sgd' stores only sgd gradients and gtp-paper reads adam ones" in res.stderr
    assert "--grad-type adam,sgd" in res.stderr


@pytest.mark.parametrize("method", ["gtp-paper", "omp"])
def test_same_gradient_type_notes_the_stop_only(store_path, method):
    res = run("select", store_path, "--pool", "pool", "--target", "t_adam", "--budget", "10",
              "--method", method, "--format", "json")
    assert f"{method} chose 1 of the k=10 allowed" in res.stderr
    assert "--grad-type" not in res.stderr and "--method gtp" in res.stderr


def test_default_gtp_takes_each_example_once_and_names_a_type_mismatch(store_path):
    """The pool holds three examples (e1 up to cosine 0.98, e1 nudged by more, and e3) in
    copies: the default gtp takes one row of each and says that the rest are copies."""
    res = run("select", store_path, "--pool", "pool", "--target", "t_adam", "--budget", "10",
              "--format", "json")
    assert res.stderr.count("note:") == 1
    assert "gtp chose 3 of the k=10 allowed: the pool's other rows are copies" in res.stderr
    res = run("select", store_path, "--pool", "pool", "--target", "t_sgd", "--budget", "10",
              "--format", "json")
    assert res.stderr.count("note:") == 1 and "copies" in res.stderr
    store = gradstore.open(store_path, create=False)
    sel = store.select("pool", target="t_adam", budget=10)
    assert len(sel.ids) == 3 and sel.params["copies_set_aside"] == 37
    chosen = {int(i.removeprefix("ex")) if i.startswith("ex") else int(i) for i in sel.ids}
    assert len([r for r in chosen if r >= 20]) == 1, "one copy of e3"
    # a budget the distinct examples can fill: filled, no note
    res = run("select", store_path, "--pool", "pool", "--target", "t_adam", "--budget", "3",
              "--format", "json")
    assert "note:" not in res.stderr


def test_default_gtp_fills_the_budget_from_distinct_examples(tmp_path):
    rng = np.random.default_rng(0)
    pool = rng.standard_normal((40, 8)).astype(np.float32)
    store = gradstore.open(tmp_path / "s")
    store.import_vectors("pool", pool, kind="pool", grad_type="adam")
    store.import_vectors("t", pool[:3] + 0.1, kind="target", grad_type="adam")
    res = run("select", tmp_path / "s", "--pool", "pool", "--target", "t", "--budget", "10")
    assert "note:" not in res.stderr
    assert len(store.select("pool", target="t", budget=10).ids) == 10


def test_no_note_when_the_budget_is_filled_with_the_right_type(store_path):
    assert run("select", store_path, "--pool", "pool", "--target", "t_adam", "--budget", "1",
               "--method", "gtp-paper").stderr.count("note:") == 0
    assert run("select", store_path, "--pool", "pool", "--target", "t_sgd", "--budget", "10",
               "--method", "less").stderr.count("note:") == 0
    store = gradstore.open(store_path, create=False)
    sel = store.select("pool", target="t_adam", budget=1, method="gtp-paper")
    assert len(sel.ids) == 1 and store.stop_note(sel) is None


def test_run_summary_prints_each_note_once():
    from gradstore.ops.pipeline import RunSummary

    sel = {"method": "gtp", "target": "t", "budget": "5%", "chosen": 2, "k": 10,
           "residual": 0.9, "export": "x.jsonl", "note": "gtp chose 2 of the k=10 allowed"}
    lines = RunSummary("out", "out/store", [], [sel, sel | {"budget": "1%"},
                                                 sel | {"note": None}], 1.0).lines()
    assert [ln for ln in lines if "note:" in ln] == ["  note: gtp chose 2 of the k=10 allowed"]

"""Targets store the pool's gradient type and plain SGD; each method reads the one it needs.

Vectors are checked against plain autograd one example at a time (``reference_vectors``);
resumption and stores written before both types existed are covered too.
"""

from __future__ import annotations

import numpy as np
import pytest

import gradstore
from gradstore.errors import GradstoreError
from gradstore.grads.projection import make_projector
from tests.grads.test_ingest import (
    Crash,
    crash_on_append,
    reference_vectors,
    train_checkpoints,
    write_chat_data,
)


@pytest.fixture(scope="module")
def checkpoints(llama_dir, tmp_path_factory):
    return train_checkpoints(llama_dir, tmp_path_factory.mktemp("warmup"))


def _kw(llama_dir, checkpoints, **more):
    return dict(model=str(llama_dir), checkpoints=checkpoints, proj_dim=48, device="cpu",
                progress=False, vector_dtype="float32", **more)


def _rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_target_stores_adam_and_sgd_equal_to_autograd(tmp_path, llama_dir, checkpoints,
                                                      chat_tokenizer):
    data = write_chat_data(tmp_path / "t.jsonl", 6, seed=11)
    store = gradstore.open(tmp_path / "store")
    summary = store.ingest("t", data=str(data), kind="target", **_kw(llama_dir, checkpoints))
    assert summary.grad_type == "adam+sgd"
    meta = store.meta("t")
    assert meta.grad_types == ["adam", "sgd"] and meta.grad_type == "adam"
    P = meta.projection.input_dim
    proj = make_projector("rademacher", P, 48, seed=0).matrix_rows(0, P)
    for ckpt in checkpoints:
        for gtype in ("adam", "sgd"):
            ref, _ = reference_vectors(llama_dir, ckpt, data, chat_tokenizer, gtype, proj)
            ids, X = store.vectors("t", ckpt.name, grad_type=gtype)
            got = dict(zip(ids, X, strict=True))
            for i in ref:
                assert _rel(got[i], ref[i]) < 1e-4, (ckpt.name, gtype, i)
    # the primary type is what a plain read returns; a type it lacks is refused clearly
    np.testing.assert_array_equal(store.vectors("t")[1], store.vectors("t", grad_type="adam")[1])
    with pytest.raises(GradstoreError, match="not sign"):
        store.vectors("t", grad_type="sign")
    assert store.info("t")["grad_types"] == ["adam", "sgd"]


def test_each_method_reads_its_type(tmp_path, llama_dir, checkpoints):
    pool = write_chat_data(tmp_path / "pool.jsonl", 14, seed=1)
    target = write_chat_data(tmp_path / "t.jsonl", 4, seed=2)
    store = gradstore.open(tmp_path / "store")
    kw = _kw(llama_dir, checkpoints)
    store.ingest("pool", data=str(pool), **kw)
    store.ingest("both", data=str(target), kind="target", **kw)
    store.ingest("only_adam", data=str(target), kind="target", grad_type="adam", **kw)
    store.ingest("only_sgd", data=str(target), kind="target", grad_type="sgd", **kw)
    for method, single in [("gtp", "only_adam"), ("gtp-paper", "only_adam"),
                           ("omp", "only_adam"), ("less", "only_sgd")]:
        a = store.select("pool", target="both", budget=4, method=method, save=False)
        b = store.select("pool", target=single, budget=4, method=method, save=False)
        assert a.ids == b.ids and a.params["target_grad_type"] == single.split("_")[1], method
        assert store.stop_note(a) is None or "stores only" not in store.stop_note(a)
    sel = store.select("pool", target="only_sgd", budget=4, method="gtp", save=False)
    assert "--grad-type adam,sgd" in store.stop_note(sel)  # old-style target: still selects


def test_interrupted_two_type_ingest_resumes(tmp_path, llama_dir, checkpoints, monkeypatch):
    data = write_chat_data(tmp_path / "t.jsonl", 11, seed=5)
    kw = _kw(llama_dir, checkpoints, batch_size=2, write_rows=3, kind="target")
    full = gradstore.open(tmp_path / "full")
    full.ingest("t", data=str(data), **kw)
    crashed = gradstore.open(tmp_path / "crashed")
    crash_on_append(monkeypatch, crashed, 2)
    with pytest.raises(Crash):
        crashed.ingest("t", data=str(data), **kw)
    monkeypatch.undo()
    assert 0 < crashed.num_rows("t") < 11 and crashed.meta("t").incomplete
    crashed.ingest("t", data=str(data), **kw)
    for gtype in ("adam", "sgd"):
        ids_a, A = full.vectors("t", grad_type=gtype)
        ids_b, B = crashed.vectors("t", grad_type=gtype)
        assert ids_a == ids_b
        np.testing.assert_allclose(B, A, rtol=1e-4, atol=1e-6)


def test_old_single_type_target_gets_the_other_type_added(tmp_path, llama_dir, checkpoints,
                                                          chat_tokenizer):
    """A target written before targets stored both types (plain SGD only) keeps selecting;
    rerunning its ingest with this version's default adds only the Adam columns."""
    data = write_chat_data(tmp_path / "t.jsonl", 5, seed=8)
    store = gradstore.open(tmp_path / "store")
    kw = _kw(llama_dir, checkpoints, kind="target")
    store.ingest("t", data=str(data), grad_type="sgd", **kw)
    sgd_before = store.vectors("t", grad_type="sgd")[1]
    version = store.database.dataset("t").version
    summary = store.ingest("t", data=str(data), **kw)  # the new default: adam,sgd
    assert summary.status == "complete, added adam gradients" and summary.grad_type == "sgd+adam"
    meta = store.meta("t")
    assert meta.grad_types == ["sgd", "adam"] and store.database.dataset("t").version > version
    np.testing.assert_array_equal(store.vectors("t", grad_type="sgd")[1], sgd_before)
    P = meta.projection.input_dim
    proj = make_projector("rademacher", P, 48, seed=0).matrix_rows(0, P)
    ref, _ = reference_vectors(llama_dir, checkpoints[1], data, chat_tokenizer, "adam", proj)
    ids, X = store.vectors("t", checkpoints[1].name, grad_type="adam")
    for i, x in zip(ids, X, strict=True):
        assert _rel(x, ref[i]) < 1e-4
    assert "_add_t" not in store.database.all_tables()
    again = store.ingest("t", data=str(data), **kw)  # now nothing is left to do
    assert again.rows_written == 0 and again.status.startswith("complete, nothing")
    asked_less = store.ingest("t", data=str(data), grad_type="sgd", **kw)  # a subset: fine
    assert asked_less.rows_written == 0


def test_adding_a_checkpoint_to_a_two_type_target(tmp_path, llama_dir, checkpoints):
    data = write_chat_data(tmp_path / "t.jsonl", 4, seed=9)
    kw = _kw(llama_dir, checkpoints[:1], kind="target")
    store = gradstore.open(tmp_path / "store")
    store.ingest("t", data=str(data), **kw)
    store.ingest("t", data=str(data), **dict(kw, checkpoints=checkpoints))
    ref = gradstore.open(tmp_path / "ref")
    ref.ingest("t", data=str(data), **dict(kw, checkpoints=checkpoints))
    assert store.meta("t").checkpoint_names == ref.meta("t").checkpoint_names
    for gtype in ("adam", "sgd"):
        np.testing.assert_allclose(store.vectors("t", grad_type=gtype)[1],
                                   ref.vectors("t", grad_type=gtype)[1], rtol=1e-4, atol=1e-6)

"""`ingest --features hidden` (RDS+ features) on a tiny Llama: stored vectors against plain
HF forwards of one example at a time, pooled and normalised by hand.

Tolerances. A feature is a unit vector, so every entry is at most 1 in size; float16
keeps 11 significant bits, so storing it moves each entry by at most 2^-12 of its size
when rounding (2^-11 bounds it with margin) and the vector by at most 2^-11 ≈ 4.9e-4 of
its norm. The batched float32 forward differs from the one-example float32 forward only
by rounding (other matmul shapes; about 1e-6 relative at this size). Hence: float16
tables against the reference to 1e-3 relative, float32 tables to 1e-5.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import gradstore
from gradstore.errors import GradstoreError
from gradstore.grads.data import read_records
from gradstore.grads.examples import tokenize_records
from tests.cli.test_cli import run
from tests.cli.test_user_errors import one_line_exit_2
from tests.grads.models import load
from tests.grads.test_ingest import Crash, crash_on_append, train_checkpoints, write_chat_data


@pytest.fixture(scope="module")
def checkpoints(llama_dir, tmp_path_factory):
    return train_checkpoints(llama_dir, tmp_path_factory.mktemp("warmup"))


def data_with_a_question(path, n: int, seed: int = 0):
    """``n`` chat examples of various lengths, then one with no response tokens."""
    write_chat_data(path, n, seed=seed)
    with path.open("a") as f:
        f.write(json.dumps({"id": "question", "messages": [
            {"role": "user", "content": "only a question"}]}) + "\n")
    return path


def by_hand(model, tokenizer, data) -> dict[str, np.ndarray]:
    """Each example alone through a plain HF forward; the last hidden state's mean with
    weights 1, 2, ..., n over its n tokens (scaled to sum 1), then unit norm; float64."""
    report = tokenize_records(read_records(data), tokenizer, max_length=2048)
    out = {}
    for ex in report.examples:
        with torch.no_grad():
            h = model(input_ids=torch.tensor(ex.input_ids)[None],
                      output_hidden_states=True).hidden_states[-1][0].double()
        w = torch.arange(1, h.shape[0] + 1, dtype=torch.float64)
        v = (w / w.sum()) @ h
        out[ex.id] = (v / v.norm()).numpy()
    return out


def stored(store, table, checkpoint=None) -> dict[str, np.ndarray]:
    ids, X = store.vectors(table, checkpoint)
    assert len(set(ids)) == len(ids)
    return dict(zip(ids, X.astype(np.float64), strict=True))


def assert_close(got: dict, want: dict, rel: float) -> None:
    assert set(got) == set(want)
    for i in want:
        err = np.linalg.norm(got[i] - want[i]) / np.linalg.norm(want[i])
        assert err < rel, (i, err)


def test_base_features_equal_the_computation_by_hand(tmp_path, llama_dir, chat_tokenizer):
    data = data_with_a_question(tmp_path / "d.jsonl", 10)
    store = gradstore.open(tmp_path / "s")
    kw = dict(model=str(llama_dir), data=str(data), device="cpu", progress=False)
    s = store.ingest("pool", features="hidden", batch_size=4, **kw)
    assert s.rows_written == 10 and s.skipped == {"no response tokens": 1}
    assert s.grad_type == "hidden" and "features hidden states" in "\n".join(s.lines())
    meta = store.meta("pool")
    assert meta.grad_type == "hidden" and meta.grad_types == ["hidden"]
    assert meta.checkpoint_names == ["base"] and meta.lrs == [None]
    assert meta.dim == 32 and meta.vector_dtype == "float16"  # the model's hidden size
    assert meta.projection.kind == "none" and "position-weighted" in meta.projection.layout
    got = stored(store, "pool")
    assert_close(got, by_hand(load(llama_dir).eval(), chat_tokenizer, data), 1e-3)
    for v in got.values():  # unit vectors, up to float16 rounding
        assert abs(np.linalg.norm(v) - 1) < 1e-3


def test_batching_and_padding_do_not_change_features(tmp_path, llama_dir, chat_tokenizer):
    data = write_chat_data(tmp_path / "d.jsonl", 9, seed=1)
    store = gradstore.open(tmp_path / "s")
    kw = dict(model=str(llama_dir), data=str(data), device="cpu", progress=False,
              features="hidden", vector_dtype="float32")
    store.ingest("one", batch_size=1, **kw)
    store.ingest("four", batch_size=4, write_rows=5, **kw)  # two chunks, padded batches
    lengths = {len(ex.input_ids) for ex in tokenize_records(
        read_records(data), chat_tokenizer, max_length=2048).examples}
    assert len(lengths) > 1  # the batches of four are padded
    assert store.ids("one") == store.ids("four")
    assert_close(stored(store, "four"), stored(store, "one"), 1e-5)


def test_checkpoint_features(tmp_path, llama_dir, checkpoints, chat_tokenizer):
    from peft import PeftModel

    data = write_chat_data(tmp_path / "d.jsonl", 8, seed=2)
    store = gradstore.open(tmp_path / "s")
    kw = dict(model=str(llama_dir), data=str(data), device="cpu", progress=False,
              features="hidden", batch_size=3)
    store.ingest("base", **kw)
    store.ingest("ckpts", checkpoints=checkpoints, **kw)
    meta = store.meta("ckpts")
    assert meta.checkpoint_names == ["checkpoint-1", "checkpoint-2"]
    assert meta.lrs == [pytest.approx(2e-3), pytest.approx(1e-2)]  # as gradients read them
    base = stored(store, "base")
    for ckpt in checkpoints:
        model = PeftModel.from_pretrained(load(llama_dir), ckpt).eval()
        got = stored(store, "ckpts", ckpt.name)
        assert_close(got, by_hand(model, chat_tokenizer, data), 1e-3)
        moved = min(np.linalg.norm(got[i] - base[i]) for i in base)
        assert moved > 0.1, moved  # the adapter moves every feature far past rounding
    # a checkpoint added to a finished table: computed for its rows, added as a column
    store.ingest("grown", checkpoints=checkpoints[:1], **kw)
    s = store.ingest("grown", checkpoints=checkpoints, **kw)
    assert s.status == "complete, added checkpoints checkpoint-2"
    assert store.meta("grown").checkpoint_names == ["checkpoint-1", "checkpoint-2"]
    for ckpt in checkpoints:
        assert_close(stored(store, "grown", ckpt.name), stored(store, "ckpts", ckpt.name), 1e-3)


def test_resume_after_a_crash_and_reruns_with_other_settings(tmp_path, llama_dir,
                                                             monkeypatch):
    data = data_with_a_question(tmp_path / "d.jsonl", 11, seed=3)
    kw = dict(model=str(llama_dir), data=str(data), device="cpu", progress=False,
              features="hidden", batch_size=2, write_rows=3)
    full = gradstore.open(tmp_path / "full")
    full.ingest("pool", **kw)
    crashed = gradstore.open(tmp_path / "crashed")
    crash_on_append(monkeypatch, crashed, 3)
    with pytest.raises(Crash):
        crashed.ingest("pool", **kw)
    monkeypatch.undo()
    partial = crashed.num_rows("pool")
    assert partial == 6 and crashed.meta("pool").incomplete
    s = crashed.ingest("pool", **kw)
    assert s.rows_present == 6 and s.rows_written == 5 and not crashed.meta("pool").incomplete
    ids, X = crashed.vectors("pool")
    assert ids == full.vectors("pool")[0] and len(set(ids)) == 11
    np.testing.assert_allclose(X, full.vectors("pool")[1], rtol=1e-3, atol=1e-4)
    assert crashed.ingest("pool", **kw).status == "complete, nothing to do"
    # the features setting is compared like the others: neither kind continues the other
    grad_kw = {k: v for k, v in kw.items() if k != "features"}
    with pytest.raises(GradstoreError, match="features='hidden'.*'gradients'"):
        crashed.ingest("pool", proj_dim=8, **grad_kw)
    # gradients of the base model's own weights: checkpoint "base" too, and as wide
    crashed.ingest("grads", proj_dim=32, params="model.layers.1.mlp.down_proj.weight",
                   **grad_kw)
    assert crashed.ids("grads") == ids  # the rows gradient ingestion keeps, in its order
    gmeta, hmeta = crashed.meta("grads"), crashed.meta("pool")
    assert (gmeta.dim, gmeta.checkpoint_names) == (hmeta.dim, hmeta.checkpoint_names)
    for pool, target in (("grads", "pool"), ("pool", "grads")):  # still not one space
        with pytest.raises(GradstoreError, match="differ in projection"):
            crashed.select(pool, target=target, budget=3, method="less")
    with pytest.raises(GradstoreError, match="features='gradients'.*'hidden'"):
        crashed.ingest("grads", **kw)
    with pytest.raises(GradstoreError, match="grad-type"):
        crashed.ingest("other", grad_type="sgd", **kw)
    assert crashed.vectors("pool")[0] == ids  # refused runs changed nothing


def test_cli_select_on_hidden_tables(tmp_path, llama_dir):
    s = tmp_path / "s"
    pool = write_chat_data(tmp_path / "pool.jsonl", 16, seed=4)
    target = write_chat_data(tmp_path / "target.jsonl", 4, seed=5)
    common = ["--model", llama_dir, "--device", "cpu", "--quiet"]
    run("ingest", s, "pool", "--data", pool, "--features", "hidden", *common)
    run("ingest", s, "target", "--data", target, "--kind", "target", "--features", "hidden",
        *common)
    run("ingest", s, "grads", "--data", pool, "--proj-dim", "16", *common)
    info = run("info", s, "pool").stdout
    assert "grad hidden" in info and "projection none" in info and "x 32 dims" in info
    for method in ("less", "gtp", "round-robin"):
        res = run("select", s, "--pool", "pool", "--target", "target", "--budget", "4",
                  "--method", method, "--quiet", "--format", "json")
        assert "stores only" not in res.stderr  # hidden states are every method's features
        chosen = json.loads(res.stdout)
        ids = chosen[0]["ids"] if isinstance(chosen, list) else chosen["ids"]
        assert 1 <= len(ids) <= 4 and set(ids) <= set(gradstore.open(s).ids("pool"))
        if method != "gtp":
            assert len(ids) == 4
    for more in (["--grad-type", "sgd"], ["--params", "model.layers.1.mlp.down_proj.weight"]):
        res = run("ingest", s, "bad", "--data", pool, "--features", "hidden", *more, *common,
                  ok=False)
        one_line_exit_2(res, more[0])
    assert "bad" not in gradstore.open(s).tables()
    before = len(gradstore.open(s).selections())
    res = run("select", s, "--pool", "grads", "--target", "target", "--budget", "4",
              "--quiet", ok=False)
    one_line_exit_2(res, "differ in")
    assert len(gradstore.open(s).selections()) == before

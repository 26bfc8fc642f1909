"""`gradstore evaluate` on a tiny Llama: the numbers are the benchmark's own fine-tune and
scoring run again by hand, the random baseline is the documented draw, results are kept in
the store and shown by the report, a stopped evaluate resumes, bad input exits 2."""

from __future__ import annotations

import json

import numpy as np
import pytest

import gradstore
from gradstore.config import TrainSettings
from gradstore.grads.model import load_tokenizer, shared_models
from gradstore.ops.evaluate import Adapted, answer_scores, finetune
from gradstore.selectors.random_subset import random_subset
from tests.cli.test_cli import run

N = 24
SETTINGS = ["--passes", "8", "--lr", "0.01", "--batch-size", "4", "--lora-layers", "all",
            "--max-length", "64"]


def chat(i: int, a: int) -> dict:
    return {"id": f"r{i:02d}", "messages": [{"role": "user", "content": f"Add {a} and 2."},
                                            {"role": "assistant", "content": str(a + 2)}]}


@pytest.fixture
def built(tmp_path, llama_dir):
    path = tmp_path / "store"
    st = gradstore.open(path)
    rng = np.random.default_rng(0)
    ids = [f"r{i:02d}" for i in range(N)]
    st.import_vectors("pool", rng.normal(size=(N, 8)).astype(np.float32), ids=ids)
    st.import_vectors("pool2", rng.normal(size=(N, 8)).astype(np.float32), ids=ids)
    data = tmp_path / "pool.jsonl"
    data.write_text("".join(json.dumps(chat(i, i)) + "\n" for i in range(N)))
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps(chat(100 + i, 50 + i)) + "\n" for i in range(6)))
    sel = st.select("pool", target=None, budget=4, method="less")
    return st, path, data, test, sel, str(llama_dir)


def evaluate(path, sel_id, model, data, test, *extra, ok=True):
    return run("evaluate", path, "--selection", sel_id, "--model", model, "--data", data,
               "--test", test, *SETTINGS, "--quiet", "--format", "json", *extra, ok=ok)


def test_numbers_are_the_benchmarks_fine_tune_and_scores(built, tmp_path):
    st, path, data, test, sel, model = built
    res = evaluate(path, sel.selection_id, model, data, test, "--seeds", "2")
    out = json.loads(res.stdout)
    assert sorted(out["runs"]) == ["baseline|0", "baseline|1", "selection|0", "selection|1"]
    rows = {r["id"]: r for r in map(json.loads, data.read_text().splitlines())}
    tests = [json.loads(line) for line in test.read_text().splitlines()]
    settings = TrainSettings(passes=8, lr=0.01, batch_size=4, lora_layers=None, max_length=64)
    drawn = [f"r{i:02d}" for i in random_subset(N, 4, 1)]  # seed 1's random baseline
    for arm, ids, seed in (("selection", sel.ids, 0), ("baseline", drawn, 1)):
        train = tmp_path / f"{arm}.jsonl"
        train.write_text("".join(json.dumps(rows[i]) + "\n" for i in ids))
        with shared_models():
            ck = finetune(model, None, train, tmp_path / f"ft-{arm}", settings, len(ids), seed)
            with Adapted(model, None, ck) as lm:
                want = answer_scores(lm, load_tokenizer(model), tests, 32, 64)
        got = out["runs"][f"{arm}|{seed}"]
        assert got["examples"] == 4 and got["epochs"] == 2
        assert got["loss"] == pytest.approx(want.mean_loss, rel=1e-5)
        assert got["exact_match"] == want.accuracy
    stored = st.evaluations(sel.selection_id)
    assert len(stored) == 1 and stored[0]["runs"] == out["runs"]
    page = tmp_path / "r.html"
    run("report", path, "--selection", sel.selection_id, "--data", data, "--out", page)
    html = page.read_text()
    assert '<section id="evaluations">' in html and "random" in html
    mean_loss = (out["runs"]["selection|0"]["loss"] + out["runs"]["selection|1"]["loss"]) / 2
    assert f"{mean_loss:.3f}" in html


def test_a_stopped_evaluate_resumes_without_redoing_finished_runs(built):
    st, path, data, test, sel, model = built
    work = path.parent / "work"
    evaluate(path, sel.selection_id, model, data, test, "--work", work)
    state = json.loads((work / "runs.json").read_text())
    state["runs"]["selection|0"]["loss"] = 123.0  # marks the finished run
    del state["runs"]["baseline|0"]  # as if stopped before the baseline finished
    (work / "runs.json").write_text(json.dumps(state))
    out = json.loads(evaluate(path, sel.selection_id, model, data, test, "--work",
                              work).stdout)
    assert out["runs"]["selection|0"]["loss"] == 123.0  # kept, not retrained
    assert out["runs"]["baseline|0"]["loss"] < 100  # recomputed
    other = evaluate(path, sel.selection_id, model, data, test, "--work", work, "--passes",
                     "4")
    assert json.loads(other.stdout)["runs"]["selection|0"]["loss"] != 123.0  # new settings


def versions(path):
    import lance

    return {p.name: lance.dataset(str(p)).version for p in sorted(path.glob("*.lance"))}


@pytest.mark.parametrize("case, message", [
    ("no-answer", "has no reference answer"),
    ("unknown", "is not in store"),
    ("other-pool", "compare selections of one pool"),
    ("seeds", "must be at least 1"),
])
def test_bad_input_is_one_line_exit_2(built, tmp_path, case, message):
    st, path, data, test, sel, model = built
    extra, sel_id = [], sel.selection_id
    if case == "no-answer":
        test.write_text(json.dumps({"id": "x", "messages": [{"role": "user",
                                                             "content": "hi"}]}) + "\n")
    elif case == "unknown":
        sel_id = "nope"
    elif case == "other-pool":
        other = st.select("pool2", target=None, budget=4, method="random")
        extra = ["--baseline", other.selection_id]
    else:
        extra = ["--seeds", "0"]
    before = versions(path)
    res = evaluate(path, sel_id, model, data, test, *extra, ok=False)
    assert res.returncode == 2 and message in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert versions(path) == before

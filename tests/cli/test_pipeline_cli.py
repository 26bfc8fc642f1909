"""`gradstore warmup / export / run` as a user runs them, on a tiny Llama."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import gradstore
from gradstore.ops.export import read_export
from tests.cli.test_cli import run
from tests.grads.models import save_tiny_llama
from tests.grads.test_ingest import write_chat_data


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, chat_tokenizer):
    d = save_tiny_llama(tmp_path_factory.mktemp("llama"))
    chat_tokenizer.save_pretrained(d)
    return d


def test_whole_pipeline_subprocess_export_matches_stored_selection(tmp_path, model_dir):
    pool = write_chat_data(tmp_path / "pool.jsonl", 40)
    target = write_chat_data(tmp_path / "target.jsonl", 5, seed=7)
    work = tmp_path / "work"
    cmd = [sys.executable, "-m", "gradstore", "run", "--model", str(model_dir),
           "--data", str(pool), "--target", str(target), "--out", str(work),
           "--fraction", "0.25", "--epochs", "2", "--lr", "1e-2", "--batch-size", "4",
           "--proj-dim", "32", "--budget", "10%", "--budget", "6", "--method", "gtp",
           "--method", "less", "--device", "cpu", "--quiet", "--format", "json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert len(summary["checkpoints"]) == 2 and len(summary["selections"]) == 4
    store = gradstore.open(work / "store")
    assert store.meta("pool").grad_type == "adam" and store.num_rows("pool") == 40
    assert store.meta("target").kind == "target"
    for rec in summary["selections"]:
        sel = store.selection(rec["selection_id"])
        rows = read_export(rec["export"])
        assert [r["id"] for r in rows] == sel.ids
        assert [r["weight"] for r in rows] == [float(w) for w in sel.weights]
        assert [r["rank"] for r in rows] == list(range(1, len(sel.ids) + 1))
        originals = {json.loads(line)["id"]: json.loads(line) for line in pool.open()}
        for r in rows:
            assert {k: v for k, v in r.items() if k not in ("rank", "weight")} == originals[r["id"]]
    assert sorted(r["k"] for r in summary["selections"]) == [4, 4, 6, 6]
    assert all(0 < r["chosen"] <= r["k"] for r in summary["selections"])
    assert all(r["chosen"] == r["k"] for r in summary["selections"] if r["method"] == "less")

    # a rerun finds everything done and answers again without recomputing
    again = run("run", "--model", model_dir, "--data", pool, "--target", target, "--out", work,
                "--fraction", "0.25", "--epochs", "2", "--lr", "1e-2", "--batch-size", "4",
                "--proj-dim", "32", "--budget", "10%", "--device", "cpu", "--quiet")
    assert "already complete" in again.stdout and "complete, nothing to do" in again.stdout


def test_warmup_then_ingest_select_export_commands(tmp_path, model_dir):
    pool = write_chat_data(tmp_path / "pool.jsonl", 20)
    res = run("warmup", "--model", model_dir, "--data", pool, "--out", tmp_path / "w",
              "--fraction", "0.5", "--epochs", "2", "--batch-size", "5", "--quiet")
    assert "2 checkpoints" in res.stdout
    ckpts = sorted((tmp_path / "w").glob("checkpoint-*"))
    assert [c.name for c in ckpts] == ["checkpoint-2", "checkpoint-4"]
    args = ["--checkpoint", ckpts[0], "--checkpoint", ckpts[1]]
    run("ingest", tmp_path / "s", "pool", "--model", model_dir, "--data", pool, "--proj-dim",
        "16", "--quiet", *args)
    sel = json.loads(run("select", tmp_path / "s", "--pool", "pool", "--budget", "5",
                         "--format", "json", "--quiet").stdout)[0]
    info = run("info", tmp_path / "s").stdout
    assert sel["selection_id"] in info and "in-domain" in info
    out = run("export", tmp_path / "s", "--selection", "latest", "--out", tmp_path / "x.parquet")
    assert "exported 5 rows" in out.stdout
    rows = read_export(tmp_path / "x.parquet")
    assert [r["id"] for r in rows] == sel["ids"]
    np.testing.assert_array_equal([r["weight"] for r in rows], sel["weights"])


@pytest.mark.parametrize(
    "args, match",
    [
        (["warmup", "--data", "{pool}", "--out", "{tmp}/w", "--fraction", "2"], "--fraction"),
        (["warmup", "--data", "{tmp}/nope.jsonl", "--out", "{tmp}/w"], "does not exist"),
        (["warmup", "--data", "{pool}", "--out", "{tmp}/w", "--lora-layers", "top:7"],
         "model has 2"),
        (["run", "--data", "{pool}", "--out", "{tmp}/r", "--budget", "0"], "budget"),
        (["run", "--data", "{pool}", "--out", "{tmp}/r", "--target", "{tmp}/nope.jsonl"],
         "does not exist"),
        (["run", "--data", "{pool}", "--out", "{tmp}/r", "--budget", "500"], "budget"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, model_dir, args, match):
    pool = write_chat_data(tmp_path / "pool.jsonl", 8)
    filled = [a.format(pool=pool, tmp=tmp_path) for a in args]
    res = run(filled[0], "--model", model_dir, *filled[1:], "--epochs", "1", "--quiet", ok=False)
    assert res.returncode == 2, res.stderr
    assert match in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert "Traceback" not in res.stderr


def test_export_errors_exit_2(tmp_path):
    store = gradstore.open(tmp_path / "s")
    store.import_vectors("pool", np.eye(6, 4, dtype=np.float32), ids=[f"r{i}" for i in range(6)])
    sel = store.select("pool", budget=2, method="random")
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"id": f"r{i}", "text": "x"}) + "\n" for i in range(6)))
    cases = [
        (["--selection", "nope", "--data", data, "--out", tmp_path / "o.jsonl"], "not in store"),
        (["--selection", sel.selection_id, "--out", tmp_path / "o.jsonl"], "--data"),
        (["--selection", sel.selection_id, "--data", data, "--out", tmp_path / "o.csv"], ".csv"),
    ]
    for args, match in cases:
        res = run("export", tmp_path / "s", *args, ok=False)
        assert res.returncode == 2 and match in res.stderr, res.stderr
    res = run("export", tmp_path / "missing", "--selection", "x", "--out", "o.jsonl", ok=False)
    assert res.returncode == 2


def test_run_with_other_settings_needs_overwrite(tmp_path, model_dir):
    pool = write_chat_data(tmp_path / "pool.jsonl", 12)
    base = ["run", "--model", model_dir, "--data", pool, "--out", tmp_path / "work",
            "--fraction", "0.5", "--epochs", "1", "--batch-size", "3", "--proj-dim", "16",
            "--budget", "3", "--quiet", "--format", "json"]
    first = json.loads(run(*base, "--lr", "1e-3").stdout)
    res = run(*base, "--lr", "5e-3", ok=False)
    assert res.returncode == 2 and "--overwrite" in res.stderr
    second = json.loads(run(*base, "--lr", "5e-3", "--overwrite").stdout)
    assert second["steps"]["warm-up"].endswith("(complete)")
    store = gradstore.open(tmp_path / "work" / "store")
    assert store.meta("pool").ingest["status"] == "complete"
    lrs = [json.loads((tmp_path / "work" / "warmup" / "checkpoint-2" /
                       "gradstore_checkpoint.json").read_text())["settings"]["lr"]]
    assert lrs == [5e-3] and first["selections"][0]["selection_id"] != \
        second["selections"][0]["selection_id"]

"""`gradstore ingest` as a user runs it: summary, exit status 2 on bad input, kill -9 resume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import numpy as np
import pytest

import gradstore
from tests.cli.test_cli import run
from tests.grads.models import save_tiny_llama
from tests.grads.test_ingest import write_chat_data
from tests.pausing import paused_env, release, wait_until_waiting


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, chat_tokenizer):
    d = save_tiny_llama(tmp_path_factory.mktemp("llama"))
    chat_tokenizer.save_pretrained(d)
    return d


def ingest_args(store, table, model_dir, data, *more):
    return ["ingest", store, table, "--model", model_dir, "--data", data, "--proj-dim", "16",
            "--device", "cpu", "--quiet", *more]


def test_ingest_prints_summary_and_json(tmp_path, model_dir):
    data = write_chat_data(tmp_path / "d.jsonl", 5)
    res = run(*ingest_args(tmp_path / "s", "pool", model_dir, data))
    assert "table pool: complete; 5 rows written" in res.stdout
    assert "examples/s" in res.stdout
    res = run(*ingest_args(tmp_path / "s", "pool", model_dir, data, "--format", "json"))
    summary = json.loads(res.stdout)
    assert summary["rows_written"] == 0 and summary["rows_present"] == 5
    info = run("info", tmp_path / "s", "pool", "--format", "json")
    described = json.loads(info.stdout)
    assert described["rows"] == 5 and described["status"] == "complete"
    assert described["ingest"]["source"] == str(data)
    assert described["ingest"]["grad_type"] == "sgd"
    text = run("info", tmp_path / "s", "pool").stdout
    assert f"ingested from {data} (5 examples" in text


@pytest.mark.parametrize(
    "more, match",
    [
        (["--grad-type", "adam"], "optimizer state"),
        (["--checkpoint", "/no/such/dir"], "does not exist"),
        (["--proj-dim", "0"], "proj-dim"),
        (["--max-length", "1"], "max-length"),
        (["--batch-size", "0"], "batch-size"),
        (["--lr", "1e-3", "--lr", "2e-3"], "learning rates"),
        (["--split", "train"], "split"),
        (["--gguf-file", "nope.gguf"], "GGUF file"),
        (["--device", "nonsense"], "device"),
    ],
)
def test_bad_options_exit_2(tmp_path, model_dir, more, match):
    data = write_chat_data(tmp_path / "d.jsonl", 2)
    res = run(*ingest_args(tmp_path / "s", "t", model_dir, data, *more), ok=False)
    assert res.returncode == 2, res.stderr
    assert match in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_bad_data_exit_2_and_store_kept(tmp_path, model_dir):
    good = write_chat_data(tmp_path / "d.jsonl", 3)
    run(*ingest_args(tmp_path / "s", "pool", model_dir, good))
    before = gradstore.open(tmp_path / "s").vectors("pool")[1]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(good.read_text() + '{"messages": [\n')
    res = run(*ingest_args(tmp_path / "s", "pool", model_dir, bad), ok=False)
    assert res.returncode == 2 and "line 4" in res.stderr
    res = run(*ingest_args(tmp_path / "s", "pool", model_dir, tmp_path / "missing.jsonl"),
              ok=False)
    assert res.returncode == 2 and "missing.jsonl" in res.stderr
    res = run(*ingest_args(tmp_path / "s", "pool", model_dir, good, "--grad-type", "sign"),
              ok=False)
    assert res.returncode == 2 and "grad_type" in res.stderr
    np.testing.assert_array_equal(gradstore.open(tmp_path / "s").vectors("pool")[1], before)


def test_kill_9_mid_run_then_resume(tmp_path, model_dir):
    """A real SIGKILL right after the first commit (the run held at that pause point); the
    rerun completes the same table."""
    data = write_chat_data(tmp_path / "d.jsonl", 60, seed=9)
    args = [str(a) for a in ingest_args(tmp_path / "s", "pool", model_dir, data,
                                        "--write-rows", "8", "--batch-size", "4")]
    pause = tmp_path / "pause"
    proc = _start(args, paused_env("rows-committed", pause))
    wait_until_waiting("rows-committed", pause, 1, [proc])
    proc.kill()
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    partial = gradstore.open(tmp_path / "s")
    assert partial.meta("pool").incomplete
    assert partial.num_rows("pool") == 8  # the first commit, whole

    res = run(*args, "--format", "json")
    summary = json.loads(res.stdout)
    assert summary["rows_present"] == 8 and summary["rows_written"] == 52
    run(*ingest_args(tmp_path / "ref", "pool", model_dir, data, "--batch-size", "4"))
    ids_a, A = gradstore.open(tmp_path / "s").vectors("pool")
    ids_b, B = gradstore.open(tmp_path / "ref").vectors("pool")
    assert ids_a == ids_b and len(set(ids_a)) == 60
    np.testing.assert_allclose(A, B, rtol=1e-3, atol=1e-4)


def _start(args, env=None):
    return subprocess.Popen([sys.executable, "-m", "gradstore", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_two_ingests_of_one_table_at_once(tmp_path, model_dir):
    """Two users start the same ingestion at the same moment (both held just before taking
    the table's lock, then let go together): one writes, the other is refused at once with
    one line naming the writer; every example is stored exactly once."""
    data = write_chat_data(tmp_path / "d.jsonl", 150, seed=4)
    args = [str(a) for a in ingest_args(tmp_path / "s", "pool", model_dir, data,
                                        "--write-rows", "8", "--batch-size", "4")]
    pause = tmp_path / "pause"
    env = paused_env("take-lock", pause)
    procs = [_start(args, env), _start(args, env)]
    wait_until_waiting("take-lock", pause, 2, procs)
    release("take-lock", pause)
    outs = [p.communicate(timeout=300) for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 2], outs
    err = outs[codes.index(2)][1]
    assert "is being written by" in err and len(err.strip().splitlines()) == 1, err
    ids = gradstore.open(tmp_path / "s").ids("pool")
    assert len(ids) == 150 and len(set(ids)) == 150
    assert not (tmp_path / "s" / ".locks" / "pool.lock").exists()


def test_ctrl_c_mid_run_keeps_commits_and_releases_the_lock(tmp_path, model_dir):
    """Ctrl-C right after the first commit (the run held at that pause point): exit 130 with
    one line, the commit kept, the lock released; the rerun writes only the rest."""
    data = write_chat_data(tmp_path / "d.jsonl", 60, seed=5)
    args = [str(a) for a in ingest_args(tmp_path / "s", "pool", model_dir, data,
                                        "--write-rows", "8", "--batch-size", "4")]
    pause = tmp_path / "pause"
    proc = _start(args, paused_env("rows-committed", pause))
    wait_until_waiting("rows-committed", pause, 1, [proc])
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert not (tmp_path / "s" / ".locks" / "pool.lock").exists()
    assert gradstore.open(tmp_path / "s").num_rows("pool") == 8
    summary = json.loads(run(*args, "--format", "json").stdout)
    assert summary["rows_present"] == 8 and summary["rows_written"] == 52
    ids = gradstore.open(tmp_path / "s").ids("pool")
    assert len(set(ids)) == 60 == len(ids)


def test_ctrl_c_just_after_a_commit_writes_no_row_twice(tmp_path, model_dir, monkeypatch):
    """The interrupt lands after Lance committed a write but before the writer heard back
    (injected: the real commit, then KeyboardInterrupt); the handler's final flush must not
    append those rows again, and a rerun completes with each example once."""
    from gradstore.store.database import Database

    data = write_chat_data(tmp_path / "d.jsonl", 40, seed=6)
    args = ingest_args(tmp_path / "s", "pool", model_dir, data, "--write-rows", "8",
                       "--batch-size", "4")
    real, calls = Database.append_rows, []

    def commit_then_interrupt(self, table, block):
        real(self, table, block)
        calls.append(len(block.ids))
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(Database, "append_rows", commit_then_interrupt)
    res = run(*args, ok=False)
    assert res.returncode == 130 and "interrupted" in res.stderr
    monkeypatch.setattr(Database, "append_rows", real)
    ids = gradstore.open(tmp_path / "s").ids("pool")
    assert len(ids) == len(set(ids)) == sum(calls[:2])
    run(*args)
    ids = gradstore.open(tmp_path / "s").ids("pool")
    assert len(ids) == len(set(ids)) == 40

"""The user errors listed in DEVELOPERS.md that other CLI tests do not already cover.

Each must give exit status 2, one line on stderr, no traceback, and leave the store as it was.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import gradstore
from tests.cli.test_cli import run
from tests.grads.models import save_tiny_llama
from tests.grads.test_ingest import write_chat_data


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, chat_tokenizer):
    d = save_tiny_llama(tmp_path_factory.mktemp("llama"))
    chat_tokenizer.save_pretrained(d)
    return d


def one_line_exit_2(res, needle: str) -> None:
    assert res.returncode == 2, res.stderr
    assert needle in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr


def test_bad_data_files(tmp_path, model_dir):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    dup = tmp_path / "dup.jsonl"
    row = {"id": "a", "prompt": "p", "completion": "c"}
    dup.write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
    no_answers = tmp_path / "no_answers.jsonl"
    q = {"messages": [{"role": "user", "content": "only a question"}]}
    no_answers.write_text("".join(json.dumps(q | {"id": i}) + "\n" for i in range(3)))
    wrong_type = tmp_path / "wrong.jsonl"
    wrong_type.write_text(json.dumps({"prompt": 3, "completion": "c"}) + "\n")
    good = write_chat_data(tmp_path / "good.jsonl", 4)
    run("ingest", tmp_path / "s", "pool", "--model", model_dir, "--data", good,
        "--proj-dim", "8", "--quiet")
    before = gradstore.open(tmp_path / "s").vectors("pool")[1]
    for data, needle in [(empty, "no examples"), (dup, "duplicate"),
                         (no_answers, "no response"), (wrong_type, "prompt")]:
        for cmd in (["ingest", tmp_path / "s", "t2"], ["warmup", "--out", tmp_path / "w"]):
            res = run(*cmd, "--model", model_dir, "--data", data, "--quiet", ok=False)
            one_line_exit_2(res, needle)
    assert gradstore.open(tmp_path / "s").tables() == ["pool"]
    np.testing.assert_array_equal(gradstore.open(tmp_path / "s").vectors("pool")[1], before)


def test_pool_and_target_that_do_not_match(tmp_path):
    s = tmp_path / "s"
    rng = np.random.default_rng(0)
    for name, kind, seed, ckpt in [("pool", "pool", 0, "1"), ("t_seed", "target", 1, "1"),
                                   ("t_ckpt", "target", 0, "2")]:
        np.save(tmp_path / f"{name}.npy", rng.standard_normal((20, 8)).astype(np.float32))
        run("import", s, name, "--vectors", tmp_path / f"{name}.npy", "--kind", kind,
            "--projection", "rademacher", "--proj-seed", seed, "--checkpoint", ckpt)
    np.save(tmp_path / "wide.npy", rng.standard_normal((5, 16)).astype(np.float32))
    run("import", s, "t_dim", "--vectors", tmp_path / "wide.npy", "--kind", "target",
        "--projection", "rademacher", "--proj-seed", 0, "--checkpoint", "1")
    for target, needle in [("t_seed", "seed"), ("t_ckpt", "checkpoint"), ("t_dim", "dim")]:
        res = run("select", s, "--pool", "pool", "--target", target, "--budget", "3",
                  "--quiet", ok=False)
        one_line_exit_2(res, needle)
    assert gradstore.open(s).selections() == []


def test_missing_store_or_table(tmp_path):
    missing = tmp_path / "nowhere"
    for args in (["info", missing], ["info", missing, "pool"],
                 ["select", missing, "--pool", "pool", "--budget", "3"],
                 ["export", missing, "--selection", "latest", "--out", tmp_path / "o.jsonl"]):
        one_line_exit_2(run(*args, ok=False), "does not exist")
    assert not missing.exists()
    s = tmp_path / "s"
    np.save(tmp_path / "v.npy", np.ones((4, 3), dtype=np.float32))
    run("import", s, "pool", "--vectors", tmp_path / "v.npy")
    one_line_exit_2(run("info", s, "ghost", ok=False), "ghost")
    one_line_exit_2(run("export", s, "--selection", "latest", "--out", tmp_path / "o.jsonl",
                        ok=False), "no selections")


def test_float16_overflow_on_import(tmp_path):
    np.save(tmp_path / "big.npy", np.full((3, 4), 1e6, dtype=np.float32))
    res = run("import", tmp_path / "s", "t", "--vectors", tmp_path / "big.npy", ok=False)
    one_line_exit_2(res, "--vector-dtype float32")
    assert gradstore.open(tmp_path / "s").tables() == []
    run("import", tmp_path / "s", "t", "--vectors", tmp_path / "big.npy",
        "--vector-dtype", "float32")
    assert gradstore.open(tmp_path / "s").vectors("t")[1].max() == 1e6

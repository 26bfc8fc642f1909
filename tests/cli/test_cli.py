"""The `gradstore` command, run as a user runs it (a subprocess)."""

import contextlib
import io
import json
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest
import torch

import gradstore
from gradstore.cli.main import main
from tests.conftest import clustered_rows


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def run(*args, ok=True):
    """The CLI in-process (same code path as the entry point, without interpreter start-up)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    res = Result(code, out.getvalue(), err.getvalue())
    if ok:
        assert code == 0, res.stderr
    return res


def test_entry_point_subprocess(tmp_path):
    """`python -m gradstore` as a user runs it: exit codes and one-line errors."""
    np.save(tmp_path / "v.npy", np.ones((3, 4), dtype=np.float32))
    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            "gradstore",
            "import",
            tmp_path / "s",
            "t",
            "--vectors",
            tmp_path / "v.npy",
        ],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0 and "3 rows" in ok.stdout
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "gradstore",
            "select",
            tmp_path / "s",
            "--pool",
            "t",
            "--budget",
            "4",
        ],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "pool has 3" in bad.stderr


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    X = clustered_rows(rng, 300, 2, 16)
    np.save(tmp_path / "c1.npy", X[:, :16])
    torch.save(torch.from_numpy(X[:, 16:]), tmp_path / "c2.pt")
    (tmp_path / "ids.txt").write_text("\n".join(f"ex-{i}" for i in range(300)) + "\n")
    T = X[:8] + 0.05
    np.save(tmp_path / "t1.npy", T[:, :16])
    np.save(tmp_path / "t2.npy", T[:, 16:])
    (tmp_path / "sub.txt").write_text("\n".join(["a", "b"] * 4))
    return tmp_path


def test_import_select_info_roundtrip(files):
    s = files / "store"
    run(
        "import",
        s,
        "pool",
        "--vectors",
        files / "c1.npy",
        "--checkpoint",
        "1",
        "--lr",
        "2e-5",
        "--ids",
        files / "ids.txt",
    )
    run(
        "import",
        s,
        "pool",
        "--vectors",
        files / "c2.pt",
        "--checkpoint",
        "2",
        "--lr",
        "1e-5",
        "--ids",
        files / "ids.txt",
    )
    for c, f in (("1", "t1.npy"), ("2", "t2.npy")):
        run(
            "import",
            s,
            "tgt",
            "--vectors",
            files / f,
            "--checkpoint",
            c,
            "--lr",
            "1e-5",
            "--subtasks",
            files / "sub.txt",
            "--kind",
            "target",
        )
    p = run(
        "select",
        s,
        "--pool",
        "pool",
        "--target",
        "tgt",
        "--budget",
        "5%",
        "--budget",
        "10",
        "--format",
        "json",
        "--out",
        files / "sel.json",
        "--quiet",
    )
    out = json.loads(p.stdout)
    assert [o["budget"] for o in out] == ["0.05", "10"]
    assert set(out[0]) == {
        "selection_id",
        "target",
        "budget",
        "method",
        "ids",
        "weights",
        "residual",
        "seconds",
    }
    assert json.loads((files / "sel.json").read_text()) == out
    store = gradstore.open(s)
    for o in out:
        sel = store.selection(o["selection_id"])
        assert sel.ids == o["ids"] and np.allclose(sel.weights, o["weights"])
        assert all(i.startswith("ex-") for i in o["ids"])
    info = run("info", s).stdout
    assert "pool: pool, 300 rows x 16 dims" in info and "lr 2e-05" in info
    tinfo = json.loads(run("info", s, "tgt", "--format", "json").stdout)
    assert tinfo["subtasks"] == 2 and tinfo["kind"] == "target"
    text = run("select", s, "--pool", "pool", "--budget", "3", "--method", "less").stdout
    assert "method=less" in text and "(in-domain)" in text
    pinfo = run("info", s, "pool").stdout
    assert pinfo.count("selection ") == 3


@pytest.mark.parametrize(
    "args,needle",
    [
        (["select", "{s}", "--pool", "pool", "--budget", "5%"], "does not exist"),
        (["info", "{s}"], "does not exist"),
        (["import", "{s}", "t", "--vectors", "{f}/missing.npy"], "does not exist"),
        (["import", "{s}", "t", "--vectors", "{f}/ids.txt"], "use .npy or .pt"),
        (["select"], "required"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_user_errors_exit_2_one_line(files, args, needle):
    s = files / "fresh"
    p = run(*[a.format(s=s, f=files) for a in args], ok=False)
    assert p.returncode == 2
    assert needle in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "Traceback" not in p.stderr


def test_errors_on_existing_store_leave_it_intact(files):
    s = files / "store"
    run("import", s, "pool", "--vectors", files / "c1.npy", "--ids", files / "ids.txt")
    bad = np.load(files / "c1.npy")
    bad[5, 3] = np.nan
    np.save(files / "bad.npy", bad)
    (files / "dup.txt").write_text("\n".join(["x"] * 300))
    cases = [
        (["import", s, "pool", "--vectors", files / "bad.npy", "--checkpoint", "2"], "NaN"),
        (
            ["import", s, "other", "--vectors", files / "c1.npy", "--ids", files / "dup.txt"],
            "not unique",
        ),
        (["import", s, "pool", "--vectors", files / "t1.npy", "--checkpoint", "3"], "rows"),
        (["select", s, "--pool", "pool", "--budget", "301"], "pool has 300"),
        (["select", s, "--pool", "pool", "--budget", "0"], "budget"),
        (["select", s, "--pool", "pool", "--budget", "120%"], "100%"),
        (["select", s, "--pool", "ghost", "--budget", "3"], "not in store"),
        (["select", s, "--pool", "pool", "--target", "ghost", "--budget", "3"], "not in store"),
    ]
    for args, needle in cases:
        p = run(*args, ok=False)
        assert p.returncode == 2, (args, p.stderr)
        assert needle in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    store = gradstore.open(s)
    assert store.tables() == ["pool"]
    ids, X = store.vectors("pool")
    assert len(ids) == 300 and [c["name"] for c in store.info("pool")["checkpoints"]] == ["0"]
    np.testing.assert_allclose(X, np.load(files / "c1.npy").astype(np.float16).astype(np.float32))


LIGHT = """
import sys
from gradstore.cli.main import main
store, vec, data, sel_out = sys.argv[1:]
for argv in (["import", store, "pool2", "--vectors", vec], ["info", store],
             ["info", store, "pool2"], ["export", store, "--selection", "latest", "--data",
             data, "--out", sel_out], ["verify", store], ["restore", store, "pool2"]):
    assert main(argv) == 0, argv
print(sorted(m for m in ("torch", "transformers", "peft", "scipy") if m in sys.modules))
"""


def test_store_commands_start_without_torch(tmp_path):
    """import, info, export, verify and restore read and write the store only: they never
    import torch, transformers, peft or scipy (each would add a second or more to every
    such command's start)."""
    np.save(tmp_path / "v.npy", np.ones((6, 4), dtype=np.float32))
    store = tmp_path / "s"
    st = gradstore.open(store)
    st.import_vectors("pool", np.eye(6, 4, dtype=np.float32), ids=[str(i) for i in range(6)])
    st.import_vectors("tgt", np.eye(2, 4, dtype=np.float32), kind="target")
    st.select("pool", "tgt", budget=2)
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"id": str(i), "text": "x"}) + "\n" for i in range(6)))
    done = subprocess.run([sys.executable, "-c", LIGHT, str(store), str(tmp_path / "v.npy"),
                           str(data), str(tmp_path / "out.jsonl")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]"


def test_torch_bound_names_load_when_first_used():
    from gradstore.grads.ingestion import IngestSummary
    from gradstore.ops.pipeline import RunSummary

    assert gradstore.IngestSummary is IngestSummary and gradstore.RunSummary is RunSummary
    with pytest.raises(AttributeError, match="has no attribute 'Stor'"):
        gradstore.Stor  # noqa: B018 - the attribute lookup is the test


def test_tensor_files_of_every_shape_import_as_their_matrix(tmp_path):
    """.pt files as tools write them: a tensor (bfloat16 too), a dict holding one tensor,
    a list of per-batch tensors; a dict of several is refused with its keys."""
    from gradstore.store.importing import read_vector_file

    X = np.arange(12, dtype=np.float32).reshape(4, 3)
    t = torch.from_numpy(X)
    cases = {"plain": t, "bf16": t.bfloat16(), "dict": {"grads": t, "meta": "x"},
             "list": [t[:1], t[1:]]}
    for name, obj in cases.items():
        torch.save(obj, tmp_path / f"{name}.pt")
        np.testing.assert_array_equal(read_vector_file(tmp_path / f"{name}.pt"), X)
    torch.save({"a": t, "b": t}, tmp_path / "two.pt")
    with pytest.raises(gradstore.GradstoreError, match=r"dict with 2 tensors \(\['a', 'b'\]"):
        read_vector_file(tmp_path / "two.pt")

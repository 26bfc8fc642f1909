"""`gradstore report`: every number against an independent computation (scipy's NNLS in the
space written out by hand, direct counts), and bad input as one line, exit 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.optimize import nnls

import gradstore
from gradstore.ops.report import enough_at
from tests.cli.test_cli import run

N, D, T = 60, 12, 2
LRS = (3e-4, 1e-4)


@pytest.fixture
def built(tmp_path):
    """A pool with an exact copy of the row most aligned with the target (rows 0 and 1),
    a target, a data file with a ``src`` field, and GTP, LESS and random selections."""
    rng = np.random.default_rng(5)
    pool = rng.normal(size=(T, N, D)).astype(np.float32)
    target = rng.normal(size=(T, 6, D)).astype(np.float32) + 2.0
    pool[:, 0] = target.mean(1) * 1.5
    pool[:, 1] = pool[:, 0]
    path = tmp_path / "store"
    st = gradstore.open(path)
    ids = [f"r{i:02d}" for i in range(N)]
    for t in range(T):
        st.import_vectors("pool", pool[t], checkpoint=f"c{t}", ids=ids, lr=LRS[t],
                          vector_dtype="float32")
        st.import_vectors("target", target[t], checkpoint=f"c{t}",
                          ids=[f"t{i}" for i in range(6)], lr=LRS[t], kind="target",
                          vector_dtype="float32")
    data = tmp_path / "pool.jsonl"
    data.write_text("".join(json.dumps({"id": i, "src": "web" if n % 3 else "books",
                                        "text": f"<b>row {i}</b>"}) + "\n"
                            for n, i in enumerate(ids)))
    sels = {m: st.select("pool", target="target", budget=8, method=m)
            for m in ("gtp", "less", "random")}
    return st, path, data, pool, target, sels


def common_space(X: np.ndarray) -> np.ndarray:
    """GTP-as-published's rows, by hand: each checkpoint unit length, times sqrt(lr share)."""
    eta = np.asarray(LRS) / sum(LRS)
    blocks = [X[t] / np.linalg.norm(X[t], axis=1, keepdims=True) * np.sqrt(eta[t])
              for t in range(T)]
    return np.concatenate(blocks, axis=1).astype(np.float64)


def test_residuals_are_scipys_nnls_in_one_space_for_every_method(built):
    st, _, data, pool, target, sels = built
    rep = st.report([s.selection_id for s in sels.values()], data=data)
    A, y = common_space(pool), common_space(target).mean(0)
    for f in rep.selections:
        rows = [int(i[1:]) for i in f.selection.ids]
        _, rnorm = nnls(A[rows].T, y)
        assert f.residual == pytest.approx(rnorm / np.linalg.norm(y), rel=1e-5)
        w, _ = nnls(A[rows].T, y)
        r = A[rows].T @ w - y
        per = [np.linalg.norm(r[t * D:(t + 1) * D]) / np.linalg.norm(y[t * D:(t + 1) * D])
               for t in range(T)]
        np.testing.assert_allclose(f.residual_per_checkpoint, per, rtol=1e-4)
        js = [j for j, _ in f.curve]
        assert js[0] == 1 and js[-1] == len(rows) and js == sorted(set(js))
        for j, res in f.curve:  # the first j rows in the method's order
            _, rn = nnls(A[rows[:j]].T, y)
            assert res == pytest.approx(rn / np.linalg.norm(y), rel=1e-5)
        curve = [res for _, res in f.curve]
        assert all(b <= a + 1e-9 for a, b in zip(curve, curve[1:], strict=False))
        assert f.enough_at == enough_at(f.curve)


def test_budget_advisor_marks_ninety_percent_of_the_reduction():
    curve = [(1, 0.8), (2, 0.5), (4, 0.3), (8, 0.25)]  # reduction 0.75; 90% of it: 0.675
    assert enough_at(curve) == 4  # 1 - 0.3 = 0.7 >= 0.675; 1 - 0.5 = 0.5 is not
    assert enough_at([(1, 1.0), (2, 1.0)]) is None
    assert enough_at([]) is None


def test_copies_composition_overlap_and_texts(built):
    st, _, data, _, _, sels = built
    less, gtp = sels["less"], sels["gtp"]
    assert {"r00", "r01"} <= set(less.ids)  # LESS takes both copies of the best row
    rep = st.report([less.selection_id, gtp.selection_id], data=data, by="src")
    f_less, f_gtp = rep.selections
    assert [(a, b) for a, b, _ in f_less.duplicate_pairs] in ([("r00", "r01")],
                                                               [("r01", "r00")])
    assert f_less.spent_on_copies == 1
    assert f_gtp.spent_on_copies == sum({"r00", "r01"} <= set(gtp.ids) for _ in [0])
    rows = {r["id"]: r for r in map(json.loads, data.read_text().splitlines())}
    want = {}
    for i in less.ids:
        want[rows[i]["src"]] = want.get(rows[i]["src"], 0) + 1
    assert f_less.composition == want
    assert rep.pool_composition == {"web": 40, "books": 20}
    inter = len(set(less.ids) & set(gtp.ids))
    assert rep.shared[0][1] == inter
    assert rep.overlap[0][1] == pytest.approx(inter / len(set(less.ids) | set(gtp.ids)))
    assert rep.overlap[0][0] == 1.0
    assert f_less.top[0]["text"] == f"<b>row {f_less.top[0]['id']}</b>"


def test_the_page_escapes_text_and_shows_every_section(built, tmp_path):
    st, path, data, _, _, sels = built
    out = tmp_path / "r.html"
    res = run("report", path, "--out", out, "--by", "src", "--data", data)
    assert "report written to" in res.stdout
    html = out.read_text()
    for section in ("summary", "residuals", "composition", "duplicates", "overlap",
                    "examples", "weights", "provenance"):
        assert f'<section id="{section}">' in html
    assert "&lt;b&gt;row" in html and "<b>row" not in html  # rows' text is escaped
    assert html.count("data:image/png;base64,") == 4  # curve, checkpoints, weights, composition
    for s in sels.values():  # default: the latest run's selections of that pool and target
        assert s.selection_id in html


def version_of(path):
    import lance

    return {t: lance.dataset(str(path / f"{t}.lance")).version
            for t in ("pool", "target", "_selections")}


@pytest.mark.parametrize("args, message", [
    (["--selection", "nope"], "selection 'nope' is not in store"),
    (["--by", "colour", "--data", "{data}"], "no field 'colour'"),
    (["--by", "src"], "has no usable data file"),
    (["--out", "{tmp}/r.txt"], "should end in .html"),
    (["--duplicate-cosine", "1.5"], "not in (0, 1]"),
    (["--data", "{tmp}/missing.jsonl"], "does not exist"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_changes(built, tmp_path, args, message):
    _, path, data, _, _, _ = built
    before = version_of(path)
    args = [a.replace("{tmp}", str(tmp_path)).replace("{data}", str(data)) for a in args]
    out = ["--out", str(tmp_path / "r.html")] if "--out" not in args else []
    res = run("report", path, *out, *args, ok=False)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert version_of(path) == before
    assert not (tmp_path / "r.html").exists()


def test_selections_of_two_pools_are_refused(built):
    st, path, _, pool, _, sels = built
    st.import_vectors("pool2", pool[0], checkpoint="c0", ids=[f"q{i}" for i in range(N)])
    other = st.select("pool2", target=None, budget=4, method="random")
    res = run("report", path, "--selection", sels["gtp"].selection_id, "--selection",
              other.selection_id, "--out", path.parent / "r.html", ok=False)
    assert res.returncode == 2 and "different pools" in res.stderr

"""export_selection / read_export: round trips for every input and output format, and errors."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest

import gradstore
from gradstore.errors import GradstoreError
from gradstore.ops.export import ExportSummary, export_selection, read_export
from gradstore.store.database import RowBlock
from gradstore.store.meta import ProjectionSpec, TableMeta
from tests.grads.test_data import save_dataset_dict_dir, save_dataset_dir

N, D, K = 40, 16, 5
IDS = [f"ex-{i:02d}" for i in range(N)]


def make_rows(kind: str, ids: list[str] | None = IDS) -> list[dict]:
    """N rows of one kind (chat, prompt, alpaca, text); ``ids=None`` leaves out ``id``."""
    rows = []
    for i in range(N):
        if kind == "chat":
            row = {"messages": [
                {"role": "user", "content": f"question {i} — ünïcode"},
                {"role": "assistant", "content": f"answer {i}"},
            ]}
        elif kind == "prompt":
            row = {"prompt": f"p{i}", "completion": f" c{i}"}
        elif kind == "alpaca":
            row = {"instruction": f"do {i}", "input": "" if i % 2 else f"x{i}", "output": f"y{i}"}
        else:
            row = {"text": f"plain text {i}"}
        rows.append(row if ids is None else {"id": ids[i], **row})
    return rows


def write_data(path: Path, fmt: str, rows: list[dict]) -> Path:
    """Write ``rows`` as ``fmt`` (jsonl, json, parquet, hf) at ``path`` + suffix."""
    if fmt == "jsonl":
        p = path.with_suffix(".jsonl")
        p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    elif fmt == "json":
        p = path.with_suffix(".json")
        p.write_text(json.dumps(rows, ensure_ascii=False), "utf-8")
    elif fmt == "parquet":
        p = path.with_suffix(".parquet")
        pl.DataFrame(rows).write_parquet(p)
    else:
        p = save_dataset_dir(path, [rows[: N // 2], rows[N // 2 :]])
    return p


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A store with a pool (ids in shuffled order), a target and three selections."""
    rng = np.random.default_rng(0)
    s = gradstore.open(tmp_path_factory.mktemp("export") / "store")
    order = rng.permutation(N)
    pool = rng.standard_normal((N, D)).astype(np.float32)
    s.import_vectors("pool", pool[order], ids=[IDS[i] for i in order], vector_dtype="float32")
    s.import_vectors("tgt", rng.standard_normal((4, D)).astype(np.float32), kind="target")
    s.import_vectors("rowpool", pool, ids=[str(i) for i in range(N)], vector_dtype="float32")
    return SimpleNamespace(
        store=s,
        gtp=s.select("pool", target="tgt", budget=K, method="gtp"),
        less=s.select("pool", target="tgt", budget=K, method="less"),
        rows=s.select("rowpool", target="tgt", budget=K, method="gtp"),
    )


def expected(sel, rows: list[dict], by=lambda r: r["id"]) -> list[dict]:
    pos = {by(r): r for r in rows}
    return [
        {**pos[i], "rank": k, "weight": float(w)}
        for k, (i, w) in enumerate(zip(sel.ids, sel.weights, strict=True), start=1)
    ]


def check(out: Path, sel, want: list[dict]) -> None:
    got = read_export(out)
    assert got == want
    assert [r["id"] for r in got] == sel.ids
    assert [r["rank"] for r in got] == list(range(1, len(sel.ids) + 1))
    assert np.allclose([r["weight"] for r in got], sel.weights, rtol=0, atol=0)


# --------------------------------------------------------------------------- round trips

FORMATS = {"jsonl": "chat", "json": "prompt", "parquet": "chat", "hf": "alpaca"}


@pytest.mark.parametrize("out_suffix", [".jsonl", ".parquet"])
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_round_trip_every_format(env, tmp_path, fmt, out_suffix):
    rows = make_rows(FORMATS[fmt])
    data = write_data(tmp_path / "data", fmt, rows)
    sel = env.store.selection(env.gtp.selection_id)
    out = tmp_path / "sub" / f"chosen{out_suffix}"  # parent created on write
    summary = export_selection(env.store, sel.selection_id, out, data=data)
    check(out, sel, expected(sel, rows))
    assert summary == ExportSummary(sel.selection_id, str(out), K, "gtp", "tgt", sel.budget)
    assert summary.to_dict()["rows"] == K and str(out) in summary.lines()[0]
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temp file left
    if out_suffix == ".jsonl" and FORMATS[fmt] == "chat":
        assert "ünïcode" in out.read_text("utf-8")  # ensure_ascii=False


def test_mixed_kinds_jsonl_and_less_weights(env, tmp_path):
    kinds = ["chat", "prompt", "alpaca", "text"]
    rows = [make_rows(kinds[i % 4])[i] for i in range(N)]
    data = write_data(tmp_path / "data", "jsonl", rows)
    sel = env.less
    out = tmp_path / "out.jsonl"
    export_selection(env.store, sel.selection_id, out, data=data)
    check(out, sel, expected(sel, rows))
    lines = out.read_text("utf-8").splitlines()
    assert len(lines) == K and all(isinstance(json.loads(x), dict) for x in lines)


@pytest.mark.parametrize("out_suffix", [".jsonl", ".parquet"])
def test_rows_without_id_get_the_row_number(env, tmp_path, out_suffix):
    rows = make_rows("text", ids=None)
    data = write_data(tmp_path / "data", "jsonl", rows)
    sel = env.rows
    out = tmp_path / f"out{out_suffix}"
    export_selection(env.store, sel.selection_id, out, data=data)
    want = [
        {"id": i, **rows[int(i)], "rank": k, "weight": float(w)}
        for k, (i, w) in enumerate(zip(sel.ids, sel.weights, strict=True), start=1)
    ]
    check(out, sel, want)
    assert list(read_export(out)[0]) == ["id", "text", "rank", "weight"]


def test_dataset_dict_split(env, tmp_path):
    rows = make_rows("chat")
    data = save_dataset_dict_dir(tmp_path / "dd", {"train": rows, "test": rows[:3]})
    sel = env.gtp
    out = tmp_path / "out.parquet"
    with pytest.raises(GradstoreError, match="--split"):
        export_selection(env.store, sel.selection_id, out, data=data)
    export_selection(env.store, sel.selection_id, out, data=data, split="train")
    check(out, sel, expected(sel, rows))


def test_existing_output_is_replaced(env, tmp_path):
    data = write_data(tmp_path / "data", "jsonl", make_rows("prompt"))
    out = tmp_path / "out.jsonl"
    out.write_text("stale\n" * 1000)
    export_selection(env.store, env.gtp.selection_id, out, data=data)
    export_selection(env.store, env.less.selection_id, out, data=data)
    check(out, env.less, expected(env.less, make_rows("prompt")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl", "out.jsonl"]
    with pytest.raises(GradstoreError, match="exists"):
        export_selection(env.store, env.gtp.selection_id, out, data=data, overwrite=False)


# --------------------------------------------------------------------------- default data


def test_data_defaults_to_recorded_source(tmp_path):
    rows = make_rows("chat")
    data = write_data(tmp_path / "data", "jsonl", rows)
    s = gradstore.open(tmp_path / "store")
    X = np.random.default_rng(1).standard_normal((N, D)).astype(np.float32)
    meta = TableMeta(dim=D, vector_dtype="float32", projection=ProjectionSpec(dim=D),
                     extra={"source": str(data)})
    s.database.create_table("ingested", meta, [("0", None)],
                   [RowBlock(ids=IDS, rows=np.arange(N), vectors=[X])])
    sel = s.select("ingested", budget=K, method="gtp")
    out = tmp_path / "out.jsonl"
    export_selection(s.database, sel.selection_id, out)
    check(out, sel, expected(sel, rows))
    data.unlink()
    with pytest.raises(GradstoreError, match=r"recorded source .*data\.jsonl.*--data"):
        export_selection(s.database, sel.selection_id, out)


def test_no_recorded_source_asks_for_data(env, tmp_path):
    with pytest.raises(GradstoreError, match="--data"):
        export_selection(env.store, env.gtp.selection_id, tmp_path / "out.jsonl")


# --------------------------------------------------------------------------- errors


def test_unknown_selection(env, tmp_path):
    with pytest.raises(GradstoreError, match="'nope' is not in store"):
        export_selection(env.store, "nope", tmp_path / "out.jsonl", data=tmp_path / "x.jsonl")


def test_missing_selected_id(env, tmp_path):
    sel = env.gtp
    rows = [r for r in make_rows("text") if r["id"] != sel.ids[1]]
    data = write_data(tmp_path / "data", "jsonl", rows)
    out = tmp_path / "out.jsonl"
    with pytest.raises(GradstoreError, match=rf"1 of {K} selected ids.*{sel.ids[1]}.*ingested"):
        export_selection(env.store, sel.selection_id, out, data=data)
    assert not out.exists()


def test_bad_output_suffix(env, tmp_path):
    data = write_data(tmp_path / "data", "jsonl", make_rows("text"))
    with pytest.raises(GradstoreError, match=r"'\.csv'.*\.jsonl, \.parquet"):
        export_selection(env.store, env.gtp.selection_id, tmp_path / "out.csv", data=data)
    other = tmp_path / "rows.json"
    other.write_text("[]")
    with pytest.raises(GradstoreError, match=r"\.jsonl, \.parquet"):
        read_export(other)


def test_output_onto_input_refused(env, tmp_path):
    data = write_data(tmp_path / "data", "jsonl", make_rows("text"))
    before = data.read_text()
    with pytest.raises(GradstoreError, match="input data file"):
        export_selection(env.store, env.gtp.selection_id, tmp_path / "." / "data.jsonl",
                         data=data)
    assert data.read_text() == before


@pytest.mark.parametrize("column", ["weight", "rank"])
def test_existing_weight_or_rank_field(env, tmp_path, column):
    rows = [{**r, column: 0.5} for r in make_rows("text")]
    data = write_data(tmp_path / "data", "jsonl", rows)
    sel = env.gtp
    out = tmp_path / "out.parquet"
    with pytest.raises(GradstoreError, match=f"{column!r}.*--{column}-column"):
        export_selection(env.store, sel.selection_id, out, data=data)
    kw = {f"{column}_column": f"sample_{column}"}
    export_selection(env.store, sel.selection_id, out, data=data, **kw)
    got = read_export(out)
    assert [r["id"] for r in got] == sel.ids and all(r[column] == 0.5 for r in got)
    assert np.allclose(
        [r["sample_weight" if column == "weight" else "weight"] for r in got], sel.weights
    )


def test_clashing_column_names(env, tmp_path):
    data = write_data(tmp_path / "data", "jsonl", make_rows("text"))
    with pytest.raises(GradstoreError, match="must differ"):
        export_selection(env.store, env.gtp.selection_id, tmp_path / "o.jsonl", data=data,
                         weight_column="rank")


def test_failed_write_leaves_old_output(env, tmp_path, monkeypatch):
    import gradstore.ops.export as export

    data = write_data(tmp_path / "data", "jsonl", make_rows("text"))
    out = tmp_path / "out.parquet"
    out.write_bytes(b"old")

    def crash(path: Path, rows: list[dict]) -> None:
        path.write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "_write_parquet", crash)
    with pytest.raises(KeyboardInterrupt):
        export_selection(env.store, env.gtp.selection_id, out, data=data)
    assert out.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl", "out.parquet"]


def test_mixed_types_cannot_be_parquet(env, tmp_path):
    rows = [{**r, "score": i if i % 2 else str(i)} for i, r in enumerate(make_rows("text"))]
    data = write_data(tmp_path / "data", "jsonl", rows)
    with pytest.raises(GradstoreError, match=r"parquet.*export to \.jsonl"):
        export_selection(env.store, env.gtp.selection_id, tmp_path / "o.parquet", data=data)
    export_selection(env.store, env.gtp.selection_id, tmp_path / "o.jsonl", data=data)
    check(tmp_path / "o.jsonl", env.gtp, expected(env.gtp, rows))

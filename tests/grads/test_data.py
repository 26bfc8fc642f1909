"""read_records: jsonl/json/parquet/datasets-directory readers and their errors."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest

from gradstore.errors import GradstoreError
from gradstore.grads.data import Record, read_records


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def save_dataset_dir(path: Path, shards: list[list[dict]]) -> Path:
    """Mimic ``datasets.Dataset.save_to_disk``: Arrow IPC stream shards + state.json."""
    path.mkdir(parents=True)
    files = []
    for i, rows in enumerate(shards):
        name = f"data-{i:05d}-of-{len(shards):05d}.arrow"
        table = pa.Table.from_pylist(rows)
        with pa.OSFile(str(path / name), "wb") as sink:
            with ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
        files.append({"filename": name})
    state = {
        "_data_files": files,
        "_fingerprint": "0123456789abcdef",
        "_format_columns": None,
        "_format_kwargs": {},
        "_format_type": None,
        "_output_all_columns": False,
        "_split": None,
    }
    (path / "state.json").write_text(json.dumps(state, indent=2))
    (path / "dataset_info.json").write_text(json.dumps({"citation": "", "features": {}}))
    return path


def save_dataset_dict_dir(path: Path, splits: dict[str, list[dict]]) -> Path:
    """Mimic ``datasets.DatasetDict.save_to_disk``: dataset_dict.json + one dir per split."""
    path.mkdir(parents=True)
    (path / "dataset_dict.json").write_text(json.dumps({"splits": list(splits)}))
    for name, rows in splits.items():
        save_dataset_dir(path / name, [rows])
    return path


# --------------------------------------------------------------------------- jsonl


def test_jsonl_ids_indices_and_true_line_numbers(tmp_path):
    f = write_lines(
        tmp_path / "data.jsonl",
        [
            '{"id": "a", "text": "one"}',
            "",
            "   ",
            '{"text": "two"}',
            '{"id": 17, "text": "three"}',
        ],
    )
    recs = read_records(f)
    assert [r.id for r in recs] == ["a", "1", "17"]
    assert [r.index for r in recs] == [0, 1, 2]
    assert [r.where for r in recs] == [f"{f} line 1", f"{f} line 4", f"{f} line 5"]
    assert recs[2].fields == {"id": 17, "text": "three"}
    assert isinstance(recs[0], Record)


def test_jsonl_invalid_json_names_line(tmp_path):
    f = write_lines(tmp_path / "data.jsonl", ['{"text": "ok"}', "", '{"text": "a" "b"}'])
    with pytest.raises(GradstoreError, match=r"data\.jsonl line 3: invalid JSON \(Expecting"):
        read_records(f)


def test_jsonl_row_not_an_object(tmp_path):
    f = write_lines(tmp_path / "data.jsonl", ['{"text": "ok"}', '["not", "an", "object"]'])
    with pytest.raises(GradstoreError, match=r"line 2: expected a JSON object.*got list"):
        read_records(f)


def test_missing_file_and_bad_extension(tmp_path):
    with pytest.raises(GradstoreError, match=r"nope\.jsonl does not exist"):
        read_records(tmp_path / "nope.jsonl")
    f = tmp_path / "data.csv"
    f.write_text("a,b\n")
    with pytest.raises(GradstoreError, match=r"unsupported extension '\.csv'.*\.jsonl.*\.parquet"):
        read_records(f)


def test_empty_file_has_no_examples(tmp_path):
    f = write_lines(tmp_path / "empty.jsonl", ["", "  "])
    with pytest.raises(GradstoreError, match=r"empty\.jsonl has no examples"):
        read_records(f)
    g = tmp_path / "empty.json"
    g.write_text("[]")
    with pytest.raises(GradstoreError, match=r"empty\.json has no examples"):
        read_records(g)


def test_duplicate_ids_name_both_locations(tmp_path):
    lines = ['{"id": "x", "text": "a"}', '{"text": "b"}', '{"id": "x", "text": "c"}']
    f = write_lines(tmp_path / "d.jsonl", lines)
    with pytest.raises(GradstoreError) as e:
        read_records(f)
    msg = str(e.value)
    assert "duplicate id 'x'" in msg and f"{f} line 3" in msg and f"{f} line 1" in msg
    assert "unique" in msg


def test_row_number_id_collides_with_explicit_id(tmp_path):
    # row 0 has no id -> "0"; row 1 says id 0 -> "0" again
    f = write_lines(tmp_path / "d.jsonl", ['{"text": "a"}', '{"id": 0, "text": "b"}'])
    with pytest.raises(GradstoreError, match=r"line 2: duplicate id '0' \(also at .*line 1\)"):
        read_records(f)


def test_empty_and_bad_type_ids(tmp_path):
    f = write_lines(tmp_path / "d.jsonl", ['{"id": "", "text": "a"}'])
    with pytest.raises(GradstoreError, match=r"line 1: empty id"):
        read_records(f)
    g = write_lines(tmp_path / "g.jsonl", ['{"id": 1.5, "text": "a"}'])
    with pytest.raises(GradstoreError, match=r"line 1: id 1\.5 is a float"):
        read_records(g)


def test_split_on_plain_file_is_an_error(tmp_path):
    f = write_lines(tmp_path / "d.jsonl", ['{"text": "a"}'])
    with pytest.raises(GradstoreError, match=r"split 'train'.*drop --split"):
        read_records(f, split="train")


# --------------------------------------------------------------------------- json


def test_json_array_and_wrapped_list(tmp_path):
    rows = [{"id": "p", "text": "a"}, {"text": "b"}]
    f = tmp_path / "arr.json"
    f.write_text(json.dumps(rows, indent=2))
    recs = read_records(f)
    assert [r.id for r in recs] == ["p", "1"]
    assert [r.fields for r in recs] == rows
    assert recs[1].where == f"{f} item 1"

    g = tmp_path / "wrapped.json"
    g.write_text(json.dumps({"version": 2, "data": rows}))
    assert [r.fields for r in read_records(g)] == rows


def test_json_that_is_json_lines_and_single_example(tmp_path):
    f = write_lines(tmp_path / "lines.json", ['{"text": "a"}', "", '{"text": "b"}'])
    recs = read_records(f)
    assert [r.fields["text"] for r in recs] == ["a", "b"]
    assert recs[1].where == f"{f} line 3"

    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    g = tmp_path / "one.json"
    g.write_text(json.dumps({"messages": msgs}))
    recs = read_records(g)
    assert len(recs) == 1 and recs[0].fields["messages"] == msgs


def test_json_invalid_and_non_objects(tmp_path):
    f = tmp_path / "bad.json"
    f.write_text('[\n  {"text": "a"},\n  {"text": }\n]')
    with pytest.raises(GradstoreError, match=r"bad\.json line 3: invalid JSON"):
        read_records(f)
    g = tmp_path / "ints.json"
    g.write_text("[1, 2]")
    with pytest.raises(GradstoreError, match=r"ints\.json item 0: expected a JSON object.*int"):
        read_records(g)
    h = tmp_path / "two.json"
    h.write_text(json.dumps({"train": [{"text": "a"}], "test": [{"text": "b"}]}))
    with pytest.raises(GradstoreError, match=r"several list-valued keys \(train, test\)"):
        read_records(h)


# --------------------------------------------------------------------------- parquet


def test_parquet_rows_with_nested_messages(tmp_path):
    rows = [
        {"id": "q1", "messages": [{"role": "user", "content": "hi"}], "n": 1},
        {"id": "q2", "messages": [{"role": "assistant", "content": "yo"}], "n": 2},
    ]
    f = tmp_path / "data.parquet"
    pl.DataFrame(rows).write_parquet(f)
    recs = read_records(f)
    assert [r.id for r in recs] == ["q1", "q2"]
    assert [r.fields for r in recs] == rows
    assert recs[1].where == f"{f} row 1"


def test_parquet_duplicate_ids_and_corrupt_file(tmp_path):
    f = tmp_path / "dup.parquet"
    pl.DataFrame({"id": [3, 4, 3], "text": ["a", "b", "c"]}).write_parquet(f)
    with pytest.raises(GradstoreError, match=r"row 2: duplicate id '3' \(also at .*row 0\)"):
        read_records(f)
    g = tmp_path / "bad.parquet"
    g.write_bytes(b"not parquet at all")
    with pytest.raises(GradstoreError, match=r"bad\.parquet: cannot read as parquet"):
        read_records(g)


# --------------------------------------------------------------------------- datasets dirs


def test_dataset_save_to_disk_layout_with_two_shards(tmp_path):
    shards = [
        [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}],
        [{"id": "c", "text": "z"}],
    ]
    d = save_dataset_dir(tmp_path / "ds", shards)
    recs = read_records(d)
    assert [r.id for r in recs] == ["a", "b", "c"]
    assert [r.fields["text"] for r in recs] == ["x", "y", "z"]
    assert [r.index for r in recs] == [0, 1, 2]
    assert recs[2].where == f"{d} row 2"
    with pytest.raises(GradstoreError, match=r"not a datasets DatasetDict"):
        read_records(d, split="train")


def test_dataset_dict_split_selection(tmp_path):
    d = save_dataset_dict_dir(
        tmp_path / "dd",
        {"train": [{"text": "t0"}, {"text": "t1"}], "test": [{"text": "e0"}]},
    )
    assert [r.fields["text"] for r in read_records(d, split="test")] == ["e0"]
    assert [r.fields["text"] for r in read_records(d, split="train")] == ["t0", "t1"]
    with pytest.raises(GradstoreError, match=r"splits train, test; pass --split"):
        read_records(d)
    with pytest.raises(GradstoreError, match=r"no split 'dev'; available splits: train, test"):
        read_records(d, split="dev")


def test_dataset_dict_single_split_is_picked(tmp_path):
    d = save_dataset_dict_dir(tmp_path / "dd", {"validation": [{"text": "v"}]})
    recs = read_records(d)
    assert [r.fields for r in recs] == [{"text": "v"}]
    assert recs[0].where == f"{d / 'validation'} row 0"


def test_dataset_dir_errors(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(GradstoreError, match=r"without state\.json or dataset_dict\.json"):
        read_records(plain)
    d = save_dataset_dir(tmp_path / "ds", [[{"text": "a"}]])
    (d / "data-00000-of-00001.arrow").unlink()
    with pytest.raises(GradstoreError, match=r"listed in state\.json but missing"):
        read_records(d)
    e = save_dataset_dir(tmp_path / "empty", [[{"text": "a"}]])
    table = pa.Table.from_pylist([], schema=pa.schema([("text", pa.string())]))
    with pa.OSFile(str(e / "data-00000-of-00001.arrow"), "wb") as sink:
        with ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    with pytest.raises(GradstoreError, match=r"empty has no examples"):
        read_records(e)


def test_bytes_not_in_the_encoding_name_line_and_offset(tmp_path):
    good = '{"id": "a", "text": "plain"}\n'
    bad = '{"id": "b", "text": "caf\u00e9"}\n'.encode("latin-1")
    path = tmp_path / "d.jsonl"
    path.write_bytes(good.encode() + bad)
    offset = len(good.encode()) + bad.index(b"\xe9")
    with pytest.raises(GradstoreError) as err:
        read_records(path)
    msg = str(err.value)
    assert f"line 2, byte offset {offset}: byte 0xe9" in msg and "--encoding" in msg
    recs = read_records(path, encoding="latin-1")
    assert recs[1].fields["text"] == "caf\u00e9"
    with pytest.raises(GradstoreError, match="unknown text encoding"):
        read_records(path, encoding="no-such-codec")


def test_a_utf8_byte_order_mark_is_skipped(tmp_path):
    path = tmp_path / "d.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps([{"id": "x", "text": "t"}]).encode())
    assert [r.id for r in read_records(path)] == ["x"]

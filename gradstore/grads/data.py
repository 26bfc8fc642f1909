"""Read training and target example files into a list of records.

Supported sources:

* ``.jsonl`` — one JSON object per line; blank lines are skipped but line numbers
  stay those an editor shows (1-based).
* ``.json`` — a JSON array of objects, an object with exactly one list-valued key
  (``{"data": [...]}``), a single example object (``{"messages": [...]}``), or a
  file that is really JSON lines.
* ``.parquet`` — read with polars, one record per row.
* a Hugging Face ``datasets`` directory written by ``Dataset.save_to_disk`` or
  ``DatasetDict.save_to_disk``, read without the ``datasets`` package: ``state.json``
  lists the Arrow IPC *stream* files under ``_data_files``; a ``DatasetDict`` has
  ``dataset_dict.json`` (``{"splits": [...]}``) and one such directory per split.

Each record's id is its ``id`` field (a string or integer, as ``str``) when present
and not null, else its 0-based row number. Ids must be unique and non-empty.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradstore.errors import GradstoreError

SUPPORTED = (".jsonl", ".json", ".parquet", "a datasets save_to_disk directory")


@dataclass(frozen=True)
class Record:
    """One example row: its id, 0-based position, human location and raw fields."""

    id: str
    index: int
    where: str
    fields: dict


def read_records(path: str | Path, split: str | None = None,
                 encoding: str = "utf-8") -> list[Record]:
    """Read every example of ``path`` (see the module docstring for formats).

    ``split`` picks one split of a ``DatasetDict`` directory; it is required when
    there are several splits, and an error for sources that have no splits.
    ``encoding`` is that of a .jsonl or .json file (a UTF-8 byte-order mark is skipped).
    """
    p = Path(path)
    if not p.exists():
        raise GradstoreError(f"data file {p} does not exist; check the path")
    if p.is_dir():
        rows, label = _read_hf_dir(p, split)
    else:
        _reject_split(p, split)
        suffix = p.suffix.lower()
        if suffix == ".jsonl":
            rows = _read_jsonl(p, read_text(p, encoding))
        elif suffix == ".json":
            rows = _read_json(p, read_text(p, encoding))
        elif suffix == ".parquet":
            rows = _read_parquet(p)
        else:
            raise GradstoreError(
                f"data file {p}: unsupported extension {p.suffix or '(none)'!r}; "
                f"use one of {', '.join(SUPPORTED)}"
            )
        label = str(p)
    if not rows:
        raise GradstoreError(
            f"data file {label} has no examples; add examples or pick another file"
        )
    return _to_records(rows)


# --------------------------------------------------------------------------- helpers


def read_text(p: Path, encoding: str = "utf-8") -> str:
    """A text file's contents; a byte that is not ``encoding`` is named with its line and
    offset (one clear error, not a traceback)."""
    data = p.read_bytes()
    codec = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    try:
        return data.decode(codec)
    except LookupError:
        raise GradstoreError(f"unknown text encoding {encoding!r}; give one Python knows, "
                             "e.g. --encoding latin-1") from None
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise GradstoreError(
            f"{p} line {line}, byte offset {exc.start}: byte 0x{data[exc.start]:02x} is not "
            f"valid {encoding} text; convert the file to {encoding}, or pass its encoding with "
            "--encoding (e.g. latin-1)"
        ) from None


def _reject_split(p: Path, split: str | None) -> None:
    if split is not None:
        raise GradstoreError(
            f"split {split!r} given but {p} is not a datasets DatasetDict directory; drop --split"
        )


def _to_records(rows: list[tuple[str, Any]]) -> list[Record]:
    """Turn (where, value) pairs into records, checking objects and ids."""
    out: list[Record] = []
    seen: dict[str, str] = {}
    for index, (where, value) in enumerate(rows):
        if not isinstance(value, dict):
            raise GradstoreError(
                f"{where}: expected a JSON object (an example), got {type(value).__name__}; "
                "fix or remove that row"
            )
        rid = _row_id(value, index, where)
        if rid in seen:
            raise GradstoreError(
                f"{where}: duplicate id {rid!r} (also at {seen[rid]}); "
                "make the ids unique, or drop the id field to use row numbers"
            )
        seen[rid] = where
        out.append(Record(id=rid, index=index, where=where, fields=value))
    return out


def _row_id(fields: dict, index: int, where: str) -> str:
    value = fields.get("id")
    if value is None:
        return str(index)
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise GradstoreError(
            f"{where}: id {value!r} is a {type(value).__name__}; ids must be strings or integers"
        )
    rid = str(value)
    if not rid.strip():
        raise GradstoreError(f"{where}: empty id {value!r}; give the row a non-empty id")
    return rid


def _read_jsonl(p: Path, text: str) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{p} line {lineno}"
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise GradstoreError(f"{where}: invalid JSON ({e.msg}); fix or remove that line") from e
        rows.append((where, value))
    return rows


def _read_json(p: Path, text: str) -> list[tuple[str, Any]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # several top-level values: JSON lines in a .json file
            return _read_jsonl(p, text)
        raise GradstoreError(
            f"{p} line {e.lineno}: invalid JSON ({e.msg}); fix the file"
        ) from e
    if isinstance(data, list):
        return [(f"{p} item {i}", v) for i, v in enumerate(data)]
    if isinstance(data, dict):
        lists = [k for k, v in data.items() if isinstance(v, list)]
        if len(lists) == 1 and lists[0] != "messages":
            key = lists[0]
            return [(f"{p} {key}[{i}]", v) for i, v in enumerate(data[key])]
        if "messages" in data or not lists:
            return [(f"{p} item 0", data)]  # a single example object
        raise GradstoreError(
            f"{p}: object has several list-valued keys ({', '.join(lists)}); "
            "expected a JSON array of examples or an object with one list of examples"
        )
    raise GradstoreError(
        f"{p}: top-level JSON {type(data).__name__}; expected an array of example objects"
    )


def _read_parquet(p: Path) -> list[tuple[str, Any]]:
    import polars as pl

    try:
        df = pl.read_parquet(p)
    except Exception as e:  # polars raises several types for corrupt files
        raise GradstoreError(f"{p}: cannot read as parquet ({e}); check the file") from e
    return [(f"{p} row {i}", row) for i, row in enumerate(df.to_dicts())]


def _read_hf_dir(p: Path, split: str | None) -> tuple[list[tuple[str, Any]], str]:
    if (p / "dataset_dict.json").is_file():
        meta = _load_json_file(p / "dataset_dict.json")
        splits = meta.get("splits") if isinstance(meta, dict) else None
        if not isinstance(splits, list) or not splits:
            raise GradstoreError(
                f"{p / 'dataset_dict.json'}: no 'splits' list; re-save the DatasetDict"
            )
        if split is None:
            if len(splits) > 1:
                raise GradstoreError(
                    f"{p} is a DatasetDict with splits {', '.join(map(str, splits))}; "
                    "pass --split to pick one"
                )
            split = str(splits[0])
        elif split not in splits:
            raise GradstoreError(
                f"{p}: no split {split!r}; available splits: {', '.join(map(str, splits))}"
            )
        sub = p / split
        if not (sub / "state.json").is_file():
            raise GradstoreError(f"{sub}: split directory has no state.json; re-save the dataset")
        return _read_hf_dataset(sub), str(sub)
    if (p / "state.json").is_file():
        _reject_split(p, split)
        return _read_hf_dataset(p), str(p)
    raise GradstoreError(
        f"{p} is a directory without state.json or dataset_dict.json; pass a file "
        f"({', '.join(SUPPORTED[:3])}) or a directory written by datasets' save_to_disk"
    )


def _load_json_file(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise GradstoreError(f"{path} line {e.lineno}: invalid JSON ({e.msg}); fix the file") from e


def _read_hf_dataset(d: Path) -> list[tuple[str, Any]]:
    import pyarrow as pa
    import pyarrow.ipc as ipc

    state = _load_json_file(d / "state.json")
    files = state.get("_data_files") if isinstance(state, dict) else None
    if not isinstance(files, list) or not all(
        isinstance(f, dict) and isinstance(f.get("filename"), str) for f in files
    ):
        raise GradstoreError(
            f"{d / 'state.json'}: no '_data_files' list of {{'filename': ...}}; re-save the dataset"
        )
    rows: list[tuple[str, Any]] = []
    for entry in files:
        f = d / entry["filename"]
        if not f.is_file():
            raise GradstoreError(f"{f}: listed in state.json but missing; re-save the dataset")
        try:
            with pa.memory_map(str(f)) as src:
                table = ipc.open_stream(src).read_all()
        except pa.ArrowInvalid:
            try:  # tolerate the Arrow IPC file format too
                with pa.memory_map(str(f)) as src:
                    table = ipc.open_file(src).read_all()
            except pa.ArrowInvalid as e:
                raise GradstoreError(
                    f"{f}: not an Arrow IPC stream ({e}); re-save the dataset"
                ) from e
        start = len(rows)
        rows.extend((f"{d} row {start + i}", r) for i, r in enumerate(table.to_pylist()))
    return rows

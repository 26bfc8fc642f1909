"""Export a stored selection as training data: the chosen rows of the original data file.

Each output row is the original row's fields unchanged (plus ``id`` when the row had
none, so it can be matched back), then a 1-based ``rank`` and the selection ``weight``,
in selection order. Output is ``.jsonl`` or ``.parquet``, written atomically.
"""

from __future__ import annotations

import datetime
import json
import os
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gradstore.errors import GradstoreError
from gradstore.grads.data import Record, read_records
from gradstore.ops.summaries import query_of
from gradstore.store.database import Database

OUT_SUFFIXES = (".jsonl", ".parquet")


@dataclass(frozen=True)
class ExportSummary:
    """What an export wrote."""

    selection_id: str
    out: str
    rows: int
    method: str
    target: str | None
    budget: str
    query: dict[str, Any] = field(default_factory=dict)
    """The selection's query (``where``, ``exclude``...: only the parts it had)."""

    def lines(self) -> list[str]:
        """Human-readable report lines."""
        target = self.target if self.target is not None else "(in-domain)"
        query = "".join(f", {k} {v!r}" for k, v in self.query.items())
        return [
            f"exported {self.rows} rows of selection {self.selection_id} to {self.out}",
            f"method {self.method}, target {target}, budget {self.budget}{query}",
        ]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def export_selection(
    db: Database,
    selection_id: str,
    out: str | Path,
    data: str | Path | None = None,
    split: str | None = None,
    weight_column: str = "weight",
    rank_column: str = "rank",
    overwrite: bool = True,
    encoding: str = "utf-8",
    from_store: bool = False,
) -> ExportSummary:
    """Write the rows of ``data`` chosen by selection ``selection_id`` to ``out``.

    ``data`` (and ``split``) default to the file the pool table was ingested from.
    ``from_store``: no data file; each row is its id and the fields the store kept of it
    (``ingest --fields``), for a pool whose data file is gone.
    """
    sel = db.selection(selection_id)
    out_p = Path(out)
    suffix = _out_suffix(out_p)
    if weight_column == rank_column or "id" in (weight_column, rank_column):
        raise GradstoreError(
            f"weight column {weight_column!r} and rank column {rank_column!r} must differ "
            "from each other and from 'id'; pick other --weight-column/--rank-column names"
        )
    if not from_store:
        try:
            data_p, split, _ = pool_data_file(db, sel.pool, data, split)
        except GradstoreError as exc:
            raise GradstoreError(f"{exc} (or --from-store: the fields the store kept)") \
                from None
        if out_p.resolve() == data_p.resolve():
            raise GradstoreError(f"output {out_p} is the input data file; choose another "
                                 "output path")
    if out_p.is_dir():
        raise GradstoreError(f"output {out_p} is a directory; give a file path ending in {suffix}")
    if out_p.exists() and not overwrite:
        raise GradstoreError(f"output {out_p} exists; remove it or allow overwriting")
    by_id = (stored_records(db, sel.pool, sel.ids, data) if from_store else
             pool_records(db, sel.pool, sel.ids, data, split, encoding))
    rows = _exported_rows(sel, by_id, weight_column, rank_column)
    _write_atomic(out_p, suffix, rows)
    return ExportSummary(selection_id=sel.selection_id, out=str(out_p), rows=len(rows),
                         method=sel.method, target=sel.target, budget=sel.budget,
                         query=query_of(sel.params))


def pool_records(db: Database, pool: str, ids: list[str], data=None, split=None,
                 encoding: str = "utf-8") -> dict[str, Any]:
    """The rows of the pool's data file by id (``data``, else the recorded source), refusing
    a file that lacks any of ``ids``."""
    data_p, split, source = pool_data_file(db, pool, data, split)
    by_id = {r.id: r for r in read_records(data_p, split=split, encoding=encoding)}
    missing = [i for i in ids if i not in by_id]
    if missing:
        hint = f" ({source})" if source else ""
        raise GradstoreError(
            f"{len(missing)} of {len(ids)} selected ids are not in {data_p} "
            f"(e.g. {', '.join(map(repr, missing[:3]))}); --data must be the file pool "
            f"{pool!r} was ingested from{hint}"
        )
    return by_id


def stored_records(db: Database, pool: str, ids: list[str], data=None) -> dict[str, Record]:
    """The selected rows as the store keeps them: each its id and kept fields, by id."""
    if data is not None:
        raise GradstoreError("--from-store reads no data file; drop --data (or drop "
                             "--from-store to export the data file's rows)")
    if not db.data_fields(pool):
        raise GradstoreError(
            f"pool table {pool!r} keeps none of its rows' fields (ingested before gradstore "
            "kept them, or with --fields none); export with --data, or run the same ingest "
            "again to add them")
    rows = db.field_rows(pool, ids)
    missing = [i for i in ids if i not in rows]
    if missing:  # a selection outlived its rows (a table replaced since)
        raise GradstoreError(f"{len(missing)} selected ids are no longer in pool table "
                             f"{pool!r} (e.g. {missing[0]!r}); select again")
    return {i: Record(i, n, f"stored row {i!r}", rows[i]) for n, i in enumerate(ids)}


def pool_data_file(db: Database, pool: str, data, split) -> tuple[Path, str | None, str | None]:
    """The data file to read (given, else the pool's recorded source), its split, and the
    recorded source."""
    source, source_split = _recorded_source(db, pool)
    if data is None:
        if source is None or not Path(source).exists():
            known = f" (recorded source {source!r} does not exist)" if source else ""
            raise GradstoreError(
                f"pool table {pool!r} has no usable data file{known}; pass --data with "
                "the file the pool was ingested from"
            )
        data, split = source, split if split is not None else source_split
    return Path(data), split, source


def _exported_rows(sel, by_id: dict, weight_column: str, rank_column: str) -> list[dict]:
    """The selected rows in selection order: every original field, then rank and weight."""
    rows: list[dict[str, Any]] = []
    for rank, (rid, w) in enumerate(zip(sel.ids, sel.weights, strict=True), start=1):
        rec = by_id[rid]
        for col, flag in ((weight_column, "--weight-column"), (rank_column, "--rank-column")):
            if col in rec.fields:
                raise GradstoreError(
                    f"{rec.where} already has a field {col!r}; pass {flag} with another name"
                )
        row = dict(rec.fields) if "id" in rec.fields else {"id": rid, **rec.fields}
        if row["id"] is None:  # a null id: the record id is the row number
            row["id"] = rid
        row[rank_column] = rank
        row[weight_column] = float(w)
        rows.append(row)
    return rows


def read_export(path: str | Path) -> list[dict[str, Any]]:
    """Read an exported ``.jsonl`` or ``.parquet`` file back as a list of rows."""
    p = Path(path)
    if not p.is_file():
        raise GradstoreError(f"export file {p} does not exist; check the path")
    if _out_suffix(p) == ".jsonl":
        with p.open(encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    import pyarrow.parquet as pq

    return pq.read_table(p).to_pylist()


# --------------------------------------------------------------------------- helpers


def _out_suffix(p: Path) -> str:
    suffix = p.suffix.lower()
    if suffix not in OUT_SUFFIXES:
        raise GradstoreError(
            f"output {p}: unsupported extension {p.suffix or '(none)'!r}; "
            f"use one of {', '.join(OUT_SUFFIXES)}"
        )
    return suffix


def _recorded_source(db: Database, pool: str) -> tuple[str | None, str | None]:
    """The data file (and split) the pool table was ingested from, if recorded."""
    try:
        extra = db.meta(pool).extra
    except GradstoreError:  # the pool table was dropped since the selection
        return None, None
    source, split = extra.get("source"), extra.get("split")
    return (str(source) if source else None), (str(split) if split else None)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    raise GradstoreError(
        f"value {value!r} ({type(value).__name__}) cannot be written as JSON; "
        "export to .parquet instead"
    )


def _write_atomic(out: Path, suffix: str, rows: list[dict[str, Any]]) -> None:
    """Write ``rows`` to a temp file beside ``out``, then rename it over ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:12]}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies
    try:
        if suffix == ".jsonl":
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                for row in rows:
                    f.write(json.dumps(row, ensure_ascii=False, default=_json_default) + "\n")
        else:
            os.close(fd)
            _write_parquet(tmp, rows)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_parquet(path: Path, rows: list[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # every key of every row (from_pylist alone would keep only the first row's keys)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    try:
        table = pa.Table.from_pydict({k: [row.get(k) for row in rows] for k in columns})
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise GradstoreError(
            f"rows cannot be stored as one parquet table ({e}); export to .jsonl instead"
        ) from e
    pq.write_table(table, path)


TEXT_CHARS = 400
"""Characters of a row's text shown before it is cut (the report, ``neighbors``)."""


def row_text(fields: dict[str, Any]) -> str:
    """A row as a person reads it: chat turns, else its text field, else its fields."""
    if isinstance(fields.get("messages"), list):
        text = "\n".join(f"{m.get('role', '?')}: {m.get('content', '')}"
                         for m in fields["messages"] if isinstance(m, dict))
    else:
        text = next((str(fields[k]) for k in ("text", "prompt", "content") if k in fields),
                    json.dumps(fields, ensure_ascii=False, default=str))
    return text if len(text) <= TEXT_CHARS else text[:TEXT_CHARS] + " …"

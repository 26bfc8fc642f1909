"""What ``gradstore info`` shows: each table's provenance and size (or its damage), and the
stored selections, read from a :class:`Database`."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from gradstore.store.database import Database
from gradstore.store.integrity import DamagedTable, file_problems, reading
from gradstore.store.meta import TableMeta
from gradstore.store.selections import Selection


def info(db: Database, table: str | None = None) -> dict[str, Any]:
    """Rows, dims, checkpoints, projection, model and stored selections: of ``table``, or
    (None) of every table of the store, a damaged one described as damaged."""
    if table is not None:
        return table_summary(db, table, full=True)
    out: dict[str, Any] = {"uri": db.uri, "tables": {}, "selections": []}
    for t in db.tables():
        try:
            out["tables"][t] = table_summary(db, t)
        except DamagedTable as exc:  # the store's other tables still show
            out["tables"][t] = {"table": t, "status": "damaged", "problems": [str(exc)]}
    try:
        out["selections"] = [selection_summary(s) for s in db.selections()]
    except DamagedTable as exc:
        out["selections_problem"] = str(exc)
    return out


def table_summary(db: Database, table: str, full: bool = False) -> dict[str, Any]:
    """A table's provenance and size; ``status`` is ``damaged`` (with ``problems``) when
    data files the manifest names are missing or the wrong size."""
    ds = db.dataset(table)
    with reading(table):
        problems = file_problems(ds)
    meta = TableMeta.from_schema(ds.schema, table)
    out: dict[str, Any] = {
        "table": table,
        "kind": meta.kind,
        "rows": ds.count_rows(),
        "dim": meta.dim,
        "vector_dtype": meta.vector_dtype,
        "checkpoints": [{"name": c.name, "lr": c.lr} for c in meta.checkpoints],
        "projection": asdict(meta.projection),
        "grad_type": meta.grad_type,
        "grad_types": meta.grad_types,
        "model": meta.model,
        "status": "damaged" if problems else meta.ingest.get("status", "imported"),
        "fields": [n for n in ds.schema.names if n in set(db.data_fields(table))],
    }
    if problems:
        out["problems"] = problems + [
            f"run `gradstore verify STORE {table}`, then `gradstore restore STORE {table}` "
            "(an earlier version) or re-ingest it"]
        return out
    if full:
        subt = [s for s in db.subtasks(table) if s is not None]
        out["subtasks"] = len(set(subt))
        out["version"] = ds.version
        if meta.ingest:
            out["ingest"] = {
                "source": meta.extra.get("source"),
                "expected_rows": meta.ingest.get("expected_rows"),
                "skipped_nonfinite": len(meta.ingest.get("nonfinite_ids", [])),
                **meta.ingest.get("settings", {}),
            }
        try:
            out["selections"] = [
                selection_summary(s) for s in db.selections() if s.pool == table
            ]
        except DamagedTable as exc:
            out["selections"], out["selections_problem"] = [], str(exc)
    return out


def selection_summary(s: Selection) -> dict[str, Any]:
    return {
        "selection_id": s.selection_id,
        "created": s.created,
        "pool": s.pool,
        "method": s.method,
        "budget": s.budget,
        "target": s.target,
        "k": len(s.ids),
        "residual": s.residual,
        "query": query_of(s.params),
    }


def query_of(params: dict[str, Any]) -> dict[str, Any]:
    """The query a selection recorded (only its parts that were given)."""
    keys = ("where", "exclude", "exclude_near", "extend", "rows_kept", "max_share",
            "rows_allowed")
    return {k: params[k] for k in keys if params.get(k) not in (None, [], {})}

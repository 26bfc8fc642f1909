"""``gradstore import``: vectors computed elsewhere into a table, validated before any write.

A first call creates the table; a call with another checkpoint name adds that
checkpoint's vectors to the same rows (matched by id when ids are given, else by order).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gradstore.errors import GradstoreError
from gradstore.store.allocator import large_frees_released
from gradstore.store.database import Database
from gradstore.store.importing import (
    blockwise_max_abs,
    validate_ids,
    validate_subtasks,
    validate_vectors,
)
from gradstore.store.locks import table_lock
from gradstore.store.meta import FLOAT16_MAX, VECTOR_DTYPES, ProjectionSpec, TableMeta


@dataclass(frozen=True)
class Provenance:
    """What the caller says about the vectors (checked against an existing table)."""

    kind: str | None = None
    vector_dtype: str = "float16"
    projection: ProjectionSpec | None = None
    grad_type: str | None = None
    model: str | None = None


def import_vectors(
    db: Database,
    table: str,
    vectors: Any,
    checkpoint: str = "0",
    ids: Sequence[str] | None = None,
    subtasks: Sequence[str] | None = None,
    lr: float | None = None,
    *,
    kind: str | None = None,
    vector_dtype: str = "float16",
    projection: ProjectionSpec | dict | None = None,
    grad_type: str | None = None,
    model: str | None = None,
    tokens: Sequence[int] | None = None,
    losses: Sequence[float] | None = None,
    extra_vectors: dict[str, Any] | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Add one checkpoint's (N, d) vectors to ``table`` (created if missing), holding the
    table's write lock (``force``: take over one whose holder is gone).

    ``extra_vectors`` (adding a checkpoint to a table that stores several gradient types)
    maps each further type to that checkpoint's (N, d) vectors of the same rows.
    """
    if not table or table.startswith("_") or "/" in table:
        raise GradstoreError(f"table name {table!r} is not allowed; use letters, digits, '-', '_'")
    if vector_dtype not in VECTOR_DTYPES:
        raise GradstoreError(f"vector dtype {vector_dtype!r} is not one of float16, float32")
    if lr is not None and (not np.isfinite(lr) or lr < 0):
        raise GradstoreError(f"learning rate {lr!r} must be a finite number >= 0")
    arr = validate_vectors(vectors)
    # the blocks written are freed as the next is read
    with large_frees_released(), table_lock(db.uri, table, force):
        return _import(db, table, arr, checkpoint, ids, subtasks, lr,
                       Provenance(kind, vector_dtype, projection, grad_type, model), tokens,
                       losses, extra_vectors)


def _import(db, table, arr, checkpoint, ids, subtasks, lr, given: Provenance, tokens,
            losses, extra_vectors):
    projection, vector_dtype = given.projection, given.vector_dtype
    if isinstance(projection, dict):
        projection = ProjectionSpec(**projection)
    exists = table in db.all_tables()
    if exists:
        vector_dtype = db.meta(table).vector_dtype
    _check_range(arr, vector_dtype)
    for name, col in {"tokens": tokens, "losses": losses}.items():
        if col is not None and len(col) != arr.shape[0]:
            raise GradstoreError(f"{len(col)} {name} given for {arr.shape[0]} vector rows")
    given = Provenance(given.kind, vector_dtype, projection, given.grad_type, given.model)
    if not exists:
        return _create(db, table, arr, str(checkpoint), ids, subtasks, lr, given, tokens, losses)
    return _add(db, table, arr, str(checkpoint), ids, subtasks, lr, given, losses,
                extra_vectors or {})


def _check_range(arr: np.ndarray, vector_dtype: str) -> None:
    if vector_dtype == "float16" and (top := blockwise_max_abs(arr)) >= FLOAT16_MAX:
        raise GradstoreError(
            f"vectors reach {top:.3g}, beyond float16's range; "
            "import with --vector-dtype float32 (or rescale them)"
        )


def _create(db, table, arr, checkpoint, ids, subtasks, lr, given: Provenance, tokens, losses):
    n, dim = arr.shape
    ids_l = validate_ids(list(ids) if ids is not None else None, n)
    sub_l = validate_subtasks(list(subtasks) if subtasks is not None else None, n)
    meta = TableMeta(
        kind=given.kind or "pool", dim=dim, vector_dtype=given.vector_dtype,
        projection=given.projection or ProjectionSpec(kind="unknown", dim=dim),
        grad_type=given.grad_type, model=given.model,
    )
    db.create_from_array(table, meta, arr, ids_l, sub_l, checkpoint, lr, tokens, losses)
    return {"table": table, "rows": n, "checkpoint": checkpoint, "created": True}


def _add(db, table, arr, checkpoint, ids, subtasks, lr, given: Provenance, losses, extra_vectors):
    n = arr.shape[0]
    meta = db.meta(table)
    if meta.incomplete:
        raise GradstoreError(
            f"table {table!r} is still being ingested; finish that first (rerun the same "
            "`gradstore ingest` command)"
        )
    check_addition(table, meta, arr.shape[1], checkpoint, given)
    if ids is None:
        existing = db.num_rows(table)
        if n != existing:
            raise GradstoreError(
                f"table {table!r} has {existing} rows but {n} vectors were given; "
                "give --ids to match rows by id, or the same number of rows"
            )
        source_of_row = np.arange(n)
    else:
        source_of_row = db.match_ids(table, ids, n)
    if subtasks is not None:
        stored = db.subtasks(table)
        labels = [list(subtasks)[i] for i in source_of_row]
        if any(s is not None for s in stored) and [str(g) for g in labels] != stored:
            raise GradstoreError(
                f"subtask labels differ from those stored in {table!r}; omit --subtasks "
                "when adding a checkpoint"
            )
    extra = {t: validate_vectors(v) for t, v in extra_vectors.items()}
    for t, v in extra.items():
        if v.shape != arr.shape:
            raise GradstoreError(f"{t} vectors have shape {v.shape}, expected {arr.shape}")
    db.add_checkpoint(table, meta, arr, source_of_row, checkpoint, lr, losses, extra)
    return {"table": table, "rows": n, "checkpoint": checkpoint, "created": False}


def check_addition(table: str, meta: TableMeta, dim: int, checkpoint: str,
                   given: Provenance) -> None:
    """Refuse a checkpoint that cannot join ``table``: other dims, name taken, other
    projection, gradient type or model."""
    if dim != meta.dim:
        raise GradstoreError(
            f"vectors have {dim} dims but table {table!r} has {meta.dim}; "
            "use the same projection for every checkpoint"
        )
    if checkpoint in meta.checkpoint_names:
        raise GradstoreError(
            f"checkpoint {checkpoint!r} is already in table {table!r} "
            f"(has {meta.checkpoint_names}); use another --checkpoint name"
        )
    if given.projection is not None and given.projection != meta.projection:
        raise GradstoreError(
            f"projection {given.projection} differs from table {table!r}'s {meta.projection}"
        )
    for what, value, stored in (("gradient type", given.grad_type, meta.grad_type),
                                ("model", given.model, meta.model)):
        if value is not None and stored is not None and value != stored:
            raise GradstoreError(f"{what} {value!r} differs from table {table!r}'s {stored!r}")

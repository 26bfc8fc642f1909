"""The data rows' own fields kept as columns of their table (``ingest --fields``).

Every scalar field of the data rows (a string, number or bool in every row that has it;
its name without a '.', which Lance reads as a path into a struct) becomes a column, so
that ``select --where`` and ``--max-share`` can name it and ``report --by`` counts it from
the store. The example's own text (``messages``, ``prompt``,
``completion``, ``instruction``, ``input``, ``output``, ``text``) and its ``id`` are not
fields. The columns are added after the gradients, in one column addition matched by each
row's position in the data file, so a table ingested before gradstore kept them gets them
from the same ``gradstore ingest`` command, run again: nothing is recomputed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from gradstore.errors import GradstoreError
from gradstore.grads.data import Record, read_records
from gradstore.store.database import Database
from gradstore.store.locks import table_lock
from gradstore.store.meta import is_data_field

CONTENT_FIELDS = frozenset({"id", "messages", "prompt", "completion", "instruction", "input",
                            "output", "text"})
"""What an example is made of (its text and id): never kept as a field."""


def wanted_fields(choice: str) -> list[str] | None:
    """``--fields``: None for all, [] for none, else the names given."""
    if choice.strip() == "all":
        return None
    if choice.strip() == "none":
        return []
    return [n.strip() for n in choice.split(",") if n.strip()]


def field_arrays(records: Sequence[Record], names: list[str] | None) -> dict[str, pa.Array]:
    """One array per kept field, indexed by the row's position in the data file: every
    scalar field (``names`` None) or the fields named, each typed by its values (bool, int,
    float, else string; a row without it holds null). A name gradstore gives a column of
    its own (``is_data_field``) is not a field."""
    n = max(r.index for r in records) + 1
    found: dict[str, list[Any]] = {}
    for r in records:
        for key, value in r.fields.items():
            found.setdefault(key, [None] * n)[r.index] = value
    if names is not None:
        missing = [k for k in names if k not in found]
        if missing:
            raise GradstoreError(
                f"--fields: the data rows have no field {', '.join(map(repr, missing))}; "
                f"their fields: {', '.join(sorted(found))}")
    out = {}
    for key in (sorted(found) if names is None else names):
        if "." in key or not key.strip():  # Lance reads a dot as a path into a struct
            if names is not None:
                raise GradstoreError(
                    f"--fields {key!r}: a column name cannot hold '.' (Lance reads it as a "
                    "path into a struct); rename the field in the data")
            continue
        if key in CONTENT_FIELDS or not is_data_field(key):
            if names is not None:
                raise GradstoreError(
                    f"--fields {key!r} is the example's text, its id or a column gradstore "
                    "computes; name another field")
            continue
        values = found[key]
        typ = _scalar_type(values)
        if typ is None:
            if names is not None:
                raise GradstoreError(
                    f"--fields {key!r} holds lists or objects, not one string, number or "
                    "bool per row; name a scalar field")
            continue
        out[key] = pa.array([_as(typ, v) for v in values], typ)
    return out


def _scalar_type(values: list[Any]) -> pa.DataType | None:
    """The column type of a field's values (None: one is a list or an object)."""
    seen = [v for v in values if v is not None]
    if any(isinstance(v, dict | list) for v in seen):
        return None
    if seen and all(isinstance(v, bool) for v in seen):
        return pa.bool_()
    if seen and all(isinstance(v, int) and not isinstance(v, bool) for v in seen):
        return pa.int64()
    if seen and all(isinstance(v, int | float) and not isinstance(v, bool) for v in seen):
        return pa.float64()
    return pa.string()


def _as(typ: pa.DataType, value: Any) -> Any:
    if value is None or typ != pa.string():
        return value
    return value if isinstance(value, str) else str(value)


def data_field_arrays(data: str, choice: str, split: str | None = None,
                      encoding: str = "utf-8") -> dict[str, pa.Array]:
    """The ``--fields`` of the data file as :func:`field_arrays` (none for ``none``);
    named fields that cannot be kept are refused here, before any gradient is computed."""
    names = wanted_fields(choice)
    return {} if names == [] else field_arrays(read_records(data, split, encoding), names)


def keep_fields(db: Database, table: str, arrays: dict[str, pa.Array]) -> list[str]:
    """Add the fields of ``arrays`` the table does not hold yet as columns (under its write
    lock); returns the names added."""
    stored = set(db.column_names(table))
    arrays = {k: v for k, v in arrays.items() if k not in stored}
    if arrays:
        with table_lock(db.uri, table, False):
            db.add_fields(table, arrays)
    return list(arrays)

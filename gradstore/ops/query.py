"""A selection's query as arrays: which pool rows may be chosen.

``--where SQL`` keeps the rows a predicate over the pool's stored columns keeps (Lance
evaluates it in its scan: :meth:`gradstore.store.reader.Reader.rows_where`); ``--exclude``
removes the rows of earlier selections or of files of ids. The selectors never see either:
they get a pool made of the allowed rows only (:func:`gradstore.ops.select.pool_source`),
so a selection with a query is the selection on a pool that holds just those rows (its
centring, normalisation and fractional budgets included), and its row numbers are mapped
back to the stored pool's before the selection names its ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from gradstore.config import SelectConfig
from gradstore.errors import GradstoreError
from gradstore.store.database import Database


def allowed_rows(db: Database, pool: str, opts: SelectConfig) -> np.ndarray | None:
    """Storage positions (sorted) of the pool rows the query lets a selection choose, or
    None when it restricts nothing (no ``where``, no ``exclude``)."""
    where, exclude = opts.where, exclude_entries(opts.exclude)
    if where is None and not exclude:
        return None
    n = db.num_rows(pool)
    keep = np.ones(n, dtype=bool)
    if where is not None:
        keep[:] = False
        keep[db.rows_where(pool, where)] = True
        if not keep.any():
            raise GradstoreError(
                f"--where {where!r} keeps no row of pool {pool!r} ({n} rows); loosen it, or "
                "check the values with `gradstore info STORE`"
            )
    for entry in exclude:
        keep[db.positions_of(pool, excluded_ids(db, entry))] = False
    if not keep.any():
        raise GradstoreError(f"--where and --exclude leave no row of pool {pool!r} to choose")
    return np.flatnonzero(keep).astype(np.int64)


def exclude_entries(exclude: str | Sequence[str] | None) -> tuple[str, ...]:
    """``exclude`` as a tuple of entries (one string in Python is one entry)."""
    if exclude is None:
        return ()
    if isinstance(exclude, str):
        return (exclude,)
    return tuple(getattr(e, "selection_id", e) for e in exclude)


def excluded_ids(db: Database, entry: str) -> list[str]:
    """The ids ``entry`` names: a file of ids (one per line) when such a file exists, else a
    stored selection (its id, or ``latest``)."""
    path = Path(entry)
    if path.is_file():
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines()
                if line.strip()]
    try:
        return list(db.selection(entry).ids)
    except GradstoreError:
        raise GradstoreError(
            f"--exclude {entry!r} is neither a file of ids nor a stored selection; "
            "`gradstore info STORE` lists the selections"
        ) from None


def query_params(opts: SelectConfig, allowed: np.ndarray | None) -> dict:
    """What a selection records of its query."""
    return {"where": opts.where, "exclude": list(exclude_entries(opts.exclude)),
            "rows_allowed": None if allowed is None else int(len(allowed))}

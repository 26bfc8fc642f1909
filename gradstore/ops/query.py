"""A selection's query as arrays: which pool rows may be chosen.

``--where SQL`` keeps the rows a predicate over the pool's stored columns keeps (Lance
evaluates it in its scan: :meth:`gradstore.store.reader.Reader.rows_where`); ``--exclude``
removes the rows of earlier selections or of files of ids; ``--exclude-near TABLE[:COSINE]``
removes the copies of a table's rows (same content hash) and, with a cosine, the rows
that close to one of them in LESS's space (decontamination). The selectors never see either:
they get a pool made of the allowed rows only (:func:`gradstore.ops.select.pool_source`),
so a selection with a query is the selection on a pool that holds just those rows (its
centring, normalisation and fractional budgets included), and its row numbers are mapped
back to the stored pool's before the selection names its ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gradstore.config import SelectConfig, parse_share
from gradstore.errors import GradstoreError
from gradstore.selectors.quotas import Quota
from gradstore.selectors.scan import MAXIMUM, ScanQuery
from gradstore.selectors.stacked import StackedPool
from gradstore.store.database import Database
from gradstore.store.meta import TableMeta


def checkpoint_weights(pmeta: TableMeta, given: Sequence[float] | None) -> list[float] | None:
    """The checkpoints' weights: as given, else the stored learning rates, else equal."""
    if given is not None:
        return list(given)
    if all(lr is not None for lr in pmeta.lrs) and sum(pmeta.lrs) > 0:  # type: ignore[arg-type]
        return list(pmeta.lrs)  # type: ignore[arg-type]
    return None


def allowed_rows(db: Database, pool: str, opts: SelectConfig
                 ) -> tuple[np.ndarray | None, dict]:
    """Storage positions (sorted) of the pool rows the query lets a selection choose (None
    when it restricts nothing: no ``where``, ``exclude`` or ``exclude_near``), and the
    query as the selection records it: ``exclude`` resolved (``latest`` as the selection
    it meant, so that :func:`again_options` reruns the same query), what each
    ``exclude_near`` table dropped, and how many rows were allowed."""
    where, exclude = opts.where, exclude_entries(opts.exclude)
    near = exclude_entries(opts.exclude_near)
    record: dict = {"where": where, "exclude": [], "exclude_near": {}, "rows_allowed": None}
    if where is None and not exclude and not near:
        return None, record
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
        label, ids = excluded_ids(db, entry)
        record["exclude"].append(label)
        keep[db.positions_of(pool, ids)] = False
    for entry in near:
        table, cosine = near_entry(entry)
        copies = same_content(db, pool, table)
        close = (np.zeros(0, dtype=np.int64) if cosine is None
                 else rows_near(db, pool, table, cosine))
        dropped = np.union1d(copies, close).astype(np.int64)
        record["exclude_near"][entry] = {
            "same_content": int(len(copies)),
            "cosine": None if cosine is None else int(len(close)),
            "dropped": int(len(dropped)),
            "ids": db.ids_at(pool, dropped[:DROPPED_IDS])}
        keep[copies] = False
        keep[close] = False
    if not keep.any():
        near_dropped = "".join(f"; --exclude-near {e} dropped {d['dropped']}"
                               for e, d in record["exclude_near"].items())
        raise GradstoreError(
            f"--where, --exclude and --exclude-near leave no row of pool {pool!r} ({n} rows) "
            f"to choose{near_dropped}; loosen them (a higher cosine drops fewer rows)")
    allowed = np.flatnonzero(keep).astype(np.int64)
    record["rows_allowed"] = int(len(allowed))
    return allowed, record


def kept_rows(db: Database, pool: str, opts: SelectConfig) -> tuple[np.ndarray | None, dict]:
    """``--extend``: the storage positions of the kept selection's rows, in its order (None
    without ``extend``), and how the selection records it (the id it resolved)."""
    if opts.extend is None:
        return None, {}
    try:
        sel = db.selection(getattr(opts.extend, "selection_id", opts.extend))
    except GradstoreError:
        raise GradstoreError(
            f"--extend {opts.extend!r} is not a stored selection; `gradstore info STORE` "
            "lists the selections") from None
    if sel.pool != pool:
        raise GradstoreError(
            f"--extend {sel.selection_id}: that selection chose from pool {sel.pool!r}, not "
            f"{pool!r}; extend a selection of the same pool")
    ids = list(dict.fromkeys(sel.ids))
    found = db.positions_of(pool, ids)
    if len(found) != len(ids):
        raise GradstoreError(
            f"--extend {sel.selection_id}: {len(ids) - len(found)} of its {len(ids)} rows are "
            f"no longer in pool {pool!r}; extend a selection made on the pool as it is now")
    at = dict(zip(db.ids_at(pool, found), found.tolist(), strict=True))
    kept = np.array([at[i] for i in ids], dtype=np.int64)  # in the selection's order
    return kept, {"extend": sel.selection_id, "rows_kept": len(kept)}


def with_kept(allowed: np.ndarray | None, kept: np.ndarray | None
              ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The rows a selection's pool holds once the kept rows join the allowed ones (a kept
    row stays whatever ``where``/``exclude`` say), and the kept rows' positions in that
    pool (None without ``--extend``)."""
    if kept is None:
        return allowed, None
    if allowed is None:
        return None, kept
    allowed = np.union1d(allowed, kept).astype(np.int64)
    return allowed, np.searchsorted(allowed, kept).astype(np.int64)


@dataclass
class ShareField:
    """A ``--max-share`` field: each row of the selection's pool's group code, the values
    in code order, and the share of the budget one value may take."""

    name: str
    codes: np.ndarray
    values: list
    share: float


def share_fields(db: Database, pool: str, opts: SelectConfig, rows: np.ndarray | None
                 ) -> list[ShareField]:
    """The ``--max-share`` fields over the selection's pool (``rows``: its storage
    positions; None: every row)."""
    out = []
    for entry in opts.max_share:
        name, share = parse_share(entry)
        codes, values = db.group_codes(pool, name)
        out.append(ShareField(name, codes if rows is None else codes[rows], values, share))
    return out


def quotas_for(fields: Sequence[ShareField], k: int) -> tuple[Quota, ...]:
    """The caps at budget ``k``: ``floor(share * k)`` rows per value of each field."""
    out = []
    for f in fields:
        cap = int(np.floor(f.share * k + 1e-9))
        if cap < 1:
            raise GradstoreError(
                f"--max-share {f.name}={f.share:g} allows no row of a value at budget {k} "
                f"({f.share:g} x {k} < 1); give a larger share or budget")
        out.append(Quota(f.codes, cap))
    return tuple(out)


def shares_taken(fields: Sequence[ShareField], rows: np.ndarray) -> dict:
    """Per field, the rows of each value a selection took (what it records)."""
    return {f.name: {str(f.values[c]): int(n) for c, n in
                     zip(*np.unique(f.codes[rows], return_counts=True), strict=True)}
            for f in fields}


DROPPED_IDS = 1000
"""Most ids of the rows an ``--exclude-near`` table dropped that a selection records (the
report lists them; the count is always whole)."""


def exclude_entries(exclude: str | Sequence[str] | None) -> tuple[str, ...]:
    """``exclude`` as a tuple of entries (one string in Python is one entry)."""
    if exclude is None:
        return ()
    if isinstance(exclude, str):
        return (exclude,)
    return tuple(getattr(e, "selection_id", e) for e in exclude)


def excluded_ids(db: Database, entry: str) -> tuple[str, list[str]]:
    """The ids ``entry`` names, and how the selection records it: a file of ids (one per
    line) when such a file exists, else a stored selection (its id, or ``latest``: then
    recorded as that selection's id)."""
    path = Path(entry)
    if path.is_file():
        return entry, [line.strip() for line in path.read_text(encoding="utf-8").splitlines()
                       if line.strip()]
    try:
        sel = db.selection(entry)
    except GradstoreError:
        raise GradstoreError(
            f"--exclude {entry!r} is neither a file of ids nor a stored selection; "
            "`gradstore info STORE` lists the selections"
        ) from None
    return sel.selection_id, list(sel.ids)


def near_entry(entry: str) -> tuple[str, float | None]:
    """``TABLE[:COSINE]`` as (table, cosine or None)."""
    table, sep, tail = entry.rpartition(":")
    if not sep:
        return entry, None
    try:  # (a table's name has no ':': letters, digits, '-' and '_')
        cosine = float(tail)
    except ValueError:
        raise GradstoreError(
            f"--exclude-near {entry!r}: {tail!r} is not a cosine; give TABLE or "
            "TABLE:COSINE, e.g. test:0.9") from None
    if not -1.0 <= cosine <= 1.0:
        raise GradstoreError(f"--exclude-near {entry!r}: the cosine {cosine} is not in [-1, 1]")
    return table, cosine


def same_content(db: Database, pool: str, table: str) -> np.ndarray:
    """Storage positions of the pool rows whose content hash (token ids and loss mask, as
    ingestion computed it) equals one of ``table``'s."""
    theirs = {h for h in db.content_hashes(table) if h is not None}
    mine = db.content_hashes(pool)
    return np.array([i for i, h in enumerate(mine) if h is not None and h in theirs],
                    dtype=np.int64)


def rows_near(db: Database, pool: str, table: str, cosine: float) -> np.ndarray:
    """Storage positions of the pool rows whose cosine in LESS's space (each checkpoint's
    cosine, weighted by the learning rates) with some row of ``table`` reaches ``cosine``:
    one streamed pass over the pool, every row's best match among ``table``'s rows."""
    pmeta, tmeta = db.meta(pool), db.meta(table)
    if tmeta.checkpoint_names != pmeta.checkpoint_names or tmeta.dim != pmeta.dim:
        raise GradstoreError(
            f"--exclude-near {table!r}: its checkpoints {tmeta.checkpoint_names} (dim "
            f"{tmeta.dim}) are not the pool's {pmeta.checkpoint_names} (dim {pmeta.dim}); "
            "ingest it with the pool's checkpoints and projection")
    gtype = pmeta.grad_type if pmeta.grad_type in tmeta.grad_types else None
    X = np.hstack([db.vectors(table, name, grad_type=gtype)[1]
                   for name in pmeta.checkpoint_names])
    spool = StackedPool(db.lance_source(pool), checkpoint_weights(pmeta, None), normalize=True)
    R = spool.target_rows(X).T  # (D, rows of table)
    ((rows, scores),) = spool.scan(R, [ScanQuery(slice(0, R.shape[1]), spool.num_rows,
                                                 reduce=MAXIMUM)])
    return np.sort(np.asarray(rows)[np.asarray(scores) >= cosine]).astype(np.int64)


AGAIN_FIELDS = {"target_mode": "target_mode", "normalize": "normalize", "m": "m",
                "max_iter": "max_iter", "min_gain": "min_gain",
                "target_tolerance": "tolerance", "seed": "seed",
                "checkpoint_weights": "checkpoint_weights", "partitions": "partitions",
                "where": "where", "exclude": "exclude", "extend": "extend",
                "max_share": "max_share"}
"""Recorded parameter -> the ``SelectConfig`` option that set it (``--again``)."""


def again_options(params: dict) -> dict:
    """The options that reproduce a stored selection's run (its pool, target, budget and
    method are the selection's own fields); a selection made before a parameter was
    recorded runs with that option's default. (Lists become the options' tuples in
    ``SelectConfig.from_options``.)"""
    opts = {opt: params[key] for key, opt in AGAIN_FIELDS.items()
            if params.get(key) is not None}
    if params.get("exclude_near"):  # recorded per entry, with what each dropped
        opts["exclude_near"] = list(params["exclude_near"])
    return opts

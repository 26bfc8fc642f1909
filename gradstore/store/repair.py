"""Checking a table, and repairing what can be repaired without recomputing.

(``info`` runs only the cheap check, :func:`gradstore.store.integrity.file_problems`.)

* :func:`verify`: every vector read back against its checksum (and for finite values),
  duplicate ids, and columns without checksums (tables written before them).
* :func:`drop_damaged` removes the rows that failed (whole fragments whose files are
  missing) and marks an ingested table incomplete, so the same ``ingest`` recomputes just
  those rows; :func:`drop_duplicates` keeps the first row of each id (two writers that
  collided); :func:`add_checksums` gives an older table its checksum columns.
* :func:`restore` makes an earlier version of a table (or of the selection log) the current
  one, as Lance keeps versions until they are cleaned up.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import lance
import numpy as np
import pyarrow as pa

from gradstore.errors import GradstoreError
from gradstore.store.database import Database
from gradstore.store.integrity import (
    ID_CHECKSUM,
    ROW_CHECKSUM,
    DamagedTable,
    bad_rows,
    file_problems,
    first_line,
    read_failure,
    row_checksums,
    row_index_checksums,
    text_checksums,
    unreadable,
)
from gradstore.store.locks import table_lock
from gradstore.store.meta import (
    INGEST_KEY,
    checksum_of,
    fixed_list_to_numpy,
    norm_of,
    unchecked_columns,
)


@dataclass
class TableReport:
    """What :func:`verify` found in one table."""

    table: str
    rows: int = 0
    problems: list[str] = field(default_factory=list)
    damaged_rows: list[int] = field(default_factory=list)
    """Storage positions (the order of every read) of the rows that failed."""
    damaged_rowids: list[int] = field(default_factory=list)
    """Their Lance row ids (what ``drop_damaged`` deletes)."""
    lost_fragments: list[int] = field(default_factory=list)
    """Fragments whose files are missing or unreadable."""
    duplicate_ids: list[str] = field(default_factory=list)
    unchecked_columns: list[str] = field(default_factory=list)
    """Vector columns without checksums (written by an earlier version)."""
    actions: list[str] = field(default_factory=list)
    """Repairs done (by :func:`repair`)."""

    @property
    def status(self) -> str:
        if self.problems or self.damaged_rows or self.lost_fragments or self.duplicate_ids:
            return "damaged"
        return "no checksums" if self.unchecked_columns else "ok"

    def lines(self) -> list[str]:
        out = [f"{self.table}: {self.status}, {self.rows} rows"]
        out += [f"  repaired: {a}" for a in self.actions]
        out += [f"  {p}" for p in self.problems]
        if self.damaged_rows:
            out.append(f"  {len(self.damaged_rows)} rows fail their checksum or are not finite "
                       f"(storage rows {self.damaged_rows[:8]}); --drop-damaged removes them")
        if self.lost_fragments:
            out.append(f"  fragments {self.lost_fragments} cannot be read; --drop-damaged "
                       "removes them (or restore an earlier version)")
        if self.duplicate_ids:
            out.append(f"  {len(self.duplicate_ids)} ids stored more than once "
                       f"(e.g. {self.duplicate_ids[:3]}); --drop-duplicates keeps the first")
        if self.unchecked_columns:
            out.append(f"  {len(self.unchecked_columns)} columns have no checksums "
                       "(written before gradstore kept them); --add-checksums adds them")
        return out

    def to_dict(self) -> dict:
        return {"table": self.table, "status": self.status, "rows": self.rows,
                "problems": self.problems, "damaged_rows": self.damaged_rows,
                "lost_fragments": self.lost_fragments, "duplicate_ids": self.duplicate_ids,
                "unchecked_columns": self.unchecked_columns, "actions": self.actions}


def verify(db: Database, table: str) -> TableReport:
    """Read every vector of ``table`` back and check it (see the module docstring)."""
    try:
        ds = db.dataset(table)
    except DamagedTable as exc:
        return TableReport(table, problems=[str(exc)])
    return verify_dataset(ds, table)


def verify_dataset(ds: lance.LanceDataset, table: str) -> TableReport:
    """:func:`verify` of one version of a table."""
    report = TableReport(table)
    try:
        report.problems = file_problems(ds)
        fragments = ds.get_fragments()
    except BaseException as exc:  # noqa: BLE001 - Lance panics are BaseExceptions
        if not read_failure(exc):
            raise
        report.problems.append(str(unreadable(table, exc)))
        return report
    if "id" not in ds.schema.names:  # a bookkeeping table (the selection log): read it all
        try:
            report.rows = ds.to_table().num_rows
        except BaseException as exc:  # noqa: BLE001 - Lance panics are BaseExceptions
            if not read_failure(exc):
                raise
            report.problems.append(str(unreadable(table, exc)))
        return report
    vec_cols = [f.name for f in ds.schema if f.name.startswith("vec_")]
    report.unchecked_columns = unchecked_columns(ds.schema)
    ids: list[str] = []
    for frag in fragments:
        try:
            _check_fragment(ds, frag, vec_cols, report, ids)
        except BaseException as exc:  # noqa: BLE001 - Lance panics are BaseExceptions
            if not read_failure(exc):
                raise
            report.lost_fragments.append(frag.fragment_id)
            report.problems.append(f"fragment {frag.fragment_id} cannot be read "
                                   f"({first_line(exc)})")
    seen: set[str] = set()
    report.duplicate_ids = sorted({i for i in ids if i in seen or seen.add(i)})
    report.rows = len(ids)
    return report


def _check_fragment(ds, frag, vec_cols: list[str], report: TableReport, ids: list[str]) -> None:
    names = ds.schema.names
    crc_cols = [checksum_of(c) for c in vec_cols if checksum_of(c) in names]
    id_cols = ["subtask", ID_CHECKSUM] if ID_CHECKSUM in names else []
    id_cols += [ROW_CHECKSUM] if ROW_CHECKSUM in names else []
    cols = ["id", "row", *id_cols, *vec_cols, *crc_cols, *[norm_of(c) for c in vec_cols]]
    for batch in frag.to_batches(columns=cols, batch_size=1024, with_row_id=True):
        batch_ids = batch.column("id").to_pylist()
        start = len(ids)
        ids.extend(batch_ids)
        rows = batch.column("row").to_numpy()
        bad = np.zeros(batch.num_rows, dtype=bool)
        if ID_CHECKSUM in names:
            sums = batch.column(ID_CHECKSUM).to_numpy(zero_copy_only=False)
            bad |= text_checksums(batch_ids, batch.column("subtask").to_pylist()) != sums
        if ROW_CHECKSUM in names:
            bad |= (row_index_checksums(batch_ids, rows)
                    != batch.column(ROW_CHECKSUM).to_numpy(zero_copy_only=False))
        dim = batch.schema.field(vec_cols[0]).type.list_size if vec_cols else 0
        for c in vec_cols:
            arr = fixed_list_to_numpy(batch.column(c), dim)
            sums = (batch.column(checksum_of(c)).to_numpy(zero_copy_only=False)
                    if checksum_of(c) in crc_cols else None)
            norms = batch.column(norm_of(c)).to_numpy(zero_copy_only=False)
            bad[bad_rows(arr, sums, norms)] = True
        report.damaged_rows.extend(start + int(i) for i in np.flatnonzero(bad))
        report.damaged_rowids.extend(int(r) for r in batch.column("_rowid").to_numpy()[bad])


def drop_damaged(db: Database, table: str, report: TableReport) -> int:
    """Remove the rows ``report`` found damaged (and unreadable fragments); an ingested
    table is marked incomplete so that its ingest recomputes them. Returns rows removed."""
    ds = db.dataset(table)
    before = ds.count_rows()
    if report.lost_fragments:
        lance.LanceDataset.commit(
            ds.uri, lance.LanceOperation.Delete([], report.lost_fragments, "lost fragments"),
            read_version=ds.version)
        ds = db.dataset(table)
    if report.damaged_rowids:
        ds.delete("_rowid IN (" + ", ".join(str(r) for r in sorted(set(report.damaged_rowids)))
                  + ")")
    _mark_incomplete(db, table)
    return before - db.dataset(table).count_rows()  # (recording the new version)


def drop_duplicates(db: Database, table: str) -> int:
    """Keep the first stored row of every id; returns rows removed."""
    ds = db.dataset(table)
    tbl = ds.to_table(columns=["id"], with_row_id=True)
    seen: set[str] = set()
    extra = [int(r) for i, r in zip(tbl.column("id").to_pylist(),
                                    tbl.column("_rowid").to_pylist(), strict=True)
             if i in seen or seen.add(i)]
    if extra:
        ds.delete("_rowid IN (" + ", ".join(map(str, extra)) + ")")
        db.committed(table)
    return len(extra)


def add_checksums(db: Database, table: str) -> list[str]:
    """Checksum columns for every column that lacks one (:func:`unchecked_columns`; vector
    values are checked finite first); returns the columns given checksums."""
    ds = db.dataset(table)
    missing = unchecked_columns(ds.schema)
    if not missing:
        return []
    vec = [c for c in missing if c.startswith("vec_")]
    dim = ds.schema.field(vec[0]).type.list_size if vec else 0
    crc = {"id": ID_CHECKSUM, "row": ROW_CHECKSUM}
    out_schema = pa.schema([pa.field(crc.get(c) or checksum_of(c), pa.int64())
                            for c in missing])

    def udf(batch: pa.RecordBatch) -> pa.RecordBatch:
        cols = []
        for c in vec:
            arr = fixed_list_to_numpy(batch.column(c), dim)
            norms = batch.column(norm_of(c)).to_numpy(zero_copy_only=False)
            if len(bad_rows(arr, None, norms)):
                raise GradstoreError(f"table {table!r}: column {c} holds values that are not "
                                     "finite or norms that are not theirs; drop those rows "
                                     "first (--drop-damaged)")
            cols.append(pa.array(row_checksums(arr, norms)))
        ids = batch.column("id").to_pylist()
        if "id" in missing:
            cols.append(pa.array(text_checksums(ids, batch.column("subtask").to_pylist())))
        if "row" in missing:
            cols.append(pa.array(row_index_checksums(ids, batch.column("row").to_numpy())))
        return pa.RecordBatch.from_arrays(cols, schema=out_schema)

    ds.add_columns(lance.batch_udf(output_schema=out_schema)(udf),
                   read_columns=["id", "subtask", "row"] + vec + [norm_of(c) for c in vec])
    db.committed(table)
    return missing


def repair(db: Database, table: str, *, drop_damaged_rows: bool = False,
           drop_duplicate_ids: bool = False, checksums: bool = False,
           force: bool = False) -> TableReport:
    """Verify ``table``; apply the repairs asked for (holding its write lock), then verify it
    again. The report returned is the last one; ``actions`` says what was done."""
    report = verify(db, table)
    wanted = ((drop_damaged_rows and (report.damaged_rows or report.lost_fragments))
              or (drop_duplicate_ids and report.duplicate_ids)
              or (checksums and report.unchecked_columns))
    if not wanted:
        return report
    actions = []
    with table_lock(db.uri, table, force):
        if drop_damaged_rows and (report.damaged_rows or report.lost_fragments):
            n = drop_damaged(db, table, report)
            actions.append(f"dropped {n} damaged rows (rerun the table's ingest to recompute "
                           "them)")
        if drop_duplicate_ids and report.duplicate_ids:
            actions.append(f"dropped {drop_duplicates(db, table)} duplicate rows")
        if checksums and report.unchecked_columns:
            actions.append(f"added checksums to {len(add_checksums(db, table))} columns")
    final = verify(db, table)
    final.actions = actions
    return final


def versions(db: Database, table: str) -> list[dict]:
    """The table's versions still on disk, newest first: number, time, rows, and whether the
    data files each names are all present (``files_ok``: a cheap check, no values read)."""
    ds = db.dataset(table, check_version=False)
    out = []
    for v in sorted(ds.versions(), key=lambda v: -v["version"]):
        try:
            old = ds.checkout_version(v["version"])
            ok, rows = not file_problems(old), old.count_rows()
        except BaseException as exc:  # noqa: BLE001 - Lance panics are BaseExceptions
            if not read_failure(exc):
                raise
            ok, rows = False, None
        out.append({"version": v["version"], "timestamp": str(v["timestamp"]), "rows": rows,
                    "files_ok": ok, "current": v["version"] == ds.version})
    return out


def restore(db: Database, table: str, version: int, force: bool = False) -> TableReport:
    """Make ``version`` of ``table`` the current one (a new version; nothing is deleted),
    holding the table's write lock; returns :func:`verify` of the result."""
    ds = db.dataset(table, check_version=False)
    known = [v["version"] for v in ds.versions()]
    if version not in known:
        raise GradstoreError(f"table {table!r} has no version {version} on disk (versions: "
                             f"{known[-10:]}); pick one of those")
    with table_lock(db.uri, table, force):
        try:
            old = ds.checkout_version(version)
            problems = file_problems(old)
        except BaseException as exc:  # noqa: BLE001 - Lance panics are BaseExceptions
            if not read_failure(exc):
                raise
            raise GradstoreError(f"version {version} of table {table!r} cannot be opened "
                                 f"({unreadable(table, exc)}); pick another version") from None
        if problems:
            raise GradstoreError(f"version {version} of table {table!r} is damaged too "
                                 f"({problems[0]}); pick another version")
        old.restore()
        now = db.dataset(table, check_version=False)
        db.ledger.record(table, now.version, now.count_rows(), now.schema)
    return verify(db, table)


def _mark_incomplete(db: Database, table: str) -> None:
    raw = (db.dataset(table).schema.metadata or {}).get(INGEST_KEY.encode())
    if not raw:
        return  # an imported table: import the rows again
    state = json.loads(raw)
    if state.get("status") == "complete":
        db.update_ingest_state(table, dict(state, status="running"))


__all__ = ["TableReport", "add_checksums", "drop_damaged", "drop_duplicates", "repair",
           "restore", "verify", "verify_dataset", "versions"]

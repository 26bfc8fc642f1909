"""The store's catalog: which tables it holds, each opened at its checked current version
(or the version a block pinned), their provenance, and the table-level changes that write
no rows: compaction, pruning old versions, dropping, hidden bookkeeping tables."""

from __future__ import annotations

import datetime
import shutil
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import lance
import pyarrow as pa

from gradstore.errors import GradstoreError, GradstoreNote
from gradstore.store import tables as folder
from gradstore.store.evaluations import EVALUATIONS_TABLE
from gradstore.store.integrity import VersionLedger, reading
from gradstore.store.meta import TableMeta, unchecked_columns
from gradstore.store.selections import SELECTIONS_TABLE

_NOTED_UNCHECKED: set[tuple[str, str]] = set()  # (store, table): noted once per process
CHECKED_LOGS = (SELECTIONS_TABLE, EVALUATIONS_TABLE)  # hidden tables the ledger checks too


class Catalog:
    """The tables of the store at ``uri`` (a local path, or any URI Lance supports), opened
    checked against the version ledger (:class:`VersionLedger`), and the changes to a
    table's versions that write no rows."""

    def __init__(self, uri: str | Path, create: bool = True) -> None:
        self.uri = str(uri)
        local = folder.is_local(self.uri)
        if local and not Path(self.uri).exists():
            if not create:
                raise GradstoreError(
                    f"store {self.uri!r} does not exist; create it with `gradstore import` "
                    "or `gradstore ingest`, or check the path"
                )
            Path(self.uri).mkdir(parents=True, exist_ok=True)  # two writers may race here
        if local and not Path(self.uri).is_dir():
            raise GradstoreError(f"store {self.uri!r} is a file, not a directory")
        self.ledger = VersionLedger(self.uri)
        self.pins: dict[str, lance.LanceDataset] = {}

    # ---------------------------------------------------------------- listing
    def all_tables(self) -> list[str]:
        return [n for n in folder.table_names(self.uri) if not self.uncommitted(n)]

    def tables(self) -> list[str]:
        """Names of the gradient tables (pool and target tables)."""
        return [t for t in self.all_tables() if not t.startswith("_")]

    def uncommitted(self, table: str) -> bool:
        """Whether ``table``'s folder holds only what a first write left when it was killed
        before its commit: no manifest, and no version ever recorded (a table whose
        manifests were deleted after a commit is damage, not this). Such a folder is no
        table: it is not listed, and creating the table clears it."""
        if not folder.is_local(self.uri):
            return False
        versions = Path(self.uri) / f"{table}.lance" / "_versions"
        if versions.is_dir() and any(versions.glob("*.manifest")):
            return False
        return self.ledger.seen(table) is None

    def clear_uncommitted(self, table: str) -> None:
        """Remove what an interrupted first write of ``table`` left (the caller writes the
        table: it holds its lock)."""
        path = Path(self.uri) / f"{table}.lance"
        if folder.is_local(self.uri) and path.is_dir() and self.uncommitted(table):
            shutil.rmtree(path)

    # ---------------------------------------------------------------- opening
    @contextmanager
    def pinned(self, tables: Iterable[str]) -> Iterator[dict[str, int]]:
        """Read each of ``tables`` at one version for the whole block (the current one,
        checked, opened once): a commit by another process in between (an ingest, a
        ``verify --drop-*``) cannot change what the block reads, so positions and ids always
        describe the same rows. Yields the versions, by table."""
        before = dict(self.pins)
        try:
            for t in dict.fromkeys(tables):
                if t not in self.pins:
                    self.pins[t] = self.dataset(t)
            yield {t: self.pins[t].version for t in dict.fromkeys(tables)}
        finally:
            self.pins = before

    def dataset(self, table: str, check_version: bool = True) -> lance.LanceDataset:
        """The table's current version (``check_version``: refuse one older than the newest
        committed, see :class:`VersionLedger`; verify and restore look at it anyway), or
        the version :meth:`pinned` holds."""
        if table in self.pins:
            return self.pins[table]
        if table not in self.all_tables():
            have = ", ".join(self.tables()) or "none"
            raise GradstoreError(
                f"table {table!r} is not in store {self.uri!r} (tables: {have}); "
                "check the name or ingest it first"
            )
        check = check_version and (not table.startswith("_") or table in CHECKED_LOGS)
        seen = self.ledger.seen(table) if check else None  # before opening: see VersionLedger
        with reading(table):
            ds = lance.dataset(folder.table_uri(self.uri, table))
            if check:
                self.ledger.check(table, seen, ds.version, ds.count_rows(), ds.schema)
        if not table.startswith("_"):
            self._note_unchecked(table, ds.schema)
        return ds

    def _note_unchecked(self, table: str, schema: pa.Schema) -> None:
        """Warn once per process and table when some of its columns have no checksums (a
        table written before gradstore kept them): damage there goes unnoticed."""
        missing = unchecked_columns(schema)
        key = (self.uri, table)
        if not missing or key in _NOTED_UNCHECKED:
            return
        _NOTED_UNCHECKED.add(key)
        warnings.warn(
            f"table {table!r} has {len(missing)} column(s) without checksums ("
            f"{', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}; written before "
            "gradstore kept them), so damage to them cannot be detected; add them with "
            f"`gradstore verify STORE {table} --add-checksums`", GradstoreNote, stacklevel=2)

    def committed(self, table: str) -> None:
        """Record the version a write just committed (see :class:`VersionLedger`)."""
        self.dataset(table)

    def meta(self, table: str) -> TableMeta:
        """The provenance stored with a table."""
        return TableMeta.from_schema(self.dataset(table).schema, table)

    def num_rows(self, table: str) -> int:
        return self.dataset(table).count_rows()

    def plain_table(self, name: str, schema: pa.Schema | None = None) -> folder.LogTable:
        """A hidden bookkeeping table (a staging record, a log), opened, or created empty
        with ``schema`` when given and missing (``add``, ``to_arrow``)."""
        if name not in self.all_tables() and schema is not None:
            self.clear_uncommitted(name)
            folder.create(self.uri, name, schema.empty_table())
        return folder.LogTable(self.uri, name)

    # ---------------------------------------------------------------- versions
    def compact(self, table: str) -> None:
        """Merge the fragments of many small appends; versions before the last one
        uncompacted are deleted, that one is kept (``restore`` falls back to it if the
        compacted files are ever damaged; until the next compaction the table's data is on
        disk twice)."""
        ds = self.dataset(table)
        if len(ds.get_fragments()) > 1:
            before = ds.version
            ds.optimize.compact_files(target_rows_per_fragment=1 << 20)
            self.committed(table)
            self.prune_versions(table, keep_from=before)

    def prune_versions(self, table: str, keep_from: int, delete_unverified: bool = False) -> None:
        """Delete the table's versions older than ``keep_from`` (and, with
        ``delete_unverified``, files no version names: a killed writer's)."""
        ds = self.dataset(table)
        keep = sum(v["version"] >= keep_from for v in ds.versions())
        ds.cleanup_old_versions(older_than=datetime.timedelta(0), retain_versions=max(1, keep),
                                delete_unverified=delete_unverified)

    def drop_table(self, table: str) -> None:
        self.dataset(table)  # a clear error when missing
        folder.drop(self.uri, table)
        self.ledger.forget(table)

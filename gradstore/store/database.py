"""Persistence: Lance tables of per-example gradient vectors, their metadata, and the
selection log. Nothing here knows how vectors are computed or chosen."""

from __future__ import annotations

import datetime
import json
import shutil
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lance
import numpy as np
import pyarrow as pa

from gradstore.errors import GradstoreError, GradstoreNote
from gradstore.store import evaluations as evals
from gradstore.store import tables as folder
from gradstore.store.importing import (
    validate_ids,
    validate_vectors,
)
from gradstore.store.integrity import (
    ID_CHECKSUM,
    ROW_CHECKSUM,
    DamagedTable,
    VersionLedger,
    damage,
    file_problems,
    reading,
    row_checksums,
    row_index_checksums,
    text_checksums,
)
from gradstore.store.lance_source import LanceSource
from gradstore.store.locks import table_lock
from gradstore.store.meta import (
    INGEST_KEY,
    TableMeta,
    base_fields,
    checkpoint_fields,
    checksum_of,
    loss_column,
    norm_of,
    type_fields,
    unchecked_columns,
    vector_column,
)
from gradstore.store.selections import SELECTIONS_SCHEMA, SELECTIONS_TABLE, Selection

_NOTED_UNCHECKED: set[tuple[str, str]] = set()  # (store, table): noted once per process
LOG_BATCH = 64  # selection-log records checked at a time
LOG_READ_AHEAD = 8 << 20  # bytes Lance may read ahead of that check
WRITE_BATCH_ROWS = 1000  # ~16 MB pages at 8192 dims scan fastest (docs/storage.md)


@dataclass
class RowBlock:
    """Complete rows to write: ids and per-row fields, one (n, d) array per checkpoint."""

    ids: Sequence[str]
    rows: Sequence[int]
    vectors: list[np.ndarray]
    subtasks: Sequence[str | None] | None = None
    tokens: Sequence[int] | None = None
    content_hashes: Sequence[str] | None = None
    losses: list[np.ndarray] | None = None
    extra_vectors: dict[str, list[np.ndarray]] | None = None
    """Further gradient types of the same rows: type -> one (n, d) array per checkpoint."""

    @classmethod
    def concat(cls, blocks: list[RowBlock]) -> RowBlock:
        """The rows of several blocks (same checkpoints and types), in order."""
        T = len(blocks[0].vectors)
        extra = blocks[0].extra_vectors
        return cls(
            ids=[i for b in blocks for i in b.ids],
            rows=[r for b in blocks for r in b.rows],
            vectors=[np.concatenate([b.vectors[t] for b in blocks]) for t in range(T)],
            subtasks=[s for b in blocks for s in b.subtasks],
            tokens=[s for b in blocks for s in b.tokens],
            content_hashes=[s for b in blocks for s in b.content_hashes],
            losses=[np.concatenate([b.losses[t] for b in blocks]) for t in range(T)],
            extra_vectors={
                gt: [np.concatenate([b.extra_vectors[gt][t] for b in blocks])
                     for t in range(T)]
                for gt in extra
            } if extra else None,
        )


def _stored(arr: np.ndarray, dtype: str) -> np.ndarray:
    """The values exactly as the table will hold them."""
    return np.ascontiguousarray(arr, dtype=np.float16 if dtype == "float16" else np.float32)


def _vector_batch(stored: np.ndarray, dim: int) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(stored.reshape(-1)), dim)


def _norms(stored: np.ndarray) -> np.ndarray:
    """Row norms of the stored values (so norms and vectors always agree)."""
    return np.linalg.norm(stored.astype(np.float32), axis=1).astype(np.float32)


class Database:
    """The store's persistence: Lance tables of per-example gradient vectors, their
    provenance, and the selection log, at a local path (or any URI Lance supports).

    Everything here reads or writes Lance; what the rows mean is decided above it
    (ingestion, selection, import and export are operations over a Database)."""

    def __init__(self, uri: str | Path, create: bool = True) -> None:
        self.uri = str(uri)
        local = "://" not in self.uri
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

    # ---------------------------------------------------------------- tables
    def all_tables(self) -> list[str]:
        return [n for n in folder.table_names(self.uri) if not self.uncommitted(n)]

    def uncommitted(self, table: str) -> bool:
        """Whether ``table``'s folder holds only what a first write left when it was killed
        before its commit: no manifest, and no version ever recorded (a table whose
        manifests were deleted after a commit is damage, not this). Such a folder is no
        table: it is not listed, and creating the table clears it."""
        if "://" in self.uri:
            return False
        versions = Path(self.uri) / f"{table}.lance" / "_versions"
        if versions.is_dir() and any(versions.glob("*.manifest")):
            return False
        return self.ledger.seen(table) is None

    def clear_uncommitted(self, table: str) -> None:
        """Remove what an interrupted first write of ``table`` left (the caller writes the
        table: it holds its lock)."""
        folder = Path(self.uri) / f"{table}.lance"
        if "://" not in self.uri and folder.is_dir() and self.uncommitted(table):
            shutil.rmtree(folder)

    def tables(self) -> list[str]:
        """Names of the gradient tables (pool and target tables)."""
        return [t for t in self.all_tables() if not t.startswith("_")]

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
        check = check_version and (not table.startswith("_")
                                   or table in (SELECTIONS_TABLE, evals.EVALUATIONS_TABLE))
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

    def ids(self, table: str) -> list[str]:
        """Example ids in storage order, the order of every vector read."""
        return self.ids_and_subtasks(table)[0]

    def subtasks(self, table: str) -> list[str | None]:
        return self.ids_and_subtasks(table)[1]

    def ids_and_subtasks(self, table: str) -> tuple[list[str], list[str | None]]:
        """Both, checked against their checksums (tables written before them: unchecked)."""
        return self._read_ids(table, None)

    def _read_ids(self, table: str, rows: np.ndarray | None
                  ) -> tuple[list[str], list[str | None]]:
        """Ids and subtasks of every row (``rows`` None) or of the sorted ``rows``."""
        ds = self.dataset(table)
        checked = ID_CHECKSUM in ds.schema.names
        cols = ["id", "subtask"] + ([ID_CHECKSUM] if checked else [])
        with reading(table):
            tbl = ds.to_table(columns=cols) if rows is None else ds.take(rows, columns=cols)
        ids, subtasks = tbl.column("id").to_pylist(), tbl.column("subtask").to_pylist()
        if checked:
            bad = np.flatnonzero(text_checksums(ids, subtasks)
                                 != tbl.column(ID_CHECKSUM).to_numpy(zero_copy_only=False))
            if len(bad):
                raise damage(table, "id/subtask", bad if rows is None else rows[bad])
        return ids, subtasks

    def ids_at(self, table: str, rows: Sequence[int] | np.ndarray) -> list[str]:
        """The ids at storage positions ``rows`` (in that order), checked like
        :meth:`ids_and_subtasks`, reading only those rows: a selection names its k rows
        without holding every id of a large pool in memory."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return []
        order = np.unique(rows)
        ids, _ = self._read_ids(table, order)
        return [ids[i] for i in np.searchsorted(order, rows)]

    def info(self, table: str | None = None) -> dict[str, Any]:
        """Rows, dims, checkpoints, projection, model and stored selections."""
        if table is None:
            out: dict[str, Any] = {"uri": self.uri, "tables": {}, "selections": []}
            for t in self.tables():
                try:
                    out["tables"][t] = self.table_summary(t)
                except DamagedTable as exc:  # the store's other tables still show
                    out["tables"][t] = {"table": t, "status": "damaged", "problems": [str(exc)]}
            try:
                out["selections"] = [_selection_summary(s) for s in self.selections()]
            except DamagedTable as exc:
                out["selections_problem"] = str(exc)
            return out
        return self.table_summary(table, full=True)

    def table_summary(self, table: str, full: bool = False) -> dict[str, Any]:
        """A table's provenance and size; ``status`` is ``damaged`` (with ``problems``) when
        data files the manifest names are missing or the wrong size."""
        ds = self.dataset(table)
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
        }
        if problems:
            out["problems"] = problems + [
                f"run `gradstore verify STORE {table}`, then `gradstore restore STORE {table}` "
                "(an earlier version) or re-ingest it"]
            return out
        if full:
            subt = [s for s in self.subtasks(table) if s is not None]
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
                    _selection_summary(s) for s in self.selections() if s.pool == table
                ]
            except DamagedTable as exc:
                out["selections"], out["selections_problem"] = [], str(exc)
        return out

    def create_from_array(
        self, table: str, meta: TableMeta, arr: np.ndarray, ids: list[str],
        subtasks: list[str] | None, checkpoint: str, lr: float | None,
        tokens: Sequence[int] | None, losses: Sequence[float] | None,
    ) -> None:
        """A new table holding one checkpoint's (N, d) vectors, written in pages."""
        n = arr.shape[0]

        def blocks():
            for s in range(0, n, WRITE_BATCH_ROWS):
                e = min(n, s + WRITE_BATCH_ROWS)
                yield RowBlock(
                    ids=ids[s:e],
                    rows=np.arange(s, e, dtype=np.int64),
                    subtasks=subtasks[s:e] if subtasks else None,
                    tokens=tokens[s:e] if tokens is not None else None,
                    vectors=[arr[s:e]],
                    losses=[losses[s:e]] if losses is not None else None,
                )

        self.create_table(table, meta, [(checkpoint, lr)], blocks())

    @staticmethod
    def schema(meta: TableMeta, checkpoints: Sequence[tuple[str, float | None]]) -> pa.Schema:
        fields = base_fields()
        for i, (name, lr) in enumerate(checkpoints):
            fields += checkpoint_fields(i, name, lr, meta.dim, meta.vector_dtype,
                                        meta.extra_types)
        return pa.schema(fields, metadata=meta.to_schema_metadata())

    @staticmethod
    def record_batch(schema: pa.Schema, meta: TableMeta, block: RowBlock) -> pa.RecordBatch:
        """``block``'s rows as a batch of ``schema`` (its columns in the schema's order,
        checksums where the schema has them: a table written before them has none)."""
        n = len(block.ids)

        def opt(values, typ):
            return pa.array(values if values is not None else [None] * n, typ)

        extra = block.extra_vectors or {}
        if sorted(extra) != sorted(meta.extra_types):
            raise GradstoreError(
                f"rows carry gradient types {sorted(extra)} beside {meta.grad_type!r}, the table "
                f"stores {meta.extra_types}"
            )
        cols: dict[str, pa.Array] = {
            "id": pa.array(block.ids, pa.string()),
            "row": pa.array(np.asarray(block.rows, dtype=np.int64)),
            "subtask": opt(block.subtasks, pa.string()),
            "tokens": opt(block.tokens, pa.int32()),
            "content_hash": opt(block.content_hashes, pa.string()),
            ID_CHECKSUM: pa.array(text_checksums(
                list(block.ids), list(block.subtasks or [None] * n))),
        }
        if ROW_CHECKSUM in schema.names:  # tables written before it: none
            cols[ROW_CHECKSUM] = pa.array(row_index_checksums(list(block.ids), block.rows))
        for i, vec in enumerate(block.vectors):
            cols[loss_column(i)] = opt(None if block.losses is None else block.losses[i],
                                       pa.float32())
            vectors = {vector_column(i): vec} | {vector_column(i, t): extra[t][i]
                                                  for t in meta.extra_types}
            for name, values in vectors.items():
                stored = _stored(values, meta.vector_dtype)
                cols[name] = _vector_batch(stored, meta.dim)
                norms = _norms(stored)
                cols[norm_of(name)] = pa.array(norms)
                cols[checksum_of(name)] = pa.array(row_checksums(stored, norms))
        return pa.RecordBatch.from_arrays([cols[f.name] for f in schema], schema=schema)

    def create_table(
        self, table: str, meta: TableMeta, checkpoints: Sequence[tuple[str, float | None]],
        blocks: Iterable[RowBlock] = (),
    ) -> None:
        """Create ``table`` with one vector column per (checkpoint name, lr), and ``blocks``."""
        schema = self.schema(meta, checkpoints)
        batches = (self.record_batch(schema, meta, b) for b in blocks)
        reader = pa.RecordBatchReader.from_batches(schema, batches)
        with warnings.catch_warnings():
            # 2.0 files scanned fastest for float16 vectors here (docs/storage.md)
            warnings.simplefilter("ignore", DeprecationWarning)
            self.clear_uncommitted(table)
            folder.create(self.uri, table, reader, storage_version="2.0")
        self.committed(table)

    def append_rows(self, table: str, block: RowBlock) -> None:
        """Append complete rows (every checkpoint's vectors) in one atomic commit."""
        ds = self.dataset(table)
        meta = TableMeta.from_schema(ds.schema, table)
        if len(block.vectors) != len(meta.checkpoints):
            raise GradstoreError(
                f"{len(block.vectors)} checkpoints given for table {table!r}, which has "
                f"{len(meta.checkpoints)}"
            )
        schema = ds.schema
        batch = self.record_batch(schema, meta, block)
        folder.append(self.uri, table, pa.Table.from_batches([batch], schema=schema))
        self.committed(table)

    def update_ingest_state(self, table: str, state: dict[str, Any]) -> None:
        """Replace the ingestion record kept in ``table``'s schema metadata."""
        self.dataset(table).update_schema_metadata({INGEST_KEY: json.dumps(state)})
        self.committed(table)

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

    def add_checkpoint(
        self, table, meta, arr, source_of_row, checkpoint, lr, losses, extra=None
    ) -> None:
        """Add checkpoint columns (every stored gradient type: ``extra`` maps each further
        type to its (N, d) array) to all rows in one column addition."""
        index = len(meta.checkpoints)
        extra = extra or {}
        if sorted(extra) != sorted(meta.extra_types):
            given = " and ".join([meta.grad_type or "?", *extra])
            raise GradstoreError(
                f"table {table!r} stores {' and '.join(meta.grad_types)} gradients for every "
                f"checkpoint; a new checkpoint needs all of them (given: {given})"
            )
        fields = checkpoint_fields(index, checkpoint, lr, meta.dim, meta.vector_dtype,
                                   meta.extra_types)
        values = {vector_column(index): arr, loss_column(index): losses}
        values |= {vector_column(index, t): extra[t] for t in meta.extra_types}
        self.add_columns(table, meta, fields, values, source_of_row)

    def add_grad_type(
        self, table: str, grad_type: str, vectors: dict[str, np.ndarray], ids: Sequence[str]
    ) -> None:
        """Store a further gradient type for every checkpoint of ``table``.

        ``vectors`` maps each checkpoint name to its (N, d) array, rows matched by ``ids``
        (every stored id exactly once). Validated first, then added in one column addition.
        """
        meta = self.meta(table)
        if grad_type in meta.grad_types:
            raise GradstoreError(f"table {table!r} already stores {grad_type} gradients")
        if sorted(vectors) != sorted(meta.checkpoint_names):
            raise GradstoreError(
                f"{grad_type} vectors given for checkpoints {sorted(vectors)}, table {table!r} "
                f"has {meta.checkpoint_names}"
            )
        arrays = {name: validate_vectors(v) for name, v in vectors.items()}
        for name, a in arrays.items():
            if a.shape[1] != meta.dim:
                raise GradstoreError(
                    f"{grad_type} vectors of checkpoint {name!r} have {a.shape[1]} dims, table "
                    f"{table!r} has {meta.dim}"
                )
        source_of_row = self.match_ids(table, ids, len(next(iter(arrays.values()))))
        fields, values = [], {}
        for i, c in enumerate(meta.checkpoints):
            fields += type_fields(i, c.name, c.lr, meta.dim, meta.vector_dtype, grad_type)
            values[vector_column(i, grad_type)] = arrays[c.name]
        self.add_columns(table, meta, fields, values, source_of_row)

    def match_ids(self, table: str, ids: Sequence[str], n: int) -> np.ndarray:
        """For each stored row (storage order), the position of its id in ``ids``."""
        existing = self.ids(table)
        ids_l = validate_ids(list(ids), n)
        pos = {x: i for i, x in enumerate(ids_l)}
        missing = [x for x in existing if x not in pos]
        extra = len(ids_l) - (len(existing) - len(missing))
        if missing or extra:
            raise GradstoreError(
                f"ids do not match table {table!r}: {len(missing)} stored ids missing "
                f"(e.g. {missing[:3]}), {extra} new ids; "
                "a checkpoint must cover the same examples"
            )
        return np.array([pos[x] for x in existing], dtype=np.int64)

    def add_columns(
        self, table: str, meta: TableMeta, fields: list[pa.Field],
        values: dict[str, np.ndarray | None], source_of_row: np.ndarray,
    ) -> None:
        """Add ``fields`` to every row in one column addition: each vector field takes its
        array's row ``source_of_row[i]`` (its norm field follows from it), each loss field
        its array's (or nulls)."""
        ds = self.dataset(table)
        # storage position of each `row` value (rows may have gaps where ingestion skipped)
        stored_rows = self.row_indices(table, ds)
        order = np.argsort(stored_rows)
        sorted_rows = stored_rows[order]
        out_schema = pa.schema(fields)

        def udf(batch: pa.RecordBatch) -> pa.RecordBatch:
            rows = batch.column("row").to_numpy()
            src = source_of_row[order[np.searchsorted(sorted_rows, rows)]]
            cols, last = [], None
            for f in fields:
                if f.name in values and pa.types.is_fixed_size_list(f.type):
                    last = _stored(values[f.name][src], meta.vector_dtype)
                    cols.append(_vector_batch(last, meta.dim))
                elif f.name.startswith("norm"):
                    cols.append(pa.array(_norms(last)))
                elif f.name.startswith("crc"):
                    cols.append(pa.array(row_checksums(last, _norms(last))))
                else:
                    v = values.get(f.name)
                    cols.append(pa.array(
                        np.asarray(v, dtype=np.float32)[src] if v is not None
                        else [None] * len(src), pa.float32()))
            return pa.RecordBatch.from_arrays(cols, schema=out_schema)

        ds.add_columns(lance.batch_udf(output_schema=out_schema)(udf), read_columns=["row"])
        self.committed(table)

    def row_indices(self, table: str, ds: lance.LanceDataset) -> np.ndarray:
        """The ``row`` column (each example's position in its data file), checked against
        its checksum where the table has one."""
        checked = ROW_CHECKSUM in ds.schema.names
        with reading(table):
            tbl = ds.to_table(columns=["id", "row"] + ([ROW_CHECKSUM] if checked else []))
        rows = tbl.column("row").to_numpy()
        if checked:
            bad = np.flatnonzero(row_index_checksums(tbl.column("id").to_pylist(), rows)
                                 != tbl.column(ROW_CHECKSUM).to_numpy(zero_copy_only=False))
            if len(bad):
                raise damage(table, "row", bad)
        return rows

    # ---------------------------------------------------------------- reading
    def vectors(
        self, table: str, checkpoint: str | None = None, grad_type: str | None = None
    ) -> tuple[list[str], np.ndarray]:
        """``(ids, X)``: one checkpoint's vectors, or all side by side (None), float32.

        ``grad_type`` picks one of the gradient types the table stores (default: its
        primary type, ``info``'s ``grad_type``).
        """
        ds = self.dataset(table)
        meta = TableMeta.from_schema(ds.schema, table)
        cols = self.columns(table, meta, checkpoint, grad_type)
        X = LanceSource(ds, cols, meta.dim, name=table).load().float().numpy()
        return self.ids(table), X

    def losses(self, table: str, checkpoint: str) -> np.ndarray:
        """Each example's loss at ``checkpoint`` (storage order; NaN where unknown)."""
        ds = self.dataset(table)
        meta = TableMeta.from_schema(ds.schema, table)
        self.columns(table, meta, checkpoint)  # a clear error when the checkpoint is missing
        col = loss_column(meta.checkpoint_names.index(str(checkpoint)))
        values = ds.to_table(columns=[col]).column(col).to_numpy(zero_copy_only=False)
        return np.asarray(values, dtype=np.float32)

    def columns(
        self, table: str, meta: TableMeta, checkpoint: str | None, grad_type: str | None = None
    ) -> list[str]:
        if grad_type is not None and grad_type not in meta.grad_types:
            raise GradstoreError(
                f"table {table!r} holds {' and '.join(meta.grad_types) or 'untyped'} gradients, "
                f"not {grad_type}; ingest it with --grad-type {grad_type} to add them"
            )
        cols = meta.columns(grad_type)
        if checkpoint is None:
            return cols
        for c, col in zip(meta.checkpoints, cols, strict=True):
            if c.name == str(checkpoint):
                return [col]
        raise GradstoreError(
            f"checkpoint {checkpoint!r} is not in table {table!r} (has {meta.checkpoint_names})"
        )

    def lance_source(self, table: str, grad_type: str | None = None) -> LanceSource:
        """Every checkpoint's vectors of ``table`` (of ``grad_type``, default its primary
        one), side by side, streamed from Lance (the gradient-source interface)."""
        ds = self.dataset(table)
        meta = TableMeta.from_schema(ds.schema, table)
        if not meta.checkpoints:
            raise GradstoreError(f"table {table!r} has no vectors")
        return LanceSource(ds, self.columns(table, meta, None, grad_type), meta.dim, name=table)

    def plain_table(self, name: str, schema: pa.Schema | None = None):
        """A hidden bookkeeping table (a staging record, a log), opened, or created empty
        with ``schema`` when given and missing (``add``, ``to_arrow``)."""
        if name not in self.all_tables() and schema is not None:
            self.clear_uncommitted(name)
            folder.create(self.uri, name, schema.empty_table())
        return folder.LogTable(self.uri, name)

    # ---------------------------------------------------------------- selections
    def selections_table(self):
        """The selection log, opened (checked: readable, not older than committed), or None
        before the first selection is saved."""
        if SELECTIONS_TABLE not in self.all_tables():
            return None
        self.dataset(SELECTIONS_TABLE)
        return folder.LogTable(self.uri, SELECTIONS_TABLE)

    def selections(self) -> list[Selection]:
        """Every stored selection (reading the whole log: a damaged log raises
        :class:`DamagedTable`, which is how ``select`` checks it before computing)."""
        tbl = self.selections_table()
        if tbl is None:
            return []
        with reading(SELECTIONS_TABLE):
            return [Selection.from_record(r) for r in tbl.to_arrow().to_pylist()]

    def check_selection_log(self) -> int:
        """Read the selection log ``LOG_BATCH`` records at a time, each checked against its
        checksum (:class:`DamagedTable` on damage) and none kept: how ``select`` refuses a
        damaged log before computing, without holding the whole log (tens of MB once it
        holds many large selections). Returns the number of records."""
        if SELECTIONS_TABLE not in self.all_tables():
            return 0
        count = 0
        ds = self.dataset(SELECTIONS_TABLE)
        with reading(SELECTIONS_TABLE):
            for batch in ds.to_batches(batch_size=LOG_BATCH, io_buffer_size=LOG_READ_AHEAD,
                                       batch_readahead=1, fragment_readahead=1):
                for rec in batch.to_pylist():
                    Selection.from_record(rec)
                    count += 1
        return count

    def selection(self, selection_id: str) -> Selection:
        """The stored selection ``selection_id`` (``latest``: the most recent one)."""
        if selection_id == "latest":
            sels = sorted(self.selections(), key=lambda s: s.created)
            if not sels:
                raise GradstoreError(f"store {self.uri!r} holds no selections; run select first")
            return sels[-1]
        tbl = self.selections_table()
        if tbl is not None:
            sid = selection_id.replace("'", "")
            with reading(SELECTIONS_TABLE):
                rows = tbl.to_lance().to_table(filter=f"selection_id = '{sid}'").to_pylist()
            if rows:
                return Selection.from_record(rows[0])
        raise GradstoreError(
            f"selection {selection_id!r} is not in store {self.uri!r}; "
            "`gradstore info STORE` lists the stored selections"
        )

    def save_selections(self, sels: list[Selection]) -> None:
        """Append to the selection log; selects that finish at once take turns (the log's
        lock is waited for, not refused), so the log is created once and never raced."""
        self.append_to_log(SELECTIONS_TABLE, SELECTIONS_SCHEMA, [s.to_record() for s in sels],
                           self.check_selection_log)

    def append_to_log(self, table: str, schema: pa.Schema, rows: list[dict[str, Any]],
                      read_back) -> None:
        """Append ``rows`` to a log table (created if missing) under its lock, waited for:
        writers take turns. ``read_back()`` reads the log first: nothing is appended to a
        log that cannot be read back."""
        with table_lock(self.uri, table, wait=True):
            if table in self.all_tables():
                read_back()
            else:
                self.clear_uncommitted(table)
                folder.create(self.uri, table, schema.empty_table())
            folder.append(self.uri, table, pa.Table.from_pylist(rows, schema=schema))
            self.committed(table)

    def save_evaluation(self, evaluation_id: str, selection_id: str, created: str,
                        result: dict[str, Any]) -> None:
        """Append an evaluation to the log (writers take turns, as for selections)."""
        self.append_to_log(evals.EVALUATIONS_TABLE, evals.EVALUATIONS_SCHEMA,
                           [evals.to_record(evaluation_id, selection_id, created, result)],
                           self.evaluations)

    def evaluations(self, selection_id: str | None = None) -> list[dict[str, Any]]:
        """Stored evaluations (of one selection), oldest first; a damaged record raises."""
        table = evals.EVALUATIONS_TABLE
        if table not in self.all_tables():
            return []
        ds = self.dataset(table)
        with reading(table):
            rows = ds.to_table().to_pylist()
        out = [evals.from_record(r) for r in rows
               if selection_id is None or r["selection_id"] == selection_id]
        return sorted(out, key=lambda r: r["created"])


def _selection_summary(s: Selection) -> dict[str, Any]:
    return {
        "selection_id": s.selection_id,
        "created": s.created,
        "pool": s.pool,
        "method": s.method,
        "budget": s.budget,
        "target": s.target,
        "k": len(s.ids),
        "residual": s.residual,
    }



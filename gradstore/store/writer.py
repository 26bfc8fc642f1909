"""Writing gradient tables: creating one, appending complete rows, adding columns (a
checkpoint, a further gradient type) to every row, and the ingestion record in the schema.
Every vector is written with its norm and checksums, computed from the values as stored."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import lance
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gradstore.errors import GradstoreError
from gradstore.store import tables as folder
from gradstore.store.catalog import Catalog
from gradstore.store.importing import validate_ids, validate_vectors
from gradstore.store.integrity import (
    ID_CHECKSUM,
    ROW_CHECKSUM,
    row_checksums,
    row_index_checksums,
    text_checksums,
)
from gradstore.store.meta import (
    INGEST_KEY,
    TableMeta,
    base_fields,
    checkpoint_fields,
    checksum_of,
    loss_column,
    norm_of,
    type_fields,
    vector_column,
)
from gradstore.store.reader import Reader

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


def table_schema(meta: TableMeta, checkpoints: Sequence[tuple[str, float | None]]) -> pa.Schema:
    """A gradient table's schema: one vector column per (checkpoint name, lr), and every
    further type ``meta`` stores, with ``meta`` as its provenance."""
    fields = base_fields()
    for i, (name, lr) in enumerate(checkpoints):
        fields += checkpoint_fields(i, name, lr, meta.dim, meta.vector_dtype, meta.extra_types)
    return pa.schema(fields, metadata=meta.to_schema_metadata())


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
    for f in schema:  # the data's kept fields (added after ingestion): none for these rows
        if f.name not in cols:
            cols[f.name] = pa.nulls(n, f.type)
    return pa.RecordBatch.from_arrays([cols[f.name] for f in schema], schema=schema)


class Writer:
    """Writes the tables of ``catalog`` (reading ids and ``row`` through ``reader`` where a
    write must match the rows already stored); each commit is recorded in the ledger."""

    def __init__(self, catalog: Catalog, reader: Reader) -> None:
        self.catalog, self.reader = catalog, reader

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

    def create_table(
        self, table: str, meta: TableMeta, checkpoints: Sequence[tuple[str, float | None]],
        blocks: Iterable[RowBlock] = (),
    ) -> None:
        """Create ``table`` with one vector column per (checkpoint name, lr), and ``blocks``."""
        schema = table_schema(meta, checkpoints)
        batches = (record_batch(schema, meta, b) for b in blocks)
        reader = pa.RecordBatchReader.from_batches(schema, batches)
        with warnings.catch_warnings():
            # 2.0 files scanned fastest for float16 vectors here (docs/storage.md)
            warnings.simplefilter("ignore", DeprecationWarning)
            self.catalog.clear_uncommitted(table)
            folder.create(self.catalog.uri, table, reader, storage_version="2.0")
        self.catalog.committed(table)

    def append_rows(self, table: str, block: RowBlock) -> None:
        """Append complete rows (every checkpoint's vectors) in one atomic commit."""
        ds = self.catalog.dataset(table)
        meta = TableMeta.from_schema(ds.schema, table)
        if len(block.vectors) != len(meta.checkpoints):
            raise GradstoreError(
                f"{len(block.vectors)} checkpoints given for table {table!r}, which has "
                f"{len(meta.checkpoints)}"
            )
        schema = ds.schema
        batch = record_batch(schema, meta, block)
        folder.append(self.catalog.uri, table, pa.Table.from_batches([batch], schema=schema))
        self.catalog.committed(table)

    def update_ingest_state(self, table: str, state: dict[str, Any]) -> None:
        """Replace the ingestion record kept in ``table``'s schema metadata."""
        self.catalog.dataset(table).update_schema_metadata({INGEST_KEY: json.dumps(state)})
        self.catalog.committed(table)

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
        meta = self.catalog.meta(table)
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
        """For each stored row (storage order), the position of its id in ``ids`` (the ``n``
        given ids, each stored id exactly once)."""
        existing = pa.array(self.reader.ids(table), pa.string())
        given = pa.array(validate_ids(list(ids), n), pa.string())
        pos = pc.index_in(existing, value_set=given)
        missing = pos.null_count
        extra = len(given) - (len(existing) - missing)
        if missing or extra:
            some = existing.filter(pos.is_null())[:3].to_pylist()
            raise GradstoreError(
                f"ids do not match table {table!r}: {missing} stored ids missing "
                f"(e.g. {some}), {extra} new ids; "
                "a checkpoint must cover the same examples"
            )
        return pos.to_numpy().astype(np.int64)

    def add_fields(self, table: str, values: dict[str, pa.Array]) -> None:
        """Add the data's fields as columns in one column addition: ``values[name][r]`` is
        the value of the data file's row ``r`` (rows matched by the ``row`` column)."""
        ds = self.catalog.dataset(table)
        out_schema = pa.schema([pa.field(name, v.type) for name, v in values.items()])

        def udf(batch: pa.RecordBatch) -> pa.RecordBatch:
            rows = pa.array(batch.column("row").to_numpy())
            return pa.RecordBatch.from_arrays([v.take(rows) for v in values.values()],
                                              schema=out_schema)

        ds.add_columns(lance.batch_udf(output_schema=out_schema)(udf), read_columns=["row"])
        self.catalog.committed(table)

    def add_columns(
        self, table: str, meta: TableMeta, fields: list[pa.Field],
        values: dict[str, np.ndarray | None], source_of_row: np.ndarray,
    ) -> None:
        """Add ``fields`` to every row in one column addition: each vector field takes its
        array's row ``source_of_row[i]`` (its norm field follows from it), each loss field
        its array's (or nulls)."""
        ds = self.catalog.dataset(table)
        # storage position of each `row` value (rows may have gaps where ingestion skipped)
        stored_rows = self.reader.row_indices(table, ds)
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
        self.catalog.committed(table)

"""Reading a gradient table: its ids and subtasks, its ``row`` column (each checked
against its checksums), its vectors (whole, or streamed as a gradient source) and losses."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import lance
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gradstore.errors import GradstoreError
from gradstore.store.catalog import Catalog
from gradstore.store.integrity import (
    ID_CHECKSUM,
    ROW_CHECKSUM,
    damage,
    first_line,
    reading,
    row_index_checksums,
    text_checksums,
)
from gradstore.store.meta import (
    UNQUERIED_PREFIXES,
    VECTOR_PREFIXES,
    TableMeta,
    is_data_field,
    loss_column,
)

if TYPE_CHECKING:
    from gradstore.store.lance_source import LanceSource


class Reader:
    """Reads the tables of ``catalog``, each at the version the catalog opens (checked, or
    the one a ``pinned`` block holds)."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    # ---------------------------------------------------------------- ids
    def ids(self, table: str) -> list[str]:
        """Example ids in storage order, the order of every vector read."""
        return self.ids_and_subtasks(table)[0]

    def subtasks(self, table: str) -> list[str | None]:
        return self.ids_and_subtasks(table)[1]

    def ids_and_subtasks(self, table: str) -> tuple[list[str], list[str | None]]:
        """Both, checked against their checksums (tables written before them: unchecked)."""
        return self.read_ids(table, None)

    def read_ids(self, table: str, rows: np.ndarray | None
                 ) -> tuple[list[str], list[str | None]]:
        """Ids and subtasks of every row (``rows`` None) or of the sorted ``rows``."""
        ds = self.catalog.dataset(table)
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
        ids, _ = self.read_ids(table, order)
        return [ids[i] for i in np.searchsorted(order, rows)]

    # ---------------------------------------------------------------- queries
    def rows_where(self, table: str, where: str) -> np.ndarray:
        """Storage positions (sorted) of the rows the SQL predicate ``where`` keeps: Lance
        evaluates it inside its scan, reading only the columns it names (and ``row``), and
        the rows' addresses give their positions."""
        ds = self.catalog.dataset(table)
        names = query_columns(ds.schema)
        check_predicate(where, table, ds.schema.names, names)
        try:  # planning parses the predicate and resolves its columns, reading no data
            scanner = ds.scanner(columns=["row"], filter=where, with_row_address=True)
            scanner.explain_plan()
        except Exception as exc:  # noqa: BLE001 - Lance's parse errors have several types
            why = first_line(exc).split(". Valid fields are")[0]  # (vectors and checksums too)
            raise GradstoreError(
                f"--where {where!r} is not a predicate over table {table!r} ({why}); its "
                f"columns: {', '.join(names)}"
            ) from None
        with reading(table):
            found = scanner.to_table().column("_rowaddr")
        return positions_at(ds, found.to_numpy()) if len(found) else np.zeros(0, np.int64)

    def group_codes(self, table: str, column: str) -> tuple[np.ndarray, list]:
        """Each row's group under the scalar ``column`` (storage order; one code per
        distinct value, a missing value its own) and the values in code order."""
        ds = self.catalog.dataset(table)
        names = scalar_columns(ds.schema)
        if column not in names:
            raise GradstoreError(
                f"--max-share: table {table!r} has no column {column!r}; its columns: "
                f"{', '.join(names)}")
        with reading(table):
            values = ds.to_table(columns=[column]).column(column)
        encoded = pc.dictionary_encode(values.combine_chunks(), null_encoding="encode")
        return (encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64),
                encoded.dictionary.to_pylist())

    def column_names(self, table: str) -> list[str]:
        return list(self.catalog.dataset(table).schema.names)

    def data_fields(self, table: str) -> list[str]:
        """The scalar columns kept from the data rows' own fields."""
        return [n for n in scalar_columns(self.catalog.dataset(table).schema)
                if is_data_field(n)]

    def field_rows(self, table: str, ids: Sequence[str]) -> dict[str, dict]:
        """The stored rows whose id is one of ``ids``: each its id and kept fields (a field
        the row lacked, null in the store, left out), by id."""
        columns = ["id", *self.data_fields(table)]
        with reading(table):
            rows = self.catalog.dataset(table).take(self.positions_of(table, ids),
                                                    columns=columns).to_pylist()
        return {r["id"]: {k: v for k, v in r.items() if v is not None} for r in rows}

    def content_hashes(self, table: str) -> list[str | None]:
        """Each row's content hash (storage order; None where the table has none: imported
        vectors, or a table ingested before gradstore kept them)."""
        ds = self.catalog.dataset(table)
        if "content_hash" not in ds.schema.names:
            return [None] * ds.count_rows()
        with reading(table):
            return ds.to_table(columns=["content_hash"]).column("content_hash").to_pylist()

    def positions_of(self, table: str, ids: Sequence[str] | pa.ChunkedArray) -> np.ndarray:
        """Storage positions (sorted) of the stored rows whose id is one of ``ids`` (ids
        the table does not hold are left out)."""
        stored = pa.array(self.ids(table), pa.string())
        given = ids if isinstance(ids, pa.ChunkedArray) else pa.array(list(ids), pa.string())
        hit = pc.is_in(stored, value_set=given.cast(pa.string()))
        return np.flatnonzero(hit.to_numpy(zero_copy_only=False)).astype(np.int64)

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

    # ---------------------------------------------------------------- vectors
    def vectors(
        self, table: str, checkpoint: str | None = None, grad_type: str | None = None
    ) -> tuple[list[str], np.ndarray]:
        """``(ids, X)``: one checkpoint's vectors, or all side by side (None), float32.

        ``grad_type`` picks one of the gradient types the table stores (default: its
        primary type, ``info``'s ``grad_type``).
        """
        ds = self.catalog.dataset(table)
        meta = TableMeta.from_schema(ds.schema, table)
        cols = self.columns(table, meta, checkpoint, grad_type)
        from gradstore.store.lance_source import LanceSource  # (torch: imported when read)

        X = LanceSource(ds, cols, meta.dim, name=table).load().float().numpy()
        return self.ids(table), X

    def losses(self, table: str, checkpoint: str) -> np.ndarray:
        """Each example's loss at ``checkpoint`` (storage order; NaN where unknown)."""
        ds = self.catalog.dataset(table)
        meta = TableMeta.from_schema(ds.schema, table)
        self.columns(table, meta, checkpoint)  # a clear error when the checkpoint is missing
        col = loss_column(meta.checkpoint_names.index(str(checkpoint)))
        values = ds.to_table(columns=[col]).column(col).to_numpy(zero_copy_only=False)
        return np.asarray(values, dtype=np.float32)

    @staticmethod
    def columns(
        table: str, meta: TableMeta, checkpoint: str | None, grad_type: str | None = None
    ) -> list[str]:
        """The vector columns of ``checkpoint`` (None: every checkpoint's) and ``grad_type``
        (None: the primary type), or an error naming what the table has."""
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
        ds = self.catalog.dataset(table)
        meta = TableMeta.from_schema(ds.schema, table)
        if not meta.checkpoints:
            raise GradstoreError(f"table {table!r} has no vectors")
        from gradstore.store.lance_source import LanceSource

        return LanceSource(ds, self.columns(table, meta, None, grad_type), meta.dim, name=table)


def query_columns(schema: pa.Schema) -> list[str]:
    """The columns a ``--where`` may name: every stored column but the vectors and the
    checksums (the per-checkpoint norms and losses among them)."""
    return [f.name for f in schema if not f.name.startswith(UNQUERIED_PREFIXES)
            and not pa.types.is_list(f.type) and not pa.types.is_fixed_size_list(f.type)]


SQL_STRING = re.compile(r"'(?:[^']|'')*'")
SQL_QUOTED_NAME = re.compile(r'"((?:[^"]|"")*)"')
SQL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_predicate(where: str, table: str, columns: Sequence[str],
                    allowed: Sequence[str]) -> None:
    """Refuse a ``--where`` that is more than one SQL expression (Lance's parser would read
    the first statement before a ``;`` and drop the rest) or that names a stored column no
    query may (``UNQUERIED_PREFIXES``): one line, before Lance plans it."""
    bare = SQL_STRING.sub("''", where)  # string literals may hold anything
    if ";" in bare:
        raise GradstoreError(
            f"--where {where!r} is more than one SQL expression (a ';' outside quotes); "
            "give one predicate, e.g. \"tokens < 1024 AND subtask = 'math'\"")
    names = {m.group(1).replace('""', '"') for m in SQL_QUOTED_NAME.finditer(bare)}
    names |= set(SQL_NAME.findall(SQL_QUOTED_NAME.sub(" ", bare)))
    hidden = sorted((names & set(columns)) - set(allowed))
    if hidden:
        raise GradstoreError(
            f"--where {where!r} names {', '.join(hidden)} of table {table!r}: a query reads "
            f"the stored scalar columns, not the vectors or their checksums; its columns: "
            f"{', '.join(allowed)}")


def scalar_columns(schema: pa.Schema) -> list[str]:
    """The columns a query may name but the per-checkpoint norms (what ``--max-share`` and
    the kept data fields draw on)."""
    return [n for n in query_columns(schema) if not n.startswith(VECTOR_PREFIXES)]


def positions_at(ds: lance.LanceDataset, addresses: np.ndarray) -> np.ndarray:
    """Storage positions (sorted) of the rows at Lance row ``addresses`` (fragment id in
    the high 32 bits, the row's offset in its fragment's file in the low): a fragment's
    first position is the live rows of the fragments before it. A fragment with deleted
    rows shifts its offsets: its live rows' addresses, read in order, place them."""
    addresses = np.asarray(addresses, dtype=np.uint64)
    fids = (addresses >> np.uint64(32)).astype(np.int64)
    offsets = (addresses & np.uint64(0xFFFFFFFF)).astype(np.int64)
    out, start = [], 0
    for frag in ds.get_fragments():
        mine = fids == frag.fragment_id
        if mine.any():
            if frag.metadata.deletion_file is not None:
                out.append(_live_positions(frag, offsets[mine]) + start)
            else:
                out.append(offsets[mine] + start)
        start += frag.count_rows()
    return np.sort(np.concatenate(out)) if out else np.zeros(0, np.int64)


def _live_positions(frag, offsets: np.ndarray) -> np.ndarray:
    """Positions among a fragment's live rows of the rows at physical ``offsets``: the
    fragment's live rows' addresses, read in order, give each its place."""
    live = frag.scanner(columns=["row"], with_row_address=True).to_table().column("_rowaddr")
    physical = (live.to_numpy().astype(np.uint64) & np.uint64(0xFFFFFFFF)).astype(np.int64)
    return np.searchsorted(physical, offsets).astype(np.int64)

"""Persistence: Lance tables of per-example gradient vectors, their metadata, and the
selection and evaluation logs. Nothing here knows how vectors are computed or chosen.

:class:`Database` is the one object the operations hold; each of its jobs lives in its own
module: the catalog of tables and their versions (``catalog.py``, which it extends), reading
(``reader.py``), writing (``writer.py``) and the append-only logs (``log.py``)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gradstore.errors import GradstoreError
from gradstore.store import evaluations as evals
from gradstore.store.catalog import Catalog
from gradstore.store.log import AppendLog
from gradstore.store.meta import TableMeta
from gradstore.store.reader import Reader
from gradstore.store.selections import SELECTIONS_SCHEMA, SELECTIONS_TABLE, Selection
from gradstore.store.writer import RowBlock, Writer, record_batch

if TYPE_CHECKING:
    from gradstore.store.lance_source import LanceSource

__all__ = ["Database", "RowBlock"]


class Database(Catalog):
    """The store's persistence: Lance tables of per-example gradient vectors, their
    provenance, and the selection and evaluation logs, at a local path (or any URI Lance
    supports).

    Everything here reads or writes Lance; what the rows mean is decided above it
    (ingestion, selection, import and export are operations over a Database)."""

    def __init__(self, uri: str | Path, create: bool = True) -> None:
        super().__init__(uri, create)
        self.reader = Reader(self)
        self.writer = Writer(self, self.reader)
        self.selection_log = AppendLog(self, SELECTIONS_TABLE, SELECTIONS_SCHEMA,
                                       Selection.from_record)
        self.evaluation_log = AppendLog(self, evals.EVALUATIONS_TABLE,
                                        evals.EVALUATIONS_SCHEMA, evals.from_record)

    # ---------------------------------------------------------------- reading
    def ids(self, table: str) -> list[str]:
        """Example ids in storage order, the order of every vector read."""
        return self.reader.ids(table)

    def subtasks(self, table: str) -> list[str | None]:
        return self.reader.subtasks(table)

    def rows_where(self, table: str, where: str) -> np.ndarray:
        return self.reader.rows_where(table, where)

    def content_hashes(self, table: str) -> list[str | None]:
        return self.reader.content_hashes(table)

    def group_codes(self, table: str, column: str) -> tuple[np.ndarray, list]:
        return self.reader.group_codes(table, column)

    def column_names(self, table: str) -> list[str]:
        return self.reader.column_names(table)

    def data_fields(self, table: str) -> list[str]:
        """The columns kept from the data rows' own fields (``ingest --fields``)."""
        return self.reader.data_fields(table)

    def field_rows(self, table: str, ids: Sequence[str]) -> dict[str, dict]:
        """The stored rows of ``ids``: each its id and kept fields, by id."""
        return self.reader.field_rows(table, ids)

    def add_fields(self, table: str, values: dict[str, pa.Array]) -> None:
        self.writer.add_fields(table, values)

    def positions_of(self, table: str, ids: Sequence[str]) -> np.ndarray:
        return self.reader.positions_of(table, ids)

    def ids_at(self, table: str, rows: Sequence[int] | np.ndarray) -> list[str]:
        """The ids at storage positions ``rows``, reading only those rows."""
        return self.reader.ids_at(table, rows)

    def row_indices(self, table: str, ds) -> np.ndarray:
        return self.reader.row_indices(table, ds)

    def vectors(self, table: str, checkpoint: str | None = None,
                grad_type: str | None = None) -> tuple[list[str], np.ndarray]:
        """``(ids, X)``: one checkpoint's vectors, or all side by side (None), float32."""
        return self.reader.vectors(table, checkpoint, grad_type)

    def losses(self, table: str, checkpoint: str) -> np.ndarray:
        return self.reader.losses(table, checkpoint)

    def lance_source(self, table: str, grad_type: str | None = None) -> LanceSource:
        return self.reader.lance_source(table, grad_type)

    # ---------------------------------------------------------------- writing
    record_batch = staticmethod(record_batch)

    def create_from_array(self, table: str, meta: TableMeta, arr: np.ndarray, ids: list[str],
                          subtasks: list[str] | None, checkpoint: str, lr: float | None,
                          tokens: Sequence[int] | None, losses: Sequence[float] | None) -> None:
        self.writer.create_from_array(table, meta, arr, ids, subtasks, checkpoint, lr, tokens,
                                      losses)

    def create_table(self, table: str, meta: TableMeta,
                     checkpoints: Sequence[tuple[str, float | None]],
                     blocks: Iterable[RowBlock] = ()) -> None:
        self.writer.create_table(table, meta, checkpoints, blocks)

    def append_rows(self, table: str, block: RowBlock) -> None:
        self.writer.append_rows(table, block)

    def update_ingest_state(self, table: str, state: dict[str, Any]) -> None:
        self.writer.update_ingest_state(table, state)

    def add_checkpoint(self, table, meta, arr, source_of_row, checkpoint, lr, losses,
                       extra=None) -> None:
        self.writer.add_checkpoint(table, meta, arr, source_of_row, checkpoint, lr, losses,
                                   extra)

    def add_grad_type(self, table: str, grad_type: str, vectors: dict[str, np.ndarray],
                      ids: Sequence[str]) -> None:
        self.writer.add_grad_type(table, grad_type, vectors, ids)

    def match_ids(self, table: str, ids: Sequence[str], n: int) -> np.ndarray:
        return self.writer.match_ids(table, ids, n)

    def add_columns(self, table: str, meta: TableMeta, fields: list[pa.Field],
                    values: dict[str, np.ndarray | None], source_of_row: np.ndarray) -> None:
        self.writer.add_columns(table, meta, fields, values, source_of_row)

    # ---------------------------------------------------------------- logs
    def selections(self) -> list[Selection]:
        """Every stored selection (reading the whole log: a damaged log raises
        :class:`DamagedTable`)."""
        return self.selection_log.records()

    def check_selection_log(self) -> int:
        """How ``select`` refuses a damaged log before computing (:meth:`AppendLog.check`)."""
        return self.selection_log.check()

    def selection(self, selection_id: str) -> Selection:
        """The stored selection ``selection_id`` (``latest``: the most recent one)."""
        if selection_id == "latest":
            sel = self.selection_log.latest()
            if sel is None:
                raise GradstoreError(f"store {self.uri!r} holds no selections; run select first")
            return sel
        sel = self.selection_log.first("selection_id", selection_id)
        if sel is None:
            raise GradstoreError(
                f"selection {selection_id!r} is not in store {self.uri!r}; "
                "`gradstore info STORE` lists the stored selections"
            )
        return sel

    def save_selections(self, sels: list[Selection]) -> None:
        """Append to the selection log; selects that finish at once take turns."""
        self.selection_log.append([s.to_record() for s in sels])

    def save_evaluation(self, evaluation_id: str, selection_id: str, created: str,
                        result: dict[str, Any]) -> None:
        """Append an evaluation to the log (writers take turns, as for selections)."""
        self.evaluation_log.append(
            [evals.to_record(evaluation_id, selection_id, created, result)])

    def evaluations(self, selection_id: str | None = None) -> list[dict[str, Any]]:
        """Stored evaluations (of one selection), oldest first; a damaged record raises."""
        where = None if selection_id is None else pc.field("selection_id") == selection_id
        return sorted(self.evaluation_log.records(where), key=lambda r: r["created"])

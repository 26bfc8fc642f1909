"""An append-only log in a hidden table: records written in turns under the table's lock,
each decoded (and so checked against its checksum) as it is read. The selection log and the
evaluation log are two of them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

import lance
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gradstore.store import tables as folder
from gradstore.store.catalog import Catalog
from gradstore.store.integrity import reading
from gradstore.store.locks import table_lock

Record = TypeVar("Record")
BATCH = 64  # records checked at a time
READ_AHEAD = 8 << 20  # bytes Lance may read ahead of that check


class AppendLog(Generic[Record]):
    """The log ``name`` of ``catalog``'s store, of ``schema``: ``decode`` turns a stored
    record (a dict) into what the log holds, raising :class:`DamagedTable` when the record
    fails its checksum. ``created`` names the column that orders records in time."""

    def __init__(self, catalog: Catalog, name: str, schema: pa.Schema,
                 decode: Callable[[dict[str, Any]], Record], created: str = "created") -> None:
        self.catalog, self.name, self.schema = catalog, name, schema
        self.decode, self.created = decode, created

    def dataset(self) -> lance.LanceDataset | None:
        """The log, opened and checked (readable, not older than committed), or None before
        its first record is written."""
        if self.name not in self.catalog.all_tables():
            return None
        return self.catalog.dataset(self.name)

    def records(self, where: pc.Expression | None = None) -> list[Record]:
        """Every record (``where``: those it matches, exactly: a pyarrow expression, never
        SQL text), in log order, each decoded."""
        ds = self.dataset()
        if ds is None:
            return []
        with reading(self.name):
            rows = ds.to_table(filter=where).to_pylist()
        return [self.decode(r) for r in rows]

    def first(self, column: str, value: str) -> Record | None:
        """The first record whose ``column`` equals ``value`` (byte for byte), or None."""
        ds = self.dataset()
        if ds is None:
            return None
        with reading(self.name):
            rows = ds.to_table(filter=pc.field(column) == value).to_pylist()
        return self.decode(rows[0]) if rows else None

    def latest(self) -> Record | None:
        """The record created last (of equal times, the one appended last), or None: reads
        the ``created`` column, then that one record."""
        ds = self.dataset()
        if ds is None:
            return None
        with reading(self.name):
            created = pc.fill_null(ds.to_table(columns=[self.created]).column(self.created), "")
            if len(created) == 0:
                return None
            newest = pc.equal(created, pc.max(created)).to_numpy(zero_copy_only=False)
            rows = ds.take([int(np.flatnonzero(newest)[-1])]).to_pylist()
        return self.decode(rows[0])

    def check(self) -> int:
        """Read the log ``BATCH`` records at a time, each decoded (:class:`DamagedTable` on
        damage) and none kept: a damaged log is refused without holding the whole log (tens
        of MB once it holds many large selections). Returns the number of records."""
        ds = self.dataset()
        if ds is None:
            return 0
        count = 0
        with reading(self.name):
            for batch in ds.to_batches(batch_size=BATCH, io_buffer_size=READ_AHEAD,
                                       batch_readahead=1, fragment_readahead=1):
                for rec in batch.to_pylist():
                    self.decode(rec)
                    count += 1
        return count

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Append ``rows`` (created with the log if missing) under the log's lock, waited
        for: writers take turns, so the log is created once and never raced. The log is read
        back first (:meth:`check`): nothing is appended to a log that cannot be read."""
        uri = self.catalog.uri
        with table_lock(uri, self.name, wait=True):
            if self.name in self.catalog.all_tables():
                self.check()
            else:
                self.catalog.clear_uncommitted(self.name)
                folder.create(uri, self.name, self.schema.empty_table())
            folder.append(uri, self.name, pa.Table.from_pylist(rows, schema=self.schema))
            self.catalog.committed(self.name)

"""The gradient store: LanceDB tables of per-example gradient vectors, plus selections."""

from __future__ import annotations

import datetime
import json
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lance
import lancedb
import numpy as np
import pyarrow as pa

from gradstore.errors import GradstoreError
from gradstore.selectors.budget import Budget
from gradstore.selectors.source import TensorSource
from gradstore.store.importing import (
    validate_ids,
    validate_subtasks,
    validate_vectors,
)
from gradstore.store.lance_source import LanceSource
from gradstore.store.meta import (
    INGEST_KEY,
    VECTOR_DTYPES,
    ProjectionSpec,
    TableMeta,
    base_fields,
    checkpoint_fields,
    loss_column,
    type_fields,
    vector_column,
)
from gradstore.store.selections import SELECTIONS_SCHEMA, SELECTIONS_TABLE, Selection

WRITE_BATCH_ROWS = 1000  # ~16 MB pages at 8192 dims scan fastest (LANCE.md)


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


def _default_memory_budget() -> int:
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 << 30
    return int(total * 0.4)


def _stored(arr: np.ndarray, dtype: str) -> np.ndarray:
    """The values exactly as the table will hold them."""
    return np.ascontiguousarray(arr, dtype=np.float16 if dtype == "float16" else np.float32)


def _vector_batch(stored: np.ndarray, dim: int) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(stored.reshape(-1)), dim)


def _norms(stored: np.ndarray) -> np.ndarray:
    """Row norms of the stored values (so norms and vectors always agree)."""
    return np.linalg.norm(stored.astype(np.float32), axis=1).astype(np.float32)


class Store:
    """An embedded gradient store at a local path (or any URI LanceDB supports)."""

    def __init__(self, uri: str | Path, create: bool = True) -> None:
        self.uri = str(uri)
        local = "://" not in self.uri
        if local and not Path(self.uri).exists():
            if not create:
                raise GradstoreError(
                    f"store {self.uri!r} does not exist; create it with `gradstore import` "
                    "or `gradstore ingest`, or check the path"
                )
            Path(self.uri).mkdir(parents=True)
        if local and not Path(self.uri).is_dir():
            raise GradstoreError(f"store {self.uri!r} is a file, not a directory")
        self.db = lancedb.connect(self.uri)
        self._ram_cache: dict[tuple[str, int], TensorSource] = {}

    # ---------------------------------------------------------------- tables
    def _all_tables(self) -> list[str]:
        res = self.db.list_tables()
        names = getattr(res, "tables", res)
        return sorted(names)

    def tables(self) -> list[str]:
        """Names of the gradient tables (pool and target tables)."""
        return [t for t in self._all_tables() if not t.startswith("_")]

    def _dataset(self, table: str) -> lance.LanceDataset:
        if table not in self._all_tables():
            have = ", ".join(self.tables()) or "none"
            raise GradstoreError(
                f"table {table!r} is not in store {self.uri!r} (tables: {have}); "
                "check the name or ingest it first"
            )
        return self.db.open_table(table).to_lance()

    def meta(self, table: str) -> TableMeta:
        """The provenance stored with a table."""
        return TableMeta.from_schema(self._dataset(table).schema, table)

    def num_rows(self, table: str) -> int:
        return self._dataset(table).count_rows()

    def ids(self, table: str) -> list[str]:
        """Example ids in storage order, the order of every vector read."""
        return self._dataset(table).to_table(columns=["id"]).column("id").to_pylist()

    def subtasks(self, table: str) -> list[str | None]:
        return self._dataset(table).to_table(columns=["subtask"]).column("subtask").to_pylist()

    def info(self, table: str | None = None) -> dict[str, Any]:
        """Rows, dims, checkpoints, projection, model and stored selections."""
        if table is None:
            return {
                "uri": self.uri,
                "tables": {t: self._table_summary(t) for t in self.tables()},
                "selections": [_selection_summary(s) for s in self.selections()],
            }
        return self._table_summary(table, full=True)

    def _table_summary(self, table: str, full: bool = False) -> dict[str, Any]:
        ds = self._dataset(table)
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
            "status": meta.ingest.get("status", "imported"),
        }
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
            out["selections"] = [
                _selection_summary(s) for s in self.selections() if s.pool == table
            ]
        return out

    # ---------------------------------------------------------------- import
    def import_vectors(
        self,
        table: str,
        vectors: Any,
        checkpoint: str = "0",
        ids: Sequence[str] | None = None,
        subtasks: Sequence[str] | None = None,
        lr: float | None = None,
        *,
        kind: str | None = None,
        vector_dtype: str = "float16",
        projection: ProjectionSpec | dict | None = None,
        grad_type: str | None = None,
        model: str | None = None,
        tokens: Sequence[int] | None = None,
        losses: Sequence[float] | None = None,
        extra_vectors: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Add one checkpoint's (N, d) vectors to ``table`` (created if missing).

        ``extra_vectors`` (adding a checkpoint to a table that stores several gradient
        types) maps each further type to that checkpoint's (N, d) vectors of the same rows.

        Calling again with another ``checkpoint`` adds that checkpoint's vectors to
        the same rows, matched by id when ``ids`` are given, else by row order.
        Everything is validated before anything is written.
        """
        if not table or table.startswith("_") or "/" in table:
            raise GradstoreError(
                f"table name {table!r} is not allowed; use letters, digits, '-', '_'"
            )
        if vector_dtype not in VECTOR_DTYPES:
            raise GradstoreError(f"vector dtype {vector_dtype!r} is not one of float16, float32")
        if lr is not None and (not np.isfinite(lr) or lr < 0):
            raise GradstoreError(f"learning rate {lr!r} must be a finite number >= 0")
        checkpoint = str(checkpoint)
        arr = validate_vectors(vectors)
        n, dim = arr.shape
        if isinstance(projection, dict):
            projection = ProjectionSpec(**projection)
        exists = table in self._all_tables()
        if exists:
            meta = self.meta(table)
            vector_dtype = meta.vector_dtype
        if vector_dtype == "float16" and np.abs(arr).max() >= 65504:
            raise GradstoreError(
                f"vectors reach {np.abs(arr).max():.3g}, beyond float16's range; "
                "import with --vector-dtype float32 (or rescale them)"
            )
        extra_cols = {"tokens": tokens, "losses": losses}
        for name, col in extra_cols.items():
            if col is not None and len(col) != n:
                raise GradstoreError(f"{len(col)} {name} given for {n} vector rows")
        if not exists:
            ids_l = validate_ids(list(ids) if ids is not None else None, n)
            sub_l = validate_subtasks(list(subtasks) if subtasks is not None else None, n)
            meta = TableMeta(
                kind=kind or "pool",
                dim=dim,
                vector_dtype=vector_dtype,
                projection=projection or ProjectionSpec(kind="unknown", dim=dim),
                grad_type=grad_type,
                model=model,
            )
            self._create(table, meta, arr, ids_l, sub_l, checkpoint, lr, tokens, losses)
            return {"table": table, "rows": n, "checkpoint": checkpoint, "created": True}
        if meta.incomplete:
            raise GradstoreError(
                f"table {table!r} is still being ingested; finish that first (rerun the same "
                "`gradstore ingest` command)"
            )
        self._check_addition(table, meta, dim, checkpoint, projection, grad_type, model)
        existing = self.ids(table)
        if ids is None:
            if n != len(existing):
                raise GradstoreError(
                    f"table {table!r} has {len(existing)} rows but {n} vectors were given; "
                    "give --ids to match rows by id, or the same number of rows"
                )
            source_of_row = np.arange(n)
        else:
            source_of_row = self._match_ids(table, ids, n)
        if subtasks is not None:
            stored = self.subtasks(table)
            given = [list(subtasks)[i] for i in source_of_row]
            if any(s is not None for s in stored) and [str(g) for g in given] != stored:
                raise GradstoreError(
                    f"subtask labels differ from those stored in {table!r}; omit --subtasks "
                    "when adding a checkpoint"
                )
        extra = {t: validate_vectors(v) for t, v in (extra_vectors or {}).items()}
        for t, v in extra.items():
            if v.shape != arr.shape:
                raise GradstoreError(f"{t} vectors have shape {v.shape}, expected {arr.shape}")
        self._add_checkpoint(table, meta, arr, source_of_row, checkpoint, lr, losses, extra)
        return {"table": table, "rows": n, "checkpoint": checkpoint, "created": False}

    def _check_addition(self, table, meta, dim, checkpoint, projection, grad_type, model) -> None:
        if dim != meta.dim:
            raise GradstoreError(
                f"vectors have {dim} dims but table {table!r} has {meta.dim}; "
                "use the same projection for every checkpoint"
            )
        if checkpoint in meta.checkpoint_names:
            raise GradstoreError(
                f"checkpoint {checkpoint!r} is already in table {table!r} "
                f"(has {meta.checkpoint_names}); use another --checkpoint name"
            )
        if projection is not None and projection != meta.projection:
            raise GradstoreError(
                f"projection {projection} differs from table {table!r}'s {meta.projection}"
            )
        for what, given, stored in (
            ("gradient type", grad_type, meta.grad_type),
            ("model", model, meta.model),
        ):
            if given is not None and stored is not None and given != stored:
                raise GradstoreError(f"{what} {given!r} differs from table {table!r}'s {stored!r}")

    def _create(self, table, meta, arr, ids, subtasks, checkpoint, lr, tokens, losses) -> None:
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
    def _schema(meta: TableMeta, checkpoints: Sequence[tuple[str, float | None]]) -> pa.Schema:
        fields = base_fields()
        for i, (name, lr) in enumerate(checkpoints):
            fields += checkpoint_fields(i, name, lr, meta.dim, meta.vector_dtype,
                                        meta.extra_types)
        return pa.schema(fields, metadata=meta.to_schema_metadata())

    @staticmethod
    def _record_batch(schema: pa.Schema, meta: TableMeta, block: RowBlock) -> pa.RecordBatch:
        n = len(block.ids)

        def opt(values, typ):
            return pa.array(values if values is not None else [None] * n, typ)

        cols = [
            pa.array(block.ids, pa.string()),
            pa.array(np.asarray(block.rows, dtype=np.int64)),
            opt(block.subtasks, pa.string()),
            opt(block.tokens, pa.int32()),
            opt(block.content_hashes, pa.string()),
        ]
        extra = block.extra_vectors or {}
        if sorted(extra) != sorted(meta.extra_types):
            raise GradstoreError(
                f"rows carry gradient types {sorted(extra)} beside {meta.grad_type!r}, the table "
                f"stores {meta.extra_types}"
            )
        for i, vec in enumerate(block.vectors):
            stored = _stored(vec, meta.vector_dtype)
            cols += [
                _vector_batch(stored, meta.dim),
                pa.array(_norms(stored)),
                opt(None if block.losses is None else block.losses[i], pa.float32()),
            ]
            for t in meta.extra_types:
                more = _stored(extra[t][i], meta.vector_dtype)
                cols += [_vector_batch(more, meta.dim), pa.array(_norms(more))]
        return pa.RecordBatch.from_arrays(cols, schema=schema)

    def create_table(
        self, table: str, meta: TableMeta, checkpoints: Sequence[tuple[str, float | None]],
        blocks: Iterable[RowBlock] = (),
    ) -> None:
        """Create ``table`` with one vector column per (checkpoint name, lr), and ``blocks``."""
        schema = self._schema(meta, checkpoints)
        batches = (self._record_batch(schema, meta, b) for b in blocks)
        reader = pa.RecordBatchReader.from_batches(schema, batches)
        with warnings.catch_warnings():
            # 2.0 files scanned fastest for float16 vectors here (LANCE.md)
            warnings.simplefilter("ignore", DeprecationWarning)
            self.db.create_table(table, data=reader, data_storage_version="2.0")

    def append_rows(self, table: str, block: RowBlock) -> None:
        """Append complete rows (every checkpoint's vectors) in one atomic commit."""
        ds = self._dataset(table)
        meta = TableMeta.from_schema(ds.schema, table)
        if len(block.vectors) != len(meta.checkpoints):
            raise GradstoreError(
                f"{len(block.vectors)} checkpoints given for table {table!r}, which has "
                f"{len(meta.checkpoints)}"
            )
        schema = ds.schema
        batch = self._record_batch(schema, meta, block)
        self.db.open_table(table).add(pa.Table.from_batches([batch], schema=schema))

    def update_ingest_state(self, table: str, state: dict[str, Any]) -> None:
        """Replace the ingestion record kept in ``table``'s schema metadata."""
        self._dataset(table).update_schema_metadata({INGEST_KEY: json.dumps(state)})

    def compact(self, table: str) -> None:
        """Merge the fragments of many small appends and drop the superseded files."""
        ds = self._dataset(table)
        if len(ds.get_fragments()) > 1:
            ds.optimize.compact_files(target_rows_per_fragment=1 << 20)
            ds = self._dataset(table)
            ds.cleanup_old_versions(older_than=datetime.timedelta(0))

    def drop_table(self, table: str) -> None:
        self._dataset(table)  # a clear error when missing
        self.db.drop_table(table)
        self._ram_cache.clear()

    def _add_checkpoint(
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
        self._add_columns(table, meta, fields, values, source_of_row)

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
        source_of_row = self._match_ids(table, ids, len(next(iter(arrays.values()))))
        fields, values = [], {}
        for i, c in enumerate(meta.checkpoints):
            fields += type_fields(i, c.name, c.lr, meta.dim, meta.vector_dtype, grad_type)
            values[vector_column(i, grad_type)] = arrays[c.name]
        self._add_columns(table, meta, fields, values, source_of_row)

    def _match_ids(self, table: str, ids: Sequence[str], n: int) -> np.ndarray:
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

    def _add_columns(
        self, table: str, meta: TableMeta, fields: list[pa.Field],
        values: dict[str, np.ndarray | None], source_of_row: np.ndarray,
    ) -> None:
        """Add ``fields`` to every row in one column addition: each vector field takes its
        array's row ``source_of_row[i]`` (its norm field follows from it), each loss field
        its array's (or nulls)."""
        ds = self._dataset(table)
        # storage position of each `row` value (rows may have gaps where ingestion skipped)
        stored_rows = ds.to_table(columns=["row"]).column("row").to_numpy()
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
                else:
                    v = values.get(f.name)
                    cols.append(pa.array(
                        np.asarray(v, dtype=np.float32)[src] if v is not None
                        else [None] * len(src), pa.float32()))
            return pa.RecordBatch.from_arrays(cols, schema=out_schema)

        ds.add_columns(lance.batch_udf(output_schema=out_schema)(udf), read_columns=["row"])

    # ---------------------------------------------------------------- reading
    def vectors(
        self, table: str, checkpoint: str | None = None, grad_type: str | None = None
    ) -> tuple[list[str], np.ndarray]:
        """``(ids, X)``: one checkpoint's vectors, or all side by side (None), float32.

        ``grad_type`` picks one of the gradient types the table stores (default: its
        primary type, ``info``'s ``grad_type``).
        """
        ds = self._dataset(table)
        meta = TableMeta.from_schema(ds.schema, table)
        cols = self._columns(table, meta, checkpoint, grad_type)
        src = LanceSource(ds, cols, meta.dim)
        X = src.load().float().numpy()
        return self.ids(table), X

    def losses(self, table: str, checkpoint: str) -> np.ndarray:
        """Each example's loss at ``checkpoint`` (storage order; NaN where unknown)."""
        ds = self._dataset(table)
        meta = TableMeta.from_schema(ds.schema, table)
        self._columns(table, meta, checkpoint)  # a clear error when the checkpoint is missing
        col = loss_column(meta.checkpoint_names.index(str(checkpoint)))
        values = ds.to_table(columns=[col]).column(col).to_numpy(zero_copy_only=False)
        return np.asarray(values, dtype=np.float32)

    def _columns(
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

    def source(self, table: str, mode: str = "auto", memory_budget: int | None = None):
        """A gradient source over all checkpoints: in RAM if it fits the budget, else streamed."""
        ds = self._dataset(table)
        meta = TableMeta.from_schema(ds.schema, table)
        if not meta.checkpoints:
            raise GradstoreError(f"table {table!r} has no vectors")
        cols = [c.column for c in meta.checkpoints]
        lsrc = LanceSource(ds, cols, meta.dim)
        if mode not in ("auto", "ram", "stream"):
            raise GradstoreError(f"scan mode {mode!r} is not one of auto, ram, stream")
        if mode == "auto":
            itemsize = 2 if meta.vector_dtype == "float16" else 4
            need = lsrc.num_rows * len(cols) * meta.dim * itemsize
            budget = _default_memory_budget() if memory_budget is None else memory_budget
            mode = "ram" if need <= budget else "stream"
        if mode == "stream":
            return lsrc
        key = (table, ds.version)
        if key not in self._ram_cache:
            self._ram_cache = {key: TensorSource(lsrc.load(), len(cols), lsrc.row_norms())}
        return self._ram_cache[key]

    # ---------------------------------------------------------------- selections
    def _selections_table(self, create: bool):
        if SELECTIONS_TABLE in self._all_tables():
            return self.db.open_table(SELECTIONS_TABLE)
        if not create:
            return None
        return self.db.create_table(SELECTIONS_TABLE, schema=SELECTIONS_SCHEMA)

    def selections(self) -> list[Selection]:
        tbl = self._selections_table(create=False)
        if tbl is None:
            return []
        return [Selection.from_record(r) for r in tbl.to_arrow().to_pylist()]

    def selection(self, selection_id: str) -> Selection:
        tbl = self._selections_table(create=False)
        if tbl is not None:
            sid = selection_id.replace("'", "")
            rows = tbl.to_lance().to_table(filter=f"selection_id = '{sid}'").to_pylist()
            if rows:
                return Selection.from_record(rows[0])
        raise GradstoreError(
            f"selection {selection_id!r} is not in store {self.uri!r}; "
            "`gradstore info STORE` lists the stored selections"
        )

    def _save(self, sels: list[Selection]) -> None:
        tbl = self._selections_table(create=True)
        tbl.add(pa.Table.from_pylist([s.to_record() for s in sels], schema=SELECTIONS_SCHEMA))

    # ---------------------------------------------------------------- ingest
    def ingest(self, table_or_config: Any = None, /, **options: Any):
        """Compute and store per-example gradients (see :class:`IngestConfig`).

        ``store.ingest("pool", model=..., data=..., checkpoints=[...])`` or
        ``store.ingest(IngestConfig(...))``; returns an ``IngestSummary``.
        Rerunning an interrupted ingestion finishes it. ``ray="local"`` (or a cluster
        address) shards the work over Ray workers (``workers``, ``worker_cpus``,
        ``worker_retries``: see ``RayIngestOptions``).
        """
        from gradstore.grads.ingest import IngestConfig, ingest

        ray = options.pop("ray", None)
        ray_options = {k: options.pop(k) for k in ("workers", "worker_cpus", "worker_retries")
                       if k in options}

        if isinstance(table_or_config, IngestConfig):
            cfg = table_or_config
        else:
            if "checkpoints" in options and options["checkpoints"] is not None:
                options["checkpoints"] = tuple(str(c) for c in options["checkpoints"])
            for key in ("lora_targets", "lrs"):
                if options.get(key) is not None:
                    options[key] = tuple(options[key])
            try:
                cfg = IngestConfig(table=table_or_config, **options)
            except TypeError as exc:
                raise GradstoreError(f"ingest options: {exc}") from exc
        if ray is None:
            if ray_options:
                raise GradstoreError(f"{', '.join(ray_options)} apply only with ray=ADDRESS")
            return ingest(self, cfg)
        from gradstore.distributed.ingest import RayIngestOptions, ingest_on_ray

        if "worker_retries" in ray_options:
            ray_options["retries"] = ray_options.pop("worker_retries")
        return ingest_on_ray(self, cfg, RayIngestOptions(address=ray, **ray_options))

    # ---------------------------------------------------------------- select
    def select(
        self,
        pool: str,
        target: str | None | Sequence[str | None] = None,
        budget: Budget | Sequence[Budget] = 0.05,
        method: str = "gtp",
        **options: Any,
    ) -> Selection | list[Selection]:
        """Choose pool examples for each (target, budget); lists in, list out."""
        from gradstore.store.querying import run_selection

        many = isinstance(target, (list, tuple)) or isinstance(budget, (list, tuple))
        targets = list(target) if isinstance(target, (list, tuple)) else [target]
        budgets = list(budget) if isinstance(budget, (list, tuple)) else [budget]
        sels = run_selection(self, pool, targets, budgets, method, **options)
        return sels if many else sels[0]

    def stop_note(self, sel: Selection) -> str | None:
        """Why a selection holds fewer than k examples, or read a target of another gradient
        type than the pool, and what to do; None when neither.

        gtp-paper and omp stop once no further pool example lowers the residual (at the
        NNLS optimum every other example correlates negatively with what is left). This
        happens above all when the target holds another gradient type than the pool: a
        weighted sum of Adam rows fits a plain-SGD target poorly. Targets ingested by this
        version store both types, and each method reads the one it needs.
        """
        note = None
        if len(sel.ids) < sel.k:
            note = (f"{sel.method} chose {len(sel.ids)} of the k={sel.k} allowed: more pool "
                    f"examples do not lower the residual ({sel.residual:.2f} of the target's "
                    "norm)")
        used = sel.params.get("target_grad_type")
        pool_type = sel.params.get("pool_grad_type")
        wanted = "sgd" if sel.method == "less" else pool_type
        if sel.target is None or not used or not wanted or used == wanted:
            return None if note is None else f"{note}; use --method gtp to fill the budget"
        mismatch = (f"target {sel.target!r} stores only {used} gradients and {sel.method} "
                    f"reads {wanted} ones; add them with the same `gradstore ingest` command "
                    f"plus --grad-type {wanted},{used} (only the new type is computed)")
        return mismatch if note is None else f"{note}; {mismatch}"

    # ---------------------------------------------------------------- export
    def export(self, selection_id: str, out: str | Path, data: str | Path | None = None,
               **options: Any):
        """Write the selected rows of the original data file, with ``rank`` and ``weight``.

        ``data`` defaults to the file the pool was ingested from; returns an ``ExportSummary``.
        """
        from gradstore.export import export_selection

        return export_selection(self, selection_id, out, data=data, **options)


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


def open(uri: str | Path, create: bool = True) -> Store:  # noqa: A001 - the public name
    """Open (or create) the store at ``uri``."""
    return Store(uri, create=create)

"""The public Python API: ``gradstore.open(uri)`` gives a :class:`Store`, whose tables are
:class:`Table` values; ``gradstore.warmup`` and ``gradstore.run`` run the warm-up and the
whole pipeline.

The facade decides nothing itself: each method validates its arguments into the
operation's options and calls the operation (``gradstore.ops``) over the store's
persistence (:class:`gradstore.store.database.Database`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gradstore.budget import Budget
from gradstore.choices import SCAN_MODES
from gradstore.config import IngestConfig, SelectConfig, with_options
from gradstore.errors import GradstoreError
from gradstore.ops import summaries
from gradstore.ops.export import ExportSummary, export_selection
from gradstore.ops.importing import import_vectors
from gradstore.store.database import Database
from gradstore.store.meta import TableMeta
from gradstore.store.repair import TableReport, repair, restore, versions
from gradstore.store.selections import SELECTIONS_TABLE, Selection

if TYPE_CHECKING:  # the operations that need torch are imported when first called
    from gradstore.grads.ingestion import IngestSummary
    from gradstore.ops.evaluate_selection import Evaluation
    from gradstore.ops.neighbors import Neighbor
    from gradstore.ops.report import Report
    from gradstore.ops.select import SourceCache


class Store:
    """An embedded gradient store at a local path (or any URI LanceDB supports)."""

    def __init__(self, uri: str | Path, create: bool = True) -> None:
        self.database = Database(uri, create=create)
        """The persistence underneath (Lance tables, the selection log)."""
        self.uri = self.database.uri
        self._cache: SourceCache | None = None  # made by the first selection

    def _source_cache(self) -> SourceCache:
        """The pool last read into RAM, kept for the next selection."""
        from gradstore.ops.select import SourceCache

        if self._cache is None:
            self._cache = SourceCache()
        return self._cache

    def __repr__(self) -> str:
        return f"gradstore.Store({self.uri!r})"

    # ---------------------------------------------------------------- tables
    def tables(self) -> list[str]:
        """Names of the gradient tables (pool and target tables)."""
        return self.database.tables()

    def table(self, name: str) -> Table:
        """Table ``name`` as a value (a clear error when it is missing)."""
        self.database.dataset(name)
        return Table(self, name)

    def meta(self, table: str) -> TableMeta:
        """The provenance stored with a table."""
        return self.database.meta(table)

    def num_rows(self, table: str) -> int:
        return self.database.num_rows(table)

    def ids(self, table: str) -> list[str]:
        """Example ids in storage order, the order of every vector read."""
        return self.database.ids(table)

    def subtasks(self, table: str) -> list[str | None]:
        return self.database.subtasks(table)

    def fields(self, table: str) -> list[str]:
        """The data rows' own fields the table keeps as columns (``ingest --fields``)."""
        return self.database.data_fields(table)

    def info(self, table: str | None = None) -> dict[str, Any]:
        """Rows, dims, checkpoints, projection, gradient types, model, selections."""
        return summaries.info(self.database, table)

    def vectors(self, table: str, checkpoint: str | None = None,
                grad_type: str | None = None) -> tuple[list[str], np.ndarray]:
        """``(ids, X)``: one checkpoint's vectors, or all side by side (None), float32."""
        return self.database.vectors(table, checkpoint, grad_type)

    def losses(self, table: str, checkpoint: str) -> np.ndarray:
        """Each example's loss at ``checkpoint`` (storage order; NaN where unknown)."""
        return self.database.losses(table, checkpoint)

    def source(self, table: str, mode: str = "auto", memory_budget: int | None = None):
        """The table's rows for the selectors: in RAM if they fit, else streamed."""
        if mode not in SCAN_MODES:
            raise GradstoreError(f"scan mode {mode!r} is not one of {', '.join(SCAN_MODES)}")
        from gradstore.ops.select import pool_source

        return pool_source(self.database, table, mode, memory_budget, self._source_cache())

    # ---------------------------------------------------------------- writing
    def import_vectors(self, table: str, vectors: Any, checkpoint: str = "0",
                       ids: Sequence[str] | None = None, subtasks: Sequence[str] | None = None,
                       lr: float | None = None, **provenance: Any) -> dict[str, Any]:
        """Add one checkpoint's (N, d) vectors to ``table`` (created if missing); see
        :func:`gradstore.ops.importing.import_vectors` for ``kind``, ``vector_dtype``,
        ``projection``, ``grad_type``, ``model``, ``tokens`` and ``losses``."""
        return import_vectors(self.database, table, vectors, checkpoint, ids, subtasks, lr,
                              **provenance)

    def ingest(self, table_or_config: Any = None, /, **options: Any) -> IngestSummary:
        """Compute and store per-example gradients (see :class:`IngestConfig`).

        ``store.ingest("pool", model=..., data=..., checkpoints=[...])`` or
        ``store.ingest(IngestConfig(...), **overrides)``. Rerunning an interrupted ingestion
        finishes it. ``ray="local"`` (or a cluster address) shards the work over Ray workers
        (``workers``, ``worker_cpus``, ``worker_retries``).
        """
        if isinstance(table_or_config, IngestConfig):  # options override its fields
            cfg = with_options(table_or_config, **options) if options else table_or_config
        else:
            cfg = IngestConfig.from_options(table=table_or_config, **options)
        from gradstore.ops.ingest import run_ingest

        return run_ingest(self.database, cfg)

    # ---------------------------------------------------------------- select
    def select(
        self,
        pool: str,
        target: str | None | Sequence[str | None] = None,
        budget: Budget | Sequence[Budget] = 0.05,
        method: str | None = None,
        config: SelectConfig | None = None,
        **options: Any,
    ) -> Selection | list[Selection]:
        """Choose pool examples for each (target, budget); lists in, list out.

        ``method``: gtp (default), gtp-paper, omp, less, round-robin or random. Every other
        option is a field of :class:`SelectConfig`, by its name (``target_mode``,
        ``part_score``, ``tolerance``, ``mode``, ``memory_budget``, ``partitions``, ``ray``,
        ``ray_tasks``, ``device``, ``seed``, ``save``, ...: the same settings as `gradstore
        select`'s flags), or a whole ``config`` that the options override. In Python
        ``progress`` defaults to False.
        """
        if method is not None:
            options["method"] = method
        if config is None:
            opts = SelectConfig.from_options(**({"progress": False} | options))
        else:
            opts = with_options(config, **options) if options else config
        many = isinstance(target, list | tuple) or isinstance(budget, list | tuple)
        targets = list(target) if isinstance(target, list | tuple) else [target]
        budgets = list(budget) if isinstance(budget, list | tuple) else [budget]
        targets = [t.name if isinstance(t, Table) else t for t in targets]
        from gradstore.ops.select import run_selection

        sels = run_selection(self.database, pool, targets, budgets, opts, self._source_cache())
        return sels if many else sels[0]

    def select_again(self, selection_id: str, **options: Any) -> Selection:
        """Run a stored selection's query again (its pool, target, budget, method, query
        and options) against its tables' current versions; ``options`` override it."""
        from gradstore.ops.query import again_options

        sel = self.database.selection(selection_id)
        return self.select(sel.pool, sel.target, sel.budget, sel.method,
                           **(again_options(sel.params) | options))

    def neighbors(self, pool: str, target: str, k: int = 5, *, row: str | None = None,
                  of: str | None = None, mode: str = "auto",
                  memory_budget: int | None = None,
                  data: str | Path | None = None) -> list[Neighbor]:
        """For each row of ``target`` (or its row ``row``) the ``k`` pool rows most aligned
        with it in LESS's space, with their scores (one pass over the pool for all target
        rows); ``of=POOL_ID``: the reverse, the target rows that pool row serves best. See
        :mod:`gradstore.ops.neighbors`."""
        from gradstore.ops.neighbors import neighbors

        return neighbors(self.database, pool, target, k, row=row, of=of, mode=mode,
                         memory_budget=memory_budget, cache=self._source_cache(),
                         data=None if data is None else str(data))

    def selections(self) -> list[Selection]:
        """Every stored selection, oldest first."""
        return self.database.selections()

    def selection(self, selection_id: str) -> Selection:
        return self.database.selection(selection_id)

    def stop_note(self, sel: Selection) -> str | None:
        """Why a selection holds fewer than k examples, or read a target of another gradient
        type than it needs, and what to do; None when neither."""
        from gradstore.ops.select import stop_note

        return stop_note(sel)

    # ---------------------------------------------------------------- integrity
    def verify(self, table: str | None = None, *, drop_damaged: bool = False,
               drop_duplicates: bool = False, add_checksums: bool = False,
               force: bool = False) -> list[TableReport]:
        """Read every stored vector back against its checksum (every table and the selection
        log, or one table) and report what is wrong; the flags repair what they name
        (holding the table's write lock; ``force``: take over one whose writer is gone)."""
        names = [table] if table is not None else [
            *self.database.tables(), *[t for t in self.database.all_tables()
                                       if t == SELECTIONS_TABLE]]
        if table is not None and table not in self.database.all_tables():
            self.database.dataset(table)  # the error naming the store's tables
        return [repair(self.database, t, drop_damaged_rows=drop_damaged,
                       drop_duplicate_ids=drop_duplicates, checksums=add_checksums,
                       force=force) for t in names]

    def versions(self, table: str) -> list[dict[str, Any]]:
        """The versions of ``table`` still on disk, newest first (``files_ok``: every data
        file it names is present)."""
        return versions(self.database, table)

    def restore(self, table: str, version: int, force: bool = False) -> TableReport:
        """Make an earlier ``version`` of ``table`` (or of ``_selections``, the selection
        log) the current one; nothing is deleted. Returns the verification of the result."""
        self._cache = None
        return restore(self.database, table, version, force)

    # ---------------------------------------------------------------- export
    def export(self, selection_id: str, out: str | Path, data: str | Path | None = None,
               **options: Any) -> ExportSummary:
        """Write the selected rows of the original data file, with ``rank`` and ``weight``.

        ``data`` defaults to the file the pool was ingested from.
        """
        return export_selection(self.database, selection_id, out, data=data, **options)

    def evaluate(self, selection_id: str, *, model: str, test: str | Path,
                 **options: Any) -> Evaluation:
        """Fine-tune on the selection and on a baseline (``baseline="random"`` or another
        selection's id), score both on ``test``, keep the result in the store (see
        :mod:`gradstore.ops.evaluate_selection`); ``settings`` a ``TrainSettings``."""
        from gradstore.ops.evaluate_selection import EvaluateOptions, evaluate_selection

        opts = EvaluateOptions(model=model, test=str(test), **options)
        return evaluate_selection(self.database, selection_id, opts)

    def evaluations(self, selection_id: str | None = None) -> list[dict[str, Any]]:
        """Stored evaluations (of one selection), oldest first."""
        return self.database.evaluations(selection_id)

    def report(self, selection_ids: Sequence[str] = (), out: str | Path | None = None, *,
               data: str | Path | None = None, by: str | None = None,
               target_data: str | Path | None = None, **options: Any) -> Report:
        """What the selections hold, side by side (see :mod:`gradstore.ops.report`); with
        ``out``, also written as one self-contained HTML page."""
        from gradstore.ops.report import build_report
        from gradstore.ops.report_page import write_report

        rep = build_report(self.database, list(selection_ids), data=data, by=by,
                           target_data=target_data, **options)
        if out is not None:
            write_report(rep, out)
        return rep


class Table:
    """One table of a store, as a value: ``store.table("pool")``."""

    def __init__(self, store: Store, name: str) -> None:
        self.store, self.name = store, name

    def __repr__(self) -> str:
        return f"gradstore.Table({self.name!r} in {self.store.uri!r})"

    @property
    def meta(self) -> TableMeta:
        return self.store.meta(self.name)

    @property
    def num_rows(self) -> int:
        return self.store.num_rows(self.name)

    def ids(self) -> list[str]:
        return self.store.ids(self.name)

    def subtasks(self) -> list[str | None]:
        return self.store.subtasks(self.name)

    def info(self) -> dict[str, Any]:
        return self.store.info(self.name)

    def vectors(self, checkpoint: str | None = None,
                grad_type: str | None = None) -> tuple[list[str], np.ndarray]:
        return self.store.vectors(self.name, checkpoint, grad_type)

    def select(self, target: str | Table | None | Sequence[str | Table | None] = None,
               budget: Budget | Sequence[Budget] = 0.05, method: str = "gtp",
               **options: Any) -> Selection | list[Selection]:
        """This table as the pool: ``store.table("pool").select("mmlu", "5%")``; the
        options are :meth:`Store.select`'s."""
        return self.store.select(self.name, target, budget, method, **options)

    def fields(self) -> list[str]:
        return self.store.fields(self.name)

    def query(self) -> PoolQuery:
        """An empty query over this table (every row may be chosen)."""
        return PoolQuery(self)

    def where(self, sql: str) -> PoolQuery:
        return self.query().where(sql)

    def exclude(self, *selections: str | Selection) -> PoolQuery:
        return self.query().exclude(*selections)

    def extend(self, selection: str | Selection) -> PoolQuery:
        return self.query().extend(selection)

    def max_share(self, field: str, share: float) -> PoolQuery:
        return self.query().max_share(field, share)

    def exclude_near(self, table: str | Table, cosine: float | None = None) -> PoolQuery:
        return self.query().exclude_near(table, cosine)


class PoolQuery:
    """A query over a pool table, as a value built step by step (each step a new query,
    the one before unchanged), then answered by :meth:`select`::

        pool.where("tokens < 1024").exclude(sel).max_share("source", 0.3).select("mmlu", "5%")

    Each step is one flag of ``gradstore select``: ``where`` (``--where``; two of them
    must both hold), ``exclude`` (``--exclude``, a selection or a file of ids),
    ``extend`` (``--extend``), ``max_share`` (``--max-share FIELD=SHARE``),
    ``exclude_near`` (``--exclude-near TABLE[:COSINE]``). The selection records the query.
    """

    def __init__(self, table: Table, options: dict[str, Any] | None = None) -> None:
        self.table = table
        self.options: dict[str, Any] = dict(options or {})

    def _with(self, **changes: Any) -> PoolQuery:
        return PoolQuery(self.table, self.options | changes)

    def where(self, sql: str) -> PoolQuery:
        before = self.options.get("where")
        return self._with(where=sql if before is None else f"({before}) AND ({sql})")

    def exclude(self, *selections: str | Selection) -> PoolQuery:
        named = [getattr(s, "selection_id", s) for s in selections]
        return self._with(exclude=[*self.options.get("exclude", []), *map(str, named)])

    def extend(self, selection: str | Selection) -> PoolQuery:
        return self._with(extend=str(getattr(selection, "selection_id", selection)))

    def max_share(self, field: str, share: float) -> PoolQuery:
        return self._with(max_share=[*self.options.get("max_share", []), f"{field}={share!r}"])

    def exclude_near(self, table: str | Table, cosine: float | None = None) -> PoolQuery:
        name = getattr(table, "name", table)
        entry = str(name) if cosine is None else f"{name}:{cosine!r}"
        return self._with(exclude_near=[*self.options.get("exclude_near", []), entry])

    def flags(self) -> list[str]:
        """The query as ``gradstore select`` flags."""
        out = [] if "where" not in self.options else ["--where", self.options["where"]]
        for key in ("exclude", "exclude_near", "max_share"):
            for v in self.options.get(key, []):
                out += [f"--{key.replace('_', '-')}", v]
        return out + ([] if "extend" not in self.options else ["--extend",
                                                               self.options["extend"]])

    def __repr__(self) -> str:
        return f"gradstore.PoolQuery({self.table.name!r}: {' '.join(self.flags()) or 'all rows'})"

    def select(self, target: str | Table | None | Sequence[str | Table | None] = None,
               budget: Budget | Sequence[Budget] = 0.05, method: str = "gtp",
               **options: Any) -> Selection | list[Selection]:
        """The selection(s) over the rows the query allows (options: :meth:`Store.select`'s;
        an option the query also sets is refused)."""
        both = sorted(set(options) & set(self.options))
        if both:
            raise GradstoreError(f"{', '.join(both)} given twice: in the query and to select; "
                                 "give each once")
        return self.table.select(target, budget, method, **self.options, **options)


def open(uri: str | Path, create: bool = True) -> Store:  # noqa: A001 - the public name
    """Open (or create) the store at ``uri``."""
    return Store(uri, create=create)

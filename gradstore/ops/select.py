"""``gradstore select``: store tables in, selectors run, selections out.

One run answers every (target, budget) pair with shared passes over the pool. The pool is
read in RAM when it fits the memory budget, else streamed from Lance, or its passes run as
Ray tasks (``--ray``); the selectors are the same in each case.
"""

from __future__ import annotations

import datetime
import os
import tempfile
import time
import uuid
from collections.abc import Sequence
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from gradstore.budget import Budget, budget_count, budget_label
from gradstore.choices import HIDDEN_TYPE, PURSUITS
from gradstore.config import SelectConfig
from gradstore.devices import resolve_device
from gradstore.errors import GradstoreError
from gradstore.ops.query import (
    allowed_rows,
    checkpoint_weights,
    kept_rows,
    quotas_for,
    share_fields,
    shares_taken,
    with_kept,
)
from gradstore.pause import pause_point
from gradstore.selectors.clusters import target_clusters
from gradstore.selectors.gtp import candidates_within, gtp
from gradstore.selectors.gtp_paper import gtp_paper
from gradstore.selectors.less import less_topk, less_within_quotas
from gradstore.selectors.omp import fit_support, omp
from gradstore.selectors.partitioned import partitioned_gtp
from gradstore.selectors.query import Query, target_tolerance
from gradstore.selectors.quotas import QuotaCounts
from gradstore.selectors.random_subset import random_subset
from gradstore.selectors.round_robin import PartsQuery, part_columns, round_robin
from gradstore.selectors.scan import ScanDevice
from gradstore.selectors.source import TensorSource
from gradstore.selectors.stacked import StackedPool
from gradstore.store.allocator import (
    LARGE_ALLOCATION,
    SMALL_BUDGET_ALLOCATION,
    large_frees_released,
)
from gradstore.store.database import Database
from gradstore.store.lance_source import LanceSource
from gradstore.store.meta import TableMeta
from gradstore.store.selections import Selection

MIN_TASK_ROWS = 4096  # smaller Ray tasks cost more in overhead than they save


def check_complete(table: str, meta: TableMeta) -> None:
    """Refuse a table whose ingestion was interrupted."""
    if meta.incomplete:
        raise GradstoreError(
            f"table {table!r} is incomplete: its ingestion stopped before all "
            f"{meta.ingest.get('expected_rows', '?')} rows were written; rerun the same "
            "`gradstore ingest` command to finish it"
        )


def check_compatible(pool: str, pmeta: TableMeta, target: str, tmeta: TableMeta) -> None:
    """Refuse a pool/target pair whose vectors do not live in the same space."""
    check_complete(target, tmeta)
    checks = [
        ("dimension", pmeta.dim, tmeta.dim),
        # the same checkpoints, in any column order (a checkpoint may be added later)
        ("checkpoints", sorted(pmeta.checkpoint_names), sorted(tmeta.checkpoint_names)),
        ("projection", pmeta.projection, tmeta.projection),
    ]
    if pmeta.model is not None and tmeta.model is not None:
        checks.append(("model", pmeta.model, tmeta.model))
    p_adapters = pmeta.ingest.get("settings", {}).get("adapters")
    t_adapters = tmeta.ingest.get("settings", {}).get("adapters")
    if p_adapters and t_adapters:
        checks.append(("adapter weights", p_adapters, t_adapters))
    for what, a, b in checks:
        if a != b:
            raise GradstoreError(
                f"pool {pool!r} and target {target!r} differ in {what}: {a} vs {b}; "
                "ingest both with the same model, checkpoints and projection"
            )


class ScanProgress:
    """One progress bar for all passes over the pool: rows scanned, rate, pass number."""

    def __init__(self, total: int, desc: str) -> None:
        self.total, self.count, self.done_rows = total, 0, 0
        self.bar = tqdm(desc=desc, unit="row", unit_scale=True, mininterval=0.5)

    def __call__(self, rows: int) -> None:
        if self.done_rows % self.total == 0:
            self.count += 1
            self.bar.set_postfix_str(f"scan {self.count}", refresh=False)
        self.done_rows += rows
        self.bar.update(rows)

    def close(self) -> None:
        self.bar.close()


COSINE_METHODS = ("less", "round-robin")
"""Methods that score pool rows by their cosine with the target's (plain SGD) rows."""


def wanted_type(method: str, pool_type: str | None) -> str | None:
    """The target type ``method`` wants against a pool of ``pool_type``: LESS and
    round-robin score plain SGD target gradients against a gradient pool (as LESS does);
    the pursuits fit the target with pool rows, so they read the pool's own type, and so
    does every method on hidden-state features (a target's hidden states are its only
    features)."""
    if method in COSINE_METHODS and pool_type != HIDDEN_TYPE:
        return "sgd"
    return pool_type


def target_type(method: str, pmeta: TableMeta, tmeta: TableMeta) -> str | None:
    """The type of a target's rows that ``method`` reads (:func:`wanted_type`); a target
    without it gives what it has."""
    wanted = wanted_type(method, pmeta.grad_type)
    return wanted if wanted in tmeta.grad_types else tmeta.grad_type


def target_matrix(
    db: Database, spool: StackedPool, pool: str, pmeta: TableMeta, target: str | None,
    per_subtask: bool, method: str, clusters: bool = False,
    vectors: tuple[np.ndarray, list[str | None]] | None = None,
) -> tuple[np.ndarray, float]:
    """The target columns Y (D, C) in the pool's stacked space, and the sampling error of
    their mean (``target_tolerance``; 0 for the in-domain target, the pool's own mean).
    ``per_subtask``: a column per subtask label; ``clusters``: a column per cluster of the
    target's rows (:func:`target_clusters`), labels or not. ``vectors``: the target's rows
    and labels as :func:`target_vectors` read them (read here when not given)."""
    if target is None:
        return spool.mean()[:, None], 0.0
    X, labels = vectors or target_vectors(db, pool, pmeta, target, method)
    lab = None
    if clusters:
        lab = target_clusters(spool.target_rows(X)).astype(str)
    elif per_subtask and any(s is not None for s in labels):
        lab = np.array([s or "" for s in labels])
    Y, tolerance = spool.target(X, lab)
    if not np.any(Y):
        raise GradstoreError(f"target {target!r} has all-zero gradients; nothing to match")
    return Y, tolerance


def target_vectors(db: Database, pool: str, pmeta: TableMeta, target: str, method: str
                    ) -> tuple[np.ndarray, list[str | None]]:
    """A target's stored rows (n, T*d) in the pool's checkpoint order, of the type
    ``method`` reads, and their subtask labels."""
    if target == pool:
        raise GradstoreError(
            f"target {target!r} is the pool itself; omit --target for in-domain selection"
        )
    tmeta = db.meta(target)
    check_compatible(pool, pmeta, target, tmeta)
    gtype = target_type(method, pmeta, tmeta)
    # side by side in the pool's checkpoint order (the target's columns may differ)
    X = np.hstack([db.vectors(target, name, grad_type=gtype)[1]
                   for name in pmeta.checkpoint_names])
    return X, db.subtasks(target)


@dataclass
class TargetParts:
    """A target split into parts, largest first: each part's stacked rows in the pool's
    space and its label (a subtask, or ``cluster-N``)."""

    rows: list[np.ndarray]
    labels: list[str]


def target_parts(db: Database, spool: StackedPool, pool: str, pmeta: TableMeta,
                 target: str | None, method: str, clusters: bool,
                 vectors: tuple[np.ndarray, list[str | None]] | None = None) -> TargetParts:
    """The parts of a target that round-robin and ``--target-mode parts`` take turns over:
    its subtasks when every row has one (and ``clusters`` is not asked for), else the
    clusters of its rows (:func:`target_clusters`; one part when they do not separate).
    In-domain selection (no target) has one part, the pool's mean."""
    if target is None:
        return TargetParts([spool.mean()[None, :]], ["pool"])
    X, labels = vectors or target_vectors(db, pool, pmeta, target, method)
    stacked = spool.target_rows(X)
    if not np.any(stacked):
        raise GradstoreError(f"target {target!r} has all-zero gradients; nothing to match")
    if clusters or not all(s is not None for s in labels):
        lab = np.array([f"cluster-{c}" for c in target_clusters(stacked)])
    else:
        lab = np.array([str(s) for s in labels])
    keys, counts = np.unique(lab, return_counts=True)
    order = sorted(range(len(keys)), key=lambda j: (-counts[j], str(keys[j])))
    return TargetParts([stacked[lab == keys[j]] for j in order], [str(keys[j]) for j in order])


def default_memory_budget() -> int:
    """40% of the machine's RAM: the largest pool held in memory by default."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 << 30
    return int(total * 0.4)


@dataclass
class SourceCache:
    """The last pool read into RAM (by table and version), reused by the next selection."""

    key: tuple[str, int] | None = None
    source: TensorSource | None = None


STREAM_IO_MIN, STREAM_IO_MAX = 8 << 20, 64 << 20
"""Lance's read-ahead, streamed or loading the pool into RAM: a quarter of the budget within
these bounds (its default, 2 GiB, lets a load peak far above the pool)."""
SCANNER_MIN_BUDGET = 256 << 20
"""Streaming under a smaller memory budget reads row ranges instead of running Lance's
scanner, which holds ~70 MB of decoded pages (``LanceSource.ranged_reads``)."""
ROUND_SHARE = 0.5
"""Share of the memory budget one round of the default pursuit may hold when the pool is
streamed (the rest is the streamed reads' and the per-row state's)."""
LIBRARY_CODE = 48 << 20
"""Resident pages of Lance's and torch's code that a process's first scan maps (32 + 10 MB
and lancedb's 5, from /proc/self/smaps; docs/storage.md). The budget covers them too: a
streamed selection's rounds get their share less these (at least their minimum)."""


MANY_PASS_METHODS = ("gtp", "gtp-paper", "omp")
"""Methods that pass over the pool more than once (the default pursuit: the centring's
two passes, then one scan a round): a streamed ``--where`` pool is spilled for them."""
SPILL_PREFIX = "gradstore-spill-"
"""The temporary folder (in ``TMPDIR``) that holds a streamed query's rows for a selection."""


def pool_source(db: Database, table: str, mode: str, memory_budget: int | None,
                cache: SourceCache, scope: ExitStack | None = None,
                rows: np.ndarray | None = None, spill: bool = False,
                ) -> TensorSource | LanceSource:
    """The pool's rows in RAM when they take at most half of ``memory_budget`` (the rest
    is the selection's, ``ROUND_SHARE``), or with ``mode='ram'``; else streamed from Lance,
    large blocks returned to the system as they are freed for as long as ``scope`` lasts
    (``large_frees_released``). ``rows``: only these storage positions (a query's allowed
    rows), read by position into RAM, or streamed: each pass then reads those rows'
    vectors by position and no others (``LanceSource.restricted``); with ``spill`` (a
    method of many passes) the first pass also writes them to a temporary file that the
    later passes read in order (``LanceSource.spill_path``; removed when ``scope``
    ends)."""
    lsrc = db.lance_source(table)
    budget = default_memory_budget() if memory_budget is None else memory_budget
    n = lsrc.num_rows if rows is None else len(rows)
    if mode == "auto":
        meta = db.meta(table)
        itemsize = 2 if meta.vector_dtype == "float16" else 4
        need = n * lsrc.num_checkpoints * lsrc.dim * itemsize
        mode = "ram" if need <= budget * (1 - ROUND_SHARE) else "stream"
    if rows is not None and mode != "stream":
        return TensorSource(lsrc.take(rows, lsrc.dtype), lsrc.num_checkpoints,
                            lsrc.row_norms()[rows])
    if rows is not None:  # each pass reads the allowed rows' vectors, by position, only
        lsrc = lsrc.restricted(rows)
        if spill and scope is not None:
            spill_dir = scope.enter_context(tempfile.TemporaryDirectory(prefix=SPILL_PREFIX))
            lsrc.spill_path = Path(spill_dir) / "rows.bin"
    lsrc.io_buffer_size = min(STREAM_IO_MAX, max(STREAM_IO_MIN, budget // 4))
    if mode == "stream":
        lsrc.ranged_reads = budget < SCANNER_MIN_BUDGET
        if scope is not None:
            scope.enter_context(large_frees_released(
                SMALL_BUDGET_ALLOCATION if lsrc.ranged_reads else LARGE_ALLOCATION))
        return lsrc
    key = (table, lsrc.dataset.version)
    if cache.key != key:
        cache.key, cache.source = key, TensorSource(lsrc.load(), lsrc.num_checkpoints,
                                                    lsrc.row_norms())
    return cache.source


def stacked_pool(db: Database, pool: str, opts: SelectConfig, eta,
                 cache: SourceCache, scope: ExitStack | None = None,
                 rows: np.ndarray | None = None) -> StackedPool:
    """The pool (``rows``: only those storage positions) in the method's stacked space:
    local, or with its passes on Ray; centred on its mean row for gtp (``scope``: see
    :func:`pool_source`)."""
    norm = True if opts.method in COSINE_METHODS else opts.normalize
    if opts.ray is None:
        spool = StackedPool(pool_source(db, pool, opts.mode, opts.memory_budget, cache, scope,
                                        rows, spill=opts.method in MANY_PASS_METHODS),
                            eta, normalize=norm, device=ScanDevice(resolve_device(opts.device)))
    else:
        from gradstore.distributed import DistributedPool, cluster_resources

        lsrc = db.lance_source(pool)
        if rows is not None:  # each task reads its share of the allowed rows, by position
            lsrc = lsrc.restricted(rows)
        # default: one task per CPU, but none smaller than MIN_TASK_ROWS rows
        tasks = opts.ray_tasks or max(1, min(int(cluster_resources()["CPU"]),
                                             -(-lsrc.num_rows // MIN_TASK_ROWS)))
        spool = DistributedPool(lsrc, eta, normalize=norm, tasks=tasks)
    return spool.centered() if opts.method == "gtp" else spool


@dataclass
class Answer:
    """One query's answer before it becomes a Selection."""

    rows: np.ndarray
    weights: np.ndarray
    residual: float
    history: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def answer_queries(spool: StackedPool, Ys: list[np.ndarray], tols: list[float],
                   ks: list[int], pairs: list[tuple[int, int]], opts: SelectConfig,
                   bar: ScanProgress | None, parts: list[TargetParts] | None = None,
                   fixed: np.ndarray | None = None, quotas: list[tuple] | None = None
                   ) -> list[Answer]:
    """Every (target, budget) pair's answer, in ``pairs`` order, sharing the passes
    (``parts``: each target's parts, for round-robin and ``--target-mode parts``;
    ``fixed``: rows every answer keeps, ``--extend``, the new rows the best given them;
    ``quotas``: per budget, the ``--max-share`` caps the method keeps to)."""
    method = opts.method
    quotas = quotas or [()] * len(ks)
    if parts is not None:
        return _answer_by_parts(spool, Ys, parts, ks, pairs, opts, bar, fixed, quotas)
    if method in ("gtp", "gtp-paper", "omp"):
        return _answer_pursuits(spool, Ys, tols, ks, pairs, opts, bar, fixed, quotas)
    nk = 0 if fixed is None else len(fixed)
    if method == "less" and any(quotas):
        rows_of = [less_within_quotas(spool, Ys[ti], ks[bi], list(quotas[bi]), fixed=fixed,
                                      scan_progress=bar) for ti, bi in pairs]
    elif method == "less":
        found = less_topk(spool, [Ys[ti] for ti, _ in pairs], [ks[bi] - nk for _, bi in pairs],
                          scan_progress=bar, exclude=fixed)
        rows_of = [rows for rows, _ in found]
    else:
        rows_of = [random_subset(spool.num_rows, ks[bi] - nk, seed=opts.seed, exclude=fixed,
                                 quotas=quotas[bi]) for _, bi in pairs]
    if fixed is not None:
        rows_of = [np.concatenate([fixed, rows]) for rows in rows_of]
    out = []
    for (ti, _), rows in zip(pairs, rows_of, strict=True):
        _, res = fit_support(spool, rows, Ys[ti])
        out.append(Answer(rows, np.ones(len(rows)), res))
    return out


def _answer_pursuits(spool: StackedPool, Ys: list[np.ndarray], tols: list[float],
                     ks: list[int], pairs: list[tuple[int, int]], opts: SelectConfig,
                     bar: ScanProgress | None, fixed: np.ndarray | None,
                     quotas: list[tuple]) -> list[Answer]:
    """gtp, gtp-paper and omp, every pair in one lockstep run. With ``fixed`` rows, gtp
    keeps them as members its swaps never remove; gtp-paper and omp fit what the kept
    rows' NNLS fit leaves of the target with k minus their count new rows, and the
    answer's weights are the NNLS fit of kept and new rows together."""
    keep = fixed is not None and opts.method != "gtp"
    queries = []
    for ti, bi in pairs:
        Y, k, caps = Ys[ti], ks[bi], quotas[bi]
        if keep:
            W, _ = fit_support(spool, fixed, Y)
            Y = Y - spool.rows(fixed).double().numpy().T @ W
            k -= len(fixed)
            caps = tuple(q.holding(fixed) for q in caps)  # the kept rows fill them too
        queries.append(Query(Y, k, m=_candidates(opts, spool, k),
                             tolerance=_tolerance(opts, tols[ti]),
                             fixed=fixed if not keep else None,
                             exclude=fixed if keep else None, quotas=caps))
    out = []
    for (ti, _), q, r in zip(pairs, queries, _pursue(spool, queries, opts, bar, max(ks)),
                             strict=True):
        rows, weights, residual = r.rows, r.total_weights, r.residual
        if keep:
            rows = np.concatenate([fixed, rows])
            W, residual = fit_support(spool, rows, Ys[ti])
            weights = W.sum(1)
        out.append(Answer(rows, weights, residual, r.history,
                          ({"candidates": r.candidates} if r.candidates is not None else {})
                          | {"candidates_per_scan": q.m} | r.details))
    return out


def _answer_by_parts(spool: StackedPool, Ys: list[np.ndarray], parts: list[TargetParts],
                     ks: list[int], pairs: list[tuple[int, int]], opts: SelectConfig,
                     bar: ScanProgress | None, fixed: np.ndarray | None,
                     quotas: list[tuple]) -> list[Answer]:
    """Round-robin (one scan for every pair), or a gtp pursuit per part with equal shares
    of the budget (``--target-mode parts``), their picks taken in turn. Each answer
    records its parts, how many rows each took and the copies passed over."""
    if opts.method == "round-robin":
        queries = [PartsQuery(part_columns(parts[ti].rows, opts.part_score), ks[bi], fixed,
                              quotas[bi]) for ti, bi in pairs]
        found = round_robin(spool, queries, scan_progress=bar)
        taken = [(r.rows, r.per_part, {"copies_set_aside": r.copies_set_aside,
                                       "scans": r.scans}) for r in found]
    else:
        taken = _gtp_by_parts(spool, parts, ks, pairs, opts, bar, fixed, quotas)
    out = []
    for (ti, _), (rows, per_part, extra) in zip(pairs, taken, strict=True):
        _, res = fit_support(spool, rows, Ys[ti])
        out.append(Answer(rows, np.ones(len(rows)), res, extra=extra | {
            "parts": parts[ti].labels, "per_part": [int(c) for c in per_part],
            "part_score": opts.part_score if opts.method == "round-robin" else None}))
    return out


def _gtp_by_parts(spool: StackedPool, parts: list[TargetParts], ks: list[int],
                  pairs: list[tuple[int, int]], opts: SelectConfig, bar,
                  fixed: np.ndarray | None = None, quotas: list[tuple] | None = None
                  ) -> list[tuple]:
    """A gtp query per (pair, part): the part's mean, ``ceil``/``floor`` of k over the
    parts (larger parts first), its own tolerance; all in one lockstep run. A row two
    parts chose counts once (the selection then holds fewer than k: recorded). ``fixed``
    (``--extend``): every part's pursuit starts from the kept rows and keeps them, its
    new rows a share of what the budget leaves; the answer is the kept rows, then the
    parts' new rows in turn. ``quotas`` (per budget): a pair's part pursuits share one
    count of the caps (the kept rows counted once), so no step of one can fill a value
    the others hold, and the answer keeps the caps."""
    kept = np.zeros(0, dtype=np.int64) if fixed is None else fixed
    queries, owner = [], []
    for j, (ti, bi) in enumerate(pairs):
        P, room = len(parts[ti].rows), ks[bi] - len(kept)
        caps = () if quotas is None else quotas[bi]
        counts = QuotaCounts(caps, kept) if caps else None
        for p, rows in enumerate(parts[ti].rows):
            k = room // P + (p < room % P)
            if k == 0:
                continue
            Y = rows.mean(0)[:, None]
            tol = _tolerance(opts, target_tolerance(rows))
            queries.append(Query(Y, k + len(kept), m=_candidates(opts, spool, k + len(kept)),
                                 tolerance=tol, fixed=kept, quotas=caps, counts=counts))
            owner.append((j, p))
    found = _pursue(spool, queries, opts, bar, max(q.k for q in queries))
    picks: list[list[list[int]]] = [[[] for _ in parts[ti].rows] for ti, _ in pairs]
    held = {int(x) for x in kept}
    for (j, p), r in zip(owner, found, strict=True):
        picks[j][p] = [int(x) for x in r.rows if int(x) not in held]
    out = []
    for lists in picks:
        rows, part_of, seen = [int(x) for x in kept], [], set()  # (picks hold no kept row)
        for turn in range(max(len(x) for x in lists)):
            for p, chosen in enumerate(lists):
                if turn < len(chosen) and chosen[turn] not in seen:
                    seen.add(chosen[turn])
                    rows.append(chosen[turn])
                    part_of.append(p)
        per_part = np.bincount(np.asarray(part_of, dtype=np.int64), minlength=len(lists))
        overlap = sum(len(x) for x in lists) - (len(rows) - len(kept))
        out.append((np.asarray(rows, dtype=np.int64), per_part, {"parts_overlap": overlap}))
    return out


def _candidates(opts: SelectConfig, spool: StackedPool, k: int) -> int:
    """Candidates per scan: as given, else 2k; for the default pursuit over a streamed pool,
    no more than one round can hold in ``ROUND_SHARE`` of the memory budget."""
    if opts.m is not None:
        return opts.m
    if opts.method != "gtp" or not isinstance(spool.source, LanceSource):
        return 2 * k
    return min(2 * k, candidates_within(_work_share(opts), k, spool.width))


def _work_share(opts: SelectConfig) -> int:
    """Bytes a streamed selection's round may hold (``ROUND_SHARE`` of the budget, less
    ``LIBRARY_CODE``)."""
    budget = default_memory_budget() if opts.memory_budget is None else opts.memory_budget
    return max(0, int(budget * ROUND_SHARE) - LIBRARY_CODE)


def _tolerance(opts: SelectConfig, target_error: float) -> float:
    if opts.method != "gtp":
        return 0.0
    return target_error if opts.tolerance == "auto" else float(opts.tolerance)


def _pursue(spool, queries, opts: SelectConfig, bar, kmax: int):
    if opts.method in PURSUITS:
        pursuit = gtp if opts.method == "gtp" else gtp_paper
        if opts.partitions:
            return partitioned_gtp(spool, queries, opts.partitions, pursuit=pursuit,
                                   max_iter=opts.max_iter, min_gain=opts.min_gain,
                                   part_progress=bar)
        return pursuit(spool, queries, max_iter=opts.max_iter, min_gain=opts.min_gain,
                       scan_progress=bar)
    step = tqdm(total=kmax, desc="omp", unit="pick", leave=False) if opts.progress else None
    try:
        return omp(spool, queries, progress=(lambda _: step.update(1)) if step else None)
    finally:
        if step is not None:
            step.close()


def run_selection(
    db: Database,
    pool: str,
    targets: Sequence[str | None],
    budgets: Sequence[Budget],
    opts: SelectConfig,
    cache: SourceCache | None = None,
) -> list[Selection]:
    """Answer every (target, budget) pair in one run over the pool.

    ``opts.partitions=P`` runs the pursuit on P parts of the pool, then on the union of
    their selections. ``opts.ray`` (``local`` or a cluster address) runs every full pass
    over the pool, and the parts, as Ray tasks (``ray_tasks`` of them per pass; default
    one per CPU of the cluster).
    """
    opts.validate()
    if not targets or not budgets:
        raise GradstoreError("give at least one target (or none for in-domain) and one budget")
    cache = cache or SourceCache()
    if opts.save:
        db.check_selection_log()  # a damaged log is refused before any computing
    if opts.ray is None:
        session: Any = nullcontext()
    else:
        from gradstore.distributed import session as ray_session

        session = ray_session(opts.ray)
    with session, db.pinned([pool, *[t for t in targets if t is not None]]) as versions, \
            ExitStack() as scope:
        pause_point("select-pinned")
        pmeta = db.meta(pool)
        check_complete(pool, pmeta)
        allowed, query = allowed_rows(db, pool, opts)  # None: every row may be chosen
        kept, extended = kept_rows(db, pool, opts)
        allowed, fixed = with_kept(allowed, kept)  # fixed: kept rows' places in the pool
        query |= extended
        n = db.num_rows(pool) if allowed is None else len(allowed)
        ks = [budget_count(b, n) for b in budgets]
        shares = share_fields(db, pool, opts, allowed)
        quotas = [quotas_for(shares, k) for k in ks]  # per budget
        if shares:
            query["max_share"] = {f.name: f.share for f in shares}
        if fixed is not None and min(ks) <= len(fixed):
            raise GradstoreError(
                f"--extend keeps {len(fixed)} rows and the budget "
                f"{budget_label(budgets[ks.index(min(ks))])} is {min(ks)} rows: nothing to "
                "add; give a budget above the kept rows")
        eta = checkpoint_weights(pmeta, opts.checkpoint_weights)
        t0 = time.perf_counter()
        spool = stacked_pool(db, pool, opts, eta, cache, scope, allowed)
        per_subtask = opts.method in COSINE_METHODS or opts.target_mode == "joint"
        clusters = opts.target_mode == "clusters"
        read = {t: target_vectors(db, pool, pmeta, t, opts.method)  # each target read once
                for t in dict.fromkeys(targets) if t is not None}
        found = [target_matrix(db, spool, pool, pmeta, t, per_subtask, opts.method,
                               clusters=clusters and opts.method != "round-robin",
                               vectors=read.get(t)) for t in targets]
        parts = None
        if opts.method == "round-robin" or opts.target_mode == "parts":
            parts = [target_parts(db, spool, pool, pmeta, t, opts.method, clusters,
                                  vectors=read.get(t)) for t in targets]
        pairs = [(ti, bi) for ti in range(len(targets)) for bi in range(len(budgets))]
        bar = ScanProgress(n, opts.method) if opts.progress else None
        try:
            answers = answer_queries(spool, [f[0] for f in found], [f[1] for f in found], ks,
                                     pairs, opts, bar, parts, fixed, quotas)
        finally:
            if bar is not None:
                bar.close()
        pause_point("select-computed")
        for a in answers if shares else []:
            a.extra["shares_taken"] = shares_taken(shares, np.asarray(a.rows, dtype=np.int64))
        if allowed is not None:  # rows of the allowed rows' pool -> rows of the stored pool
            answers = [replace(a, rows=allowed[np.asarray(a.rows, dtype=np.int64)])
                       for a in answers]
        run = SelectionRun(pool, list(targets), list(budgets), ks, pairs, eta, spool, pmeta)
        sels = _selections(db, run, answers, opts, time.perf_counter() - t0)
        for s in sels:
            s.params["versions"] = versions
            s.params.update(query)
        if opts.save:
            pause_point("save-selection")
            db.save_selections(sels)
        return sels


@dataclass
class SelectionRun:
    """What one run of ``select`` asked, over which pool: the (target, budget) pairs it
    answers (indices into ``targets`` and ``budgets``; ``ks`` the budgets as counts)."""

    pool: str
    targets: list[str | None]
    budgets: list[Budget]
    ks: list[int]
    pairs: list[tuple[int, int]]
    eta: list[float] | None
    spool: StackedPool
    pmeta: TableMeta


def _selections(db: Database, run: SelectionRun, answers: list[Answer], opts: SelectConfig,
                seconds: float) -> list[Selection]:
    """The answers as Selections: ids, weights, residual, and how they were made."""
    types = {t: target_type(opts.method, run.pmeta, db.meta(t))
             for t in run.targets if t is not None}
    params = _params(opts, run.eta, run.spool, run.pmeta, db.num_rows(run.pool),
                     len(run.pairs))
    return [
        Selection(
            selection_id=uuid.uuid4().hex[:12], method=opts.method,
            budget=budget_label(run.budgets[bi]), k=run.ks[bi], pool=run.pool,
            target=run.targets[ti], ids=db.ids_at(run.pool, a.rows),
            weights=np.asarray(a.weights, dtype=np.float64), residual=float(a.residual),
            seconds=seconds, created=_now(), history=[float(h) for h in a.history],
            params=dict(params, target_grad_type=types.get(run.targets[ti])) | a.extra,
        )
        for (ti, bi), a in zip(run.pairs, answers, strict=True)
    ]


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _params(opts: SelectConfig, eta, spool: StackedPool, pmeta: TableMeta, n: int,
            queries: int) -> dict[str, Any]:
    """What a selection records about how it was made."""
    return {
        "target_mode": opts.target_mode, "normalize": opts.normalize, "m": opts.m,
        "max_iter": opts.max_iter, "min_gain": opts.min_gain, "target_tolerance": opts.tolerance,
        "seed": opts.seed, "checkpoint_weights": eta,
        "scan_mode": type(spool.source).__name__, "queries_in_run": queries, "pool_rows": n,
        "partitions": opts.partitions, "ray": opts.ray,
        "ray_tasks": getattr(spool, "tasks", None), "pool_grad_type": pmeta.grad_type,
        "centered": spool.center is not None, "device": str(spool.device.device),
    }


def stop_note(sel: Selection) -> str | None:
    """Why a selection holds fewer than k examples, or read a target of another gradient
    type than the pool, and what to do; None when neither.

    gtp-paper and omp stop once no further pool example lowers the residual (at the NNLS
    optimum every other example correlates negatively with what is left). This happens
    above all when the target holds another gradient type than the pool: a weighted sum of
    Adam rows fits a plain-SGD target poorly. Targets ingested by this version store both
    types, and each method reads the one it needs.
    """
    note = None
    if len(sel.ids) < sel.k and sel.params.get("copies_set_aside"):
        return (f"{sel.method} chose {len(sel.ids)} of the k={sel.k} allowed: the pool's "
                f"other rows are copies of chosen ones ({sel.params['copies_set_aside']} set "
                f"aside: identical vectors or cosine >= 0.99), and {sel.method} takes each "
                "example once; use a smaller budget, or --method gtp-paper / less to take "
                "copies")
    if len(sel.ids) < sel.k and sel.params.get("max_share"):
        return (f"{sel.method} chose {len(sel.ids)} of the k={sel.k} allowed: --max-share "
                f"{sel.params['max_share']} caps each value at its share of k, and the values "
                f"the pool holds cannot fill it ({sel.params.get('shares_taken')}); raise "
                "the share or lower the budget")
    if len(sel.ids) < sel.k and sel.params.get("parts_overlap"):
        return (f"{sel.method} chose {len(sel.ids)} of the k={sel.k} allowed: "
                f"{sel.params['parts_overlap']} of the rows the target's parts chose were "
                "chosen by two parts and count once; give a larger budget to fill it")
    if len(sel.ids) < sel.k:
        note = (f"{sel.method} chose {len(sel.ids)} of the k={sel.k} allowed: more pool "
                f"examples do not lower the residual ({sel.residual:.2f} of the target's norm)")
    used = sel.params.get("target_grad_type")
    wanted = wanted_type(sel.method, sel.params.get("pool_grad_type"))
    if sel.target is None or not used or not wanted or used == wanted:
        return None if note is None else f"{note}; use --method gtp to fill the budget"
    mismatch = (f"target {sel.target!r} stores only {used} gradients and {sel.method} reads "
                f"{wanted} ones; add them with the same `gradstore ingest` command plus "
                f"--grad-type {wanted},{used} (only the new type is computed)")
    return mismatch if note is None else f"{note}; {mismatch}"

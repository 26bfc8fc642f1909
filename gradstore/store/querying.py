"""Answering selection queries: store tables in, selectors run, selections out."""

from __future__ import annotations

import datetime as _dt
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from gradstore.choices import METHODS, PURSUITS, TARGET_MODES
from gradstore.errors import GradstoreError
from gradstore.selectors.budget import Budget, budget_count, budget_label
from gradstore.selectors.gtp import gtp
from gradstore.selectors.gtp_paper import gtp_paper
from gradstore.selectors.less import less_topk
from gradstore.selectors.omp import fit_support, omp
from gradstore.selectors.partitioned import partitioned_gtp
from gradstore.selectors.query import Query, target_tolerance
from gradstore.selectors.random_subset import random_subset
from gradstore.selectors.stacked import StackedPool, stack_rows
from gradstore.store.meta import TableMeta
from gradstore.store.selections import Selection

if TYPE_CHECKING:
    from gradstore.store.store import Store

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


@contextmanager
def _ray_cluster(address: str) -> Iterator[None]:
    from gradstore.distributed.cluster import ray_cluster

    with ray_cluster(address):
        yield


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


def target_type(method: str, pmeta: TableMeta, tmeta: TableMeta) -> str | None:
    """The gradient type of a target that ``method`` reads: LESS scores plain SGD target
    gradients against the pool (as LESS does); the pursuits fit the target with pool rows,
    so they read the pool's own type. A target without the wanted type gives what it has."""
    wanted = "sgd" if method == "less" else pmeta.grad_type
    return wanted if wanted in tmeta.grad_types else tmeta.grad_type


def target_matrix(
    store: Store, spool: StackedPool, pool: str, pmeta: TableMeta, target: str | None,
    per_subtask: bool, method: str,
) -> tuple[np.ndarray, float]:
    """The target columns Y (D, C) in the pool's stacked space, and the sampling error of
    their mean (``target_tolerance``; 0 for the in-domain target, the pool's own mean)."""
    if target is None:
        return spool.mean()[:, None], 0.0
    if target == pool:
        raise GradstoreError(
            f"target {target!r} is the pool itself; omit --target for in-domain selection"
        )
    tmeta = store.meta(target)
    check_compatible(pool, pmeta, target, tmeta)
    gtype = target_type(method, pmeta, tmeta)
    # side by side in the pool's checkpoint order (the target's columns may differ)
    X = np.hstack([store.vectors(target, name, grad_type=gtype)[1]
                   for name in pmeta.checkpoint_names])
    if spool.center is not None:
        X = X - spool.center
    rows = stack_rows(X, spool.scales, spool.normalize, len(pmeta.checkpoints))
    labels = store.subtasks(target)
    lab = None
    if per_subtask and any(s is not None for s in labels):
        lab = np.array([s or "" for s in labels])
        Y = np.stack([rows[lab == key].mean(0) for key in np.unique(lab)], 1)
    else:
        Y = rows.mean(0)[:, None]
    if not np.any(Y):
        raise GradstoreError(f"target {target!r} has all-zero gradients; nothing to match")
    return Y, target_tolerance(rows, lab)


def run_selection(
    store: Store,
    pool: str,
    targets: Sequence[str | None],
    budgets: Sequence[Budget],
    method: str = "gtp",
    *,
    target_mode: str = "mean",
    normalize: bool = True,
    m: int | None = None,
    max_iter: int = 30,
    tol: float = 1e-3,
    tolerance: float | str = "auto",
    seed: int = 0,
    checkpoint_weights: Sequence[float] | None = None,
    mode: str = "auto",
    memory_budget: int | None = None,
    progress: bool = False,
    save: bool = True,
    partitions: int | None = None,
    ray: str | None = None,
    ray_tasks: int | None = None,
) -> list[Selection]:
    """Answer every (target, budget) pair in one run over the pool.

    ``partitions=P`` runs GTP on P parts of the pool, then on the union of their
    selections. ``ray`` (``local`` or a cluster address) runs every full pass over
    the pool, and the parts, as Ray tasks (``ray_tasks`` of them per pass; default
    one per CPU of the cluster).
    """
    if method not in METHODS:
        raise GradstoreError(f"method {method!r} is not one of {', '.join(METHODS)}")
    if target_mode not in TARGET_MODES:
        raise GradstoreError(f"target mode {target_mode!r} is not one of mean, joint")
    if not targets or not budgets:
        raise GradstoreError("give at least one target (or none for in-domain) and one budget")
    if tolerance != "auto" and not (isinstance(tolerance, (int, float))
                                    and np.isfinite(tolerance) and tolerance >= 0):
        raise GradstoreError(f"--tolerance {tolerance!r} must be 'auto' or a number >= 0")
    if max_iter < 1:
        raise GradstoreError(f"max_iter {max_iter} must be at least 1")
    if m is not None and m < 1:
        raise GradstoreError(f"candidate count m={m} must be at least 1")
    if partitions is not None and (isinstance(partitions, bool) or int(partitions) != partitions
                                   or partitions < 1):
        raise GradstoreError(f"--partitions {partitions!r} must be a whole number >= 1")
    if partitions is not None and method not in PURSUITS:
        raise GradstoreError(
            f"--partitions applies to gtp and gtp-paper only, not {method}; drop it (with "
            f"--ray, {method}'s scans are spread over the cluster anyway)"
        )
    if ray_tasks is not None and ray_tasks < 1:
        raise GradstoreError(f"--ray-tasks {ray_tasks} must be at least 1")
    with nullcontext() if ray is None else _ray_cluster(ray):
        pmeta = store.meta(pool)
        check_complete(pool, pmeta)
        n = store.num_rows(pool)
        ks = [budget_count(b, n) for b in budgets]
        labels = [budget_label(b) for b in budgets]
        if checkpoint_weights is not None:
            eta: Any = list(checkpoint_weights)
        elif all(lr is not None for lr in pmeta.lrs) and sum(pmeta.lrs) > 0:  # type: ignore[arg-type]
            eta = pmeta.lrs
        else:
            eta = None
        t0 = time.perf_counter()
        norm = True if method == "less" else normalize
        if ray is None:
            source = store.source(pool, mode, memory_budget)
            spool = StackedPool(source, eta, normalize=norm)
        else:
            from gradstore.distributed.cluster import cluster_resources
            from gradstore.distributed.pool import DistributedPool

            source = store.source(pool, "stream")
            # default: one task per CPU, but none smaller than MIN_TASK_ROWS rows
            tasks = ray_tasks or max(1, min(int(cluster_resources()["CPU"]),
                                            -(-n // MIN_TASK_ROWS)))
            spool = DistributedPool(source, eta, normalize=norm, tasks=tasks)
        if method == "gtp":
            spool = spool.centered()
        per_subtask = method == "less" or target_mode == "joint"
        found = [target_matrix(store, spool, pool, pmeta, t, per_subtask, method)
                 for t in targets]
        Ys, tols = [f[0] for f in found], [f[1] for f in found]
        types = {t: target_type(method, pmeta, store.meta(t)) for t in targets if t is not None}
        pairs = [(ti, bi) for ti in range(len(targets)) for bi in range(len(budgets))]
        bar = ScanProgress(n, method) if progress else None
        results: list[tuple[np.ndarray, np.ndarray, float, list[float], dict]] = []
        try:
            if method in ("gtp", "gtp-paper", "omp"):
                queries = [Query(Ys[ti], ks[bi], m=m if m is not None else 2 * ks[bi],
                                 tolerance=0.0 if method != "gtp" else
                                 tols[ti] if tolerance == "auto" else float(tolerance))
                           for ti, bi in pairs]
                pursuit = gtp if method == "gtp" else gtp_paper
                if method in PURSUITS and partitions:
                    out = partitioned_gtp(spool, queries, partitions, pursuit=pursuit,
                                          max_iter=max_iter, tol=tol, part_progress=bar)
                elif method in PURSUITS:
                    out = pursuit(spool, queries, max_iter=max_iter, tol=tol, scan_progress=bar)
                else:
                    step = tqdm(total=max(ks), desc="omp", unit="pick", leave=False) if progress \
                        else None
                    out = omp(spool, queries, progress=(lambda _: step.update(1)) if step else None)
                    if step is not None:
                        step.close()
                results = [(r.rows, r.total_weights, r.residual, r.history,
                            ({"candidates": r.candidates} if r.candidates is not None else {})
                            | r.details) for r in out]
            elif method == "less":
                found = less_topk(spool, [Ys[ti] for ti, _ in pairs], [ks[bi] for _, bi in pairs],
                                  scan_progress=bar)
                for (ti, _), (rows, _) in zip(pairs, found, strict=True):
                    _, res = fit_support(spool, rows, Ys[ti])
                    results.append((rows, np.ones(len(rows)), res, [], {}))
            else:
                for ti, bi in pairs:
                    rows = random_subset(n, ks[bi], seed=seed)
                    _, res = fit_support(spool, rows, Ys[ti])
                    results.append((rows, np.ones(len(rows)), res, [], {}))
        finally:
            if bar is not None:
                bar.close()
        seconds = time.perf_counter() - t0
        ids = store.ids(pool)
        created = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        params = {
            "target_mode": target_mode, "normalize": normalize, "m": m, "max_iter": max_iter,
            "tol": tol, "target_tolerance": tolerance, "seed": seed, "checkpoint_weights": eta,
            "scan_mode": type(source).__name__,
            "queries_in_run": len(pairs), "pool_rows": n, "partitions": partitions,
            "ray": ray, "ray_tasks": getattr(spool, "tasks", None),
            "pool_grad_type": pmeta.grad_type, "centered": spool.center is not None,
        }
        sels = []
        for (ti, bi), (rows, w, res, hist, extra) in zip(pairs, results, strict=True):
            sels.append(
                Selection(
                    selection_id=uuid.uuid4().hex[:12], method=method, budget=labels[bi], k=ks[bi],
                    pool=pool, target=targets[ti], ids=[ids[i] for i in rows],
                    weights=np.asarray(w, dtype=np.float64), residual=float(res), seconds=seconds,
                    created=created, history=[float(h) for h in hist],
                    params=dict(params, target_grad_type=types.get(targets[ti]))
                    | extra,
                )
            )
        if save:
            store._save(sels)
        return sels

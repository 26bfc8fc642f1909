"""`gradstore run`: warm-up, ingest pool and targets, select, export, in one resumable command.

Everything lands in one working directory::

    OUT/warmup/checkpoint-*      the warm-up trajectory (adapter + AdamW state + lr)
    OUT/store/                   the gradient store (table ``pool`` and one per target)
    OUT/selections/*.jsonl       one exported training set per (target, method, budget)
    OUT/run.json                 what was selected and where it was written

Each step is the library call of the matching command, so running the same
command again after an interruption resumes the step that was cut off and skips
the finished ones (a finished warm-up or ingestion is recognised, not redone).
"""

from __future__ import annotations

import json
import os
import re
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from gradstore.budget import budget_count
from gradstore.config import IngestConfig, RunConfig, WarmupConfig, with_options
from gradstore.errors import TableConflict
from gradstore.grads.data import read_records
from gradstore.grads.warmup import warmup
from gradstore.ops.export import export_selection
from gradstore.ops.ingest import run_ingest
from gradstore.ops.select import run_selection, stop_note
from gradstore.store.database import Database

POOL_TABLE = "pool"


@dataclass
class RunSummary:
    out: str
    store: str
    checkpoints: list[str]
    selections: list[dict[str, Any]]
    seconds: float
    steps: dict[str, str] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [f"gradstore run in {self.out} ({self.seconds:.0f}s)"]
        out += [f"  {step}: {what}" for step, what in self.steps.items()]
        out.append(f"  {'method':<7} {'target':<16} {'budget':<7} {'chosen':>9}  residual  export")
        for s in self.selections:
            out.append(
                f"  {s['method']:<7} {s['target'] or '(in-domain)':<16} {s['budget']:<7} "
                f"{s['chosen']:>4} of {s['k']:<4}{s['residual']:8.4f}  {s['export']}"
            )
        notes = dict.fromkeys(s["note"] for s in self.selections if s.get("note"))
        out += [f"  note: {n}" for n in notes]
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def target_tables(paths: tuple[str, ...]) -> list[str]:
    """A table name per target file: its stem, made safe and unique."""
    names: list[str] = []
    for p in paths:
        stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(p).name.split(".")[0]).strip("_") or "target"
        name, n = stem, 2
        while name in names or name == POOL_TABLE:
            name, n = f"{stem}_{n}", n + 1
        names.append(name)
    return names


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "", text.replace("%", "pct")) or "budget"


def _ingest(db: Database, cfg: RunConfig, ingest: IngestConfig):
    """Ingest (resuming); with ``--overwrite``, a table from other settings is replaced, while
    one from the same settings is kept rather than recomputed."""
    try:
        return run_ingest(db, ingest)
    except TableConflict:
        if not cfg.overwrite:
            raise
        return run_ingest(db, replace(ingest, overwrite=True))


def run_pipeline(cfg: RunConfig) -> RunSummary:
    from gradstore.grads.model import shared_models

    cfg.validate()
    if cfg.cluster.ray is None:
        cluster: Any = nullcontext()
    else:
        from gradstore.distributed import session

        cluster = session(cfg.cluster.ray)  # one connection for every step
    with shared_models(), cluster:  # the model and tokenizer are loaded once for all steps
        return _run(cfg)


def _check_inputs(cfg: RunConfig) -> None:
    """Bad data or budgets fail before any training."""
    n = len(read_records(cfg.data, cfg.split, cfg.encoding))
    for b in cfg.budgets:
        budget_count(b, n)
    for path in cfg.targets:
        read_records(path, encoding=cfg.encoding)


def _run(cfg: RunConfig) -> RunSummary:
    started = time.perf_counter()
    _check_inputs(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    steps: dict[str, str] = {}
    warm = warmup(WarmupConfig(lm=cfg.lm, data=cfg.data, out=str(out / "warmup"),
                               split=cfg.split, encoding=cfg.encoding, train=cfg.train,
                               overwrite=cfg.overwrite, progress=cfg.progress))
    steps["warm-up"] = (f"{len(warm.checkpoints)} checkpoints from {warm.examples} examples "
                        f"({warm.status})")
    checkpoints = tuple(warm.checkpoint_paths)
    db = Database(out / "store")
    names = _ingest_all(db, cfg, checkpoints, steps)
    records = _select_and_export(db, cfg, names, out / "selections")
    summary = RunSummary(str(out), str(out / "store"), list(checkpoints), records,
                         time.perf_counter() - started, steps)
    tmp = out / ".run.json.tmp"
    tmp.write_text(json.dumps(summary.to_dict(), indent=1) + "\n")
    os.replace(tmp, out / "run.json")
    return summary


def _ingest_all(db: Database, cfg: RunConfig, checkpoints: tuple[str, ...],
                steps: dict[str, str]) -> list[str]:
    """The pool, then every target (the pool's gradient type and sgd); the target tables."""
    common = dict(lm=cfg.lm, checkpoints=checkpoints, gradients=cfg.gradients,
                  cluster=cfg.cluster, encoding=cfg.encoding, progress=cfg.progress)
    pool = _ingest(db, cfg, IngestConfig(table=POOL_TABLE, data=cfg.data, split=cfg.split,
                                         kind="pool", **common))
    steps["ingest pool"] = f"{pool.rows_present + pool.rows_written} rows ({pool.status})"
    names = target_tables(cfg.targets)
    pool_type = db.meta(POOL_TABLE).grad_type
    types = pool_type if pool_type == "sgd" else f"{pool_type},sgd"
    for name, path in zip(names, cfg.targets, strict=True):
        target = IngestConfig(table=name, data=path, kind="target",
                              subtask_field=cfg.subtask_field, **common)
        t = _ingest(db, cfg, with_options(target, grad_type=types))
        steps[f"ingest {name}"] = f"{t.rows_present + t.rows_written} rows ({t.status})"
    return names


def _select_and_export(db: Database, cfg: RunConfig, names: list[str],
                       sel_dir: Path) -> list[dict[str, Any]]:
    records = []
    for method in cfg.methods:
        opts = replace(cfg.select, method=method, progress=cfg.progress, ray=cfg.cluster.ray)
        sels = run_selection(db, POOL_TABLE, list(names) or [None], list(cfg.budgets), opts)
        for sel in sels:
            path = sel_dir / f"{sel.target or 'in-domain'}-{method}-{_slug(sel.budget)}.jsonl"
            export_selection(db, sel.selection_id, path, data=cfg.data, split=cfg.split,
                             encoding=cfg.encoding)
            records.append({
                "selection_id": sel.selection_id, "method": method, "target": sel.target,
                "budget": sel.budget, "k": int(sel.k), "chosen": len(sel.ids),
                "residual": float(sel.residual), "seconds": float(sel.seconds),
                "export": str(path), "note": stop_note(sel),
            })
    return records

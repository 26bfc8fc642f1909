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

from gradstore.choices import METHODS
from gradstore.errors import GradstoreError, TableConflict
from gradstore.grads.ingestion import IngestConfig
from gradstore.ops.export import export_selection
from gradstore.ops.ingest import run_ingest
from gradstore.ops.select import SelectOptions, run_selection, stop_note
from gradstore.store.database import Database

POOL_TABLE = "pool"


@dataclass(frozen=True)
class RunConfig:
    """One `gradstore run`. Every field maps to a command-line flag."""

    model: str
    data: str
    """The pool file."""
    out: str
    """Working directory (created; a rerun resumes in it)."""
    targets: tuple[str, ...] = ()
    """Target data files; none: in-domain selection."""
    budgets: tuple[str, ...] = ("5%",)
    methods: tuple[str, ...] = ("gtp",)
    gguf_file: str | None = None
    split: str | None = None
    subtask_field: str | None = None
    target_mode: str = "mean"
    fraction: float = 0.05
    num_examples: int | None = None
    epochs: int = 4
    lr: float = 2e-5
    warmup_ratio: float = 0.03
    batch_size: int = 8
    grad_accum: int = 1
    max_length: int = 2048
    lora_r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] | None = None
    lora_layers: str | None = None
    grad_type: str | None = None
    """Pool gradients (default adam). Targets store the pool's type and sgd (GTP and OMP
    read the first, LESS the second)."""
    projection: str = "rademacher"
    proj_dim: int = 8192
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    vector_dtype: str = "float16"
    gradient_checkpointing: bool = False
    overwrite: bool = False
    """Replace a warm-up and tables in ``out`` left by a run with other settings."""
    ray: str | None = None
    """Ingest and select on Ray: local, auto or a cluster address (the warm-up runs here)."""
    workers: int | None = None
    """Ray ingestion workers (default one per GPU, else one per CPU)."""
    progress: bool = True

    def validate(self) -> None:
        from gradstore.selectors.budget import parse_budget

        if self.workers is not None and self.ray is None:
            raise GradstoreError("--workers applies to Ray ingestion: add --ray ADDRESS")

        if not self.methods or any(m not in METHODS for m in self.methods):
            raise GradstoreError(
                f"--method {list(self.methods)} must name some of {', '.join(METHODS)}"
            )
        if not self.budgets:
            raise GradstoreError("give at least one --budget, e.g. 5%")
        for b in self.budgets:
            parse_budget(b)
        for path in (self.data, *self.targets):
            if not Path(path).exists():
                raise GradstoreError(f"data file {path!r} does not exist; check the path")
        out = Path(self.out)
        if out.exists() and not out.is_dir():
            raise GradstoreError(f"--out {self.out!r} is a file; give a working directory")


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


def _ingest(db: Database, overwrite: bool, cfg: IngestConfig, ray: str | None, **workers: Any):
    """Ingest (resuming); with ``overwrite``, a table from other settings is replaced, while one
    from the same settings is kept rather than recomputed."""
    try:
        return run_ingest(db, cfg, ray, **workers)
    except TableConflict:
        if not overwrite:
            raise
        return run_ingest(db, replace(cfg, overwrite=True), ray, **workers)


def run_pipeline(cfg: RunConfig) -> RunSummary:
    from gradstore.grads.model import shared_models

    cfg.validate()
    if cfg.ray is None:
        cluster: Any = nullcontext()
    else:
        from gradstore.distributed import session

        cluster = session(cfg.ray)  # one connection for every step
    with shared_models(), cluster:  # the model and tokenizer are loaded once for all steps
        return _run(cfg)


def _run(cfg: RunConfig) -> RunSummary:
    from gradstore.config import config_from
    from gradstore.grads.data import read_records
    from gradstore.grads.warmup import WarmupConfig, warmup
    from gradstore.selectors.budget import budget_count

    started = time.perf_counter()
    n = len(read_records(cfg.data, cfg.split))  # bad data or budgets fail before any training
    for b in cfg.budgets:
        budget_count(b, n)
    for path in cfg.targets:
        read_records(path)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    steps: dict[str, str] = {}

    warm = warmup(config_from(WarmupConfig, cfg, out=str(out / "warmup")))
    steps["warm-up"] = (f"{len(warm.checkpoints)} checkpoints from {warm.examples} examples "
                        f"({warm.status})")
    checkpoints = tuple(warm.checkpoint_paths)

    db = Database(out / "store")
    common = dict(
        model=cfg.model, gguf_file=cfg.gguf_file, checkpoints=checkpoints,
        projection=cfg.projection, proj_dim=cfg.proj_dim, seed=cfg.seed,
        max_length=cfg.max_length, batch_size=cfg.batch_size, device=cfg.device,
        dtype=cfg.dtype, vector_dtype=cfg.vector_dtype, progress=cfg.progress,
    )
    workers = {} if cfg.ray is None else {"workers": cfg.workers}
    pool = _ingest(db, cfg.overwrite, IngestConfig(
        table=POOL_TABLE, data=cfg.data, split=cfg.split, kind="pool", grad_type=cfg.grad_type,
        **common,
    ), cfg.ray, **workers)
    steps["ingest pool"] = f"{pool.rows_present + pool.rows_written} rows ({pool.status})"
    names = target_tables(cfg.targets)
    pool_type = db.meta(POOL_TABLE).grad_type
    target_types = pool_type if pool_type == "sgd" else f"{pool_type},sgd"
    for name, path in zip(names, cfg.targets, strict=True):
        t = _ingest(db, cfg.overwrite, IngestConfig(
            table=name, data=path, kind="target", subtask_field=cfg.subtask_field,
            grad_type=target_types, **common,
        ), cfg.ray, **workers)
        steps[f"ingest {name}"] = f"{t.rows_present + t.rows_written} rows ({t.status})"

    records = []
    sel_dir = out / "selections"
    for method in cfg.methods:
        sels = run_selection(db, POOL_TABLE, list(names) or [None], list(cfg.budgets),
                             SelectOptions(method=method, target_mode=cfg.target_mode,
                                           seed=cfg.seed, progress=cfg.progress, ray=cfg.ray))
        for sel in sels:
            path = sel_dir / f"{sel.target or 'in-domain'}-{method}-{_slug(sel.budget)}.jsonl"
            export_selection(db, sel.selection_id, path, data=cfg.data, split=cfg.split)
            records.append({
                "selection_id": sel.selection_id, "method": method, "target": sel.target,
                "budget": sel.budget, "k": int(sel.k), "chosen": len(sel.ids),
                "residual": float(sel.residual), "seconds": float(sel.seconds), "export": str(path),
                "note": stop_note(sel),
            })
    summary = RunSummary(str(out), str(out / "store"), list(checkpoints), records,
                         time.perf_counter() - started, steps)
    tmp = out / ".run.json.tmp"
    tmp.write_text(json.dumps(summary.to_dict(), indent=1) + "\n")
    os.replace(tmp, out / "run.json")
    return summary

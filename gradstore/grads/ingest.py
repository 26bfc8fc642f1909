"""Ingestion: a data file, a model and its checkpoints in; projected per-example gradients out.

examples -> tokenised batches -> per-example LoRA gradients at every checkpoint
-> gradient type (sgd / sign / adam) -> projection -> rows appended to the store.

Each append is one Lance commit holding complete rows (every checkpoint), so a
run killed at any point leaves a valid table; running the same command again
computes only the missing examples. The run's settings and a fingerprint of the
tokenised data are kept with the table, and a rerun with different ones is
refused rather than mixed in.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from gradstore.choices import GRAD_TYPES, PROJECTION_KINDS
from gradstore.errors import GradstoreError, TableConflict
from gradstore.grads.data import read_records
from gradstore.grads.examples import TokenizedExample, data_fingerprint, tokenize_records
from gradstore.grads.grad_types import apply_grad_type
from gradstore.grads.model import (
    CheckpointWeights,
    LoraSpec,
    activate,
    fresh_lora,
    load_adapter_weights,
    load_model,
    load_tokenizer,
    lora_from_checkpoints,
    model_identity,
    release_model,
    resolve_device,
    resolve_dtype,
    weights_fingerprint,
)
from gradstore.grads.optimizer_state import (
    AdamMoments,
    checkpoint_lr,
    load_adam_moments,
    optimizer_file,
)
from gradstore.grads.per_example import PerExampleGradients, collate
from gradstore.grads.projection import make_projector
from gradstore.store.meta import VECTOR_DTYPES, ProjectionSpec, TableMeta
from gradstore.store.store import RowBlock

if TYPE_CHECKING:
    from gradstore.store.store import Store

FRESH_CHECKPOINT = "init"
RAW_BUFFER_BYTES = 512 << 20  # raw (unprojected) gradients held before one projection call
FLOAT16_MAX = 65504.0


@dataclass(frozen=True)
class IngestConfig:
    """One `gradstore ingest` run. Every field maps to a command-line flag."""

    table: str
    model: str
    data: str
    checkpoints: tuple[str, ...] = ()
    kind: str = "pool"
    """pool or target."""
    grad_type: str | tuple[str, ...] | None = None
    """Gradient types to store, the first one primary: adam, sgd or sign, or several
    ("adam,sgd"). Default with optimizer state: adam for a pool; adam and sgd for a target
    (GTP and OMP match the pool's type, LESS reads sgd). Without optimizer state: sgd."""
    projection: str = "rademacher"
    proj_dim: int = 8192
    seed: int = 0
    """Projection seed (and fresh-LoRA init seed): pool and targets must share it."""
    nnz: int | None = None
    """Nonzeros per input coordinate of the countsketch projection."""
    max_length: int = 2048
    batch_size: int = 8
    device: str = "auto"
    dtype: str = "auto"
    """Model weights: auto (float32 on CPU, bfloat16 on CUDA), float32, bfloat16, float16."""
    gguf_file: str | None = None
    lora_r: int = 8
    lora_alpha: int = 32
    lora_targets: tuple[str, ...] | None = None
    vector_dtype: str = "float16"
    subtask_field: str | None = None
    split: str | None = None
    lrs: tuple[float, ...] | None = None
    """Learning rates of the checkpoints, overriding what their saved state says."""
    write_rows: int = 512
    """Rows per append (one Lance commit); at most this much work is lost on a crash."""
    flush_seconds: float = 60.0
    overwrite: bool = False
    progress: bool = True

    def validate(self) -> None:
        def bad(msg: str) -> None:
            raise GradstoreError(msg)

        if not self.table or self.table.startswith("_") or "/" in self.table:
            bad(f"table name {self.table!r} is not allowed; use letters, digits, '-', '_'")
        if self.kind not in ("pool", "target"):
            bad(f"kind {self.kind!r} is not one of pool, target")
        types = self.requested_types()
        if types is not None:
            wrong = [t for t in types if t not in GRAD_TYPES]
            if wrong or not types or len(set(types)) != len(types):
                bad(f"gradient type {self.grad_type!r} is not one of {', '.join(GRAD_TYPES)} "
                    "or a comma list of different ones (e.g. adam,sgd)")
        if self.projection not in PROJECTION_KINDS:
            bad(f"projection {self.projection!r} is not one of {', '.join(PROJECTION_KINDS)}")
        if self.proj_dim < 1:
            bad(f"--proj-dim {self.proj_dim} must be at least 1")
        if self.max_length < 2:
            bad(f"--max-length {self.max_length} must be at least 2")
        if self.batch_size < 1:
            bad(f"--batch-size {self.batch_size} must be at least 1")
        if self.vector_dtype not in VECTOR_DTYPES:
            bad(f"vector dtype {self.vector_dtype!r} is not one of float16, float32")
        if self.lrs is not None and len(self.lrs) != max(1, len(self.checkpoints)):
            bad(f"{len(self.lrs)} learning rates given for {len(self.checkpoints)} checkpoints")
        if self.write_rows < 1:
            bad(f"write_rows {self.write_rows} must be at least 1")
        for c in self.checkpoints:
            if not Path(c).is_dir():
                bad(f"checkpoint directory {c!r} does not exist")

    def requested_types(self) -> tuple[str, ...] | None:
        """``grad_type`` as a tuple of type names (None: the default for the kind)."""
        if self.grad_type is None:
            return None
        if isinstance(self.grad_type, str):
            return tuple(t.strip() for t in self.grad_type.split(","))
        return tuple(self.grad_type)

    def grad_types(self, has_state: bool) -> tuple[str, ...]:
        """The gradient types this run stores, primary first."""
        given = self.requested_types()
        if given is not None:
            return given
        if not has_state:
            return ("sgd",)
        return ("adam",) if self.kind == "pool" else ("adam", "sgd")


@dataclass
class IngestSummary:
    """What a run did, for the final report."""

    table: str
    rows_written: int = 0
    rows_present: int = 0
    rows_expected: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    skipped_ids: dict[str, list[str]] = field(default_factory=dict)
    truncated: int = 0
    seconds: float = 0.0
    """Wall time of the whole run, model loading and tokenisation included."""
    loop_seconds: float = 0.0
    """Time spent computing and writing gradients (what examples/s is measured over)."""
    checkpoints: list[str] = field(default_factory=list)
    grad_type: str = ""
    """The gradient types stored, e.g. ``adam`` or ``adam+sgd``."""
    projection: dict = field(default_factory=dict)
    status: str = ""

    @property
    def examples_per_second(self) -> float:
        return self.rows_written / self.loop_seconds if self.loop_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["examples_per_second"] = round(self.examples_per_second, 3)
        return out

    def lines(self) -> list[str]:
        out = [
            f"table {self.table}: {self.status}; {self.rows_written} rows written in "
            f"{self.loop_seconds:.1f} s ({self.examples_per_second:.2f} examples/s; "
            f"{self.seconds:.1f} s in all with loading), "
            f"{self.rows_present} already present, {self.rows_expected} expected",
            f"checkpoints {', '.join(self.checkpoints)}; gradients {self.grad_type}; "
            f"projection {self.projection.get('kind')} to {self.projection.get('dim')} dims",
        ]
        if self.truncated:
            out.append(f"{self.truncated} examples truncated to --max-length (response kept)")
        for reason, count in self.skipped.items():
            ids = ", ".join(self.skipped_ids.get(reason, [])[:5])
            out.append(f"skipped {count} examples: {reason} (e.g. {ids})")
        return out


@dataclass
class IngestPlan:
    """Everything decided before the model is loaded."""

    examples: list[TokenizedExample]
    checkpoint_paths: list[Path]
    checkpoint_names: list[str]
    lrs: list[float | None]
    adapter_weights: list[dict[str, torch.Tensor]] | None
    grad_type: str
    settings: dict[str, Any]
    data_fingerprint: str
    extra_types: list[str] = field(default_factory=list)
    """Gradient types stored beside ``grad_type`` for the same examples."""

    @property
    def grad_types(self) -> list[str]:
        return [self.grad_type, *self.extra_types]


def _natural_key(path: str) -> list:
    parts = re.split(r"(\d+)", str(Path(path).resolve()))
    return [int(p) if p.isdigit() else p for p in parts]


def _checkpoint_names(paths: list[Path]) -> list[str]:
    names = [p.resolve().name for p in paths]
    if len(set(names)) != len(names):
        names = [f"{p.resolve().parent.name}/{p.resolve().name}" for p in paths]
    if len(set(names)) != len(names):
        raise GradstoreError(f"checkpoints {[str(p) for p in paths]} are given more than once")
    return names


def plan_ingest(
    cfg: IngestConfig, tokenizer, dtype: torch.dtype | None = None
) -> tuple[IngestPlan, IngestSummary]:
    """Read and tokenise the data, resolve checkpoints, lrs and the gradient type."""
    cfg.validate()
    records = read_records(cfg.data, split=cfg.split)
    report = tokenize_records(
        records, tokenizer, max_length=cfg.max_length, subtask_field=cfg.subtask_field,
        progress=cfg.progress,
    )
    summary = IngestSummary(table=cfg.table, truncated=report.truncated)
    for reason, ids in report.skipped.items():
        summary.skipped[reason] = len(ids)
        summary.skipped_ids[reason] = list(ids[:5])
    if not report.examples:
        reasons = ", ".join(f"{k}: {v}" for k, v in summary.skipped.items())
        raise GradstoreError(
            f"no example in {cfg.data!r} has tokens to take a loss on ({reasons}); "
            "check the data format (chat, prompt/completion, Alpaca or text)"
        )
    # training order (checkpoint-2 before checkpoint-10), whatever order they were given in
    order = sorted(range(len(cfg.checkpoints)), key=lambda i: _natural_key(cfg.checkpoints[i]))
    paths = [Path(cfg.checkpoints[i]) for i in order]
    if paths:
        names = _checkpoint_names(paths)
        adapters = [load_adapter_weights(p) for p in paths]
        lrs = [cfg.lrs[i] for i in order] if cfg.lrs else [checkpoint_lr(p) for p in paths]
        fingerprints = {n: weights_fingerprint(w) for n, w in zip(names, adapters, strict=True)}
    else:
        names, adapters = [FRESH_CHECKPOINT], None
        lrs = list(cfg.lrs) if cfg.lrs else [None]
        spec = _lora_spec(cfg)
        fingerprints = {FRESH_CHECKPOINT: f"fresh LoRA r={spec.r} alpha={spec.alpha} "
                        f"targets={spec.targets} seed={spec.seed}"}
    has_state = bool(paths) and all(optimizer_file(p) is not None for p in paths)
    grad_type, *extra_types = cfg.grad_types(has_state)
    if "adam" in (grad_type, *extra_types) and not has_state:
        missing = [str(p) for p in paths if optimizer_file(p) is None] or ["a fresh LoRA"]
        raise GradstoreError(
            f"adam gradients need a saved optimizer state, which {missing[0]} lacks; "
            "give --checkpoint directories saved with optimizer.pt, or --grad-type sgd"
        )
    settings = {
        "model": model_identity(cfg.model, cfg.gguf_file),
        "checkpoints": names,
        "adapters": fingerprints,
        "grad_type": grad_type,
        **({"extra_grad_types": extra_types} if extra_types else {}),
        "projection": {"kind": cfg.projection, "dim": cfg.proj_dim, "seed": cfg.seed,
                       "nnz": cfg.nnz},
        "max_length": cfg.max_length,
        "dtype": str(dtype or resolve_dtype(cfg.dtype, resolve_device(cfg.device))),
        "lora": None if paths else asdict(_lora_spec(cfg)),
        "subtask_field": cfg.subtask_field,
    }
    settings = json.loads(json.dumps(settings))  # compared with the stored (JSON) copy
    plan = IngestPlan(
        report.examples, paths, names, lrs, adapters, grad_type, settings,
        data_fingerprint(report.examples), extra_types,
    )
    summary.checkpoints, summary.grad_type = names, "+".join(plan.grad_types)
    summary.rows_expected = len(report.examples)
    return plan, summary


def pad_token_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def stage_table(table: str) -> str:
    """The hidden table where a distributed ingestion records finished, uncommitted shards."""
    return f"_stage_{table}"


def _lora_spec(cfg: IngestConfig) -> LoraSpec:
    return LoraSpec(r=cfg.lora_r, alpha=cfg.lora_alpha, targets=cfg.lora_targets, seed=cfg.seed)


def _differing_settings(
    before: dict[str, Any], now: dict[str, Any], ignore: tuple[str, ...] = ()
) -> list[str]:
    """Settings keys whose stored and requested values differ (checkpoints as a set:
    columns stay in the order they were added)."""

    def differs(key: str) -> bool:
        if key == "checkpoints":
            return sorted(before.get(key) or []) != sorted(now[key])
        if key == "grad_type":  # the set of stored types, whichever is primary
            return set(stored_types(before)) != set(stored_types(now))
        return before.get(key) != now[key]

    return [k for k in now if k not in ignore and k != "extra_grad_types" and differs(k)]


def stored_types(settings: dict[str, Any]) -> list[str]:
    """The gradient types an ingestion's settings store, primary first."""
    return [settings.get("grad_type"), *settings.get("extra_grad_types", [])]


def _with_types(plan: IngestPlan, types: list[str]) -> IngestPlan:
    """``plan`` storing ``types`` (primary first) instead of its own."""
    settings = {k: v for k, v in plan.settings.items() if k != "extra_grad_types"}
    settings["grad_type"] = types[0]
    if types[1:]:
        settings["extra_grad_types"] = list(types[1:])
    return replace(plan, grad_type=types[0], extra_types=list(types[1:]), settings=settings)


def adopt_stored_types(store: Store, cfg: IngestConfig, plan: IngestPlan) -> IngestPlan:
    """A table that already stores every type this run asks for keeps its own set (and its
    primary type): asking for fewer, or in another order, is not a conflict."""
    if cfg.table not in store.tables():
        return plan
    before = store.meta(cfg.table).ingest.get("settings")
    if before is None or not set(plan.grad_types) <= set(stored_types(before)):
        return plan
    return _with_types(plan, stored_types(before))


def _existing_ids(store: Store, cfg: IngestConfig, plan: IngestPlan) -> set[str]:
    """Ids already written by an earlier run of the same ingestion, checked to match."""
    if cfg.table not in store.tables():
        return set()
    meta = store.meta(cfg.table)
    before = meta.ingest.get("settings")
    if before is None:
        raise TableConflict(
            f"table {cfg.table!r} exists and was not written by `gradstore ingest`; "
            "choose another table name, or pass --overwrite to replace it"
        )
    diff = _differing_settings(before, plan.settings)
    if diff:
        k = diff[0]
        raise TableConflict(
            f"table {cfg.table!r} was ingested with {k}={before.get(k)!r}, this run asks for "
            f"{plan.settings[k]!r}; rerun with the same options, choose another table name, "
            "or pass --overwrite to replace it"
        )
    if meta.ingest.get("data_fingerprint") != plan.data_fingerprint:
        raise TableConflict(
            f"table {cfg.table!r} was ingested from different data (the examples or their "
            "tokenisation changed); choose another table name, or pass --overwrite"
        )
    return set(store.ids(cfg.table)) | set(meta.ingest.get("nonfinite_ids", []))


def ingest(store: Store, cfg: IngestConfig) -> IngestSummary:
    """Run (or resume) one ingestion; returns its summary."""
    start = time.perf_counter()
    cfg.validate()
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    tokenizer = load_tokenizer(cfg.model, cfg.gguf_file)
    plan, summary = plan_ingest(cfg, tokenizer, dtype)
    overwrite = cfg.overwrite and cfg.table in store.tables()
    loaded = (device, dtype, pad_token_id(tokenizer))
    if not overwrite:
        plan = adopt_stored_types(store, cfg, plan)
        summary.grad_type = "+".join(plan.grad_types)
        new_types = _types_to_add(store, cfg, plan)
        if new_types:
            _add_types(store, cfg, plan, new_types, summary, loaded)
            summary.seconds = time.perf_counter() - start
            return summary
    added = None if overwrite else _checkpoints_to_add(store, cfg, plan)
    if added is not None:
        _add_checkpoints(store, cfg, plan, added, summary, loaded)
        summary.seconds = time.perf_counter() - start
        return summary
    present = set() if overwrite else _existing_ids(store, cfg, plan)
    todo = [i for i, ex in enumerate(plan.examples) if ex.id not in present]
    summary.rows_present = len(plan.examples) - len(todo)
    if not todo:  # finished, or stopped after its last commit
        return finish_present(store, cfg, plan, summary, start)

    runner = GradientRunner(cfg, plan, device, dtype, pad_token_id(tokenizer))
    summary.projection = asdict(runner.projector.spec)
    if overwrite:  # only now: a bad model or checkpoint must not cost the old table
        store.drop_table(cfg.table)
    _write_rows(store, cfg, plan, runner, todo, summary)
    release_model(runner.model)
    summary.status = "complete"
    summary.seconds = time.perf_counter() - start
    return summary


def finish_present(
    store: Store, cfg: IngestConfig, plan: IngestPlan, summary: IngestSummary, start: float
) -> IngestSummary:
    """The summary of a run that found every example already stored (completing the
    bookkeeping if an earlier run stopped after its last commit)."""
    if store.meta(cfg.table).ingest.get("status") == "complete":
        summary.status = "complete, nothing to do"
    else:
        _finish(store, cfg, plan, set())
        summary.status = "complete"
    summary.projection = asdict(store.meta(cfg.table).projection)
    summary.seconds = time.perf_counter() - start
    return summary


def _write_rows(
    store: Store, cfg: IngestConfig, plan: IngestPlan, runner: GradientRunner, todo: list[int],
    summary: IngestSummary,
) -> None:
    """Compute ``todo`` (indices into plan.examples), append them, mark the table complete."""
    if cfg.table not in store._all_tables():
        create_table(store, cfg, plan, runner.projector.spec)
    writer = _Writer(store, cfg, plan)
    loop_start = time.perf_counter()
    bar = tqdm(
        total=len(todo), desc=f"ingest {cfg.table}", unit="ex", disable=not cfg.progress,
        mininterval=1.0,
    )
    try:
        for block in runner.run(todo, on_batch=bar.update):
            writer.add(block)
        writer.flush()
    except KeyboardInterrupt:
        writer.flush()
        summary.rows_written = writer.written
        raise
    finally:
        bar.close()
    summary.rows_written = writer.written
    summary.loop_seconds = time.perf_counter() - loop_start
    summary.skipped.update(runner.skipped)
    for reason, ids in runner.skipped_ids.items():
        summary.skipped_ids[reason] = ids[:5]
    _finish(store, cfg, plan, runner.nonfinite)


# ------------------------------------------------------------ adding checkpoints later
def _checkpoints_to_add(store: Store, cfg: IngestConfig, plan: IngestPlan) -> list[str] | None:
    """Checkpoint names this run adds to a finished table that has all else in common."""
    if cfg.table not in store.tables():
        return None
    meta = store.meta(cfg.table)
    before = meta.ingest.get("settings")
    if before is None or meta.ingest.get("status") != "complete":
        return None
    have = set(meta.checkpoint_names)  # columns: includes any added before a crash
    wanted = plan.settings["checkpoints"]
    if set(before.get("checkpoints") or []) == set(wanted) or not have <= set(wanted):
        return None
    new = [n for n in wanted if n not in have]  # empty: only the bookkeeping was missed
    same = not _differing_settings(before, plan.settings, ignore=("checkpoints", "adapters"))
    known = before.get("adapters") or {}
    adapters_agree = all(known[n] == plan.settings["adapters"][n] for n in have if n in known)
    same_data = meta.ingest.get("data_fingerprint") == plan.data_fingerprint
    return new if same and adapters_agree and same_data else None


def _types_to_add(store: Store, cfg: IngestConfig, plan: IngestPlan) -> list[str]:
    """Gradient types this run adds to a finished table that has all else in common
    (e.g. the pool's type for a target written before targets stored both)."""
    if cfg.table not in store.tables():
        return []
    meta = store.meta(cfg.table)
    before = meta.ingest.get("settings")
    if before is None or meta.ingest.get("status") != "complete":
        return []
    have = stored_types(before)
    new = [t for t in plan.grad_types if t not in have]
    if not new or not set(have) <= set(plan.grad_types):
        return []
    same = not _differing_settings(before, plan.settings, ignore=("grad_type",))
    same_data = meta.ingest.get("data_fingerprint") == plan.data_fingerprint
    return new if same and same_data else []


def _add_types(
    store: Store, cfg: IngestConfig, plan: IngestPlan, new: list[str], summary: IngestSummary,
    loaded: tuple,
) -> None:
    """Compute only the new gradient types for the table's rows at every checkpoint, then
    add each as columns (staged resumably like new checkpoints)."""
    meta = store.meta(cfg.table)
    stage = replace(cfg, table=f"_add_{cfg.table}", grad_type=tuple(new))
    sub = _with_types(plan, new)
    ids = _stage_vectors(store, cfg, stage, sub, summary, loaded, "gradient types")
    for t in new:
        vectors = {n: store.vectors(stage.table, n, grad_type=t)[1] for n in meta.checkpoint_names}
        store.add_grad_type(cfg.table, t, vectors, ids)
    have = stored_types(meta.ingest["settings"])
    settings = dict(meta.ingest["settings"], extra_grad_types=[*have[1:], *new])
    store.update_ingest_state(cfg.table, dict(meta.ingest, settings=settings))
    store.drop_table(stage.table)
    summary.grad_type = "+".join([*have, *new])
    summary.projection = asdict(meta.projection)
    summary.status = f"complete, added {' and '.join(new)} gradients"


def _add_checkpoints(
    store: Store, cfg: IngestConfig, plan: IngestPlan, new: list[str], summary: IngestSummary,
    loaded: tuple,
) -> None:
    """Compute only the new checkpoints for the table's rows, then add them as columns.

    The new vectors are first written, resumably, to a hidden staging table; each
    checkpoint then joins the table in one atomic column addition.
    """
    meta = store.meta(cfg.table)
    stage = replace(cfg, table=f"_add_{cfg.table}")
    if new:
        _compute_and_add_columns(store, cfg, stage, plan, new, summary, loaded)
    store.update_ingest_state(cfg.table, dict(meta.ingest, settings=plan.settings))
    if stage.table in store._all_tables():
        store.drop_table(stage.table)
    summary.projection = asdict(meta.projection)
    summary.status = f"complete, added checkpoints {', '.join(new) or '(finished)'}"


def _compute_and_add_columns(
    store: Store, cfg: IngestConfig, stage: IngestConfig, plan: IngestPlan, new: list[str],
    summary: IngestSummary, loaded: tuple,
) -> None:
    meta = store.meta(cfg.table)
    pick = [i for i, n in enumerate(plan.checkpoint_names) if n in new]
    settings = dict(
        plan.settings, checkpoints=new, adapters={n: plan.settings["adapters"][n] for n in new}
    )
    sub = replace(
        plan, checkpoint_paths=[plan.checkpoint_paths[i] for i in pick], checkpoint_names=new,
        lrs=[plan.lrs[i] for i in pick], adapter_weights=[plan.adapter_weights[i] for i in pick],
        settings=settings,
    )
    _stage_vectors(store, cfg, stage, sub, summary, loaded, "checkpoints")
    for name, lr in zip(sub.checkpoint_names, sub.lrs, strict=True):
        ids, X = store.vectors(stage.table, name)
        extra = {t: store.vectors(stage.table, name, grad_type=t)[1] for t in plan.extra_types}
        store.import_vectors(
            cfg.table, X, checkpoint=name, ids=ids, lr=lr, losses=store.losses(stage.table, name),
            projection=meta.projection, grad_type=meta.grad_type, model=meta.model,
            extra_vectors=extra,
        )


def _stage_vectors(
    store: Store, cfg: IngestConfig, stage: IngestConfig, sub: IngestPlan,
    summary: IngestSummary, loaded: tuple, what: str,
) -> list[str]:
    """Compute ``sub`` (new checkpoints or gradient types of the table's rows) into the
    hidden staging table ``stage.table``, resuming an earlier attempt with the same
    settings; returns the staged ids (storage order)."""
    meta = store.meta(cfg.table)
    if store.num_rows(cfg.table) == 0:
        raise GradstoreError(f"table {cfg.table!r} has no rows; there is nothing to add to")
    have = set(store.ids(cfg.table))
    examples = [ex for ex in sub.examples if ex.id in have]
    sub = replace(sub, examples=examples, data_fingerprint=data_fingerprint(examples))
    present: set[str] = set()
    if stage.table in store._all_tables():
        smeta = store.meta(stage.table)
        if (smeta.ingest.get("settings") == sub.settings
                and smeta.ingest.get("data_fingerprint") == sub.data_fingerprint):
            present = set(store.ids(stage.table))
        else:  # scratch space of an earlier, different attempt
            store.drop_table(stage.table)
    todo = [i for i, ex in enumerate(examples) if ex.id not in present]
    summary.rows_present = len(examples) - len(todo)
    if todo or store.meta(stage.table).incomplete:
        runner = GradientRunner(stage, sub, *loaded)
        if runner.projector.spec != meta.projection:
            raise GradstoreError(
                f"table {cfg.table!r} was projected with {meta.projection}, this run with "
                f"{runner.projector.spec}; the new {what} cannot join it"
            )
        _write_rows(store, stage, sub, runner, todo, summary)
        release_model(runner.model)
    bad = store.meta(stage.table).ingest.get("nonfinite_ids", [])
    if bad:
        raise GradstoreError(
            f"{len(bad)} examples of table {cfg.table!r} have non-finite gradients for the new "
            f"{what} (e.g. {bad[:3]}), so they cannot be added as columns; "
            "ingest into a new table instead"
        )
    return store.ids(stage.table)


def _ingest_state(plan: IngestPlan, status: str, **more: Any) -> dict[str, Any]:
    return {
        "status": status,
        "expected_rows": len(plan.examples),
        "settings": plan.settings,
        "data_fingerprint": plan.data_fingerprint,
        **more,
    }


def create_table(
    store: Store, cfg: IngestConfig, plan: IngestPlan, spec: ProjectionSpec, **state: Any
) -> None:
    """An empty table marked as being ingested, with the run's settings."""
    meta = TableMeta(
        kind=cfg.kind,
        dim=spec.dim,
        vector_dtype=cfg.vector_dtype,
        projection=spec,
        grad_type=plan.grad_type,
        model=plan.settings["model"],
        extra_types=list(plan.extra_types),
        extra={"source": str(Path(cfg.data).resolve()), "split": cfg.split,
               "model_path": cfg.model, "gguf_file": cfg.gguf_file},
        ingest=_ingest_state(plan, "running", **state),
    )
    store.create_table(cfg.table, meta, list(zip(plan.checkpoint_names, plan.lrs, strict=True)))


def _finish(store: Store, cfg: IngestConfig, plan: IngestPlan, new_nonfinite: set[str]) -> None:
    store.compact(cfg.table)
    nonfinite = set(store.meta(cfg.table).ingest.get("nonfinite_ids", [])) | new_nonfinite
    written = store.num_rows(cfg.table)
    if written + len(nonfinite) != len(plan.examples):
        raise GradstoreError(  # every example is either written or skipped, exactly once
            f"table {cfg.table!r} holds {written} rows plus {len(nonfinite)} skipped, "
            f"but {len(plan.examples)} examples were planned; rerun with --overwrite"
        )
    store.update_ingest_state(
        cfg.table, _ingest_state(plan, "complete", nonfinite_ids=sorted(nonfinite))
    )
    if stage_table(cfg.table) in store._all_tables():  # a distributed run's leftovers
        store.drop_table(stage_table(cfg.table))


class _Writer:
    """Buffers rows and appends them in commits of ``write_rows`` (or every flush_seconds)."""

    def __init__(self, store: Store, cfg: IngestConfig, plan: IngestPlan) -> None:
        self.store, self.cfg, self.plan = store, cfg, plan
        self.blocks: list[RowBlock] = []
        self.pending = 0
        self.written = 0
        self.last = time.monotonic()

    def add(self, block: RowBlock) -> None:
        if not block.ids:
            return
        self.blocks.append(block)
        self.pending += len(block.ids)
        if (
            self.pending >= self.cfg.write_rows
            or time.monotonic() - self.last >= self.cfg.flush_seconds
        ):
            self.flush()

    def flush(self) -> None:
        if self.blocks:
            merged = concat_blocks(self.blocks)
            self.store.append_rows(self.cfg.table, merged)
            self.written += len(merged.ids)
        self.blocks, self.pending, self.last = [], 0, time.monotonic()


def concat_blocks(blocks: list[RowBlock]) -> RowBlock:
    T = len(blocks[0].vectors)
    return RowBlock(
        ids=[i for b in blocks for i in b.ids],
        rows=[r for b in blocks for r in b.rows],
        vectors=[np.concatenate([b.vectors[t] for b in blocks]) for t in range(T)],
        subtasks=[s for b in blocks for s in b.subtasks],
        tokens=[s for b in blocks for s in b.tokens],
        content_hashes=[s for b in blocks for s in b.content_hashes],
        losses=[np.concatenate([b.losses[t] for b in blocks]) for t in range(T)],
        extra_vectors={
            gt: [np.concatenate([b.extra_vectors[gt][t] for b in blocks]) for t in range(T)]
            for gt in blocks[0].extra_vectors
        } if blocks[0].extra_vectors else None,
    )


class GradientRunner:
    """The model side: per-example gradients at every checkpoint, transformed and projected."""

    def __init__(self, cfg: IngestConfig, plan: IngestPlan, device, dtype, pad_id: int) -> None:
        self.cfg, self.plan, self.device = cfg, plan, device
        lm = load_model(cfg.model, cfg.gguf_file, dtype, device, progress=cfg.progress)
        paths = plan.checkpoint_paths
        if paths:
            self.model = lora_from_checkpoints(lm, paths).to(device)
        else:
            self.model = fresh_lora(lm, _lora_spec(cfg)).to(device)
        self.grads = PerExampleGradients(self.model)
        if paths:
            self.checkpoints = [
                CheckpointWeights(n, p, w, lr)
                for n, p, w, lr in zip(
                    plan.checkpoint_names, paths, plan.adapter_weights, plan.lrs, strict=True
                )
            ]
        else:
            from peft import get_peft_model_state_dict

            state = get_peft_model_state_dict(self.model)
            state = {k: v.detach().clone() for k, v in state.items()}
            self.checkpoints = [CheckpointWeights(FRESH_CHECKPOINT, None, state, plan.lrs[0])]
        for ckpt in self.checkpoints:  # a checkpoint that does not fit fails before any work
            activate(self.model, ckpt)
        self.moments: list[AdamMoments | None] = [
            load_adam_moments(c.path, self.grads.slots).to(device)
            if "adam" in plan.grad_types else None
            for c in self.checkpoints
        ]
        dim = self.grads.num_params if cfg.projection == "none" else cfg.proj_dim
        self.projector = make_projector(
            cfg.projection, self.grads.num_params, dim, seed=cfg.seed, nnz=cfg.nnz
        )
        self.pad_id = pad_id
        self.skipped: Counter[str] = Counter()
        self.skipped_ids: dict[str, list[str]] = {}
        self.nonfinite: set[str] = set()
        T, P = len(self.checkpoints), self.grads.num_params
        # one projection call per chunk amortises generating the projection matrix
        by_memory = RAW_BUFFER_BYTES // max(1, len(plan.grad_types) * T * P * 4)
        self.chunk = max(cfg.batch_size, min(by_memory, cfg.write_rows, 256))

    def run(self, todo: list[int], on_batch=None):
        """Yield one RowBlock per chunk of examples (indices into plan.examples).

        ``on_batch(n)`` is called after each batch of ``n`` examples is done.
        """
        yield from self.blocks([self.plan.examples[i] for i in todo], todo, on_batch)

    def blocks(self, examples: list[TokenizedExample], rows: list[int], on_batch=None):
        """Yield one RowBlock per chunk of ``examples`` (whose data-order positions are
        ``rows``), at most ``self.chunk`` per projection call."""
        chunks = -(-len(examples) // self.chunk)
        size = -(-len(examples) // max(1, chunks))  # equal chunks: no small, slow last projection
        for start in range(0, len(examples), size):
            part = sorted(range(start, min(len(examples), start + size)),
                          key=lambda i: examples[i].num_tokens)
            yield self._chunk([examples[i] for i in part], [rows[i] for i in part], on_batch)

    def _chunk(self, exs: list[TokenizedExample], rows: list[int], on_batch) -> RowBlock:
        T, bs = len(self.checkpoints), self.cfg.batch_size
        types = self.plan.grad_types
        raw = {t: torch.empty(T, len(exs), self.grads.num_params, dtype=torch.float32,
                              device=self.device) for t in types}
        losses = np.empty((T, len(exs)), dtype=np.float32)
        for s in range(0, len(exs), bs):
            part = exs[s : s + bs]
            batch = collate(
                [e.input_ids for e in part], [e.loss_mask for e in part], self.pad_id, self.device
            )
            for t, ckpt in enumerate(self.checkpoints):
                if T > 1:  # a single checkpoint stays loaded from __init__
                    activate(self.model, ckpt)
                g, loss = self.grads(batch)
                for i, gt in enumerate(types):  # the transform may overwrite g: copy first
                    src = g if i == len(types) - 1 else g.clone()
                    raw[gt][t, s : s + len(part)] = apply_grad_type(src, gt, self.moments[t])
                losses[t, s : s + len(part)] = loss.cpu().numpy()
            if on_batch is not None:
                on_batch(len(part))
        vecs = {}
        for gt in types:
            projected = self.projector.project(raw[gt].view(T * len(exs), -1))
            vecs[gt] = projected.view(T, len(exs), -1).cpu().numpy()
        ok = np.isfinite(losses).all(axis=0)
        for v in vecs.values():
            ok &= np.isfinite(v).all(axis=(0, 2))
        if not ok.all():
            reason = "non-finite gradient or loss (try --dtype float32)"
            bad = [e.id for e, good in zip(exs, ok, strict=True) if not good]
            self.skipped[reason] += len(bad)
            self.skipped_ids.setdefault(reason, []).extend(bad[:5])
            self.nonfinite.update(bad)
        if self.cfg.vector_dtype == "float16" and ok.any():
            peak = max(float(np.abs(v[:, ok]).max()) for v in vecs.values())
            if peak >= FLOAT16_MAX:
                raise GradstoreError(
                    f"projected gradients reach {peak:.3g}, beyond float16's range; "
                    "rerun with --vector-dtype float32 and --overwrite"
                )
        keep = [i for i in np.argsort(rows, kind="stable") if ok[i]]  # written in data order
        main = vecs[self.plan.grad_type]
        return RowBlock(
            ids=[exs[i].id for i in keep],
            rows=[rows[i] for i in keep],
            vectors=[main[t, keep] for t in range(T)],
            subtasks=[exs[i].subtask for i in keep],
            tokens=[exs[i].num_tokens for i in keep],
            content_hashes=[exs[i].content_hash for i in keep],
            losses=[losses[t, keep] for t in range(T)],
            extra_vectors={gt: [vecs[gt][t, keep] for t in range(T)]
                           for gt in self.plan.extra_types} or None,
        )

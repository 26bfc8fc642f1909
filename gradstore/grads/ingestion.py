"""Ingestion's parts, shared by the single-process run (``gradstore.ops.ingest``) and
the Ray driver (``gradstore.distributed.ingest``): the plan (examples, checkpoints,
gradient types, settings), the resume policy (what a table already holds and whether a
run may continue it), the row writer and the table's bookkeeping."""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gradstore.choices import HIDDEN_TYPE
from gradstore.config import IngestConfig
from gradstore.devices import resolve_device
from gradstore.errors import GradstoreError, TableConflict
from gradstore.grads.data import read_records
from gradstore.grads.examples import TokenizedExample, data_fingerprint, tokenize_records
from gradstore.grads.model import (
    LoraSpec,
    load_adapter_weights,
    model_identity,
    resolve_dtype,
    weights_fingerprint,
)
from gradstore.grads.optimizer_state import (
    checkpoint_lr,
    optimizer_file,
)
from gradstore.pause import pause_point
from gradstore.store.database import Database, RowBlock
from gradstore.store.meta import ProjectionSpec, TableMeta

FRESH_CHECKPOINT = "init"
BASE_CHECKPOINT = "base"  # the --model's own weights (--params; --features hidden alone)
HIDDEN_POOLING = "last hidden state, position-weighted mean, unit norm"
"""How hidden-state features are made (recorded in the settings and the table's layout)."""
RAW_BUFFER_BYTES = 512 << 20  # raw (unprojected) gradients held before one projection call


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
    fields: list[str] = field(default_factory=list)
    """The data's fields this run added as columns (``--fields``)."""

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
            f"checkpoints {', '.join(self.checkpoints)}; "
            + ("features hidden states" if self.grad_type == HIDDEN_TYPE
               else f"gradients {self.grad_type}") + "; "
            f"projection {self.projection.get('kind')} to {self.projection.get('dim')} dims",
        ]
        if self.fields:
            out.append(f"kept the data's fields as columns: {', '.join(self.fields)}")
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


def natural_key(path: str) -> list:
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
    """Read and tokenise the data, resolve checkpoints, lrs and the gradient types."""
    cfg.validate()
    examples, summary = _tokenized(cfg, tokenizer)
    paths, names, lrs, adapters, fingerprints = _checkpoints(cfg)
    if cfg.features == HIDDEN_TYPE:
        settings = hidden_settings(cfg, names, fingerprints, dtype)
        plan = IngestPlan(examples, paths, names, lrs, adapters, HIDDEN_TYPE, settings,
                          data_fingerprint(examples))
        summary.checkpoints, summary.grad_type = names, HIDDEN_TYPE
        summary.rows_expected = len(examples)
        return plan, summary
    has_state = bool(paths) and all(optimizer_file(p) is not None for p in paths)
    grad_type, *extra_types = cfg.grad_types(has_state)
    if "adam" in (grad_type, *extra_types) and cfg.params:
        raise GradstoreError(
            "adam gradients need a saved optimizer state, which --params (gradients of the "
            "--model's own weights) does not read; use --grad-type sgd or sign"
        )
    if "adam" in (grad_type, *extra_types) and not has_state:
        missing = [str(p) for p in paths if optimizer_file(p) is None] or ["a fresh LoRA"]
        raise GradstoreError(
            f"adam gradients need a saved optimizer state, which {missing[0]} lacks; "
            "give --checkpoint directories saved with optimizer.pt, or --grad-type sgd"
        )
    g = cfg.gradients
    settings = {
        "model": model_identity(cfg.lm.model, cfg.lm.gguf_file),
        "checkpoints": names,
        "adapters": fingerprints,
        "grad_type": grad_type,
        **({"extra_grad_types": extra_types} if extra_types else {}),
        "projection": {"kind": g.projection, "dim": g.proj_dim, "seed": g.seed, "nnz": g.nnz},
        "max_length": g.max_length,
        "dtype": str(dtype or resolve_dtype(cfg.lm.dtype, resolve_device(cfg.lm.device))),
        "lora": None if paths or cfg.params else asdict(lora_spec(cfg)),
        **({"params": sorted(set(cfg.params))} if cfg.params else {}),  # LoRA: as before
        "subtask_field": cfg.subtask_field,
    }
    settings = json.loads(json.dumps(settings))  # compared with the stored (JSON) copy
    plan = IngestPlan(examples, paths, names, lrs, adapters, grad_type, settings,
                      data_fingerprint(examples), extra_types)
    summary.checkpoints, summary.grad_type = names, "+".join(plan.grad_types)
    summary.rows_expected = len(examples)
    return plan, summary


def hidden_settings(cfg: IngestConfig, names: list[str], fingerprints: dict[str, str],
                    dtype: torch.dtype | None) -> dict[str, Any]:
    """The settings of a hidden-state ingestion (compared, as a gradient run's are, with
    the stored ones on a rerun): no gradient type, projection or fresh LoRA applies."""
    settings = {
        "model": model_identity(cfg.lm.model, cfg.lm.gguf_file),
        "features": HIDDEN_TYPE,
        "checkpoints": names,
        "adapters": fingerprints,
        "grad_type": HIDDEN_TYPE,
        "pooling": HIDDEN_POOLING,
        "projection": {"kind": "none"},
        "max_length": cfg.gradients.max_length,
        "dtype": str(dtype or resolve_dtype(cfg.lm.dtype, resolve_device(cfg.lm.device))),
        "lora": None,
        "subtask_field": cfg.subtask_field,
    }
    return json.loads(json.dumps(settings))


def _tokenized(cfg: IngestConfig, tokenizer) -> tuple[list[TokenizedExample], IngestSummary]:
    """The data's examples as the model sees them, and a summary of what was skipped."""
    records = read_records(cfg.data, split=cfg.split, encoding=cfg.encoding)
    report = tokenize_records(records, tokenizer, max_length=cfg.gradients.max_length,
                              subtask_field=cfg.subtask_field, progress=cfg.progress)
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
    return report.examples, summary


def _checkpoints(cfg: IngestConfig):
    """(paths, names, lrs, adapter weights, fingerprints) in training order (checkpoint-2
    before checkpoint-10, whatever order they were given in); a fresh LoRA without any."""
    order = sorted(range(len(cfg.checkpoints)), key=lambda i: natural_key(cfg.checkpoints[i]))
    paths = [Path(cfg.checkpoints[i]) for i in order]
    if cfg.params or (cfg.features == HIDDEN_TYPE and not paths):
        return paths, [BASE_CHECKPOINT], list(cfg.lrs) if cfg.lrs else [None], None, \
            {BASE_CHECKPOINT: "the model's own weights"}
    if not paths:
        spec = lora_spec(cfg)
        fingerprints = {FRESH_CHECKPOINT: f"fresh LoRA r={spec.r} alpha={spec.alpha} "
                        f"targets={spec.targets} seed={spec.seed}"}
        return paths, [FRESH_CHECKPOINT], list(cfg.lrs) if cfg.lrs else [None], None, \
            fingerprints
    names = _checkpoint_names(paths)
    adapters = [load_adapter_weights(p) for p in paths]
    lrs = [cfg.lrs[i] for i in order] if cfg.lrs else [checkpoint_lr(p) for p in paths]
    fingerprints = {n: weights_fingerprint(w) for n, w in zip(names, adapters, strict=True)}
    return paths, names, lrs, adapters, fingerprints


def pad_token_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def stage_table(table: str) -> str:
    """The hidden table where a distributed ingestion records finished, uncommitted shards."""
    return f"_stage_{table}"


def lora_spec(cfg: IngestConfig) -> LoraSpec:
    g = cfg.gradients
    return LoraSpec(r=g.lora_r, alpha=g.lora_alpha, targets=g.lora_targets, seed=g.seed)


def differing_settings(
    before: dict[str, Any], now: dict[str, Any], ignore: tuple[str, ...] = ()
) -> list[str]:
    """Settings keys whose stored and requested values differ (checkpoints as a set:
    columns stay in the order they were added)."""

    def differs(key: str) -> bool:
        if key == "checkpoints":
            return sorted(before.get(key) or []) != sorted(now[key])
        if key == "grad_type":  # the set of stored types, whichever is primary
            return set(stored_types(before)) != set(stored_types(now))
        return setting(before, key) != setting(now, key)

    keys = ["features", *now]  # first: the plainest reason when the kinds differ
    return list(dict.fromkeys(
        k for k in keys if k not in ignore and k != "extra_grad_types" and differs(k)))


def setting(settings: dict[str, Any], key: str) -> Any:
    """One stored or requested setting; ``features`` is recorded for hidden states only
    (tables written before it existed hold gradients)."""
    return settings.get(key, "gradients" if key == "features" else None)


def stored_types(settings: dict[str, Any]) -> list[str]:
    """The gradient types an ingestion's settings store, primary first."""
    return [settings.get("grad_type"), *settings.get("extra_grad_types", [])]


def with_types(plan: IngestPlan, types: list[str]) -> IngestPlan:
    """``plan`` storing ``types`` (primary first) instead of its own."""
    settings = {k: v for k, v in plan.settings.items() if k != "extra_grad_types"}
    settings["grad_type"] = types[0]
    if types[1:]:
        settings["extra_grad_types"] = list(types[1:])
    return replace(plan, grad_type=types[0], extra_types=list(types[1:]), settings=settings)


def adopt_stored_types(db: Database, cfg: IngestConfig, plan: IngestPlan) -> IngestPlan:
    """A table that already stores every type this run asks for keeps its own set (and its
    primary type): asking for fewer, or in another order, is not a conflict."""
    if cfg.table not in db.tables():
        return plan
    before = db.meta(cfg.table).ingest.get("settings")
    if before is None or not set(plan.grad_types) <= set(stored_types(before)):
        return plan
    return with_types(plan, stored_types(before))


def existing_ids(db: Database, cfg: IngestConfig, plan: IngestPlan) -> set[str]:
    """Ids already written by an earlier run of the same ingestion, checked to match."""
    if cfg.table not in db.tables():
        return set()
    meta = db.meta(cfg.table)
    before = meta.ingest.get("settings")
    if before is None:
        raise TableConflict(
            f"table {cfg.table!r} exists and was not written by `gradstore ingest`; "
            "choose another table name, or pass --overwrite to replace it"
        )
    diff = differing_settings(before, plan.settings)
    if diff:
        k = diff[0]
        raise TableConflict(
            f"table {cfg.table!r} was ingested with {k}={setting(before, k)!r}, this run asks "
            f"for {setting(plan.settings, k)!r}; rerun with the same options, choose another "
            "table name, or pass --overwrite to replace it"
        )
    if meta.ingest.get("data_fingerprint") != plan.data_fingerprint:
        raise TableConflict(
            f"table {cfg.table!r} was ingested from different data (the examples or their "
            "tokenisation changed); choose another table name, or pass --overwrite"
        )
    return set(db.ids(cfg.table)) | set(meta.ingest.get("nonfinite_ids", []))


def checkpoints_to_add(db: Database, cfg: IngestConfig, plan: IngestPlan) -> list[str] | None:
    """Checkpoint names this run adds to a finished table that has all else in common."""
    if cfg.table not in db.tables():
        return None
    meta = db.meta(cfg.table)
    before = meta.ingest.get("settings")
    if before is None or meta.ingest.get("status") != "complete":
        return None
    have = set(meta.checkpoint_names)  # columns: includes any added before a crash
    wanted = plan.settings["checkpoints"]
    if set(before.get("checkpoints") or []) == set(wanted) or not have <= set(wanted):
        return None
    new = [n for n in wanted if n not in have]  # empty: only the bookkeeping was missed
    same = not differing_settings(before, plan.settings, ignore=("checkpoints", "adapters"))
    known = before.get("adapters") or {}
    adapters_agree = all(known[n] == plan.settings["adapters"][n] for n in have if n in known)
    same_data = meta.ingest.get("data_fingerprint") == plan.data_fingerprint
    return new if same and adapters_agree and same_data else None


def types_to_add(db: Database, cfg: IngestConfig, plan: IngestPlan) -> list[str]:
    """Gradient types this run adds to a finished table that has all else in common
    (e.g. the pool's type for a target written before targets stored both)."""
    if cfg.table not in db.tables():
        return []
    meta = db.meta(cfg.table)
    before = meta.ingest.get("settings")
    if before is None or meta.ingest.get("status") != "complete":
        return []
    have = stored_types(before)
    new = [t for t in plan.grad_types if t not in have]
    if not new or not set(have) <= set(plan.grad_types):
        return []
    same = not differing_settings(before, plan.settings, ignore=("grad_type",))
    same_data = meta.ingest.get("data_fingerprint") == plan.data_fingerprint
    return new if same and same_data else []


def ingest_state(plan: IngestPlan, status: str, **more: Any) -> dict[str, Any]:
    return {
        "status": status,
        "expected_rows": len(plan.examples),
        "settings": plan.settings,
        "data_fingerprint": plan.data_fingerprint,
        **more,
    }


def create_table(
    db: Database, cfg: IngestConfig, plan: IngestPlan, spec: ProjectionSpec, **state: Any
) -> None:
    """An empty table marked as being ingested, with the run's settings."""
    meta = TableMeta(
        kind=cfg.kind,
        dim=spec.dim,
        vector_dtype=cfg.gradients.vector_dtype,
        projection=spec,
        grad_type=plan.grad_type,
        model=plan.settings["model"],
        extra_types=list(plan.extra_types),
        extra={"source": str(Path(cfg.data).resolve()), "split": cfg.split,
               "model_path": cfg.lm.model, "gguf_file": cfg.lm.gguf_file},
        ingest=ingest_state(plan, "running", **state),
    )
    db.create_table(cfg.table, meta, list(zip(plan.checkpoint_names, plan.lrs, strict=True)))


def finish_table(
    db: Database, cfg: IngestConfig, plan: IngestPlan, new_nonfinite: set[str]
) -> None:
    db.compact(cfg.table)
    nonfinite = set(db.meta(cfg.table).ingest.get("nonfinite_ids", [])) | new_nonfinite
    written = db.num_rows(cfg.table)
    if written + len(nonfinite) != len(plan.examples):
        raise GradstoreError(  # every example is either written or skipped, exactly once
            f"table {cfg.table!r} holds {written} rows plus {len(nonfinite)} skipped, "
            f"but {len(plan.examples)} examples were planned; rerun with --overwrite"
        )
    db.update_ingest_state(
        cfg.table, ingest_state(plan, "complete", nonfinite_ids=sorted(nonfinite))
    )
    if stage_table(cfg.table) in db.all_tables():  # a distributed run's leftovers
        db.drop_table(stage_table(cfg.table))
        # its workers' files that were never committed (a killed worker's, or shards this
        # process computed again) are named by no version: delete them, keeping every
        # version compaction kept (this process holds the table's write lock, and a
        # distributed run holds it while its workers write)
        kept = min(v["version"] for v in db.dataset(cfg.table).versions())
        db.prune_versions(cfg.table, keep_from=kept, delete_unverified=True)


class RowWriter:
    """Buffers rows and appends them in commits of ``write_rows`` (or every flush_seconds)."""

    def __init__(self, db: Database, cfg: IngestConfig, plan: IngestPlan) -> None:
        self.db, self.cfg, self.plan = db, cfg, plan
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
            self.pending >= self.cfg.gradients.write_rows
            or time.monotonic() - self.last >= self.cfg.gradients.flush_seconds
        ):
            self.flush()

    def flush(self) -> None:
        """Commit the buffered rows. The buffer is emptied before the commit: a Ctrl-C that
        lands after Lance committed but before this returns must not leave the rows
        buffered, or the interrupt handler's flush would append them a second time (a rerun
        recomputes whatever did not reach the table)."""
        blocks, self.blocks, self.pending, self.last = self.blocks, [], 0, time.monotonic()
        if blocks:
            merged = RowBlock.concat(blocks)
            self.db.append_rows(self.cfg.table, merged)
            self.written += len(merged.ids)
            pause_point("rows-committed")  # tests: a kill or Ctrl-C right after a commit


def finish_present(
    db: Database, cfg: IngestConfig, plan: IngestPlan, summary: IngestSummary, start: float
) -> IngestSummary:
    """The summary of a run that found every example already stored (completing the
    bookkeeping if an earlier run stopped after its last commit)."""
    if db.meta(cfg.table).ingest.get("status") == "complete":
        summary.status = "complete, nothing to do"
    else:
        finish_table(db, cfg, plan, set())
        summary.status = "complete"
    summary.projection = asdict(db.meta(cfg.table).projection)
    summary.seconds = time.perf_counter() - start
    return summary


# ------------------------------------------------------------ adding checkpoints later


def rows_block(exs: list[TokenizedExample], rows: list[int], ok: np.ndarray,
               vectors: np.ndarray, losses: np.ndarray,
               extra: dict[str, np.ndarray] | None = None) -> RowBlock:
    """The examples ``exs`` (data-order positions ``rows``) whose ``ok`` is set, in data
    order, as complete rows: ``vectors`` (T, n, d) and ``losses`` (T, n) per checkpoint,
    ``extra`` further stored types' (T, n, d)."""
    keep = [i for i in np.argsort(rows, kind="stable") if ok[i]]
    T = len(vectors)
    return RowBlock(
        ids=[exs[i].id for i in keep],
        rows=[rows[i] for i in keep],
        vectors=[vectors[t][keep] for t in range(T)],
        subtasks=[exs[i].subtask for i in keep],
        tokens=[exs[i].num_tokens for i in keep],
        content_hashes=[exs[i].content_hash for i in keep],
        losses=[losses[t][keep] for t in range(T)],
        extra_vectors={gt: [v[t][keep] for t in range(T)] for gt, v in extra.items()}
        if extra else None,
    )

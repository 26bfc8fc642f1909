"""Ingestion: a data file, a model and its checkpoints in; projected per-example gradients out.

examples -> tokenised batches -> per-example LoRA gradients at every checkpoint
-> gradient type (sgd / sign / adam) -> projection -> rows appended to the store.

With ``--features hidden`` the rows hold each example's pooled final hidden states
(``grads/hidden.py``, RDS+) instead, from forward passes only; everything else (rows,
commits, resume, added checkpoints) is the same.

Each append is one Lance commit holding complete rows (every checkpoint), so a
run killed at any point leaves a valid table; running the same command again
computes only the missing examples. The run's settings and a fingerprint of the
tokenised data are kept with the table, and a rerun with different ones is
refused rather than mixed in.
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace

from tqdm.auto import tqdm

from gradstore.config import IngestConfig, with_options
from gradstore.devices import resolve_device
from gradstore.errors import GradstoreError
from gradstore.grads.examples import data_fingerprint
from gradstore.grads.hidden import HiddenStateRunner
from gradstore.grads.ingestion import (
    IngestPlan,
    IngestSummary,
    RowWriter,
    adopt_stored_types,
    checkpoints_to_add,
    create_table,
    existing_ids,
    finish_present,
    finish_table,
    pad_token_id,
    plan_ingest,
    stored_types,
    types_to_add,
    with_types,
)
from gradstore.grads.model import (
    load_tokenizer,
    release_model,
    resolve_dtype,
)
from gradstore.grads.runner import GradientRunner, make_runner
from gradstore.ops.fields import data_field_arrays, keep_fields
from gradstore.ops.importing import import_vectors
from gradstore.store.database import Database
from gradstore.store.locks import table_lock


def run_ingest(db: Database, cfg: IngestConfig) -> IngestSummary:
    """One ingestion, in this process or (``cfg.cluster.ray``: ``local`` or a cluster
    address) sharded over Ray workers."""
    # the data's fields, read (and named ones checked) before any gradient is computed
    fields = data_field_arrays(cfg.data, cfg.fields, cfg.split, cfg.encoding)
    if cfg.cluster.ray is None:
        summary = ingest(db, cfg)
    else:
        from gradstore.distributed import ingest_on_ray

        summary = ingest_on_ray(db, cfg)
    if summary.status.startswith("complete"):  # the data's fields, once every row is in
        summary.fields = keep_fields(db, cfg.table, fields)
    return summary


def ingest(db: Database, cfg: IngestConfig) -> IngestSummary:
    """Run (or resume) one ingestion, holding the table's write lock; returns its summary."""
    cfg.validate()
    with table_lock(db.uri, cfg.table, cfg.force):
        return _ingest(db, cfg)


def _ingest(db: Database, cfg: IngestConfig) -> IngestSummary:
    start = time.perf_counter()
    cfg.validate()
    device = resolve_device(cfg.lm.device)
    dtype = resolve_dtype(cfg.lm.dtype, device)
    tokenizer = load_tokenizer(cfg.lm.model, cfg.lm.gguf_file)
    plan, summary = plan_ingest(cfg, tokenizer, dtype)
    overwrite = cfg.overwrite and cfg.table in db.tables()
    loaded = (device, dtype, pad_token_id(tokenizer))
    if not overwrite:
        plan = adopt_stored_types(db, cfg, plan)
        summary.grad_type = "+".join(plan.grad_types)
        new_types = types_to_add(db, cfg, plan)
        if new_types:
            _add_types(db, cfg, plan, new_types, summary, loaded)
            summary.seconds = time.perf_counter() - start
            return summary
    added = None if overwrite else checkpoints_to_add(db, cfg, plan)
    if added is not None:
        _add_checkpoints(db, cfg, plan, added, summary, loaded)
        summary.seconds = time.perf_counter() - start
        return summary
    present = set() if overwrite else existing_ids(db, cfg, plan)
    todo = [i for i, ex in enumerate(plan.examples) if ex.id not in present]
    summary.rows_present = len(plan.examples) - len(todo)
    if not todo:  # finished, or stopped after its last commit
        return finish_present(db, cfg, plan, summary, start)

    runner = make_runner(cfg, plan, device, dtype, pad_token_id(tokenizer))
    summary.projection = asdict(runner.spec)
    if overwrite:  # only now: a bad model or checkpoint must not cost the old table
        db.drop_table(cfg.table)
    write_rows(db, cfg, plan, runner, todo, summary)
    release_model(runner.model)
    summary.status = "complete"
    summary.seconds = time.perf_counter() - start
    return summary


def _add_types(
    db: Database, cfg: IngestConfig, plan: IngestPlan, new: list[str], summary: IngestSummary,
    loaded: tuple,
) -> None:
    """Compute only the new gradient types for the table's rows at every checkpoint, then
    add each as columns (staged resumably like new checkpoints)."""
    meta = db.meta(cfg.table)
    stage = with_options(cfg, table=f"_add_{cfg.table}", grad_type=tuple(new))
    sub = with_types(plan, new)
    ids = _stage_vectors(db, cfg, stage, sub, summary, loaded, "gradient types")
    for t in new:
        vectors = {n: db.vectors(stage.table, n, grad_type=t)[1] for n in meta.checkpoint_names}
        db.add_grad_type(cfg.table, t, vectors, ids)
    have = stored_types(meta.ingest["settings"])
    settings = dict(meta.ingest["settings"], extra_grad_types=[*have[1:], *new])
    db.update_ingest_state(cfg.table, dict(meta.ingest, settings=settings))
    db.drop_table(stage.table)
    summary.grad_type = "+".join([*have, *new])
    summary.projection = asdict(meta.projection)
    summary.status = f"complete, added {' and '.join(new)} gradients"


def _add_checkpoints(
    db: Database, cfg: IngestConfig, plan: IngestPlan, new: list[str], summary: IngestSummary,
    loaded: tuple,
) -> None:
    """Compute only the new checkpoints for the table's rows, then add them as columns.

    The new vectors are first written, resumably, to a hidden staging table; each
    checkpoint then joins the table in one atomic column addition.
    """
    meta = db.meta(cfg.table)
    stage = replace(cfg, table=f"_add_{cfg.table}")
    if new:
        _compute_and_add_columns(db, cfg, stage, plan, new, summary, loaded)
    db.update_ingest_state(cfg.table, dict(meta.ingest, settings=plan.settings))
    if stage.table in db.all_tables():
        db.drop_table(stage.table)
    summary.projection = asdict(meta.projection)
    summary.status = f"complete, added checkpoints {', '.join(new) or '(finished)'}"


def _compute_and_add_columns(
    db: Database, cfg: IngestConfig, stage: IngestConfig, plan: IngestPlan, new: list[str],
    summary: IngestSummary, loaded: tuple,
) -> None:
    meta = db.meta(cfg.table)
    pick = [i for i, n in enumerate(plan.checkpoint_names) if n in new]
    settings = dict(
        plan.settings, checkpoints=new, adapters={n: plan.settings["adapters"][n] for n in new}
    )
    sub = replace(
        plan, checkpoint_paths=[plan.checkpoint_paths[i] for i in pick], checkpoint_names=new,
        lrs=[plan.lrs[i] for i in pick], adapter_weights=[plan.adapter_weights[i] for i in pick],
        settings=settings,
    )
    _stage_vectors(db, cfg, stage, sub, summary, loaded, "checkpoints")
    for name, lr in zip(sub.checkpoint_names, sub.lrs, strict=True):
        ids, X = db.vectors(stage.table, name)
        extra = {t: db.vectors(stage.table, name, grad_type=t)[1] for t in plan.extra_types}
        import_vectors(
            db, cfg.table, X, checkpoint=name, ids=ids, lr=lr, losses=db.losses(stage.table, name),
            projection=meta.projection, grad_type=meta.grad_type, model=meta.model,
            extra_vectors=extra,
        )


def _stage_vectors(
    db: Database, cfg: IngestConfig, stage: IngestConfig, sub: IngestPlan,
    summary: IngestSummary, loaded: tuple, what: str,
) -> list[str]:
    """Compute ``sub`` (new checkpoints or gradient types of the table's rows) into the
    hidden staging table ``stage.table``, resuming an earlier attempt with the same
    settings; returns the staged ids (storage order)."""
    meta = db.meta(cfg.table)
    if db.num_rows(cfg.table) == 0:
        raise GradstoreError(f"table {cfg.table!r} has no rows; there is nothing to add to")
    have = set(db.ids(cfg.table))
    examples = [ex for ex in sub.examples if ex.id in have]
    sub = replace(sub, examples=examples, data_fingerprint=data_fingerprint(examples))
    present: set[str] = set()
    if stage.table in db.all_tables():
        smeta = db.meta(stage.table)
        if (smeta.ingest.get("settings") == sub.settings
                and smeta.ingest.get("data_fingerprint") == sub.data_fingerprint):
            present = set(db.ids(stage.table))
        else:  # scratch space of an earlier, different attempt
            db.drop_table(stage.table)
    todo = [i for i, ex in enumerate(examples) if ex.id not in present]
    summary.rows_present = len(examples) - len(todo)
    if todo or db.meta(stage.table).incomplete:
        runner = make_runner(stage, sub, *loaded)
        if runner.spec != meta.projection:
            raise GradstoreError(
                f"table {cfg.table!r} was projected with {meta.projection}, this run with "
                f"{runner.spec}; the new {what} cannot join it"
            )
        write_rows(db, stage, sub, runner, todo, summary)
        release_model(runner.model)
    bad = db.meta(stage.table).ingest.get("nonfinite_ids", [])
    if bad:
        raise GradstoreError(
            f"{len(bad)} examples of table {cfg.table!r} have non-finite gradients for the new "
            f"{what} (e.g. {bad[:3]}), so they cannot be added as columns; "
            "ingest into a new table instead"
        )
    return db.ids(stage.table)


def write_rows(
    db: Database, cfg: IngestConfig, plan: IngestPlan,
    runner: GradientRunner | HiddenStateRunner, todo: list[int], summary: IngestSummary,
) -> None:
    """Compute ``todo`` (indices into plan.examples), append them, mark the table complete."""
    if cfg.table not in db.all_tables():
        create_table(db, cfg, plan, runner.spec)
    writer = RowWriter(db, cfg, plan)
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
    finish_table(db, cfg, plan, runner.nonfinite)

"""Ingestion on Ray: the examples sharded over workers that each load the model once.

The driver reads and tokenises the data once, then hands out shards (contiguous
runs of examples, ``write_rows`` at most) to Ray actors. A worker computes its
shard's rows exactly as a single-process run does (the same code, the same
projection seed) and writes them as Lance data files of the table, uncommitted
and so invisible. The driver records each finished shard (its rows and file
metadata) in a hidden staging table; when every shard is done it commits all
files to the table in one version, in data order, and marks the table complete.

A killed worker is restarted by Ray and its shard computed again (its partial
files are never committed). If the driver itself stops, rerunning the same
command reuses every recorded shard and computes only the rest.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any

import pyarrow as pa
import torch
from tqdm.auto import tqdm

from gradstore.config import IngestConfig, with_options
from gradstore.distributed.cluster import cluster_resources, ray_cluster, require_ray, task_env
from gradstore.errors import GradstoreError
from gradstore.grads.ingestion import (
    IngestPlan,
    IngestSummary,
    checkpoints_to_add,
    create_table,
    existing_ids,
    finish_present,
    finish_table,
    pad_token_id,
    plan_ingest,
    stage_table,
)
from gradstore.grads.model import (
    load_adapter_weights,
    load_tokenizer,
    resolve_dtype,
    weights_fingerprint,
)
from gradstore.grads.runner import make_runner
from gradstore.store.database import Database, RowBlock
from gradstore.store.locks import table_lock
from gradstore.store.meta import TableMeta

STAGE_SCHEMA = pa.schema([
    pa.field("first", pa.int64()),
    pa.field("rows", pa.list_(pa.int64())),
    pa.field("ids", pa.list_(pa.string())),
    pa.field("nonfinite", pa.list_(pa.string())),
    pa.field("skipped", pa.string()),
    pa.field("fragments", pa.string()),
])
STAGE_KEY = "stage_token"
# Shards per worker while they are below write_rows: each shard pays one generation of
# the projection matrix (seconds for a large LoRA), so few, large shards are cheapest.
SHARDS_PER_WORKER = 1


def _device(cfg: IngestConfig, gpus: float) -> str:
    if cfg.lm.device != "auto":
        return cfg.lm.device
    return "cuda" if gpus >= 1 else "cpu"


def _with_adapters(plan: IngestPlan) -> IngestPlan:
    """The plan with its checkpoints' adapter weights loaded here, checked to be the very
    weights the driver planned with (a node may see other files at the same path)."""
    if not plan.checkpoint_paths:
        return plan
    weights = [load_adapter_weights(p) for p in plan.checkpoint_paths]
    for name, path, w in zip(plan.checkpoint_names, plan.checkpoint_paths, weights, strict=True):
        if weights_fingerprint(w) != plan.settings["adapters"][name]:
            raise GradstoreError(
                f"checkpoint {str(path)!r} on a Ray worker's node differs from the driver's; "
                "give every node the same checkpoint files (a shared path)"
            )
    return replace(plan, adapter_weights=weights)


class IngestWorker:
    """One model copy (a Ray actor): computes shards and writes their Lance files."""

    def __init__(self, cfg: IngestConfig, plan: IngestPlan, pad_id: int, threads: int) -> None:
        torch.set_num_threads(threads)
        self.error: Exception | None = None
        try:
            device = torch.device(cfg.lm.device if cfg.lm.device != "auto" else "cpu")
            if device.type == "cuda" and not torch.cuda.is_available():
                raise GradstoreError(f"device {cfg.lm.device!r}: a Ray worker sees no CUDA device")
            dtype = resolve_dtype(cfg.lm.dtype, device)
            self.runner = make_runner(cfg, _with_adapters(plan), device, dtype, pad_id)
        except Exception as exc:  # reported by ready(), where the driver can show it
            self.error = exc

    def ready(self) -> dict[str, Any]:
        if self.error is not None:
            raise self.error
        return {"pid": os.getpid(), "projection": asdict(self.runner.spec)}

    def pid(self) -> int:
        return os.getpid()

    def compute(self, examples: list, rows: list[int], uri: str, schema: pa.Schema,
                version: str) -> dict[str, Any]:
        """Rows of one shard, written as uncommitted Lance files of the table at ``uri``."""
        from lance.fragment import write_fragments

        from gradstore.store.database import Database

        r = self.runner
        r.skipped.clear()
        r.skipped_ids.clear()
        r.nonfinite = set()
        blocks = [b for b in r.blocks(examples, rows) if b.ids]
        block = RowBlock.concat(blocks) if blocks else None
        fragments: list[str] = []
        if block is not None:
            meta = TableMeta.from_schema(schema, "stage")
            batch = Database.record_batch(schema, meta, block)
            frags = write_fragments(pa.Table.from_batches([batch]), uri, schema=schema,
                                    data_storage_version=version)
            fragments = [json.dumps(f.to_json()) for f in frags]
        return {
            "first": int(min(rows)),
            "rows": [int(x) for x in rows],
            "ids": list(block.ids) if block is not None else [],
            "nonfinite": sorted(r.nonfinite),
            "skipped": json.dumps({k: [n, r.skipped_ids.get(k, [])[:5]]
                                   for k, n in r.skipped.items()}),
            "fragments": json.dumps(fragments),
            "pid": os.getpid(),
        }


def _unwrap(exc: BaseException) -> BaseException:
    """The user-facing error inside a Ray task error, if there is one."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, GradstoreError) else exc


class ShardLog:
    """The staging table of one ingestion: finished shards not yet committed."""

    def __init__(self, db: Database, table: str, token: str) -> None:
        self.db, self.name, self.token = db, stage_table(table), token
        if self.name in db.all_tables():
            meta = db.dataset(self.name).schema.metadata or {}
            if meta.get(STAGE_KEY.encode(), b"").decode() != token:
                db.drop_table(self.name)  # an earlier run's, for a table since replaced
        if self.name not in db.all_tables():
            schema = STAGE_SCHEMA.with_metadata({STAGE_KEY: token})
            db.plain_table(self.name, schema)
        self.tbl = db.plain_table(self.name)

    def records(self, committed: set[str]) -> list[dict[str, Any]]:
        """Recorded shards, one per first row, none holding an already committed id."""
        seen: dict[int, dict[str, Any]] = {}
        for rec in self.tbl.to_arrow().to_pylist():
            if rec["first"] in seen or committed.intersection(rec["ids"]):
                continue
            seen[rec["first"]] = rec
        return [seen[k] for k in sorted(seen)]

    def add(self, rec: dict[str, Any]) -> None:
        self.tbl.add(pa.Table.from_pylist([rec], schema=self.tbl.schema))


def _shards(todo: list[int], size: int) -> list[list[int]]:
    return [todo[s : s + size] for s in range(0, len(todo), size)]


def ingest_on_ray(
    db: Database,
    cfg: IngestConfig,
    on_shard: Callable[[dict[str, Any]], None] | None = None,
) -> IngestSummary:
    """Run (or resume) one ingestion on Ray; the same table as :func:`ingest` would write.

    ``on_shard(record)`` is called on the driver after each shard is recorded; the
    record holds the shard's ``rows`` and ``ids``, the ``pid`` of the worker that
    computed it and the ``workers``' pids as they started.
    """
    start = time.perf_counter()
    cfg.validate()
    require_ray()
    with table_lock(db.uri, cfg.table, cfg.force), ray_cluster(cfg.cluster.ray or "local"):
        device, workers = _placement(cfg)
        tokenizer = load_tokenizer(cfg.lm.model, cfg.lm.gguf_file)
        dtype = resolve_dtype(cfg.lm.dtype, torch.device(device.split(":")[0]))
        plan, summary = plan_ingest(cfg, tokenizer, dtype)
        replacing = cfg.overwrite and cfg.table in db.tables()
        if not replacing and checkpoints_to_add(db, cfg, plan) is not None:
            raise GradstoreError(
                f"table {cfg.table!r} is complete and this run adds checkpoints to it, which "
                "runs in one process: rerun the command without --ray"
            )
        present = set() if replacing else existing_ids(db, cfg, plan)
        todo = [i for i, ex in enumerate(plan.examples) if ex.id not in present]
        summary.rows_present = len(plan.examples) - len(todo)
        if not todo:
            return finish_present(db, cfg, plan, summary, start)
        # a shard holds at least one batch: more workers than that would only load the model
        workers = min(workers, -(-len(todo) // cfg.gradients.batch_size))
        actors, infos = _start_workers(cfg, plan, device, workers, pad_token_id(tokenizer))
        spec = infos[0]["projection"]
        if replacing:  # only now: a bad model or checkpoint must not cost the old table
            db.drop_table(cfg.table)
        summary.projection = spec
        loop_start = time.perf_counter()
        pids = [info["pid"] for info in infos]
        summary.rows_written = _run_shards(db, cfg, plan, spec, todo, actors, summary,
                                           on_shard, pids)
        summary.loop_seconds = time.perf_counter() - loop_start
        summary.status = f"complete ({workers} Ray worker{'' if workers == 1 else 's'})"
        summary.seconds = time.perf_counter() - start
        return summary


def _placement(cfg: IngestConfig) -> tuple[str, int]:
    """The workers' device and how many fit the cluster (default: one per GPU, else
    cluster CPUs / --worker-cpus); refused when more are asked for than it holds."""
    options, res = cfg.cluster, cluster_resources()
    device = _device(cfg, res["GPU"])
    gpu = device.startswith("cuda")
    workers = options.workers or (
        int(res["GPU"]) if gpu else max(1, int(res["CPU"] // options.worker_cpus))
    )
    need, have = (workers, res["GPU"]) if gpu else (workers * options.worker_cpus, res["CPU"])
    if need > have:
        kind = "GPUs" if gpu else "CPUs"
        raise GradstoreError(
            f"{workers} Ray workers need {need:g} {kind} but the cluster has {have:g}; "
            "lower --workers (or --worker-cpus), or add nodes"
        )
    return device, workers


def _start_workers(cfg: IngestConfig, plan: IngestPlan, device: str, workers: int,
                   pad_id: int) -> tuple[list, list[dict[str, Any]]]:
    """``workers`` actors, each with the model loaded; their ``ready()`` reports."""
    import ray

    options, gpu = cfg.cluster, device.startswith("cuda")
    actor_cls = ray.remote(IngestWorker).options(
        num_cpus=0 if gpu else options.worker_cpus, num_gpus=1 if gpu else 0,
        max_restarts=options.worker_retries, max_task_retries=options.worker_retries,
        runtime_env=task_env(),
    )
    # small enough to travel with the actor's constructor: each worker loads the
    # adapters itself from the (shared) checkpoint paths
    light = replace(plan, examples=[], adapter_weights=None)
    if cfg.progress:
        tqdm.write(f"starting {workers} Ray workers on {device} (each loads the model once)")
    wcfg = with_options(cfg, device=device, progress=False)
    actors = [actor_cls.remote(wcfg, light, pad_id, options.worker_cpus)
              for _ in range(workers)]
    try:
        return actors, ray.get([a.ready.remote() for a in actors])
    except Exception as exc:
        raise _unwrap(exc) from None


def _stage_token(db: Database, cfg: IngestConfig, plan: IngestPlan, spec: dict) -> str:
    """The table's staging token, creating the (empty) table or recording one if needed."""
    from gradstore.store.meta import ProjectionSpec

    if cfg.table not in db.all_tables():
        token = secrets.token_hex(8)
        create_table(db, cfg, plan, ProjectionSpec(**spec), **{STAGE_KEY: token})
        return token
    meta = db.meta(cfg.table)
    if asdict(meta.projection) != spec:
        raise GradstoreError(
            f"table {cfg.table!r} was projected with {meta.projection}, the workers with "
            f"{spec}; rerun with the same options or pass --overwrite"
        )
    token = meta.ingest.get(STAGE_KEY)
    if not token:
        token = secrets.token_hex(8)
        db.update_ingest_state(cfg.table, dict(meta.ingest, **{STAGE_KEY: token}))
    return token


def _run_shards(db, cfg, plan, spec, todo, actors, summary, on_shard, pids) -> int:
    import ray

    token = _stage_token(db, cfg, plan, spec)
    stage = ShardLog(db, cfg.table, token)
    committed = set(db.ids(cfg.table))
    staged_rows = {r for rec in stage.records(committed) for r in rec["rows"]}
    left = [i for i in todo if i not in staged_rows]
    summary.rows_present += len(todo) - len(left)
    ds = db.dataset(cfg.table)
    uri, schema, version = ds.uri, ds.schema, ds.data_storage_version
    per_worker = -(-len(left) // (len(actors) * SHARDS_PER_WORKER))
    size = max(cfg.gradients.batch_size, min(cfg.gradients.write_rows, per_worker))
    queue = deque(_shards(left, size))
    bar = tqdm(total=len(left), desc=f"ingest {cfg.table} ({len(actors)} Ray workers)",
               unit="ex", disable=not cfg.progress, mininterval=1.0)
    free, pending = list(actors), {}
    schema_ref = ray.put(schema)
    written = finished = 0  # rows stored / examples done (stored or skipped) in this run
    try:
        while queue or pending:
            while queue and free:
                actor, rows = free.pop(), queue.popleft()
                exs = [plan.examples[i] for i in rows]
                pending[actor.compute.remote(exs, rows, uri, schema_ref, version)] = (actor, rows)
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                actor, rows = pending.pop(ref)
                try:
                    rec = ray.get(ref)
                except Exception as exc:
                    err = _unwrap(exc)
                    if isinstance(err, GradstoreError):
                        raise err from None
                    raise GradstoreError(
                        f"a Ray worker failed on examples {rows[0]}..{rows[-1]} after "
                        f"{summary.rows_present + finished} were done ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:200]}); rerun the same command to resume "
                        "from the shards already finished"
                    ) from None
                pid = rec.pop("pid")
                stage.add(rec)
                written += len(rec["ids"])
                finished += len(rows)
                bar.update(len(rows))
                free.append(actor)
                if on_shard is not None:
                    on_shard(dict(rec, pid=pid, workers=pids))
    finally:
        bar.close()
        for a in actors:
            ray.kill(a)
    _commit(db, cfg, plan, stage, committed, summary)
    return written


def _commit(db, cfg, plan, stage, committed, summary) -> None:
    """All recorded shards' files into the table as one version, then mark it complete."""
    import lance
    from lance.fragment import FragmentMetadata

    records = stage.records(committed)
    fragments = [FragmentMetadata.from_json(f) for rec in records
                 for f in json.loads(rec["fragments"])]
    if fragments:
        ds = db.dataset(cfg.table)
        lance.LanceDataset.commit(ds.uri, lance.LanceOperation.Append(fragments),
                                  read_version=ds.version)
        db.committed(cfg.table)
    nonfinite = {x for rec in records for x in rec["nonfinite"]}
    for rec in records:
        for reason, (count, ids) in json.loads(rec["skipped"]).items():
            summary.skipped[reason] = summary.skipped.get(reason, 0) + count
            known = summary.skipped_ids.setdefault(reason, [])
            known.extend(ids[: max(0, 5 - len(known))])
    before = db.dataset(cfg.table).version
    finish_table(db, cfg, plan, nonfinite)
    # files of shards lost with a killed worker were never committed: delete them (every
    # worker of this run is gone by now, so no file still being written is unverified);
    # the last version before compaction stays, for restore
    db.prune_versions(cfg.table, keep_from=before, delete_unverified=True)

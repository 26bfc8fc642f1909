"""Single process against Ray on one synthetic store: scans, GTP, partitioned GTP, ingestion.

A pool of N synthetic gradient rows (clustered, float16, d dims, as ingestion writes
them) is written once to a store; then, side by side in one run and alternating
order over ``--repeat`` rounds, the same selections are answered
  * in one process, streaming the table from Lance (bounded memory);
  * in one process, the table held in RAM (the default when it fits);
  * on Ray, each full pass split into ``--tasks`` tasks over row ranges;
and partitioned GTP (``--partitions`` parts, then their union) in one process and on Ray.
Ray's answers are checked to be the single process's. Partitioned GTP's quality is
reported against plain GTP (residual ratio, overlap), and on planted problems
(support recovery) in an easy and a hard regime.
``--ingest-examples`` adds distributed ingestion of a real model (SmolLM2-135M,
offline) against the single-process ingestion, 1 process x 2 threads vs 2 workers x 1.

On this 2-core machine (the committed results):
    python benchmarks/distributed.py --out benchmarks/results
On a cluster (a shared store, e.g. on s3, and the head node's address):
    python benchmarks/distributed.py --store s3://bucket/gs-bench --address HEAD:6379 \\
        --tasks 64 --partitions 16 --rows 5000000 --ingest-examples 0
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gradstore  # noqa: E402
from gradstore.distributed.cluster import ray_cluster  # noqa: E402
from gradstore.distributed.pool import DistributedPool  # noqa: E402
from gradstore.selectors.gtp_paper import gtp_paper as gtp  # noqa: E402
from gradstore.selectors.partitioned import partitioned_gtp  # noqa: E402
from gradstore.selectors.query import Query  # noqa: E402
from gradstore.selectors.scan import ScanQuery, correlation_scan  # noqa: E402
from gradstore.selectors.source import TensorSource  # noqa: E402
from gradstore.selectors.stacked import StackedPool  # noqa: E402
from gradstore.store.database import RowBlock  # noqa: E402
from gradstore.store.meta import ProjectionSpec, TableMeta  # noqa: E402

WRITE_ROWS = 1000


def _centers(dim: int, clusters: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(clusters, dim, generator=g)


def _rows(centers: torch.Tensor, n: int, seed: int, spread: float = 1.0) -> np.ndarray:
    """n clustered rows (power-law cluster sizes, as near-duplicate families), float32."""
    g = torch.Generator().manual_seed(seed)
    k = centers.shape[0]
    sizes = 1.0 / torch.arange(1, k + 1, dtype=torch.float64) ** 0.8
    lab = torch.multinomial(sizes / sizes.sum(), n, replacement=True, generator=g)
    x = centers[lab] + spread * torch.randn(n, centers.shape[1], generator=g)
    return x.numpy()


def build_store(uri: str, rows: int, dim: int, targets: int, seed: int) -> gradstore.Store:
    """The pool table (written in 1,000-row commits' worth of pages) and target tables."""
    store = gradstore.open(uri)
    clusters = max(20, rows // 250)
    centers = _centers(dim, clusters, seed)
    if "pool" in store.tables() and store.num_rows("pool") == rows \
            and store.meta("pool").dim == dim:
        return store
    if "pool" in store.tables():
        store.drop_table("pool")
    spec = ProjectionSpec(kind="synthetic", seed=seed, dim=dim)
    meta = TableMeta(kind="pool", dim=dim, vector_dtype="float16", projection=spec,
                     grad_type="synthetic", model="synthetic")

    def blocks():
        for s in range(0, rows, WRITE_ROWS):
            e = min(rows, s + WRITE_ROWS)
            yield RowBlock(ids=[f"r{i}" for i in range(s, e)], rows=list(range(s, e)),
                           vectors=[_rows(centers, e - s, seed * 1_000_003 + s)])

    t0 = time.perf_counter()
    store.database.create_table("pool", meta, [("c1", 1.0)], blocks())
    print(f"wrote {rows} x {dim} rows in {time.perf_counter() - t0:.1f} s", flush=True)
    for j in range(targets):
        name = f"target{j}"
        if name in store.tables():
            store.drop_table(name)
        # a target: 20 examples from a few of the pool's clusters
        sub = centers[torch.tensor(np.random.default_rng(seed + j).choice(clusters, 3))]
        store.import_vectors(name, _rows(sub, 20, 10_000 + j), checkpoint="c1", kind="target",
                             projection=spec, grad_type="synthetic", model="synthetic")
    return store


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def median(xs: list[float]) -> float:
    return float(np.median(xs))


def bench_scans(store, tasks: int, queries: int, repeat: int) -> dict:
    """One correlation scan with Q queries (top-2000 each): stream, RAM, Ray."""
    n = store.num_rows("pool")
    stream = StackedPool(store.source("pool", "stream"))
    load_s, ram_src = timed(lambda: store.source("pool", "ram"))
    ram = StackedPool(ram_src)
    dist = DistributedPool(store.source("pool", "stream"), tasks=tasks)
    R = np.random.default_rng(0).standard_normal((stream.width, queries)).astype(np.float32)
    qs = [ScanQuery(slice(j, j + 1), 2000) for j in range(queries)]
    times = {"stream": [], "ram": [], "ray": []}
    answers = {}
    runs = {"stream": lambda: correlation_scan(stream, R, qs),
            "ram": lambda: correlation_scan(ram, R, qs),
            "ray": lambda: dist.scan(R, qs)}
    first_ray, _ = timed(runs["ray"])  # starts Ray's worker processes (imports, Lance)
    for r in range(repeat):
        order = list(runs) if r % 2 == 0 else list(reversed(runs))
        for name in order:
            t, out = timed(runs[name])
            times[name].append(t)
            answers[name] = out
    same = all(np.array_equal(a[0], b[0]) for a, b in zip(answers["stream"], answers["ray"],
                                                           strict=True))
    out = {name: {"seconds": [round(x, 3) for x in ts], "median_s": round(median(ts), 3),
                  "rows_per_s": round(n / median(ts))} for name, ts in times.items()}
    out["ram_load_s"] = round(load_s, 2)
    out["ray_first_call_s"] = round(first_ray, 2)
    out["ray_equals_stream"] = same
    out["ray_over_stream"] = round(median(times["ray"]) / median(times["stream"]), 3)
    return out


def bench_selects(store, targets: list[str], budget: int, tasks: int, partitions: int,
                  repeat: int) -> dict:
    """store.select GTP (all targets in one run) and partitioned GTP: local vs Ray."""
    runs = {
        "gtp stream": dict(mode="stream"),
        "gtp ram": dict(mode="ram"),
        "gtp ray": dict(ray="local", ray_tasks=tasks),
        f"gtp P={partitions} stream": dict(mode="stream", partitions=partitions),
        f"gtp P={partitions} ram": dict(mode="ram", partitions=partitions),
        f"gtp P={partitions} ray": dict(ray="local", ray_tasks=tasks, partitions=partitions),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    sels: dict[str, list] = {}
    store.source("pool", "ram")  # load once: RAM timings are per query run, as in a service
    for r in range(repeat):
        order = list(runs) if r % 2 == 0 else list(reversed(runs))
        for name in order:
            t, out = timed(lambda name=name: store.select("pool", targets, budget, save=False,
                                                          **runs[name]))
            times[name].append(t)
            sels[name] = out
            print(f"  {name}: {t:.1f} s", flush=True)
    base, part = sels["gtp ram"], sels[f"gtp P={partitions} ram"]
    quality = []
    for a, b in zip(base, part, strict=True):
        quality.append({
            "target": a.target, "gtp_residual": round(a.residual, 4),
            "partitioned_residual": round(b.residual, 4),
            "ratio": round(b.residual / a.residual, 4) if a.residual > 0 else None,
            "overlap": round(len(set(a.ids) & set(b.ids)) / max(1, len(a.ids)), 3),
            "candidates": b.params.get("candidates"),
        })
    agree = {
        "gtp ray == gtp stream": all(x.ids == y.ids for x, y in
                                     zip(sels["gtp ray"], sels["gtp stream"], strict=True)),
        "partitioned ray == partitioned stream": all(
            x.ids == y.ids for x, y in zip(sels[f"gtp P={partitions} ray"],
                                           sels[f"gtp P={partitions} stream"], strict=True)),
    }
    return {
        "times": {k: {"seconds": [round(x, 2) for x in v], "median_s": round(median(v), 2)}
                  for k, v in times.items()},
        "quality": quality, "agreement": agree,
        "scans_per_gtp_run": int(max(len(s.history) for s in base)) - 1,
    }


def planted_quality(partitions: int, seeds: int = 5) -> list[dict]:
    """Support recovery of GTP and partitioned GTP on planted noisy problems (in RAM)."""
    out = []
    for d, label in [(512, "easy: D=1024"), (64, "hard: D=128")]:
        ratios, rec_single, rec_part = [], [], []
        for seed in range(seeds):
            rng = np.random.default_rng(seed)
            x = rng.standard_normal((3000, 2, d))
            x /= np.linalg.norm(x, axis=2, keepdims=True)
            pool = StackedPool(TensorSource(x.reshape(3000, -1).astype(np.float32), 2))
            support = rng.choice(3000, 20, replace=False)
            y = pool.rows(support).double().numpy().T @ rng.uniform(1, 2, 20)
            y += 0.3 * np.linalg.norm(y) / np.sqrt(len(y)) * rng.standard_normal(len(y))
            (a,) = gtp(pool, [Query(y, 20)])
            (b,) = partitioned_gtp(pool, [Query(y, 20)], partitions)
            ratios.append(b.residual / a.residual)
            rec_single.append(len(set(support) & set(a.rows.tolist())) / 20)
            rec_part.append(len(set(support) & set(b.rows.tolist())) / 20)
        out.append({"regime": label, "n": 3000, "k": 20, "noise": 0.3,
                    "partitions": partitions,
                    "residual_ratio_mean": round(float(np.mean(ratios)), 3),
                    "residual_ratio_max": round(float(np.max(ratios)), 3),
                    "support_recovery_gtp": round(float(np.mean(rec_single)), 3),
                    "support_recovery_partitioned": round(float(np.mean(rec_part)), 3)})
    return out


def bench_ingest(store_uri: str, examples: int, workers: int, tiny: bool = False) -> dict:
    """SmolLM2-135M per-example gradients: one process (2 threads) vs Ray workers (1 each)
    (``tiny``: a tiny model instead)."""
    from benchmarks.e2e.make_pool import build as build_pool
    from benchmarks.smollm2 import smollm2_gguf
    from benchmarks.tiny_model import tiny_chat_model
    from gradstore.config import IngestConfig, with_options

    work = Path(store_uri).parent / "ingest-data"
    work.mkdir(parents=True, exist_ok=True)
    model_dir, gguf = (tiny_chat_model(work / "model"), None) if tiny else smollm2_gguf()
    data = work / "pool_head.jsonl"
    rows = build_pool(pool_size=max(examples, 100), seed=0)["pool.jsonl"][:examples]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    store = gradstore.open(Path(store_uri).parent / "ingest-store")
    out = {}
    for name in ("single", "ray"):
        table = f"ingest_{name}"
        cfg = IngestConfig.from_options(
            table=table, model=str(model_dir), gguf_file=gguf, data=str(data), proj_dim=8192,
            batch_size=8, overwrite=True, progress=False, lora_targets=("q_proj", "v_proj"))
        if name == "single":
            torch.set_num_threads(2)
            t, s = timed(lambda cfg=cfg: store.ingest(cfg))
        else:
            ray = with_options(cfg, ray="local", workers=workers, worker_cpus=1)
            t, s = timed(lambda cfg=ray: store.ingest(cfg))
        out[name] = {"total_s": round(t, 1), "loop_s": round(s.loop_seconds, 1),
                     "examples_per_s_in_loop": round(s.examples_per_second, 2),
                     "rows": s.rows_written}
    a, b = store.vectors("ingest_single")[1], store.vectors("ingest_ray")[1]
    cos = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    out["min_cosine_single_vs_ray"] = round(float(cos.min()), 6)
    out["same_ids"] = store.ids("ingest_single") == store.ids("ingest_ray")
    out["ray_over_single_total"] = round(out["ray"]["total_s"] / out["single"]["total_s"], 3)
    out["ray_workers"] = workers
    return out


def report(res: dict) -> str:
    a = res["args"]
    lines = [
        "# Distributed (Ray) against single process",
        "",
        f"Command: `{res['command']}`",
        "",
        f"Machine: {res['machine']}. Pool: {a['rows']:,} rows x {a['dim']} dims float16 "
        f"({res['table_gb']:.2f} GB), {a['targets']} targets, budget k={a['budget']}. Ray: "
        f"`{a['address']}`, {a['tasks']} tasks per pass. Medians of {a['repeat']} rounds "
        f"(scans) and {a['select_repeat']} (selections), the order of the runs reversed "
        "every other round.",
        "",
        "## One correlation scan (8 queries, top-2000 each)",
        "",
        "| mode | median s | rows/s |",
        "|---|---|---|",
    ]
    sc = res["scan"]
    for name in ("stream", "ram", "ray"):
        lines.append(f"| {name} | {sc[name]['median_s']} | {sc[name]['rows_per_s']:,} |")
    lines += ["", f"Ray / single-process stream: {sc['ray_over_stream']}x time; Ray's "
              f"candidates identical to the single process's: {sc['ray_equals_stream']}. "
              f"Loading the table into RAM once: {sc['ram_load_s']} s. Ray's first scan, "
              f"which starts its worker processes, took {sc['ray_first_call_s']} s "
              "(not in the medians).", "",
              "## GTP selections (all targets in one run)", "",
              "| run | median s | rounds (s) |", "|---|---|---|"]
    for name, t in res["select"]["times"].items():
        lines.append(f"| {name} | {t['median_s']} | {', '.join(map(str, t['seconds']))} |")
    lines += ["", f"Agreement: {res['select']['agreement']}. Scans per GTP run: "
              f"{res['select']['scans_per_gtp_run']}.", "",
              "### Partitioned GTP against GTP on this pool", "",
              "| target | GTP residual | partitioned | ratio | overlap | candidates |",
              "|---|---|---|---|---|---|"]
    for q in res["select"]["quality"]:
        lines.append(f"| {q['target']} | {q['gtp_residual']} | {q['partitioned_residual']} | "
                     f"{q['ratio']} | {q['overlap']} | {q['candidates']} |")
    lines += ["", "### Planted problems (n=3000, k=20, noise 0.3, 5 seeds, in RAM)", "",
              "| regime | P | residual ratio mean / max | recovery GTP | recovery partitioned |",
              "|---|---|---|---|---|"]
    for q in res["planted"]:
        lines.append(f"| {q['regime']} | {q['partitions']} | {q['residual_ratio_mean']} / "
                     f"{q['residual_ratio_max']} | {q['support_recovery_gtp']} | "
                     f"{q['support_recovery_partitioned']} |")
    ing = res.get("ingest")
    if ing and "single" in ing:
        lines += ["", f"## Ingestion: SmolLM2-135M, {a['ingest_examples']} examples, "
                  "d=8192, LoRA q,v", "",
                  "| run | total s (with model loading) | loop s | examples/s in loop |",
                  "|---|---|---|---|"]
        for name in ("single", "ray"):
            x = ing[name]
            label = name
            if name == "ray" and "ray_workers" in ing:
                n = ing["ray_workers"]
                label = f"ray ({n} worker{'s' if n != 1 else ''})"
            lines.append(f"| {label} | {x['total_s']} | {x['loop_s']} | "
                         f"{x['examples_per_s_in_loop']} |")
        lines += ["", f"Same ids in the same order: {ing['same_ids']}; smallest cosine between "
                  f"a row's two versions: {ing['min_cosine_single_vs_ray']}. Ray / single "
                  f"total time: {ing['ray_over_single_total']}x."]
    elif ing:
        lines += ["", f"Ingestion: {ing.get('skipped')}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", default="bench-distributed/store", help="path or s3:// URI")
    p.add_argument("--address", default="local", help="Ray: local, auto or HOST:PORT")
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=8192)
    p.add_argument("--targets", type=int, default=4)
    p.add_argument("--budget", type=int, default=500)
    p.add_argument("--tasks", type=int, default=2, help="Ray tasks per pass over the pool")
    p.add_argument("--partitions", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3, help="rounds of scans")
    p.add_argument("--select-repeat", type=int, default=2, help="rounds of selections")
    p.add_argument("--ingest-examples", type=int, default=64, help="0: skip the ingest part")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write distributed.md and distributed.json here")
    p.add_argument("--tiny", action="store_true",
                   help="seconds: 3,000 rows of 64 dims, a tiny model, in a temporary folder "
                        "(checks the script runs; run by make test)")
    args = p.parse_args(argv)
    tmp = None
    if args.tiny:
        tmp = Path(tempfile.mkdtemp(prefix="distributed_tiny_"))
        args.store = str(tmp / "store")
        args.rows, args.dim, args.targets, args.budget = 3000, 64, 2, 20
        args.repeat, args.select_repeat, args.ingest_examples = 1, 1, 8
    try:
        run(args, argv)
    finally:  # the tiny mode's folder goes (make test runs it every time)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace, argv: list[str] | None) -> None:
    torch.set_num_threads(2)
    res: dict = {"args": vars(args), "command": "python " + " ".join(
                     ["benchmarks/distributed.py", *(argv or sys.argv[1:])]),
                 "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, "
                            f"torch {torch.__version__}"}
    store = build_store(args.store, args.rows, args.dim, args.targets, args.seed)
    res["table_gb"] = args.rows * args.dim * 2 / 1e9
    targets = [f"target{j}" for j in range(args.targets)]
    with ray_cluster(args.address, num_cpus=args.tasks if args.address == "local" else None):
        import ray

        res["ray"] = {"version": ray.__version__, "resources": ray.cluster_resources()}
        print("scans", flush=True)
        res["scan"] = bench_scans(store, args.tasks, 8, args.repeat)
        print(json.dumps(res["scan"]), flush=True)
        print("selections", flush=True)
        res["select"] = bench_selects(store, targets, args.budget, args.tasks, args.partitions,
                                      args.select_repeat)
        if args.ingest_examples:
            print("ingest", flush=True)
            # (tiny: one worker; each starts a process that loads the model, and the
            # tests' Ray ingestion covers two)
            res["ingest"] = bench_ingest(args.store, args.ingest_examples,
                                         1 if args.tiny else args.tasks, args.tiny)
    print("planted", flush=True)
    res["planted"] = planted_quality(4, seeds=1 if args.tiny else 5)
    text = report(res)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "distributed.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
        (out / "distributed.md").write_text(text)


if __name__ == "__main__":
    main()

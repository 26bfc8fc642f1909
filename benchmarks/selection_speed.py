"""Selection speed and quality on gradient-like synthetic pools.

Pools: clustered unit rows (cluster sizes follow a power law, as near-duplicate
families do in instruction data), T checkpoints x d dims, float16 in RAM.
Measured side by side in one run:
  * wall time and residual of gtp / omp / less / random, in-domain target
    (the pool's mean trajectory: the hard case of docs/selection.md), N x k grid;
  * Q = 1 vs Q = 16 targeted queries answered in one GTP run;
  * in-RAM scan vs bare torch matmul; streaming scan from Lance vs Lance's own decode;
  * share of GTP time spent in NNLS / greedy support updates.
"gtp" in the tables is the paper's GTP (``gtp-paper``: NNLS weights), which the figures of
selection_speed_notes.md refer to; "default gtp" is ``--method gtp`` (the selection's mean
matches the target's, on the centred pool), timed on a targeted query (the mean of 32 random
rows: the centred pool's own mean is zero).

    python benchmarks/selection_speed.py --out benchmarks/results
    python benchmarks/selection_speed.py --sizes 10000 --budgets 0.01 --quick   # smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gradstore  # noqa: E402
from gradstore.selectors.gtp import gtp as gtp_default  # noqa: E402
from gradstore.selectors.gtp_paper import gtp_paper as gtp  # noqa: E402
from gradstore.selectors.less import less_topk  # noqa: E402
from gradstore.selectors.omp import fit_support, omp  # noqa: E402
from gradstore.selectors.query import Query  # noqa: E402
from gradstore.selectors.random_subset import random_subset  # noqa: E402
from gradstore.selectors.scan import ScanQuery, correlation_scan  # noqa: E402
from gradstore.selectors.source import TensorSource  # noqa: E402
from gradstore.selectors.stacked import StackedPool  # noqa: E402

LRS = [2e-5, 1.5e-5, 1e-5, 5e-6]


def make_pool(n: int, T: int, d: int, seed: int = 0) -> torch.Tensor:
    """Clustered unit rows (per checkpoint), float16 (n, T*d)."""
    g = torch.Generator().manual_seed(seed)
    clusters = max(20, n // 250)
    sizes = 1.0 / torch.arange(1, clusters + 1, dtype=torch.float64) ** 0.8
    lab = torch.multinomial(sizes / sizes.sum(), n, replacement=True, generator=g)
    centers = torch.randn(clusters, T, d, generator=g)
    drift = torch.randn(clusters, T, d, generator=g) * 0.3  # checkpoints differ
    centers = centers + torch.cumsum(drift, 1)
    out = torch.empty((n, T * d), dtype=torch.float16)
    for s in range(0, n, 8192):
        e = min(n, s + 8192)
        x = centers[lab[s:e]] + 0.9 * torch.randn(e - s, T, d, generator=g)
        x /= x.norm(dim=2, keepdim=True)
        out[s:e] = x.reshape(e - s, -1).half()
    return out


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def default_gtp(pool: StackedPool, ys: list[np.ndarray], k: int) -> dict:
    """The default GTP on the centred pool for the given targets (one run)."""
    out, t = timed(lambda: gtp_default(pool, [Query(y, k) for y in ys]))
    return {"seconds": t, "residual": max(r.residual for r in out), "scans": out[0].scans,
            "fit_share": max(r.seconds_fit for r in out) / t}


def random_targets(pool: StackedPool, count: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [pool.rows(rng.choice(pool.num_rows, 32, replace=False)).double().numpy().mean(0)
            for _ in range(count)]


def grid(args, results):
    for n in args.sizes:
        X = make_pool(n, args.T, args.d)
        pool = StackedPool(TensorSource(X, args.T), eta=LRS[: args.T])
        cpool = pool.centered()
        yc = random_targets(cpool, 1, seed=n)
        y, t_mean = timed(pool.mean)
        for b in args.budgets:
            k = max(1, int(round(b * n)))
            if k > args.max_k:
                results["grid"].append({"N": n, "budget": b, "k": k, "skipped": True})
                save(args, results)
                continue
            row = {"N": n, "budget": b, "k": k, "target": "in-domain", "mean_seconds": t_mean}
            (g,), t = timed(lambda k=k, pool=pool, y=y: gtp(pool, [Query(y, k)]))
            row["gtp"] = {"seconds": t, "residual": g.residual, "scans": g.scans,
                          "fit_seconds": g.seconds_fit, "scan_seconds": g.seconds_scan,
                          "fit_share": g.seconds_fit / t, "chosen": len(g.rows)}
            row["gtp_default"] = default_gtp(cpool, yc, k)
            ((rows, _),), t = timed(lambda k=k, pool=pool, y=y: less_topk(pool, [y], [k]))
            _, res = fit_support(pool, rows, y)
            row["less"] = {"seconds": t, "residual": res}
            rows = random_subset(n, k, seed=0)
            _, res = fit_support(pool, rows, y)
            row["random"] = {"seconds": 0.0, "residual": res}
            # OMP: one scan per pick; estimate first and skip what would not fit
            per_scan = g.seconds_scan / max(g.scans, 1)
            est = k * per_scan * 1.1
            if est <= args.omp_max_seconds:
                (o,), t = timed(lambda k=k, pool=pool, y=y: omp(pool, [Query(y, k)]))
                row["omp"] = {"seconds": t, "residual": o.residual, "scans": o.scans,
                              "fit_seconds": o.seconds_fit}
                row["speedup_gtp_vs_omp"] = t / row["gtp"]["seconds"]
                row["residual_gtp_over_omp"] = g.residual / o.residual
            else:
                row["omp"] = {"skipped": True, "estimated_seconds": est}
                row["speedup_gtp_vs_omp_estimated"] = est / row["gtp"]["seconds"]
            results["grid"].append(row)
            print(json.dumps(row), flush=True)
            save(args, results)


def many_queries(args, results):
    n = args.multi_n
    X = make_pool(n, args.T, args.d, seed=1)
    pool = StackedPool(TensorSource(X, args.T), eta=LRS[: args.T])
    rng = np.random.default_rng(0)
    ys = []
    for _ in range(16):
        rows = rng.choice(n, 32, replace=False)
        ys.append(pool.rows(rows).double().numpy().mean(0))
    k = max(1, int(round(0.01 * n)))
    _, t1 = timed(lambda: gtp(pool, [Query(ys[0], k)]))
    out16, t16 = timed(lambda: gtp(pool, [Query(y, k) for y in ys]))
    _, l1 = timed(lambda: less_topk(pool, [ys[0]], [k]))
    _, l16 = timed(lambda: less_topk(pool, ys, [k] * 16))
    cpool = pool.centered()
    cys = random_targets(cpool, 16, seed=0)
    d1, d16 = default_gtp(cpool, cys[:1], k), default_gtp(cpool, cys, k)
    row = {"N": n, "k": k, "gtp_Q1_seconds": t1, "gtp_Q16_seconds": t16, "gtp_ratio": t16 / t1,
           "default_Q1_seconds": d1["seconds"], "default_Q16_seconds": d16["seconds"],
           "default_ratio": d16["seconds"] / d1["seconds"],
           "less_Q1_seconds": l1, "less_Q16_seconds": l16, "less_ratio": l16 / l1,
           "gtp_Q16_scans": out16[0].scans}
    results["many_queries"] = row
    print(json.dumps(row), flush=True)
    save(args, results)


def bare_matmul_seconds(X: torch.Tensor, R: np.ndarray) -> float:
    """One float32 matmul over the same matrix (already converted): the floor."""
    X32 = X.float()
    Rt = torch.from_numpy(R)
    X32 @ Rt
    return timed(lambda: X32 @ Rt)[1]


SCAN_ROUNDS = 9
"""Alternating rounds of the streamed scan and Lance's decode (their medians compared)."""


def scan_modes(args, results):
    n = args.scan_n
    X = make_pool(n, args.T, args.d, seed=2)
    R = np.random.default_rng(0).standard_normal((args.T * args.d, 1)).astype(np.float32)
    q = [ScanQuery(slice(0, 1), 100)]
    ram = StackedPool(TensorSource(X, args.T))
    correlation_scan(ram, R, q)
    _, t_ram = timed(lambda: correlation_scan(ram, R, q))
    t_mm = bare_matmul_seconds(X, R)
    with tempfile.TemporaryDirectory() as tmp:
        store = gradstore.open(tmp)
        Xn = X.float().numpy()
        for t in range(args.T):
            store.import_vectors("pool", Xn[:, t * args.d:(t + 1) * args.d], checkpoint=str(t))
        del Xn
        src = store.source("pool", mode="stream")
        sp = StackedPool(src)
        correlation_scan(sp, R, q)  # warm page cache

        def decode():
            ds = src.dataset
            for batch in ds.scanner(columns=src.columns, batch_size=src.block_rows,
                                    scan_in_order=True).to_batches():
                for c in src.columns:
                    batch.column(c).flatten().to_numpy(zero_copy_only=False)

        decode()
        # alternating rounds, medians: one timing of each swung by 2-4x between runs here
        t_stream, t_decode = (float(np.median(ts)) for ts in zip(*[
            (timed(lambda: correlation_scan(sp, R, q))[1], timed(decode)[1])
            for _ in range(SCAN_ROUNDS)], strict=True))
        stream_res = correlation_scan(sp, R, q)[0][0]
        ram_res = correlation_scan(ram, R, q)[0][0]
    gb = n * args.T * args.d * 2 / 1e9
    row = {"N": n, "gb_float16": gb, "ram_scan_seconds": t_ram, "bare_matmul_f32_seconds": t_mm,
           "ram_vs_matmul": t_mm / t_ram, "stream_scan_seconds": t_stream,
           "lance_decode_seconds": t_decode, "stream_vs_decode": t_decode / t_stream,
           "stream_rows_per_s": n / t_stream, "decode_rows_per_s": n / t_decode,
           "same_top100": stream_res.tolist() == ram_res.tolist()}
    results["scan_modes"] = row
    print(json.dumps(row), flush=True)
    save(args, results)


def save(args, results):
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "selection_speed.json").write_text(json.dumps(results, indent=1))
    (out / "selection_speed.md").write_text(render(results))


def f(x, nd=3):
    return "-" if x is None else f"{x:.{nd}g}" if isinstance(x, float) else str(x)


def render(results) -> str:
    lines = ["# Selection speed (synthetic gradient-like pools)", "",
             f"Command: `{results['command']}`", "",
             f"Machine: {results['machine']}; torch {results['torch']}; "
             f"T = {results['T']} checkpoints x d = {results['d']}; float16 pool in RAM; "
             "in-domain target (pool mean).", "",
             "| N | k | gtp s | gtp resid | scans | fit share | omp s | omp resid | "
             "speed-up | resid gtp/omp | less s | less resid | random resid |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["grid"]:
        if r.get("skipped"):
            lines.append(f"| {r['N']} | {r['k']} | skipped (k > --max-k) |" + " |" * 10)
            continue
        o = r["omp"]
        sp = r.get("speedup_gtp_vs_omp")
        sp_txt = f(sp) if sp else f"~{f(r.get('speedup_gtp_vs_omp_estimated'))} (est.)"
        fit_share = r["gtp"].get("fit_share", r["gtp"].get("nnls_share"))  # (older records)
        lines.append(
            f"| {r['N']} | {r['k']} | {f(r['gtp']['seconds'])} | {f(r['gtp']['residual'], 4)} | "
            f"{r['gtp']['scans']} | {f(fit_share, 2)} | "
            f"{f(o.get('seconds')) if not o.get('skipped') else 'skipped (est. ' + f(o['estimated_seconds']) + ')'} | "  # noqa: E501
            f"{f(o.get('residual'), 4)} | {sp_txt} | {f(r.get('residual_gtp_over_omp'), 4)} | "
            f"{f(r['less']['seconds'])} | {f(r['less']['residual'], 4)} | "
            f"{f(r['random']['residual'], 4)} |")
    lines += default_table(results["grid"])
    if "many_queries" in results:
        m = results["many_queries"]
        lines += ["", "## Many targets in one run", "",
                  f"N = {m['N']}, k = {m['k']}: GTP Q=1 {f(m['gtp_Q1_seconds'])} s, "
                  f"Q=16 {f(m['gtp_Q16_seconds'])} s (ratio {f(m['gtp_ratio'])}); "
                  f"LESS Q=1 {f(m['less_Q1_seconds'])} s, Q=16 {f(m['less_Q16_seconds'])} s "
                  f"(ratio {f(m['less_ratio'])})."]
        if "default_ratio" in m:
            lines[-1] += (f" Default GTP Q=1 {f(m['default_Q1_seconds'])} s, Q=16 "
                          f"{f(m['default_Q16_seconds'])} s (ratio {f(m['default_ratio'])}).")
    if "scan_modes" in results:
        s = results["scan_modes"]
        lines += ["", "## Scan modes", "",
                  f"N = {s['N']} ({f(s['gb_float16'])} GB float16): in-RAM scan "
                  f"{f(s['ram_scan_seconds'])} s vs bare float32 matmul "
                  f"{f(s['bare_matmul_f32_seconds'])} s (ratio {f(s['ram_vs_matmul'])}); "
                  f"streaming from Lance {f(s['stream_scan_seconds'])} s vs Lance decode alone "
                  f"{f(s['lance_decode_seconds'])} s (ratio {f(s['stream_vs_decode'])}); "
                  f"same top-100 in both modes: {s['same_top100']}."]
    return "\n".join(lines) + "\n"


def default_table(grid_rows: list[dict]) -> list[str]:
    rows = [r for r in grid_rows if "gtp_default" in r]
    if not rows:
        return []
    out = ["", "## Default GTP (`--method gtp`), a targeted query", "",
           "| N | k | seconds | residual | scans | fit share | vs omp (in-domain) |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        d, o = r["gtp_default"], r["omp"]
        omp_s = o.get("seconds", o.get("estimated_seconds"))
        vs = "-" if not omp_s else f"{f(omp_s / d['seconds'])}x" + (
            " (est.)" if o.get("skipped") else "")
        out.append(f"| {r['N']} | {r['k']} | {f(d['seconds'])} | {f(d['residual'], 4)} | "
                   f"{d['scans']} | {f(d['fit_share'], 2)} | {vs} |")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")],
                    default=[10_000, 50_000, 200_000])
    ap.add_argument("--budgets", type=lambda s: [float(x) for x in s.split(",")],
                    default=[0.01, 0.05])
    ap.add_argument("--T", type=int, default=4)
    ap.add_argument("--d", type=int, default=1024)
    ap.add_argument("--omp-max-seconds", type=float, default=1500)
    ap.add_argument("--max-k", type=int, default=4000,
                    help="skip grid cells with a larger k (GTP's O(k^3) NNLS updates)")
    ap.add_argument("--multi-n", type=int, default=50_000)
    ap.add_argument("--scan-n", type=int, default=50_000)
    ap.add_argument("--skip", default="", help="comma list of grid,many,scan to skip")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--tiny", action="store_true",
                    help="seconds: 2,000 rows of 2 x 32 dims, results to a temporary folder "
                         "(checks the script runs; run by make test)")
    args = ap.parse_args(argv)
    if args.tiny:
        args.sizes, args.budgets, args.T, args.d = [2000], [0.01], 2, 32
        args.multi_n = args.scan_n = 2000
        args.omp_max_seconds = 30
        args.out = tempfile.mkdtemp(prefix="selection_speed_tiny_")
    torch.set_num_threads(2)
    command = " ".join(["python benchmarks/selection_speed.py", *(argv or sys.argv[1:])])
    results = {"command": command, "machine": platform.processor() or platform.machine(),
               "torch": torch.__version__, "T": args.T, "d": args.d, "grid": []}
    skip = set(args.skip.split(","))
    if "scan" not in skip:
        scan_modes(args, results)
    if "many" not in skip:
        many_queries(args, results)
    if "grid" not in skip:
        grid(args, results)


if __name__ == "__main__":
    main()

"""A million rows: import, then select at 0.1%, 1% and 5% under a memory budget.

A clustered, gradient-like pool of 1,000,000 rows x 1024 dims at 2 checkpoints (unit rows
per checkpoint around 4,000 cluster centres that drift between checkpoints; 4 GB stored as
float16) is written as two float16 ``.npy`` files and imported one checkpoint at a time
through the CLI; a 20-row target mixes two clusters. Then ``select`` runs for the default
``gtp``, ``gtp-paper`` and LESS at each budget with ``--memory-budget`` (default 3GB: the
pool cannot be held in RAM, so it is streamed from Lance). Every command is a fresh process
whose peak resident set (``VmHWM``) is reported with its seconds and the selection's
relative residual; the bound checked is 4 GB. Then the 0.1% selections run again with
``--ray local --ray-tasks 2`` (every pass over the pool as 2 Ray tasks on a local cluster)
and their ids and weights are compared with the local answers. Last, the first budget runs
again for ``--where-methods`` with two predicates that each keep 10% of the rows: one whose
rows are spread over the whole table (``id LIKE '%7'``) and one whose rows sit together (the
first 10% as imported, as one source's rows do in a pool concatenated from its datasets),
in RAM (auto) and streamed; the report gives each one's seconds and peak RSS over the
unfiltered selection's, both for the command (a fresh process: imports included) and for the
selection itself (the ``seconds`` the command reports). Issue 38 asks at most 0.25x and no
higher.

Each finished command is recorded in ``million_jobs.json`` next to the results, so an
interrupted run resumes where it stopped (``--work`` keeps the store between runs).

    python benchmarks/million.py --out benchmarks/results --work bench-million  # run alone
    python benchmarks/million.py --tiny                                         # seconds
    python benchmarks/million.py --budgets 0.1% --methods gtp,less --ray-methods "" \
        --name million_where --out benchmarks/results --work bench-million     # --where
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from memory import peak  # noqa: E402

GB = 1 << 30
WHERES = {"spread": "id LIKE '%7'", "together": "CAST(id AS BIGINT) < {tenth}"}
"""The ``--where`` predicates timed, each keeping 10% of the rows: those whose id ends in 7
(spread evenly over the table), and the first tenth as imported (one run of rows)."""
RSS_BOUND = 4 * GB
METHODS = ("gtp", "gtp-paper", "less")
BUDGETS = ("0.1%", "1%", "5%")
CHECKPOINTS = 2
LRS = ("2e-5", "1e-5")
CHUNK = 20_000


def cluster_model(n: int, d: int, seed: int = 0):
    """Cluster labels of the rows, and centres per checkpoint (drifting between them)."""
    rng = np.random.default_rng(seed)
    clusters = max(20, n // 250)
    sizes = 1.0 / np.arange(1, clusters + 1) ** 0.8
    labels = rng.choice(clusters, n, p=sizes / sizes.sum())
    centres = rng.standard_normal((clusters, d), dtype=np.float32)
    drift = [np.zeros_like(centres)] + [0.3 * rng.standard_normal((clusters, d),
                                                                  dtype=np.float32)
                                        for _ in range(CHECKPOINTS - 1)]
    return labels, [centres + sum(drift[: t + 1]) for t in range(CHECKPOINTS)]


def unit_rows(centres: np.ndarray, labels: np.ndarray, rng) -> np.ndarray:
    x = centres[labels] + 0.9 * rng.standard_normal((len(labels), centres.shape[1]),
                                                    dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_data(work: Path, n: int, d: int) -> None:
    """``pool_{t}.npy`` (float16, written in chunks) and ``target_{t}.npy`` per checkpoint."""
    labels, centres = cluster_model(n, d)
    target_labels = np.repeat([labels[0], labels[n // 2]], 10)
    for t in range(CHECKPOINTS):
        path = work / f"pool_{t}.npy"
        if not path.exists():
            part = work / f"pool_{t}.npy.part"
            out = np.lib.format.open_memmap(part, mode="w+", dtype=np.float16, shape=(n, d))
            rng = np.random.default_rng(100 + t)  # the same noise stream for every run
            for s in range(0, n, CHUNK):
                out[s : s + CHUNK] = unit_rows(centres[t], labels[s : s + CHUNK], rng)
            out.flush()
            del out
            part.rename(path)
        np.save(work / f"target_{t}.npy",
                unit_rows(centres[t], target_labels, np.random.default_rng(200 + t)))


class Jobs:
    """Finished commands by name, saved after each one (a rerun skips them)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done = json.loads(path.read_text()) if path.exists() else {}

    def run(self, name: str, fn) -> dict:
        if name not in self.done:
            self.done[name] = fn()
            self.path.write_text(json.dumps(self.done, indent=1))
            print(json.dumps({name: self.done[name]}), flush=True)
        return self.done[name]


def command(*args: object) -> dict:
    rss, seconds, anon = peak(*args)
    return {"peak_rss": rss, "seconds": round(seconds, 1), "peak_anonymous": anon}


def select(store: Path, method: str, budget: str, memory: str, out: Path, *extra) -> dict:
    rec = command("select", store, "--pool", "pool", "--target", "tgt", "--budget", budget,
                  "--method", method, "--memory-budget", memory, "--quiet", "--out", out,
                  *extra)
    (sel,) = json.loads(out.read_text())
    rec |= {"budget": budget, "chosen": len(sel["ids"]), "residual": sel["residual"],
            "selection_seconds": round(sel["seconds"], 2)}
    return rec


def same_answer(a: Path, b: Path) -> bool:
    (x,), (y,) = (json.loads(p.read_text()) for p in (a, b))
    return x["ids"] == y["ids"] and np.allclose(x["weights"], y["weights"], rtol=1e-6,
                                                 atol=1e-9)


def run(args, work: Path, jobs: Jobs) -> None:
    n, d = args.rows, args.dim
    write_data(work, n, d)
    store = work / "store"
    for t in range(CHECKPOINTS):
        jobs.run(f"import target {t}", lambda t=t: command(
            "import", store, "tgt", "--vectors", work / f"target_{t}.npy", "--kind", "target",
            "--checkpoint", t, "--lr", LRS[t]))
    jobs.run("baseline (info)", lambda: command("info", store))
    for t in range(CHECKPOINTS):
        jobs.run(f"import pool {t}", lambda t=t: command(
            "import", store, "pool", "--vectors", work / f"pool_{t}.npy", "--checkpoint", t,
            "--lr", LRS[t]))
    for budget in args.budgets.split(","):
        for method in args.methods.split(","):
            out = work / f"sel_{method}_{budget}.json"
            jobs.run(f"select {method} {budget}", lambda m=method, b=budget, o=out: select(
                store, m, b, args.memory_budget, o))
    budget = args.budgets.split(",")[0]
    for method in filter(None, args.where_methods.split(",")):
        for kind, where in wheres(n, args.tiny).items():
            ram, stream = (work / f"sel_{method}_{budget}_where_{kind}{how}.json"
                           for how in ("", "_stream"))
            jobs.run(f"select {method} {budget} --where {kind}",
                     lambda m=method, w=where, o=ram: select(
                         store, m, budget, args.memory_budget, o, "--where", w))
            jobs.run(f"select {method} {budget} --where {kind} --scan-mode stream",
                     lambda m=method, w=where, o=stream: select(
                         store, m, budget, args.memory_budget, o, "--where", w,
                         "--scan-mode", "stream"))
            if not same_answer(ram, stream):
                raise SystemExit(f"{method}: the streamed --where {kind} selection differs "
                                 "from RAM's")
    for method in filter(None, args.ray_methods.split(",")):
        budget = args.budgets.split(",")[0]
        local, ray = (work / f"sel_{method}_{budget}.json",
                      work / f"sel_{method}_{budget}_ray.json")
        rec = jobs.run(f"select {method} {budget} --ray", lambda m=method, b=budget, o=ray:
                       select(store, m, b, args.memory_budget, o, "--ray", args.ray,
                              "--ray-tasks", "2"))
        if "same_as_local" not in rec:
            rec["same_as_local"] = same_answer(local, ray)
            jobs.path.write_text(json.dumps(jobs.done, indent=1))


def report(args, jobs: Jobs) -> str:
    mb = 1 << 20
    lines = [f"# A million rows ({args.rows:,} x {args.dim} x {CHECKPOINTS} checkpoints, "
             f"{args.rows * args.dim * CHECKPOINTS * 2 / GB:.1f} GB stored as float16)", "",
             f"`python benchmarks/million.py --rows {args.rows} --dim {args.dim} "
             f"--budgets {args.budgets} --methods {args.methods} --memory-budget "
             f"{args.memory_budget} --ray-methods '{args.ray_methods}' --where-methods "
             f"'{args.where_methods}' --name {args.name}` ({platform.node()}, "
             f"{platform.machine()}; each command a fresh process, peak RSS = VmHWM; bound "
             "4 GB)", "",
             "| command | budget | chosen | seconds | peak RSS (MB) | within 4 GB | residual | "
             "same as local |", "|---|---|---|---|---|---|---|---|"]
    for name, r in jobs.done.items():
        same = r.get("same_as_local")
        residual = "-" if "residual" not in r else f"{r['residual']:.4g}"
        lines.append(
            f"| {name} | {r.get('budget', '-')} | {r.get('chosen', '-')} | {r['seconds']} | "
            f"{r['peak_rss'] / mb:.0f} | {'yes' if r['peak_rss'] <= RSS_BOUND else '**no**'} | "
            f"{residual} | {'-' if same is None else ('yes' if same else '**no**')} |")
    lines += where_ratios(args, jobs)
    return "\n".join(lines) + "\n"


def wheres(rows: int, tiny: bool = False) -> dict[str, str]:
    """The predicates for a pool of ``rows`` rows (``tiny``: the first only, the same code
    path in fewer fresh processes)."""
    out = {k: w.replace("{tenth}", str(rows // 10)) for k, w in WHERES.items()}
    return dict(list(out.items())[:1]) if tiny else out


def where_ratios(args, jobs: Jobs) -> list[str]:
    """Each ``--where`` selection's seconds (the command's, the selection's own) and peak
    RSS over the unfiltered one's."""
    budget = args.budgets.split(",")[0]
    out = []
    for method in filter(None, args.where_methods.split(",")):
        a = jobs.done.get(f"select {method} {budget}")
        for kind in WHERES:
            for how in ("", " --scan-mode stream"):
                b = jobs.done.get(f"select {method} {budget} --where {kind}{how}")
                if not (a and b):
                    continue
                own = (f"{b['selection_seconds'] / a['selection_seconds']:.2f}"
                       if "selection_seconds" in a and "selection_seconds" in b else "-")
                out.append(f"| {method} {budget} | {kind} | {'stream' if how else 'auto (RAM)'}"
                           f" | {b['seconds'] / a['seconds']:.2f} | {own} | "
                           f"{b['peak_rss'] / a['peak_rss']:.2f} |")
    if not out:
        return []
    where = "; ".join(f"{k}: `--where \"{w}\"`" for k, w in wheres(args.rows).items())
    return ["", f"Each `--where` (10% of the rows; {where}) over the same selection unfiltered "
            "(streamed), measured in the run above; the streamed and in-RAM `--where` "
            "selections are checked to be the same. `command`: the fresh process's seconds "
            "(imports included); `selection`: the seconds the selection itself reports:", "",
            "| selection | rows kept | pool | command seconds ratio | selection seconds ratio "
            "| peak RSS ratio |", "|---|---|---|---|---|---|", *out]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--budgets", default=",".join(BUDGETS))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--memory-budget", default="3GB")
    ap.add_argument("--ray-methods", default=",".join(METHODS),
                    help="methods run again with --ray at the first budget")
    ap.add_argument("--where-methods", default="gtp,less",
                    help="methods run again at the first budget with --where (10%% of rows)")
    ap.add_argument("--name", default="million", help="results file name (without .md)")
    ap.add_argument("--ray", default="local", metavar="ADDRESS",
                    help="the Ray cluster of the --ray selections (default local: a cluster "
                         "of their own on this machine)")
    ap.add_argument("--work", type=Path, help="keep data, store and job records here")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args(argv)
    if args.tiny:  # every command kind once: one checkpoint, one budget, one Ray answer
        args.rows, args.dim, args.memory_budget = 6000, 32, "100KB"
        args.budgets, args.methods, args.ray_methods = "1%", "gtp,less", "gtp"
        args.where_methods = "less"
        globals()["CHECKPOINTS"] = 1
    tmp = None
    if args.work is None or args.tiny:
        tmp = Path(tempfile.mkdtemp(prefix="million-"))
    work = tmp or args.work
    work.mkdir(parents=True, exist_ok=True)
    try:
        jobs = Jobs(work / "million_jobs.json")
        run(args, work, jobs)
        text = report(args, jobs)
        print(text)
        if args.out and not args.tiny:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / f"{args.name}.md").write_text(text)
            (args.out / f"{args.name}.json").write_text(json.dumps(jobs.done, indent=1))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

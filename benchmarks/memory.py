"""Peak memory of import and of streamed selections under memory budgets, against an idle
process's baseline.

A 200,000 x 1024 float32 .npy pool (800 MB on disk, 400 MB stored as float16) and a
20-row target are imported; then ``select --budget K --memory-budget B`` runs for LESS, the
default gtp and gtp-paper at k = 2000, and OMP at a smaller k (``--omp-k``: OMP scans the
pool once per pick, 2,000 passes would take the better part of an hour here), at each
budget. Each command runs in a fresh process whose peak resident set (``VmHWM``:
``ru_maxrss`` would carry over the parent's size across fork and exec) is reported; the
baseline is the same process running ``info`` with the libraries a ``select`` loads
imported first (Python, torch, scipy, Lance and gradstore: ``SELECT_LIBRARIES``).
The bound checked is the one gradstore aims at: import, LESS and gtp at most 30 MB above
the budget over the baseline.

    python benchmarks/memory.py --out benchmarks/results     # ~10 min here, run alone
    python benchmarks/memory.py --tiny                       # seconds
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import sys, io, contextlib, threading, time
sys.path.insert(0, {root!r})
for name in {preload!r}:
    __import__(name)
def status(key):
    return int([l for l in open("/proc/self/status") if l.startswith(key)][0].split()[1]) * 1024
anon, done = [0], threading.Event()
def sample():
    while not done.is_set():
        anon[0] = max(anon[0], status("RssAnon"))
        time.sleep(0.001)
threading.Thread(target=sample, daemon=True).start()
from gradstore.cli.main import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    code = main(sys.argv[1:])
done.set()
anon[0] = max(anon[0], status("RssAnon"))
print("PEAK", status("VmHWM"), code, anon[0])
"""
"""The child runs one command and prints its peak resident set (``VmHWM``) and the peak of
its anonymous memory (``RssAnon``, sampled every millisecond by a thread): the resident set
also counts the pages of shared libraries' code a command touches (Lance's reader alone
maps ~30 MB of it on a process's first scan), which are clean, shared and evictable."""


def peak(*args: object, preload: tuple[str, ...] = ()) -> tuple[int, float, int]:
    """Peak RSS in bytes of one gradstore command in a fresh process, its seconds and its
    peak anonymous memory in bytes."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD.format(root=str(ROOT), preload=preload),
                           *map(str, args)],
                          capture_output=True, text=True)
    line = [x for x in done.stdout.splitlines() if x.startswith("PEAK")]
    if done.returncode != 0 or not line or line[0].split()[2] != "0":
        raise SystemExit(f"{args[0]} failed: {done.stdout[-1000:]} {done.stderr[-2000:]}")
    return int(line[0].split()[1]), time.perf_counter() - t0, int(line[0].split()[3])


def write_pool(path: Path, n: int, d: int) -> None:
    """A float32 .npy written in chunks (this process never holds it whole)."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    rng = np.random.default_rng(0)
    for s in range(0, n, 10000):
        e = min(n, s + 10000)
        out[s:e] = rng.standard_normal((e - s, d), dtype=np.float32)
    out.flush()
    del out


SELECT_LIBRARIES = ("torch", "scipy.optimize")
"""What a ``select`` loads and ``info`` does not: the baseline process imports them first,
so that it holds every library a selection holds before it reads a row."""
SLACK = 30 << 20
"""What a command may hold above its memory budget (over the idle baseline)."""
BOUNDED = ("import", "less", "gtp")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--k", type=int, default=2000)
    ap.add_argument("--omp-k", type=int, default=200)
    ap.add_argument("--budgets", default="50MB,500MB")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--methods", default="less,gtp,gtp-paper,omp")
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args(argv)
    n, d, k, omp_k = (3000, 64, 30, 10) if args.tiny else (args.rows, args.dim, args.k,
                                                          args.omp_k)
    budgets = args.budgets.split(",")[:1] if args.tiny else args.budgets.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_pool(tmp / "pool.npy", n, d)
        np.save(tmp / "tgt.npy", np.random.default_rng(1).standard_normal((20, d))
                .astype(np.float32))
        store = tmp / "s"
        peak("import", store, "tgt", "--vectors", tmp / "tgt.npy", "--kind", "target")
        base = peak("info", store, preload=SELECT_LIBRARIES)
        rows = [("baseline (info)", "", 0, *base),
                ("import", "", n, *peak("import", store, "pool", "--vectors", tmp / "pool.npy"))]
        for budget in budgets:
            for method in args.methods.split(","):
                kk = omp_k if method == "omp" else k
                rows.append((method, budget, kk, *peak(
                    "select", store, "--pool", "pool", "--target", "tgt", "--budget", kk,
                    "--method", method, "--memory-budget", budget, "--quiet")))
    report(rows, base, budgets, (n, d, k, omp_k), args)


def report(rows: list[tuple], base: tuple, budgets: list[str], shape: tuple, args) -> None:
    from gradstore.config import parse_size

    mb = 1 << 20
    n, d, k, omp_k = shape
    lines = [f"# Peak memory ({n:,} x {d} pool, {n * d * 2 / mb:.0f} MB stored as float16)",
             "", f"`python benchmarks/memory.py --rows {n} --dim {d} --k {k} "
             f"--omp-k {omp_k} --budgets {args.budgets} --methods {args.methods}` "
             f"({platform.node()}; each command a fresh process; RSS = VmHWM, anonymous = "
             "peak RssAnon sampled every ms; both above the idle baseline's)", "",
             "| command | --memory-budget | k | peak RSS (MB) | RSS above baseline (MB) | "
             "anonymous above baseline (MB) | bound (MB) | RSS within | anonymous within | "
             "seconds |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, budget, kk, rss, secs, anon in rows:
        above, anon_above = rss - base[0], anon - base[2]
        limits = [parse_size(budget)] if budget else [parse_size(b) for b in budgets]
        bound = min(limits) + SLACK if name in BOUNDED else None

        def within(x: int, bound=bound) -> str:
            return "-" if bound is None else ("yes" if x <= bound else "**no**")

        lines.append(f"| {name} | {budget or '-'} | {kk or '-'} | {rss / mb:.0f} | "
                     f"{above / mb:.0f} | {anon_above / mb:.0f} | "
                     f"{'-' if bound is None else round(bound / mb)} | {within(above)} | "
                     f"{within(anon_above)} | {secs:.1f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out and not args.tiny:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "memory.md").write_text(text)
        (args.out / "memory.json").write_text(json.dumps(
            [{"command": r[0], "memory_budget": r[1], "k": r[2], "peak_bytes": r[3],
              "seconds": r[4], "peak_anonymous_bytes": r[5]} for r in rows], indent=1))


if __name__ == "__main__":
    main()

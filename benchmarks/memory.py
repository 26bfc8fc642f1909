"""Peak memory of import and of a streamed selection, against a bare process's baseline.

A 200,000 x 1024 float32 .npy pool (800 MB on disk, 400 MB stored as float16) and a
20-row target are imported; then ``select --memory-budget 50MB`` (the pool is streamed from
Lance) runs for gtp and less. Each command runs in a fresh process whose peak resident set
(``VmHWM``: ``ru_maxrss`` would carry over the parent's size across fork and exec) is
reported; the baseline is the same process running ``info`` (Python,
torch, Lance and gradstore loaded).

    python benchmarks/memory.py --out benchmarks/results     # ~5 min here
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
import sys, io, contextlib
sys.path.insert(0, {root!r})
from gradstore.cli.main import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    code = main(sys.argv[1:])
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print("PEAK", int(hwm) * 1024, code)
"""


def peak(*args: object) -> tuple[int, float]:
    """Peak RSS in bytes of one gradstore command in a fresh process, and its seconds."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD.format(root=str(ROOT)), *map(str, args)],
                          capture_output=True, text=True)
    line = [x for x in done.stdout.splitlines() if x.startswith("PEAK")]
    if done.returncode != 0 or not line or line[0].split()[2] != "0":
        raise SystemExit(f"{args[0]} failed: {done.stdout[-1000:]} {done.stderr[-2000:]}")
    return int(line[0].split()[1]), time.perf_counter() - t0


def write_pool(path: Path, n: int, d: int) -> None:
    """A float32 .npy written in chunks (this process never holds it whole)."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    rng = np.random.default_rng(0)
    for s in range(0, n, 10000):
        e = min(n, s + 10000)
        out[s:e] = rng.standard_normal((e - s, d), dtype=np.float32)
    out.flush()
    del out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--budget", default="50MB")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args()
    n, d = (3000, 64) if args.tiny else (args.rows, args.dim)
    mb = 1 << 20
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_pool(tmp / "pool.npy", n, d)
        np.save(tmp / "tgt.npy", np.random.default_rng(1).standard_normal((20, d))
                .astype(np.float32))
        store = tmp / "s"
        peak("import", store, "tgt", "--vectors", tmp / "tgt.npy", "--kind", "target")
        base, _ = peak("info", store)
        imp, imp_s = peak("import", store, "pool", "--vectors", tmp / "pool.npy")
        rows = {"baseline (info)": (base, 0.0), "import": (imp, imp_s)}
        for method in ("gtp", "less"):
            rows[f"select {method} --memory-budget {args.budget}"] = peak(
                "select", store, "--pool", "pool", "--target", "tgt", "--budget", "0.1%",
                "--method", method, "--memory-budget", args.budget, "--quiet")
        file_mb = (tmp / "pool.npy").stat().st_size / mb
    lines = [f"# Peak memory ({n:,} x {d} float32 pool, {file_mb:.0f} MB .npy, "
             f"{n * d * 2 / mb:.0f} MB stored as float16)", "",
             f"`python benchmarks/memory.py --rows {n} --dim {d} --budget {args.budget}` "
             f"({platform.node()}; each command a fresh process; peak = VmHWM)", "",
             "| command | peak RSS (MB) | above baseline (MB) | seconds |", "|---|---|---|---|"]
    for name, (rss, secs) in rows.items():
        lines.append(f"| {name} | {rss / mb:.0f} | {(rss - base) / mb:.0f} | {secs:.1f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out and not args.tiny:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "memory.md").write_text(text)
        (args.out / "memory.json").write_text(json.dumps(
            {k: {"peak_bytes": v[0], "seconds": v[1]} for k, v in rows.items()}, indent=1))


if __name__ == "__main__":
    main()

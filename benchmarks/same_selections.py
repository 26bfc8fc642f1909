"""The same selections from two versions of gradstore's code, on copies of one store.

A refactor of the selectors or the store must not change an answer. This runs a grid of
selections (every method; in RAM, streamed, and on Ray for the default) with the code of
git revision ``--before`` and with the working tree, each on its own copy of ``--store``,
and compares them: the same ids in the same order, and the largest weight difference
(bit for bit when it is 0).

    python benchmarks/same_selections.py --store STORE --pool pool --target tgt \
        --before e3266aa --out benchmarks/results      # each side in a child process
    python benchmarks/same_selections.py --tiny          # seconds: a small store, one side

The ``--before`` side runs in a child process with that revision's ``gradstore`` first on
its path (a ``git worktree`` made for the run and removed after); the store is copied for
each side because a selection appends to the selection log.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GRID = [  # (method, mode, extra options)
    ("gtp", "ram", {}), ("gtp", "stream", {}), ("gtp", "ram", {"ray": "local"}),
    ("gtp", "ram", {"tolerance": 0.0}), ("gtp", "ram", {"target_mode": "parts"}),
    ("gtp-paper", "ram", {}), ("gtp-paper", "stream", {}), ("omp", "ram", {}),
    ("less", "ram", {}), ("less", "stream", {}), ("round-robin", "ram", {}),
    ("random", "ram", {}),
]
"""The selections compared (each at every budget)."""

def run_grid(gradstore, grid: list, store: str, pool: str, target: str,
             budgets: list) -> list[dict]:
    """Each selection of ``grid`` at each budget on ``store``: ids, weights, seconds."""
    st = gradstore.open(store)
    out = []
    for method, mode, extra in grid:
        if extra.get("ray") and not _have_ray():
            continue
        for budget in budgets:
            t0 = time.perf_counter()
            sel = st.select(pool, target, budget=budget, method=method, mode=mode, **extra)
            out.append({"method": method, "mode": mode, "extra": extra, "budget": budget,
                        "ids": list(sel.ids), "weights": [float(w) for w in sel.weights],
                        "seconds": round(time.perf_counter() - t0, 3)})
    return out


def _have_ray() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def before_side(rev: str, store: Path, args, work: Path) -> list[dict]:
    """The grid run by revision ``rev``'s code: this script in a child process whose path
    finds that revision's ``gradstore`` first (a worktree made for the run)."""
    import os

    tree = work / "before-tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), rev],
                   check=True, capture_output=True)
    try:
        payload = work / "side.json"
        payload.write_text(json.dumps([GRID, str(store), args.pool, args.target,
                                       args.budgets]))
        done = subprocess.run([sys.executable, __file__, "--side", str(payload)],
                              capture_output=True, text=True,
                              env=dict(os.environ, PYTHONPATH=str(tree)))
        if done.returncode != 0:
            raise SystemExit(f"the {rev} side failed: {done.stderr[-2000:]}")
        got = json.loads(done.stdout.strip().splitlines()[-1])
        assert got["gradstore"].startswith(str(tree)), got["gradstore"]  # that code ran
        return got["rows"]
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                       capture_output=True)


def compare(before: list[dict], after: list[dict]) -> list[dict]:
    """Row by row: same ids in the same order, the largest weight difference."""
    key = lambda r: (r["method"], r["mode"], json.dumps(r["extra"], sort_keys=True),  # noqa: E731
                     str(r["budget"]))
    theirs = {key(r): r for r in before}
    rows = []
    for r in after:
        b = theirs.get(key(r))
        if b is None:
            continue
        same = b["ids"] == r["ids"]
        diff = (float(np.max(np.abs(np.subtract(b["weights"], r["weights"]))))
                if same and r["weights"] else None)
        rows.append({"method": r["method"], "mode": r["mode"], "extra": r["extra"],
                     "budget": r["budget"], "k": len(r["ids"]), "same_ids": same,
                     "max_weight_diff": diff, "seconds_before": b["seconds"],
                     "seconds_after": r["seconds"]})
    return rows


def report(rows: list[dict], args, command: str) -> str:
    lines = [f"# The same selections before and after ({args.before} vs the working tree)",
             "", f"`{command}` ({platform.node()}; each side on its own copy of the store)",
             "", "| method | mode | options | budget | k | same ids, same order | "
             "max weight difference |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        opts = ", ".join(f"{k}={v}" for k, v in r["extra"].items()) or "-"
        diff = "-" if r["max_weight_diff"] is None else f"{r['max_weight_diff']:.3g}"
        lines.append(f"| {r['method']} | {r['mode']} | {opts} | {r['budget']} | {r['k']} | "
                     f"{'yes' if r['same_ids'] else '**no**'} | {diff} |")
    same = sum(r["same_ids"] for r in rows)
    exact = sum(r["max_weight_diff"] == 0 for r in rows)
    lines += ["", f"{same} of {len(rows)} selections chose the same ids in the same order; "
              f"{exact} of them with bit-identical weights."]
    return "\n".join(lines) + "\n"


def tiny_store(path: Path) -> None:
    import gradstore

    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 2, 16)).astype(np.float32)
    st = gradstore.open(path)
    for c in range(2):
        st.import_vectors("pool", X[:, c], str(c), ids=[f"p{i}" for i in range(300)],
                          lr=1.0, subtasks=[f"s{i % 3}" for i in range(300)])
        st.import_vectors("tgt", X[:6, c] + 0.1, str(c), lr=1.0, kind="target",
                          subtasks=["a", "b"] * 3)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path)
    ap.add_argument("--pool", default="pool")
    ap.add_argument("--target", default="tgt")
    ap.add_argument("--budgets", nargs="+", default=["0.02", "0.05"])
    ap.add_argument("--before", default="HEAD", help="git revision of the 'before' side")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--tiny", action="store_true",
                    help="a small store; both sides run by the working tree, in this process")
    ap.add_argument("--side", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.side:  # the 'before' side's child: the grid, as JSON on stdout
        import gradstore

        grid, store, pool, target, budgets = json.loads(args.side.read_text())
        rows = run_grid(gradstore, grid, store, pool, target, budgets)
        print(json.dumps({"gradstore": str(Path(gradstore.__file__).resolve()), "rows": rows}))
        return
    command = "python benchmarks/same_selections.py " + " ".join(
        argv if argv is not None else sys.argv[1:])
    import gradstore

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.tiny:
            args.store, args.budgets = work / "store", ["5", "0.05"]
            tiny_store(args.store)
            global GRID
            GRID = [g for g in GRID if "ray" not in g[2]]  # (Ray: the distributed tests)
        a, b = work / "before", work / "after"
        shutil.copytree(args.store, a)
        shutil.copytree(args.store, b)
        if args.tiny:
            before = run_grid(gradstore, GRID, str(a), args.pool, args.target, args.budgets)
        else:
            before = before_side(args.before, a, args, work)
        after = run_grid(gradstore, GRID, str(b), args.pool, args.target, args.budgets)
    rows = compare(before, after)
    print(report(rows, args, command))
    if args.out and not args.tiny:
        args.out.mkdir(parents=True, exist_ok=True)
        for suffix, text in ((".md", report(rows, args, command)),
                             (".json", json.dumps(rows, indent=1) + "\n")):
            (args.out / f"same_selections{suffix}").write_text(text)


if __name__ == "__main__":
    main()

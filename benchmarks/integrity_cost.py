"""What the integrity checks cost a selection: one full streamed pass over a pool read from
Lance with the checks (vector checksums and stored norms) and without, and one correlation
scan (the pursuit's unit of work) for scale. Runs alternate, A B A B ..., in one process;
the medians are compared.

    python benchmarks/integrity_cost.py --out benchmarks/results     # ~2 min here
    python benchmarks/integrity_cost.py --tiny
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gradstore  # noqa: E402
from gradstore.selectors.scan import ScanQuery, correlation_scan  # noqa: E402
from gradstore.selectors.stacked import StackedPool  # noqa: E402


def one_pass(store: gradstore.Store, verify: bool) -> float:
    src = store.database.lance_source("pool")
    src.verify_next_pass = verify
    t0 = time.perf_counter()
    for _ in src.iter_blocks(src.block_rows):
        pass
    return time.perf_counter() - t0


def one_scan(store: gradstore.Store, R: np.ndarray) -> float:
    src = store.database.lance_source("pool")
    src.verify_next_pass = False
    t0 = time.perf_counter()
    correlation_scan(StackedPool(src, None), R, [ScanQuery(slice(0, 1), 100)])
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--checkpoints", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args(argv)
    n, d, T, reps = (2000, 64, 2, 2) if args.tiny else (args.rows, args.dim, args.checkpoints,
                                                         args.repeats)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        store = gradstore.open(Path(tmp) / "s")
        for t in range(T):
            store.import_vectors("pool", rng.standard_normal((n, d), dtype=np.float32),
                                 checkpoint=str(t), lr=1.0)
        R = rng.standard_normal((T * d, 1)).astype(np.float32)
        times: dict[str, list[float]] = {"pass, checked": [], "pass, unchecked": [],
                                         "correlation scan": []}
        one_pass(store, False)  # warm the page cache
        for _ in range(reps):
            times["pass, checked"].append(one_pass(store, True))
            times["pass, unchecked"].append(one_pass(store, False))
            times["correlation scan"].append(one_scan(store, R))
    med = {k: statistics.median(v) for k, v in times.items()}
    extra = med["pass, checked"] - med["pass, unchecked"]
    gb = n * T * d * 2 / 1e9
    lines = [f"# Cost of the integrity checks ({n:,} rows x {T} checkpoints x {d} float16 dims, "
             f"{gb:.2f} GB)", "",
             f"`python benchmarks/integrity_cost.py --rows {n} --dim {d} --checkpoints {T} "
             f"--repeats {reps}` ({platform.node()}, torch threads {torch.get_num_threads()}; "
             "runs alternate in one process, medians)", "",
             "| run | median s | GB/s |", "|---|---|---|"]
    lines += [f"| {k} | {v:.3f} | {gb / v:.2f} |" for k, v in med.items()]
    lines += ["", f"Checks add {extra:.3f} s per checked pass: "
              f"{100 * extra / med['pass, unchecked']:.0f}% of a bare read, "
              f"{100 * extra / med['correlation scan']:.0f}% of one correlation scan. A selection "
              "checks only its first pass; GTP runs several scans per query."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out and not args.tiny:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "integrity_cost.md").write_text(text)
        (args.out / "integrity_cost.json").write_text(json.dumps(times, indent=1))


if __name__ == "__main__":
    main()

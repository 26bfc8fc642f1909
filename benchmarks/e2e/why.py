"""Why GTP stops early on a target of SGD gradients: the geometry of the benchmark's store.

    python benchmarks/e2e/why.py --work bench-e2e [--out benchmarks/results/e2e_geometry.json]

For each target skill and each target table (``target-<skill>``: plain SGD
gradients, gradstore's and LESS's default; ``target-<skill>-adam``: Adam-
preconditioned, the pool's own space) it computes, in GTP's stacked space (each
checkpoint's row unit-normalised and weighted by sqrt of its share of the
learning rates), with plain numpy/scipy and no gradstore selector code:

* ``cos_skill_mean``: cosine between the target mean y and the mean of the
  pool rows of the same skill; ``cos_row_median``: the median cosine of one such
  row with y (LESS's score, before the max over nothing);
* ``nnls_all_skill``: the best fit ||A w - y|| / ||y|| over w >= 0 using *every*
  pool row of the skill (scipy NNLS), and how many rows get a positive weight:
  no selection of that skill can fit better;
* ``nnls_pool``: the same over the whole pool.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.optimize import nnls

import gradstore


def stacked(store, table: str, eta: np.ndarray) -> tuple[list[str], np.ndarray]:
    meta = store.meta(table)
    blocks = []
    ids = None
    for ck, s in zip(meta.checkpoints, np.sqrt(eta / eta.sum()), strict=True):
        ids, x = store.vectors(table, ck.name)
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)
        blocks.append(s * x)
    return ids, np.concatenate(blocks, axis=1)


def fit(A: np.ndarray, y: np.ndarray) -> tuple[float, int]:
    w, rnorm = nnls(A.T.astype(np.float64), y.astype(np.float64), maxiter=50 * A.shape[0])
    return float(rnorm / np.linalg.norm(y)), int((w > 0).sum())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("bench-e2e"))
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    store = gradstore.open(a.work / "pipeline" / "store", create=False)
    plan = json.loads((a.work / "plan.json").read_text())
    eta = np.array([c.lr for c in store.meta("pool").checkpoints], dtype=np.float64)
    ids, A = stacked(store, "pool", eta)
    skill = {json.loads(line)["id"]: json.loads(line)["skill"]
             for line in (a.work / "data" / "pool.jsonl").open()}
    skills = np.array([skill[i] for i in ids])
    out = {}
    for t in plan["targets"]:
        for table in (f"target-{t}", f"target-{t}-adam"):
            if table not in store.tables():
                continue
            _, T = stacked(store, table, eta)
            y = T.mean(axis=0)
            own = A[skills == t]
            cos = own @ y / (np.linalg.norm(own, axis=1) * np.linalg.norm(y))
            m = own.mean(axis=0)
            res_skill, used_skill = fit(own, y)
            res_pool, used_pool = fit(A, y)
            out[table] = {
                "grad_type": store.meta(table).grad_type,
                "cos_skill_mean": float(m @ y / (np.linalg.norm(m) * np.linalg.norm(y))),
                "cos_row_median": float(np.median(cos)),
                "nnls_all_skill": {"residual": res_skill, "positive": used_skill,
                                   "rows": int(len(own))},
                "nnls_pool": {"residual": res_pool, "positive": used_pool, "rows": len(A)},
            }
            print(table, json.dumps(out[table]))
    if a.out:
        a.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()

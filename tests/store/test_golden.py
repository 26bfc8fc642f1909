"""Selections on a fixed store are pinned (``golden_selections.json``): a refactoring that
changes any method's answer fails here. Regenerate the file only for a deliberate change of
an algorithm: ``python tests/store/test_golden.py`` (and say so in the commit).

What is pinned, and why it holds on any CPU:
- ids and their order exactly: every choice is a comparison of scores, and on this store the
  margins between chosen and passed-over rows are far above float32 rounding;
- weights to a relative ``WEIGHT_RTOL`` = 1e-3: the fits solve ``G_S w = b_S`` from float32
  dot products whose summation order depends on the BLAS build and the CPU's vector width.
  Over D = 48 dims such a product carries a relative error of at most D * 2^-24 = 2.9e-6
  (any order), and the chosen rows' Gram matrices here have condition numbers up to 440
  (gtp-paper and omp: at most 135), so a weight can move by up to ~4e-4 in the worst
  case; measured: 8.3e-6 between two x86-64 machines. Unit weights (gtp, less, random) are
  exactly 1 anywhere;
- residuals (norms of the fit, well conditioned) to 1e-5.

The budgets stay well below the pool's width (48): at k = 45 gtp-paper's NNLS weights were
not determined by the data (residual 1e-4) and moved by 1-460% with the BLAS build."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import gradstore

GOLDEN = Path(__file__).with_name("golden_selections.json")
WEIGHT_RTOL = 1e-3
CASES = [  # (method, extra options)
    ("gtp", {}), ("gtp", {"tolerance": 0.0}), ("gtp-paper", {}), ("omp", {}), ("less", {}),
    ("random", {"seed": 3}), ("gtp", {"target_mode": "joint"}), ("gtp-paper", {"partitions": 3}),
]


def build(path: Path) -> gradstore.Store:
    rng = np.random.default_rng(42)
    n, d = 900, 24
    centers = rng.standard_normal((12, 2, d))
    X = centers[rng.integers(0, 12, n)] + 0.6 * rng.standard_normal((n, 2, d)) + 0.8
    store = gradstore.open(path)
    ids = [f"p{i}" for i in range(n)]
    for t, lr in enumerate([3e-4, 1e-4]):
        store.import_vectors("pool", X[:, t].astype(np.float32), checkpoint=str(t), ids=ids,
                             lr=lr, grad_type="adam")
    T = X[rng.choice(n, 15, replace=False)] + 0.2 * rng.standard_normal((15, 2, d))
    for t in range(2):
        store.import_vectors("tgt", T[:, t].astype(np.float32), checkpoint=str(t),
                             subtasks=list("abc") * 5, kind="target", grad_type="adam")
    return store


def answers(store: gradstore.Store) -> dict:
    out = {}
    for method, opts in CASES:
        sels = store.select("pool", target=["tgt", None], budget=[7, 0.02], method=method,
                            save=False, **opts)
        key = method + "".join(f" {k}={v}" for k, v in opts.items())
        out[key] = [{"target": s.target, "budget": s.budget, "ids": s.ids,
                     "weights": [float(w) for w in s.weights], "residual": float(s.residual)}
                    for s in sels]
    return out


def test_selections_match_the_pinned_answers(tmp_path):
    got = answers(build(tmp_path / "store"))
    want = json.loads(GOLDEN.read_text())
    assert sorted(got) == sorted(want)
    for key, sels in want.items():
        for w, g in zip(sels, got[key], strict=True):
            assert g["ids"] == w["ids"], (key, w["target"], w["budget"])
            np.testing.assert_allclose(g["weights"], w["weights"], rtol=WEIGHT_RTOL, atol=0)
            assert g["residual"] == pytest.approx(w["residual"], rel=1e-5, abs=1e-9)


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        GOLDEN.write_text(json.dumps(answers(build(Path(tmp) / "store")), indent=1) + "\n")
    print(f"wrote {GOLDEN}", file=sys.stderr)

"""The CUDA paths (selection scans, ingestion) checked against the CPU, with timings.

    python benchmarks/gpu_check.py                 # a GPU machine: 1M x (4 x 1024) pool, <= 5 min
    python benchmarks/gpu_check.py --out benchmarks/results   # also writes gpu_check.{json,md}
    python benchmarks/gpu_check.py --tiny          # seconds: the CPU reference part (make test)

Selection: a synthetic float16 pool of clustered rows (generated in blocks) held in RAM; the
same scan, GTP at k = 1% of a 100K-row slice and LESS at k = 1% of the whole pool run on
the CPU and on the GPU, the pool kept on the GPU ("cuda") and copied block by block as it is
read ("cuda-stream"). Ingestion: a tiny Llama built from a config, fresh LoRA, float32 on
both devices, 64 examples. A check fails (exit 1) when the GPU's candidates, selections or
vectors differ from the CPU's by more than float32 rounding explains.

On a GPU machine, torch must be a CUDA build (the Makefile's pin takes the CPU build here):
``pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128`` first.
Without CUDA the CPU reference runs alone, and the pool kept in a second CPU copy stands in
for the device (the resident-pool code path), so the script cannot rot on CPU-only machines.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gradstore  # noqa: E402
from benchmarks.tiny_model import tiny_chat_model  # noqa: E402
from gradstore.selectors.gtp import gtp  # noqa: E402
from gradstore.selectors.less import less_topk  # noqa: E402
from gradstore.selectors.query import Query  # noqa: E402
from gradstore.selectors.scan import ScanDevice, ScanQuery  # noqa: E402
from gradstore.selectors.source import TensorSource  # noqa: E402
from gradstore.selectors.stacked import StackedPool  # noqa: E402


@dataclass
class Size:
    rows: int = 1_000_000
    checkpoints: int = 4
    dim: int = 1024
    clusters: int = 64
    gtp_rows: int = 100_000  # GTP's CPU reference at 1M rows would take most of the 5 minutes
    examples: int = 64  # ingestion


TINY = Size(rows=6000, checkpoints=2, dim=64, clusters=8, gtp_rows=3000, examples=8)


def synthetic_pool(size: Size, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """(rows, T*d) float16 rows around ``clusters`` centres, and each row's cluster; written
    block by block into one preallocated tensor (no float32 copy of the whole pool)."""
    g = torch.Generator().manual_seed(seed)
    width = size.checkpoints * size.dim
    centres = torch.randn((size.clusters, width), generator=g)
    labels = torch.randint(0, size.clusters, (size.rows,), generator=g)
    out = torch.empty((size.rows, width), dtype=torch.float16)
    for a in range(0, size.rows, 65536):
        b = min(a + 65536, size.rows)
        noise = torch.randn((b - a, width), generator=g)
        out[a:b] = (centres[labels[a:b]] + 1.5 * noise + 0.5).half()
    return out, labels.numpy()


def devices() -> list[tuple[str, ScanDevice]]:
    if torch.cuda.is_available():
        return [("cuda", ScanDevice("cuda")), ("cuda-stream", ScanDevice("cuda", keep=False))]
    return [("cpu-kept (stand-in: no CUDA device)", ScanDevice("cpu", keep=True))]


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    return len(set(a.tolist()) & set(b.tolist())) / max(len(a), 1)


def check_scans(X: torch.Tensor, size: Size, Y: np.ndarray) -> list[dict]:
    """One scan of 8 target columns (top 1,000 each), timed twice per device (the second
    time the pool is already on the device); candidate overlap with the CPU's."""
    T = size.checkpoints
    R = np.repeat(Y, 8, 1) + 0.01 * np.random.default_rng(1).standard_normal((Y.shape[0], 8))
    qs = [ScanQuery(slice(j, j + 1), 1000) for j in range(8)]
    ref, t_cpu = timed(lambda: StackedPool(TensorSource(X, T)).scan(R, qs))
    out = [{"check": "scan", "device": "cpu", "seconds": round(t_cpu, 3)}]
    for name, dev in devices():
        pool = StackedPool(TensorSource(X, T), device=dev)
        _, first = timed(lambda pool=pool: pool.scan(R, qs))
        got, again = timed(lambda pool=pool: pool.scan(R, qs))
        worst = min(overlap(g[0], r[0]) for g, r in zip(got, ref, strict=True))
        out.append({"check": "scan", "device": name, "seconds": round(again, 3),
                    "first_seconds": round(first, 3), "top_overlap": worst,
                    "ok": worst >= 0.99})
    return out


def check_gtp(X: torch.Tensor, size: Size, target_rows: np.ndarray) -> list[dict]:
    n, T = size.gtp_rows, size.checkpoints
    k = max(1, n // 100)

    def run(dev: ScanDevice | None):
        pool = StackedPool(TensorSource(X[:n], T), device=dev).centered()
        Y, err = pool.target(target_rows)
        return gtp(pool, [Query(Y, k, tolerance=err)])[0]

    ref, t_cpu = timed(lambda: run(None))
    out = [{"check": f"gtp k={k} of {n}", "device": "cpu", "seconds": round(t_cpu, 3),
            "residual": ref.residual}]
    for name, dev in devices():
        got, secs = timed(lambda dev=dev: run(dev))
        same = overlap(got.rows, ref.rows)
        ratio = got.residual / ref.residual
        out.append({"check": f"gtp k={k} of {n}", "device": name, "seconds": round(secs, 3),
                    "residual": got.residual, "same_ids": same,
                    "ok": same >= 0.95 and abs(ratio - 1) <= 0.01})
    return out


def check_less(X: torch.Tensor, size: Size, target_rows: np.ndarray) -> list[dict]:
    T, k = size.checkpoints, max(1, size.rows // 100)

    def run(dev: ScanDevice | None):
        pool = StackedPool(TensorSource(X, T), device=dev)
        return less_topk(pool, [pool.target(target_rows)[0]], [k])[0][0]

    ref, t_cpu = timed(lambda: run(None))
    out = [{"check": f"less k={k}", "device": "cpu", "seconds": round(t_cpu, 3)}]
    for name, dev in devices():
        got, secs = timed(lambda dev=dev: run(dev))
        same = overlap(got, ref)
        out.append({"check": f"less k={k}", "device": name, "seconds": round(secs, 3),
                    "same_ids": same, "ok": same >= 0.99})
    return out


def check_ingest(tmp: Path, size: Size) -> list[dict]:
    """Fresh-LoRA gradients of the same examples on the CPU and the GPU, float32 both."""
    model = tiny_chat_model(tmp / "model")
    data = tmp / "data.jsonl"
    with data.open("w") as f:
        for i in range(size.examples):
            f.write(json.dumps({"id": f"e{i}", "messages": [
                {"role": "user", "content": f"Add {i} and {2 * i}."},
                {"role": "assistant", "content": f"{3 * i}"}]}) + "\n")
    store = gradstore.open(tmp / "store")
    names = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    vecs, out = {}, []
    for dev in names:
        _, secs = timed(lambda dev=dev: store.ingest(
            f"pool_{dev}", model=str(model), data=str(data), device=dev, dtype="float32",
            proj_dim=256, batch_size=8, progress=False))
        vecs[dev] = store.table(f"pool_{dev}").vectors()
        out.append({"check": f"ingest {size.examples} examples", "device": dev,
                    "seconds": round(secs, 3)})
    if "cuda" in vecs:
        a, b = vecs["cpu"].astype(np.float64), vecs["cuda"].astype(np.float64)
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        out[-1] |= {"min_cosine_to_cpu": float(cos.min()), "ok": bool(cos.min() >= 0.999)}
    return out


def markdown(rows: list[dict], size: Size) -> str:
    lines = [f"# GPU check: {size.rows:,} x ({size.checkpoints} x {size.dim}) float16 pool",
             "", f"`python benchmarks/gpu_check.py` on {describe()}", "",
             "| check | device | seconds | agreement with the CPU | ok |", "|---|---|---|---|---|"]
    for r in rows:
        agree = ", ".join(f"{k} {r[k]:.4g}" for k in ("top_overlap", "same_ids",
                                                      "min_cosine_to_cpu") if k in r)
        lines.append(f"| {r['check']} | {r['device']} | {r['seconds']} | {agree} | "
                     f"{'' if 'ok' not in r else ('yes' if r['ok'] else 'NO')} |")
    return "\n".join(lines) + "\n"


def describe() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    return f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {gpu}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="seconds: small pool, tiny model")
    ap.add_argument("--rows", type=int, help="pool rows (default 1,000,000)")
    ap.add_argument("--out", type=Path, help="write gpu_check.json and gpu_check.md here")
    args = ap.parse_args(argv)
    size = TINY if args.tiny else Size()
    if args.rows:
        size.rows, size.gtp_rows = args.rows, min(size.gtp_rows, args.rows)
    t0 = time.perf_counter()
    X, labels = synthetic_pool(size)
    print(f"pool {tuple(X.shape)} float16 in {time.perf_counter() - t0:.1f} s; {describe()}",
          flush=True)
    target_rows = X[np.flatnonzero(labels == 0)[:200]].float().numpy()
    Y = StackedPool(TensorSource(X[:1000], size.checkpoints)).target(target_rows)[0]
    rows = check_scans(X, size, Y) + check_less(X, size, target_rows)
    rows += check_gtp(X, size, target_rows)
    with tempfile.TemporaryDirectory() as tmp:
        rows += check_ingest(Path(tmp), size)
    for r in rows:
        print(json.dumps(r), flush=True)
    text = markdown(rows, size)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_check.json").write_text(json.dumps(rows, indent=1) + "\n")
        (args.out / "gpu_check.md").write_text(text)
    failed = [r for r in rows if r.get("ok") is False]
    print(f"{len(failed)} of {sum('ok' in r for r in rows)} checks failed; "
          f"{time.perf_counter() - t0:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

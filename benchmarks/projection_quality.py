"""How well each projection keeps the cosines between per-example gradients (JL quality).

Per-example LoRA gradients of N examples (plain SGD gradients, formed, float32) are
projected by rademacher, countsketch (nnz 1) and factored at equal dims, with several
seeds; for every pair i < j the projected cosine is compared with the exact one (float64,
unprojected). Reported per (kind, dim): the mean and 95th percentile of |cos error| and its
largest value, averaged over seeds, and the spread of the squared-norm ratio. A quality
measurement, not a timing: nothing is timed.

The adapter is a fresh LoRA whose B matrices are drawn from N(0, 0.02^2) (a trained-like
adapter: with B = 0, the lora_A gradients would all be zero). The factored vectors are
also computed in the hooks (never formed) and compared with the formed path.

    .venv/bin/python benchmarks/projection_quality.py --tiny    # tiny Llama, seconds
    .venv/bin/python benchmarks/projection_quality.py           # SmolLM2-135M, minutes
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.smollm2 import smollm2_gguf  # noqa: E402
from benchmarks.tiny_model import tiny_chat_model  # noqa: E402
from gradstore.grads.data import read_records  # noqa: E402
from gradstore.grads.examples import tokenize_records  # noqa: E402
from gradstore.grads.model import LoraSpec, fresh_lora, load_model, load_tokenizer  # noqa: E402
from gradstore.grads.per_example import PerExampleGradients, collate  # noqa: E402
from gradstore.grads.projection import make_projector  # noqa: E402

KINDS = ("rademacher", "countsketch", "factored")
DATA = Path(__file__).resolve().parents[1] / "examples" / "demo_pool.jsonl"
B_SCALE = 0.02  # std of the LoRA B entries (see the module docstring)


def per_example_gradients(model_dir: str, gguf: str | None, n: int, lora_r: int, seed: int):
    """(N, P) float32 gradients, the batches they came from, and the gradient computer."""
    tokenizer = load_tokenizer(model_dir, gguf)
    lm = load_model(model_dir, gguf, torch.float32, torch.device("cpu"), progress=False)
    model = fresh_lora(lm, LoraSpec(r=lora_r, alpha=2 * lora_r, seed=seed))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * B_SCALE)
    report = tokenize_records(read_records(str(DATA)), tokenizer, max_length=256)
    examples = report.examples[:n]
    pe = PerExampleGradients(model, strategy="hooks")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batches = [collate([e.input_ids for e in examples[s : s + 8]],
                       [e.loss_mask for e in examples[s : s + 8]], pad)
               for s in range(0, len(examples), 8)]
    grads = torch.cat([pe(b)[0] for b in batches])
    return grads, batches, pe


def cosines(x: np.ndarray) -> np.ndarray:
    """Cosines of every pair i < j of the rows of ``x`` (float64)."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return (x @ x.T)[np.triu_indices(len(x), k=1)]


def quality(grads: torch.Tensor, shapes, dims, seeds) -> list[dict]:
    exact_rows = grads.double().numpy()
    exact = cosines(exact_rows)
    norms = np.square(exact_rows).sum(1)
    out = []
    for dim in dims:
        for kind in KINDS:
            errors, ratios = [], []
            for seed in seeds:
                projector = make_projector(kind, grads.shape[1], dim, seed=seed,
                                           module_shapes=shapes)
                y = projector.project(grads).double().numpy()
                errors.append(np.abs(cosines(y) - exact))
                ratios.append(np.square(y).sum(1) / norms)
            out.append({
                "kind": kind, "dim": dim,
                "mean_abs_cos_error": float(np.mean([e.mean() for e in errors])),
                "p95_abs_cos_error": float(np.mean([np.quantile(e, 0.95) for e in errors])),
                "max_abs_cos_error": float(np.mean([e.max() for e in errors])),
                "norm_ratio_sd": float(np.mean([r.std() for r in ratios])),
            })
    return out


def hooks_agreement(batches, pe: PerExampleGradients, grads: torch.Tensor, dim: int) -> float:
    """Largest relative difference between the factored vectors computed in the hooks and
    those of the formed gradients (rounding only)."""
    projector = make_projector("factored", pe.num_params, dim, module_shapes=pe.shapes)
    hooked = torch.cat([pe.projected(b, projector)[0] for b in batches])
    formed = projector.project(grads)
    return float(((hooked - formed).norm(dim=1) / formed.norm(dim=1)).max())


def report(results: list[dict], meta: dict) -> str:
    lines = [
        "# Projection quality: cosine error of projected per-example gradients",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Model: {meta['model']}; LoRA r={meta['lora_r']} on q/k/v/o, B ~ N(0, {B_SCALE}^2); "
        f"P = {meta['P']:,} gradient entries over {meta['modules']} modules; "
        f"{meta['examples']} examples of examples/demo_pool.jsonl "
        f"({meta['pairs']:,} pairs; exact |cos| mean {meta['mean_abs_cos']:.3f}); "
        f"seeds {meta['seeds']}; errors averaged over seeds.",
        "",
        "| dim | kind | mean abs cos error | p95 | max | sd of norm ratio |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r['dim']} | {r['kind']} | {r['mean_abs_cos_error']:.4f} | "
                     f"{r['p95_abs_cos_error']:.4f} | {r['max_abs_cos_error']:.4f} | "
                     f"{r['norm_ratio_sd']:.4f} |")
    lines += ["", f"Factored in the hooks vs of the formed gradients: largest relative "
                  f"difference {meta['hooks_vs_formed']:.1e} (rounding)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="a 2-layer tiny Llama (seconds)")
    ap.add_argument("--examples", type=int, default=None, help="examples (default 48; tiny 64)")
    ap.add_argument("--dims", type=int, nargs="+", default=None)
    ap.add_argument("--seeds", type=int, default=3, help="projection seeds per (kind, dim)")
    ap.add_argument("--lora-r", type=int, default=8)
    ap.add_argument("--out", type=Path, default=None, help="write <out>.md and <out>.json")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if args.tiny:
            model_dir, gguf, name = str(tiny_chat_model(Path(tmp) / "tiny")), None, "tiny Llama"
        else:
            (model_dir, gguf), name = smollm2_gguf(), "SmolLM2-135M-Instruct (GGUF)"
        n = args.examples or (64 if args.tiny else 48)
        dims = args.dims or ([64, 256, 1024] if args.tiny else [256, 1024, 4096])
        grads, batches, pe = per_example_gradients(model_dir, gguf, n, args.lora_r, seed=0)
    seeds = list(range(args.seeds))
    results = quality(grads, pe.shapes, dims, seeds)
    exact = cosines(grads.double().numpy())
    meta = {
        "command": "python benchmarks/projection_quality.py " + " ".join(argv or sys.argv[1:]),
        "model": name, "lora_r": args.lora_r, "P": pe.num_params, "modules": len(pe.shapes),
        "examples": len(grads), "pairs": len(exact), "mean_abs_cos": float(np.abs(exact).mean()),
        "seeds": seeds, "hooks_vs_formed": hooks_agreement(batches, pe, grads, dims[0]),
    }
    text = report(results, meta)
    print(text)
    if args.out is not None:
        args.out.with_suffix(".md").write_text(text)
        args.out.with_suffix(".json").write_text(
            json.dumps({"meta": meta, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()

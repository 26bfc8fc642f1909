"""Calibration of the reasoning-gym tasks (``rg_tasks.py``): which ones SmolLM2-135M-Instruct
cannot do untrained but learns from a few hundred example passes.

For every task: the untrained model's teacher-forced exact match and answer-token loss on
the task's test rows, then the same after a LoRA fine-tune on the task's own pool rows
with the end-to-end benchmark's trainer and settings (``gradstore.ops.evaluate``). A task
is kept for the benchmark when untrained exact match is below ``--max-untrained`` (5%)
and the fine-tuned one reaches ``--min-trained`` (30%).

    python benchmarks/e2e/rg_calibrate.py --out benchmarks/results      # ~2 min a task here
    python benchmarks/e2e/rg_calibrate.py --tiny                         # seconds, tiny model

One JSON record per task in ``RESULTS/rg_calibration/`` (a rerun skips recorded tasks whose
settings are unchanged: commit them as they come), and ``rg_calibration.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parents[1]))

import rg_tasks  # noqa: E402


@dataclass
class Settings:
    """Everything that decides a task's calibration (a record with other settings is redone)."""

    train_rows: int = 40
    test_rows: int = 60
    passes: int = 320
    lr: float = 1e-3
    batch_size: int = 8
    lora_layers: str | None = "top:8"
    max_length: int = 128
    seed: int = 0

    def key(self, task: str) -> str:
        spec = json.dumps([task, asdict(self), asdict(rg_tasks.spec(task))], sort_keys=True,
                          default=_stable)
        return hashlib.blake2b(spec.encode(), digest_size=8).hexdigest()


def _stable(value) -> str:
    """A task's ``keep``/``instance`` function as its source text (its ``str`` holds its
    address, new in every process: a record keyed by it would never be found again)."""
    if callable(value):
        return inspect.getsource(value).strip()
    return str(value)


def calibrate(task: str, s: Settings, model: str, gguf: str | None, work: Path,
              tokenizer) -> dict:
    """One task: untrained and fine-tuned scores on its test rows."""
    from gradstore.ops.evaluate import Adapted, TrainSettings, answer_scores, finetune

    pool, _, test = rg_tasks.split(task, s.train_rows, 0, s.test_rows, seed=s.seed)
    train = work / f"{task}.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in pool))
    settings = TrainSettings(passes=s.passes, lr=s.lr, batch_size=s.batch_size,
                             lora_layers=s.lora_layers, max_length=s.max_length)
    out = {"task": task, "train_rows": len(pool), "test_rows": len(test),
           "epochs": settings.epochs_for(len(pool))}
    t0 = time.perf_counter()
    with Adapted(model, gguf, None) as lm:
        base = answer_scores(lm, tokenizer, test, 32, s.max_length)
    adapter = finetune(model, gguf, train, work / f"ft-{task}", settings, len(pool), s.seed)
    with Adapted(model, gguf, adapter) as lm:
        tuned = answer_scores(lm, tokenizer, test, 32, s.max_length)
    out |= {"untrained": {"exact_match": base.accuracy, "loss": base.mean_loss},
            "trained": {"exact_match": tuned.accuracy, "loss": tuned.mean_loss},
            "seconds": round(time.perf_counter() - t0, 1)}
    return out


def report(records: list[dict], s: Settings, args) -> str:
    lines = ["# Calibration of the reasoning-gym tasks", "",
             f"`python benchmarks/e2e/rg_calibrate.py {' '.join(args.argv)}` "
             f"({s.train_rows} pool rows of the task "
             f"fine-tuned for {s.passes} example passes, lr {s.lr}, LoRA {s.lora_layers}; "
             f"{s.test_rows} test rows; teacher-forced exact match, answer-token loss). "
             f"Kept: untrained < {args.max_untrained:.0%} and trained >= "
             f"{args.min_trained:.0%}.", "",
             "| task | untrained EM | trained EM | untrained loss | trained loss | kept | "
             "seconds |", "|---|---|---|---|---|---|---|"]
    for r in records:
        u, t = r["untrained"], r["trained"]
        lines.append(f"| {r['task']} | {u['exact_match']:.1%} | {t['exact_match']:.1%} | "
                     f"{u['loss']:.2f} | {t['loss']:.2f} | {'yes' if kept(r, args) else 'no'} "
                     f"| {r['seconds']} |")
    return "\n".join(lines) + "\n"


def kept(r: dict, args) -> bool:
    return (r["untrained"]["exact_match"] < args.max_untrained
            and r["trained"]["exact_match"] >= args.min_trained)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default=",".join(rg_tasks.TASKS))
    ap.add_argument("--out", type=Path, help="results folder (records and the table)")
    ap.add_argument("--work", type=Path, help="fine-tune folder (default: a temp dir)")
    ap.add_argument("--max-untrained", type=float, default=0.05)
    ap.add_argument("--min-trained", type=float, default=0.30)
    ap.add_argument("--tiny", action="store_true", help="a tiny model, 2 tasks, seconds")
    defaults = Settings()
    for name in ("train_rows", "test_rows", "passes", "lr", "lora_layers"):
        value = getattr(defaults, name)
        ap.add_argument(f"--{name.replace('_', '-')}", default=value,
                        type=type(value) if value is not None else str)
    ap.add_argument("--name", default="rg_calibration",
                    help="results: RESULTS/NAME/ (records) and RESULTS/NAME.md")
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    tasks = args.tasks.split(",")
    s = Settings(train_rows=args.train_rows, test_rows=args.test_rows, passes=args.passes,
                 lr=args.lr, lora_layers=None if args.lora_layers in (None, "all")
                 else args.lora_layers)
    tmp = Path(tempfile.mkdtemp(prefix="rg-calib-"))
    work = args.work or tmp
    work.mkdir(parents=True, exist_ok=True)
    if args.tiny:
        from benchmarks.tiny_model import tiny_chat_model

        tasks, s = tasks[:2], Settings(train_rows=8, test_rows=6, passes=16, lora_layers=None)
        model, gguf = str(tiny_chat_model(tmp / "model")), None
        records_dir = tmp / "records"
    else:
        from benchmarks.smollm2 import smollm2_gguf

        model, gguf = smollm2_gguf()
        records_dir = (args.out or HERE.parents[1] / "benchmarks" / "results") / args.name
    records_dir.mkdir(parents=True, exist_ok=True)

    from gradstore.grads.model import load_tokenizer, shared_models

    tokenizer = load_tokenizer(model, gguf)
    records = []
    with shared_models():
        for i, task in enumerate(tasks):
            path = records_dir / f"{task}.json"
            old = json.loads(path.read_text()) if path.exists() else None
            if old is not None and old.get("key") == s.key(task):
                records.append(old)
                print(f"[{i + 1}/{len(tasks)}] {task}: recorded", flush=True)
                continue
            rec = calibrate(task, s, model, gguf, work, tokenizer) | {"key": s.key(task)}
            path.write_text(json.dumps(rec, indent=1) + "\n")
            records.append(rec)
            print(f"[{i + 1}/{len(tasks)}] {task}: untrained "
                  f"{rec['untrained']['exact_match']:.1%}, trained "
                  f"{rec['trained']['exact_match']:.1%} ({rec['seconds']} s)", flush=True)
    text = report(records, s, args)
    print(text)
    if args.out and not args.tiny:
        (args.out / f"{args.name}.md").write_text(text)
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

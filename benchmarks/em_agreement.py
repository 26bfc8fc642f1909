"""Teacher-forced exact match against greedy decoding, pair by pair.

Exact match by greedy decoding costs one forward pass per generated token; teacher-forced
exact match (every answer token, the end-of-turn token included, is the argmax given the
gold prefix: ``gradstore.ops.evaluate.answer_scores``) costs one forward pass per batch,
the same pass as the answer loss. This script measures how often the two agree on
(model, example) pairs across the benchmark's eight skills, for the untrained model and
models fine-tuned on the benchmark's pool (an epoch of the whole pool, and one skill
alone), and times both.

    python benchmarks/em_agreement.py --out benchmarks/results     # ~15 min here
    python benchmarks/em_agreement.py --tiny                       # seconds
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "e2e"))
sys.path.insert(1, str(HERE.parent))

import make_pool  # noqa: E402

from benchmarks.smollm2 import smollm2_gguf  # noqa: E402
from gradstore.grads.model import load_tokenizer, shared_models  # noqa: E402
from gradstore.ops.evaluate import (  # noqa: E402
    Adapted,
    TrainSettings,
    answer_scores,
    finetune,
    greedy_answers,
    is_correct,
)


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def score_pairs(lm, tok, sets: dict[str, list[dict]], batch: int, max_length: int) -> dict:
    """Per skill: teacher-forced and greedy verdicts of every row, and the seconds each took."""
    out = {}
    for skill, rows in sets.items():
        t0 = time.perf_counter()
        tf = answer_scores(lm, tok, rows, batch, max_length).exact
        t1 = time.perf_counter()
        preds = greedy_answers(lm, tok, rows, batch, max_length=max_length)
        t2 = time.perf_counter()
        greedy = [is_correct(p, r["messages"][-1]["content"]) for p, r in
                  zip(preds, rows, strict=True)]
        out[skill] = {"teacher_forced": tf.tolist(), "greedy": greedy,
                      "seconds_tf": t1 - t0, "seconds_greedy": t2 - t1,
                      "disagree": [{"answer": r["messages"][-1]["content"], "greedy": p,
                                    "tf": bool(a)}
                                   for r, p, a, g in zip(rows, preds, tf, greedy, strict=True)
                                   if bool(a) != g][:3]}
    return out


def report(res: dict) -> str:
    lines = [f"# Teacher-forced vs greedy exact match ({res['pairs']} (model, example) pairs)",
             "", f"`{res['command']}` ({res['machine']})", "",
             "| model | skill | n | greedy EM | teacher-forced EM | agree | "
             "greedy s | teacher-forced s |", "|---|---|---|---|---|---|---|---|"]
    totals = np.zeros(4)  # both right, both wrong, greedy only, tf only
    for model, per in res["models"].items():
        for skill, r in per.items():
            g, t = np.asarray(r["greedy"]), np.asarray(r["teacher_forced"])
            totals += [(g & t).sum(), (~g & ~t).sum(), (g & ~t).sum(), (~g & t).sum()]
            lines.append(f"| {model} | {skill} | {len(g)} | {g.mean():.2f} | {t.mean():.2f} | "
                         f"{(g == t).mean():.3f} | {r['seconds_greedy']:.1f} | "
                         f"{r['seconds_tf']:.1f} |")
    n = totals.sum()
    secs = [sum(r[k] for per in res["models"].values() for r in per.values())
            for k in ("seconds_greedy", "seconds_tf")]
    lines += ["", f"Agreement: **{(totals[0] + totals[1]) / n:.3f}** over {int(n)} pairs "
              f"(both right {int(totals[0])}, both wrong {int(totals[1])}, greedy only "
              f"{int(totals[2])}, teacher-forced only {int(totals[3])}). Scoring time: greedy "
              f"{secs[0]:.0f} s, teacher-forced {secs[1]:.0f} s ({secs[0] / secs[1]:.1f}x).",
              "", "Pairs where they disagree (first 3 per model and skill):"]
    for model, per in res["models"].items():
        for skill, r in per.items():
            lines += [f"- {model} / {skill}: answer {d['answer']!r}, greedy {d['greedy']!r}, "
                      f"teacher-forced {'right' if d['tf'] else 'wrong'}"
                      for d in r["disagree"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-skill", type=int, default=25, help="test rows per skill and model")
    ap.add_argument("--pool-size", type=int, default=2000)
    ap.add_argument("--skill", default="convert", help="the one-skill fine-tune's skill")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--tiny", action="store_true", help="a tiny model, 2 rows per skill")
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="em_agreement_"))
    if a.tiny:
        from benchmarks.tiny_model import tiny_chat_model

        model, gguf = str(tiny_chat_model(work / "model")), None
        a.per_skill, a.pool_size = 2, 40
        settings = TrainSettings(passes=8, lora_layers=None, max_length=64)
    else:
        model, gguf = smollm2_gguf()
        settings = TrainSettings()
    files = make_pool.build(a.pool_size, 0.0, 0, a.per_skill)
    sets = {s: files[f"test-{s}.jsonl"] for s in make_pool.SKILLS}
    pool = files["pool.jsonl"]
    one = [r for r in pool if r["skill"] == a.skill]
    res = {"command": "python benchmarks/em_agreement.py " + " ".join(
               argv if argv is not None else sys.argv[1:]),
           "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
           "models": {}}
    with shared_models():
        tok = load_tokenizer(model, gguf)
        adapters = {"untrained": None}
        t0 = time.perf_counter()
        adapters["full pool, 1 epoch"] = finetune(
            model, gguf, write_rows(work / "pool.jsonl", pool), work / "ft-pool", settings,
            len(pool), 0, epochs=1)
        adapters[f"{a.skill} only"] = finetune(
            model, gguf, write_rows(work / "one.jsonl", one), work / "ft-one", settings,
            len(one), 0)
        res["train_seconds"] = time.perf_counter() - t0
        for name, adapter in adapters.items():
            print(f"scoring {name} ...", flush=True)
            with Adapted(model, gguf, adapter) as lm:
                res["models"][name] = score_pairs(lm, tok, sets, 32, settings.max_length)
    res["pairs"] = sum(len(r["greedy"]) for per in res["models"].values() for r in per.values())
    text = report(res)
    print(text)
    if a.out and not a.tiny:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "em_agreement.md").write_text(text)
        (a.out / "em_agreement.json").write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()

